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
