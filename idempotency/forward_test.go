package idempotency

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/textproto"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
)

// What the owner sends upstream: the bytes as sent, unless the key field
// had to come out of an encoded body; never Expect; always asking for the
// identity coding. A request without a key keeps its headers.
func TestForwardedRequest(t *testing.T) {
	s := newStack(t, Config{}, nil)
	const batch = `{"input_file_id":"file-1","endpoint":"/v1/chat/completions","completion_window":"24h"}`
	gz := encoded("gzip", []byte(batch))
	keyedGz := encoded("gzip", []byte(`{"idempotency_key":"k-field","input_file_id":"file-1"}`))
	for _, tc := range []struct {
		name         string
		body         []byte
		opts         []reqOpt
		wantBody     []byte
		wantEncoding string
		wantAccept   string
	}{
		{"header key, gzip body", gz, []reqOpt{withKey("k-gz"), withHeader("Content-Encoding", "gzip")}, gz, "gzip", "identity"},
		{"body key, gzip body", keyedGz, []reqOpt{withHeader("Content-Encoding", "gzip")}, []byte(`{"input_file_id":"file-1"}`), "", "identity"},
		{"null key with header key", []byte(`{"a":1,"idempotency_key":null}`), []reqOpt{withKey("k-null")}, []byte(`{"a":1}`), "", "identity"},
		{"null key, no key", []byte(`{"a":1,"idempotency_key":null}`), nil, []byte(`{"a":1}`), "", "gzip, br"},
		{"expect continue", []byte(batch), []reqOpt{withKey("k-expect"), withHeader("Expect", "100-continue")}, []byte(batch), "", "identity"},
		{"no key", []byte(batch), nil, []byte(batch), "", "gzip, br"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(s.up.requests())
			opts := append([]reqOpt{withHeader("Accept-Encoding", "gzip, br")}, tc.opts...)
			r := s.post(t, bytes.NewReader(tc.body), opts...)
			wantForwarded(t, r, http.StatusOK)
			seen := s.up.requests()
			if len(seen) != before+1 {
				t.Fatalf("upstream saw %d requests, want 1", len(seen)-before)
			}
			got := seen[len(seen)-1]
			if !bytes.Equal(got.Body, tc.wantBody) {
				t.Errorf("upstream body %q, want %q", got.Body, tc.wantBody)
			}
			if got.ContentLength != int64(len(tc.wantBody)) || got.ContentLengthHeader != strconv.Itoa(len(tc.wantBody)) {
				t.Errorf("upstream Content-Length %d (header %q), want %d", got.ContentLength, got.ContentLengthHeader, len(tc.wantBody))
			}
			if e := got.Header.Get("Content-Encoding"); e != tc.wantEncoding {
				t.Errorf("upstream Content-Encoding %q, want %q", e, tc.wantEncoding)
			}
			if a := got.Header.Get("Accept-Encoding"); a != tc.wantAccept {
				t.Errorf("upstream Accept-Encoding %q, want %q", a, tc.wantAccept)
			}
			if e := got.Header.Get("Expect"); e != "" {
				t.Errorf("upstream got Expect: %s for a body that was already read", e)
			}
		})
	}
	// A gzip retry of the plain create, and a plain retry of the gzip one, replay.
	first := s.post(t, batch, withKey("k-either"))
	wantReplayOf(t, s.post(t, bytes.NewReader(gz), withKey("k-either"), withHeader("Content-Encoding", "gzip")), first)
	gzFirst := s.post(t, bytes.NewReader(gz), withKey("k-gz-first"), withHeader("Content-Encoding", "gzip"))
	wantReplayOf(t, s.post(t, batch, withKey("k-gz-first")), gzFirst)
}

