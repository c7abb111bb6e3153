package idempotency

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strconv"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// An ambiguous outcome: the upstream may have acted on the owner's request
// and its answer does not say (a 500, 502 or 504, an error after the request
// was sent), or the owner died with the request perhaps upstream. A retry
// must not simply run it again: with Config.Reconcile the handler finds what
// the upstream made; without, the key is released and the request reported
// in_doubt, with a warning.

// reconcileTimeout bounds one search for an attempt's result, all its
// listing requests together.
const reconcileTimeout = 30 * time.Second

// ambiguousStatus reports whether an upstream status leaves open whether it
// acted: 500, 502 and 504 (an error inside, or a gateway that lost the
// answer), and the unregistered 520-599 that proxies and CDNs use for the
// same. The other 5xx say the request was not processed (501, 503, 505,
// 507, 508, 511, ...), as 4xx and 429 do.
func ambiguousStatus(status int) bool {
	return status == http.StatusInternalServerError || status == http.StatusBadGateway ||
		status == http.StatusGatewayTimeout || (status >= 520 && status <= 599)
}

// track marks the forwarding sent as soon as the upstream may have a whole
// request header: a transport has written it (httptrace's WroteHeaders; an
// upstream cannot act on less), or a handler reads the body. An error from
// next before that is a refusal (no upstream could be dialled); after it,
// an ambiguous outcome. The trace and the body wrapper live in f.
func (f *forwarding) track(r *http.Request) *http.Request {
	f.trace.WroteHeaders = func() { f.sent.Store(true) }
	r = r.WithContext(httptrace.WithClientTrace(r.Context(), &f.trace))
	if r.Body != nil && r.Body != http.NoBody {
		f.upBody = sentBody{ReadCloser: r.Body, sent: &f.sent}
		r.Body = &f.upBody
	}
	return r
}

// sentBody marks sent when the body is read.
type sentBody struct {
	io.ReadCloser
	sent *atomic.Bool
}

func (b *sentBody) Read(p []byte) (int, error) {
	b.sent.Store(true)
	return b.ReadCloser.Read(p)
}

// ambiguousOutcome reports whether the owner's trip upstream ended so that
// the upstream may have acted without saying so: the request's header was
// sent, and then no 2xx came back but an ambiguous status, or nothing (an
// error or a panic). A 5xx when nothing was sent is the proxy's own answer
// to a failed dial: a refusal.
func (f *forwarding) ambiguousOutcome() bool {
	rw := f.rw
	if rw.succeeded() || rw.hijacked || !f.sent.Load() {
		return false
	}
	return !rw.wroteHeader || ambiguousStatus(rw.status)
}

// why says how an ambiguous outcome ended, for logs and the Decision.
func (f *forwarding) why() string {
	if f.rw.wroteHeader {
		return "upstream answered " + strconv.Itoa(f.rw.status)
	}
	return "error after the request was sent"
}

// ambiguous settles the record of an owner whose upstream may have acted
// (err is next's), and answers w unless it is nil (a panic): the result
// found, or 409 idempotency_outcome_unknown while the record is held, or
// what came back when the key is released.
func (f *forwarding) ambiguous(w http.ResponseWriter, r *http.Request, next Next, err error) error {
	if f.attempt == nil {
		f.x.log.Warn("upstream may have acted and nothing reconciles this request; idempotency key released, a retry runs it again",
			zap.String("why", f.why()), zap.Error(err))
		v := f.release(f.why(), err)
		if v.outcome == OutcomeReleased {
			v = f.inDoubtReleased()
		}
		f.report(v)
		return err
	}
	answered := f.settleFinding(w, f.find(r, next), f.why())
	if answered {
		return nil
	}
	if w != nil && !f.rw.sending && f.rw.wroteHeader {
		f.rw.send() // the upstream's own answer, held for reconciling
	}
	return err
}

// inDoubtReleased is the verdict of an ambiguous outcome released without
// reconciling.
func (f *forwarding) inDoubtReleased() verdict {
	return verdict{outcome: OutcomeInDoubt, status: f.rw.status, reason: "released: " + f.why()}
}

// takeOver reconciles a record taken over from an owner that died or ended
// in doubt, before this request goes upstream. It reports whether the
// client has its answer; if not, the request goes upstream as the owner.
func (f *forwarding) takeOver(w http.ResponseWriter, r *http.Request, next Next) bool {
	if f.attempt == nil {
		f.x.log.Warn("took over an idempotency record whose owner died or ended in doubt; the upstream may have acted on it and nothing reconciles this request",
			zap.Stringer("prior", f.claimed.Prior))
		return false
	}
	finding := f.find(r, next)
	if finding.Result == FindNone {
		return false // nothing made by earlier attempts: this one goes upstream
	}
	if !f.settleFinding(w, finding, "taken over ("+f.claimed.Prior.String()+")") {
		// Given up and released: the client is told, and its retry runs afresh.
		writeUnknown(w, f.site)
	}
	return true
}

// find asks the Reconciler for the result of the attempt, listing through
// next with r's credentials. A Reconciler that panics has found nothing
// certain.
func (f *forwarding) find(r *http.Request, next Next) (finding Finding) {
	ctx, cancel := context.WithTimeout(f.ctx, reconcileTimeout)
	defer cancel()
	defer func() {
		if p := recover(); p != nil {
			f.x.log.Error("idempotency reconcile panicked", zap.Any("panic", p))
			finding = Finding{Result: FindUnsure, Reason: fmt.Sprintf("the search panicked: %v", p)}
		}
	}()
	finding = f.h.cfg.Reconcile.Find(ctx, f.attempt, f.lister(r, next))
	f.x.log.Info("idempotency reconcile searched the upstream", zap.Stringer("found", finding.Result), zap.String("why", finding.Reason),
		zap.Time("since", f.attempt.Since))
	return finding
}

