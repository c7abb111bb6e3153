package idempotency

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestUncoveredMethodsPassThroughUnread(t *testing.T) {
	h, store := newHandler(t, Config{RequireKey: true})
	for _, method := range []string{http.MethodGet, http.MethodPut, http.MethodDelete, http.MethodPatch} {
		body := &readSpy{Reader: strings.NewReader(`{"idempotency_key":"k","a":1}`)}
		req := newRequest(t, method, batchesPath, nil)
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
	req := newRequest(t, http.MethodPut, batchesPath, strings.NewReader(`{"a":1}`))
	req.Header.Set("Idempotency-Key", "")
	if r := answerAlone(t, h, req, "a covered PUT with an empty key"); r.status != http.StatusBadRequest {
		t.Fatalf("covered PUT with an empty key: status %d, want 400", r.status)
	}
}

func TestNoKeyNonJSONBodyUnread(t *testing.T) {
	h, _ := newHandler(t, Config{})
	body := &readSpy{Reader: strings.NewReader("file bytes")}
	req := newRequest(t, http.MethodPost, "/v1/files", nil)
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
