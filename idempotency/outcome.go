package idempotency

import (
	"net/http"
	"time"

	"go.uber.org/zap"
)

// Outcome is what the handler did with one request. Each request handled
// gets exactly one, for metrics, logs and placeholders.
type Outcome string

const (
	OutcomeStored      Outcome = "stored"      // claimed, forwarded, and the 2xx response stored
	OutcomeStreamed    Outcome = "streamed"    // a 2xx the upstream flushed: passed on as it came, stored at its end if it fit max_response; decided when it starts, however it ends
	OutcomeNotStored   Outcome = "not_stored"  // a 2xx too large to keep: the record is completed without it, and retries are told so
	OutcomeReplayed    Outcome = "replayed"    // answered from a completed record
	OutcomeConflict    Outcome = "conflict"    // key reused with other parameters
	OutcomeInFlight    Outcome = "in_flight"   // answered 409 idempotency_key_in_use
	OutcomePassthrough Outcome = "passthrough" // not covered, or no key: forwarded as is
	OutcomeReleased    Outcome = "released"    // forwarded, not 2xx (or an error or panic before a 2xx, or a hijacked connection): the key is free again
	OutcomeRejected    Outcome = "rejected"    // bad input answered 4xx, nothing forwarded or claimed
	OutcomeStoreError  Outcome = "store_error" // the store failed: 503, or forwarded unprotected with fail_open, or the response could not be stored
	OutcomeCanceled    Outcome = "canceled"    // the client left before it could be answered
)

// Outcomes lists every Outcome, for metrics that want each series to exist.
var Outcomes = []Outcome{
	OutcomeStored, OutcomeStreamed, OutcomeNotStored, OutcomeReplayed, OutcomeConflict, OutcomeInFlight, OutcomePassthrough,
	OutcomeReleased, OutcomeRejected, OutcomeStoreError, OutcomeCanceled,
}

// Decision is what Config.Observe is told about a request.
type Decision struct {
	Outcome Outcome
	Key     RecordKey // the record key, logged as key_hash; valid when Keyed
	Keyed   bool
	// Status is the status answered, when the handler knows it at decision
	// time (a refusal, a replay, a stored or released response); 0 otherwise.
	Status int
	// Reason says why, for released, not_stored and rejected outcomes (an
	// error code or a short phrase such as "not stored"); "" otherwise.
	Reason string
	// Duration is the time from the request's arrival at the handler to
	// this decision.
	Duration time.Duration
}

// decide reports the request's outcome to Config.Observe and writes the one
// debug line for it. It runs before the answer is written, so placeholders
// set by Observe reach response headers too.
func (h *Handler) decide(r *http.Request, log keyLogger, outcome Outcome, fields ...zap.Field) {
	if h.cfg.Observe != nil {
		h.cfg.Observe(r, Decision{Outcome: outcome, Key: log.rk, Keyed: log.keyed})
	}
	log.Debug("idempotency decision", append(fields, zap.String("outcome", string(outcome)))...)
}
