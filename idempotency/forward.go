package idempotency

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptrace"
	"strconv"
	"sync"
	"sync/atomic"

	"go.uber.org/zap"
)

var responsePool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// upstreamRequest is r as its owner sends it upstream: with the admitted body,
// and asking for the identity coding, so the stored response is one every
// client may receive (RFC 9110 §12.5.3); encode compresses per request. A
// client that leaves must not cancel a create the upstream may already have
// made: finishing it lets the client's retry replay the result.
//
// It can be sent once only. Go's transport resends a request that carries
// an Idempotency-Key header and has GetBody when the connection breaks after
// the request was written (net/http's isReplayable): that is the create run
// twice that this handler is here to prevent, so GetBody is left nil, and a
// transport may only resend a request it never began to write.
func upstreamRequest(r *http.Request, a *admission) *http.Request {
	up := r.WithContext(context.WithoutCancel(r.Context()))
	up.Header = r.Header.Clone() // handlers in front of this one and the access log keep the client's
	a.setUpstreamBody(up)
	up.GetBody = nil
	up.Header.Set("Accept-Encoding", "identity")
	return up
}

// forward sends the request upstream as the owner of its record, renewing
// the lease while it is there (lease.go), and settles the record by what
// comes back: a 2xx completes it; an ambiguous outcome is reconciled
// (ambiguous.go); anything else releases it, so a retry runs again. A
// record taken over is reconciled before anything goes upstream.
//
// A 2xx is held and stored before the client sees a byte, unless it has to
// go out early (a stream, or larger than MaxResponse): then it is stored when
// it ends if its copy fits, else completed without its body at once. The
// outcome is decided when the response starts out early, else when the
// record is settled.
func (h *Handler) forward(w http.ResponseWriter, ans *answer, next Next, x exchange) error {
	buf := responsePool.Get().(*bytes.Buffer)
	buf.Reset()
	defer responsePool.Put(buf)
	r := ans.upstream
	f := &forwarding{h: h, x: x, rw: newRecorder(w, h.cfg.MaxResponse, buf), rk: x.log.rk, owner: ans.owner,
		ctx: r.Context(), claimed: ans.claimed, attempt: ans.attempt}
	defer h.waiters.wake(f.rk)
	if len(w.Header()) > 0 {
		f.site = w.Header().Clone() // headers set in front of this handler, not stored
	}
	f.rw.onSend = f.sendingEarly
	f.rw.onOverflow = f.overflowed
	f.rw.holdAmbiguous = f.attempt != nil
	f.lease.start(h, f.ctx, f.rk, ans.owner, x.log)

	returned := false
	defer func() {
		if returned {
			return
		}
		p := recover() // next panicked (nil: it ended its goroutine)
		f.settle(w, r, next, nil, true)
		if p != nil {
			panic(p) // re-raised as is, so http.ErrAbortHandler still aborts the connection
		}
	}()
	if ans.claimed.Prior != 0 && f.takeOver(w, r, next) {
		returned = true
		return nil
	}
	r = f.track(r)
	err := next(f.rw, r)
	returned = true
	return f.settle(w, r, next, err, false)
}

// forwarding is one owner's trip upstream, for the steps that may run from
// the recorder's callbacks.
type forwarding struct {
	h       *Handler
	x       exchange
	rw      *recorder // what next writes to
	rk      RecordKey
	owner   OwnerToken
	ctx     context.Context       // the upstream request's: free of the client's cancellation
	claimed Record                // as Begin returned it
	attempt *Attempt              // set when Config.Reconcile covers the request
	sent    atomic.Bool           // the upstream may have the request's whole header (track)
	trace   httptrace.ClientTrace // track's: it sets sent
	upBody  sentBody              // the request body, as track wraps it
	site    http.Header           // set in front of this handler before next ran
	lease   leaseKeeper           // renews the lease while the request is upstream

	completed bool // the record is completed, with its response or without

	// The held 2xx, as keep stored it for the client that waits for it.
	identity bool // stored as identity: the client gets body, not what came
	body     []byte
	decoded  bool // body was decoded from the upstream's Content-Encoding
}

// settle decides what becomes of the record once next is done, reports it
// (unless it was decided as the response went out), and then answers with
// a response that was held. It returns the error forward returns: next's,
// unless the answer replaced it.
func (f *forwarding) settle(w http.ResponseWriter, r *http.Request, next Next, err error, panicked bool) error {
	rw := f.rw
	if !panicked && err == nil && !rw.wroteHeader && !rw.hijacked {
		rw.WriteHeader(http.StatusOK) // what net/http sends for a handler that wrote nothing
	}
	if !f.completed && f.ambiguousOutcome() {
		if panicked {
			w = nil // the connection is aborted: nothing more reaches the client
		}
		return f.ambiguous(w, r, next, err) // the lease is renewed until the record is settled
	}
	f.lease.stop()
	var v verdict
	held := false
	switch {
	case f.completed:
		return err // completed without its body as it went out, and decided then
	case panicked && rw.succeeded():
		v = f.completeUnkept("panic after a 2xx")
	case panicked:
		v = f.release("panic", nil)
	case rw.hijacked:
		// The connection was taken over (an upgrade): what went over it is
		// not the recorder's to keep.
		v = f.release("hijacked", nil)
	case rw.succeeded() && err != nil:
		// The upstream acted but its response broke off: never run it again.
		v = f.completeUnkept("error after a 2xx")
	case err != nil:
		v = f.release("error", err)
	case !rw.succeeded():
		v = f.release("not stored", nil)
	default:
		v, held = f.keep(), true
	}
	f.report(v)
	switch {
	case held:
		f.answer(w)
	case !panicked && rw.wroteHeader && !rw.sending && !rw.succeeded():
		rw.send() // a 5xx held for reconciling that proved a refusal
	}
	return err
}

