package storetest

import (
	"context"
	"crypto/rand"
	"net/http"
	"reflect"
	"testing"
	"time"

	"github.com/caddy-idempotency/caddy-idempotency/idempotency"
)

func ctx(t *testing.T) context.Context { return t.Context() }

func newKey() idempotency.RecordKey {
	var k idempotency.RecordKey
	_, _ = rand.Read(k[:])
	return k
}

func newFingerprint() idempotency.Fingerprint {
	var fp idempotency.Fingerprint
	_, _ = rand.Read(fp[:])
	return fp
}

func sampleResponse() idempotency.Response {
	return idempotency.Response{
		Status: http.StatusOK,
		Header: http.Header{
			"Content-Type": {"application/json"},
			"Set-Cookie":   {"a=1", "b=2"},
			"X-Empty":      {""},
		},
		Body: []byte(`{"id":"batch_abc","object":"batch","status":"validating"}`),
	}
}

func cloneResponse(r idempotency.Response) idempotency.Response {
	return idempotency.Response{Status: r.Status, Header: r.Header.Clone(), Body: append([]byte(nil), r.Body...)}
}

// scribble overwrites every part of r in place, as a caller reusing its
// buffers would.
func scribble(r *idempotency.Response) {
	r.Status = 599
	for i := range r.Body {
		r.Body[i] = 'X'
	}
	for _, values := range r.Header {
		for i := range values {
			values[i] = "scribbled"
		}
	}
	r.Header.Set("X-Added", "after")
}

func mustBegin(t *testing.T, s idempotency.Store, key idempotency.RecordKey, fp idempotency.Fingerprint, owner idempotency.OwnerToken, lease time.Duration) (idempotency.Record, bool) {
	t.Helper()
	rec, owned, err := s.Begin(ctx(t), key, fp, owner, lease)
	if err != nil {
		t.Fatalf("Begin: %v", err)
	}
	return rec, owned
}

func mustOwn(t *testing.T, s idempotency.Store, key idempotency.RecordKey, fp idempotency.Fingerprint, owner idempotency.OwnerToken, lease time.Duration) idempotency.Record {
	t.Helper()
	rec, owned := mustBegin(t, s, key, fp, owner, lease)
	if !owned {
		t.Fatalf("Begin on a free key: owned=false, existing record %+v", rec)
	}
	return rec
}

func get(t *testing.T, s idempotency.Store, key idempotency.RecordKey) (idempotency.Record, bool) {
	t.Helper()
	rec, ok, err := s.Get(ctx(t), key)
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	return rec, ok
}

func mustGet(t *testing.T, s idempotency.Store, key idempotency.RecordKey) idempotency.Record {
	t.Helper()
	rec, ok := get(t, s, key)
	if !ok {
		t.Fatal("Get: no record, want one")
	}
	return rec
}

func wantAbsent(t *testing.T, s idempotency.Store, key idempotency.RecordKey) {
	t.Helper()
	if rec, ok := get(t, s, key); ok {
		t.Fatalf("Get: found %+v, want no record", rec)
	}
}

func wantInFlight(t *testing.T, rec idempotency.Record, owner idempotency.OwnerToken, fp idempotency.Fingerprint) {
	t.Helper()
	if rec.State != idempotency.StateInFlight {
		t.Errorf("State = %v, want in_flight", rec.State)
	}
	if rec.Owner != owner {
		t.Errorf("Owner = %x, want %x", rec.Owner, owner)
	}
	if rec.Fingerprint != fp {
		t.Errorf("Fingerprint = %x, want %x", rec.Fingerprint, fp)
	}
}

func wantCompleted(t *testing.T, rec idempotency.Record, fp idempotency.Fingerprint, resp idempotency.Response) {
	t.Helper()
	if rec.State != idempotency.StateCompleted {
		t.Errorf("State = %v, want completed", rec.State)
	}
	if rec.Fingerprint != fp {
		t.Errorf("Fingerprint = %x, want %x", rec.Fingerprint, fp)
	}
	if rec.Response == nil {
		t.Errorf("completed record has no Response")
		return
	}
	if got := rec.Response; got.Status != resp.Status || string(got.Body) != string(resp.Body) || !sameHeader(got.Header, resp.Header) || got.NotStored != resp.NotStored {
		t.Errorf("Response = {%d %v %q}, want {%d %v %q}", got.Status, got.Header, got.Body, resp.Status, resp.Header, resp.Body)
	}
}

// sameHeader compares headers treating nil and empty as equal.
func sameHeader(a, b http.Header) bool {
	if len(a) == 0 && len(b) == 0 {
		return true
	}
	return reflect.DeepEqual(a, b)
}

func wantNear(t *testing.T, what string, got, want time.Time) {
	t.Helper()
	if d := got.Sub(want); d < -clockSlack || d > clockSlack {
		t.Errorf("%s = %v, want within %v of %v", what, got, clockSlack, want)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting %v for %s", waitLimit, what)
		}
		time.Sleep(pollEvery)
	}
}

// waitExpired waits until Get no longer finds key, and fails if that came
// before expiresAt (less the clocks' slack).
func waitExpired(t *testing.T, s idempotency.Store, key idempotency.RecordKey, expiresAt time.Time, what string) {
	t.Helper()
	waitFor(t, what+" to expire", func() bool {
		_, ok := get(t, s, key)
		return !ok
	})
	if now := time.Now(); now.Before(expiresAt.Add(-clockSlack / 10)) {
		t.Errorf("%s vanished at %v, before it expired at %v", what, now, expiresAt)
	}
}

// waitLeaseLapsed waits until Get no longer finds key's in-flight record,
// its lease over, and then until after, so that the lease is over on any
// clock.
func waitLeaseLapsed(t *testing.T, s idempotency.Store, key idempotency.RecordKey, after time.Time) {
	t.Helper()
	waitFor(t, "lease expiry", func() bool {
		_, ok := get(t, s, key)
		return !ok
	})
	sleepUntil(after)
}

func sleepUntil(at time.Time) { time.Sleep(time.Until(at)) }
