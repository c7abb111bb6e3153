package idempotency

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net/http"
	"time"
)

// RecordKey identifies a record: SHA-256 over the namespace, the scope and the
// client's key (see NewRecordKey), so neither the raw key nor the credential
// reaches a store.
type RecordKey [32]byte

// String is the lowercase hex form, used in store keys and logs.
func (k RecordKey) String() string { return hex.EncodeToString(k[:]) }

// Fingerprint is SHA-256 over the request's method, path, query and canonical
// body (see NewFingerprint).
type Fingerprint [32]byte

// OwnerToken identifies the owner of an in-flight record, so only the request that
// began a record can complete, renew or release it.
type OwnerToken [16]byte

// NewOwnerToken returns a random owner token.
func NewOwnerToken() OwnerToken {
	var t OwnerToken
	_, _ = rand.Read(t[:]) // crypto/rand.Read never fails on supported platforms
	return t
}

// State is the lifecycle stage of a record.
type State uint8

const (
	// StateInFlight: a request owns the key and is upstream now.
	StateInFlight State = 1
	// StateCompleted: the upstream's response is stored and replays until ExpiresAt.
	StateCompleted State = 2
	// StateInDoubt: the upstream may have acted, and its owner could not
	// find out (see Config.Reconcile). Held until ExpiresAt for the next
	// request with its fingerprint, which takes it over to find out.
	StateInDoubt State = 3
)

func (s State) String() string {
	switch s {
	case StateInFlight:
		return "in_flight"
	case StateCompleted:
		return "completed"
	case StateInDoubt:
		return "in_doubt"
	}
	return "unknown"
}

// Record is what a store keeps under a RecordKey.
type Record struct {
	State       State
	Fingerprint Fingerprint
	Owner       OwnerToken // in-flight only
	LeaseUntil  time.Time  // in-flight only: after this the owner is presumed dead
	// CreatedAt is when the first owner began: the earliest the upstream
	// can have acted on the key. A takeover and a hold keep it.
	CreatedAt time.Time
	ExpiresAt time.Time // completed: replays end here; in doubt: the hold ends here
	Response  *Response // completed only
	// Doubts counts the owners of this record that could not find out
	// whether the upstream acted (each Hold adds one); a takeover keeps it.
	Doubts int
	// Prior is set by a Begin that owns the key: the state of the record it
	// took over (StateInFlight: a dead owner's, whose lease ran out;
	// StateInDoubt: a held one), or 0 when there was none. Either way the
	// upstream may already have acted on the key. Stores do not keep it.
	Prior State
}

// Response is a stored upstream response.
type Response struct {
	Status int
	Header http.Header
	Body   []byte
	// NotStored marks a 2xx whose response could not be kept (larger than
	// max_response, or in a coding that cannot be stored): Header and Body
	// are empty, and a retry is answered idempotency_response_not_stored
	// instead of running the request again.
	NotStored bool
}

// Errors a Store returns. Any other error means the store itself failed.
var (
	// ErrNotOwner: the record is gone, completed, or owned by another token
	// (the caller's lease expired and another request took the key over).
	ErrNotOwner = errors.New("idempotency: record not owned by this token")
	// ErrStoreClosed: the store was closed; every call after Close returns it.
	ErrStoreClosed = errors.New("idempotency: store is closed")
)

// Store keeps records. Implementations must make Begin atomic: of any number of
// concurrent Begin calls for one key, at most one reports owned.
type Store interface {
	// Begin claims key for owner with a lease, as BeginRecord rules: when
	// there is no record, or the record is in doubt or its owner's lease has
	// run out and it has this fingerprint (a takeover, with Record.Prior
	// set). Otherwise it returns the existing record with owned false.
	Begin(ctx context.Context, key RecordKey, fp Fingerprint, owner OwnerToken, lease time.Duration) (rec Record, owned bool, err error)
	// Renew extends the lease of owner's in-flight record; ErrNotOwner if it has none.
	Renew(ctx context.Context, key RecordKey, owner OwnerToken, lease time.Duration) error
	// Complete turns owner's in-flight record into a completed one holding resp
	// for ttl; ErrNotOwner if the owner lost the record.
	Complete(ctx context.Context, key RecordKey, owner OwnerToken, resp Response, ttl time.Duration) error
	// Release deletes owner's in-flight record so the key can run again;
	// ErrNotOwner if the owner lost it (then nothing is deleted).
	Release(ctx context.Context, key RecordKey, owner OwnerToken) error
	// Hold turns owner's in-flight record into one in doubt, kept for hold
	// (see Record.Held): the upstream may have acted and the owner could not
	// find out, so the key must neither run again nor replay. ErrNotOwner if
	// the owner lost it.
	Hold(ctx context.Context, key RecordKey, owner OwnerToken, hold time.Duration) error
	// Get returns the live record for key; ok is false when there is none
	// (never stored, released, or expired).
	Get(ctx context.Context, key RecordKey) (rec Record, ok bool, err error)
}

