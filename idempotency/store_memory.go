package idempotency

import (
	"bytes"
	"context"
	"sync"
	"time"
)

// MemoryStore is a Store for a single process; records vanish on restart.
type MemoryStore struct {
	mu        sync.Mutex
	records   RecordMap
	lastSweep time.Time
	closed    bool
}

var _ Store = (*MemoryStore)(nil)

// NewMemoryStore returns an empty MemoryStore.
func NewMemoryStore() *MemoryStore {
	return &MemoryStore{records: make(RecordMap), lastSweep: time.Now()}
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
		return ErrStoreClosed
	}
	return nil
}

func (s *MemoryStore) Begin(ctx context.Context, key RecordKey, fp Fingerprint, owner OwnerToken, lease time.Duration) (Record, bool, error) {
	if err := s.lock(ctx); err != nil {
		return Record{}, false, err
	}
	defer s.mu.Unlock()
	now := time.Now()
	if now.Sub(s.lastSweep) >= SweepInterval {
		s.lastSweep = now
		s.records.Sweep(now)
	}
	cur, found := s.records[key]
	rec, owned := BeginRecord(cur, found, fp, owner, now, lease)
	if !owned {
		return copyRecord(rec), false, nil
	}
	kept := rec
	kept.Prior = 0 // told to this Begin only; Get and later Begins do not see it
	s.records[key] = kept
	return rec, true, nil
}

func (s *MemoryStore) Renew(ctx context.Context, key RecordKey, owner OwnerToken, lease time.Duration) error {
	return s.updateOwned(ctx, key, owner, func(rec Record, now time.Time) Record {
		rec.LeaseUntil = now.Add(lease)
		return rec
	})
}

func (s *MemoryStore) Complete(ctx context.Context, key RecordKey, owner OwnerToken, resp Response, ttl time.Duration) error {
	return s.updateOwned(ctx, key, owner, func(rec Record, now time.Time) Record {
		return rec.Completed(copyResponse(&resp), now, ttl) // the caller's buffers are reused
	})
}

// updateOwned replaces owner's in-flight record of key with what update
// makes of it; ErrNotOwner if owner has none.
func (s *MemoryStore) updateOwned(ctx context.Context, key RecordKey, owner OwnerToken, update func(rec Record, now time.Time) Record) error {
	if err := s.lock(ctx); err != nil {
		return err
	}
	defer s.mu.Unlock()
	now := time.Now()
	rec, ok := s.records.Owned(key, owner, now)
	if !ok {
		return ErrNotOwner
	}
	s.records[key] = update(rec, now)
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

func (s *MemoryStore) Hold(ctx context.Context, key RecordKey, owner OwnerToken, hold time.Duration) error {
	return s.updateOwned(ctx, key, owner, func(rec Record, now time.Time) Record { return rec.Held(now, hold) })
}

func (s *MemoryStore) Get(ctx context.Context, key RecordKey) (Record, bool, error) {
	if err := s.lock(ctx); err != nil {
		return Record{}, false, err
	}
	defer s.mu.Unlock()
	rec, ok := s.records[key]
	if !ok || !rec.Live(time.Now()) {
		return Record{}, false, nil
	}
	return copyRecord(rec), true, nil
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
	return ok && rec.Live(time.Now()), nil
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
	return st, nil
}
