package idempotency

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// failingStore is a real store whose chosen operations fail while their
// switch is on; the switches can be flipped while requests run.
type failingStore struct {
	Store
	begin, complete, release atomic.Bool
}

var errStoreDown = errors.New("store unreachable")

func (f *failingStore) Begin(ctx context.Context, key RecordKey, fp Fingerprint, owner OwnerToken, lease time.Duration) (Record, bool, error) {
	if f.begin.Load() {
		return Record{}, false, errStoreDown
	}
	return f.Store.Begin(ctx, key, fp, owner, lease)
}

func (f *failingStore) Complete(ctx context.Context, key RecordKey, owner OwnerToken, resp Response, ttl time.Duration) error {
	if f.complete.Load() {
		return errStoreDown
	}
	return f.Store.Complete(ctx, key, owner, resp, ttl)
}

func (f *failingStore) Release(ctx context.Context, key RecordKey, owner OwnerToken) error {
	if f.release.Load() {
		return errStoreDown
	}
	return f.Store.Release(ctx, key, owner)
}

func newFailingStore(t *testing.T) *failingStore {
	m := NewMemoryStore()
	t.Cleanup(func() { _ = m.Close() })
	return &failingStore{Store: m}
}

func TestStoreFailingBegin(t *testing.T) {
	fs := newFailingStore(t)
	fs.begin.Store(true)
	s := newStack(t, Config{Store: fs}, nil)
	r := s.post(t, createBody, withKey("k-down"))
	wantError(t, r, http.StatusServiceUnavailable, CodeStoreUnavailable)
	wantHeader(t, r, "x-should-retry", "true")
	wantError(t, s.post(t, keyedBody("k-down-field")), http.StatusServiceUnavailable, CodeStoreUnavailable)
	s.up.wantCalls(t, 0)
	// Without a key the store is not needed.
	wantForwarded(t, s.post(t, createBody), http.StatusOK)

	// The store comes back: the same key works, with no restart.
	fs.begin.Store(false)
	first := s.post(t, createBody, withKey("k-down"))
	wantForwarded(t, first, http.StatusOK)
	wantReplayOf(t, s.post(t, createBody, withKey("k-down")), first)
	s.up.wantCalls(t, 2)
}

func TestStoreFailingBeginFailOpen(t *testing.T) {
	core, logs := observer.New(zapcore.WarnLevel)
	fs := newFailingStore(t)
	fs.begin.Store(true)
	s := newStack(t, Config{Store: fs, FailOpen: true, Logger: zap.New(core)}, nil)

	r := s.post(t, keyedBody("k-open"))
	wantForwarded(t, r, http.StatusOK)
	// Forwarded as a protected request would be: the key field stripped.
	if got := s.up.requests()[0].Body; bytes.Contains(got, []byte("idempotency_key")) {
		t.Fatalf("fail_open forwarded the key field: %s", got)
	}
	// Unprotected: the retry goes upstream again.
	wantForwarded(t, s.post(t, keyedBody("k-open")), http.StatusOK)
	s.up.wantCalls(t, 2)
	if n := logs.FilterMessageSnippet("fail_open").Len(); n != 2 {
		t.Fatalf("%d fail_open warnings, want one per forwarded request", n)
	}
	// Everything else still applies when the store is up.
	fs.begin.Store(false)
	first := s.post(t, createBody, withKey("k-open-2"))
	wantReplayOf(t, s.post(t, createBody, withKey("k-open-2")), first)
}

// A record that cannot be released stays in flight until its lease runs
// out, then the key is free: never stuck for the ttl.
func TestStoreFailingRelease(t *testing.T) {
	fs := newFailingStore(t)
	fs.release.Store(true)
	const lease = 300 * time.Millisecond
	status := atomic.Int32{}
	status.Store(http.StatusInternalServerError)
	s := newStack(t, Config{Store: fs, Lease: lease, Wait: NoWait}, func(w http.ResponseWriter, r *http.Request, n int64) {
		writeBatch(w, int(status.Load()), n)
	})
	released := time.Now()
	wantForwarded(t, s.post(t, createBody, withKey("k-stuck")), http.StatusInternalServerError)
	wantError(t, s.post(t, createBody, withKey("k-stuck")), http.StatusConflict, CodeKeyInUse)
	s.up.wantCalls(t, 1)

	status.Store(http.StatusOK)
	time.Sleep(time.Until(released.Add(lease + 50*time.Millisecond)))
	first := s.post(t, createBody, withKey("k-stuck"))
	wantForwarded(t, first, http.StatusOK)
	wantReplayOf(t, s.post(t, createBody, withKey("k-stuck")), first)
	s.up.wantCalls(t, 2)
}

