package idempotency

import (
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
)

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
				err = h.Handle(w, jsonRequest(t, "k-fail", createBody), func(w http.ResponseWriter, r *http.Request) error {
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
			if err := h.Handle(retry, jsonRequest(t, "k-fail", createBody), okNext(&calls, "ok")); err != nil {
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
	waitFor(t, "the decision", func() bool { d = append(d, obs.take()...); return len(d) > 0 })
	if len(d) != 1 || d[0].Outcome != OutcomeReleased {
		t.Fatalf("decisions %+v, want one released", d)
	}
	waitFor(t, "the hijacked record to be released", func() bool { _, ok := getRecord(t, s.store, s.ns(), "", "k-hijack"); return !ok })
	if d := obs.take(); len(d) != 0 {
		t.Fatalf("more decisions %+v, want one in all", d)
	}
}
