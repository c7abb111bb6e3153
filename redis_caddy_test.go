package caddyidempotency

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/caddy-idempotency/caddy-idempotency/internal/redistest"
)

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
	waitFor(t, func() bool {
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
	waitFor(t, func() bool {
		return s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", "open-back").Status == http.StatusOK
	})
	if r := s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", "open-back"); r.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("after Redis came back the key is not protected: %d %v", r.Status, r.Header)
	}
}

// A Redis that speaks only TLS and wants a password: the store reaches it
// with a rediss URL, the password from an env placeholder and a private CA;
// without that CA the certificate is refused and keyed requests get 503.
func TestRedisTLSWithPasswordThroughCaddy(t *testing.T) {
	t.Setenv("TEST_REDIS_TLS_PASSWORD", "tls-test-password")
	srv := redistest.StartTLS(t, "tls-test-password")
	block := "\t\tstore redis rediss://" + srv.Addr() + " {\n\t\t\tpassword {env.TEST_REDIS_TLS_PASSWORD}\n\t\t\tdial_timeout 500ms\n"
	body := createBody(t, nil, "")

	s := newStack(t, block+"\t\t\ttls_ca_file "+srv.CAFile()+"\n\t\t}")
	created := s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", "tls-1").batch(t)
	r := s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", "tls-1")
	if b := r.batch(t); b.ID != created.ID || r.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("over TLS got %s, want a replay of %s", b.ID, created.ID)
	}
	keys, err := srv.Client(t).Keys(t.Context(), "caddy-idempotency:r:*").Result()
	if err != nil || len(keys) != 1 {
		t.Fatalf("records in the TLS server: %v, %v", keys, err)
	}

	untrusted := newStack(t, block+"\t\t}")
	untrusted.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", "tls-2").
		apiError(t, http.StatusServiceUnavailable, "idempotency_store_unavailable")
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
	waitFor(t, func() bool {
		return s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", "late-redis").Status == http.StatusOK
	})
	if r := s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", "late-redis"); r.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("once Redis is up the key does not replay: %d %v", r.Status, r.Header)
	}
}
