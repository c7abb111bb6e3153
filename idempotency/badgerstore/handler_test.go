package badgerstore_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/caddy-idempotency/caddy-idempotency/idempotency"
	"github.com/caddy-idempotency/caddy-idempotency/idempotency/badgerstore"
	"github.com/caddy-idempotency/caddy-idempotency/idempotency/storetest"
)

func openStore(t *testing.T) *badgerstore.Store {
	s, err := badgerstore.Open(badgerstore.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

func TestContract(t *testing.T) {
	storetest.Run(t, func(t *testing.T) idempotency.Store { return openStore(t) })
}

func TestHandler(t *testing.T) {
	storetest.RunHandler(t, func(t *testing.T) idempotency.Store { return openStore(t) })
}

// A closed Badger database is a store failure like any other: 503, nothing
// forwarded, and no panic.
func TestHandlerOnClosedStore(t *testing.T) {
	s := openStore(t)
	var calls atomic.Int64
	h, err := idempotency.New(idempotency.Config{Store: s})
	if err != nil {
		t.Fatal(err)
	}
	front := h.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		_, _ = w.Write([]byte(`{"id":"batch_1"}`))
	}))
	post := func(key string) *httptest.ResponseRecorder {
		r := httptest.NewRequestWithContext(t.Context(), http.MethodPost, "/v1/batches", strings.NewReader(`{"input_file_id":"file-1"}`))
		r.Header.Set("Idempotency-Key", key)
		w := httptest.NewRecorder()
		front.ServeHTTP(w, r)
		return w
	}
	if w := post("k-before"); w.Code != http.StatusOK {
		t.Fatalf("before Close: status %d, body %s", w.Code, w.Body)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"k-after", "k-before"} {
		w := post(key)
		if w.Code != http.StatusServiceUnavailable || !strings.Contains(w.Body.String(), idempotency.CodeStoreUnavailable) {
			t.Fatalf("%s after Close: status %d, body %s; want 503 %s", key, w.Code, w.Body, idempotency.CodeStoreUnavailable)
		}
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("%d upstream calls, want 1", n)
	}
}
