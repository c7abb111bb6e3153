package batchesbackend

import (
	"context"
	"net"
	"net/http"
	"time"
)

// Fault makes POST /v1/batches misbehave. The zero Fault means none.
//
// Without After, the fault strikes before the request is handled, so nothing
// is created: the request waits out Delay and Block, then Reset drops the
// connection or Status is answered (or, with neither, the request is handled
// as usual, late).
//
// With After, the request is handled first (a valid create IS created and
// counted, an idempotency key recorded), then the fault strikes: Delay and
// Block hold the answer back, then Reset drops the connection or Status
// replaces the answer (or, with neither, the usual answer goes out late).
// That is the ambiguous outcome: the batch exists but its answer is lost.
type Fault struct {
	Status int           // if non-zero: answer this status with an OpenAI error envelope
	Delay  time.Duration // sleep before answering (cut short if the request context ends)
	Block  chan struct{} // if non-nil: wait until closed (or the request context ends) before answering
	Times  int           // if > 0: the fault applies to this many requests, then clears itself
	After  bool          // strike after handling the request rather than before
	Reset  bool          // drop the connection without any response (takes precedence over Status)
}

// SetFault sets the fault for subsequent POST /v1/batches requests,
// replacing any previous one. SetFault(Fault{}) clears it.
func (s *Server) SetFault(f Fault) {
	s.mu.Lock()
	s.fault = f
	s.mu.Unlock()
}

// takeFault returns the fault for one request, consuming one of its Times.
func (s *Server) takeFault() Fault {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.fault
	if s.fault.Times > 0 {
		if s.fault.Times--; s.fault.Times == 0 {
			s.fault = Fault{}
		}
	}
	return f
}

// strike lets f strike: it waits out f's Delay and Block, then drops the
// connection (Reset) or answers f.Status. It reports whether the request
// should still be answered as usual; false means it has been dealt with (or
// its client went away while waiting).
func strike(w http.ResponseWriter, r *http.Request, f Fault) bool {
	switch {
	case !wait(r.Context(), f):
		return false // client went away; nothing useful to answer
	case f.Reset:
		abort(w)
		return false
	case f.Status != 0:
		writeFault(w, f.Status)
		return false
	}
	return true
}

// wait applies f's Delay and Block; it reports false if ctx ended first.
func wait(ctx context.Context, f Fault) bool {
	if f.Delay > 0 {
		t := time.NewTimer(f.Delay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return false
		}
	}
	if f.Block != nil {
		select {
		case <-f.Block:
		case <-ctx.Done():
			return false
		}
	}
	return true
}

// abort drops the connection without writing any response. Over HTTP/1 it
// takes the connection over and closes it with SO_LINGER 0, so the client
// sees a connection reset; where that is not possible (HTTP/2) it panics with
// http.ErrAbortHandler, which net/http turns into a stream reset. Nothing of
// the response may have been written yet.
func abort(w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	for {
		inner, ok := conn.(interface{ NetConn() net.Conn }) // *tls.Conn: skip close_notify
		if !ok {
			break
		}
		conn = inner.NetConn()
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = conn.Close()
}

// writeFault answers status with the error envelope OpenAI uses for it.
func writeFault(w http.ResponseWriter, status int) {
	switch {
	case status == http.StatusTooManyRequests:
		writeError(w, status, "Rate limit reached for requests. Please try again later.", "requests", "", "rate_limit_exceeded")
	case status >= 500:
		writeError(w, status, "The server had an error while processing your request. Sorry about that!", "server_error", "", "")
	default:
		writeError(w, status, "Injected fault: "+http.StatusText(status), "invalid_request_error", "", "")
	}
}
