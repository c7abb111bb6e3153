package badgerstore

import (
	"bytes"

	"github.com/dgraph-io/badger/v4"
	"go.uber.org/zap"
)

// compactExpired flattens the LSM tree once at least half the stored records
// are dead (expired or deleted). A batch-sized record is under the value
// threshold, so it lives in the tree, not the value log, and Badger drops it
// only when a compaction rewrites its table: a store that stops receiving
// writes would otherwise keep its expired records on disk for ever.
func (s *Store) compactExpired() {
	dead, total, err := s.countDead()
	if err != nil {
		s.log.Warn("badgerstore: scan for expired records failed", zap.Error(err))
		return
	}
	if dead == 0 || 2*dead < total {
		return
	}
	if err := s.db.Flatten(1); err != nil {
		s.log.Warn("badgerstore: compaction of expired records failed", zap.Error(err))
		return
	}
	s.log.Debug("badgerstore: compacted expired records", zap.Int("dead", dead), zap.Int("stored", total))
}

// countDead counts stored records (each key once, whatever its versions) and
// those of them that are expired or deleted but still on disk.
func (s *Store) countDead() (dead, total int, err error) {
	err = s.db.View(func(txn *badger.Txn) error {
		opt := badger.DefaultIteratorOptions
		opt.AllVersions, opt.PrefetchValues = true, false
		opt.Prefix = []byte(badgerKeyPrefix)
		it := txn.NewIterator(opt)
		defer it.Close()
		var last []byte
		for it.Rewind(); it.Valid(); it.Next() {
			item := it.Item()
			if last != nil && bytes.Equal(item.Key(), last) {
				continue // an older version of the same key
			}
			last = item.KeyCopy(last)
			total++
			if item.IsDeletedOrExpired() {
				dead++
			}
		}
		return nil
	})
	return dead, total, err
}
