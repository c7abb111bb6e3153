package idempotency

import (
	"context"
	"time"
)

// StoreCall is one call the Handler made to its Store, for Config.ObserveStore.
type StoreCall struct {
	Op       string        // "begin", "renew", "complete", "release", "hold" or "get"
	Duration time.Duration // how long the call took
	Err      error         // nil, ErrNotOwner, or the store's own failure
	// Owned is true for a Begin that claimed the key: the request is now
	// upstream, until the Complete, Release or Hold that follows (exactly
	// one does).
	Owned bool
}

// observedStore reports every call to Config.ObserveStore. It is the
// Handler's own wrapper, never handed out, so it need not pass AdminStore on.
type observedStore struct {
	Store
	observe func(StoreCall)
}

func (s observedStore) report(op string, start time.Time, err error, owned bool) {
	s.observe(StoreCall{Op: op, Duration: time.Since(start), Err: err, Owned: owned})
}

func (s observedStore) Begin(ctx context.Context, key RecordKey, fp Fingerprint, owner OwnerToken, lease time.Duration) (Record, bool, error) {
	start := time.Now()
	rec, owned, err := s.Store.Begin(ctx, key, fp, owner, lease)
	s.report("begin", start, err, owned)
	return rec, owned, err
}

func (s observedStore) Renew(ctx context.Context, key RecordKey, owner OwnerToken, lease time.Duration) error {
	start := time.Now()
	err := s.Store.Renew(ctx, key, owner, lease)
	s.report("renew", start, err, false)
	return err
}

func (s observedStore) Complete(ctx context.Context, key RecordKey, owner OwnerToken, resp Response, ttl time.Duration) error {
	start := time.Now()
	err := s.Store.Complete(ctx, key, owner, resp, ttl)
	s.report("complete", start, err, false)
	return err
}

func (s observedStore) Release(ctx context.Context, key RecordKey, owner OwnerToken) error {
	start := time.Now()
	err := s.Store.Release(ctx, key, owner)
	s.report("release", start, err, false)
	return err
}

func (s observedStore) Hold(ctx context.Context, key RecordKey, owner OwnerToken, hold time.Duration) error {
	start := time.Now()
	err := s.Store.Hold(ctx, key, owner, hold)
	s.report("hold", start, err, false)
	return err
}

func (s observedStore) Get(ctx context.Context, key RecordKey) (Record, bool, error) {
	start := time.Now()
	rec, ok, err := s.Store.Get(ctx, key)
	s.report("get", start, err, false)
	return rec, ok, err
}
