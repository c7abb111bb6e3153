package idempotency

import (
	"context"
	"net/http"
	"time"

	"go.uber.org/zap"
)

// claim begins the record of an admitted request, as a new owner, and
// answers by what the store holds under its key:
//   - nothing live: the key is this request's, which goes upstream as the
//     record's owner (forward); so is a record in doubt, or a dead owner's,
//     with its fingerprint, taken over (forward reconciles it first);
//   - a record with another fingerprint: the key was used with other
//     parameters (conflict);
//   - a completed record: its response is replayed;
//   - a record still in flight: the request waits up to Config.Wait for it
//     to complete, asking again each time its local owner finishes or a
//     pause passes (an owner in another process is only seen by asking),
//     then is told the key is in use, or, if that owner ended in doubt,
//     that the outcome is unknown.
//
// A store that fails answers 503, or, with FailOpen, lets the request go
// upstream unprotected.
func (h *Handler) claim(r *http.Request, a *admission, log keyLogger) answer {
	owner := NewOwnerToken()
	deadline := time.Now().Add(max(h.cfg.Wait, 0)) // negative: no wait
	pause := 5 * time.Millisecond
	for waited := false; ; waited = true {
		if waited {
			// A duplicate that waited for an owner that ended in doubt
			// leaves the next look to a retry, so duplicates held here do
			// not spend the record's doubts one after another.
			if rec, ok, err := h.store.Get(r.Context(), a.rk); err == nil && ok && rec.State == StateInDoubt && rec.Fingerprint == a.fp {
				return outcomeUnknown("waited for an owner that ended in doubt")
			}
		}
		began := time.Now()
		rec, owned, err := h.store.Begin(r.Context(), a.rk, a.fp, owner, h.cfg.Lease)
		switch {
		case err != nil:
			return h.beginFailed(r, a, log, err)
		case owned:
			ans := answer{how: answerForward, owner: owner, upstream: upstreamRequest(r, a), claimed: rec, attempt: a.attempt}
			if a.attempt != nil {
				a.attempt.Since = began // this process's clock, for a record of its own
				if rec.Prior != 0 {
					a.attempt.Since = rec.CreatedAt // the first owner's, on the store's clock
				}
			}
			return ans
		case rec.Fingerprint != a.fp:
			ans := refuse(OutcomeConflict, refusal{h.cfg.ConflictStatus, CodeKeyReused, reuseMessage(a.key), &retryNo})
			ans.detail = zap.Stringer("state", rec.State)
			return ans
		case rec.State == StateCompleted:
			return replay(rec.Response)
		}

		remaining := time.Until(deadline)
		if remaining <= 0 {
			ans := refuse(OutcomeInFlight, refusal{http.StatusConflict, CodeKeyInUse, inUseMessage, &retryYes})
			ans.retryAfter = retryHint
			return ans
		}
		if !h.waitForChange(r.Context(), a.rk, min(pause, remaining)) {
			return canceled
		}
		pause = min(2*pause, 250*time.Millisecond)
	}
}

// outcomeUnknown answers 409 idempotency_outcome_unknown: the upstream may
// have acted on the key, and what it made is not known yet.
func outcomeUnknown(reason string) answer {
	ans := refuse(OutcomeInDoubt, refusal{http.StatusConflict, CodeOutcomeUnknown, unknownMessage, &retryYes})
	ans.retryAfter = retryHint
	ans.detail = zap.String("why", reason)
	return ans
}

// retryHint is what an in-flight duplicate is told to wait: most creates
// answer within a second, and the SDKs' own backoff takes over after that.
const retryHint = time.Second

// beginFailed answers a request whose record the store could not begin.
func (h *Handler) beginFailed(r *http.Request, a *admission, log keyLogger, err error) answer {
	switch {
	case r.Context().Err() != nil:
		return canceled // the client left; there is no one to answer
	case h.cfg.FailOpen:
		log.Warn("idempotency store failed to begin; forwarding unprotected (fail_open)", zap.Error(err))
		a.setUpstreamBody(r)
		return answer{verdict: verdict{outcome: OutcomeStoreError, reason: "fail open"}, how: answerPass}
	}
	log.Error("idempotency store failed to begin", zap.Error(err))
	return refuse(OutcomeStoreError, refusal{http.StatusServiceUnavailable, CodeStoreUnavailable, unavailableMessage, &retryYes})
}

// waitForChange blocks until the local owner of rk finishes, d passes, or
// ctx ends (false).
func (h *Handler) waitForChange(ctx context.Context, rk RecordKey, d time.Duration) bool {
	done, unsubscribe := h.waiters.subscribe(rk)
	defer unsubscribe()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
	case <-ctx.Done():
		return false
	}
	return true
}
