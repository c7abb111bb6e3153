package idempotency

import (
	"bytes"
	"net/http"
	"sync"
	"testing"
	"time"
)

// Every request gets exactly one decision, with the outcome of its path and
// the record key when it had one.
func TestEveryRequestGetsOneDecision(t *testing.T) {
	obs := &observed{}
	var fail sync.Map // X-Fail values whose upstream answers that status
	s := newStack(t, Config{Observe: obs.observe, Methods: []string{http.MethodPost}}, func(w http.ResponseWriter, r *http.Request, n int64) {
		if status, ok := fail.Load(r.Header.Get("X-Fail")); ok {
			http.Error(w, "upstream failed", status.(int))
			return
		}
		writeBatch(w, http.StatusOK, n)
	})
	keyOf := func(k string) RecordKey { return NewRecordKey(s.ns(), "Bearer t", k) }
	auth := withAuth("Bearer t")
	fail.Store("1", http.StatusUnprocessableEntity)
	fail.Store("2", http.StatusInternalServerError)

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
		}, OutcomeReleased, "o-2", 422},
		{"in doubt", func() result {
			return s.post(t, createBody, auth, withKey("o-5"), func(r *http.Request) { r.Header.Set("X-Fail", "2") })
		}, OutcomeInDoubt, "o-5", 500},
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
	g := newGate()
	s := newStack(t, Config{Observe: obs.observe, Wait: NoWait}, g.respond)
	t.Cleanup(g.open)
	first := make(chan result, 1)
	go func() { first <- s.send(t.Context(), createBody, withKey("f-1")) }()
	waitClosed(t, g.entered, "the owner to reach upstream")
	// A second owner would not be held: it would answer 200 at once.
	if res := s.post(t, createBody, withKey("f-1")); res.status != http.StatusConflict {
		t.Fatalf("duplicate: status %d, want 409", res.status)
	}
	if got := obs.take(); len(got) != 1 || got[0].Outcome != OutcomeInFlight {
		t.Fatalf("duplicate: decisions %+v, want one in_flight", got)
	}
	g.open()
	if res := recv(t, first, "the owner's answer"); res.err != nil || res.status != http.StatusOK {
		t.Fatalf("owner: status %d, err %v; want 200", res.status, res.err)
	}
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

// A Decision says what was answered and why, and how long the request had
// been in the handler: from its arrival, so a forwarded request's Duration
// covers its time upstream.
func TestDecisionStatusReasonDuration(t *testing.T) {
	type timed struct {
		Decision
		at time.Time // when Observe was told
	}
	var (
		mu       sync.Mutex
		got      []timed
		upstream time.Duration // the last upstream call's own time
	)
	cfg := Config{MaxResponse: 64, Observe: func(_ *http.Request, d Decision) {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, timed{d, time.Now()})
	}}
	s := newStack(t, cfg, func(w http.ResponseWriter, r *http.Request, n int64) {
		start := time.Now()
		defer func() { mu.Lock(); upstream = time.Since(start); mu.Unlock() }()
		switch r.URL.Path {
		case "/fail":
			http.Error(w, "upstream refused", http.StatusUnprocessableEntity)
		case "/error":
			http.Error(w, "upstream failed", http.StatusInternalServerError)
		case "/large":
			_, _ = w.Write(bytes.Repeat([]byte("x"), 65))
		default:
			writeBatch(w, http.StatusOK, n)
		}
	})
	for _, tc := range []struct {
		name      string
		body      string
		opts      []reqOpt
		outcome   Outcome
		status    int
		reason    string
		forwarded bool // decided once the upstream has answered
	}{
		{"stored", createBody, []reqOpt{withKey("d-1")}, OutcomeStored, 200, "", true},
		{"replayed", createBody, []reqOpt{withKey("d-1")}, OutcomeReplayed, 200, "", false},
		{"conflict", `{"a":1}`, []reqOpt{withKey("d-1")}, OutcomeConflict, 409, CodeKeyReused, false},
		{"rejected", `{"a":`, []reqOpt{withKey("d-2")}, OutcomeRejected, 400, CodeInvalidJSON, false},
		{"released", createBody, []reqOpt{withKey("d-3"), withPath("/fail")}, OutcomeReleased, 422, "not stored", true},
		{"in doubt", createBody, []reqOpt{withKey("d-5"), withPath("/error")}, OutcomeInDoubt, 500, "released: upstream answered 500", true},
		{"not stored", createBody, []reqOpt{withKey("d-4"), withPath("/large")}, OutcomeNotStored, 200, "larger than max_response", true},
		{"replay of a response not stored", createBody, []reqOpt{withKey("d-4"), withPath("/large")}, OutcomeReplayed, 409, CodeResponseNotStored, false},
		{"passthrough", createBody, nil, OutcomePassthrough, 0, "", false}, // decided before it goes upstream
	} {
		sent := time.Now()
		res := s.post(t, tc.body, tc.opts...)
		mu.Lock()
		ds, upstreamTime := got, upstream
		got = nil
		mu.Unlock()
		if len(ds) != 1 {
			t.Fatalf("%s: %d decisions %+v, want 1", tc.name, len(ds), ds)
		}
		d := ds[0]
		if d.Outcome != tc.outcome || d.Status != tc.status || d.Reason != tc.reason {
			t.Errorf("%s: decision %s, status %d, reason %q; want %s, %d, %q", tc.name, d.Outcome, d.Status, d.Reason, tc.outcome, tc.status, tc.reason)
		}
		if tc.status != 0 && res.status != tc.status {
			t.Errorf("%s: answered %d, but the decision says %d", tc.name, res.status, d.Status)
		}
		if since := d.at.Sub(sent); d.Duration <= 0 || d.Duration > since {
			t.Errorf("%s: Duration %v, want more than 0 and at most the %v since the request was sent", tc.name, d.Duration, since)
		}
		if tc.forwarded && d.Duration < upstreamTime {
			t.Errorf("%s: Duration %v is shorter than the %v the upstream took", tc.name, d.Duration, upstreamTime)
		}
	}
}
