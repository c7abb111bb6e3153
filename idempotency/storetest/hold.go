package storetest

import (
	"errors"
	"testing"
	"time"

	"github.com/caddy-idempotency/caddy-idempotency/idempotency"
)

// The contract of Store.Hold, and of Begin on a held (in-doubt) record.

// shortHold is the hold of a record the test waits to see expire.
const shortHold = 1200 * time.Millisecond

// mustHold begins key with fp under a new owner and holds it for hold. It
// returns the in-flight record Begin returned and that owner.
func mustHold(t *testing.T, s idempotency.Store, key idempotency.RecordKey, fp idempotency.Fingerprint, hold time.Duration) (idempotency.Record, idempotency.OwnerToken) {
	t.Helper()
	owner := idempotency.NewOwnerToken()
	rec := mustOwn(t, s, key, fp, owner, longLease)
	if err := s.Hold(ctx(t), key, owner, hold); err != nil {
		t.Fatalf("Hold by the owner: %v", err)
	}
	return rec, owner
}

// An owner's Hold turns its record into one in doubt: same fingerprint and
// creation time, one doubt, no owner, held for hold. The owner has given
// the key up.
func testHoldByOwner(t *testing.T, s idempotency.Store) {
	key, fp := newKey(), newFingerprint()
	start := time.Now()
	first, owner := mustHold(t, s, key, fp, longTTL)

	got := mustGet(t, s, key)
	wantInDoubt(t, got, fp, 1)
	wantSameMilli(t, "CreatedAt of the held record", got.CreatedAt, first.CreatedAt)
	wantNear(t, "ExpiresAt of the held record", got.ExpiresAt, start.Add(longTTL))
	if got.Prior != 0 {
		t.Errorf("Get returned Prior %v, want none", got.Prior)
	}
	wantOwnerGone(t, s, key, owner, "owner after its Hold")
	wantInDoubt(t, mustGet(t, s, key), fp, 1)
}

// Hold needs an owner's in-flight record: not another token's, nor a
// released, completed or already held one.
func testHoldNotOwner(t *testing.T, s idempotency.Store) {
	key, fp, owner := newKey(), newFingerprint(), idempotency.NewOwnerToken()
	mustOwn(t, s, key, fp, owner, longLease)
	if err := s.Hold(ctx(t), key, idempotency.NewOwnerToken(), longTTL); !errors.Is(err, idempotency.ErrNotOwner) {
		t.Errorf("Hold by another token = %v, want ErrNotOwner", err)
	}
	wantInFlight(t, mustGet(t, s, key), owner, fp)

	if err := s.Release(ctx(t), key, owner); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if err := s.Hold(ctx(t), key, owner, longTTL); !errors.Is(err, idempotency.ErrNotOwner) {
		t.Errorf("Hold after Release = %v, want ErrNotOwner", err)
	}
	wantAbsent(t, s, key)

	key, owner = newKey(), idempotency.NewOwnerToken()
	mustOwn(t, s, key, fp, owner, longLease)
	resp := sampleResponse()
	if err := s.Complete(ctx(t), key, owner, cloneResponse(resp), longTTL); err != nil {
		t.Fatalf("Complete: %v", err)
	}
	if err := s.Hold(ctx(t), key, owner, longTTL); !errors.Is(err, idempotency.ErrNotOwner) {
		t.Errorf("Hold after Complete = %v, want ErrNotOwner", err)
	}
	wantCompleted(t, mustGet(t, s, key), fp, resp)

	key = newKey()
	_, owner = mustHold(t, s, key, fp, longTTL)
	if err := s.Hold(ctx(t), key, owner, longTTL); !errors.Is(err, idempotency.ErrNotOwner) {
		t.Errorf("second Hold = %v, want ErrNotOwner", err)
	}
	wantInDoubt(t, mustGet(t, s, key), fp, 1)
}

