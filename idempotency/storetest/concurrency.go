package storetest

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-idempotency/caddy-idempotency/idempotency"
)

// beginResult is one racer's Begin in raceBegin.
type beginResult struct {
	owner idempotency.OwnerToken
	fp    idempotency.Fingerprint
	rec   idempotency.Record
	owned bool
	err   error
}

// raceBegin has racers goroutines Begin key at once, racer i with fp(i),
// and returns what each got and the one that owns the key; it fails the
// test unless exactly one does.
func raceBegin(t *testing.T, s idempotency.Store, key idempotency.RecordKey, racers int, fp func(i int) idempotency.Fingerprint) ([]beginResult, *beginResult) {
	t.Helper()
	results := make([]beginResult, racers)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range results {
		results[i].owner, results[i].fp = idempotency.NewOwnerToken(), fp(i)
		wg.Go(func() {
			r := &results[i]
			<-start
			r.rec, r.owned, r.err = s.Begin(ctx(t), key, r.fp, r.owner, longLease)
		})
	}
	close(start)
	wg.Wait()

	var winner *beginResult
	for i := range results {
		r := &results[i]
		if r.err != nil {
			t.Fatalf("racer %d: Begin: %v", i, r.err)
		}
		if r.owned {
			if winner != nil {
				t.Fatalf("racers %x and %x both own the key", winner.owner, r.owner)
			}
			winner = r
		}
	}
	if winner == nil {
		t.Fatal("no racer owns the key")
	}
	return results, winner
}

func testRacingBeginOneOwner(t *testing.T, s idempotency.Store) {
	key := newKey()
	results, winner := raceBegin(t, s, key, 64, func(int) idempotency.Fingerprint { return newFingerprint() })
	for i, r := range results {
		if !r.owned && (r.rec.State != idempotency.StateInFlight || r.rec.Owner != winner.owner || r.rec.Fingerprint != winner.fp) {
			t.Errorf("racer %d saw %+v, want the winner's in-flight record (owner %x)", i, r.rec, winner.owner)
		}
	}
	wantInFlight(t, mustGet(t, s, key), winner.owner, winner.fp)
}

// testConcurrentMixedOps hammers a few keys with every operation at once and
// checks, with per-key counters, that no key ever has two owners. Leases are
// long, so a second owner could only come from a broken Begin. Its other
// assertions hold whatever the scheduling: every key is begun, and its first
// Begin owns it; an owner keeps its key until it gives it up; and once every
// owner has completed or released, no record is left in flight. How often a
// key comes free again (its completed record expiring) is up to the
// scheduler, so nothing counts on it.
func testConcurrentMixedOps(t *testing.T, s idempotency.Store) {
	const (
		workers    = 64
		keyCount   = 8
		iterations = 50
		// Completed records expire quickly so keys may cycle back to free.
		replayTTL = 5 * time.Millisecond
	)
	keys := make([]idempotency.RecordKey, keyCount)
	for i := range keys {
		keys[i] = newKey()
	}
	var holders [keyCount]atomic.Int32
	var ownerships [keyCount]atomic.Int64
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			errs <- mixedWorker(ctx(t), s, keys, holders[:], ownerships[:], w, iterations, replayTTL)
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	for k, key := range keys {
		if ownerships[k].Load() == 0 {
			t.Errorf("key %d was begun but never owned: its first Begin finds nothing and must own it", k)
		}
		if rec, ok := get(t, s, key); ok && rec.State == idempotency.StateInFlight {
			t.Errorf("key %d is still in flight after every owner completed or released it: %+v", k, rec)
		}
	}
}

// mixedWorker runs its share of operations: every fourth a Get, the others
// a Begin and, when it owns the key, a check, then a Complete or a Release.
// Between them, the workers' Begins reach every key.
func mixedWorker(c context.Context, s idempotency.Store, keys []idempotency.RecordKey, holders []atomic.Int32, ownerships []atomic.Int64, w, iterations int, replayTTL time.Duration) error {
	for i := range iterations {
		k := (w + i) % len(keys)
		key := keys[k]
		if i%4 == 0 {
			if rec, ok, err := s.Get(c, key); err != nil {
				return fmt.Errorf("worker %d: Get: %w", w, err)
			} else if ok {
				if err := checkConsistent(rec); err != nil {
					return fmt.Errorf("worker %d: Get: %w", w, err)
				}
			}
			continue
		}
		owner := idempotency.NewOwnerToken()
		rec, owned, err := s.Begin(c, key, newFingerprint(), owner, longLease)
		if err != nil {
			return fmt.Errorf("worker %d: Begin: %w", w, err)
		}
		if !owned {
			if err := checkConsistent(rec); err != nil {
				return fmt.Errorf("worker %d: Begin: %w", w, err)
			}
			continue
		}
		ownerships[k].Add(1)
		if n := holders[k].Add(1); n != 1 {
			return fmt.Errorf("worker %d: key %d has %d owners at once", w, k, n)
		}
		runtime.Gosched() // widen the window in which a second owner would show
		if cur, ok, err := s.Get(c, key); err != nil {
			return fmt.Errorf("worker %d: Get: %w", w, err)
		} else if !ok || cur.State != idempotency.StateInFlight || cur.Owner != owner {
			return fmt.Errorf("worker %d: owner of key %d reads %+v (found %v), want its own in-flight record", w, k, cur, ok)
		}
		// Give up the claim in our bookkeeping before the store frees the key.
		holders[k].Add(-1)
		if i%2 == 0 {
			err = s.Complete(c, key, owner, idempotency.Response{Status: 200, Body: []byte{byte(w)}}, replayTTL)
		} else {
			err = s.Release(c, key, owner)
		}
		if err != nil {
			return fmt.Errorf("worker %d: owner lost key %d before its lease ended: %w", w, k, err)
		}
	}
	return nil
}

func checkConsistent(rec idempotency.Record) error {
	switch rec.State {
	case idempotency.StateInFlight:
		if rec.Owner == (idempotency.OwnerToken{}) {
			return fmt.Errorf("in-flight record without an owner: %+v", rec)
		}
	case idempotency.StateCompleted:
		if rec.Response == nil {
			return fmt.Errorf("completed record without a response: %+v", rec)
		}
	case idempotency.StateInDoubt:
		if rec.Owner != (idempotency.OwnerToken{}) || rec.Response != nil || rec.Doubts < 1 {
			return fmt.Errorf("in-doubt record with an owner, a response or no doubt: %+v", rec)
		}
	default:
		return fmt.Errorf("record in unknown state: %+v", rec)
	}
	return nil
}

// --- helpers ---
