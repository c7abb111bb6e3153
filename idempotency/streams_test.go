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
	"sync"
	"testing"
	"time"
)

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
			resp := s.open(t, t.Context(), "k-stream")
			var whole bytes.Buffer
			rd := bufio.NewReader(io.TeeReader(resp.Body, &whole))
			for i := range 5 {
				line, err := rd.ReadString('\n')
				if err != nil || !strings.Contains(line, fmt.Sprintf(`"chunk":%d`, i)) {
					t.Fatalf("chunk %d: %q, %v", i, line, err)
				}
				_, _ = rd.ReadString('\n')
				if i < 4 {
					select { // reached only if chunk i arrived before the upstream ended
					case next <- struct{}{}:
					case <-time.After(testTimeout):
						t.Fatalf("the upstream stopped waiting after chunk %d", i)
					}
				}
			}
			_, _ = io.Copy(io.Discard, rd)
			resp.Body.Close()
			waitFor(t, "the stream's record", func() bool { _, ok := getRecord(t, s.store, s.ns(), "", "k-stream"); return ok })
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
	var firstOnce sync.Once
	rest := func() { firstOnce.Do(func() { close(first) }) }
	s := newStack(t, Config{}, func(w http.ResponseWriter, r *http.Request, n int64) {
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprintf(w, "data: 0\n\n")
		http.NewResponseController(w).Flush()
		<-first
		for i := 1; i < 3; i++ {
			fmt.Fprintf(w, "data: %d\n\n", i)
		}
	})
	t.Cleanup(rest)
	ctx, cancel := context.WithCancel(t.Context())
	resp := s.open(t, ctx, "k-left")
	line, _ := bufio.NewReader(resp.Body).ReadString('\n')
	if line != "data: 0\n" {
		t.Fatalf("first line %q", line)
	}
	cancel()
	resp.Body.Close()
	rest()
	waitFor(t, "the stream's record to complete", func() bool {
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

// A 2xx too large to keep goes to the client whole, and completes the
// record without its body: a retry, and a duplicate waiting for it, are told
// the request succeeded, and nothing runs twice.
func TestResponseOverMaxResponse(t *testing.T) {
	const limit = 32
	chunk := strings.Repeat("0123456789", 4) // 40 bytes: one chunk already exceeds the limit
	entered, release := make(chan struct{}, 8), make(chan struct{})
	var releaseOnce sync.Once
	open := func() { releaseOnce.Do(func() { close(release) }) }
	store := spyInFlight(openMemoryStore(t), 3)
	s := newStack(t, Config{Store: store, MaxResponse: limit}, func(w http.ResponseWriter, r *http.Request, n int64) {
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
	t.Cleanup(open)
	var want strings.Builder
	for i := range 5 {
		fmt.Fprintf(&want, "%d:%s;", i, chunk)
	}
	first := make(chan result, 1)
	go func() { first <- s.send(t.Context(), createBody, withKey("k-large")) }()
	recv(t, entered, "the owner upstream")
	waiters := make(chan result, 3)
	for range 3 {
		go func() { waiters <- s.send(t.Context(), createBody, withKey("k-large")) }()
	}
	select {
	case <-store.reached:
	case <-entered:
		t.Fatal("a duplicate reached the upstream while the owner was there: a second owner")
	case <-time.After(testTimeout):
		t.Fatal("timed out waiting for 3 duplicates to find the key in flight")
	}
	open()
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
