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
	OutcomeStreamed    Outcome = "streamed"    // a 2xx the upstream flushed: passed on as it came, stored at its end if it fit MaxResponse; decided when it starts, however it ends
	OutcomeNotStored   Outcome = "not_stored"  // a 2xx not kept (too large, an undecodable coding, or broken off): the record is completed without it, and retries are told so
	OutcomeReplayed    Outcome = "replayed"    // answered from a completed record
	OutcomeConflict    Outcome = "conflict"    // key reused with other parameters
	OutcomeInFlight    Outcome = "in_flight"   // answered 409 idempotency_key_in_use
	OutcomePassthrough Outcome = "passthrough" // not covered, or no key: forwarded as is
	OutcomeReleased    Outcome = "released"    // forwarded, not 2xx (or an error or panic before a 2xx, or a hijacked connection), or the record purged or taken over meanwhile: the key is free again
	OutcomeRejected    Outcome = "rejected"    // bad input answered 4xx, nothing forwarded or claimed
	OutcomeStoreError  Outcome = "store_error" // the store failed: 503, or forwarded unprotected with FailOpen, or the response could not be stored
	OutcomeCanceled    Outcome = "canceled"    // the client left before it could be answered
	OutcomeReconciled  Outcome = "reconciled"  // an ambiguous attempt's result was found by Config.Reconcile, stored, and answered
	OutcomeInDoubt     Outcome = "in_doubt"    // an ambiguous attempt's result could not be found: the record is held (409 idempotency_outcome_unknown), or released without Config.Reconcile or after MaxDoubts
)

// Outcomes lists every Outcome, for metrics that want each series to exist.
var Outcomes = []Outcome{
	OutcomeStored, OutcomeStreamed, OutcomeNotStored, OutcomeReplayed, OutcomeConflict, OutcomeInFlight, OutcomePassthrough,
	OutcomeReleased, OutcomeRejected, OutcomeStoreError, OutcomeCanceled, OutcomeReconciled, OutcomeInDoubt,
}

// Decision is what Config.Observe is told about a request.
type Decision struct {
	Outcome Outcome
	Key     RecordKey // the record key, logged as key_hash; valid when Keyed
	Keyed   bool
	// Status is the status answered, when the handler knows it at decision
	// time (a refusal, a replay, a stored, streamed or released response);
	// 0 otherwise (a request passed through, an error before any response).
	// For not_stored after an error or a panic that followed a 2xx, it is
	// the upstream's 2xx: what the client then gets is the chain's to say.
	Status int
	// Reason says why: the error code of an answer in OpenAI's error
	// envelope (rejected, conflict, in_flight, a 503 store_error, a replay of
	// a response not stored), or a short phrase for released ("not stored",
	// "error", "panic", "hijacked", "not owner"), not_stored ("larger than
	// max_response", ...) and the other store errors ("fail open",
	// "complete failed"); "" otherwise.
	Reason string
	// Duration is the time from the request's arrival at the handler to
	// this decision.
	Duration time.Duration
}

// verdict is a step's outcome, as the request's Decision reports it.
type verdict struct {
	outcome Outcome
	status  int       // Decision.Status
	reason  string    // Decision.Reason
	coded   bool      // reason is the error code answered: logged as code
	detail  zap.Field // one more field for the debug line, when its Key is set
}

// exchange is one request on its way through Handle: it reports the
// request's outcome, once, with the time since the request arrived.
type exchange struct {
	log     keyLogger
	observe func(*http.Request, Decision)
	start   time.Time
	decided bool
}

func (h *Handler) start(r *http.Request) exchange {
	return exchange{log: h.logger(r), observe: h.cfg.Observe, start: time.Now()}
}

// decide reports v to Config.Observe and writes the one debug line for it.
// Only the first verdict counts: a response that goes out before it has
// ended is decided as it starts, whatever becomes of its record. decide runs
// before the answer is written, so placeholders set by Observe reach
// response headers too.
func (x *exchange) decide(v verdict) {
	if x.decided {
		return
	}
	x.decided = true
	if x.observe != nil {
		x.observe(x.log.r, Decision{
			Outcome: v.outcome, Key: x.log.rk, Keyed: x.log.keyed,
			Status: v.status, Reason: v.reason, Duration: time.Since(x.start),
		})
	}
	x.log.decision(v)
}