// The rules every Store shares, which the stores in this module follow.

// InFlightRetention is how long a store keeps an in-flight record after its
// lease has passed: as long as a completed record replays by default
// (DefaultTTL), because its owner died with the request perhaps upstream,
// and a retry must reconcile, or conflict, rather than run it afresh.
// Until someone takes the key over, the original owner may still Complete,
// Renew, Hold or Release it: storing the response it did get is the honest
// outcome. Once another Begin takes the key over, the old owner gets
// ErrNotOwner.
const InFlightRetention = DefaultTTL

// Live reports whether rec still counts at now: an in-flight record until its
// lease ends, a completed or held one until it expires. Get returns only
// live records.
func (rec *Record) Live(now time.Time) bool {
	if rec.State == StateInFlight {
		return now.Before(rec.LeaseUntil)
	}
	return now.Before(rec.ExpiresAt)
}

// Retained reports whether a store still keeps rec at now: completed and
// held records until they expire, in-flight ones for InFlightRetention past
// their lease.
func (rec *Record) Retained(now time.Time) bool {
	if rec.State == StateInFlight {
		return now.Before(rec.LeaseUntil.Add(InFlightRetention))
	}
	return rec.Live(now)
}

// OwnedBy reports whether rec is in flight under owner.
func (rec *Record) OwnedBy(owner OwnerToken) bool {
	return rec.State == StateInFlight && rec.Owner == owner
}

// Completed is rec, an in-flight record, in its completed form holding resp
// until now+ttl; it keeps rec's fingerprint and creation time.
func (rec *Record) Completed(resp *Response, now time.Time, ttl time.Duration) Record {
	return Record{
		State:       StateCompleted,
		Fingerprint: rec.Fingerprint,
		CreatedAt:   rec.CreatedAt,
		ExpiresAt:   now.Add(ttl),
		Response:    resp,
	}
}

// Held is rec, an in-flight record, in doubt until now+hold, with one more
// doubt; it keeps rec's fingerprint and creation time.
func (rec *Record) Held(now time.Time, hold time.Duration) Record {
	return Record{
		State:       StateInDoubt,
		Fingerprint: rec.Fingerprint,
		CreatedAt:   rec.CreatedAt,
		ExpiresAt:   now.Add(hold),
		Doubts:      rec.Doubts + 1,
	}
}

// BeginRecord is the rule of Store.Begin: what becomes of key's record cur
// (found false: none retained) when owner begins it with fp at now.
//   - None: a new in-flight record, owned.
//   - In flight with its lease running, or completed: cur, not owned.
//   - In doubt, or in flight past its lease (its owner died), with another
//     fingerprint: cur, not owned; the upstream may have acted on the key
//     with other parameters.
//   - The same, with fp: taken over, owned, keeping CreatedAt and Doubts,
//     with Prior telling what was taken over.
func BeginRecord(cur Record, found bool, fp Fingerprint, owner OwnerToken, now time.Time, lease time.Duration) (Record, bool) {
	rec := Record{State: StateInFlight, Fingerprint: fp, Owner: owner, LeaseUntil: now.Add(lease), CreatedAt: now}
	if !found || !cur.Retained(now) {
		return rec, true
	}
	if (cur.State == StateInFlight && cur.Live(now)) || cur.State == StateCompleted || cur.Fingerprint != fp {
		return cur, false
	}
	rec.CreatedAt, rec.Doubts, rec.Prior = cur.CreatedAt, cur.Doubts, cur.State
	return rec, true
}

// RecordMap holds records in memory under the shared rules: the memory
// store's records, the Badger store's in-flight claims. It is not safe for
// concurrent use; its store locks around it.
type RecordMap map[RecordKey]Record

// Owned returns key's record if it is in flight under owner and still
// retained (its lease may have passed; see InFlightRetention).
func (m RecordMap) Owned(key RecordKey, owner OwnerToken, now time.Time) (Record, bool) {
	rec, ok := m[key]
	if !ok || !rec.OwnedBy(owner) || !rec.Retained(now) {
		return Record{}, false
	}
	return rec, true
}

// Sweep drops the records no longer retained at now. It walks every record:
// a store calls it at most once per SweepInterval, so it costs O(1) amortised.
func (m RecordMap) Sweep(now time.Time) {
	for key, rec := range m {
		if !rec.Retained(now) {
			delete(m, key)
		}
	}
}

// SweepInterval is how often a store with a RecordMap sweeps it.
const SweepInterval = 30 * time.Second
