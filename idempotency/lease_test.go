package idempotency

import (
	"errors"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/caddy-idempotency/caddy-idempotency/idempotency/jcs"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// A live owner renews its lease, so a duplicate arriving long after the
// first lease would have ended still finds the key in use.
func TestLeaseRenewal(t *testing.T) {
	const lease = 300 * time.Millisecond
	g := newGate()
	s := newStack(t, Config{Lease: lease, Wait: NoWait}, g.respond)
	t.Cleanup(g.open)
	owner := make(chan result, 1)
	go func() { owner <- s.send(t.Context(), createBody, withKey("k-long")) }()
	waitClosed(t, g.entered, "the owner to reach upstream")
	start := time.Now()

	for _, at := range []time.Duration{2 * lease, 3 * lease} { // upstream held about 1s
		time.Sleep(time.Until(start.Add(at))) // lease expiry is the point: real time must pass
		rec, ok := getRecord(t, s.store, s.ns(), "", "k-long")
		if !ok || rec.State != StateInFlight || !rec.LeaseUntil.After(time.Now()) {
			t.Fatalf("%v after begin: record %+v (live %v), want a renewed in-flight lease", at, rec, ok)
		}
		wantError(t, s.post(t, createBody, withKey("k-long")), http.StatusConflict, CodeKeyInUse)
	}
	time.Sleep(time.Until(start.Add(time.Second)))
	g.open()
	first := recv(t, owner, "the owner's response")
	if first.err != nil {
		t.Fatal(first.err)
	}
	wantForwarded(t, first, http.StatusOK)
	wantReplayOf(t, s.post(t, createBody, withKey("k-long")), first)
	s.up.wantCalls(t, 1)
}

// A dead owner's lease runs out and the next request takes the key over.
func TestLeaseTakeover(t *testing.T) {
	const lease = 250 * time.Millisecond
	for _, wait := range []time.Duration{NoWait, testTimeout} {
		t.Run("wait="+wait.String(), func(t *testing.T) {
			s := newStack(t, Config{Wait: wait}, nil)
			canonical, _, err := jcs.AppendJSONWithout(nil, []byte(createBody), DefaultKeyField)
			if err != nil {
				t.Fatal(err)
			}
			fp := NewFingerprint(http.MethodPost, batchesPath, "", BodyJSON, canonical)
			rk := NewRecordKey(s.ns(), "Bearer sk-dead", "k-orphan")
			dead := NewOwnerToken()
			rec, owned, err := s.store.Begin(t.Context(), rk, fp, dead, lease)
			if err != nil || !owned {
				t.Fatalf("Begin for the dead owner = %v, %v", owned, err)
			}
			auth := withAuth("Bearer sk-dead")

			if wait == NoWait {
				wantError(t, s.post(t, createBody, withKey("k-orphan"), auth), http.StatusConflict, CodeKeyInUse)
				s.up.wantCalls(t, 0)
				time.Sleep(time.Until(rec.LeaseUntil) + 20*time.Millisecond) // the lease must really expire
			}
			r := s.post(t, createBody, withKey("k-orphan"), auth)
			wantForwarded(t, r, http.StatusOK)
			if now := time.Now(); now.Before(rec.LeaseUntil) {
				t.Fatalf("forwarded at %v, before the dead owner's lease ended at %v", now, rec.LeaseUntil)
			}
			s.up.wantCalls(t, 1)
			if err := s.store.Complete(t.Context(), rk, dead, Response{Status: 200}, time.Hour); !errors.Is(err, ErrNotOwner) {
				t.Fatalf("the dead owner's Complete = %v, want ErrNotOwner", err)
			}
			wantReplayOf(t, s.post(t, createBody, withKey("k-orphan"), auth), r)
			s.up.wantCalls(t, 1)
		})
	}
}

// A stream completed early (it outgrew max_response) stops renewing its
// lease: no "lease lost" warning while the rest of it goes out.
func TestCompletedStreamStopsRenewing(t *testing.T) {
	core, logs := observer.New(zapcore.WarnLevel)
	s := newStack(t, Config{MaxResponse: 10, Lease: 150 * time.Millisecond, Logger: zap.New(core)},
		func(w http.ResponseWriter, r *http.Request, n int64) {
			w.Header().Set("Content-Type", "text/event-stream")
			for i := range 8 {
				fmt.Fprintf(w, "data: %d, more than ten bytes\n\n", i)
				http.NewResponseController(w).Flush()
				time.Sleep(60 * time.Millisecond) // the stream outlives several renewals
			}
		})
	wantStatus(t, s.post(t, createBody, withKey("k-long-stream")), http.StatusOK)
	for _, e := range logs.All() {
		t.Errorf("logged %s %q %v", e.Level, e.Message, e.ContextMap())
	}
	wantError(t, s.post(t, createBody, withKey("k-long-stream")), http.StatusConflict, CodeResponseNotStored)
}
