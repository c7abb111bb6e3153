package storetest

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/caddy-idempotency/caddy-idempotency/idempotency"
)

// adminTests are the contract of idempotency.AdminStore, which Run also runs
// for every store that implements it. Stats needs a store of its own: the
// store newStore returns for it must be one no other test writes to.
var adminTests = []struct {
	name string
	fn   func(*testing.T, idempotency.AdminStore, idempotency.Store)
}{
	{"AdminPurgeCompleted", testAdminPurgeCompleted},
	{"AdminPurgeInFlight", testAdminPurgeInFlight},
	{"AdminPurgeHeld", testAdminPurgeHeld},
	{"AdminPurgeMissing", testAdminPurgeMissing},
	{"AdminPurgeDeadRecords", testAdminPurgeDeadRecords},
	{"AdminPurgeRacesComplete", testAdminPurgeRacesComplete},
	{"AdminStats", testAdminStats},
	{"AdminCanceledContext", testAdminCanceledContext},
}

// runAdmin runs adminTests on stores that implement AdminStore.
func runAdmin(t *testing.T, newStore func(t *testing.T) idempotency.Store) {
	for _, tc := range adminTests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := newStore(t)
			a, ok := s.(idempotency.AdminStore)
			if !ok {
				t.Skipf("%T does not implement idempotency.AdminStore", s)
			}
			tc.fn(t, a, s)
		})
	}
}

func purge(t *testing.T, a idempotency.AdminStore, key idempotency.RecordKey) bool {
	t.Helper()
	found, err := a.Purge(ctx(t), key)
	if err != nil {
		t.Fatalf("Purge: %v", err)
	}
	return found
}

func stats(t *testing.T, a idempotency.AdminStore) idempotency.Stats {
	t.Helper()
	st, err := a.Stats(ctx(t))
	if err != nil {
		t.Fatalf("Stats: %v", err)
	}
	return st
}

func testAdminPurgeCompleted(t *testing.T, a idempotency.AdminStore, s idempotency.Store) {
	key, owner := newKey(), idempotency.NewOwnerToken()
	mustOwn(t, s, key, newFingerprint(), owner, longLease)
	if err := s.Complete(ctx(t), key, owner, sampleResponse(), longTTL); err != nil {
		t.Fatalf("Complete: %v", err)
	}
	if !purge(t, a, key) {
		t.Fatal("Purge of a completed record reported none")
	}
	wantAbsent(t, s, key)
	if purge(t, a, key) {
		t.Error("second Purge reported a record")
	}
	fpB, ownerB := newFingerprint(), idempotency.NewOwnerToken()
	wantInFlight(t, mustOwn(t, s, key, fpB, ownerB, longLease), ownerB, fpB)
}

// The owner of a purged in-flight record has lost it: before and after
// another request takes the key, its Renew, Complete and Release are refused
// and leave the new owner's record alone.
func testAdminPurgeInFlight(t *testing.T, a idempotency.AdminStore, s idempotency.Store) {
	key, ownerA := newKey(), idempotency.NewOwnerToken()
	mustOwn(t, s, key, newFingerprint(), ownerA, longLease)
	if !purge(t, a, key) {
		t.Fatal("Purge of an in-flight record reported none")
	}
	wantAbsent(t, s, key)
	wantOwnerLost(t, s, key, ownerA)
	wantAbsent(t, s, key)

	fpB, ownerB := newFingerprint(), idempotency.NewOwnerToken()
	mustOwn(t, s, key, fpB, ownerB, longLease)
	wantOwnerLost(t, s, key, ownerA)
	wantInFlight(t, mustGet(t, s, key), ownerB, fpB)
}

// A held record is purged like any other: found, gone, and its key free for
// any request, which takes nothing over.
func testAdminPurgeHeld(t *testing.T, a idempotency.AdminStore, s idempotency.Store) {
	key, fp := newKey(), newFingerprint()
	mustHold(t, s, key, fp, longTTL)
	if !purge(t, a, key) {
		t.Fatal("Purge of a held record reported none")
	}
	wantAbsent(t, s, key)
	fpB, ownerB := newFingerprint(), idempotency.NewOwnerToken()
	rec := mustOwn(t, s, key, fpB, ownerB, longLease)
	wantInFlight(t, rec, ownerB, fpB)
	if rec.Prior != 0 || rec.Doubts != 0 {
		t.Errorf("Begin after the purge: Prior %v, Doubts %d; want a fresh record", rec.Prior, rec.Doubts)
	}
}

