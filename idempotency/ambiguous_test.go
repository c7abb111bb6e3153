package idempotency

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// abortAfterRead reads a create, counts it, and drops the connection without
// an answer: the upstream acted and its answer was lost. Other calls answer.
func abortAfterRead(w http.ResponseWriter, r *http.Request, n int64) {
	if r.Header.Get("Idempotency-Key") != "" {
		panic(http.ErrAbortHandler)
	}
	writeBatch(w, http.StatusOK, n)
}

// Go's transport resends a request that has an Idempotency-Key header and a
// GetBody when a reused connection breaks after the request was written. The
// owner's request must never be resent: the upstream sees one create.
func TestTransportNeverResendsTheOwnersRequest(t *testing.T) {
	obs := &observed{}
	s := newStack(t, Config{Observe: obs.observe}, abortAfterRead)
	// A keyless request first, so the keyed one goes over a reused
	// connection: the case in which the transport retries by itself.
	wantForwarded(t, s.post(t, createBody), http.StatusOK)
	first := s.post(t, createBody, withKey("k-reset"))
	wantStatus(t, first, http.StatusBadGateway)
	s.up.wantCalls(t, 2)

	d := obs.take()
	if got := d[len(d)-1]; got.Outcome != OutcomeInDoubt || !strings.Contains(got.Reason, "502") {
		t.Errorf("decision = %+v, want in_doubt for the 502", got)
	}
}

// An error from next before any byte of the request went out (no upstream
// could be dialled) shows nothing happened: the key is released. The same
// error after the request was sent leaves it open whether the upstream
// acted: in_doubt.
func TestErrorBeforeAndAfterSending(t *testing.T) {
	for _, tc := range []struct {
		name string
		next Next
		want Outcome
	}{
		{"dial error", func(w http.ResponseWriter, r *http.Request) error {
			return errors.New("dial tcp: connection refused")
		}, OutcomeReleased},
		{"error after reading the body", func(w http.ResponseWriter, r *http.Request) error {
			buf := make([]byte, 4)
			_, _ = r.Body.Read(buf)
			return errors.New("connection reset by peer")
		}, OutcomeInDoubt},
		{"error after a transport wrote the header", func(w http.ResponseWriter, r *http.Request) error {
			up := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { panic(http.ErrAbortHandler) }))
			defer up.Close()
			out := r.Clone(r.Context())
			out.URL.Scheme, out.URL.Host, out.RequestURI = "http", strings.TrimPrefix(up.URL, "http://"), ""
			_, err := http.DefaultTransport.RoundTrip(out)
			return err
		}, OutcomeInDoubt},
	} {
		t.Run(tc.name, func(t *testing.T) {
			obs := &observed{}
			h, store := newHandler(t, Config{Observe: obs.observe})
			req := jsonRequest(t, "k-"+tc.name, createBody)
			err := h.Handle(httptest.NewRecorder(), req, tc.next)
			if err == nil {
				t.Fatal("Handle returned no error; want next's")
			}
			if d := obs.take(); len(d) != 1 || d[0].Outcome != tc.want {
				t.Fatalf("decisions = %+v, want one %s", d, tc.want)
			}
			if _, ok := getRecord(t, store, newRequestNS, "", "k-"+tc.name); ok {
				t.Error("record kept; want it released (no Reconcile)")
			}
		})
	}
}
