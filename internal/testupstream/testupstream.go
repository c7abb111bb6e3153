// Package testupstream is an HTTP upstream for end-to-end tests: it records
// every request exactly as it arrived (request line, headers, body bytes)
// and answers through a function the test gives, so a test can check what a
// proxy in front of it forwarded, and how often.
package testupstream

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
)

// Request is one request as the upstream received it.
type Request struct {
	Method        string
	RequestURI    string // the request line's target: the escaped path and the raw query as sent
	Host          string
	Header        http.Header
	Body          []byte // the body bytes as they arrived, still in their Content-Encoding
	ContentLength int64
}

// Handler answers the n-th request (1-based). r.Body holds the recorded
// bytes, so it may be read again.
type Handler func(w http.ResponseWriter, r *http.Request, n int)

// Server is a recording upstream on a loopback port.
type Server struct {
	srv    *httptest.Server
	handle Handler

	mu   sync.Mutex
	reqs []Request
}

// Start runs an upstream answering with h (Echo when nil); tb's cleanup
// closes it. A test whose handler blocks must release it in a cleanup
// registered after Start, so that it runs before the close waits for it.
func Start(tb testing.TB, h Handler) *Server {
	tb.Helper()
	if h == nil {
		h = Echo("obj")
	}
	s := &Server{handle: h}
	s.srv = httptest.NewServer(http.HandlerFunc(s.serve))
	tb.Cleanup(s.srv.Close)
	return s
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, "reading the body: "+err.Error(), http.StatusBadRequest)
		return
	}
	s.mu.Lock()
	s.reqs = append(s.reqs, Request{
		Method:        r.Method,
		RequestURI:    r.RequestURI,
		Host:          r.Host,
		Header:        r.Header.Clone(),
		Body:          body,
		ContentLength: r.ContentLength,
	})
	n := len(s.reqs)
	s.mu.Unlock()
	r.Body = io.NopCloser(bytes.NewReader(body))
	s.handle(w, r, n)
}

// Addr is the upstream's host:port, for reverse_proxy.
func (s *Server) Addr() string { return s.srv.Listener.Addr().String() }

// Count is how many requests arrived.
func (s *Server) Count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.reqs)
}

// Requests returns a copy of every request received, oldest first.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Request, len(s.reqs))
	for i, r := range s.reqs {
		r.Header = r.Header.Clone()
		r.Body = bytes.Clone(r.Body)
		out[i] = r
	}
	return out
}

// Last returns the last request received; it panics when there was none.
func (s *Server) Last() Request {
	reqs := s.Requests()
	return reqs[len(reqs)-1]
}

// Echo answers 200 with a JSON object whose id, prefix-n, is new for every
// request, so a replayed answer is told from a fresh one, plus what the
// request was.
func Echo(prefix string) Handler {
	return func(w http.ResponseWriter, r *http.Request, n int) {
		WriteJSON(w, http.StatusOK, map[string]any{
			"id":          fmt.Sprintf("%s-%d", prefix, n),
			"method":      r.Method,
			"request_uri": r.RequestURI,
		})
	}
}

// WriteJSON answers status with v as JSON.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}
