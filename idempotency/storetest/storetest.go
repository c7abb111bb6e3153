// Package storetest is the contract every idempotency.Store must pass.
//
// It uses real time with short leases, so it also fits stores whose clock is
// not ours (Redis); each test waits by polling against a deadline. Tests run
// in parallel on random keys, so a store shared between tests or runs is fine,
// except for AdminStats, which counts every record and needs a store of its own.
package storetest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/caddy-idempotency/caddy-idempotency/idempotency"
)

const (
	shortLease = 300 * time.Millisecond
	longLease  = time.Minute
	longTTL    = time.Hour
	// clockSlack absorbs store-side millisecond rounding and scheduling delays
	// when comparing a stored time with one computed here.
	clockSlack = time.Second
	// waitLimit is how long a test polls for an expiry that is due in shortLease.
	waitLimit = 5 * time.Second
	pollEvery = 10 * time.Millisecond
	// lateOwnerDelay is how long after its lease a late owner completes.
	lateOwnerDelay = 1500 * time.Millisecond
)

// Run runs the contract suite, and the AdminStore contract (admin.go) when
// the store implements it. newStore returns a store for one test, which it
// may share with others, except for AdminStats, which counts every record;
// it should register its own cleanup (t.Cleanup).
func Run(t *testing.T, newStore func(t *testing.T) idempotency.Store) {
	tests := []struct {
		name string
		fn   func(*testing.T, idempotency.Store)
	}{
		{"BeginOnEmptyOwns", testBeginOnEmptyOwns},
		{"SecondBeginSeesInFlight", testSecondBeginSeesInFlight},
		{"CompleteReplays", testCompleteReplays},
		{"CompleteNotStored", testCompleteNotStored},
		{"ReleaseFreesKey", testReleaseFreesKey},
		{"RenewExtendsLease", testRenewExtendsLease},
		{"LeaseExpiryTakeover", testLeaseExpiryTakeover},
		{"LeaseExpiryOtherFingerprintConflicts", testLeaseExpiryOtherFingerprintConflicts},
		{"LateOwnerMayComplete", testLateOwnerMayComplete},
		{"LateOwnerMayHold", testLateOwnerMayHold},
		{"HoldByOwner", testHoldByOwner},
		{"HoldNotOwner", testHoldNotOwner},
		{"HeldTakeover", testHeldTakeover},
		{"HeldOtherFingerprintConflicts", testHeldOtherFingerprintConflicts},
		{"HeldExpiry", testHeldExpiry},
		{"MissingKeyNotOwner", testMissingKeyNotOwner},
		{"OtherTokenNotOwner", testOtherTokenNotOwner},
		{"CompletedNotOwner", testCompletedNotOwner},
		{"TTLExpiry", testTTLExpiry},
		{"DistinctKeysIndependent", testDistinctKeysIndependent},
		{"FingerprintKept", testFingerprintKept},
		{"CanceledContext", testCanceledContext},
		{"ResponseNotAliased", testResponseNotAliased},
		{"RacingBeginOneOwner", testRacingBeginOneOwner},
		{"RacingBeginHeldOneOwner", testRacingBeginHeldOneOwner},
		{"ConcurrentMixedOps", testConcurrentMixedOps},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, newStore(t))
		})
	}
	runAdmin(t, newStore)
}

func testBeginOnEmptyOwns(t *testing.T, s idempotency.Store) {
	key, fp, owner := newKey(), newFingerprint(), idempotency.NewOwnerToken()
	start := time.Now()
	rec, owned := mustBegin(t, s, key, fp, owner, longLease)
	if !owned {
		t.Fatalf("Begin on an empty key: owned=false, record %+v", rec)
	}
	wantInFlight(t, rec, owner, fp)
	wantNear(t, "LeaseUntil", rec.LeaseUntil, start.Add(longLease))
	wantNear(t, "CreatedAt", rec.CreatedAt, start)
	if rec.Prior != 0 || rec.Doubts != 0 {
		t.Errorf("fresh record: Prior %v, Doubts %d; want none", rec.Prior, rec.Doubts)
	}

	got := mustGet(t, s, key)
	wantInFlight(t, got, owner, fp)
}

func testSecondBeginSeesInFlight(t *testing.T, s idempotency.Store) {
	key := newKey()
	fpA, ownerA := newFingerprint(), idempotency.NewOwnerToken()
	mustOwn(t, s, key, fpA, ownerA, longLease)

	rec, owned := mustBegin(t, s, key, newFingerprint(), idempotency.NewOwnerToken(), longLease)
	if owned {
		t.Fatal("second Begin on an in-flight key reported owned")
	}
	wantInFlight(t, rec, ownerA, fpA)
	wantInFlight(t, mustGet(t, s, key), ownerA, fpA)
}

