package idempotency

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The harness of the engine's tests: a real upstream (an httptest server)
// behind httputil.ReverseProxy, behind the engine as net/http middleware,
// behind a real front server; the requests a test sends, and what it wants
// of their answers. Every request has a deadline, and whatever a test holds
// (an upstream call, a channel) is let go in t.Cleanup, so a test that
// fails does so at once, and never hangs.

const (
	batchesPath = "/v1/batches"
	testTimeout = 10 * time.Second
)

// A batches create body, as the OpenAI SDKs send it.
const createBody = `{"input_file_id":"file-abc","endpoint":"/v1/chat/completions","completion_window":"24h","metadata":{"team":"a","run":"1"}}`

// seenRequest is what the upstream received.
type seenRequest struct {
	Method, Path, RawQuery string
	Body                   []byte
	ContentLength          int64
	ContentLengthHeader    string
	TransferEncoding       []string
	Header                 http.Header
}

// upstream is a batches backend that counts calls and answers each with a
// fresh random id, a cookie and a request id, unless respond says otherwise.
type upstream struct {
	srv   *httptest.Server
	calls atomic.Int64

	mu   sync.Mutex
	seen []seenRequest

	// respond, when set, writes the response for call n (1-based).
	respond func(w http.ResponseWriter, r *http.Request, n int64)
}

func newUpstream(t *testing.T, respond func(w http.ResponseWriter, r *http.Request, n int64)) *upstream {
	t.Helper()
	u := &upstream{respond: respond}
	u.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := u.calls.Add(1)
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		u.mu.Lock()
		u.seen = append(u.seen, seenRequest{
			Method: r.Method, Path: r.URL.Path, RawQuery: r.URL.RawQuery, Body: body,
			ContentLength: r.ContentLength, ContentLengthHeader: r.Header.Get("Content-Length"),
			TransferEncoding: r.TransferEncoding, Header: r.Header.Clone(),
		})
		u.mu.Unlock()
		if u.respond != nil {
			u.respond(w, r, n)
			return
		}
		writeBatch(w, http.StatusOK, n)
	}))
	t.Cleanup(u.srv.Close)
	return u
}

// writeBatch answers like a batches backend, with per-call values that must
// never leak into another client's replay (the cookie) or be regenerated on a
// replay (the id).
func writeBatch(w http.ResponseWriter, status int, n int64) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Request-Id", fmt.Sprintf("req_%d", n))
	w.Header().Set("Set-Cookie", fmt.Sprintf("session=%d; Path=/", n))
	w.WriteHeader(status)
	fmt.Fprintf(w, `{"id":"batch_%s","object":"batch","call":%d}`, randomHex(), n)
}

func randomHex() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func (u *upstream) requests() []seenRequest {
	u.mu.Lock()
	defer u.mu.Unlock()
	return slices.Clone(u.seen)
}

func (u *upstream) wantCalls(t *testing.T, want int64) {
	t.Helper()
	if got := u.calls.Load(); got != want {
		t.Fatalf("upstream called %d times, want %d", got, want)
	}
}

func newProxy(t *testing.T, target string) *httputil.ReverseProxy {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	p := httputil.NewSingleHostReverseProxy(u)
	p.ErrorLog = log.New(io.Discard, "", 0)
	return p
}

// stack is client -> front server -> engine -> reverse proxy -> upstream.
type stack struct {
	up     *upstream
	h      *Handler
	store  Store
	front  *httptest.Server
	client *http.Client
}

func openMemoryStore(t *testing.T) Store {
	m := NewMemoryStore()
	t.Cleanup(func() { _ = m.Close() })
	return m
}

// newStack builds a stack; cfg.Store defaults to a fresh memory store.
func newStack(t *testing.T, cfg Config, respond func(w http.ResponseWriter, r *http.Request, n int64)) *stack {
	t.Helper()
	if cfg.Store == nil {
		cfg.Store = openMemoryStore(t)
	}
	h, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	s := &stack{up: newUpstream(t, respond), h: h, store: cfg.Store}
	s.front = httptest.NewServer(h.Middleware(newProxy(t, s.up.srv.URL)))
	t.Cleanup(s.front.Close)
	s.client = s.front.Client()
	s.client.Timeout = testTimeout
	return s
}

// newHandler is a Handler for calling Handle directly, with a fresh memory
// store unless cfg has a store of its own.
func newHandler(t *testing.T, cfg Config) (*Handler, *MemoryStore) {
	t.Helper()
	m := NewMemoryStore()
	t.Cleanup(func() { _ = m.Close() })
	if cfg.Store == nil {
		cfg.Store = m
	}
	h, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return h, m
}

// ns is the namespace of the stack's requests: their host and the front
// server's port.
func (s *stack) ns() string {
	host := strings.TrimPrefix(s.front.URL, "http://")
	name, port, _ := strings.Cut(host, ":")
	return name + "@:" + port
}

