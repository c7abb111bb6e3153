package idempotency

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/http/httputil"
	"net/textproto"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/iotest"
	"time"
)

// ---------------------------------------------------------------------------
// Harness: a real upstream (httptest server) behind httputil.ReverseProxy,
// behind the engine as net/http middleware, behind a real front server.

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

type result struct {
	status int
	header http.Header
	body   []byte
	err    error
}

func (r result) replayed() bool { return r.header.Get("Idempotent-Replayed") == "true" }

type reqOpt func(*http.Request)

func withKey(k string) reqOpt  { return func(r *http.Request) { r.Header.Set("Idempotency-Key", k) } }
func withAuth(a string) reqOpt { return func(r *http.Request) { r.Header.Set("Authorization", a) } }
func withType(ct string) reqOpt {
	return func(r *http.Request) { r.Header.Set("Content-Type", ct) }
}
func withPath(p string) reqOpt {
	return func(r *http.Request) { r.URL.Path, r.URL.RawQuery, _ = strings.Cut(p, "?") }
}

// send sends body (a string, or an io.Reader for a body of unknown length)
// as a JSON POST to /v1/batches unless opts say otherwise; it never fails
// the test, so goroutines may call it.
// ns is the namespace of the stack's requests: their host and the front
// server's port.
func (s *stack) ns() string {
	host := strings.TrimPrefix(s.front.URL, "http://")
	name, port, _ := strings.Cut(host, ":")
	return name + "@:" + port
}

// newRequestNS is the namespace of httptest.NewRequest's requests.
const newRequestNS = "example.com@:80"