func testCompleteReplays(t *testing.T, s idempotency.Store) {
	key, fp, owner := newKey(), newFingerprint(), idempotency.NewOwnerToken()
	mustOwn(t, s, key, fp, owner, longLease)
	resp := sampleResponse()
	start := time.Now()
	if err := s.Complete(ctx(t), key, owner, cloneResponse(resp), longTTL); err != nil {
		t.Fatalf("Complete: %v", err)
	}

	rec, owned := mustBegin(t, s, key, newFingerprint(), idempotency.NewOwnerToken(), longLease)
	if owned {
		t.Fatal("Begin on a completed key reported owned")
	}
	wantCompleted(t, rec, fp, resp)
	wantNear(t, "ExpiresAt", rec.ExpiresAt, start.Add(longTTL))

	got := mustGet(t, s, key)
	wantCompleted(t, got, fp, resp)
	wantNear(t, "ExpiresAt", got.ExpiresAt, start.Add(longTTL))
}

// A 2xx whose response was not kept completes the record all the same, and
// the mark survives the store.
func testCompleteNotStored(t *testing.T, s idempotency.Store) {
	key, fp, owner := newKey(), newFingerprint(), idempotency.NewOwnerToken()
	mustOwn(t, s, key, fp, owner, longLease)
	if err := s.Complete(ctx(t), key, owner, idempotency.Response{Status: 201, NotStored: true}, longTTL); err != nil {
		t.Fatalf("Complete: %v", err)
	}
	for name, rec := range map[string]idempotency.Record{
		"Get": mustGet(t, s, key),
		"Begin": func() idempotency.Record {
			r, _ := mustBegin(t, s, key, fp, idempotency.NewOwnerToken(), longLease)
			return r
		}(),
	} {
		if rec.State != idempotency.StateCompleted || rec.Response == nil || !rec.Response.NotStored ||
			rec.Response.Status != 201 || len(rec.Response.Body) != 0 {
			t.Fatalf("%s: record %+v, want completed, status 201, not stored", name, rec)
		}
	}
}

func testReleaseFreesKey(t *testing.T, s idempotency.Store) {
	key, ownerA := newKey(), idempotency.NewOwnerToken()
	mustOwn(t, s, key, newFingerprint(), ownerA, longLease)
	if err := s.Release(ctx(t), key, ownerA); err != nil {
		t.Fatalf("Release: %v", err)
	}
	wantAbsent(t, s, key)

	fpB, ownerB := newFingerprint(), idempotency.NewOwnerToken()
	rec := mustOwn(t, s, key, fpB, ownerB, longLease)
	wantInFlight(t, rec, ownerB, fpB)
}

func testRenewExtendsLease(t *testing.T, s idempotency.Store) {
	key, fp, owner := newKey(), newFingerprint(), idempotency.NewOwnerToken()
	first := mustOwn(t, s, key, fp, owner, shortLease)
	if err := s.Renew(ctx(t), key, owner, longLease); err != nil {
		t.Fatalf("Renew: %v", err)
	}
	sleepUntil(first.LeaseUntil.Add(shortLease))

	rec, ok := get(t, s, key)
	if !ok {
		t.Fatal("record gone after its original lease although it was renewed")
	}
	wantInFlight(t, rec, owner, fp)
	if !rec.LeaseUntil.After(first.LeaseUntil.Add(longLease / 2)) {
		t.Errorf("LeaseUntil after Renew = %v, want about %v later than %v", rec.LeaseUntil, longLease, first.LeaseUntil)
	}
	if _, owned := mustBegin(t, s, key, newFingerprint(), idempotency.NewOwnerToken(), longLease); owned {
		t.Error("Begin took over a renewed lease")
	}
}

