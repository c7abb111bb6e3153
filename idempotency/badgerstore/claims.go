package badgerstore

import (
	"encoding/binary"
	"sync"
	"time"

	"github.com/caddy-idempotency/caddy-idempotency/idempotency"
)

// claimStripes is how many locks the claim table spreads keys over: enough
// that unrelated keys rarely wait on each other on a many-core machine.
const claimStripes = 256

// claimTable holds the in-flight records this process wrote to its Badger
// store, under one lock per stripe of keys. Badger locks its directory to one
// process, so every write to a record goes through here: the stripe lock is
// what makes Begin atomic (no optimistic-transaction retries), and the table
// is the authority on ownership (Renew, Complete and Release need no read).
// A dead process's in-flight records are on disk only; their tokens can
// never come back, so they are never "owned" here. Held (in-doubt) and
// completed records have no owner and are on disk only too.
type claimTable struct {
	stripes [claimStripes]claimStripe
}

type claimStripe struct {
	mu        sync.Mutex
	claims    idempotency.RecordMap
	lastSweep time.Time
}

// lock locks key's stripe and returns it; the caller unlocks.
func (t *claimTable) lock(key idempotency.RecordKey) *claimStripe {
	// A RecordKey is a SHA-256 digest, so any 8 bytes of it are uniform.
	s := &t.stripes[binary.LittleEndian.Uint64(key[:8])%claimStripes]
	s.mu.Lock()
	if s.claims == nil {
		s.claims = make(idempotency.RecordMap)
	}
	return s
}

// owned returns owner's claim on key if it is still retained.
func (s *claimStripe) owned(key idempotency.RecordKey, owner idempotency.OwnerToken, now time.Time) (idempotency.Record, bool) {
	return s.claims.Owned(key, owner, now)
}

// sweep drops claims nobody can complete any more (an owner whose Complete
// and Release both failed).
func (s *claimStripe) sweep(now time.Time) {
	if now.Sub(s.lastSweep) >= idempotency.SweepInterval {
		s.lastSweep = now
		s.claims.Sweep(now)
	}
}
