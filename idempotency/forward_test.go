package idempotency

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

func withHeader(name, value string) reqOpt {
	return func(r *http.Request) { r.Header.Set(name, value) }
}

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

// A flushed response reaches the client as it comes; when it ends, the
// record is completed with the whole stream if it fits max_response, and
// without it if not. Either way the upstream runs once.
func TestStreamedResponse(t *testing.T) {
	for _, tc := range []struct {
		name        string
		maxResponse int64
		eventStream bool
		kept        bool
	}{
		{"event stream kept", 1 << 20, true, true},
		{"flushed JSON kept", 1 << 20, false, true},
		{"event stream over max_response", 64, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			next := make(chan struct{})
			obs := &observed{}
			s := newStack(t, Config{MaxResponse: tc.maxResponse, Observe: obs.observe}, func(w http.ResponseWriter, r *http.Request, n int64) {
				if tc.eventStream {
					w.Header().Set("Content-Type", "text/event-stream")
				} else {
					w.Header().Set("Content-Type", "application/json")
				}
				for i := range 5 {
					fmt.Fprintf(w, "data: {\"chunk\":%d,\"call\":%d,\"pad\":%q}\n\n", i, n, strings.Repeat("x", 20))
					http.NewResponseController(w).Flush()
					if i < 4 && n == 1 {
						select { // the next chunk only once the client has this one
						case <-next:
						case <-time.After(testTimeout):
							return
						}
					}
				}
			})
			req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, s.front.URL+batchesPath, strings.NewReader(createBody))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Idempotency-Key", "k-stream")
			resp, err := s.client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var whole bytes.Buffer
			rd := bufio.NewReader(io.TeeReader(resp.Body, &whole))
			for i := range 5 {
				line, err := rd.ReadString('\n')
				if err != nil || !strings.Contains(line, fmt.Sprintf(`"chunk":%d`, i)) {
					t.Fatalf("chunk %d: %q, %v", i, line, err)
				}
				_, _ = rd.ReadString('\n')
				if i < 4 {
					next <- struct{}{} // reached only if chunk i arrived before the upstream ended
				}
			}
			_, _ = io.Copy(io.Discard, rd)
			resp.Body.Close()
			waitFor(t, func() bool { _, ok := getRecord(t, s.store, s.ns(), "", "k-stream"); return ok })
			rec, _ := getRecord(t, s.store, s.ns(), "", "k-stream")
			if rec.State != StateCompleted || rec.Response.NotStored == tc.kept {
				t.Fatalf("record %+v, want completed, kept %v", rec, tc.kept)
			}
			if d := obs.take(); len(d) != 1 || d[0].Outcome != OutcomeStreamed {
				t.Fatalf("decisions %+v, want one streamed", d)
			}
			retry := s.post(t, createBody, withKey("k-stream"))
			if tc.kept {
				wantStatus(t, retry, http.StatusOK)
				if !retry.replayed() || !bytes.Equal(retry.body, whole.Bytes()) {
					t.Fatalf("replay %q (replayed %v), want the whole stream %q", retry.body, retry.replayed(), whole.Bytes())
				}
				wantHeader(t, retry, "Content-Length", strconv.Itoa(whole.Len()))
			} else {
				wantError(t, retry, http.StatusConflict, CodeResponseNotStored)
			}
			s.up.wantCalls(t, 1)
		})
	}
}

// A client that leaves mid-stream does not stop the stream's record: the
// upstream runs to its end and the retry replays it.
func TestStreamClientLeaves(t *testing.T) {
	first := make(chan struct{})
	s := newStack(t, Config{}, func(w http.ResponseWriter, r *http.Request, n int64) {
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprintf(w, "data: 0\n\n")
		http.NewResponseController(w).Flush()
		<-first
		for i := 1; i < 3; i++ {
			fmt.Fprintf(w, "data: %d\n\n", i)
		}
	})
	ctx, cancel := context.WithCancel(t.Context())
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, s.front.URL+batchesPath, strings.NewReader(createBody))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", "k-left")
	resp, err := s.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	line, _ := bufio.NewReader(resp.Body).ReadString('\n')
	if line != "data: 0\n" {
		t.Fatalf("first line %q", line)
	}
	cancel()
	resp.Body.Close()
	close(first)
	waitFor(t, func() bool {
		rec, ok := getRecord(t, s.store, s.ns(), "", "k-left")
		return ok && rec.State == StateCompleted
	})
	retry := s.post(t, createBody, withKey("k-left"))
	wantStatus(t, retry, http.StatusOK)
	if string(retry.body) != "data: 0\n\ndata: 1\n\ndata: 2\n\n" {
		t.Fatalf("replay %q, want the whole stream", retry.body)
	}
	s.up.wantCalls(t, 1)
}

// frontCoder stands for Caddy's encode in front of the handler: it writes
// its Content-Encoding into the header map it shares with the handler when
// the response starts, and passes the bytes on.
type frontCoder struct{ http.ResponseWriter }

