package badgerstore

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/caddy-idempotency/caddy-idempotency/idempotency"
)

func openTestBadger(t *testing.T, dir string) *Store {
	t.Helper()
	s, err := Open(Options{Dir: dir})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s
}

func TestBadgerReopenKeepsCompletedRecords(t *testing.T) {
	dir := t.TempDir()
	ctx := t.Context()
	s := openTestBadger(t, dir)
	key, fp, owner := idempotency.RecordKey{1}, idempotency.Fingerprint{2}, idempotency.NewOwnerToken()
	if _, owned, err := s.Begin(ctx, key, fp, owner, time.Minute); err != nil || !owned {
		t.Fatalf("Begin = owned %v, err %v", owned, err)
	}
	resp := idempotency.Response{Status: 200, Header: http.Header{"X-Id": {"b1"}}, Body: bytes.Repeat([]byte("v"), 4096)}
	if err := s.Complete(ctx, key, owner, resp, time.Hour); err != nil {
		t.Fatalf("Complete: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	s = openTestBadger(t, dir)
	defer s.Close()
	rec, ok, err := s.Get(ctx, key)
	if err != nil || !ok {
		t.Fatalf("Get after reopen = ok %v, err %v", ok, err)
	}
	if rec.State != idempotency.StateCompleted || rec.Fingerprint != fp || rec.Response == nil ||
		rec.Response.Status != resp.Status || rec.Response.Header.Get("X-Id") != "b1" || !bytes.Equal(rec.Response.Body, resp.Body) {
		t.Fatalf("record after reopen = %+v, want the completed record with its response", rec)
	}
	if time.Until(rec.ExpiresAt) < 59*time.Minute {
		t.Errorf("ExpiresAt after reopen = %v, want about an hour from now", rec.ExpiresAt)
	}
}

func TestBadgerSecondOpenFails(t *testing.T) {
	dir := t.TempDir()
	s := openTestBadger(t, dir)
	defer s.Close()

	second, err := Open(Options{Dir: dir})
	if err == nil {
		second.Close()
		t.Fatal("a second Open on a directory in use succeeded")
	}
	if second != nil {
		t.Errorf("a failed Open returned a store %p", second)
	}
	// The first store must be unaffected.
	if _, _, err := s.Begin(t.Context(), idempotency.RecordKey{9}, idempotency.Fingerprint{}, idempotency.NewOwnerToken(), time.Minute); err != nil {
		t.Errorf("Begin on the first store after the failed open: %v", err)
	}
}

func TestBadgerOpenNeedsDir(t *testing.T) {
	if s, err := Open(Options{}); err == nil || s != nil {
		t.Errorf("Open without Dir = %v, %v; want nil and an error", s, err)
	}
}

func TestBadgerCloseStopsGC(t *testing.T) {
	s, err := Open(Options{Dir: t.TempDir(), GCInterval: 5 * time.Millisecond})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	time.Sleep(50 * time.Millisecond) // let a few GC rounds run

	closed := make(chan error, 1)
	go func() { closed <- s.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatalf("Close: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return")
	}
	select {
	case <-s.gcDone:
	default:
		t.Fatal("GC goroutine still running after Close")
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, _, err := s.Get(context.Background(), idempotency.RecordKey{}); err == nil {
		t.Error("Get on a closed store succeeded")
	}
}

func TestBadgerLoggerLevels(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	l := badgerLogger{log: zap.New(core)}
	l.Errorf("e %d\n", 1)
	l.Warningf("w %d\n", 2)
	l.Infof("i %d\n", 3)
	l.Debugf("d %d", 4)
	want := []struct {
		level zapcore.Level
		msg   string
	}{{zapcore.ErrorLevel, "e 1"}, {zapcore.WarnLevel, "w 2"}, {zapcore.DebugLevel, "i 3"}, {zapcore.DebugLevel, "d 4"}}
	got := logs.All()
	if len(got) != len(want) {
		t.Fatalf("got %d log entries, want %d", len(got), len(want))
	}
	for i, w := range want {
		if got[i].Level != w.level || got[i].Message != w.msg {
			t.Errorf("entry %d = %v %q, want %v %q", i, got[i].Level, got[i].Message, w.level, w.msg)
		}
	}
}

// The kill test re-runs this test binary as a child that writes records and
// then waits to be SIGKILLed; the parent reopens the directory afterwards.
const (
	killChildDirEnv = "IDEMPOTENCY_BADGER_KILL_CHILD_DIR"
	killRecordCount = 200
)

func killTestKey(i int) idempotency.RecordKey {
	return idempotency.RecordKey(sha256.Sum256([]byte("kill-test-" + strconv.Itoa(i))))
}

func killTestOwner() idempotency.OwnerToken { return idempotency.OwnerToken{0xaa, 0xbb} }

// killTestBody alternates small bodies (stored in the LSM tree) with ones
// above the value threshold (stored in the value log).
func killTestBody(i int) []byte {
	n := 16
	if i%2 == 1 {
		n = 3000
	}
	return bytes.Repeat([]byte{byte('a' + i%26)}, n)
}

func TestBadgerSurvivesProcessKill(t *testing.T) {
	if dir := os.Getenv(killChildDirEnv); dir != "" {
		runKillChild(dir)
		return
	}
	if testing.Short() {
		t.Skip("spawns a child process")
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestBadgerSurvivesProcessKill$", "-test.count=1")
	cmd.Env = append(os.Environ(), killChildDirEnv+"="+dir)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	defer func() {
		if !killed {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	}()

	ready := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if line := sc.Text(); line == "ready" {
				ready <- nil
				return
			} else if strings.HasPrefix(line, "child error:") {
				ready <- fmt.Errorf("%s", line)
				return
			}
		}
		ready <- fmt.Errorf("child exited without reporting ready (scan err %v)", sc.Err())
	}()
	select {
	case err := <-ready:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("child did not become ready")
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatalf("kill child: %v", err)
	}
	_ = cmd.Wait()
	killed = true

	s := openTestBadger(t, dir)
	defer s.Close()
	ctx := t.Context()
	for i := range killRecordCount {
		rec, ok, err := s.Get(ctx, killTestKey(i))
		if err != nil || !ok {
			t.Fatalf("record %d after kill: ok %v, err %v", i, ok, err)
		}
		if rec.State != idempotency.StateCompleted || rec.Response == nil || rec.Response.Status != 200+i%3 || !bytes.Equal(rec.Response.Body, killTestBody(i)) {
			t.Fatalf("record %d after kill = %+v, want the completed record the child wrote", i, rec)
		}
	}
	rec, ok, err := s.Get(ctx, killTestKey(killRecordCount))
	if err != nil || !ok {
		t.Fatalf("in-flight record after kill: ok %v, err %v", ok, err)
	}
	if rec.State != idempotency.StateInFlight || rec.Owner != killTestOwner() {
		t.Errorf("in-flight record after kill = %+v, want in flight under the child's token", rec)
	}
	// Its lease (an hour) has not passed, so a new request must not take over.
	if _, owned, err := s.Begin(ctx, killTestKey(killRecordCount), idempotency.Fingerprint{}, idempotency.NewOwnerToken(), time.Minute); err != nil || owned {
		t.Errorf("Begin on the live in-flight record = owned %v, err %v", owned, err)
	}
}

func runKillChild(dir string) {
	fail := func(err error) {
		fmt.Println("child error:", err)
		os.Exit(1)
	}
	s, err := Open(Options{Dir: dir})
	if err != nil {
		fail(err)
	}
	ctx := context.Background()
	for i := range killRecordCount {
		owner := idempotency.NewOwnerToken()
		if _, owned, err := s.Begin(ctx, killTestKey(i), idempotency.Fingerprint{byte(i)}, owner, time.Minute); err != nil || !owned {
			fail(fmt.Errorf("Begin %d: owned %v, err %v", i, owned, err))
		}
		resp := idempotency.Response{Status: 200 + i%3, Header: http.Header{"X-I": {strconv.Itoa(i)}}, Body: killTestBody(i)}
		if err := s.Complete(ctx, killTestKey(i), owner, resp, time.Hour); err != nil {
			fail(fmt.Errorf("Complete %d: %v", i, err))
		}
	}
	if _, owned, err := s.Begin(ctx, killTestKey(killRecordCount), idempotency.Fingerprint{}, killTestOwner(), time.Hour); err != nil || !owned {
		fail(fmt.Errorf("Begin in-flight: owned %v, err %v", owned, err))
	}
	fmt.Println("ready")
	// Wait to be killed; exit on our own only if the parent vanished.
	time.Sleep(2 * time.Minute)
	os.Exit(2)
}