func (s *stack) send(ctx context.Context, body any, opts ...reqOpt) result {
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

func (s *stack) post(t *testing.T, body any, opts ...reqOpt) result {
	t.Helper()
	r := s.send(t.Context(), body, opts...)
	if r.err != nil {
		t.Fatalf("request failed: %v", r.err)
	}
	return r
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

// getRecord looks a record up as a request to host (its namespace) made it.
func getRecord(t *testing.T, s Store, host, scope, key string) (Record, bool) {
	t.Helper()
	rec, ok, err := s.Get(context.Background(), NewRecordKey(host, scope, key))
	if err != nil {
		t.Fatalf("store Get: %v", err)
	}
	return rec, ok
}

func reuseText(key string) string {
	return "Idempotency key '" + key + "' was previously used with different parameters. " +
		"Either use a new idempotency key or ensure all parameters match the original request."
}

// ---------------------------------------------------------------------------
// Forward, store, replay.

func TestFirstForwardedSecondReplayed(t *testing.T) {
	s := newStack(t, Config{}, nil)
	first := s.post(t, createBody, withKey("k-1"))
	wantForwarded(t, first, http.StatusOK)
	if first.header.Get("Set-Cookie") == "" {
		t.Fatal("the first response lost the upstream's Set-Cookie")
	}
	if first.header.Get("X-Request-Id") != "req_1" {
		t.Fatalf("X-Request-Id %q, want req_1", first.header.Get("X-Request-Id"))
	}

	rec, ok := getRecord(t, s.store, s.ns(), "", "k-1")
	if !ok || rec.State != StateCompleted || rec.Response == nil {
		t.Fatalf("after a 2xx the record is %+v (found %v), want completed", rec, ok)
	}
	if rec.Response.Header.Get("Set-Cookie") != "" || rec.Response.Header.Get("Date") != "" {
		t.Fatalf("stored headers include per-response values: %v", rec.Response.Header)
	}

	for range 2 {
		again := s.post(t, createBody, withKey("k-1"))
		wantReplayOf(t, again, first)
		wantHeader(t, again, "Set-Cookie", "")
		wantHeader(t, again, "X-Request-Id", "req_1")
		wantHeader(t, again, "Content-Type", "application/json")
		wantHeader(t, again, "Content-Length", strconv.Itoa(len(first.body)))
	}
	s.up.wantCalls(t, 1)

	// The sf-string form of the same key is the same key.
	wantReplayOf(t, s.post(t, createBody, withKey(`"k-1"`)), first)
	// A new key is a new request.
	wantForwarded(t, s.post(t, createBody, withKey("k-2")), http.StatusOK)
	s.up.wantCalls(t, 2)
}

func TestKeyInBodyField(t *testing.T) {
	cases := []struct{ name, body, upstream string }{
		{"first", `{"idempotency_key":"kf","input_file_id":"file-1","endpoint":"/v1/embeddings","completion_window":"24h"}`,
			`{"input_file_id":"file-1","endpoint":"/v1/embeddings","completion_window":"24h"}`},
		{"middle", `{"input_file_id":"file-1", "idempotency_key": "kf", "endpoint":"/v1/embeddings","completion_window":"24h"}`,
			`{"input_file_id":"file-1", "endpoint":"/v1/embeddings","completion_window":"24h"}`},
		{"last", `{"input_file_id":"file-1","endpoint":"/v1/embeddings","completion_window":"24h","idempotency_key":"kf"}`,
			`{"input_file_id":"file-1","endpoint":"/v1/embeddings","completion_window":"24h"}`},
		{"only", `{"idempotency_key":"kf"}`, `{}`},
		// Spelled with an escape, the name is still the key field (and the
		// fast path for bodies that cannot name it must not miss it).
		{"escaped name", `{"input_file_id":"file-1","idempotency\u005fkey":"kf","endpoint":"/v1/embeddings","completion_window":"24h"}`,
			`{"input_file_id":"file-1","endpoint":"/v1/embeddings","completion_window":"24h"}`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := newStack(t, Config{}, nil)
			first := s.post(t, tc.body)
			wantForwarded(t, first, http.StatusOK)
			seen := s.up.requests()
			if len(seen) != 1 {
				t.Fatalf("upstream saw %d requests, want 1", len(seen))
			}
			got := seen[0]
			if string(got.Body) != tc.upstream {
				t.Fatalf("upstream body %s, want %s", got.Body, tc.upstream)
			}
			if got.ContentLength != int64(len(tc.upstream)) || got.ContentLengthHeader != strconv.Itoa(len(tc.upstream)) {
				t.Fatalf("upstream ContentLength %d, Content-Length %q, want %d", got.ContentLength, got.ContentLengthHeader, len(tc.upstream))
			}
			if len(got.TransferEncoding) != 0 {
				t.Fatalf("upstream Transfer-Encoding %v, want none", got.TransferEncoding)
			}

			wantReplayOf(t, s.post(t, tc.body), first)
			// The same key in the header, with the same parameters, is the same request.
			wantReplayOf(t, s.post(t, tc.upstream, withKey("kf")), first)
			// And in both, agreeing.
			wantReplayOf(t, s.post(t, tc.body, withKey(`"kf"`)), first)
			s.up.wantCalls(t, 1)
		})
	}
}

// What next receives must be self-consistent, so reverse_proxy can send it
// and resend it on a retry (GetBody).
func TestKeyInBodyFieldFraming(t *testing.T) {
	h, _ := newHandler(t, Config{})
	body := `{"idempotency_key":"kf","endpoint":"/v1/embeddings"}`
	const want = `{"endpoint":"/v1/embeddings"}`
	req := httptest.NewRequest(http.MethodPost, batchesPath, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	called := false
	err := h.Handle(httptest.NewRecorder(), req, func(w http.ResponseWriter, r *http.Request) error {
		called = true
		b, err := io.ReadAll(r.Body)
		if err != nil || string(b) != want {
			t.Errorf("next read %q, %v; want %s", b, err, want)
		}
		if r.ContentLength != int64(len(want)) || r.Header.Get("Content-Length") != strconv.Itoa(len(want)) {
			t.Errorf("next sees ContentLength %d, Content-Length %q; want %d", r.ContentLength, r.Header.Get("Content-Length"), len(want))
		}
		if r.GetBody == nil {
			t.Fatal("GetBody is nil")
		}
		rb, err := r.GetBody()
		if err != nil {
			t.Fatal(err)
		}
		b, _ = io.ReadAll(rb)
		if string(b) != want {
			t.Errorf("GetBody gives %q, want %s", b, want)
		}
		w.WriteHeader(http.StatusOK)
		return nil
	})
	if err != nil || !called {
		t.Fatalf("ServeHTTP = %v, next called %v", err, called)
	}
}

func TestInvalidKeys(t *testing.T) {
	s := newStack(t, Config{}, nil)
	cases := []struct {
		name string
		body string
		opts []reqOpt
	}{
		{"header and field differ", `{"idempotency_key":"k-body","endpoint":"/v1/embeddings"}`, []reqOpt{withKey("k-header")}},
		{"field not a string", `{"idempotency_key":42,"endpoint":"/v1/embeddings"}`, []reqOpt{withKey("k")}},
		{"field empty", `{"idempotency_key":"","endpoint":"/v1/embeddings"}`, nil},
		{"field not printable ASCII", `{"idempotency_key":"cl\u00e9","endpoint":"/v1/embeddings"}`, nil},
		{"header bad sf-string", createBody, []reqOpt{withKey(`"abc`)}},
		{"header too long", createBody, []reqOpt{withKey(strings.Repeat("x", 256))}},
		{"header twice", createBody, []reqOpt{func(r *http.Request) {
			r.Header.Add("Idempotency-Key", "a")
			r.Header.Add("Idempotency-Key", "b")
		}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := s.post(t, tc.body, tc.opts...)
			wantError(t, r, http.StatusBadRequest, CodeInvalidKey)
			wantHeader(t, r, "x-should-retry", "false")
		})
	}
	s.up.wantCalls(t, 0)
}

func TestKeyReusedWithOtherParameters(t *testing.T) {
	s := newStack(t, Config{}, nil)
	wantForwarded(t, s.post(t, createBody, withKey("k-reuse")), http.StatusOK)

	other := strings.Replace(createBody, "file-abc", "file-xyz", 1)
	for name, r := range map[string]result{
		"body":  s.post(t, other, withKey("k-reuse")),
		"path":  s.post(t, createBody, withKey("k-reuse"), withPath("/v1/files")),
		"query": s.post(t, createBody, withKey("k-reuse"), withPath(batchesPath+"?x=1")),
		"field": s.post(t, strings.Replace(other, "{", `{"idempotency_key":"k-reuse",`, 1)),
	} {
		t.Run(name, func(t *testing.T) {
			msg := wantError(t, r, http.StatusConflict, CodeKeyReused)
			if msg != reuseText("k-reuse") {
				t.Fatalf("message %q\nwant    %q", msg, reuseText("k-reuse"))
			}
			wantHeader(t, r, "x-should-retry", "false")
		})
	}
	s.up.wantCalls(t, 1)
}

func TestConflictStatus422(t *testing.T) {
	s := newStack(t, Config{ConflictStatus: http.StatusUnprocessableEntity}, nil)
	wantForwarded(t, s.post(t, `{"a":"1"}`, withKey("k")), http.StatusOK)
	r := s.post(t, `{"a":"2"}`, withKey("k"))
	if msg := wantError(t, r, http.StatusUnprocessableEntity, CodeKeyReused); msg != reuseText("k") {
		t.Fatalf("message %q, want %q", msg, reuseText("k"))
	}
	wantHeader(t, r, "x-should-retry", "false")
	s.up.wantCalls(t, 1)
}

func TestEquivalentJSONReplays(t *testing.T) {
	s := newStack(t, Config{}, nil)
	first := s.post(t, createBody, withKey("k-eq"))
	wantForwarded(t, first, http.StatusOK)
	variants := map[string]string{
		"member order": `{"metadata":{"run":"1","team":"a"},"completion_window":"24h","endpoint":"/v1/chat/completions","input_file_id":"file-abc"}`,
		"whitespace": "\n{ \"input_file_id\" : \"file-abc\",\r\n\t\"endpoint\":\"/v1/chat/completions\" ,\"completion_window\":\"24h\",\n" +
			"  \"metadata\": { \"team\": \"a\", \"run\": \"1\" } }\n",
		"escapes":       `{"input_file_id":"file-\u0061bc","endpoint":"\/v1\/chat\/completions","completion_window":"24h","metadata":{"team":"a","run":"1"}}`,
		"null metadata": `{"input_file_id":"file-abc","endpoint":"/v1/chat/completions","completion_window":"24h","metadata":{"team":"a","run":"1"},"extra":null}`,
	}
	for name, body := range variants {
		t.Run(name, func(t *testing.T) {
			wantReplayOf(t, s.post(t, body, withKey("k-eq")), first)
		})
	}
	s.up.wantCalls(t, 1)
}

// llama-stack's seed tests: absent == null, and {} differs from both.
func TestNullEqualsAbsent(t *testing.T) {
	const (
		absent = `{"input_file_id":"f","endpoint":"/v1/embeddings","completion_window":"24h"}`
		null   = `{"input_file_id":"f","endpoint":"/v1/embeddings","completion_window":"24h","metadata":null}`
		empty  = `{"input_file_id":"f","endpoint":"/v1/embeddings","completion_window":"24h","metadata":{}}`
	)
	t.Run("absent then null replays", func(t *testing.T) {
		s := newStack(t, Config{}, nil)
		first := s.post(t, absent, withKey("k"))
		wantForwarded(t, first, http.StatusOK)
		wantReplayOf(t, s.post(t, null, withKey("k")), first)
		wantError(t, s.post(t, empty, withKey("k")), http.StatusConflict, CodeKeyReused)
		s.up.wantCalls(t, 1)
	})
	t.Run("null then absent replays", func(t *testing.T) {
		s := newStack(t, Config{}, nil)
		first := s.post(t, null, withKey("k"))
		wantForwarded(t, first, http.StatusOK)
		wantReplayOf(t, s.post(t, absent, withKey("k")), first)
		s.up.wantCalls(t, 1)
	})
	t.Run("empty object conflicts with null and absent", func(t *testing.T) {
		s := newStack(t, Config{}, nil)
		first := s.post(t, empty, withKey("k"))
		wantForwarded(t, first, http.StatusOK)
		wantError(t, s.post(t, null, withKey("k")), http.StatusConflict, CodeKeyReused)
		wantError(t, s.post(t, absent, withKey("k")), http.StatusConflict, CodeKeyReused)
		wantReplayOf(t, s.post(t, empty, withKey("k")), first)
		s.up.wantCalls(t, 1)
	})
}

func TestInvalidJSONWithKey(t *testing.T) {
	s := newStack(t, Config{}, nil)
	for _, body := range []string{
		`{"input_file_id":`,
		`{"a":1,"a":2}`,
		`{"a":1} trailing`,
		"{\"a\":\"\xff\"}",
		`{"a":NaN}`,
	} {
		r := s.post(t, body, withKey("k-json"))
		wantError(t, r, http.StatusBadRequest, CodeInvalidJSON)
	}
	s.up.wantCalls(t, 0)

	// Nothing was begun: the key is still free.
	first := s.post(t, createBody, withKey("k-json"))
	wantForwarded(t, first, http.StatusOK)
	wantReplayOf(t, s.post(t, createBody, withKey("k-json")), first)
	s.up.wantCalls(t, 1)
}

// A key sent in the body field of a body the strict parser rejects is still
// a key: the request must not go upstream unprotected (a lenient upstream
// accepts duplicate members or 1e400 and would run every retry again).
func TestKeyFieldInInvalidJSONNotForwarded(t *testing.T) {
	s := newStack(t, Config{}, nil)
	for _, body := range []string{
		`{"idempotency_key":"k-json","input_file_id":"a","input_file_id":"a"}`,
		`{"input_file_id":"a","idempotency_key":"k-json","n":1e400}`,
		`{"idempotency_key":"k-json","a":}`,
	} {
		wantError(t, s.post(t, body), http.StatusBadRequest, CodeInvalidJSON)
	}
	s.up.wantCalls(t, 0)
}

// POST /v1/batches/{id}/cancel has no body, yet SDKs send it as JSON.
func TestEmptyJSONBodyWithKey(t *testing.T) {
	s := newStack(t, Config{}, nil)
	cancel := withPath("/v1/batches/batch_1/cancel")
	first := s.post(t, "", withKey("k-cancel"), cancel)
	wantForwarded(t, first, http.StatusOK)
	wantReplayOf(t, s.post(t, "", withKey("k-cancel"), cancel), first)
	wantError(t, s.post(t, "{}", withKey("k-cancel"), cancel), http.StatusConflict, CodeKeyReused)
	s.up.wantCalls(t, 1)
}

func TestInvalidJSONWithoutKeyPassesThrough(t *testing.T) {
	s := newStack(t, Config{}, nil)
	bodies := []string{`{"a":1,"a":2}`, `not json`, `[1,2,`, `{"n":1e400}`}
	for _, body := range bodies {
		for range 2 {
			wantForwarded(t, s.post(t, body), http.StatusOK)
		}
	}
	seen := s.up.requests()
	if len(seen) != 2*len(bodies) {
		t.Fatalf("upstream saw %d requests, want %d", len(seen), 2*len(bodies))
	}
	for i, r := range seen {
		if want := bodies[i/2]; string(r.Body) != want || r.ContentLength != int64(len(want)) {
			t.Errorf("request %d reached upstream as %q (ContentLength %d), want %q untouched", i, r.Body, r.ContentLength, want)
		}
	}
}

func TestNonJSONBodyHashesRawBytes(t *testing.T) {
	s := newStack(t, Config{}, nil)
	text := withType("text/plain")
	first := s.post(t, `{"b":1,"a":2}`, withKey("k-raw"), text)
	wantForwarded(t, first, http.StatusOK)
	if seen := s.up.requests(); string(seen[0].Body) != `{"b":1,"a":2}` {
		t.Fatalf("upstream body %q, want it untouched", seen[0].Body)
	}
	wantReplayOf(t, s.post(t, `{"b":1,"a":2}`, withKey("k-raw"), text), first)
	// Raw bytes: a JSON-equivalent reordering is a different request...
	wantError(t, s.post(t, `{"a":2,"b":1}`, withKey("k-raw"), text), http.StatusConflict, CodeKeyReused)
	wantError(t, s.post(t, `{"b":1,"a":2} `, withKey("k-raw"), text), http.StatusConflict, CodeKeyReused)
	// ...and the same bytes as JSON are a different request too.
	wantError(t, s.post(t, `{"b":1,"a":2}`, withKey("k-raw")), http.StatusConflict, CodeKeyReused)
	s.up.wantCalls(t, 1)

	// A key field inside a non-JSON body is not a key, and stays in the body.
	const withField = `{"idempotency_key":"k-other"}`
	wantForwarded(t, s.post(t, withField, text), http.StatusOK)
	wantForwarded(t, s.post(t, withField, text), http.StatusOK)
	if seen := s.up.requests(); string(seen[2].Body) != withField {
		t.Fatalf("upstream body %q, want %q", seen[2].Body, withField)
	}
	s.up.wantCalls(t, 3)
}

// readSpy is a body that records whether anyone read or closed it.
type readSpy struct {
	io.Reader
	read atomic.Bool
}

func (b *readSpy) Read(p []byte) (int, error) { b.read.Store(true); return b.Reader.Read(p) }
func (b *readSpy) Close() error               { return nil }

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

func TestUncoveredMethodsPassThroughUnread(t *testing.T) {
	h, store := newHandler(t, Config{RequireKey: true})
	for _, method := range []string{http.MethodGet, http.MethodPut, http.MethodDelete, http.MethodPatch} {
		body := &readSpy{Reader: strings.NewReader(`{"idempotency_key":"k","a":1}`)}
		req := httptest.NewRequest(method, batchesPath, nil)
		req.Body = body
		req.Header.Set("Content-Type", "application/json")
		req.Header.Add("Idempotency-Key", "k") // even an invalid (duplicated) key is not ours to judge
		req.Header.Add("Idempotency-Key", "k2")
		calls := 0
		w := httptest.NewRecorder()
		err := h.Handle(w, req, func(w http.ResponseWriter, r *http.Request) error {
			calls++
			if r.Body != io.ReadCloser(body) {
				t.Errorf("%s: next got a different body", method)
			}
			if body.read.Load() {
				t.Errorf("%s: the body was read before next", method)
			}
			w.WriteHeader(http.StatusTeapot)
			return nil
		})
		if err != nil || calls != 1 || w.Code != http.StatusTeapot {
			t.Fatalf("%s: ServeHTTP = %v, next called %d times, status %d; want passthrough", method, err, calls, w.Code)
		}
	}
	if _, ok, _ := store.Get(t.Context(), NewRecordKey(newRequestNS, "", "k")); ok {
		t.Fatal("an uncovered method created a record")
	}

	// A method added to Methods is covered.
	h, _ = newHandler(t, Config{Methods: []string{http.MethodPost, http.MethodPut}})
	req := httptest.NewRequest(http.MethodPut, batchesPath, strings.NewReader(`{"a":1}`))
	req.Header.Set("Idempotency-Key", "")
	w := httptest.NewRecorder()
	_ = h.Handle(w, req, func(http.ResponseWriter, *http.Request) error {
		t.Fatal("next called for a covered PUT with an empty key")
		return nil
	})
	if w.Code != http.StatusBadRequest {
		t.Fatalf("covered PUT with an empty key: status %d, want 400", w.Code)
	}
}

func TestNoKeyNonJSONBodyUnread(t *testing.T) {
	h, _ := newHandler(t, Config{})
	body := &readSpy{Reader: strings.NewReader("file bytes")}
	req := httptest.NewRequest(http.MethodPost, "/v1/files", nil)
	req.Body = body
	req.Header.Set("Content-Type", "multipart/form-data; boundary=x")
	called := false
	err := h.Handle(httptest.NewRecorder(), req, func(w http.ResponseWriter, r *http.Request) error {
		called = true
		if r.Body != io.ReadCloser(body) || body.read.Load() {
			t.Error("a keyless non-JSON body was touched before next")
		}
		return nil
	})
	if err != nil || !called {
		t.Fatalf("ServeHTTP = %v, next called %v", err, called)
	}
}

// chunked hides a reader's length from http.Client, so it sends chunked.
type chunked struct{ io.Reader }

func TestBodyTooLarge(t *testing.T) {
	const limit = 64
	s := newStack(t, Config{MaxBody: limit}, nil)
	big := `{"a":"` + strings.Repeat("x", limit) + `"}`
	atLimit := `{"a":"` + strings.Repeat("x", limit-8) + `"}`
	if len(atLimit) != limit {
		t.Fatalf("test body is %d bytes, want %d", len(atLimit), limit)
	}

	t.Run("content-length", func(t *testing.T) {
		wantError(t, s.post(t, big, withKey("k-big")), http.StatusRequestEntityTooLarge, CodeRequestTooLarge)
	})
	t.Run("chunked", func(t *testing.T) {
		wantError(t, s.post(t, chunked{strings.NewReader(big)}, withKey("k-big")), http.StatusRequestEntityTooLarge, CodeRequestTooLarge)
		wantError(t, s.post(t, chunked{strings.NewReader(`{"idempotency_key":"k-big","a":"` + strings.Repeat("x", limit) + `"}`)}),
			http.StatusRequestEntityTooLarge, CodeRequestTooLarge)
	})
	s.up.wantCalls(t, 0)

	t.Run("at the limit, chunked", func(t *testing.T) {
		first := s.post(t, chunked{strings.NewReader(atLimit)}, withKey("k-big"))
		wantForwarded(t, first, http.StatusOK)
		seen := s.up.requests()
		if string(seen[0].Body) != atLimit || seen[0].ContentLength != limit {
			t.Fatalf("upstream got %q with ContentLength %d, want the %d-byte body with its length", seen[0].Body, seen[0].ContentLength, limit)
		}
		wantReplayOf(t, s.post(t, atLimit, withKey("k-big")), first)
	})
	s.up.wantCalls(t, 1)
}

// A body cut short (a client gone mid-upload, a read timeout) is answered
// in the envelope, claims nothing, and leaves the key usable.
func TestBodyReadFailure(t *testing.T) {
	h, store := newHandler(t, Config{})
	req := jsonRequest("k-cut", "")
	req.Body = io.NopCloser(io.MultiReader(strings.NewReader(`{"input_file_id":`), iotest.ErrReader(io.ErrUnexpectedEOF)))
	w := httptest.NewRecorder()
	if err := h.Handle(w, req, func(http.ResponseWriter, *http.Request) error {
		t.Fatal("next called for a body that could not be read")
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	res := result{status: w.Code, header: w.Header(), body: w.Body.Bytes()}
	wantError(t, res, http.StatusBadRequest, CodeBodyUnreadable)
	wantHeader(t, res, "x-should-retry", "true")
	if _, ok := getRecord(t, store, newRequestNS, "", "k-cut"); ok {
		t.Fatal("a request whose body could not be read claimed its key")
	}
}

// A declared length over the limit is refused before a byte is read.
func TestBodyTooLargeDeclaredNotRead(t *testing.T) {
	h, _ := newHandler(t, Config{MaxBody: 64})
	body := &readSpy{Reader: strings.NewReader(strings.Repeat("x", 65))}
	req := jsonRequest("k-big", "")
	req.Body, req.ContentLength = body, 65
	w := httptest.NewRecorder()
	if err := h.Handle(w, req, func(http.ResponseWriter, *http.Request) error {
		t.Fatal("next called for a body over MaxBody")
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	wantError(t, result{status: w.Code, header: w.Header(), body: w.Body.Bytes()}, http.StatusRequestEntityTooLarge, CodeRequestTooLarge)
	if body.read.Load() {
		t.Fatal("the body was read although its declared length is over MaxBody")
	}
}

func TestRequireKey(t *testing.T) {
	s := newStack(t, Config{RequireKey: true}, nil)
	wantError(t, s.post(t, createBody), http.StatusBadRequest, CodeKeyRequired)
	wantError(t, s.post(t, "plain", withType("text/plain")), http.StatusBadRequest, CodeKeyRequired)
	// A body the strict parser rejects cannot smuggle a keyless request past
	// require_key (a lenient upstream would accept duplicate members).
	wantError(t, s.post(t, `{"input_file_id":"a","input_file_id":"a"}`), http.StatusBadRequest, CodeInvalidJSON)
	wantError(t, s.post(t, `{"idempotency_key":5}`), http.StatusBadRequest, CodeInvalidKey)
	s.up.wantCalls(t, 0)
	wantForwarded(t, s.post(t, createBody, withKey("k")), http.StatusOK)
	wantForwarded(t, s.post(t, `{"idempotency_key":"k2"}`), http.StatusOK)
	s.up.wantCalls(t, 2)
}

// ---------------------------------------------------------------------------
// Failures release the record.

func TestUpstreamFailureReleases(t *testing.T) {
	for _, status := range []int{http.StatusInternalServerError, http.StatusBadRequest, http.StatusTooManyRequests, http.StatusFound} {
		t.Run(strconv.Itoa(status), func(t *testing.T) {
			s := newStack(t, Config{}, func(w http.ResponseWriter, r *http.Request, n int64) {
				if n == 1 {
					w.Header().Set("Content-Type", "text/plain")
					w.WriteHeader(status)
					fmt.Fprintf(w, "failure %d", n)
					return
				}
				writeBatch(w, http.StatusOK, n)
			})
			r := s.post(t, createBody, withKey("k-fail"))
			wantForwarded(t, r, status)
			if string(r.body) != "failure 1" {
				t.Fatalf("client got %q, want the upstream's body", r.body)
			}
			if _, ok := getRecord(t, s.store, s.ns(), "", "k-fail"); ok {
				t.Fatal("the record was kept after a non-2xx")
			}
			retry := s.post(t, createBody, withKey("k-fail"))
			wantForwarded(t, retry, http.StatusOK)
			s.up.wantCalls(t, 2)
			wantReplayOf(t, s.post(t, createBody, withKey("k-fail")), retry)
			s.up.wantCalls(t, 2)
		})
	}
}

func jsonRequest(key, body string) *http.Request {
	req := httptest.NewRequest(http.MethodPost, batchesPath, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", key)
	return req
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

// The stored response goes to the client with its own Content-Length, and
// the upstream's framing headers are not stored.
func TestStoredResponseFraming(t *testing.T) {
	h, store := newHandler(t, Config{})
	w := httptest.NewRecorder()
	err := h.Handle(w, jsonRequest("k-frame", createBody), func(w http.ResponseWriter, r *http.Request) error {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusCreated)
		_, _ = io.WriteString(w, `{"id":`)
		_, _ = io.WriteString(w, `"batch_1"}`)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	const want = `{"id":"batch_1"}`
	if w.Code != http.StatusCreated || w.Body.String() != want || w.Header().Get("Content-Length") != strconv.Itoa(len(want)) {
		t.Fatalf("client got %d %q with Content-Length %q, want 201 %s with its length", w.Code, w.Body, w.Header().Get("Content-Length"), want)
	}
	rec, ok := getRecord(t, store, newRequestNS, "", "k-frame")
	if !ok || rec.State != StateCompleted || rec.Response.Status != http.StatusCreated || string(rec.Response.Body) != want {
		t.Fatalf("stored %+v (found %v), want the 201", rec, ok)
	}
	if rec.Response.Header.Get("Content-Length") != "" || rec.Response.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("stored headers %v, want Content-Type without Content-Length", rec.Response.Header)
	}

	// The replay recomputes the length and marks itself.
	w = httptest.NewRecorder()
	if err := h.Handle(w, jsonRequest("k-frame", createBody), func(http.ResponseWriter, *http.Request) error {
		t.Fatal("next called for a completed key")
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if w.Code != http.StatusCreated || w.Body.String() != want || w.Header().Get("Content-Length") != strconv.Itoa(len(want)) ||
		w.Header().Get("Idempotent-Replayed") != "true" {
		t.Fatalf("replay %d %q headers %v", w.Code, w.Body, w.Header())
	}
}

// An error or a panic from next releases the record, unless the upstream
// had already answered 2xx: then it acted, and a retry must not make it act
// again, so the record is completed without a body.
func TestNextErrorOrPanic(t *testing.T) {
	boom := errors.New("upstream unreachable")
	for _, tc := range []struct {
		name   string
		status int // written before the failure; 0: none
		panic  any // nil: next returns boom
		kept   bool
	}{
		{"error before the header", 0, nil, false},
		{"error after a 502", http.StatusBadGateway, nil, false},
		{"error after a 200", http.StatusOK, nil, true},
		{"panic before the header", 0, "boom", false},
		{"abort after a 500", http.StatusInternalServerError, http.ErrAbortHandler, false},
		{"panic after a 201", http.StatusCreated, "boom", true},
		{"abort after a 200", http.StatusOK, http.ErrAbortHandler, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, store := newHandler(t, Config{})
			w := httptest.NewRecorder()
			var err error
			recovered := func() (p any) {
				defer func() { p = recover() }()
				err = h.Handle(w, jsonRequest("k-fail", createBody), func(w http.ResponseWriter, r *http.Request) error {
					if tc.status != 0 {
						w.WriteHeader(tc.status)
						_, _ = io.WriteString(w, "partial")
					}
					if tc.panic != nil {
						panic(tc.panic)
					}
					return boom
				})
				return nil
			}()
			if tc.panic != nil && recovered != tc.panic {
				t.Fatalf("recovered %#v, want %#v re-raised as is", recovered, tc.panic)
			}
			if tc.panic == nil && !errors.Is(err, boom) {
				t.Fatalf("ServeHTTP = %v, want the error from next", err)
			}
			if tc.status >= 200 && tc.status <= 299 && w.Body.Len() != 0 {
				t.Fatalf("the held 2xx leaked to the client: %q", w.Body)
			}
			rec, ok := getRecord(t, store, newRequestNS, "", "k-fail")
			calls := 0
			retry := httptest.NewRecorder()
			if err := h.Handle(retry, jsonRequest("k-fail", createBody), okNext(&calls, "ok")); err != nil {
				t.Fatal(err)
			}
			if !tc.kept {
				if ok {
					t.Fatalf("the record was kept: %+v", rec)
				}
				if calls != 1 {
					t.Fatalf("retry: next called %d times, want it forwarded", calls)
				}
				return
			}
			if !ok || rec.State != StateCompleted || !rec.Response.NotStored || rec.Response.Status != tc.status {
				t.Fatalf("record %+v (found %v), want completed, not stored, status %d", rec, ok, tc.status)
			}
			if calls != 0 || retry.Code != http.StatusConflict || !strings.Contains(retry.Body.String(), CodeResponseNotStored) ||
				retry.Header().Get("x-should-retry") != "false" {
				t.Fatalf("retry: next called %d times, answer %d %s %v; want 409 %s, x-should-retry false",
					calls, retry.Code, retry.Body, retry.Header(), CodeResponseNotStored)
			}
		})
	}
}

// Through a real server, http.ErrAbortHandler still aborts the connection.
func TestAbortHandlerThroughServer(t *testing.T) {
	var calls atomic.Int64
	m := NewMemoryStore()
	t.Cleanup(func() { _ = m.Close() })
	h, err := New(Config{Store: m})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(h.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) == 1 {
			panic(http.ErrAbortHandler)
		}
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, "second")
	})))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.Start()
	t.Cleanup(srv.Close)
	s := &stack{front: srv, client: srv.Client()}
	if r := s.send(t.Context(), createBody, withKey("k-abort")); r.err == nil {
		t.Fatalf("the aborted request got a response: %d %s", r.status, r.body)
	}
	r := s.post(t, createBody, withKey("k-abort"))
	wantForwarded(t, r, http.StatusOK)
	if string(r.body) != "second" || calls.Load() != 2 {
		t.Fatalf("retry got %q after %d calls, want it forwarded", r.body, calls.Load())
	}
}

// A 2xx too large to keep goes to the client whole, and completes the
// record without its body: a retry, and a duplicate waiting for it, are told
// the request succeeded, and nothing runs twice.
func TestResponseOverMaxResponse(t *testing.T) {
	const limit = 32
	chunk := strings.Repeat("0123456789", 4) // 40 bytes: one chunk already exceeds the limit
	entered, release := make(chan struct{}, 1), make(chan struct{})
	s := newStack(t, Config{MaxResponse: limit}, func(w http.ResponseWriter, r *http.Request, n int64) {
		w.Header().Set("Content-Type", "text/plain")
		if r.URL.Path == "/small" {
			fmt.Fprintf(w, "%0*d", limit, n) // exactly the limit: stored
			return
		}
		entered <- struct{}{}
		<-release
		for i := range 5 {
			fmt.Fprintf(w, "%d:%s;", i, chunk)
		}
	})
	var want strings.Builder
	for i := range 5 {
		fmt.Fprintf(&want, "%d:%s;", i, chunk)
	}
	first := make(chan result, 1)
	go func() { first <- s.send(context.Background(), createBody, withKey("k-large")) }()
	recv(t, entered, "the owner upstream")
	waiters := make(chan result, 3)
	for range 3 {
		go func() { waiters <- s.send(context.Background(), createBody, withKey("k-large")) }()
	}
	time.Sleep(50 * time.Millisecond) // let the duplicates start waiting
	close(release)
	r := recv(t, first, "the owner's answer")
	wantForwarded(t, r, http.StatusOK)
	if string(r.body) != want.String() {
		t.Fatalf("client got %d bytes %q, want all %d in order", len(r.body), r.body, want.Len())
	}
	for i := range 3 {
		d := recv(t, waiters, fmt.Sprintf("waiting duplicate %d", i))
		wantError(t, d, http.StatusConflict, CodeResponseNotStored)
		wantHeader(t, d, "x-should-retry", "false")
	}
	retry := s.post(t, createBody, withKey("k-large"))
	msg := wantError(t, retry, http.StatusConflict, CodeResponseNotStored)
	if !strings.Contains(msg, "already succeeded (status 200)") {
		t.Errorf("message %q does not say the first request succeeded", msg)
	}
	s.up.wantCalls(t, 1)
	rec, ok := getRecord(t, s.store, s.ns(), "", "k-large")
	if !ok || rec.State != StateCompleted || !rec.Response.NotStored || len(rec.Response.Body) != 0 {
		t.Fatalf("record %+v (found %v), want completed without a body", rec, ok)
	}
	wantError(t, s.post(t, `{"other":1}`, withKey("k-large")), http.StatusConflict, CodeKeyReused)

	small := s.post(t, createBody, withKey("k-small"), withPath("/small"))
	wantForwarded(t, small, http.StatusOK)
	if len(small.body) != limit {
		t.Fatalf("small body is %d bytes, want %d", len(small.body), limit)
	}
	wantReplayOf(t, s.post(t, createBody, withKey("k-small"), withPath("/small")), small)
}

func TestScopesAreIndependent(t *testing.T) {
	s := newStack(t, Config{}, nil)
	a := s.post(t, createBody, withKey("shared"), withAuth("Bearer sk-tenant-a"))
	wantForwarded(t, a, http.StatusOK)
	other := strings.Replace(createBody, "file-abc", "file-b", 1)
	b := s.post(t, other, withKey("shared"), withAuth("Bearer sk-tenant-b"))
	wantForwarded(t, b, http.StatusOK)
	anon := s.post(t, createBody, withKey("shared"))
	wantForwarded(t, anon, http.StatusOK)
	s.up.wantCalls(t, 3)
	if bytes.Equal(a.body, b.body) || bytes.Equal(a.body, anon.body) {
		t.Fatal("different tenants got the same response")
	}
	wantReplayOf(t, s.post(t, createBody, withKey("shared"), withAuth("Bearer sk-tenant-a")), a)
	wantReplayOf(t, s.post(t, other, withKey("shared"), withAuth("Bearer sk-tenant-b")), b)
	wantReplayOf(t, s.post(t, createBody, withKey("shared")), anon)
	wantError(t, s.post(t, createBody, withKey("shared"), withAuth("Bearer sk-tenant-b")), http.StatusConflict, CodeKeyReused)
	s.up.wantCalls(t, 3)
}

func TestCustomScope(t *testing.T) {
	s := newStack(t, Config{Scope: func(r *http.Request) string { return r.Header.Get("X-Tenant") }}, nil)
	tenant := func(v string) reqOpt { return func(r *http.Request) { r.Header.Set("X-Tenant", v) } }
	first := s.post(t, createBody, withKey("k"), tenant("t1"), withAuth("Bearer one"))
	wantForwarded(t, first, http.StatusOK)
	// Same tenant, other credential: the scope is the tenant, so this replays.
	wantReplayOf(t, s.post(t, createBody, withKey("k"), tenant("t1"), withAuth("Bearer two")), first)
	wantForwarded(t, s.post(t, createBody, withKey("k"), tenant("t2")), http.StatusOK)
	s.up.wantCalls(t, 2)
}

// ---------------------------------------------------------------------------
// In-flight duplicates, leases, concurrency.

func TestInUseWhileOwnerUpstream(t *testing.T) {
	g := newGate()
	s := newStack(t, Config{Wait: NoWait}, g.respond)
	t.Cleanup(g.open)
	owner := make(chan result, 1)
	go func() { owner <- s.send(context.Background(), createBody, withKey("k-busy")) }()
	waitClosed(t, g.entered, "the owner to reach upstream")
	woken, unsubscribe := s.h.waiters.subscribe(NewRecordKey(s.ns(), "", "k-busy"))
	defer unsubscribe()

	dup := s.post(t, createBody, withKey("k-busy"))
	wantError(t, dup, http.StatusConflict, CodeKeyInUse)
	wantHeader(t, dup, "Retry-After", "1")
	wantHeader(t, dup, "retry-after-ms", "1000")
	wantHeader(t, dup, "x-should-retry", "true")
	// Other parameters under an in-flight key: reuse, not in use.
	reuse := s.post(t, `{"other":true}`, withKey("k-busy"))
	wantError(t, reuse, http.StatusConflict, CodeKeyReused)
	wantHeader(t, reuse, "x-should-retry", "false")

	g.open()
	first := recv(t, owner, "the owner's response")
	if first.err != nil {
		t.Fatal(first.err)
	}
	wantForwarded(t, first, http.StatusOK)
	// Local waiters are woken when the owner finishes, not at their next poll.
	waitClosed(t, woken, "the owner to wake local waiters")
	wantReplayOf(t, s.post(t, createBody, withKey("k-busy")), first)
	s.up.wantCalls(t, 1)
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

func observe(s Store, want int) *inFlightSpy {
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

const concurrent = 50

func TestConcurrentDuplicatesWait(t *testing.T) {
	testConcurrentDuplicatesWait(t, openMemoryStore(t))
}

// testConcurrentDuplicatesWait sends concurrent duplicates with Wait on
// base: one upstream call, every other client a replay of the same body.
func testConcurrentDuplicatesWait(t *testing.T, base Store) {
	store := observe(base, concurrent-1)
	g := newGate()
	s := newStack(t, Config{Store: store, Wait: testTimeout}, g.respond)
	t.Cleanup(g.open)
	results := make(chan result, concurrent)
	for range concurrent {
		go func() { results <- s.send(context.Background(), createBody, withKey("k-herd")) }()
	}
	waitClosed(t, g.entered, "one request to reach upstream")
	waitClosed(t, store.reached, fmt.Sprintf("%d duplicates to find the key in flight", concurrent-1))
	g.open()

	var bodies [][]byte
	replays := 0
	for range concurrent {
		r := recv(t, results, "a response")
		if r.err != nil {
			t.Fatal(r.err)
		}
		wantStatus(t, r, http.StatusOK)
		if r.replayed() {
			replays++
		}
		bodies = append(bodies, r.body)
	}
	s.up.wantCalls(t, 1)
	if replays != concurrent-1 {
		t.Fatalf("%d replays, want %d", replays, concurrent-1)
	}
	for i, b := range bodies {
		if !bytes.Equal(b, bodies[0]) {
			t.Fatalf("body %d is %s, want %s like all others", i, b, bodies[0])
		}
	}
	s.h.waiters.mu.Lock()
	defer s.h.waiters.mu.Unlock()
	if n := len(s.h.waiters.m); n != 0 {
		t.Fatalf("%d wait entries left behind", n)
	}
}

func TestWaitList(t *testing.T) {
	var l waitList
	k1, k2 := RecordKey{1}, RecordKey{2}
	a, unsubA := l.subscribe(k1)
	b, unsubB := l.subscribe(k1)
	c, unsubC := l.subscribe(k2)
	l.wake(k1)
	for name, ch := range map[string]<-chan struct{}{"a": a, "b": b} {
		select {
		case <-ch:
		default:
			t.Fatalf("waiter %s of the woken key is still blocked", name)
		}
	}
	select {
	case <-c:
		t.Fatal("waking one key woke another")
	default:
	}
	// A subscription after the wake waits for the next one.
	d, unsubD := l.subscribe(k1)
	select {
	case <-d:
		t.Fatal("a new waiter saw an old wake")
	default:
	}
	unsubA()
	unsubB()
	unsubC()
	unsubD()
	if len(l.m) != 0 {
		t.Fatalf("%d entries left after every waiter unsubscribed", len(l.m))
	}
	l.wake(k2) // nobody waiting: a no-op
}

func TestConcurrentDuplicatesNoWait(t *testing.T) {
	g := newGate()
	s := newStack(t, Config{Store: openMemoryStore(t), Wait: NoWait}, g.respond)
	t.Cleanup(g.open)
	results := make(chan result, concurrent)
	for range concurrent {
		go func() { results <- s.send(context.Background(), createBody, withKey("k-herd")) }()
	}
	waitClosed(t, g.entered, "one request to reach upstream")
	// The owner is held upstream, so every other request answers first.
	for i := range concurrent - 1 {
		r := recv(t, results, fmt.Sprintf("in-use answer %d of %d (is there a second owner?)", i+1, concurrent-1))
		if r.err != nil {
			t.Fatal(r.err)
		}
		wantError(t, r, http.StatusConflict, CodeKeyInUse)
		wantHeader(t, r, "x-should-retry", "true")
	}
	g.open()
	first := recv(t, results, "the owner's response")
	if first.err != nil {
		t.Fatal(first.err)
	}
	wantForwarded(t, first, http.StatusOK)

	retries := make(chan result, concurrent-1)
	for range concurrent - 1 {
		go func() { retries <- s.send(context.Background(), createBody, withKey("k-herd")) }()
	}
	for range concurrent - 1 {
		r := recv(t, retries, "a retry")
		if r.err != nil {
			t.Fatal(r.err)
		}
		wantReplayOf(t, r, first)
	}
	s.up.wantCalls(t, 1)
}

// A live owner renews its lease, so a duplicate arriving long after the
// first lease would have ended still finds the key in use.
func TestLeaseRenewal(t *testing.T) {
	const lease = 300 * time.Millisecond
	g := newGate()
	s := newStack(t, Config{Lease: lease, Wait: NoWait}, g.respond)
	t.Cleanup(g.open)
	owner := make(chan result, 1)
	go func() { owner <- s.send(context.Background(), createBody, withKey("k-long")) }()
	waitClosed(t, g.entered, "the owner to reach upstream")
	start := time.Now()

	for _, at := range []time.Duration{2 * lease, 3 * lease} { // upstream held about 1s
		time.Sleep(time.Until(start.Add(at))) // lease expiry is the point: real time must pass
		rec, ok := getRecord(t, s.store, s.ns(), "", "k-long")
		if !ok || rec.State != StateInFlight || !rec.LeaseUntil.After(time.Now()) {
			t.Fatalf("%v after begin: record %+v (live %v), want a renewed in-flight lease", at, rec, ok)
		}
		wantError(t, s.post(t, createBody, withKey("k-long")), http.StatusConflict, CodeKeyInUse)
	}
	time.Sleep(time.Until(start.Add(time.Second)))
	g.open()
	first := recv(t, owner, "the owner's response")
	if first.err != nil {
		t.Fatal(first.err)
	}
	wantForwarded(t, first, http.StatusOK)
	wantReplayOf(t, s.post(t, createBody, withKey("k-long")), first)
	s.up.wantCalls(t, 1)
}

// A dead owner's lease runs out and the next request takes the key over.
func TestLeaseTakeover(t *testing.T) {
	const lease = 250 * time.Millisecond
	for _, wait := range []time.Duration{NoWait, testTimeout} {
		t.Run("wait="+wait.String(), func(t *testing.T) {
			s := newStack(t, Config{Wait: wait}, nil)
			parsed, err := ParseJSON([]byte(createBody), DefaultKeyField, nil)
			if err != nil {
				t.Fatal(err)
			}
			fp := NewFingerprint(http.MethodPost, batchesPath, "", bodyJSON, parsed.Canonical)
			rk := NewRecordKey(s.ns(), "Bearer sk-dead", "k-orphan")
			dead := NewOwnerToken()
			rec, owned, err := s.store.Begin(t.Context(), rk, fp, dead, lease)
			if err != nil || !owned {
				t.Fatalf("Begin for the dead owner = %v, %v", owned, err)
			}
			auth := withAuth("Bearer sk-dead")

			if wait == NoWait {
				wantError(t, s.post(t, createBody, withKey("k-orphan"), auth), http.StatusConflict, CodeKeyInUse)
				s.up.wantCalls(t, 0)
				time.Sleep(time.Until(rec.LeaseUntil) + 20*time.Millisecond) // the lease must really expire
			}
			r := s.post(t, createBody, withKey("k-orphan"), auth)
			wantForwarded(t, r, http.StatusOK)
			if now := time.Now(); now.Before(rec.LeaseUntil) {
				t.Fatalf("forwarded at %v, before the dead owner's lease ended at %v", now, rec.LeaseUntil)
			}
			s.up.wantCalls(t, 1)
			if err := s.store.Complete(t.Context(), rk, dead, Response{Status: 200}, time.Hour); !errors.Is(err, ErrNotOwner) {
				t.Fatalf("the dead owner's Complete = %v, want ErrNotOwner", err)
			}
			wantReplayOf(t, s.post(t, createBody, withKey("k-orphan"), auth), r)
			s.up.wantCalls(t, 1)
		})
	}
}

// A client that gives up while its request is upstream must not cancel the
// create: it finishes, is stored, and the client's retry replays it.
func TestClientDisconnectDoesNotCancelUpstream(t *testing.T) {
	m := NewMemoryStore()
	t.Cleanup(func() { _ = m.Close() })
	h, err := New(Config{Store: m})
	if err != nil {
		t.Fatal(err)
	}
	entered, release := make(chan struct{}), make(chan struct{})
	var releaseOnce sync.Once
	open := func() { releaseOnce.Do(func() { close(release) }) }
	var upstreamCanceled atomic.Bool
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request, n int64) {
		if n == 1 {
			close(entered)
			select {
			case <-release:
			case <-r.Context().Done():
				upstreamCanceled.Store(true)
				return
			}
		}
		writeBatch(w, http.StatusOK, n)
	})
	proxy := newProxy(t, up.srv.URL)
	var nextCtx atomic.Pointer[context.Context]
	frontCanceled, frontDone := make(chan struct{}), make(chan struct{}, 2)
	var frontCalls atomic.Int64
	engine := h.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		nextCtx.CompareAndSwap(nil, &ctx)
		proxy.ServeHTTP(w, r)
	}))
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if frontCalls.Add(1) == 1 {
			go func() { <-r.Context().Done(); close(frontCanceled) }()
		}
		engine.ServeHTTP(w, r)
		frontDone <- struct{}{}
	}))
	t.Cleanup(front.Close)
	t.Cleanup(open)
	s := &stack{up: up, h: h, store: m, front: front, client: front.Client()}

	ctx, cancel := context.WithCancel(t.Context())
	gone := make(chan result, 1)
	go func() { gone <- s.send(ctx, createBody, withKey("k-gone")) }()
	waitClosed(t, entered, "the owner to reach upstream")
	cancel()
	if r := recv(t, gone, "the canceled client"); r.err == nil {
		t.Fatalf("the canceled client got a response: %d", r.status)
	}
	waitClosed(t, frontCanceled, "the front server to see the client leave")
	// Cancellation reaches derived contexts synchronously: had next been
	// given the client's context, it would be done by now.
	if err := (*nextCtx.Load()).Err(); err != nil {
		t.Fatalf("the upstream request's context ended with the client: %v", err)
	}
	open()
	recv(t, frontDone, "the owner to finish")
	if upstreamCanceled.Load() {
		t.Fatal("the upstream saw its request canceled")
	}
	rec, ok := getRecord(t, m, s.ns(), "", "k-gone")
	if !ok || rec.State != StateCompleted || !bytes.Contains(rec.Response.Body, []byte(`"call":1`)) {
		t.Fatalf("record after the owner finished: %+v (found %v), want the completed response", rec, ok)
	}
	retry := s.post(t, createBody, withKey("k-gone"))
	wantStatus(t, retry, http.StatusOK)
	if !retry.replayed() || !bytes.Equal(retry.body, rec.Response.Body) {
		t.Fatalf("retry got %s (replayed %v), want a replay of %s", retry.body, retry.replayed(), rec.Response.Body)
	}
	up.wantCalls(t, 1)
}

