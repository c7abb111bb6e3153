package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-idempotency/caddy-idempotency/internal/batchesbackend"
)

// reloadCaddyfile is config number gen: its ttl and the deferred
// X-Config-Gen header (the config that served a response) differ from the
// previous config's, so every load is a real reload. Caddy's own logs go to
// logPath at INFO, so the test can read them.
func reloadCaddyfile(gen int, dir, logPath, upstream string) string {
	globals := fmt.Sprintf("log {\n\t\toutput file %s\n\t\tformat json\n\t\tlevel INFO\n\t}", logPath)
	site := fmt.Sprintf("\theader {\n\t\tdefer\n\t\tX-Config-Gen %d\n\t}\n", gen) +
		idempotencySite(fmt.Sprintf("\t\tstore badger %s\n\t\twait 10s\n\t\tttl %dh", dir, 24+gen%2), upstream)
	return testCaddyfile(globals, site)
}

// adminLoad posts a Caddyfile to the admin API's /load.
func adminLoad(caddyfile string) (int, string, error) {
	req, err := http.NewRequest(http.MethodPost, fmt.Sprintf("http://localhost:%d/load", adminPort), strings.NewReader(caddyfile))
	if err != nil {
		return 0, "", err
	}
	req.Header.Set("Content-Type", "text/caddyfile")
	r, err := do(adminClient, req)
	return r.Status, string(r.Body), err
}

// A reload builds a new handler on the same Badger directory; records stay.
func TestReplayAfterConfigReload(t *testing.T) {
	dir := storeDir(t)
	s := newStack(t, "store badger "+dir)
	body := createBody(t, nil, "")
	created := s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", "k-reload").batch(t)

	s.load("store badger "+dir+"\n\t\tttl 48h", s.upstream) // another setting, so it is a real reload
	r := s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", "k-reload")
	if b := r.batch(t); b.ID != created.ID || r.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("after reload got %s, want replay of %s", b.ID, created.ID)
	}
}

