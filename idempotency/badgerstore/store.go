package badgerstore

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/badger/v4"
	"go.uber.org/zap"

	"github.com/caddy-idempotency/caddy-idempotency/idempotency"
)

// badgerKeyPrefix namespaces records (and their format generation) inside the DB.
const badgerKeyPrefix = "idem/v1/r/"

// badgerTTLSlack pads every Badger TTL: WithTTL truncates the deadline to
// whole seconds, which could drop a record up to 1s before its ExpiresAt.
// The record's own times stay the truth; reads check live(now).
const badgerTTLSlack = time.Second

const defaultBadgerGCInterval = 10 * time.Minute

// Options configure Open.
type Options struct {
	Dir        string        // required
	Logger     *zap.Logger   // nil → zap.NewNop()
	GCInterval time.Duration // value-log GC period; 0 → 10m

	memTableSize int64 // tests: small tables reach the lower levels sooner; 0 → 8 MiB
}

// Store is an idempotency.Store in an embedded Badger database, for a
// single process (Badger locks its directory to one process).
type Store struct {
	db     *badger.DB
	log    *zap.Logger
	claims claimTable
	closed atomic.Bool
	// admin is held shared by Purge and Stats, and by Close before it closes
	// the database, so an admin walk over the records never meets a closed DB.
	admin sync.RWMutex

	stopGC chan struct{}
	gcDone chan struct{}

	closeOnce sync.Once
	closeErr  error
}

var _ idempotency.Store = (*Store)(nil)

// Open opens (creating if needed) the store in opts.Dir and starts its
// value-log GC. It fails if another Store, in this process or another,
// holds the directory.
func Open(opts Options) (*Store, error) {
	if opts.Dir == "" {
		return nil, errors.New("badgerstore: Options.Dir is required")
	}
	log := opts.Logger
	if log == nil {
		log = zap.NewNop()
	}
	gcInterval := opts.GCInterval
	if gcInterval <= 0 {
		gcInterval = defaultBadgerGCInterval
	}

	// Sized for small records and modest traffic rather than Badger's 64MB+
	// memtable defaults. SyncWrites is off: a committed write is in the OS
	// page cache, so it survives the process being killed; only an OS crash or
	// power loss can lose the last writes.
	badgerOpts := badger.DefaultOptions(opts.Dir).
		WithLogger(badgerLogger{log: log}).
		WithSyncWrites(false).
		WithMemTableSize(cmp.Or(opts.memTableSize, 8<<20)).
		WithNumMemtables(2).
		WithNumLevelZeroTables(2).
		WithNumLevelZeroTablesStall(4).
		WithBlockCacheSize(8 << 20).
		WithIndexCacheSize(4 << 20).
		WithValueLogFileSize(64 << 20).
		WithNumCompactors(2).
		WithValueThreshold(1 << 10).
		// Every write holds its key's claimTable stripe lock, so Badger's
		// conflict detection would only cost time.
		WithDetectConflicts(false)
	db, err := badger.Open(badgerOpts)
	if err != nil {
		return nil, fmt.Errorf("badgerstore: open %q: %w", opts.Dir, err)
	}

	s := &Store{
		db:     db,
		log:    log,
		stopGC: make(chan struct{}),
		gcDone: make(chan struct{}),
	}
	go s.runGC(gcInterval)
	return s, nil
}

// Close stops the GC goroutine, waits for it, then closes the database.
// Calling it again returns the first call's result.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		close(s.stopGC)
		<-s.gcDone
		s.admin.Lock() // idempotency.Stats sees closed and stops early
		defer s.admin.Unlock()
		s.closeErr = s.db.Close()
	})
	return s.closeErr
}

func (s *Store) Begin(ctx context.Context, key idempotency.RecordKey, fp idempotency.Fingerprint, owner idempotency.OwnerToken, lease time.Duration) (idempotency.Record, bool, error) {
	if err := s.usable(ctx); err != nil {
		return idempotency.Record{}, false, err
	}
	stripe := s.claims.lock(key)
	defer stripe.mu.Unlock()
	now := time.Now()
	stripe.sweep(now)
	// A duplicate of a request in flight here is answered from memory.
	if cur, ok := stripe.claims[key]; ok && cur.Live(now) {
		return cur, false, nil
	}
	// Otherwise the record on disk rules: this process's claim past its
	// lease is there too, as are a held record, a completed one, and a dead
	// process's in-flight record.
	// One transaction reads it and, when this Begin owns the key, writes
	// the new record: the stripe lock keeps the two together.
	dbKey := badgerRecordKey(key)
	var (
		rec   idempotency.Record
		owned bool
	)
	err := s.db.Update(func(txn *badger.Txn) error {
		cur, found, err := readBadgerRecord(txn, dbKey)
		if err != nil {
			return err
		}
		if rec, owned = idempotency.BeginRecord(cur, found, fp, owner, now, lease); !owned {
			return nil
		}
		// Written before the request goes upstream, so that after a crash
		// the key stays in flight until the lease runs out, as it would in
		// a fleet.
		return writeBadgerRecord(txn, dbKey, &rec, now)
	})
	switch {
	case err != nil:
		return idempotency.Record{}, false, err
	case !owned:
		return rec, false, nil
	}
	claim := rec
	claim.Prior = 0 // told to this Begin only
	stripe.claims[key] = claim
	return rec, true, nil
}

