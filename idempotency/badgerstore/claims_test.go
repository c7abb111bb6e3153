package badgerstore

import (
	"errors"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/caddy-idempotency/caddy-idempotency/idempotency"
)

// An in-flight record left by a closed (or killed) store is on disk only: a
// reopened store answers it as in flight until its lease ends, its old owner
// can no longer complete nor hold it, and then the key can be taken over by
// a request with its fingerprint only, which is told so (Prior).
func TestBadgerReopenedStoreHoldsButDoesNotOwnOldClaim(t *testing.T) {
	dir := t.TempDir()
	ctx := t.Context()
	key, fp, old := idempotency.RecordKey{7}, idempotency.Fingerprint{8}, idempotency.NewOwnerToken()
	s := openTestBadger(t, dir)
	if _, owned, err := s.Begin(ctx, key, fp, old, 300*time.Millisecond); err != nil || !owned {
		t.Fatalf("Begin = owned %v, err %v", owned, err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	s = openTestBadger(t, dir)
	defer s.Close()
	rec, owned, err := s.Begin(ctx, key, fp, idempotency.NewOwnerToken(), time.Minute)
	if err != nil || owned || rec.State != idempotency.StateInFlight || rec.Owner != old {
		t.Fatalf("Begin after reopen = %+v owned %v err %v, want the old in-flight record", rec, owned, err)
	}
	resp := idempotency.Response{Status: 200, Header: http.Header{}, Body: []byte("{}")}
	if err := s.Complete(ctx, key, old, resp, time.Hour); !errors.Is(err, idempotency.ErrNotOwner) {
		t.Fatalf("Complete by the closed store's owner = %v, want ErrNotOwner", err)
	}
	if err := s.Release(ctx, key, old); !errors.Is(err, idempotency.ErrNotOwner) {
		t.Fatalf("Release by the closed store's owner = %v, want ErrNotOwner", err)
	}
	if err := s.Hold(ctx, key, old, time.Hour); !errors.Is(err, idempotency.ErrNotOwner) {
		t.Fatalf("Hold by the closed store's owner = %v, want ErrNotOwner", err)
	}
	time.Sleep(time.Until(rec.LeaseUntil) + 10*time.Millisecond)
	if other, owned, err := s.Begin(ctx, key, idempotency.Fingerprint{9}, idempotency.NewOwnerToken(), time.Minute); err != nil || owned || other.Owner != old {
		t.Fatalf("Begin with another fingerprint after the old lease = %+v owned %v, err %v, want the dead owner's record", other, owned, err)
	}
	took, owned, err := s.Begin(ctx, key, fp, idempotency.NewOwnerToken(), time.Minute)
	if err != nil || !owned || took.Prior != idempotency.StateInFlight || !took.CreatedAt.Equal(rec.CreatedAt) {
		t.Fatalf("Begin after the old lease = %+v owned %v, err %v, want a takeover of the in-flight record created at %v", took, owned, err, rec.CreatedAt)
	}
}

// A held record is on disk only, with a Badger TTL of its hold: a reopened
// store still answers it, and the next request with its fingerprint takes
// it over, keeping its creation time and doubts.
func TestBadgerHeldRecordSurvivesReopen(t *testing.T) {
	dir := t.TempDir()
	ctx := t.Context()
	key, fp, owner := idempotency.RecordKey{5}, idempotency.Fingerprint{6}, idempotency.NewOwnerToken()
	s := openTestBadger(t, dir)
	first, owned, err := s.Begin(ctx, key, fp, owner, time.Minute)
	if err != nil || !owned {
		t.Fatalf("Begin = owned %v, err %v", owned, err)
	}
	const hold = time.Hour
	if err := s.Hold(ctx, key, owner, hold); err != nil {
		t.Fatalf("Hold: %v", err)
	}
	stripe := s.claims.lock(key)
	_, claimed := stripe.claims[key]
	stripe.mu.Unlock()
	if claimed {
		t.Error("the claim table still holds the held record")
	}
	err = s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(badgerRecordKey(key))
		if err != nil {
			return err
		}
		if ttl := time.Until(time.Unix(int64(item.ExpiresAt()), 0)); ttl < hold-2*time.Second || ttl > hold+badgerTTLSlack+time.Second {
			t.Errorf("Badger TTL of the held record = %v, want about %v", ttl, hold)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("reading the held record: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	s = openTestBadger(t, dir)
	defer s.Close()
	rec, ok, err := s.Get(ctx, key)
	if err != nil || !ok || rec.State != idempotency.StateInDoubt || rec.Doubts != 1 || rec.Fingerprint != fp {
		t.Fatalf("Get after reopen = %+v ok %v err %v, want the held record", rec, ok, err)
	}
	if _, owned, err := s.Begin(ctx, key, idempotency.Fingerprint{7}, idempotency.NewOwnerToken(), time.Minute); err != nil || owned {
		t.Fatalf("Begin with another fingerprint = owned %v, err %v, want the held record", owned, err)
	}
	took, owned, err := s.Begin(ctx, key, fp, idempotency.NewOwnerToken(), time.Minute)
	if err != nil || !owned || took.Prior != idempotency.StateInDoubt || took.Doubts != 1 || took.CreatedAt.UnixMilli() != first.CreatedAt.UnixMilli() {
		t.Fatalf("Begin with its fingerprint = %+v owned %v, err %v, want a takeover of the held record", took, owned, err)
	}
}

// Close ends every operation, including those the claim table could answer.
func TestBadgerClosedStoreRefusesClaimedKeys(t *testing.T) {
	s := openTestBadger(t, t.TempDir())
	ctx := t.Context()
	key, owner := idempotency.RecordKey{9}, idempotency.NewOwnerToken()
	if _, owned, err := s.Begin(ctx, key, idempotency.Fingerprint{1}, owner, time.Minute); err != nil || !owned {
		t.Fatalf("Begin = owned %v, err %v", owned, err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, _, err := s.Begin(ctx, key, idempotency.Fingerprint{1}, idempotency.NewOwnerToken(), time.Minute); err == nil {
		t.Error("Begin on a closed store succeeded")
	}
	if _, _, err := s.Get(ctx, key); err == nil {
		t.Error("Get on a closed store succeeded")
	}
	if err := s.Renew(ctx, key, owner, time.Minute); err == nil || errors.Is(err, idempotency.ErrNotOwner) {
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
		owner = map[idempotency.RecordKey]int{}
	)
	for i := range keys * perKey {
		wg.Go(func() {
			key := idempotency.RecordKey{byte(i % keys), byte(i % keys >> 8), 0xee}
			tok := idempotency.NewOwnerToken()
			_, owned, err := s.Begin(ctx, key, idempotency.Fingerprint{1}, tok, time.Minute)
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
			if err := s.Complete(ctx, key, tok, idempotency.Response{Status: 200, Header: http.Header{}}, time.Hour); err != nil {
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
		if rec, ok, err := s.Get(ctx, key); err != nil || !ok || rec.State != idempotency.StateCompleted {
			t.Errorf("key %x: Get = %v ok %v err %v, want completed", key[:2], rec.State, ok, err)
		}
	}
}

// A claim its owner never completed nor released (both failed) is dropped
// once it is no longer retained, so the table cannot grow without bound.
func TestBadgerClaimSweep(t *testing.T) {
	var stripe claimStripe
	stripe.claims = map[idempotency.RecordKey]idempotency.Record{}
	now := time.Now()
	dead := idempotency.Record{State: idempotency.StateInFlight, LeaseUntil: now.Add(-idempotency.InFlightRetention - time.Second)}
	alive := idempotency.Record{State: idempotency.StateInFlight, LeaseUntil: now.Add(-time.Second)}
	stripe.claims[idempotency.RecordKey{1}] = dead
	stripe.claims[idempotency.RecordKey{2}] = alive
	stripe.sweep(now)
	if _, ok := stripe.claims[idempotency.RecordKey{1}]; ok {
		t.Error("a claim past its retention survived the sweep")
	}
	if _, ok := stripe.claims[idempotency.RecordKey{2}]; !ok {
		t.Error("a claim still retained was swept")
	}
	stripe.claims[idempotency.RecordKey{3}] = dead
	stripe.sweep(now.Add(time.Second))
	if _, ok := stripe.claims[idempotency.RecordKey{3}]; !ok {
		t.Error("swept again within idempotency.SweepInterval")
	}
}