// A held record is taken over by the next Begin with its fingerprint:
// owned, told Prior in doubt, keeping CreatedAt and Doubts. Held again,
// it has two doubts; the owner before the takeover has lost it.
func testHeldTakeover(t *testing.T, s idempotency.Store) {
	key, fp := newKey(), newFingerprint()
	first, ownerA := mustHold(t, s, key, fp, longTTL)

	ownerB := idempotency.NewOwnerToken()
	start := time.Now()
	recB, owned := mustBegin(t, s, key, fp, ownerB, longLease)
	if !owned {
		t.Fatalf("Begin with the fingerprint of a held record: not owned, record %+v", recB)
	}
	wantInFlight(t, recB, ownerB, fp)
	if recB.Prior != idempotency.StateInDoubt {
		t.Errorf("Prior of the takeover = %v, want in_doubt", recB.Prior)
	}
	if recB.Doubts != 1 {
		t.Errorf("Doubts of the takeover = %d, want 1", recB.Doubts)
	}
	wantSameMilli(t, "CreatedAt of the takeover", recB.CreatedAt, first.CreatedAt)
	wantNear(t, "LeaseUntil of the takeover", recB.LeaseUntil, start.Add(longLease))

	got := mustGet(t, s, key)
	wantInFlight(t, got, ownerB, fp)
	if got.Doubts != 1 || got.Prior != 0 {
		t.Errorf("Get after the takeover: Doubts %d, Prior %v; want 1 and none", got.Doubts, got.Prior)
	}
	if _, owned := mustBegin(t, s, key, fp, idempotency.NewOwnerToken(), longLease); owned {
		t.Error("a second Begin owns the key its takeover holds")
	}
	if err := s.Hold(ctx(t), key, ownerA, longTTL); !errors.Is(err, idempotency.ErrNotOwner) {
		t.Errorf("Hold by the owner before the takeover = %v, want ErrNotOwner", err)
	}

	if err := s.Hold(ctx(t), key, ownerB, longTTL); err != nil {
		t.Fatalf("Hold by the new owner: %v", err)
	}
	got = mustGet(t, s, key)
	wantInDoubt(t, got, fp, 2)
	wantSameMilli(t, "CreatedAt held again", got.CreatedAt, first.CreatedAt)
	wantOwnerGone(t, s, key, ownerB, "new owner after its Hold")

	ownerC := idempotency.NewOwnerToken()
	recC := mustOwn(t, s, key, fp, ownerC, longLease)
	if recC.Prior != idempotency.StateInDoubt || recC.Doubts != 2 {
		t.Errorf("second takeover: Prior %v, Doubts %d; want in_doubt and 2", recC.Prior, recC.Doubts)
	}
	resp := sampleResponse()
	if err := s.Complete(ctx(t), key, ownerC, cloneResponse(resp), longTTL); err != nil {
		t.Fatalf("Complete by the owner of the second takeover: %v", err)
	}
	got = mustGet(t, s, key)
	wantCompleted(t, got, fp, resp)
	wantSameMilli(t, "CreatedAt completed", got.CreatedAt, first.CreatedAt)
}

// A Begin with another fingerprint gets the held record, not the key: the
// upstream may have acted on it with other parameters.
func testHeldOtherFingerprintConflicts(t *testing.T, s idempotency.Store) {
	key, fp := newKey(), newFingerprint()
	first, _ := mustHold(t, s, key, fp, longTTL)
	rec, owned := mustBegin(t, s, key, newFingerprint(), idempotency.NewOwnerToken(), longLease)
	if owned {
		t.Fatal("Begin with another fingerprint took over a held record")
	}
	wantInDoubt(t, rec, fp, 1)
	wantSameMilli(t, "CreatedAt returned", rec.CreatedAt, first.CreatedAt)
	if rec.Prior != 0 {
		t.Errorf("Prior of a Begin that does not own = %v, want none", rec.Prior)
	}
	wantInDoubt(t, mustGet(t, s, key), fp, 1)
}

// A held record ends at its ExpiresAt, after which the key is free for
// any request, with nothing of the old record.
func testHeldExpiry(t *testing.T, s idempotency.Store) {
	key, fp := newKey(), newFingerprint()
	mustHold(t, s, key, fp, shortHold)
	rec := mustGet(t, s, key)
	wantInDoubt(t, rec, fp, 1)
	waitExpired(t, s, key, rec.ExpiresAt, "the held record")

	fpB, ownerB := newFingerprint(), idempotency.NewOwnerToken()
	start := time.Now()
	got := mustOwn(t, s, key, fpB, ownerB, longLease)
	wantInFlight(t, got, ownerB, fpB)
	if got.Prior != 0 || got.Doubts != 0 {
		t.Errorf("Begin after the hold ended: Prior %v, Doubts %d; want a fresh record", got.Prior, got.Doubts)
	}
	wantNear(t, "CreatedAt after the hold ended", got.CreatedAt, start)
}