func (s *Store) Renew(ctx context.Context, key idempotency.RecordKey, owner idempotency.OwnerToken, lease time.Duration) error {
	stripe, rec, now, err := s.lockOwned(ctx, key, owner)
	if err != nil {
		return err
	}
	defer stripe.mu.Unlock()
	rec.LeaseUntil = now.Add(lease)
	if err := s.write(badgerRecordKey(key), &rec, now); err != nil {
		return err
	}
	stripe.claims[key] = rec
	return nil
}

func (s *Store) Complete(ctx context.Context, key idempotency.RecordKey, owner idempotency.OwnerToken, resp idempotency.Response, ttl time.Duration) error {
	stripe, rec, now, err := s.lockOwned(ctx, key, owner)
	if err != nil {
		return err
	}
	defer stripe.mu.Unlock()
	done := rec.Completed(&resp, now, ttl) // encoded at once: no copy of resp
	if err := s.write(badgerRecordKey(key), &done, now); err != nil {
		return err
	}
	delete(stripe.claims, key)
	return nil
}

// Hold writes owner's in-flight record back in doubt until now+hold (see
// idempotency.Record.Held) and drops the claim: a held record is on disk
// only, and Begin takes it over from there.
func (s *Store) Hold(ctx context.Context, key idempotency.RecordKey, owner idempotency.OwnerToken, hold time.Duration) error {
	stripe, rec, now, err := s.lockOwned(ctx, key, owner)
	if err != nil {
		return err
	}
	defer stripe.mu.Unlock()
	held := rec.Held(now, hold)
	if err := s.write(badgerRecordKey(key), &held, now); err != nil {
		return err
	}
	delete(stripe.claims, key)
	return nil
}

func (s *Store) Release(ctx context.Context, key idempotency.RecordKey, owner idempotency.OwnerToken) error {
	stripe, _, _, err := s.lockOwned(ctx, key, owner)
	if err != nil {
		return err
	}
	defer stripe.mu.Unlock()
	dbKey := badgerRecordKey(key)
	if err := s.db.Update(func(txn *badger.Txn) error { return txn.Delete(dbKey) }); err != nil {
		return err
	}
	delete(stripe.claims, key)
	return nil
}

// lockOwned locks key's stripe and returns owner's claim on it. Unless it
// returns an error (idempotency.ErrNotOwner when the claim is not owner's), the caller
// holds the stripe lock and must unlock it.
func (s *Store) lockOwned(ctx context.Context, key idempotency.RecordKey, owner idempotency.OwnerToken) (*claimStripe, idempotency.Record, time.Time, error) {
	if err := s.usable(ctx); err != nil {
		return nil, idempotency.Record{}, time.Time{}, err
	}
	stripe := s.claims.lock(key)
	now := time.Now()
	rec, ok := stripe.owned(key, owner, now)
	if !ok {
		stripe.mu.Unlock()
		return nil, idempotency.Record{}, now, idempotency.ErrNotOwner
	}
	return stripe, rec, now, nil
}

func (s *Store) Get(ctx context.Context, key idempotency.RecordKey) (idempotency.Record, bool, error) {
	if err := s.usable(ctx); err != nil {
		return idempotency.Record{}, false, err
	}
	now := time.Now()
	stripe := s.claims.lock(key)
	cur, ok := stripe.claims[key]
	stripe.mu.Unlock()
	if ok && cur.Live(now) {
		return cur, true, nil
	}
	rec, found, err := s.read(badgerRecordKey(key))
	if err != nil || !found || !rec.Live(now) {
		return idempotency.Record{}, false, err
	}
	return rec, true, nil
}

// usable reports ctx's error, or idempotency.ErrStoreClosed once Close has begun (the
// claim table would otherwise still answer).
func (s *Store) usable(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if s.closed.Load() {
		return idempotency.ErrStoreClosed
	}
	return nil
}

// read returns the record stored under dbKey, from a read-only transaction.
func (s *Store) read(dbKey []byte) (rec idempotency.Record, found bool, err error) {
	err = s.db.View(func(txn *badger.Txn) error {
		rec, found, err = readBadgerRecord(txn, dbKey)
		return err
	})
	return rec, found, err
}

// write stores rec under dbKey. The caller holds the key's stripe lock, so
// the transaction reads nothing and cannot conflict.
func (s *Store) write(dbKey []byte, rec *idempotency.Record, now time.Time) error {
	return s.db.Update(func(txn *badger.Txn) error { return writeBadgerRecord(txn, dbKey, rec, now) })
}

