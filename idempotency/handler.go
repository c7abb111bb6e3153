package idempotency

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
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
	methods map[string]bool
	waiters waitList
}

// New checks cfg, fills its defaults and returns a Handler.
func New(cfg Config) (*Handler, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	h := &Handler{cfg: cfg, methods: make(map[string]bool, len(cfg.Methods))}
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
		_ = h.ServeHTTP(w, r, func(w http.ResponseWriter, r *http.Request) error {
			next.ServeHTTP(w, r)
			return nil
		})
	})
}

var canonicalPool = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}
var responsePool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// ServeHTTP runs one request through the idempotency flow of the README:
// key, fingerprint, begin, then forward-and-store, replay, or refuse. It
// answers every refusal itself; the error it returns is next's.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next Next) error {
	log := h.logger(r)
	if !h.methods[r.Method] {
		h.decide(r, log, OutcomePassthrough)
		return next(w, r)
	}
	key, hasKey, err := ParseKeyHeader(r.Header.Values(h.cfg.KeyHeader))
	if err != nil {
		h.reject(w, r, log, http.StatusBadRequest, CodeInvalidKey, err.Error(), &retryNo)
		return nil
	}
	jsonType := isJSON(r.Header.Get("Content-Type"))
	if !hasKey && (!jsonType || h.cfg.KeyField == KeyFieldOff) {
		if h.cfg.RequireKey {
			h.rejectMissingKey(w, r, log)
			return nil
		}
		h.decide(r, log, OutcomePassthrough)
		return next(w, r) // nothing can carry a key: the body stays unread
	}

	body, err := readBody(r, h.cfg.MaxBody)
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			h.reject(w, r, log, http.StatusRequestEntityTooLarge, CodeRequestTooLarge,
				"The request body is larger than "+strconv.FormatInt(h.cfg.MaxBody, 10)+" bytes.", &retryNo)
			return nil
		}
		// Cut short or timed out: nothing was claimed, so the retry is safe.
		h.reject(w, r, log, http.StatusBadRequest, CodeBodyUnreadable, "The request body could not be read: "+err.Error(), &retryYes)
		return nil
	}

	kind, canonical, upstreamBody := bodyRaw, body, body
	bufp := canonicalPool.Get().(*[]byte)
	defer func() { canonicalPool.Put(bufp) }()
	// An empty body has no JSON to check (a keyed cancel, say): it hashes as raw.
	if len(body) > 0 && jsonType {
		field := h.cfg.KeyField
		if field == KeyFieldOff {
			field = ""
		}
		if !hasKey && !h.cfg.RequireKey && !mayNameField(body, field) {
			setBody(r, body) // keyless: what a parse would find too, without one
			h.decide(r, log, OutcomePassthrough)
			return next(w, r)
		}
		parsed, perr := ParseJSON(body, field, (*bufp)[:0])
		switch {
		case perr != nil && !hasKey && !h.cfg.RequireKey && !mentionsField(body, field):
			// Not ours to judge: without a key the request passes as sent.
			setBody(r, body)
			h.decide(r, log, OutcomePassthrough)
			return next(w, r)
		case errors.Is(perr, ErrKeyFieldNotString):
			h.reject(w, r, log, http.StatusBadRequest, CodeInvalidKey, "The "+h.cfg.KeyField+" field must be a string.", &retryNo)
			return nil
		case perr != nil:
			h.reject(w, r, log, http.StatusBadRequest, CodeInvalidJSON, "The request body is not valid JSON: "+perr.Error(), nil)
			return nil
		}
		*bufp = parsed.Canonical[:0]
		kind, canonical, upstreamBody = bodyJSON, parsed.Canonical, parsed.Stripped
		if parsed.HasKey {
			if err := ValidateKey(parsed.Key); err != nil {
				h.reject(w, r, log, http.StatusBadRequest, CodeInvalidKey, err.Error(), &retryNo)
				return nil
			}
			if hasKey && parsed.Key != key {
				h.reject(w, r, log, http.StatusBadRequest, CodeInvalidKey, ErrKeyMismatch.Error(), &retryNo)
				return nil
			}
			key, hasKey = parsed.Key, true
		}
	}
	if !hasKey {
		if h.cfg.RequireKey {
			h.rejectMissingKey(w, r, log)
			return nil
		}
		setBody(r, body)
		h.decide(r, log, OutcomePassthrough)
		return next(w, r)
	}

	scope := h.cfg.Scope(r)
	if scope == "" && h.cfg.RequireScope {
		h.reject(w, r, log, http.StatusBadRequest, CodeScopeRequired,
			"A request with an idempotency key must identify its caller (for example with an Authorization header).", &retryNo)
		return nil
	}
	var query url.Values // nil when empty: r.URL.Query() would allocate a map
	if r.URL.RawQuery != "" {
		query = r.URL.Query()
	}
	fp := NewFingerprint(r.Method, r.URL.Path, query, kind, canonical)
	rk := NewRecordKey(scope, key)
	return h.run(w, r, next, log.withKey(rk), fp, key, upstreamBody)
}

