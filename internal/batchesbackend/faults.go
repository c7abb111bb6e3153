package batchesbackend

import (
	"context"
	"net/http"
	"time"
)

// Fault makes POST /v1/batches misbehave. The zero Fault means none.
type Fault struct {
	Status int           // if non-zero: answer this status with an OpenAI error envelope; no batch is created
	Delay  time.Duration // sleep before answering (cut short if the request context ends)
	Block  chan struct{} // if non-nil: wait until closed (or the request context ends) before answering
	Times  int           // if > 0: the fault applies to this many requests, then clears itself
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
