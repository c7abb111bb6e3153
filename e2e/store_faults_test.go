package e2e

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/caddy-idempotency/caddy-idempotency/internal/redistest"
)

// A store that fails or is not there yet: keyed requests get 503 and forward
// nothing (unless fail_open), Caddy keeps serving, and the handler recovers
// by itself when the store does.

// A store that fails answers covered requests 503 and forwards nothing;
// Caddy keeps serving, and the same key works once the store is back.
func TestStoreDownThroughCaddy(t *testing.T) {
	s := newStack(t, "store test_failing")
	t.Cleanup(func() { storeDown.Store(false) })
	body := createBody(t, nil, "")

	storeDown.Store(true)
	for _, key := range []string{"down-1", "down-2"} {
		r := s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", key)
		r.apiError(t, http.StatusServiceUnavailable, "idempotency_store_unavailable")
		if r.Header.Get("x-should-retry") != "true" {
			t.Fatalf("503 without x-should-retry: true: %v", r.Header)
		}
	}
	s.send(http.MethodPost, "/v1/batches", createBody(t, nil, "down-3")).
		apiError(t, http.StatusServiceUnavailable, "idempotency_store_unavailable")
	if n := s.backend.Creates(); n != 0 {
		t.Fatalf("%d creates forwarded while the store was down, want 0", n)
	}
	s.send(http.MethodPost, "/v1/batches", body).batch(t) // no key: no store needed

	storeDown.Store(false)
	created := s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", "down-1").batch(t)
	if again := s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", "down-1").batch(t); again.ID != created.ID {
		t.Fatalf("after recovery got %s, want replay of %s", again.ID, created.ID)
	}
	if n := s.backend.Creates(); n != 2 {
		t.Fatalf("backend creates = %d, want 2", n)
	}
}

// With fail_open, a keyed request is forwarded unprotected while the store
// is down: the retry creates again, which is what the operator opted into.
func TestStoreDownFailOpenThroughCaddy(t *testing.T) {
	s := newStack(t, "fail_open\n\t\tstore test_failing")
	t.Cleanup(func() { storeDown.Store(false) })
	storeDown.Store(true)
	first := s.send(http.MethodPost, "/v1/batches", createBody(t, nil, "open-1")).batch(t)
	second := s.send(http.MethodPost, "/v1/batches", createBody(t, nil, "open-1")).batch(t)
	if first.ID == second.ID || s.backend.Creates() != 2 {
		t.Fatalf("fail_open: %s and %s, creates %d; want two unprotected creates", first.ID, second.ID, s.backend.Creates())
	}
	// Forwarded with the key field stripped, as a protected request would be:
	// the strict backend would have rejected it otherwise.
	storeDown.Store(false)
	third := s.send(http.MethodPost, "/v1/batches", createBody(t, nil, "open-1")).batch(t)
	if again := s.send(http.MethodPost, "/v1/batches", createBody(t, nil, "open-1")).batch(t); again.ID != third.ID {
		t.Fatalf("after recovery got %s, want replay of %s", again.ID, third.ID)
	}
}

// Redis stopped mid-run: keyed requests get 503 and nothing goes upstream,
// Caddy keeps serving everything else, and the handler recovers by itself
// when Redis is back, with no reload.
func TestRedisDownThroughCaddy(t *testing.T) {
	srv := redistest.Start(t)
	s := newStack(t, fmt.Sprintf("\t\tstore redis %s {\n\t\t\tdial_timeout 500ms\n\t\t\tread_timeout 500ms\n\t\t}", srv.URL()))
	body := createBody(t, nil, "")
	s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", "redis-up").batch(t)

	srv.Stop()
	start := time.Now()
	r := s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", "redis-down")
	r.apiError(t, http.StatusServiceUnavailable, "idempotency_store_unavailable")
	t.Logf("503 after %s with Redis stopped", time.Since(start))
	if r.Header.Get("x-should-retry") != "true" {
		t.Fatalf("503 without x-should-retry: true: %v", r.Header)
	}
	s.send(http.MethodPost, "/v1/batches", body).batch(t) // no key, no store: still served
	if n := s.backend.Creates(); n != 2 {
		t.Fatalf("backend creates = %d, want 2 (the first create and the keyless one)", n)
	}

	srv.Restart()
	restarted := time.Now()
	waitFor(t, "Redis back", func() bool {
		return s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", "redis-back").Status == http.StatusOK
	})
	t.Logf("recovered %s after Redis restarted", time.Since(restarted))
	again := s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", "redis-back")
	if again.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("after recovery the key does not replay: %d %v", again.Status, again.Header)
	}
}

// With fail_open, keyed requests are forwarded while Redis is down, and
// protected again once it is back.
func TestRedisDownFailOpenThroughCaddy(t *testing.T) {
	srv := redistest.Start(t)
	s := newStack(t, fmt.Sprintf("\t\tfail_open\n\t\tstore redis %s {\n\t\t\tdial_timeout 500ms\n\t\t\tread_timeout 500ms\n\t\t}", srv.URL()))
	body := createBody(t, nil, "")

	srv.Stop()
	a := s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", "open-down").batch(t)
	b := s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", "open-down").batch(t)
	if a.ID == b.ID {
		t.Fatal("fail_open with Redis down replayed: the store was not down")
	}

	srv.Restart()
	waitFor(t, "Redis back", func() bool {
		return s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", "open-back").Status == http.StatusOK
	})
	if r := s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", "open-back"); r.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("after Redis came back the key is not protected: %d %v", r.Status, r.Header)
	}
}

// Caddy starts with Redis down (the client connects lazily): keyed requests
// get 503 until Redis is up, then work, with no reload.
func TestCaddyStartsWithRedisDown(t *testing.T) {
	srv := redistest.Start(t)
	srv.Stop()
	s := newStack(t, fmt.Sprintf("\t\tstore redis %s {\n\t\t\tdial_timeout 500ms\n\t\t}", srv.URL()))
	body := createBody(t, nil, "")
	s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", "late-redis").
		apiError(t, http.StatusServiceUnavailable, "idempotency_store_unavailable")

	srv.Restart()
	waitFor(t, "Redis back", func() bool {
		return s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", "late-redis").Status == http.StatusOK
	})
	if r := s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", "late-redis"); r.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("once Redis is up the key does not replay: %d %v", r.Status, r.Header)
	}
}
