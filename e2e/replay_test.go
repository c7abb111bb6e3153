package e2e

import (
	"bytes"
	"net/http"
	"testing"
)

// A replay carries the stored headers, but not the per-client ones
// (Set-Cookie), which are never stored.
func TestReplayDropsPerClientHeaders(t *testing.T) {
	s := newStack(t, "store badger "+storeDir(t))
	body := createBody(t, nil, "")
	first := s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", "k-headers")
	first.batch(t)
	replay := s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", "k-headers")
	if first.Header.Get("Set-Cookie") == "" || replay.Header.Get("Set-Cookie") != "" {
		t.Fatalf("Set-Cookie: first %q, replay %q", first.Header.Get("Set-Cookie"), replay.Header.Get("Set-Cookie"))
	}
	if replay.Header.Get("X-Request-Id") != first.Header.Get("X-Request-Id") || replay.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("stored headers not replayed: %v", replay.Header)
	}
	if !bytes.Equal(first.Body, replay.Body) {
		t.Fatalf("bodies differ")
	}
}

// A header that a handler before idempotency sets (the header directive,
// CORS) is the site's, not the upstream's: a replay must carry the current
// config's value, not the one stored with the response.
func TestReplayCarriesCurrentSiteHeaders(t *testing.T) {
	site := func(gen string) func(string) string {
		return func(upstream string) string {
			return "\theader X-Site " + gen + "\n" + idempotencySite("\t\tstore memory", upstream)
		}
	}
	s := newSiteStack(t, quietLog, site("one"))
	body := createBody(t, nil, "")
	key := uniqueKey("k-site-header") // the memory store outlives configs
	first := s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", key)
	first.batch(t)
	s.loadCaddyfile(testCaddyfile(quietLog, site("two")(s.upstream)))
	r := s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", key)
	r.batch(t)
	if got := r.Header.Values("X-Site"); len(got) != 1 || got[0] != "two" || r.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("replay under the new config: X-Site %q, want [two]", got)
	}
}