// newRequestNS is the namespace of newRequest's requests (httptest's
// example.com, on port 80).
const newRequestNS = "example.com@:80"

type result struct {
	status int
	header http.Header
	body   []byte
	err    error
}

func (r result) replayed() bool { return r.header.Get("Idempotent-Replayed") == "true" }

type reqOpt func(*http.Request)

func withKey(k string) reqOpt { return func(r *http.Request) { r.Header.Set("Idempotency-Key", k) } }

func withAuth(a string) reqOpt { return func(r *http.Request) { r.Header.Set("Authorization", a) } }

func withType(ct string) reqOpt {
	return func(r *http.Request) { r.Header.Set("Content-Type", ct) }
}

func withPath(p string) reqOpt {
	return func(r *http.Request) { r.URL.Path, r.URL.RawQuery, _ = strings.Cut(p, "?") }
}

func withHeader(name, value string) reqOpt {
	return func(r *http.Request) { r.Header.Set(name, value) }
}

// send sends body (a string, or an io.Reader for a body of unknown length)
// as a JSON POST to /v1/batches unless opts say otherwise, within
// testTimeout; it never fails the test, so goroutines may call it.
func (s *stack) send(ctx context.Context, body any, opts ...reqOpt) result {
	ctx, cancel := context.WithTimeout(ctx, testTimeout)
	defer cancel()
	var rd io.Reader
	switch b := body.(type) {
	case string:
		rd = strings.NewReader(b)
	case io.Reader:
		rd = b
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.front.URL+batchesPath, rd)
	if err != nil {
		return result{err: err}
	}
	req.Header.Set("Content-Type", "application/json")
	for _, o := range opts {
		o(req)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return result{err: err}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return result{status: resp.StatusCode, header: resp.Header, body: b, err: err}
}

// open sends a create with key and returns its response unread, for a test
// that reads a stream as it comes; ctx may end it sooner than testTimeout.
func (s *stack) open(t *testing.T, ctx context.Context, key string) *http.Response {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, testTimeout)
	t.Cleanup(cancel)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.front.URL+batchesPath, strings.NewReader(createBody))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", key)
	resp, err := s.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

func (s *stack) post(t *testing.T, body any, opts ...reqOpt) result {
	t.Helper()
	r := s.send(t.Context(), body, opts...)
	if r.err != nil {
		t.Fatalf("request failed: %v", r.err)
	}
	return r
}

// newRequest is a request for calling Handle directly, with a deadline:
// a test whose request would wait forever fails instead.
func newRequest(t *testing.T, method, target string, body io.Reader) *http.Request {
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	t.Cleanup(cancel)
	return httptest.NewRequestWithContext(ctx, method, target, body)
}