// A 103 Early Hints from upstream reaches the client at once; the final
// response is what is stored.
func TestEarlyHintsForwarded(t *testing.T) {
	s := newStack(t, Config{}, func(w http.ResponseWriter, r *http.Request, n int64) {
		w.Header().Set("Link", "</batch.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		w.Header().Del("Link")
		writeBatch(w, http.StatusCreated, n)
	})
	var hints []int
	var mu sync.Mutex
	ctx := httptrace.WithClientTrace(t.Context(), &httptrace.ClientTrace{
		Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
			mu.Lock()
			defer mu.Unlock()
			if h.Get("Link") != "" {
				hints = append(hints, code)
			}
			return nil
		},
	})
	first := s.send(ctx, createBody, withKey("k-hints"))
	if first.err != nil {
		t.Fatal(first.err)
	}
	wantForwarded(t, first, http.StatusCreated)
	mu.Lock()
	if !slices.Equal(hints, []int{http.StatusEarlyHints}) {
		t.Fatalf("client saw informational responses %v, want one 103 with its Link", hints)
	}
	mu.Unlock()
	wantReplayOf(t, s.post(t, createBody, withKey("k-hints")), first)
	s.up.wantCalls(t, 1)
}

func TestNewRejectsBadConfig(t *testing.T) {
	m := NewMemoryStore()
	t.Cleanup(func() { _ = m.Close() })
	for name, cfg := range map[string]Config{
		"no store":        {},
		"ttl":             {Store: m, TTL: time.Millisecond},
		"lock timeout":    {Store: m, Lease: 10 * time.Millisecond},
		"conflict status": {Store: m, ConflictStatus: http.StatusBadRequest},
		"lower method":    {Store: m, Methods: []string{"post"}},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("%s: New accepted %+v", name, cfg)
		}
	}
	h, err := New(Config{Store: m})
	if err != nil {
		t.Fatal(err)
	}
	c := h.Config()
	if c.KeyHeader != DefaultKeyHeader || c.KeyField != DefaultKeyField || c.TTL != DefaultTTL ||
		c.Lease != DefaultLease || c.MaxBody != DefaultMaxBody || c.MaxResponse != DefaultMaxResponse ||
		c.ConflictStatus != http.StatusConflict || !slices.Equal(c.Methods, []string{http.MethodPost}) {
		t.Fatalf("defaults not filled: %+v", c)
	}
}
