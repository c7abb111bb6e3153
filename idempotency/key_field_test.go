package idempotency

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
)

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

// What next receives must be self-consistent, so reverse_proxy can send it,
// and without a GetBody, so no transport can send it twice.
func TestKeyInBodyFieldFraming(t *testing.T) {
	h, _ := newHandler(t, Config{})
	body := `{"idempotency_key":"kf","endpoint":"/v1/embeddings"}`
	const want = `{"endpoint":"/v1/embeddings"}`
	req := newRequest(t, http.MethodPost, batchesPath, strings.NewReader(body))
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
		if r.GetBody != nil {
			t.Error("the owner's request has a GetBody: a transport could send it twice")
		}
		w.WriteHeader(http.StatusOK)
		return nil
	})
	if err != nil || !called {
		t.Fatalf("ServeHTTP = %v, next called %v", err, called)
	}
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