// jsonRequest is a keyed JSON POST to /v1/batches, for calling Handle directly.
func jsonRequest(t *testing.T, key, body string) *http.Request {
	req := newRequest(t, http.MethodPost, batchesPath, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", key)
	return req
}

// answerAlone has h answer req itself; the test fails if h calls next,
// which would be for what.
func answerAlone(t *testing.T, h *Handler, req *http.Request, what string) result {
	t.Helper()
	w := httptest.NewRecorder()
	if err := h.Handle(w, req, func(http.ResponseWriter, *http.Request) error {
		t.Fatalf("next called for %s", what)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return result{status: w.Code, header: w.Header(), body: w.Body.Bytes()}
}

// okNext answers 200 with body and counts its calls.
func okNext(calls *int, body string) Next {
	return func(w http.ResponseWriter, r *http.Request) error {
		*calls++
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, body)
		return nil
	}
}

// readSpy is a body that records whether anyone read or closed it.
type readSpy struct {
	io.Reader
	read atomic.Bool
}

func (b *readSpy) Read(p []byte) (int, error) { b.read.Store(true); return b.Reader.Read(p) }

func (b *readSpy) Close() error { return nil }

// chunked hides a reader's length from http.Client, so it sends chunked.
type chunked struct{ io.Reader }

// keyedBody is createBody carrying key in its body field.
func keyedBody(key string) string {
	return strings.Replace(createBody, "{", `{"idempotency_key":"`+key+`",`, 1)
}

func wantStatus(t *testing.T, r result, status int) {
	t.Helper()
	if r.status != status {
		t.Fatalf("status %d, want %d; body %s", r.status, status, r.body)
	}
}

// wantForwarded checks r is a fresh upstream answer, not a replay.
func wantForwarded(t *testing.T, r result, status int) {
	t.Helper()
	wantStatus(t, r, status)
	if r.header.Get("Idempotent-Replayed") != "" {
		t.Fatalf("a forwarded response carries Idempotent-Replayed: %q", r.header.Get("Idempotent-Replayed"))
	}
}

// wantReplayOf checks r replays first: same status and body, marked replayed.
func wantReplayOf(t *testing.T, r, first result) {
	t.Helper()
	wantStatus(t, r, first.status)
	if !r.replayed() {
		t.Fatalf("response is not marked Idempotent-Replayed: true (headers %v, body %s)", r.header, r.body)
	}
	if !bytes.Equal(r.body, first.body) {
		t.Fatalf("replayed body %s, want %s", r.body, first.body)
	}
}

// wantError checks r is the OpenAI error envelope with code and returns its message.
func wantError(t *testing.T, r result, status int, code string) string {
	t.Helper()
	wantStatus(t, r, status)
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("error Content-Type %q, want application/json", ct)
	}
	var env map[string]map[string]any
	if err := json.Unmarshal(r.body, &env); err != nil {
		t.Fatalf("error body %s is not the error envelope: %v", r.body, err)
	}
	e, ok := env["error"]
	if len(env) != 1 || !ok {
		t.Fatalf("error body %s: want exactly one member, \"error\"", r.body)
	}
	keys := make([]string, 0, len(e))
	for k := range e {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	if !slices.Equal(keys, []string{"code", "message", "param", "type"}) {
		t.Fatalf("error members %v, want code, message, param, type", keys)
	}
	if e["type"] != "invalid_request_error" {
		t.Errorf("error type %v, want invalid_request_error", e["type"])
	}
	if e["param"] != nil {
		t.Errorf("error param %v, want null", e["param"])
	}
	if e["code"] != code {
		t.Fatalf("error code %v, want %s (message %v)", e["code"], code, e["message"])
	}
	msg, _ := e["message"].(string)
	if msg == "" {
		t.Errorf("error message %v, want a non-empty string", e["message"])
	}
	if cl := r.header.Get("Content-Length"); cl != strconv.Itoa(len(r.body)) {
		t.Errorf("error Content-Length %q for a %d-byte body", cl, len(r.body))
	}
	return msg
}

func wantHeader(t *testing.T, r result, name, want string) {
	t.Helper()
	if got := r.header.Get(name); got != want {
		t.Fatalf("%s: %q, want %q", name, got, want)
	}
}

func reuseText(key string) string {
	return "Idempotency key '" + key + "' was previously used with different parameters. " +
		"Either use a new idempotency key or ensure all parameters match the original request."
}

// getRecord looks a record up as a request to host (its namespace) made it.
func getRecord(t *testing.T, s Store, host, scope, key string) (Record, bool) {
	t.Helper()
	rec, ok, err := s.Get(context.Background(), NewRecordKey(host, scope, key))
	if err != nil {
		t.Fatalf("store Get: %v", err)
	}
	return rec, ok
}

func recv[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(testTimeout):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

func waitClosed(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(testTimeout):
		t.Fatalf("timed out waiting for %s", what)
	}
}

// waitFor polls cond until it holds, for what the handler does after its
// client has the answer.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after 5s waiting for %s", what)
		}
	}
}

// gate holds the upstream's first call until opened, signalling entered when
// it arrives; other calls answer at once. Register t.Cleanup(g.open) after
// the stack is built: cleanups run last-in first-out, so a failing test opens
// the gate before the servers' Close waits for the held request.
type gate struct {
	entered, release chan struct{}
	once             sync.Once
}

func newGate() *gate { return &gate{entered: make(chan struct{}), release: make(chan struct{})} }

func (g *gate) open() { g.once.Do(func() { close(g.release) }) }

func (g *gate) respond(w http.ResponseWriter, r *http.Request, n int64) {
	if n == 1 {
		close(g.entered)
		<-g.release
	}
	writeBatch(w, http.StatusOK, n)
}

// inFlightSpy is a real store that reports when want distinct requests
// (owner tokens) have found the key in flight.
type inFlightSpy struct {
	Store
	want    int
	mu      sync.Mutex
	seen    map[OwnerToken]bool
	reached chan struct{}
}

func spyInFlight(s Store, want int) *inFlightSpy {
	return &inFlightSpy{Store: s, want: want, seen: map[OwnerToken]bool{}, reached: make(chan struct{})}
}

func (o *inFlightSpy) Begin(ctx context.Context, key RecordKey, fp Fingerprint, owner OwnerToken, lease time.Duration) (Record, bool, error) {
	rec, owned, err := o.Store.Begin(ctx, key, fp, owner, lease)
	if err == nil && !owned && rec.State == StateInFlight {
		o.mu.Lock()
		if !o.seen[owner] {
			o.seen[owner] = true
			if len(o.seen) == o.want {
				close(o.reached)
			}
		}
		o.mu.Unlock()
	}
	return rec, owned, err
}

// observed collects Observe calls.
type observed struct {
	mu  sync.Mutex
	got []Decision
}

func (o *observed) observe(_ *http.Request, d Decision) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.got = append(o.got, d)
}

// take returns the decisions since the last take.
func (o *observed) take() []Decision {
	o.mu.Lock()
	defer o.mu.Unlock()
	got := o.got
	o.got = nil
	return got
}
