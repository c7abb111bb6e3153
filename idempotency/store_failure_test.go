package idempotency

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"strconv"
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

// purgedStore is a store whose records are purged while their owner is
// upstream, as an operator can do through the admin API.
type purgedStore struct{ Store }

func (s purgedStore) Complete(ctx context.Context, key RecordKey, owner OwnerToken, _ Response, _ time.Duration) error {
	if _, err := s.Store.(AdminStore).Purge(ctx, key); err != nil {
		return err
	}
	return ErrNotOwner
}

// A record purged (or taken over) while its owner was upstream is not an
// error: the client gets its answer, the outcome is released, and the log
// line is a warning.
func TestCompleteAfterPurgeIsReleased(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	obs := &observed{}
	s := newStack(t, Config{Store: purgedStore{NewMemoryStore()}, Observe: obs.observe, Logger: zap.New(core)}, nil)
	if res := s.post(t, createBody, withKey("pg-1")); res.status != http.StatusOK {
		t.Fatalf("status %d, want the upstream's 200", res.status)
	}
	if got := obs.take(); len(got) != 1 || got[0].Outcome != OutcomeReleased {
		t.Fatalf("decisions %+v, want one released", got)
	}
	if n := logs.FilterLevelExact(zapcore.ErrorLevel).Len(); n != 0 {
		t.Errorf("%d error lines for a purged record, want none", n)
	}
	if n := logs.FilterLevelExact(zapcore.WarnLevel).FilterMessageSnippet("purged").Len(); n != 1 {
		t.Errorf("%d warnings naming the purge, want 1", n)
	}
	// The key is free: the retry goes upstream again.
	s.post(t, createBody, withKey("pg-1"))
	s.up.wantCalls(t, 2)
}
