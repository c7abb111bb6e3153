package idempotency

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"sync"
	"time"

	"go.uber.org/zap"
)

// Next is the rest of the handler chain, in Caddy's shape: it may return an
// error instead of writing a response.
type Next func(http.ResponseWriter, *http.Request) error

// Handler is the idempotency engine: safe for concurrent use, one per
// configuration. It does not own its Store.
type Handler struct {
	cfg     Config
	store   Store // cfg.Store, observed when cfg.ObserveStore is set
	methods map[string]bool
	waiters waitList
}

// New checks cfg, fills its defaults and returns a Handler.
func New(cfg Config) (*Handler, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	h := &Handler{cfg: cfg, store: cfg.Store, methods: make(map[string]bool, len(cfg.Methods))}
	if cfg.ObserveStore != nil {
		h.store = observedStore{Store: cfg.Store, observe: cfg.ObserveStore}
	}
	for _, m := range cfg.Methods {
		h.methods[m] = true
	}
	return h, nil
}

// Config returns the configuration in force, defaults filled in.
func (h *Handler) Config() Config { return h.cfg }

// Middleware adapts the Handler to plain net/http.
func (h *Handler) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = h.Handle(w, r, func(w http.ResponseWriter, r *http.Request) error {
			next.ServeHTTP(w, r)
			return nil
		})
	})
}

var canonicalPool = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}
var responsePool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// Handle runs one request through the idempotency flow of the README:
// admission (key, body, fingerprint), then the claim: forward-and-store,
// replay, or refuse. It answers every refusal itself; the error it returns
// is next's. It is for chains whose handlers return errors, as Caddy's do;
// Middleware wraps it as a plain http.Handler.
func (h *Handler) Handle(w http.ResponseWriter, r *http.Request, next Next) error {
	log := h.logger(r)
	if !h.methods[r.Method] {
		h.decide(r, log, OutcomePassthrough)
		return next(w, r)
	}
	a, ref := h.admit(r)
	switch {
	case ref != nil:
		h.reject(w, r, log, ref)
		return nil
	case !a.keyed:
		h.decide(r, log, OutcomePassthrough)
		return next(w, r)
	}
	return h.run(w, r, next, log.withKey(a.rk), &a)
}

// run claims the record or answers from it, waiting up to cfg.Wait for an
// in-flight duplicate to finish. The admitted body becomes r's only when the
// request goes upstream.
func (h *Handler) run(w http.ResponseWriter, r *http.Request, next Next, log keyLogger, a *admission) error {
	rk, fp := a.rk, a.fp
	owner := NewOwnerToken()
	deadline := time.Now().Add(max(h.cfg.Wait, 0)) // negative: no wait
	pause := 5 * time.Millisecond
	for {
		rec, owned, err := h.store.Begin(r.Context(), rk, fp, owner, h.cfg.Lease)
		switch {
		case err != nil:
			if r.Context().Err() != nil {
				h.decide(r, log, OutcomeCanceled)
				return nil // the client left; there is no one to answer
			}
			if h.cfg.FailOpen {
				log.Warn("idempotency store failed to begin; forwarding unprotected (fail_open)", zap.Error(err))
				setBody(r, a.upstream, a.decoded)
				h.decide(r, log, OutcomeStoreError, zap.Bool("fail_open", true))
				return next(w, r)
			}
			log.Error("idempotency store failed to begin", zap.Error(err))
			h.decide(r, log, OutcomeStoreError, zap.Int("status", http.StatusServiceUnavailable))
			writeError(w, http.StatusServiceUnavailable, CodeStoreUnavailable, "The idempotency store is unavailable. Retry later.", &retryYes)
			return nil
		case owned:
			return h.forward(w, upstreamRequest(r, a), next, rk, owner, log)
		case rec.Fingerprint != fp:
			h.decide(r, log, OutcomeConflict, zap.Stringer("state", rec.State), zap.Int("status", h.cfg.ConflictStatus))
			writeError(w, h.cfg.ConflictStatus, CodeKeyReused, reuseMessage(a.key), &retryNo)
			return nil
		case rec.State == StateCompleted:
			h.decide(r, log, OutcomeReplayed, zap.Int("status", rec.Response.Status))
			writeReplay(w, rec.Response)
			return nil
		}

		remaining := time.Until(deadline)
		if remaining <= 0 {
			h.decide(r, log, OutcomeInFlight)
			writeInUse(w, retryHint)
			return nil
		}
		if !h.waitForChange(r.Context(), rk, min(pause, remaining)) {
			h.decide(r, log, OutcomeCanceled)
			return nil
		}
		pause = min(2*pause, 250*time.Millisecond)
	}
}