// A dead owner's key (its lease ran out) is taken over by a request with
// its fingerprint, which learns so from Prior and keeps CreatedAt: the
// upstream may have acted on the key since then. The old owner has lost it.
func testLeaseExpiryTakeover(t *testing.T, s idempotency.Store) {
	key, fp, ownerA := newKey(), newFingerprint(), idempotency.NewOwnerToken()
	recA := mustOwn(t, s, key, fp, ownerA, shortLease)

	ownerB := idempotency.NewOwnerToken()
	if _, owned := mustBegin(t, s, key, fp, ownerB, longLease); owned {
		t.Fatal("Begin took over a lease that had not expired")
	}
	var recB idempotency.Record
	waitFor(t, "takeover after lease expiry", func() bool {
		var owned bool
		recB, owned = mustBegin(t, s, key, fp, ownerB, longLease)
		return owned
	})
	if tookAt := time.Now(); tookAt.Before(recA.LeaseUntil.Add(-clockSlack / 10)) {
		t.Errorf("taken over at %v, before the lease ended at %v", tookAt, recA.LeaseUntil)
	}
	wantInFlight(t, recB, ownerB, fp)
	if recB.Prior != idempotency.StateInFlight {
		t.Errorf("Prior of the takeover = %v, want in_flight", recB.Prior)
	}
	wantSameMilli(t, "CreatedAt of the takeover", recB.CreatedAt, recA.CreatedAt)
	if recB.Doubts != 0 {
		t.Errorf("Doubts of the takeover = %d, want 0", recB.Doubts)
	}

	wantOwnerGone(t, s, key, ownerA, "old owner after takeover")
	got := mustGet(t, s, key)
	wantInFlight(t, got, ownerB, fp)
	wantNear(t, "new owner's LeaseUntil", got.LeaseUntil, recB.LeaseUntil)
	wantSameMilli(t, "CreatedAt read back", got.CreatedAt, recA.CreatedAt)
	if got.Prior != 0 {
		t.Errorf("Get returned Prior %v; only the Begin that takes over tells it", got.Prior)
	}

	resp := sampleResponse()
	if err := s.Complete(ctx(t), key, ownerB, cloneResponse(resp), longTTL); err != nil {
		t.Fatalf("new owner's Complete: %v", err)
	}
	wantCompleted(t, mustGet(t, s, key), fp, resp)
}

// A dead owner's key is not taken over by a request with another
// fingerprint: the upstream may have acted on the key with other
// parameters. That request gets the dead owner's record, until its own
// request (the same fingerprint) takes the key over.
func testLeaseExpiryOtherFingerprintConflicts(t *testing.T, s idempotency.Store) {
	key, fpA, ownerA := newKey(), newFingerprint(), idempotency.NewOwnerToken()
	recA := mustOwn(t, s, key, fpA, ownerA, shortLease)
	waitLeaseLapsed(t, s, key, recA.LeaseUntil.Add(shortLease)) // well past it on any clock

	fpB, ownerB := newFingerprint(), idempotency.NewOwnerToken()
	rec, owned := mustBegin(t, s, key, fpB, ownerB, longLease)
	if owned {
		t.Fatal("Begin with another fingerprint took over a dead owner's key")
	}
	wantInFlight(t, rec, ownerA, fpA)
	wantNear(t, "LeaseUntil of the dead owner's record", rec.LeaseUntil, recA.LeaseUntil)
	if rec.Prior != 0 {
		t.Errorf("Prior of a Begin that does not own = %v, want none", rec.Prior)
	}

	ownerC := idempotency.NewOwnerToken()
	recC := mustOwn(t, s, key, fpA, ownerC, longLease)
	wantInFlight(t, recC, ownerC, fpA)
	if recC.Prior != idempotency.StateInFlight {
		t.Errorf("Prior of the takeover = %v, want in_flight", recC.Prior)
	}
	if err := s.Hold(ctx(t), key, ownerA, longTTL); !errors.Is(err, idempotency.ErrNotOwner) {
		t.Errorf("old owner's Hold after takeover = %v, want ErrNotOwner", err)
	}
	wantInFlight(t, mustGet(t, s, key), ownerC, fpA)
}

// An owner whose lease passed but whose key nobody took over may still
// complete: nothing conflicts, and its response is the honest outcome. Stores
// keep such a record for idempotency.InFlightRetention past its lease; the
// test is late by more than any second-granular TTL rounding.
func testLateOwnerMayComplete(t *testing.T, s idempotency.Store) {
	key, fp, owner := newKey(), newFingerprint(), idempotency.NewOwnerToken()
	rec := mustOwn(t, s, key, fp, owner, shortLease)
	waitLeaseLapsed(t, s, key, rec.LeaseUntil.Add(lateOwnerDelay))
	resp := sampleResponse()
	if err := s.Complete(ctx(t), key, owner, cloneResponse(resp), longTTL); err != nil {
		t.Fatalf("Complete by the late owner of a key nobody took over: %v", err)
	}
	wantCompleted(t, mustGet(t, s, key), fp, resp)
}

