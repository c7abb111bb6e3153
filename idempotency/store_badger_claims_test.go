package idempotency

import (
	"errors"
	"net/http"
	"sync"
	"testing"
	"time"
)

// An in-flight record left by a closed (or killed) store is on disk only: a
// reopened store answers it as in flight until its lease ends, its old owner
// can no longer complete it, and then the key can be taken over.
func TestBadgerReopenedStoreHoldsButDoesNotOwnOldClaim(t *testing.T) {
	dir := t.TempDir()
	ctx := t.Context()
	key, fp, old := RecordKey{7}, Fingerprint{8}, NewToken()
	s := openTestBadger(t, dir)
	if _, owned, err := s.Begin(ctx, key, fp, old, 300*time.Millisecond); err != nil || !owned {
		t.Fatalf("Begin = owned %v, err %v", owned, err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	s = openTestBadger(t, dir)
	defer s.Close()
	rec, owned, err := s.Begin(ctx, key, fp, NewToken(), time.Minute)
	if err != nil || owned || rec.State != StateInFlight || rec.Owner != old {
		t.Fatalf("Begin after reopen = %+v owned %v err %v, want the old in-flight record", rec, owned, err)
	}
	resp := Response{Status: 200, Header: http.Header{}, Body: []byte("{}")}
	if err := s.Complete(ctx, key, old, resp, time.Hour); !errors.Is(err, ErrNotOwner) {
		t.Fatalf("Complete by the closed store's owner = %v, want ErrNotOwner", err)
	}
	if err := s.Release(ctx, key, old); !errors.Is(err, ErrNotOwner) {
		t.Fatalf("Release by the closed store's owner = %v, want ErrNotOwner", err)
	}
	time.Sleep(time.Until(rec.LeaseUntil) + 10*time.Millisecond)
	if _, owned, err := s.Begin(ctx, key, fp, NewToken(), time.Minute); err != nil || !owned {
		t.Fatalf("Begin after the old lease = owned %v, err %v, want a takeover", owned, err)
	}
}

// Close ends every operation, including those the claim table could answer.
func TestBadgerClosedStoreRefusesClaimedKeys(t *testing.T) {
	s := openTestBadger(t, t.TempDir())
	ctx := t.Context()
	key, owner := RecordKey{9}, NewToken()
	if _, owned, err := s.Begin(ctx, key, Fingerprint{1}, owner, time.Minute); err != nil || !owned {
		t.Fatalf("Begin = owned %v, err %v", owned, err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, _, err := s.Begin(ctx, key, Fingerprint{1}, NewToken(), time.Minute); err == nil {
		t.Error("Begin on a closed store succeeded")
	}
	if _, _, err := s.Get(ctx, key); err == nil {
		t.Error("Get on a closed store succeeded")
	}
	if err := s.Renew(ctx, key, owner, time.Minute); err == nil || errors.Is(err, ErrNotOwner) {
		t.Errorf("Renew on a closed store = %v, want a store error", err)
	}
}

// Keys on one stripe serialize, keys on others do not wait: many goroutines
// on many keys, each key claimed exactly once and completed by its owner.
func TestBadgerClaimsManyKeysConcurrently(t *testing.T) {
	s := openTestBadger(t, t.TempDir())
	defer s.Close()
	ctx := t.Context()
	const keys, perKey = 300, 8
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		owner = map[RecordKey]int{}
	)
	for i := range keys * perKey {
		wg.Go(func() {
			key := RecordKey{byte(i % keys), byte(i % keys >> 8), 0xee}
			tok := NewToken()
			_, owned, err := s.Begin(ctx, key, Fingerprint{1}, tok, time.Minute)
			if err != nil {
				t.Errorf("Begin: %v", err)
				return
			}
			if !owned {
				return
			}
			mu.Lock()
			owner[key]++
			mu.Unlock()
			if err := s.Complete(ctx, key, tok, Response{Status: 200, Header: http.Header{}}, time.Hour); err != nil {
				t.Errorf("Complete: %v", err)
			}
		})
	}
	wg.Wait()
	if len(owner) != keys {
		t.Fatalf("%d keys claimed, want %d", len(owner), keys)
	}
	for key, n := range owner {
		if n != 1 {
			t.Errorf("key %x claimed %d times", key[:2], n)
		}
		if rec, ok, err := s.Get(ctx, key); err != nil || !ok || rec.State != StateCompleted {
			t.Errorf("key %x: Get = %v ok %v err %v, want completed", key[:2], rec.State, ok, err)
		}
	}
}

// A claim its owner never completed nor released (both failed) is dropped
// once it is no longer retained, so the table cannot grow without bound.
func TestBadgerClaimSweep(t *testing.T) {
	var stripe claimStripe
	stripe.claims = map[RecordKey]Record{}
	now := time.Now()
	dead := Record{State: StateInFlight, LeaseUntil: now.Add(-inFlightRetention - time.Second)}
	alive := Record{State: StateInFlight, LeaseUntil: now.Add(-time.Second)}
	stripe.claims[RecordKey{1}] = dead
	stripe.claims[RecordKey{2}] = alive
	stripe.sweep(now)
	if _, ok := stripe.claims[RecordKey{1}]; ok {
		t.Error("a claim past its retention survived the sweep")
	}
	if _, ok := stripe.claims[RecordKey{2}]; !ok {
		t.Error("a claim still retained was swept")
	}
	stripe.claims[RecordKey{3}] = dead
	stripe.sweep(now.Add(time.Second))
	if _, ok := stripe.claims[RecordKey{3}]; !ok {
		t.Error("swept again within memorySweepInterval")
	}
}
