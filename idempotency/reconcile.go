package idempotency

import (
	"context"
	"net/http"
	"net/url"
	"time"
)

// Reconciler finds what the upstream made of an attempt whose outcome is
// ambiguous: the create may have happened, and its answer was lost (a 500,
// 502 or 504, an error after the request was sent, an owner that died). It
// lists what the caller has made since the attempt began, through the rest
// of the chain, and names the one result that is the attempt's, if it can.
//
// Batches is the Reconciler for OpenAI's batches API; other creates that
// can be listed (files, fine-tuning jobs, vector stores) can follow its
// shape.
type Reconciler interface {
	// Covers reports whether the Reconciler knows how to find the result
	// of r (Batches: a POST to a path ending in /batches). Other requests
	// are handled as without a Reconciler.
	Covers(r *http.Request) bool
	// Prepare returns the body to send upstream for a, which may carry a
	// mark to find its result by (Batches with Tag: a metadata entry). An
	// error is answered 400 with the error's message, and nothing goes
	// upstream. body is the JSON sent upstream, decoded; Prepare must not
	// change it in place.
	Prepare(a *Attempt, body []byte) ([]byte, error)
	// Find looks for the result of a's attempts, made since a.Since,
	// listing with list. It never returns a result that may be another
	// request's: when it cannot be sure, it says FindUnsure.
	Find(ctx context.Context, a *Attempt, list Lister) Finding
}

// Attempt is a request whose result a Reconciler finds.
type Attempt struct {
	// Request is the client's request: its method, URL and headers (the
	// credentials a listing needs). Its body has been read: see Body.
	Request *http.Request
	// Body is the client's body as the upstream's application reads it:
	// decoded from its Content-Encoding, without the key field.
	Body []byte
	// Key is the request's record key, for a tag that names the attempt
	// without naming the client's key.
	Key RecordKey
	// Since is the earliest the upstream may have acted on the key, on
	// this process's clock: when the record's first owner began.
	Since time.Time
}

// Lister sends a GET for the path of the attempt's request, with query, on
// through the rest of the handler chain with the client's headers (so TLS,
// credentials and load balancing are the site's own), and returns what came
// back. Its error is the chain's, or the listing's response being larger
// than MaxListing.
type Lister func(ctx context.Context, query url.Values) (*Listing, error)

// Listing is one response to a Lister.
type Listing struct {
	Status   int
	Header   http.Header
	Body     []byte
	Received time.Time // when its response had been read, on this process's clock
}

// MaxListing is the largest listing response read, in bytes.
const MaxListing = 16 << 20

// FindResult is what a Reconciler made of an attempt.
type FindResult uint8

const (
	// FindUnsure: the listing failed, or more than one result matched, or it
	// did not reach back to the attempt's start. The record is held.
	FindUnsure FindResult = iota
	// FindNone: the listing reached back past the attempt's start and
	// nothing in it is the attempt's: the upstream did not act, and the
	// request may run again.
	FindNone
	// FindOne: exactly one result is the attempt's.
	FindOne
)

func (f FindResult) String() string {
	switch f {
	case FindNone:
		return "none"
	case FindOne:
		return "one"
	}
	return "unsure"
}

// Finding is what Reconciler.Find returns.
type Finding struct {
	Result FindResult
	// Response is, for FindOne, the result as the client receives it and
	// the record keeps it: a 200 with the created object as its body.
	Response Response
	// Reason says why, for the log: which result was found, or why it is
	// unsure ("2 batches match", "listing answered 503").
	Reason string
}

// ReconciledHeader marks a response that was not the upstream's answer to
// the client's request, which was lost, but the result of it that the
// handler found by listing. Replays of it carry it too, with
// Idempotent-Replayed.
const ReconciledHeader = "Idempotent-Reconciled"

// DefaultMaxDoubts is how many owners of one record may fail to find out
// whether the upstream acted before the record is released (with an error
// log): each holds the record and answers 409 idempotency_outcome_unknown.
const DefaultMaxDoubts = 5

// MaxDoubtsLimit is the largest MaxDoubts: the stores count a record's
// doubts in one byte.
const MaxDoubtsLimit = 255