// settleFinding settles the record by what find found, reports it, and
// answers the client unless the key was released (then it reports false):
//   - one result: the record completes with it, and the client gets it as
//     a replay;
//   - none: the key is released;
//   - unsure: the record is held in doubt (409 idempotency_outcome_unknown),
//     unless this is the MaxDoubts-th unsure search of the record, which
//     gives up: released, with an error log.
//
// why says what made the outcome ambiguous, for the log. A nil w (a panic)
// is not answered.
func (f *forwarding) settleFinding(w http.ResponseWriter, finding Finding, why string) bool {
	f.lease.stop()
	answer := w != nil && !f.rw.sending
	switch finding.Result {
	case FindOne:
		v := f.complete(finding.Response, "")
		if v.outcome == OutcomeStored {
			v = verdict{outcome: OutcomeReconciled, status: finding.Response.Status, reason: finding.Reason}
		}
		f.report(v)
		if answer {
			resetHeader(w.Header(), f.site) // none of a held 5xx's headers
			writeReplay(w, &finding.Response)
		}
		return true
	case FindNone:
		f.report(f.release("reconciled: "+finding.Reason, nil))
		return false
	}
	if f.claimed.Doubts+1 >= f.h.cfg.MaxDoubts {
		f.x.log.Error("idempotency reconcile gave up finding whether the upstream acted; key released, a retry runs it again",
			zap.String("why", why), zap.String("unsure", finding.Reason), zap.Int("doubts", f.claimed.Doubts+1))
		v := f.release("gave up", nil)
		f.report(verdict{outcome: OutcomeInDoubt, status: v.status, reason: "gave up"})
		return false
	}
	err := f.h.store.Hold(f.ctx, f.rk, f.owner, f.h.cfg.TTL)
	if err != nil {
		// The record stays in flight until its lease runs out; then a
		// retry takes it over and looks again.
		f.x.log.Warn("idempotency store failed to hold the record in doubt", zap.Error(err))
	}
	f.report(verdict{outcome: OutcomeInDoubt, status: http.StatusConflict, reason: "held: " + finding.Reason})
	if answer {
		writeUnknown(w, f.site)
	}
	return true
}

// writeUnknown answers 409 idempotency_outcome_unknown, with the headers
// the site had set (site) and none of the upstream's.
func writeUnknown(w http.ResponseWriter, site http.Header) {
	resetHeader(w.Header(), site)
	setRetryAfter(w.Header(), retryHint)
	writeError(w, http.StatusConflict, CodeOutcomeUnknown, unknownMessage, &retryYes)
}

// resetHeader makes h what site was: the headers set in front of this
// handler before the upstream wrote its own.
func resetHeader(h, site http.Header) {
	clear(h)
	for name, values := range site {
		h[name] = append([]string(nil), values...)
	}
}

// lister sends the Reconciler's listing requests: GETs for r's path,
// through the rest of the chain, with r's headers but those of its body
// and its idempotency key.
func (f *forwarding) lister(r *http.Request, next Next) Lister {
	return func(ctx context.Context, query url.Values) (*Listing, error) {
		req := r.Clone(ctx)
		req.Method = http.MethodGet
		u := *r.URL
		// The create's own query names the account for some backends
		// (Azure's api-version, a project): the listing keeps it.
		q := r.URL.Query()
		for name, values := range query {
			q[name] = values
		}
		u.RawQuery = q.Encode()
		req.URL, req.RequestURI = &u, u.RequestURI()
		req.Body, req.GetBody, req.ContentLength, req.TransferEncoding = http.NoBody, nil, 0, nil
		for _, name := range []string{"Content-Type", "Content-Length", "Content-Encoding", "Transfer-Encoding", "Expect", f.h.cfg.KeyHeader} {
			req.Header.Del(name)
		}
		req.Header.Set("Accept-Encoding", "identity")
		req.Header.Set("Cache-Control", "no-cache") // a cache in the chain must not answer for the backend
		c := &capture{header: make(http.Header)}
		if err := listThrough(next, c, req); err != nil {
			return nil, err
		}
		if c.over {
			return nil, errListingTooLarge
		}
		body, _, ok := identityBody(c.header, c.body.Bytes(), MaxListing) // asked for identity, compressed anyway
		if !ok {
			return nil, errors.New("listing response in a coding that cannot be decoded: " + c.header.Get("Content-Encoding"))
		}
		l := &Listing{Status: c.status, Header: c.header, Body: body, Received: time.Now()}
		if l.Status == 0 {
			l.Status = http.StatusOK
		}
		return l, nil
	}
}

// listThrough sends one listing request through next. A panic there (as
// reverse_proxy's http.ErrAbortHandler when the listing breaks off) is a
// failed listing: it is the listing's, not the client's connection's.
func listThrough(next Next, w http.ResponseWriter, req *http.Request) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("listing request panicked: %v", p)
		}
	}()
	return next(w, req)
}

var errListingTooLarge = errors.New("listing response larger than " + strconv.Itoa(MaxListing) + " bytes")

// capture is the ResponseWriter a listing request is answered to.
type capture struct {
	header http.Header
	status int
	body   bytes.Buffer
	over   bool
}

func (c *capture) Header() http.Header { return c.header }

func (c *capture) WriteHeader(status int) {
	if c.status == 0 && (status < 100 || status > 199) {
		c.status = status
	}
}

func (c *capture) Write(p []byte) (int, error) {
	if c.status == 0 {
		c.status = http.StatusOK
	}
	if c.body.Len()+len(p) > MaxListing {
		c.over = true
		return len(p), nil
	}
	return c.body.Write(p)
}

func (c *capture) Flush() {}
