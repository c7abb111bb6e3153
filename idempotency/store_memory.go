package idempotency

import (
	"context"
	"sync"
	"time"
)

// MemoryStore is a Store for a single process; records vanish on restart.
//
// Completed records are kept encoded (MarshalBinary's format): a byte slice
// per record, which the garbage collector does not walk, where a decoded
// response is a header map of strings and slices that every GC cycle would
// mark again. In-flight and held records, few and small, stay decoded.
type MemoryStore struct {
	mu        sync.Mutex
	records   RecordMap            // in flight and in doubt
	completed map[RecordKey][]byte // completed, encoded
	lastSweep time.Time
	closed    bool
}

var _ Store = (*MemoryStore)(nil)

// NewMemoryStore returns an empty MemoryStore.
func NewMemoryStore() *MemoryStore {
	return &MemoryStore{records: make(RecordMap), completed: make(map[RecordKey][]byte), lastSweep: time.Now()}
}

// Close drops every record; later calls return an error.
func (s *MemoryStore) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	s.records, s.completed = nil, nil
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
		return ErrStoreClosed
	}
	return nil
}

// current returns key's record, decoded afresh when it is completed (so it
// shares no memory with the store), and whether there is one. The caller
// holds the lock.
func (s *MemoryStore) current(key RecordKey) (Record, bool, error) {
	if rec, ok := s.records[key]; ok {
		return rec, true, nil
	}
	data, ok := s.completed[key]
	if !ok {
		return Record{}, false, nil
	}
	var rec Record
	if err := rec.UnmarshalBinary(data); err != nil {
		return Record{}, false, err
	}
	return rec, true, nil
}

// sweep drops the records no longer retained, at most once per
// SweepInterval. The caller holds the lock.
func (s *MemoryStore) sweep(now time.Time) {
	if now.Sub(s.lastSweep) < SweepInterval {
		return
	}
	s.lastSweep = now
	s.records.Sweep(now)
	for key, data := range s.completed {
		if _, live, err := ReadRecordState(data, now); err != nil || !live {
			delete(s.completed, key)
		}
	}
}

func (s *MemoryStore) Begin(ctx context.Context, key RecordKey, fp Fingerprint, owner OwnerToken, lease time.Duration) (Record, bool, error) {
	if err := s.lock(ctx); err != nil {
		return Record{}, false, err
	}
	defer s.mu.Unlock()
	now := time.Now()
	s.sweep(now)
	cur, found, err := s.current(key)
	if err != nil {
		return Record{}, false, err
	}
	rec, owned := BeginRecord(cur, found, fp, owner, now, lease)
	if !owned {
		return rec, false, nil
	}
	kept := rec
	kept.Prior = 0 // told to this Begin only; Get and later Begins do not see it
	s.records[key] = kept
	delete(s.completed, key) // one that expired
	return rec, true, nil
}

func (s *MemoryStore) Renew(ctx context.Context, key RecordKey, owner OwnerToken, lease time.Duration) error {
	return s.updateOwned(ctx, key, owner, func(rec Record, now time.Time) (Record, error) {
		rec.LeaseUntil = now.Add(lease)
		return rec, nil
	})
}

func (s *MemoryStore) Complete(ctx context.Context, key RecordKey, owner OwnerToken, resp Response, ttl time.Duration) error {
	return s.updateOwned(ctx, key, owner, func(rec Record, now time.Time) (Record, error) {
		done := rec.Completed(&resp, now, ttl)
		data, err := done.MarshalBinary() // a copy: the caller's buffers are reused
		if err != nil {
			return Record{}, err
		}
		s.completed[key] = data
		return Record{}, nil
	})
}

func (s *MemoryStore) Hold(ctx context.Context, key RecordKey, owner OwnerToken, hold time.Duration) error {
	return s.updateOwned(ctx, key, owner, func(rec Record, now time.Time) (Record, error) { return rec.Held(now, hold), nil })
}

// updateOwned replaces owner's in-flight record of key with what update
// makes of it, or drops it when update gives the zero Record (it was
// completed); ErrNotOwner if owner has none.
func (s *MemoryStore) updateOwned(ctx context.Context, key RecordKey, owner OwnerToken, update func(rec Record, now time.Time) (Record, error)) error {
	if err := s.lock(ctx); err != nil {
		return err
	}
	defer s.mu.Unlock()
	now := time.Now()
	rec, ok := s.records.Owned(key, owner, now)
	if !ok {
		return ErrNotOwner
	}
	next, err := update(rec, now)
	switch {
	case err != nil:
		return err
	case next.State == 0:
		delete(s.records, key)
	default:
		s.records[key] = next
	}
	return nil
}

func (s *MemoryStore) Release(ctx context.Context, key RecordKey, owner OwnerToken) error {
	if err := s.lock(ctx); err != nil {
		return err
	}
	defer s.mu.Unlock()
	if _, ok := s.records.Owned(key, owner, time.Now()); !ok {
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
	rec, ok, err := s.current(key)
	if err != nil || !ok || !rec.Live(time.Now()) {
		return Record{}, false, err
	}
	return rec, true, nil
}

var _ AdminStore = (*MemoryStore)(nil)

// Purge deletes key's record; see AdminStore.
func (s *MemoryStore) Purge(ctx context.Context, key RecordKey) (bool, error) {
	if err := s.lock(ctx); err != nil {
		return false, err
	}
	defer s.mu.Unlock()
	rec, ok, err := s.current(key)
	delete(s.records, key)
	delete(s.completed, key)
	// An undecodable record counts as found: it is what is purged.
	return err != nil || (ok && rec.Live(time.Now())), nil
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
		st.Add(rec.State, rec.Live(now))
	}
	for _, data := range s.completed {
		state, live, err := ReadRecordState(data, now)
		if err != nil {
			return Stats{}, err
		}
		st.Add(state, live)
	}
	return st, nil
}