func wantOwnerLost(t *testing.T, s idempotency.Store, key idempotency.RecordKey, owner idempotency.OwnerToken) {
	t.Helper()
	if err := s.Renew(ctx(t), key, owner, longLease); !errors.Is(err, idempotency.ErrNotOwner) {
		t.Errorf("Renew by the purged owner = %v, want ErrNotOwner", err)
	}
	if err := s.Complete(ctx(t), key, owner, sampleResponse(), longTTL); !errors.Is(err, idempotency.ErrNotOwner) {
		t.Errorf("Complete by the purged owner = %v, want ErrNotOwner", err)
	}
	if err := s.Release(ctx(t), key, owner); !errors.Is(err, idempotency.ErrNotOwner) {
		t.Errorf("Release by the purged owner = %v, want ErrNotOwner", err)
	}
	if err := s.Hold(ctx(t), key, owner, longTTL); !errors.Is(err, idempotency.ErrNotOwner) {
		t.Errorf("Hold by the purged owner = %v, want ErrNotOwner", err)
	}
}

func testAdminPurgeMissing(t *testing.T, a idempotency.AdminStore, s idempotency.Store) {
	key := newKey()
	if purge(t, a, key) {
		t.Error("Purge of a key never stored reported a record")
	}
	wantAbsent(t, s, key)
}

// Records that are no longer live (an expired one, an in-flight one past its
// lease) are not reported, but they are deleted: a late owner can no longer
// complete.
func testAdminPurgeDeadRecords(t *testing.T, a idempotency.AdminStore, s idempotency.Store) {
	expired, owner := newKey(), idempotency.NewOwnerToken()
	mustOwn(t, s, expired, newFingerprint(), owner, longLease)
	if err := s.Complete(ctx(t), expired, owner, sampleResponse(), shortLease); err != nil {
		t.Fatalf("Complete: %v", err)
	}
	lapsed, late := newKey(), idempotency.NewOwnerToken()
	first := mustOwn(t, s, lapsed, newFingerprint(), late, shortLease)
	waitFor(t, "both records to lapse", func() bool {
		_, ok1 := get(t, s, expired)
		_, ok2 := get(t, s, lapsed)
		return !ok1 && !ok2 && time.Now().After(first.LeaseUntil)
	})
	if purge(t, a, expired) {
		t.Error("Purge of an expired record reported a live one")
	}
	if purge(t, a, lapsed) {
		t.Error("Purge of an in-flight record past its lease reported a live one")
	}
	// Without the purge the late owner could still complete (LateOwnerMayComplete).
	if err := s.Complete(ctx(t), lapsed, late, sampleResponse(), longTTL); !errors.Is(err, idempotency.ErrNotOwner) {
		t.Errorf("Complete by the late owner after Purge = %v, want ErrNotOwner", err)
	}
	wantAbsent(t, s, lapsed)
}

// Whichever of Purge and Complete goes first, the record is gone after both:
// a Complete after the Purge must fail, not resurrect the record.
func testAdminPurgeRacesComplete(t *testing.T, a idempotency.AdminStore, s idempotency.Store) {
	const keys = 32
	for range keys {
		key, owner := newKey(), idempotency.NewOwnerToken()
		mustOwn(t, s, key, newFingerprint(), owner, longLease)
		var (
			wg                  sync.WaitGroup
			completeErr, purgeE error
			found               bool
		)
		start := make(chan struct{})
		wg.Add(2)
		go func() {
			defer wg.Done()
			<-start
			completeErr = s.Complete(ctx(t), key, owner, sampleResponse(), longTTL)
		}()
		go func() {
			defer wg.Done()
			<-start
			found, purgeE = a.Purge(ctx(t), key)
		}()
		close(start)
		wg.Wait()
		if purgeE != nil || (completeErr != nil && !errors.Is(completeErr, idempotency.ErrNotOwner)) {
			t.Fatalf("Purge: %v; Complete: %v", purgeE, completeErr)
		}
		if !found {
			t.Errorf("Purge racing Complete found no record (Complete: %v)", completeErr)
		}
		if rec, ok := get(t, s, key); ok {
			t.Fatalf("after Purge and Complete (%v) the record is back: %+v", completeErr, rec)
		}
	}
}