// sendingEarly decides a response that goes out before it has ended, as
// its header is about to go: anything but a 2xx (released when it ends), a
// held 2xx that outgrew MaxResponse (completed now, without its body), or a
// stream.
func (f *forwarding) sendingEarly() {
	rw := f.rw
	switch {
	case f.ambiguousOutcome() && rw.holdAmbiguous:
		// Held for reconciling, and out early all the same (larger than
		// MaxResponse, or a stream): decided when it has been reconciled.
	case f.ambiguousOutcome():
		f.report(f.inDoubtReleased())
	case !rw.succeeded():
		f.report(verdict{outcome: OutcomeReleased, status: rw.status, reason: "not stored"})
	case rw.overflow:
		f.report(f.completeUnkept("larger than max_response"))
	default:
		f.report(verdict{outcome: OutcomeStreamed, status: rw.status})
	}
}

// overflowed completes, without its body, the record of a stream that
// outgrew MaxResponse; the stream was decided as it started.
func (f *forwarding) overflowed() { f.report(f.completeUnkept("stream larger than max_response")) }

// report decides the request's outcome, if nothing has yet, and wakes the
// duplicates waiting on a record now completed, so they replay it without
// waiting for the rest of a stream.
func (f *forwarding) report(v verdict) {
	f.x.decide(v)
	if f.completed {
		f.h.waiters.wake(f.rk)
	}
}

// keep completes the record with the 2xx held, in the identity coding every
// client may receive; one in a coding that cannot be decoded is completed
// without its body.
func (f *forwarding) keep() verdict {
	header := storedHeader(f.rw.header(), f.site)
	body, decoded, ok := identityBody(header, f.rw.body.Bytes(), f.h.cfg.MaxResponse)
	if !ok {
		return f.completeUnkept("content coding that cannot be stored as identity")
	}
	f.identity, f.body, f.decoded = true, body, decoded
	return f.complete(Response{Status: f.rw.status, Header: header, Body: body}, "")
}

// answer sends the held 2xx once its record is settled: as stored, so the
// first client gets what retries get, or as it came when it could not be.
func (f *forwarding) answer(w http.ResponseWriter) {
	switch {
	case f.rw.sending: // a stream: the client has it all already
	case !f.identity:
		f.rw.send()
	default:
		if f.decoded {
			w.Header().Del("Content-Encoding")
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(f.body)))
		w.WriteHeader(f.rw.status)
		_, _ = w.Write(f.body)
	}
}

// complete turns the record into a completed one holding resp, and says
// what became of it; reason is why a response is not stored.
func (f *forwarding) complete(resp Response, reason string) verdict {
	f.completed = true
	f.lease.stop() // a record completed while its stream goes on needs no lease
	err := f.h.store.Complete(f.ctx, f.rk, f.owner, resp, f.h.cfg.TTL)
	switch {
	case errors.Is(err, ErrNotOwner):
		// Purged by an operator, or taken over after the lease ran out: the
		// record is no longer ours to fill, and the client still gets its answer.
		f.x.log.Warn("idempotency record purged or taken over while upstream; response not stored")
		return verdict{outcome: OutcomeReleased, status: resp.Status, reason: "not owner"}
	case err != nil:
		// The upstream acted, so the client gets its answer either way; the
		// record stays in flight until its lease ends.
		f.x.log.Error("idempotency store failed to complete the record", zap.Error(err))
		return verdict{outcome: OutcomeStoreError, status: resp.Status, reason: "complete failed"}
	case resp.NotStored:
		return verdict{outcome: OutcomeNotStored, status: resp.Status, reason: reason}
	}
	return verdict{outcome: OutcomeStored, status: resp.Status, detail: zap.Int("bytes", len(resp.Body))}
}

// completeUnkept completes the record of a 2xx whose response is not kept,
// so that a retry is told the first request succeeded instead of running it
// again (idempotency_response_not_stored).
func (f *forwarding) completeUnkept(reason string) verdict {
	return f.complete(Response{Status: f.rw.status, NotStored: true}, reason)
}

// release frees the key, so that a retry runs again: the upstream did not
// act, or not in a way that can be answered for it. err is next's, if any.
func (f *forwarding) release(reason string, err error) verdict {
	f.lease.stop()
	if rerr := f.h.store.Release(f.ctx, f.rk, f.owner); rerr != nil {
		f.x.log.Warn("idempotency store failed to release the record",
			zap.String("reason", reason), zap.Int("status", f.rw.status), zap.Error(rerr))
	}
	return verdict{outcome: OutcomeReleased, status: f.rw.status, reason: reason, detail: zap.Error(err)}
}
