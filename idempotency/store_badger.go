package idempotency

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/dgraph-io/badger/v4"
	"go.uber.org/zap"
)

// badgerKeyPrefix namespaces records (and their format generation) inside the DB.
const badgerKeyPrefix = "idem/v1/r/"

// badgerTTLSlack pads every Badger TTL: WithTTL truncates the deadline to
// whole seconds, which could drop a record up to 1s before its ExpiresAt.
// The record's own times stay the truth; reads check live(now).
const badgerTTLSlack = time.Second

// maxConflictRetries bounds retries of a transaction that keeps losing
// optimistic-concurrency races. Each lost race means another transaction on
// the same key committed, so this is only reached under pathological load.
const maxConflictRetries = 1000

const defaultBadgerGCInterval = 10 * time.Minute

// BadgerOptions configure OpenBadger.
type BadgerOptions struct {
	Dir        string        // required
	Logger     *zap.Logger   // nil → zap.NewNop()
	GCInterval time.Duration // value-log GC period; 0 → 10m
}

// BadgerStore is a Store persisted in an embedded Badger database, for a
// single Caddy instance (Badger locks its directory to one process).
type BadgerStore struct {
	db  *badger.DB
	log *zap.Logger

	stopGC chan struct{}
	gcDone chan struct{}

	closeOnce sync.Once
	closeErr  error
}

var _ Store = (*BadgerStore)(nil)

// OpenBadger opens (creating if needed) the store in opts.Dir and starts its
// value-log GC. It fails if another BadgerStore holds the directory.
func OpenBadger(opts BadgerOptions) (*BadgerStore, error) {
	if opts.Dir == "" {
		return nil, errors.New("idempotency: badger store needs a directory")
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
		WithMemTableSize(8 << 20).
		WithNumMemtables(2).
		WithNumLevelZeroTables(2).
		WithNumLevelZeroTablesStall(4).
		WithBlockCacheSize(8 << 20).
		WithIndexCacheSize(4 << 20).
		WithValueLogFileSize(64 << 20).
		WithNumCompactors(2).
		WithValueThreshold(1 << 10)
	db, err := badger.Open(badgerOpts)
	if err != nil {
		return nil, fmt.Errorf("idempotency: open badger store in %q: %w", opts.Dir, err)
	}

	s := &BadgerStore{
		db:     db,
		log:    log,
		stopGC: make(chan struct{}),
		gcDone: make(chan struct{}),
	}
	go s.runGC(gcInterval)
	return s, nil
}

// DB exposes the underlying database for tests and admin tooling.
func (s *BadgerStore) DB() *badger.DB { return s.db }

// Close stops the GC goroutine, waits for it, then closes the database.
// Calling it again returns the first call's result.
func (s *BadgerStore) Close() error {
	s.closeOnce.Do(func() {
		close(s.stopGC)
		<-s.gcDone
		s.closeErr = s.db.Close()
	})
	return s.closeErr
}

func (s *BadgerStore) Begin(ctx context.Context, key RecordKey, fp Fingerprint, owner Token, lease time.Duration) (Record, bool, error) {
	// A live record (a replay, a duplicate) is answered from a read-only
	// transaction; only a claim needs a write one, which re-checks.
	if cur, found, err := s.Get(ctx, key); err != nil || found {
		return cur, false, err
	}
	var (
		rec   Record
		owned bool
	)
	err := s.update(ctx, key, func(txn *badger.Txn, dbKey []byte, now time.Time) error {
		cur, found, err := readBadgerRecord(txn, dbKey)
		if err != nil {
			return err
		}
		if found && cur.live(now) {
			rec, owned = cur, false
			return nil
		}
		rec = Record{
			State:       StateInFlight,
			Fingerprint: fp,
			Owner:       owner,
			LeaseUntil:  now.Add(lease),
			CreatedAt:   now,
		}
		owned = true
		return writeBadgerRecord(txn, dbKey, &rec, now)
	})
	if err != nil {
		return Record{}, false, err
	}
	return rec, owned, nil
}

func (s *BadgerStore) Renew(ctx context.Context, key RecordKey, owner Token, lease time.Duration) error {
	return s.update(ctx, key, func(txn *badger.Txn, dbKey []byte, now time.Time) error {
		rec, err := readOwnedBadgerRecord(txn, dbKey, owner, now)
		if err != nil {
			return err
		}
		rec.LeaseUntil = now.Add(lease)
		return writeBadgerRecord(txn, dbKey, &rec, now)
	})
}

func (s *BadgerStore) Complete(ctx context.Context, key RecordKey, owner Token, resp Response, ttl time.Duration) error {
	return s.update(ctx, key, func(txn *badger.Txn, dbKey []byte, now time.Time) error {
		rec, err := readOwnedBadgerRecord(txn, dbKey, owner, now)
		if err != nil {
			return err
		}
		done := completedRecord(rec, resp, now, ttl)
		return writeBadgerRecord(txn, dbKey, &done, now)
	})
}

func (s *BadgerStore) Release(ctx context.Context, key RecordKey, owner Token) error {
	return s.update(ctx, key, func(txn *badger.Txn, dbKey []byte, now time.Time) error {
		if _, err := readOwnedBadgerRecord(txn, dbKey, owner, now); err != nil {
			return err
		}
		return txn.Delete(dbKey)
	})
}

func (s *BadgerStore) Get(ctx context.Context, key RecordKey) (Record, bool, error) {
	if err := ctx.Err(); err != nil {
		return Record{}, false, err
	}
	var (
		rec   Record
		found bool
	)
	err := s.db.View(func(txn *badger.Txn) error {
		var err error
		rec, found, err = readBadgerRecord(txn, badgerRecordKey(key))
		return err
	})
	if err != nil || !found || !rec.live(time.Now()) {
		return Record{}, false, err
	}
	return rec, true, nil
}

// update runs fn in a read-write transaction, retrying when Badger's
// optimistic concurrency control reports that a concurrent transaction
// touched the same key: that conflict detection is what makes Begin atomic.
func (s *BadgerStore) update(ctx context.Context, key RecordKey, fn func(txn *badger.Txn, dbKey []byte, now time.Time) error) error {
	dbKey := badgerRecordKey(key)
	for range maxConflictRetries {
		if err := ctx.Err(); err != nil {
			return err
		}
		err := s.db.Update(func(txn *badger.Txn) error { return fn(txn, dbKey, time.Now()) })
		if !errors.Is(err, badger.ErrConflict) {
			return err
		}
	}
	return fmt.Errorf("idempotency: record %s: gave up after %d transaction conflicts", key, maxConflictRetries)
}

func (s *BadgerStore) runGC(interval time.Duration) {
	defer close(s.gcDone)
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for {
		select {
		case <-s.stopGC:
			return
		case <-ticker.C:
			s.collectValueLog()
		}
	}
}

// collectValueLog rewrites value-log files until Badger finds none worth it.
func (s *BadgerStore) collectValueLog() {
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
			s.log.Warn("idempotency: badger value-log GC failed", zap.Error(err))
		}
		return
	}
}