// When the record cannot be completed, the upstream has still acted: the
// client gets its answer, and the record stays in flight (a duplicate is told
// to retry) rather than letting the create run twice at once.
func TestStoreFailingComplete(t *testing.T) {
	fs := newFailingStore(t)
	fs.complete.Store(true)
	s := newStack(t, Config{Store: fs, Wait: NoWait}, nil)
	first := s.post(t, createBody, withKey("k-half"))
	wantForwarded(t, first, http.StatusOK)
	if !bytes.Contains(first.body, []byte(`"id":"batch_`)) {
		t.Fatalf("client got %s, want the upstream's batch", first.body)
	}
	wantHeader(t, first, "Content-Length", strconv.Itoa(len(first.body)))
	wantError(t, s.post(t, createBody, withKey("k-half")), http.StatusConflict, CodeKeyInUse)
	s.up.wantCalls(t, 1)
}

func TestRequireScope(t *testing.T) {
	s := newStack(t, Config{RequireScope: true}, nil)
	r := s.post(t, createBody, withKey("k-anon"))
	wantError(t, r, http.StatusBadRequest, CodeScopeRequired)
	wantHeader(t, r, "x-should-retry", "false")
	wantError(t, s.post(t, keyedBody("k-anon")), http.StatusBadRequest, CodeScopeRequired)
	s.up.wantCalls(t, 0)
	// Keyless requests need no record, so no scope.
	wantForwarded(t, s.post(t, createBody), http.StatusOK)
	first := s.post(t, createBody, withKey("k-anon"), withAuth("Bearer sk-1"))
	wantForwarded(t, first, http.StatusOK)
	wantReplayOf(t, s.post(t, createBody, withKey("k-anon"), withAuth("Bearer sk-1")), first)
	s.up.wantCalls(t, 2)
}

// The warn and error paths of a failing store name the key only by hash.
func TestStoreFailureLogsCarryNoKey(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	fs := newFailingStore(t)
	s := newStack(t, Config{Store: fs, Logger: zap.New(core), Lease: 150 * time.Millisecond}, nil)
	const key, credential = "fail-log-key-9a1e", "sk-fail-log-4b2c"
	auth := withAuth("Bearer " + credential)

	fs.begin.Store(true)
	s.post(t, createBody, withKey(key), auth) // error: begin
	fs.begin.Store(false)
	fs.complete.Store(true)
	s.post(t, createBody, withKey(key+"-c"), auth) // error: complete
	fs.complete.Store(false)
	fs.release.Store(true)
	s.post(t, "{", withKey(key+"-r"), auth) // rejected before the store
	open := newStack(t, Config{Store: fs, Logger: zap.New(core), FailOpen: true}, nil)
	fs.begin.Store(true)
	open.post(t, createBody, withKey(key+"-o"), auth) // warn: fail_open

	if logs.FilterLevelExact(zapcore.ErrorLevel).Len() < 2 || logs.FilterLevelExact(zapcore.WarnLevel).Len() < 1 {
		t.Fatalf("the failure paths were not logged: %d entries", logs.Len())
	}
	for _, e := range logs.All() {
		line := e.Message
		for k, v := range e.ContextMap() {
			line += " " + k + "=" + fmt.Sprint(v)
		}
		if strings.Contains(line, key) || strings.Contains(line, credential) {
			t.Errorf("log entry leaks a secret: %s", line)
		}
	}
}

// keyedBody is createBody carrying key in its body field.
func keyedBody(key string) string {
	return strings.Replace(createBody, "{", `{"idempotency_key":"`+key+`",`, 1)
}