func (s *Store) runGC(interval time.Duration) {
	defer close(s.gcDone)
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for {
		select {
		case <-s.stopGC:
			return
		case <-ticker.C:
			s.collectValueLog()
			s.compactExpired()
		}
	}
}

// collectValueLog rewrites value-log files until Badger finds none worth it.
func (s *Store) collectValueLog() {
	for {
		select {
		case <-s.stopGC:
			return
		default:
		}
		err := s.db.RunValueLogGC(0.5)
		if err == nil {
			continue
		}
		if !errors.Is(err, badger.ErrNoRewrite) && !errors.Is(err, badger.ErrRejected) {
			s.log.Warn("badgerstore: value-log GC failed", zap.Error(err))
		}
		return
	}
}

func badgerRecordKey(key idempotency.RecordKey) []byte {
	return append(append(make([]byte, 0, len(badgerKeyPrefix)+len(key)), badgerKeyPrefix...), key[:]...)
}

func readBadgerRecord(txn *badger.Txn, dbKey []byte) (idempotency.Record, bool, error) {
	item, err := txn.Get(dbKey)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return idempotency.Record{}, false, nil
	}
	if err != nil {
		return idempotency.Record{}, false, err
	}
	var rec idempotency.Record
	if err := item.Value(rec.UnmarshalBinary); err != nil {
		return idempotency.Record{}, false, fmt.Errorf("badgerstore: decode record %x: %w", dbKey[len(badgerKeyPrefix):], err)
	}
	return rec, true, nil
}

// writeBadgerRecord stores rec with a Badger TTL covering how long it must be
// retained: a completed or in-doubt record until ExpiresAt, an in-flight one
// until idempotency.InFlightRetention past its lease.
func writeBadgerRecord(txn *badger.Txn, dbKey []byte, rec *idempotency.Record, now time.Time) error {
	value, err := rec.MarshalBinary()
	if err != nil {
		return err
	}
	until := rec.ExpiresAt
	if rec.State == idempotency.StateInFlight {
		until = rec.LeaseUntil.Add(idempotency.InFlightRetention)
	}
	return txn.SetEntry(badger.NewEntry(dbKey, value).WithTTL(until.Sub(now) + badgerTTLSlack))
}

var _ idempotency.AdminStore = (*Store)(nil)

// badgerStatsCheckEvery is how many records Stats walks between checks for a
// canceled request or a store that is closing.
const badgerStatsCheckEvery = 1024

// Purge deletes key's record and this process's claim on it, under the key's
// stripe lock, so its owner gets idempotency.ErrNotOwner; see idempotency.AdminStore.
func (s *Store) Purge(ctx context.Context, key idempotency.RecordKey) (bool, error) {
	s.admin.RLock()
	defer s.admin.RUnlock()
	if err := s.usable(ctx); err != nil {
		return false, err
	}
	stripe := s.claims.lock(key)
	defer stripe.mu.Unlock()
	now := time.Now()
	dbKey := badgerRecordKey(key)
	claim, claimed := stripe.claims[key]
	found := claimed && claim.Live(now)
	err := s.db.Update(func(txn *badger.Txn) error {
		item, err := txn.Get(dbKey)
		switch {
		case errors.Is(err, badger.ErrKeyNotFound):
			return nil
		case err != nil:
			return err
		}
		// An undecodable record counts as found: it is what is purged.
		_ = item.Value(func(v []byte) error {
			_, live, err := idempotency.ReadRecordState(v, now)
			found = found || live || err != nil
			return nil
		})
		return txn.Delete(dbKey)
	})
	if err != nil {
		return false, err
	}
	delete(stripe.claims, key)
	return found, nil
}

// Stats counts the live records on disk, where every record of this process
// is too; see idempotency.AdminStore.
func (s *Store) Stats(ctx context.Context) (idempotency.Stats, error) {
	s.admin.RLock()
	defer s.admin.RUnlock()
	if err := s.usable(ctx); err != nil {
		return idempotency.Stats{}, err
	}
	var st idempotency.Stats
	now := time.Now()
	err := s.db.View(func(txn *badger.Txn) error {
		opts := badger.DefaultIteratorOptions
		opts.Prefix = []byte(badgerKeyPrefix)
		it := txn.NewIterator(opts)
		defer it.Close()
		n := 0
		for it.Rewind(); it.Valid(); it.Next() {
			if n++; n%badgerStatsCheckEvery == 0 {
				if err := s.usable(ctx); err != nil {
					return err
				}
			}
			item := it.Item()
			err := item.Value(func(v []byte) error {
				state, live, err := idempotency.ReadRecordState(v, now)
				st.Add(state, live)
				return err
			})
			if err != nil {
				return fmt.Errorf("badgerstore: decode record %x: %w", item.Key()[len(badgerKeyPrefix):], err)
			}
		}
		return nil
	})
	return st, err
}
