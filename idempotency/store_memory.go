package idempotency

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"time"
)

// inFlightRetention is how long a store keeps an in-flight record after its
// lease has passed. Until someone takes the key over, the original owner may
// still Complete, Renew or Release it: nothing conflicts, and storing the
// response it did get is the honest outcome (the upstream did act on it).
// Once another Begin takes the key over, the old owner gets ErrNotOwner.
const inFlightRetention = time.Minute

// memorySweepInterval bounds how often Begin scans the whole map for dead
// records, so the sweep costs O(1) amortised while memory stays bounded.
const memorySweepInterval = 30 * time.Second

var errStoreClosed = errors.New("idempotency: store is closed")

// MemoryStore is a Store for a single process; records vanish on restart.
type MemoryStore struct {
	mu        sync.Mutex
	records   map[RecordKey]Record
	lastSweep time.Time
	closed    bool
}

var _ Store = (*MemoryStore)(nil)

// NewMemoryStore returns an empty MemoryStore.
func NewMemoryStore() *MemoryStore {
	return &MemoryStore{records: make(map[RecordKey]Record), lastSweep: time.Now()}
}

// Close drops every record; later calls return an error.
func (s *MemoryStore) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	s.records = nil
	return nil
}

// lock takes the mutex unless ctx is done or the store closed; on success
// the caller must unlock.
func (s *MemoryStore) lock(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return errStoreClosed
	}
	return nil
}

func (s *MemoryStore) Begin(ctx context.Context, key RecordKey, fp Fingerprint, owner Token, lease time.Duration) (Record, bool, error) {
	if err := s.lock(ctx); err != nil {
		return Record{}, false, err
	}
	defer s.mu.Unlock()
	now := time.Now()
	sweepRecords(s.records, &s.lastSweep, now)
	if rec, ok := s.records[key]; ok && rec.live(now) {
		return copyRecord(rec), false, nil
	}
	rec := Record{
		State:       StateInFlight,
		Fingerprint: fp,
		Owner:       owner,
		LeaseUntil:  now.Add(lease),
		CreatedAt:   now,
	}
	s.records[key] = rec
	return rec, true, nil
}

func (s *MemoryStore) Renew(ctx context.Context, key RecordKey, owner Token, lease time.Duration) error {
	if err := s.lock(ctx); err != nil {
		return err
	}
	defer s.mu.Unlock()
	now := time.Now()
	rec, ok := ownedIn(s.records, key, owner, now)
	if !ok {
		return ErrNotOwner
	}
	rec.LeaseUntil = now.Add(lease)
	s.records[key] = rec
	return nil
}

func (s *MemoryStore) Complete(ctx context.Context, key RecordKey, owner Token, resp Response, ttl time.Duration) error {
	if err := s.lock(ctx); err != nil {
		return err
	}
	defer s.mu.Unlock()
	now := time.Now()
	rec, ok := ownedIn(s.records, key, owner, now)
	if !ok {
		return ErrNotOwner
	}
	s.records[key] = completedRecord(rec, copyResponse(&resp), now, ttl) // the caller's buffers are reused
	return nil
}

func (s *MemoryStore) Release(ctx context.Context, key RecordKey, owner Token) error {
	if err := s.lock(ctx); err != nil {
		return err
	}
	defer s.mu.Unlock()
	if _, ok := ownedIn(s.records, key, owner, time.Now()); !ok {
		return ErrNotOwner
	}
	delete(s.records, key)
	return nil
}

func (s *MemoryStore) Get(ctx context.Context, key RecordKey) (Record, bool, error) {
	if err := s.lock(ctx); err != nil {
		return Record{}, false, err
	}
	defer s.mu.Unlock()
	rec, ok := s.records[key]
	if !ok || !rec.live(time.Now()) {
		return Record{}, false, nil
	}
	return copyRecord(rec), true, nil
}

// ownedIn returns key's record in records if it is in flight under owner and
// still retained (its lease may have passed; see inFlightRetention).
func ownedIn(records map[RecordKey]Record, key RecordKey, owner Token, now time.Time) (Record, bool) {
	rec, ok := records[key]
	if !ok || !ownedBy(&rec, owner) || !retained(&rec, now) {
		return Record{}, false
	}
	return rec, true
}

// sweepRecords drops the records no longer retained, at most once per
// memorySweepInterval since *last, so the sweep costs O(1) amortised.
func sweepRecords(records map[RecordKey]Record, last *time.Time, now time.Time) {
	if now.Sub(*last) < memorySweepInterval {
		return
	}
	*last = now
	for key, rec := range records {
		if !retained(&rec, now) {
			delete(records, key)
		}
	}
}

// ownedBy reports whether rec is in flight under owner.
func ownedBy(rec *Record, owner Token) bool {
	return rec.State == StateInFlight && rec.Owner == owner
}

// retained reports whether a store still keeps rec at now: completed records
// until they expire, in-flight ones for inFlightRetention past their lease.
func retained(rec *Record, now time.Time) bool {
	if rec.State == StateInFlight {
		return now.Before(rec.LeaseUntil.Add(inFlightRetention))
	}
	return rec.live(now)
}

// completedRecord is rec (owner's in-flight record) turned into its completed
// form holding resp.
func completedRecord(rec Record, resp *Response, now time.Time, ttl time.Duration) Record {
	return Record{
		State:       StateCompleted,
		Fingerprint: rec.Fingerprint,
		CreatedAt:   rec.CreatedAt,
		ExpiresAt:   now.Add(ttl),
		Response:    resp,
	}
}

// copyRecord returns rec with a Response that shares no memory with rec's.
func copyRecord(rec Record) Record {
	if rec.Response != nil {
		rec.Response = copyResponse(rec.Response)
	}
	return rec
}

func copyResponse(resp *Response) *Response {
	return &Response{Status: resp.Status, Header: resp.Header.Clone(), Body: bytes.Clone(resp.Body), NotStored: resp.NotStored}
}

var _ AdminStore = (*MemoryStore)(nil)

// Purge deletes key's record; see AdminStore.
func (s *MemoryStore) Purge(ctx context.Context, key RecordKey) (bool, error) {
	if err := s.lock(ctx); err != nil {
		return false, err
	}
	defer s.mu.Unlock()
	rec, ok := s.records[key]
	delete(s.records, key)
	return ok && rec.live(time.Now()), nil
}

// Stats counts the live records; see AdminStore.
func (s *MemoryStore) Stats(ctx context.Context) (Stats, error) {
	if err := s.lock(ctx); err != nil {
		return Stats{}, err
	}
	defer s.mu.Unlock()
	var st Stats
	now := time.Now()
	for _, rec := range s.records {
		st.add(rec.State, rec.live(now))
	}
	return st, nil
}