func testMissingKeyNotOwner(t *testing.T, s idempotency.Store) {
	key, owner := newKey(), idempotency.NewOwnerToken()
	if err := s.Complete(ctx(t), key, owner, sampleResponse(), longTTL); !errors.Is(err, idempotency.ErrNotOwner) {
		t.Errorf("Complete on a missing key = %v, want ErrNotOwner", err)
	}
	if err := s.Release(ctx(t), key, owner); !errors.Is(err, idempotency.ErrNotOwner) {
		t.Errorf("Release on a missing key = %v, want ErrNotOwner", err)
	}
	if err := s.Renew(ctx(t), key, owner, longLease); !errors.Is(err, idempotency.ErrNotOwner) {
		t.Errorf("Renew on a missing key = %v, want ErrNotOwner", err)
	}
	if err := s.Hold(ctx(t), key, owner, longTTL); !errors.Is(err, idempotency.ErrNotOwner) {
		t.Errorf("Hold on a missing key = %v, want ErrNotOwner", err)
	}
	wantAbsent(t, s, key)
}

func testOtherTokenNotOwner(t *testing.T, s idempotency.Store) {
	key, fp, owner := newKey(), newFingerprint(), idempotency.NewOwnerToken()
	first := mustOwn(t, s, key, fp, owner, longLease)
	other := idempotency.NewOwnerToken()
	if err := s.Renew(ctx(t), key, other, 2*longLease); !errors.Is(err, idempotency.ErrNotOwner) {
		t.Errorf("Renew by another token = %v, want ErrNotOwner", err)
	}
	if err := s.Complete(ctx(t), key, other, sampleResponse(), longTTL); !errors.Is(err, idempotency.ErrNotOwner) {
		t.Errorf("Complete by another token = %v, want ErrNotOwner", err)
	}
	if err := s.Release(ctx(t), key, other); !errors.Is(err, idempotency.ErrNotOwner) {
		t.Errorf("Release by another token = %v, want ErrNotOwner", err)
	}
	if err := s.Hold(ctx(t), key, other, longTTL); !errors.Is(err, idempotency.ErrNotOwner) {
		t.Errorf("Hold by another token = %v, want ErrNotOwner", err)
	}
	got := mustGet(t, s, key)
	wantInFlight(t, got, owner, fp)
	wantNear(t, "LeaseUntil", got.LeaseUntil, first.LeaseUntil)
}

func testCompletedNotOwner(t *testing.T, s idempotency.Store) {
	key, fp, owner := newKey(), newFingerprint(), idempotency.NewOwnerToken()
	mustOwn(t, s, key, fp, owner, longLease)
	resp := sampleResponse()
	if err := s.Complete(ctx(t), key, owner, cloneResponse(resp), longTTL); err != nil {
		t.Fatalf("Complete: %v", err)
	}
	if err := s.Renew(ctx(t), key, owner, longLease); !errors.Is(err, idempotency.ErrNotOwner) {
		t.Errorf("Renew on a completed record = %v, want ErrNotOwner", err)
	}
	other := idempotency.Response{Status: 500, Body: []byte("second completion")}
	if err := s.Complete(ctx(t), key, owner, other, longTTL); !errors.Is(err, idempotency.ErrNotOwner) {
		t.Errorf("second Complete = %v, want ErrNotOwner", err)
	}
	if err := s.Release(ctx(t), key, owner); !errors.Is(err, idempotency.ErrNotOwner) {
		t.Errorf("Release on a completed record = %v, want ErrNotOwner", err)
	}
	if err := s.Hold(ctx(t), key, owner, longTTL); !errors.Is(err, idempotency.ErrNotOwner) {
		t.Errorf("Hold on a completed record = %v, want ErrNotOwner", err)
	}
	wantCompleted(t, mustGet(t, s, key), fp, resp)
}

func testTTLExpiry(t *testing.T, s idempotency.Store) {
	key, owner := newKey(), idempotency.NewOwnerToken()
	mustOwn(t, s, key, newFingerprint(), owner, longLease)
	if err := s.Complete(ctx(t), key, owner, sampleResponse(), shortLease); err != nil {
		t.Fatalf("Complete: %v", err)
	}
	rec := mustGet(t, s, key)
	if rec.State != idempotency.StateCompleted {
		t.Fatalf("State = %v right after Complete, want completed", rec.State)
	}
	waitExpired(t, s, key, rec.ExpiresAt, "the completed record")

	fpB, ownerB := newFingerprint(), idempotency.NewOwnerToken()
	got := mustOwn(t, s, key, fpB, ownerB, longLease)
	wantInFlight(t, got, ownerB, fpB)
	if got.Response != nil {
		t.Errorf("fresh record after expiry carries the old Response %+v", got.Response)
	}
	if got.Prior != 0 {
		t.Errorf("Prior of a Begin after the completed record expired = %v, want none", got.Prior)
	}
}