// run claims the record or answers from it, waiting up to cfg.Wait for an
// in-flight duplicate to finish. upstreamBody becomes r's body only when the
// request goes upstream.
func (h *Handler) run(w http.ResponseWriter, r *http.Request, next Next, log keyLogger, fp Fingerprint, key string, upstreamBody []byte) error {
	rk := log.rk
	owner := NewToken()
	deadline := time.Now().Add(h.cfg.Wait)
	pause := 5 * time.Millisecond
	for {
		rec, owned, err := h.cfg.Store.Begin(r.Context(), rk, fp, owner, h.cfg.LockTimeout)
		switch {
		case err != nil:
			if r.Context().Err() != nil {
				h.decide(r, log, OutcomeCanceled)
				return nil // the client left; there is no one to answer
			}
			if h.cfg.FailOpen {
				log.Warn("idempotency store failed to begin; forwarding unprotected (fail_open)", zap.Error(err))
				setBody(r, upstreamBody)
				h.decide(r, log, OutcomeStoreError, zap.Bool("fail_open", true))
				return next(w, r)
			}
			log.Error("idempotency store failed to begin", zap.Error(err))
			h.decide(r, log, OutcomeStoreError, zap.Int("status", http.StatusServiceUnavailable))
			writeError(w, http.StatusServiceUnavailable, CodeStoreUnavailable, "The idempotency store is unavailable. Retry later.", &retryYes)
			return nil
		case owned:
			setBody(r, upstreamBody)
			return h.forward(w, r, next, rk, owner, log)
		case rec.Fingerprint != fp:
			h.decide(r, log, OutcomeConflict, zap.Stringer("state", rec.State), zap.Int("status", h.cfg.ConflictStatus))
			writeError(w, h.cfg.ConflictStatus, CodeKeyReused, reuseMessage(key), &retryNo)
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

// forward sends the request upstream as the record's owner and stores a 2xx
// response before the client sees it; anything else releases the record.
func (h *Handler) forward(w http.ResponseWriter, r *http.Request, next Next, rk RecordKey, owner Token, log keyLogger) (err error) {
	// A client that gives up must not cancel a create the upstream may already
	// have made: finishing it lets the client's retry replay the result.
	storeCtx := context.WithoutCancel(r.Context())
	defer h.waiters.wake(rk)

	buf := responsePool.Get().(*bytes.Buffer)
	buf.Reset()
	defer responsePool.Put(buf)
	rec := newRecorder(w, h.cfg.MaxResponse, buf)
	decided := false
	decide := func(o Outcome, fields ...zap.Field) {
		if !decided {
			decided = true
			h.decide(r, log, o, fields...)
		}
	}
	// A response that will not be stored is decided before its header goes out.
	rec.onPassthrough = func() { decide(OutcomeReleased, zap.String("reason", "not stored"), zap.Int("status", rec.status)) }

	var site http.Header // headers set in front of this handler, not stored
	if len(w.Header()) > 0 {
		site = w.Header().Clone()
	}
	stopRenewing := h.keepLease(storeCtx, rk, owner, log)
	finished := false
	defer func() {
		if finished {
			return
		}
		stopRenewing()
		decide(OutcomeReleased, zap.String("reason", "panic"))
		h.release(storeCtx, rk, owner, log, "panic")
		// Re-raised as is, so http.ErrAbortHandler still aborts the connection.
		if p := recover(); p != nil {
			panic(p)
		}
	}()
	err = next(rec, r.WithContext(storeCtx))
	finished = true
	stopRenewing()

	switch {
	case err != nil:
		decide(OutcomeReleased, zap.String("reason", "error"), zap.Error(err))
		h.release(storeCtx, rk, owner, log, "error")
		return err
	case !rec.storable():
		decide(OutcomeReleased, zap.String("reason", "not stored"), zap.Int("status", rec.status))
		h.release(storeCtx, rk, owner, log, "not stored: status "+strconv.Itoa(rec.status))
		return nil
	}
	resp := Response{Status: rec.status, Header: storedHeader(w.Header(), site), Body: buf.Bytes()}
	cerr := h.cfg.Store.Complete(storeCtx, rk, owner, resp, h.cfg.TTL)
	switch {
	case errors.Is(cerr, ErrNotOwner):
		// Purged by an operator, or taken over after the lease ran out: the
		// record is no longer ours to fill, and the client still gets its answer.
		log.Warn("idempotency record purged or taken over while upstream; response not stored")
		decide(OutcomeReleased, zap.String("reason", "not owner"), zap.Int("status", rec.status))
	case cerr != nil:
		// The upstream acted, so the client gets its answer either way; the
		// record stays in flight until its lease ends.
		log.Error("idempotency store failed to complete the record", zap.Error(cerr))
		decide(OutcomeStoreError, zap.Int("status", rec.status))
	default:
		decide(OutcomeStored, zap.Int("status", rec.status), zap.Int("bytes", buf.Len()))
	}
	w.Header().Set("Content-Length", strconv.Itoa(buf.Len()))
	w.WriteHeader(rec.status)
	_, _ = w.Write(buf.Bytes())
	return nil
}

func (h *Handler) release(ctx context.Context, rk RecordKey, owner Token, log keyLogger, why string) {
	if err := h.cfg.Store.Release(ctx, rk, owner); err != nil {
		log.Warn("idempotency store failed to release the record", zap.String("reason", why), zap.Error(err))
	}
}

// keepLease renews the owner's lease every third of lock_timeout, so only a
// dead owner's lease ever runs out. The returned func stops it and waits for
// a renewal under way. A timer rather than a goroutine per request: most
// requests finish long before the first renewal.
func (h *Handler) keepLease(ctx context.Context, rk RecordKey, owner Token, log keyLogger) (stop func()) {
	var (
		mu      sync.Mutex
		stopped bool
		running sync.WaitGroup
		timer   *time.Timer
	)
	period := h.cfg.LockTimeout / 3
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
		err := h.cfg.Store.Renew(rctx, rk, owner, h.cfg.LockTimeout)
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
func (h *Handler) reject(w http.ResponseWriter, r *http.Request, log keyLogger, status int, code, message string, retry *bool) {
	h.decide(r, log, OutcomeRejected, zap.Int("status", status), zap.String("code", code),
		zap.String("method", r.Method), zap.String("path", r.URL.Path))
	writeError(w, status, code, message, retry)
}

func (h *Handler) rejectMissingKey(w http.ResponseWriter, r *http.Request, log keyLogger) {
	where := "the " + h.cfg.KeyHeader + " header"
	if h.cfg.KeyField != KeyFieldOff {
		where += " or the " + h.cfg.KeyField + " field of a JSON body"
	}
	h.reject(w, r, log, http.StatusBadRequest, CodeKeyRequired, "An idempotency key is required for this request. Send it in "+where+".", nil)
}

// writeReplay answers with resp, which is the caller's own copy (every Store
// returns one), so its header values are handed over, not copied.
func writeReplay(w http.ResponseWriter, resp *Response) {
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
// reverse_proxy needs to send it (and resend it on a retry).
func setBody(r *http.Request, body []byte) {
	r.Body = io.NopCloser(bytes.NewReader(body))
	r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	r.ContentLength = int64(len(body))
	r.TransferEncoding = nil
	r.Header.Set("Content-Length", strconv.Itoa(len(body)))
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

func isJSON(contentType string) bool {
	mt, _, _ := strings.Cut(contentType, ";")
	mt = strings.ToLower(strings.TrimSpace(mt))
	return mt == "application/json" || strings.HasSuffix(mt, "+json")
}
