package idempotency

import (
	"context"
	"net/http"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// observed collects Observe calls.
type observed struct {
	mu  sync.Mutex
	got []Decision
}

func (o *observed) observe(_ *http.Request, d Decision) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.got = append(o.got, d)
}

// take returns the decisions since the last take.
func (o *observed) take() []Decision {
	o.mu.Lock()
	defer o.mu.Unlock()
	got := o.got
	o.got = nil
	return got
}

// Every request gets exactly one decision, with the outcome of its path and
// the record key when it had one.
func TestEveryRequestGetsOneDecision(t *testing.T) {
	obs := &observed{}
	var fail sync.Map // paths whose upstream answers 500
	s := newStack(t, Config{Observe: obs.observe, Methods: []string{http.MethodPost}}, func(w http.ResponseWriter, r *http.Request, n int64) {
		if _, ok := fail.Load(r.Header.Get("X-Fail")); ok {
			http.Error(w, "upstream failed", http.StatusInternalServerError)
			return
		}
		writeBatch(w, http.StatusOK, n)
	})
	keyOf := func(k string) RecordKey { return NewRecordKey(s.ns(), "Bearer t", k) }
	auth := withAuth("Bearer t")
	fail.Store("1", true)

	cases := []struct {
		name  string
		send  func() result
		want  Outcome
		key   string // "" when the decision names no key
		wantS int
	}{
		{"stored", func() result { return s.post(t, createBody, auth, withKey("o-1")) }, OutcomeStored, "o-1", 200},
		{"replayed", func() result { return s.post(t, createBody, auth, withKey("o-1")) }, OutcomeReplayed, "o-1", 200},
		{"conflict", func() result { return s.post(t, `{"a":1}`, auth, withKey("o-1")) }, OutcomeConflict, "o-1", 409},
		{"released", func() result {
			return s.post(t, createBody, auth, withKey("o-2"), func(r *http.Request) { r.Header.Set("X-Fail", "1") })
		}, OutcomeReleased, "o-2", 500},
		{"passthrough, no key", func() result { return s.post(t, createBody, auth) }, OutcomePassthrough, "", 200},
		{"passthrough, method not covered", func() result {
			return s.post(t, createBody, auth, withKey("o-3"), func(r *http.Request) { r.Method = http.MethodPut })
		}, OutcomePassthrough, "", 200},
		{"rejected", func() result { return s.post(t, `{"a":`, auth, withKey("o-4")) }, OutcomeRejected, "", 400},
	}
	for _, tc := range cases {
		res := tc.send()
		if res.err != nil || res.status != tc.wantS {
			t.Fatalf("%s: status %d, err %v; want %d", tc.name, res.status, res.err, tc.wantS)
		}
		got := obs.take()
		if len(got) != 1 {
			t.Fatalf("%s: %d decisions %+v, want 1", tc.name, len(got), got)
		}
		d := got[0]
		if d.Outcome != tc.want || d.Keyed != (tc.key != "") || (tc.key != "" && d.Key != keyOf(tc.key)) {
			t.Errorf("%s: decision %+v, want outcome %s, key %q", tc.name, d, tc.want, tc.key)
		}
	}
}

// A duplicate of a request in flight is in_flight; a store that fails is
// store_error.
func TestDecisionsInFlightAndStoreError(t *testing.T) {
	obs := &observed{}
	release := make(chan struct{})
	s := newStack(t, Config{Observe: obs.observe, Wait: NoWait}, func(w http.ResponseWriter, r *http.Request, n int64) {
		<-release
		writeBatch(w, http.StatusOK, n)
	})
	first := make(chan result)
	go func() { first <- s.post(t, createBody, withKey("f-1")) }()
	waitFor(t, func() bool {
		_, ok, _ := s.store.Get(context.Background(), NewRecordKey(s.ns(), "", "f-1"))
		return ok
	})
	if res := s.post(t, createBody, withKey("f-1")); res.status != http.StatusConflict {
		t.Fatalf("duplicate: status %d, want 409", res.status)
	}
	if got := obs.take(); len(got) != 1 || got[0].Outcome != OutcomeInFlight {
		t.Fatalf("duplicate: decisions %+v, want one in_flight", got)
	}
	close(release)
	<-first
	if got := obs.take(); len(got) != 1 || got[0].Outcome != OutcomeStored {
		t.Fatalf("first: decisions %+v, want one stored", got)
	}

	failing := newFailingStore(t)
	failing.begin.Store(true)
	s = newStack(t, Config{Observe: obs.observe, Store: failing}, nil)
	if res := s.post(t, createBody, withKey("f-2")); res.status != http.StatusServiceUnavailable {
		t.Fatalf("store down: status %d, want 503", res.status)
	}
	if got := obs.take(); len(got) != 1 || got[0].Outcome != OutcomeStoreError {
		t.Fatalf("store down: decisions %+v, want one store_error", got)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 5s")
		}
	}
}

// One debug line per decision, with the outcome, the key hash and the
// request id; nothing at info for healthy requests.
func TestDecisionLogLines(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	s := newStack(t, Config{Logger: zap.New(core), RequestID: func(r *http.Request) string { return r.Header.Get("X-Rid") }}, nil)
	rid := func(id string) reqOpt { return func(r *http.Request) { r.Header.Set("X-Rid", id) } }
	s.post(t, createBody, withKey("l-1"), rid("r-stored"))
	s.post(t, createBody, withKey("l-1"), rid("r-replayed"))
	s.post(t, createBody, rid("r-pass"))

	want := map[string]Outcome{"r-stored": OutcomeStored, "r-replayed": OutcomeReplayed, "r-pass": OutcomePassthrough}
	for _, e := range logs.All() {
		if e.Level > zapcore.DebugLevel {
			t.Errorf("a healthy request logged at %s: %s", e.Level, e.Message)
		}
	}
	decisions := logs.FilterMessage("idempotency decision").All()
	if len(decisions) != len(want) {
		t.Fatalf("%d decision lines, want %d: %+v", len(decisions), len(want), decisions)
	}
	for _, e := range decisions {
		fields := e.ContextMap()
		id, _ := fields["request_id"].(string)
		if fields["outcome"] != string(want[id]) {
			t.Errorf("request %q: outcome %v, want %s", id, fields["outcome"], want[id])
		}
		_, hasHash := fields["key_hash"]
		if hasHash != (id != "r-pass") {
			t.Errorf("request %q: key_hash present %v", id, hasHash)
		}
	}
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