func testAdminStats(t *testing.T, a idempotency.AdminStore, s idempotency.Store) {
	if st := stats(t, a); st != (idempotency.Stats{}) {
		t.Fatalf("Stats of an empty store = %+v", st)
	}
	own := func(lease time.Duration) (idempotency.RecordKey, idempotency.OwnerToken) {
		key, owner := newKey(), idempotency.NewOwnerToken()
		mustOwn(t, s, key, newFingerprint(), owner, lease)
		return key, owner
	}
	complete := func(key idempotency.RecordKey, owner idempotency.OwnerToken, ttl time.Duration) {
		if err := s.Complete(ctx(t), key, owner, sampleResponse(), ttl); err != nil {
			t.Fatalf("Complete: %v", err)
		}
	}
	var inFlight []idempotency.RecordKey
	for range 3 {
		key, _ := own(longLease)
		inFlight = append(inFlight, key)
	}
	for range 2 {
		key, owner := own(longLease)
		complete(key, owner, longTTL)
	}
	key, owner := own(longLease)
	if err := s.Release(ctx(t), key, owner); err != nil {
		t.Fatalf("Release: %v", err)
	}
	// The short records must outlive the first Stats, whose SCAN walks every
	// key of a Redis shared with other tests: shortLease is too short for
	// that on a loaded machine.
	const short = 3 * time.Second
	expiring, owner := own(longLease)
	complete(expiring, owner, short)
	lapsing, _ := own(short)
	var held []idempotency.RecordKey
	for range 2 {
		key := newKey()
		mustHold(t, s, key, newFingerprint(), longTTL)
		held = append(held, key)
	}
	ending := newKey()
	mustHold(t, s, ending, newFingerprint(), short)
	if st := stats(t, a); st != (idempotency.Stats{InFlight: 4, Completed: 3, InDoubt: 3}) || st.Total() != 10 {
		t.Fatalf("Stats = %+v (total %d), want 4 in flight, 3 completed and 3 in doubt", st, st.Total())
	}
	waitFor(t, "the short records to lapse", func() bool {
		_, ok1 := get(t, s, expiring)
		_, ok2 := get(t, s, lapsing)
		_, ok3 := get(t, s, ending)
		return !ok1 && !ok2 && !ok3
	})
	if st := stats(t, a); st != (idempotency.Stats{InFlight: 3, Completed: 2, InDoubt: 2}) {
		t.Fatalf("Stats after expiry = %+v, want 3 in flight, 2 completed and 2 in doubt", st)
	}
	purge(t, a, inFlight[0])
	purge(t, a, held[0])
	if st := stats(t, a); st != (idempotency.Stats{InFlight: 2, Completed: 2, InDoubt: 1}) || st.Total() != 5 {
		t.Fatalf("Stats after two purges = %+v (total %d), want 2 in flight, 2 completed and 1 in doubt", st, st.Total())
	}
}

func testAdminCanceledContext(t *testing.T, a idempotency.AdminStore, s idempotency.Store) {
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	key := newKey()
	mustOwn(t, s, key, newFingerprint(), idempotency.NewOwnerToken(), longLease)
	if _, err := a.Purge(canceled, key); !errors.Is(err, context.Canceled) {
		t.Errorf("Purge with a canceled context = %v, want context.Canceled", err)
	}
	if _, err := a.Stats(canceled); !errors.Is(err, context.Canceled) {
		t.Errorf("Stats with a canceled context = %v, want context.Canceled", err)
	}
	mustGet(t, s, key)
}