// The record keeps the identity coding whatever the upstream sends: an
// upstream that compresses anyway is decoded before the record is stored,
// and the first client gets what the retries get. One in a coding that
// cannot be decoded is passed on and not stored.
func TestStoredResponseIsIdentity(t *testing.T) {
	const batch = `{"id":"batch_gz","object":"batch","status":"validating"}`
	s := newStack(t, Config{}, func(w http.ResponseWriter, r *http.Request, n int64) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Vary", "Accept-Encoding")
		switch r.URL.Path {
		case "/gzip":
			w.Header().Set("Content-Encoding", "gzip")
			_, _ = w.Write(encoded("gzip", []byte(batch)))
		case "/br":
			w.Header().Set("Content-Encoding", "br")
			_, _ = w.Write([]byte("\x1b\x00opaque"))
		case "/broken":
			w.Header().Set("Content-Encoding", "gzip")
			_, _ = w.Write([]byte("not gzip"))
		case "/empty":
			w.Header().Set("Content-Encoding", "gzip")
			w.WriteHeader(http.StatusNoContent)
		case "/same-length":
			w.Header().Set("Content-Encoding", "gzip")
			_, _ = w.Write(encoded("gzip", sameLength))
		}
	})
	identity := withHeader("Accept-Encoding", "identity")
	first := s.post(t, createBody, withKey("k-gz"), withPath("/gzip"), withHeader("Accept-Encoding", "gzip"))
	wantForwarded(t, first, http.StatusOK)
	if string(first.body) != batch || first.header.Get("Content-Encoding") != "" {
		t.Fatalf("first client got %q with Content-Encoding %q, want the identity body", first.body, first.header.Get("Content-Encoding"))
	}
	for _, accept := range []string{"identity", "br", ""} {
		r := s.post(t, createBody, withKey("k-gz"), withPath("/gzip"), withHeader("Accept-Encoding", accept))
		wantReplayOf(t, r, first)
		if r.header.Get("Content-Encoding") != "" {
			t.Fatalf("replay to Accept-Encoding %q has Content-Encoding %q", accept, r.header.Get("Content-Encoding"))
		}
	}
	// Decoded to as many bytes as it had: still no Content-Encoding for the first client.
	r := s.post(t, createBody, withKey("k-same"), withPath("/same-length"), withHeader("Accept-Encoding", "gzip"))
	if !bytes.Equal(r.body, sameLength) || r.header.Get("Content-Encoding") != "" {
		t.Fatalf("first client got %d bytes with Content-Encoding %q, want the %d decoded bytes", len(r.body), r.header.Get("Content-Encoding"), len(sameLength))
	}
	// An empty 2xx has nothing to decode: it is kept and replays.
	empty := s.post(t, createBody, withKey("k-empty"), withPath("/empty"), identity)
	wantForwarded(t, empty, http.StatusNoContent)
	wantReplayOf(t, s.post(t, createBody, withKey("k-empty"), withPath("/empty"), identity), empty)
	for _, path := range []string{"/br", "/broken"} {
		r := s.post(t, createBody, withKey("k"+path), withPath(path), identity)
		wantForwarded(t, r, http.StatusOK)
		if r.header.Get("Content-Encoding") == "" {
			t.Fatalf("%s: the first client's response lost its coding", path)
		}
		wantError(t, s.post(t, createBody, withKey("k"+path), withPath(path), identity), http.StatusConflict, CodeResponseNotStored)
	}
	s.up.wantCalls(t, 5)
}

// sameLength is a body whose gzip form is exactly as long as itself.
var sameLength = func() []byte {
	b := make([]byte, 0, 512)
	for i := range 100 {
		b = append(b, byte(i*151+7)) // no repeats to compress
	}
	for len(encoded("gzip", b)) != len(b) {
		b = append(b, 0)
		if len(b) > 400 {
			panic("no body with a gzip form of its own length")
		}
	}
	return b
}()

// The stored response goes to the client with its own Content-Length, and
// the upstream's framing headers are not stored.
func TestStoredResponseFraming(t *testing.T) {
	h, store := newHandler(t, Config{})
	w := httptest.NewRecorder()
	err := h.Handle(w, jsonRequest(t, "k-frame", createBody), func(w http.ResponseWriter, r *http.Request) error {
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
	r := answerAlone(t, h, jsonRequest(t, "k-frame", createBody), "a completed key")
	if r.status != http.StatusCreated || string(r.body) != want || r.header.Get("Content-Length") != strconv.Itoa(len(want)) || !r.replayed() {
		t.Fatalf("replay %d %q headers %v", r.status, r.body, r.header)
	}
}

// A handler that acts and writes nothing has answered 200 with no body, as
// net/http sends it: that is a success, kept like any other.
func TestNothingWrittenIsStored(t *testing.T) {
	h, store := newHandler(t, Config{})
	calls := 0
	next := func(w http.ResponseWriter, r *http.Request) error { calls++; return nil }
	for range 2 {
		w := httptest.NewRecorder()
		if err := h.Handle(w, jsonRequest(t, "k-silent", createBody), next); err != nil {
			t.Fatal(err)
		}
		if w.Code != http.StatusOK || w.Body.Len() != 0 {
			t.Fatalf("answer %d %q, want 200 with no body", w.Code, w.Body)
		}
	}
	if calls != 1 {
		t.Fatalf("next ran %d times, want once", calls)
	}
	if rec, ok := getRecord(t, store, newRequestNS, "", "k-silent"); !ok || rec.State != StateCompleted || rec.Response.Status != http.StatusOK {
		t.Fatalf("record %+v (found %v), want a completed 200", rec, ok)
	}
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