// upstreamRequest is r as its owner sends it upstream: with the admitted body,
// and asking for the identity coding, so the stored response is one every
// client may receive (RFC 9110 §12.5.3); encode compresses per request. A
// client that leaves must not cancel a create the upstream may already have
// made: finishing it lets the client's retry replay the result.
func upstreamRequest(r *http.Request, a *admission) *http.Request {
	up := r.WithContext(context.WithoutCancel(r.Context()))
	up.Header = r.Header.Clone() // handlers in front of this one and the access log keep the client's
	setBody(up, a.upstream, a.decoded)
	up.Header.Set("Accept-Encoding", "identity")
	return up
}

// retryHint is what an in-flight duplicate is told to wait: most creates
// answer within a second, and the SDKs' own backoff takes over after that.
const retryHint = time.Second

// waitForChange blocks until the local owner of rk finishes, d passes (an
// owner in another process is only seen by polling), or ctx ends (false).
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

// forward sends the request upstream as the record's owner. A 2xx response
// completes the record: held and stored before the client sees a byte, or,
// when it had to go out early (a stream, or larger than max_response),
// stored when it ends if its copy fits, else completed without a body. Any
// other answer releases the record.
func (h *Handler) forward(w http.ResponseWriter, r *http.Request, next Next, rk RecordKey, owner OwnerToken, log keyLogger) error {
	storeCtx := r.Context() // already free of the client's cancellation
	defer h.waiters.wake(rk)

	buf := responsePool.Get().(*bytes.Buffer)
	buf.Reset()
	defer responsePool.Put(buf)
	rec := newRecorder(w, h.cfg.MaxResponse, buf)
	f := &forwarding{h: h, r: r, rec: rec, rk: rk, owner: owner, log: log, ctx: storeCtx}
	if len(w.Header()) > 0 {
		f.site = w.Header().Clone() // headers set in front of this handler, not stored
	}
	// Decided before a response that goes out early sends its header.
	rec.onSend = func() {
		switch {
		case !rec.succeeded():
			f.decide(OutcomeReleased, zap.String("reason", "not stored"), zap.Int("status", rec.status))
		case rec.overflow:
			f.completeUnkept("larger than max_response")
		default:
			f.decide(OutcomeStreamed, zap.Int("status", rec.status))
		}
	}
	rec.onOverflow = func() { f.completeUnkept("stream larger than max_response") }

	stopRenewing := h.keepLease(storeCtx, rk, owner, log)
	f.stopRenewing = stopRenewing // a record completed while its stream goes on needs no lease
	finished := false
	defer func() {
		if finished {
			return
		}
		stopRenewing()
		p := recover()
		if rec.succeeded() {
			f.completeUnkept("panic after a 2xx")
		} else {
			f.decide(OutcomeReleased, zap.String("reason", "panic"))
			h.release(storeCtx, rk, owner, log, "panic")
		}
		// Re-raised as is, so http.ErrAbortHandler still aborts the connection.
		if p != nil {
			panic(p)
		}
	}()
	err := next(rec, r)
	finished = true
	stopRenewing()
	if err == nil && !rec.wroteHeader && !rec.hijacked {
		rec.WriteHeader(http.StatusOK) // what net/http sends for a handler that wrote nothing
	}

	switch {
	case f.completed:
		return err // completed without a body when it went out
	case rec.hijacked:
		// The connection was taken over (an upgrade): what went over it is
		// not the recorder's to keep.
		f.decide(OutcomeReleased, zap.String("reason", "hijacked"), zap.Int("status", rec.status))
		h.release(storeCtx, rk, owner, log, "hijacked")
		return err
	case rec.succeeded() && err != nil:
		// The upstream acted but its response broke off: never run it again.
		f.completeUnkept("error after a 2xx")
		return err
	case err != nil:
		f.decide(OutcomeReleased, zap.String("reason", "error"), zap.Error(err))
		h.release(storeCtx, rk, owner, log, "error")
		return err
	case !rec.succeeded():
		f.decide(OutcomeReleased, zap.String("reason", "not stored"), zap.Int("status", rec.status))
		h.release(storeCtx, rk, owner, log, "not stored: status "+strconv.Itoa(rec.status))
		return nil
	}
	header := storedHeader(rec.header(), f.site)
	body, decoded, ok := identityBody(header, buf.Bytes(), h.cfg.MaxResponse)
	if !ok {
		f.completeUnkept("content coding that cannot be stored as identity")
		if !rec.sending {
			rec.send()
		}
		return nil
	}
	f.complete(Response{Status: rec.status, Header: header, Body: body}, zap.Int("bytes", len(body)))
	if rec.sending {
		return nil // a stream: the client has it all already
	}
	if decoded {
		w.Header().Del("Content-Encoding") // the first client gets what retries get
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(rec.status)
	_, _ = w.Write(body)
	return nil
}

// forwarding is one owner's trip upstream, for the steps that may run from
// the recorder's callbacks.
type forwarding struct {
	h         *Handler
	r         *http.Request
	rec       *recorder
	rk        RecordKey
	owner     OwnerToken
	log       keyLogger
	ctx       context.Context
	site      http.Header
	decided   bool
	completed bool
	// stopRenewing ends the lease renewal; it may be called more than once.
	stopRenewing func()
}

// decide reports the outcome, once: a stream is decided when it starts.
func (f *forwarding) decide(o Outcome, fields ...zap.Field) {
	if !f.decided {
		f.decided = true
		f.h.decide(f.r, f.log, o, fields...)
	}
}

// complete turns the record into a completed one holding resp.
func (f *forwarding) complete(resp Response, fields ...zap.Field) {
	f.completed = true
	f.stopRenewing()
	outcome := OutcomeStored
	if resp.NotStored {
		outcome = OutcomeNotStored
	}
	err := f.h.store.Complete(f.ctx, f.rk, f.owner, resp, f.h.cfg.TTL)
	switch {
	case errors.Is(err, ErrNotOwner):
		// Purged by an operator, or taken over after the lease ran out: the
		// record is no longer ours to fill, and the client still gets its answer.
		f.log.Warn("idempotency record purged or taken over while upstream; response not stored")
		f.decide(OutcomeReleased, zap.String("reason", "not owner"), zap.Int("status", resp.Status))
	case err != nil:
		// The upstream acted, so the client gets its answer either way; the
		// record stays in flight until its lease ends.
		f.log.Error("idempotency store failed to complete the record", zap.Error(err))
		f.decide(OutcomeStoreError, zap.Int("status", resp.Status))
	default:
		f.decide(outcome, append(fields, zap.Int("status", resp.Status))...)
	}
	f.h.waiters.wake(f.rk) // duplicates waiting on a response still streaming get it now
}

// completeUnkept completes the record of a 2xx whose response is not kept,
// so that a retry is told the first request succeeded instead of running it
// again (idempotency_response_not_stored).
func (f *forwarding) completeUnkept(reason string) {
	if f.completed {
		return
	}
	f.complete(Response{Status: f.rec.status, NotStored: true}, zap.String("reason", reason))
}

func (h *Handler) release(ctx context.Context, rk RecordKey, owner OwnerToken, log keyLogger, why string) {
	if err := h.store.Release(ctx, rk, owner); err != nil {
		log.Warn("idempotency store failed to release the record", zap.String("reason", why), zap.Error(err))
	}
}

// keepLease renews the owner's lease every third of lock_timeout, so only a
// dead owner's lease ever runs out. The returned func stops it and waits for
// a renewal under way. A timer rather than a goroutine per request: most
// requests finish long before the first renewal.
func (h *Handler) keepLease(ctx context.Context, rk RecordKey, owner OwnerToken, log keyLogger) (stop func()) {
	var (
		mu      sync.Mutex
		stopped bool
		running sync.WaitGroup
		timer   *time.Timer
	)
	period := h.cfg.Lease / 3
	renew := func() {
		mu.Lock()
		if stopped {
			mu.Unlock()
			return
		}
		running.Add(1) // under mu, so stop's Wait cannot miss it
		mu.Unlock()
		defer running.Done()

		rctx, cancel := context.WithTimeout(ctx, period)
		err := h.store.Renew(rctx, rk, owner, h.cfg.Lease)
		cancel()
		switch {
		case errors.Is(err, ErrNotOwner):
			log.Warn("idempotency lease lost while the request was upstream")
			return
		case err != nil:
			log.Warn("idempotency lease renewal failed", zap.Error(err))
		}
		mu.Lock()
		if !stopped {
			timer.Reset(period)
		}
		mu.Unlock()
	}
	mu.Lock()
	timer = time.AfterFunc(period, renew)
	mu.Unlock()
	return func() {
		mu.Lock()
		stopped = true
		mu.Unlock()
		timer.Stop()
		running.Wait()
	}
}

// reject answers bad input (4xx): nothing was claimed or forwarded.
func (h *Handler) reject(w http.ResponseWriter, r *http.Request, log keyLogger, ref *refusal) {
	h.decide(r, log, OutcomeRejected, zap.Int("status", ref.status), zap.String("code", ref.code),
		zap.String("method", r.Method), zap.String("path", r.URL.Path))
	writeError(w, ref.status, ref.code, ref.message, ref.retry)
}

// writeReplay answers with resp, which is the caller's own copy (every Store
// returns one), so its header values are handed over, not copied.
func writeReplay(w http.ResponseWriter, resp *Response) {
	if resp.NotStored {
		w.Header().Set("Idempotent-Replayed", "true")
		writeError(w, http.StatusConflict, CodeResponseNotStored, notStoredMessage(resp.Status), &retryNo)
		return
	}
	h := w.Header()
	for name, values := range resp.Header {
		h[name] = values
	}
	h.Set("Idempotent-Replayed", "true")
	h.Set("Content-Length", strconv.Itoa(len(resp.Body)))
	w.WriteHeader(resp.Status)
	_, _ = w.Write(resp.Body)
}

// readBody reads at most limit bytes; a larger body is an *http.MaxBytesError.
// A body of known length is read into an exact buffer in one Read when it has
// arrived (each Read through Caddy re-arms the connection's deadline).
func readBody(r *http.Request, limit int64) ([]byte, error) {
	if r.ContentLength > limit {
		return nil, &http.MaxBytesError{Limit: limit}
	}
	if r.Body == nil || r.Body == http.NoBody {
		return nil, nil
	}
	if r.ContentLength > 0 {
		buf := make([]byte, r.ContentLength)
		if _, err := io.ReadFull(r.Body, buf); err != nil {
			return nil, err
		}
		return buf, nil // net/http ends a Content-Length body there
	}
	buf := bytes.NewBuffer(make([]byte, 0, 512))
	_, err := buf.ReadFrom(io.LimitReader(r.Body, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(buf.Len()) > limit {
		return nil, &http.MaxBytesError{Limit: limit}
	}
	return buf.Bytes(), nil
}

// setBody gives r a fully buffered body with consistent framing, which
// reverse_proxy needs to send it (and resend it on a retry). The body is
// here, so Expect: 100-continue has nothing left to ask; a decoded body loses
// its Content-Encoding.
func setBody(r *http.Request, body []byte, decoded bool) {
	r.Body = io.NopCloser(bytes.NewReader(body))
	r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	r.ContentLength = int64(len(body))
	r.TransferEncoding = nil
	r.Header.Set("Content-Length", strconv.Itoa(len(body)))
	r.Header.Del("Expect")
	if decoded {
		r.Header.Del("Content-Encoding")
	}
	if len(body) == 0 {
		r.Body = http.NoBody
	}
}

// mayNameField reports whether body could hold field as a member name: it
// spells the name, or it has an escape, which could spell it another way.
func mayNameField(body []byte, field string) bool {
	return field != "" && (bytes.Contains(body, []byte(field)) || bytes.IndexByte(body, '\\') >= 0)
}

// mentionsField reports whether a body that failed to parse names the key
// field: then the client meant it to be keyed, and it gets invalid_json
// rather than going upstream unprotected.
func mentionsField(body []byte, field string) bool {
	return field != "" && bytes.Contains(body, []byte(`"`+field+`"`))
}
