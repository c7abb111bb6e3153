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

// Token identifies the owner of an in-flight record, so only the request that
// began a record can complete, renew or release it.
type Token [16]byte

// NewToken returns a random owner token.
func NewToken() Token {
	var t Token
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
)

func (s State) String() string {
	switch s {
	case StateInFlight:
		return "in_flight"
	case StateCompleted:
		return "completed"
	}
	return "unknown"
}

// Record is what a store keeps under a RecordKey.
type Record struct {
	State       State
	Fingerprint Fingerprint
	Owner       Token     // in-flight only
	LeaseUntil  time.Time // in-flight only: after this the owner is presumed dead
	CreatedAt   time.Time // when the first owner began
	ExpiresAt   time.Time // completed only: replays end here
	Response    *Response // completed only
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
)

// Store keeps records. Implementations must make Begin atomic: of any number of
// concurrent Begin calls for one key, at most one reports owned.
type Store interface {
	// Begin claims key for owner with a lease, when there is no live record or the
	// existing in-flight record's lease has expired. Otherwise it returns the
	// existing record (in-flight or completed) with owned false.
	Begin(ctx context.Context, key RecordKey, fp Fingerprint, owner Token, lease time.Duration) (rec Record, owned bool, err error)
	// Renew extends the lease of owner's in-flight record; ErrNotOwner if it has none.
	Renew(ctx context.Context, key RecordKey, owner Token, lease time.Duration) error
	// Complete turns owner's in-flight record into a completed one holding resp
	// for ttl; ErrNotOwner if the owner lost the record.
	Complete(ctx context.Context, key RecordKey, owner Token, resp Response, ttl time.Duration) error
	// Release deletes owner's in-flight record so the key can run again;
	// ErrNotOwner if the owner lost it (then nothing is deleted).
	Release(ctx context.Context, key RecordKey, owner Token) error
	// Get returns the live record for key; ok is false when there is none
	// (never stored, released, or expired).
	Get(ctx context.Context, key RecordKey) (rec Record, ok bool, err error)
}

// live reports whether rec still counts at now: an in-flight record until its
// lease ends, a completed one until it expires.
func (rec *Record) live(now time.Time) bool {
	if rec.State == StateInFlight {
		return now.Before(rec.LeaseUntil)
	}
	return now.Before(rec.ExpiresAt)
}