func (f frontCoder) WriteHeader(status int) {
	f.Header().Set("Content-Encoding", "x-front")
	f.Header().Del("Content-Length")
	f.ResponseWriter.WriteHeader(status)
}

func (f frontCoder) Flush() { http.NewResponseController(f.ResponseWriter).Flush() }

// A stream stores the upstream's header as it went out, not what a handler
// in front wrote into the shared map when the stream started.
func TestStreamBehindFrontCoder(t *testing.T) {
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request, n int64) {
		w.Header().Set("Content-Type", "text/event-stream")
		for i := range 3 {
			fmt.Fprintf(w, "data: %d\n\n", i)
			http.NewResponseController(w).Flush()
		}
	})
	h, store := newHandler(t, Config{})
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.Middleware(newProxy(t, up.srv.URL)).ServeHTTP(frontCoder{w}, r)
	}))
	t.Cleanup(front.Close)
	s := &stack{up: up, h: h, store: store, front: front, client: front.Client()}
	first := s.post(t, createBody, withKey("k-front"), withHeader("Accept-Encoding", "gzip"))
	wantForwarded(t, first, http.StatusOK)
	rec, ok := getRecord(t, store, s.ns(), "", "k-front")
	if !ok || rec.State != StateCompleted || rec.Response.NotStored || rec.Response.Header.Get("Content-Encoding") != "" {
		t.Fatalf("record %+v (found %v), want the stream kept with the upstream's own header", rec, ok)
	}
	if string(rec.Response.Body) != "data: 0\n\ndata: 1\n\ndata: 2\n\n" {
		t.Fatalf("stored %q, want the whole stream", rec.Response.Body)
	}
	retry := s.post(t, createBody, withKey("k-front"))
	wantStatus(t, retry, http.StatusOK)
	if !retry.replayed() || !bytes.Equal(retry.body, first.body) {
		t.Fatalf("replay %q, want %q", retry.body, first.body)
	}
	up.wantCalls(t, 1)
}

// A handler that acts and writes nothing has answered 200 with no body, as
// net/http sends it: that is a success, kept like any other.
func TestNothingWrittenIsStored(t *testing.T) {
	h, store := newHandler(t, Config{})
	calls := 0
	next := func(w http.ResponseWriter, r *http.Request) error { calls++; return nil }
	for range 2 {
		w := httptest.NewRecorder()
		if err := h.Handle(w, jsonRequest("k-silent", createBody), next); err != nil {
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

// A connection taken over (an upgrade) is not the recorder's to keep: the
// record is released, never stored as the empty 200 nothing was written as.
func TestHijackedIsReleased(t *testing.T) {
	obs := &observed{}
	s := newStack(t, Config{Observe: obs.observe}, nil)
	h := s.h
	front := httptest.NewServer(h.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, rw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Errorf("Hijack through the recorder: %v", err)
			return
		}
		defer conn.Close()
		_, _ = rw.WriteString("HTTP/1.1 201 Created\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
		_ = rw.Flush()
	})))
	t.Cleanup(front.Close)
	s.front, s.client = front, front.Client()
	r := s.post(t, createBody, withKey("k-hijack"))
	if r.status != http.StatusCreated || string(r.body) != "ok" {
		t.Fatalf("answer %d %q, want the hijacked 201", r.status, r.body)
	}
	// The client has its answer before the handler returns: wait for the
	// record to be settled.
	var d []Decision
	waitFor(t, func() bool { d = append(d, obs.take()...); return len(d) > 0 })
	if len(d) != 1 || d[0].Outcome != OutcomeReleased {
		t.Fatalf("decisions %+v, want one released", d)
	}
	waitFor(t, func() bool { _, ok := getRecord(t, s.store, s.ns(), "", "k-hijack"); return !ok })
	if d := obs.take(); len(d) != 0 {
		t.Fatalf("more decisions %+v, want one in all", d)
	}
}

// A stream completed early (it outgrew max_response) stops renewing its
// lease: no "lease lost" warning while the rest of it goes out.
func TestCompletedStreamStopsRenewing(t *testing.T) {
	core, logs := observer.New(zapcore.WarnLevel)
	s := newStack(t, Config{MaxResponse: 10, Lease: 150 * time.Millisecond, Logger: zap.New(core)},
		func(w http.ResponseWriter, r *http.Request, n int64) {
			w.Header().Set("Content-Type", "text/event-stream")
			for i := range 8 {
				fmt.Fprintf(w, "data: %d, more than ten bytes\n\n", i)
				http.NewResponseController(w).Flush()
				time.Sleep(60 * time.Millisecond) // the stream outlives several renewals
			}
		})
	wantStatus(t, s.post(t, createBody, withKey("k-long-stream")), http.StatusOK)
	for _, e := range logs.All() {
		t.Errorf("logged %s %q %v", e.Level, e.Message, e.ContextMap())
	}
	wantError(t, s.post(t, createBody, withKey("k-long-stream")), http.StatusConflict, CodeResponseNotStored)
}