func testDistinctKeysIndependent(t *testing.T, s idempotency.Store) {
	key1, fp1, owner1 := newKey(), newFingerprint(), idempotency.NewOwnerToken()
	key2, fp2, owner2 := newKey(), newFingerprint(), idempotency.NewOwnerToken()
	mustOwn(t, s, key1, fp1, owner1, longLease)
	mustOwn(t, s, key2, fp2, owner2, longLease)

	resp := sampleResponse()
	if err := s.Complete(ctx(t), key1, owner1, cloneResponse(resp), longTTL); err != nil {
		t.Fatalf("Complete key1: %v", err)
	}
	wantInFlight(t, mustGet(t, s, key2), owner2, fp2)
	if err := s.Complete(ctx(t), key2, owner1, sampleResponse(), longTTL); !errors.Is(err, idempotency.ErrNotOwner) {
		t.Errorf("Complete of key2 with key1's token = %v, want ErrNotOwner", err)
	}
	if err := s.Release(ctx(t), key2, owner2); err != nil {
		t.Fatalf("Release key2: %v", err)
	}
	wantCompleted(t, mustGet(t, s, key1), fp1, resp)
	wantAbsent(t, s, key2)
}

func testFingerprintKept(t *testing.T, s idempotency.Store) {
	key, owner := newKey(), idempotency.NewOwnerToken()
	var fp idempotency.Fingerprint
	for i := range fp {
		fp[i] = byte(i*7 + 1)
	}
	mustOwn(t, s, key, fp, owner, longLease)
	if got := mustGet(t, s, key).Fingerprint; got != fp {
		t.Errorf("in-flight Fingerprint = %x, want %x", got, fp)
	}
	if err := s.Complete(ctx(t), key, owner, sampleResponse(), longTTL); err != nil {
		t.Fatalf("Complete: %v", err)
	}
	if got := mustGet(t, s, key).Fingerprint; got != fp {
		t.Errorf("completed Fingerprint = %x, want %x", got, fp)
	}
	rec, _ := mustBegin(t, s, key, newFingerprint(), idempotency.NewOwnerToken(), longLease)
	if rec.Fingerprint != fp {
		t.Errorf("Fingerprint returned by Begin = %x, want %x", rec.Fingerprint, fp)
	}
}

func testCanceledContext(t *testing.T, s idempotency.Store) {
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	key, owner := newKey(), idempotency.NewOwnerToken()
	if _, owned, err := s.Begin(canceled, key, newFingerprint(), owner, longLease); !errors.Is(err, context.Canceled) || owned {
		t.Errorf("Begin with a canceled context = owned %v, err %v; want context.Canceled", owned, err)
	}
	wantAbsent(t, s, key)

	mustOwn(t, s, key, newFingerprint(), owner, longLease)
	if _, _, err := s.Get(canceled, key); !errors.Is(err, context.Canceled) {
		t.Errorf("Get with a canceled context = %v, want context.Canceled", err)
	}
	if err := s.Release(canceled, key, owner); !errors.Is(err, context.Canceled) {
		t.Errorf("Release with a canceled context = %v, want context.Canceled", err)
	}
	if err := s.Complete(canceled, key, owner, sampleResponse(), longTTL); !errors.Is(err, context.Canceled) {
		t.Errorf("Complete with a canceled context = %v, want context.Canceled", err)
	}
	if err := s.Hold(canceled, key, owner, longTTL); !errors.Is(err, context.Canceled) {
		t.Errorf("Hold with a canceled context = %v, want context.Canceled", err)
	}
	if got := mustGet(t, s, key); got.State != idempotency.StateInFlight || got.Owner != owner {
		t.Errorf("record after canceled calls = %+v, want still in flight under its owner", got)
	}
}

func testResponseNotAliased(t *testing.T, s idempotency.Store) {
	key, fp, owner := newKey(), newFingerprint(), idempotency.NewOwnerToken()
	mustOwn(t, s, key, fp, owner, longLease)
	want := sampleResponse()
	given := cloneResponse(want)
	if err := s.Complete(ctx(t), key, owner, given, longTTL); err != nil {
		t.Fatalf("Complete: %v", err)
	}
	scribble(&given)
	got := mustGet(t, s, key)
	wantCompleted(t, got, fp, want)

	// Changing what a read returned must not change the store either.
	scribble(got.Response)
	wantCompleted(t, mustGet(t, s, key), fp, want)
}
