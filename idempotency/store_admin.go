package idempotency

import "context"

// AdminStore is the optional part of a Store that operators use to fix a
// stuck key and watch the store: MemoryStore, badgerstore.Store and
// redisstore.Store implement it. A wrapper around a Store (one that times
// its calls, say) hides it unless the wrapper implements it too.
type AdminStore interface {
	// Purge deletes key's record in whatever state it is. found reports
	// whether there was a live record (one Get would have returned). The owner
	// of a purged in-flight record gets ErrNotOwner from Renew, Complete and
	// Release, so its response is not stored, and the next Begin owns the key.
	Purge(ctx context.Context, key RecordKey) (found bool, err error)
	// Stats counts the live records. It walks every record, so it takes time
	// in proportion to the store's size, and records that change meanwhile may
	// or may not be counted.
	Stats(ctx context.Context) (Stats, error)
}

// Stats counts a store's live records: in flight before their lease ends,
// completed or in doubt before they expire.
type Stats struct {
	InFlight  int64
	Completed int64
	InDoubt   int64
}

// Total is the number of live records.
func (s Stats) Total() int64 { return s.InFlight + s.Completed + s.InDoubt }

// Add counts a record in state that is live or not.
func (s *Stats) Add(state State, live bool) {
	switch {
	case !live:
	case state == StateInFlight:
		s.InFlight++
	case state == StateCompleted:
		s.Completed++
	case state == StateInDoubt:
		s.InDoubt++
	}
}