func badgerRecordKey(key RecordKey) []byte {
	return append([]byte(badgerKeyPrefix), key[:]...)
}

func readBadgerRecord(txn *badger.Txn, dbKey []byte) (Record, bool, error) {
	item, err := txn.Get(dbKey)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return Record{}, false, nil
	}
	if err != nil {
		return Record{}, false, err
	}
	var rec Record
	if err := item.Value(rec.UnmarshalBinary); err != nil {
		return Record{}, false, fmt.Errorf("idempotency: decode record %x: %w", dbKey[len(badgerKeyPrefix):], err)
	}
	return rec, true, nil
}

// readOwnedBadgerRecord returns the record if it is owner's and still
// retained (see inFlightRetention), else ErrNotOwner.
func readOwnedBadgerRecord(txn *badger.Txn, dbKey []byte, owner Token, now time.Time) (Record, error) {
	rec, found, err := readBadgerRecord(txn, dbKey)
	if err != nil {
		return Record{}, err
	}
	if !found || !ownedBy(&rec, owner) || !retained(&rec, now) {
		return Record{}, ErrNotOwner
	}
	return rec, nil
}

// writeBadgerRecord stores rec with a Badger TTL covering how long it must be
// retained: a completed record until ExpiresAt, an in-flight one until
// inFlightRetention past its lease.
func writeBadgerRecord(txn *badger.Txn, dbKey []byte, rec *Record, now time.Time) error {
	value, err := rec.MarshalBinary()
	if err != nil {
		return err
	}
	until := rec.ExpiresAt
	if rec.State == StateInFlight {
		until = rec.LeaseUntil.Add(inFlightRetention)
	}
	return txn.SetEntry(badger.NewEntry(dbKey, value).WithTTL(until.Sub(now) + badgerTTLSlack))
}