// An owner whose lease passed may still hold its key while nobody took it
// over, as it may complete it (LateOwnerMayComplete).
func testLateOwnerMayHold(t *testing.T, s idempotency.Store) {
	key, fp, owner := newKey(), newFingerprint(), idempotency.NewOwnerToken()
	rec := mustOwn(t, s, key, fp, owner, shortLease)
	waitLeaseLapsed(t, s, key, rec.LeaseUntil.Add(lateOwnerDelay))
	if err := s.Hold(ctx(t), key, owner, longTTL); err != nil {
		t.Fatalf("Hold by the late owner of a key nobody took over: %v", err)
	}
	got := mustGet(t, s, key)
	wantInDoubt(t, got, fp, 1)
	wantSameMilli(t, "CreatedAt of the held record", got.CreatedAt, rec.CreatedAt)
}

// Of many requests with its fingerprint that Begin a held record at once,
// exactly one takes it over; the others see that one's in-flight record.
func testRacingBeginHeldOneOwner(t *testing.T, s idempotency.Store) {
	key, fp := newKey(), newFingerprint()
	first, _ := mustHold(t, s, key, fp, longTTL)
	results, winner := raceBegin(t, s, key, 50, func(int) idempotency.Fingerprint { return fp })
	if winner.rec.Prior != idempotency.StateInDoubt || winner.rec.Doubts != 1 {
		t.Errorf("winner: Prior %v, Doubts %d; want in_doubt and 1", winner.rec.Prior, winner.rec.Doubts)
	}
	wantSameMilli(t, "winner's CreatedAt", winner.rec.CreatedAt, first.CreatedAt)
	for i, r := range results {
		if !r.owned && (r.rec.State != idempotency.StateInFlight || r.rec.Owner != winner.owner || r.rec.Prior != 0) {
			t.Errorf("racer %d saw %+v, want the winner's in-flight record (owner %x)", i, r.rec, winner.owner)
		}
	}
	wantInFlight(t, mustGet(t, s, key), winner.owner, fp)
}

func wantInDoubt(t *testing.T, rec idempotency.Record, fp idempotency.Fingerprint, doubts int) {
	t.Helper()
	if rec.State != idempotency.StateInDoubt {
		t.Errorf("State = %v, want in_doubt", rec.State)
	}
	if rec.Fingerprint != fp {
		t.Errorf("Fingerprint = %x, want %x", rec.Fingerprint, fp)
	}
	if rec.Doubts != doubts {
		t.Errorf("Doubts = %d, want %d", rec.Doubts, doubts)
	}
	if rec.Owner != (idempotency.OwnerToken{}) || rec.Response != nil {
		t.Errorf("in-doubt record with an owner %x or a response %+v", rec.Owner, rec.Response)
	}
}

// wantSameMilli compares times to the millisecond, the precision stores
// keep.
func wantSameMilli(t *testing.T, what string, got, want time.Time) {
	t.Helper()
	if got.UnixMilli() != want.UnixMilli() {
		t.Errorf("%s = %v, want %v", what, got, want)
	}
}

// wantOwnerGone checks that owner can no longer Renew, Complete, Release
// nor Hold key.
func wantOwnerGone(t *testing.T, s idempotency.Store, key idempotency.RecordKey, owner idempotency.OwnerToken, who string) {
	t.Helper()
	if err := s.Renew(ctx(t), key, owner, longLease); !errors.Is(err, idempotency.ErrNotOwner) {
		t.Errorf("Renew by the %s = %v, want ErrNotOwner", who, err)
	}
	if err := s.Complete(ctx(t), key, owner, sampleResponse(), longTTL); !errors.Is(err, idempotency.ErrNotOwner) {
		t.Errorf("Complete by the %s = %v, want ErrNotOwner", who, err)
	}
	if err := s.Release(ctx(t), key, owner); !errors.Is(err, idempotency.ErrNotOwner) {
		t.Errorf("Release by the %s = %v, want ErrNotOwner", who, err)
	}
	if err := s.Hold(ctx(t), key, owner, longTTL); !errors.Is(err, idempotency.ErrNotOwner) {
		t.Errorf("Hold by the %s = %v, want ErrNotOwner", who, err)
	}
}