// Fifty reloads while sixteen clients send keyed creates, new keys and
// duplicates of keys still in flight, through a slowed backend.
func TestReloadsUnderLoad(t *testing.T) {
	const reloads, clients = 50, 16
	dir := storeDir(t)
	logDir, err := os.MkdirTemp(testRoot, "log-")
	if err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(logDir, "caddy.log")

	backend := batchesbackend.New()
	upstream := serveBackend(t, backend)
	newTester(t).InitServer(reloadCaddyfile(0, dir, logPath, upstream), "caddyfile")
	if t.Failed() {
		t.FailNow()
	}
	loaded := []time.Time{time.Now()} // loaded[g]: when config g's load had returned
	loading := []time.Time{{}}        // loading[g]: when it was sent
	backend.SetFault(batchesbackend.Fault{Delay: 30 * time.Millisecond})

	url := fmt.Sprintf("http://localhost:%d/v1/batches", httpPort)
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: clients}}
	var (
		mu      sync.Mutex
		keys    []string
		replies []timedReply
		stop    atomic.Bool
		wg      sync.WaitGroup
		resets  []timedReply // connection errors, retried
	)
	pickKey := func() string {
		mu.Lock()
		defer mu.Unlock()
		if len(keys) == 0 || rand.N(10) < 4 {
			keys = append(keys, "reload-"+strconv.Itoa(len(keys)))
			return keys[len(keys)-1]
		}
		// A recent key: its first request is likely still in flight.
		return keys[len(keys)-1-rand.N(min(len(keys), 24))]
	}
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				key := pickKey()
				r, err := postKeyed(client, url, key, keyedBody(key))
				for try := 1; err != nil; try++ {
					// Retried like an SDK; checked below to be the listener handoff.
					r.end, r.err = time.Now(), err
					mu.Lock()
					resets = append(resets, r)
					mu.Unlock()
					if try == 3 {
						t.Errorf("key %s: %v", key, err)
						return
					}
					time.Sleep(20 * time.Millisecond)
					r, err = postKeyed(client, url, key, keyedBody(key))
				}
				mu.Lock()
				replies = append(replies, r)
				mu.Unlock()
			}
		}()
	}

	for gen := 1; gen <= reloads; gen++ {
		time.Sleep(time.Duration(20+rand.N(60)) * time.Millisecond)
		loading = append(loading, time.Now())
		status, body, err := adminLoad(reloadCaddyfile(gen, dir, logPath, upstream))
		if err != nil || status != http.StatusOK {
			stop.Store(true)
			wg.Wait()
			t.Fatalf("reload %d: status %d %q, %v", gen, status, body, err)
		}
		loaded = append(loaded, time.Now())
	}
	time.Sleep(100 * time.Millisecond)
	stop.Store(true)
	wg.Wait()
	scanReloadLog(t, logPath, reloads)
	if t.Failed() {
		t.FailNow()
	}
	checkResets(t, resets, loading, loaded)

	// Every response 200; per key one upstream answer, the rest replays of it.
	first := map[string][]byte{}
	owners := map[string]int{}
	acrossReload := 0 // answered by a config that a finished reload had already replaced
	for _, r := range replies {
		if r.Status != http.StatusOK {
			t.Fatalf("key %s: status %d during reloads; body %s", r.key, r.Status, r.Body)
		}
		if b, ok := first[r.key]; ok && !bytes.Equal(b, r.Body) {
			t.Fatalf("key %s: two bodies:\n%s\n%s", r.key, b, r.Body)
		} else if !ok {
			first[r.key] = r.Body
		}
		if r.Header.Get("Idempotent-Replayed") != "true" {
			owners[r.key]++
		}
		gen, err := strconv.Atoi(r.Header.Get("X-Config-Gen"))
		if err != nil || gen < 0 || gen > reloads {
			t.Fatalf("key %s: X-Config-Gen %q", r.key, r.Header.Get("X-Config-Gen"))
		}
		if gen < reloads && loaded[gen+1].Before(r.end) {
			acrossReload++
		}
	}
	for key := range first {
		if owners[key] != 1 {
			t.Errorf("key %s: %d responses came from upstream, want 1", key, owners[key])
		}
	}
	if n := backend.Creates(); n != int64(len(first)) || backend.Requests() != n {
		t.Fatalf("backend creates %d, requests %d; want one per key, %d", n, backend.Requests(), len(first))
	}
	if acrossReload < reloads/5 {
		t.Fatalf("only %d responses were in flight across a reload; the test proves nothing", acrossReload)
	}

	// Every record replays from the last config.
	backend.SetFault(batchesbackend.Fault{})
	for key, body := range first {
		r, err := postKeyed(client, url, key, keyedBody(key))
		if err != nil || r.Status != http.StatusOK || r.Header.Get("Idempotent-Replayed") != "true" || !bytes.Equal(r.Body, body) {
			t.Fatalf("key %s after reloads: %d replayed %q, %v; body %s, want %s", key, r.Status, r.Header.Get("Idempotent-Replayed"), err, r.Body, body)
		}
	}
	if n := backend.Creates(); n != int64(len(first)) {
		t.Fatalf("backend creates %d after replays, want %d", n, len(first))
	}
	t.Logf("%d reloads, %d requests over %d keys, %d answered by an already replaced config, %d connections reset in a handoff and retried",
		reloads, len(replies), len(first), acrossReload, len(resets))
}

// checkResets allows one kind of connection error: a new connection reset
// while a reload swaps listeners. Caddy opens each config's SO_REUSEPORT
// socket anew and closes the old one, and the kernel resets connections still
// queued on it before Caddy has read a byte (plain `respond` sites see the
// same). A reset on a kept-alive connection, or away from a reload, fails.
func checkResets(t *testing.T, resets []timedReply, loading, loaded []time.Time) {
	t.Helper()
	const slack = 250 * time.Millisecond
	for _, r := range resets {
		inHandoff := false
		for g := 1; g < len(loaded); g++ {
			inHandoff = inHandoff || (r.end.After(loading[g]) && r.end.Before(loaded[g].Add(slack)))
		}
		if r.reused || !inHandoff {
			t.Errorf("key %s: %v at %s (kept-alive connection %v, in a handoff %v)",
				r.key, r.err, r.end.Format(time.StampMicro), r.reused, inHandoff)
		}
	}
}

// scanReloadLog fails on any error-level entry or any mention of a locked or
// closed store in Caddy's log, and checks the log saw every reload.
func scanReloadLog(t *testing.T, path string, reloads int) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	loads := 0
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var e struct{ Level, Msg string }
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("log line is not JSON: %s", sc.Bytes())
		}
		lower := strings.ToLower(sc.Text())
		switch {
		case e.Level != "debug" && e.Level != "info" && e.Level != "warn",
			strings.Contains(lower, "locked"), strings.Contains(lower, "closed"):
			t.Errorf("Caddy logged: %s", sc.Bytes())
		case e.Msg == "load complete":
			loads++
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if loads < reloads {
		t.Fatalf("the log saw %d loads, want at least %d: is it Caddy's log?", loads, reloads)
	}
}
