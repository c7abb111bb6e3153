package idempotency

import (
	"testing"
	"time"
)

// The memory store's bound on dead records: a sweep at most once per
// SweepInterval drops what is no longer retained.
func TestMemoryStoreSweepsDeadRecords(t *testing.T) {
	s := NewMemoryStore()
	defer s.Close()
	now := time.Now()
	s.records[RecordKey{1}] = Record{State: StateCompleted, ExpiresAt: now.Add(-time.Second)}
	s.records[RecordKey{2}] = Record{State: StateInFlight, LeaseUntil: now.Add(-InFlightRetention - time.Second)}
	s.records[RecordKey{3}] = Record{State: StateInFlight, LeaseUntil: now.Add(-time.Second)} // late owner may still complete
	s.records[RecordKey{4}] = Record{State: StateCompleted, ExpiresAt: now.Add(time.Hour)}

	if _, _, err := s.Begin(t.Context(), RecordKey{5}, Fingerprint{}, NewOwnerToken(), time.Minute); err != nil {
		t.Fatal(err)
	}
	if len(s.records) != 5 {
		t.Fatalf("swept before SweepInterval passed: %d records left", len(s.records))
	}

	s.lastSweep = now.Add(-SweepInterval)
	if _, _, err := s.Begin(t.Context(), RecordKey{6}, Fingerprint{}, NewOwnerToken(), time.Minute); err != nil {
		t.Fatal(err)
	}
	for _, k := range []RecordKey{{1}, {2}} {
		if _, ok := s.records[k]; ok {
			t.Errorf("dead record %x survived the sweep", k[0])
		}
	}
	for _, k := range []RecordKey{{3}, {4}, {5}, {6}} {
		if _, ok := s.records[k]; !ok {
			t.Errorf("retained record %x was swept", k[0])
		}
	}
}

// Prior is told to the Begin that takes a record over, not kept: the
// memory store's record has none, so Get and later Begins see none.
func TestMemoryStoreDoesNotKeepPrior(t *testing.T) {
	s := NewMemoryStore()
	defer s.Close()
	key, fp := RecordKey{1}, Fingerprint{2}
	now := time.Now()
	s.records[key] = Record{State: StateInDoubt, Fingerprint: fp, CreatedAt: now.Add(-time.Minute), ExpiresAt: now.Add(time.Hour), Doubts: 3}
	rec, owned, err := s.Begin(t.Context(), key, fp, NewOwnerToken(), time.Minute)
	if err != nil || !owned || rec.Prior != StateInDoubt || rec.Doubts != 3 {
		t.Fatalf("Begin = %+v owned %v err %v, want a takeover of the held record", rec, owned, err)
	}
	if kept := s.records[key]; kept.Prior != 0 || kept.Doubts != 3 || kept.Owner != rec.Owner {
		t.Fatalf("stored record %+v, want the new owner's with 3 doubts and no Prior", kept)
	}
}
