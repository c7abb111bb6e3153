package caddyidempotency

import (
	"net/http"
	"strconv"
	"testing"
	"time"
)

// A header that a handler before idempotency sets (the header directive,
// CORS) is the site's, not the upstream's: a replay must carry the current
// config's value, not the one stored with the response.
func TestReplayCarriesCurrentSiteHeaders(t *testing.T) {
	s := newStack(t, "store memory")
	load := func(gen string) {
		s.tester.InitServer(testCaddyfile(quietLog, "\theader X-Site "+gen+"\n"+idempotencySite("\t\tstore memory", s.upstream)), "caddyfile")
	}
	load("one")
	body := createBody(t, nil, "")
	key := "k-site-header-" + strconv.FormatInt(time.Now().UnixNano(), 36) // the memory store outlives configs
	first := s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", key)
	first.batch(t)
	load("two")
	r := s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", key)
	r.batch(t)
	if got := r.Header.Values("X-Site"); len(got) != 1 || got[0] != "two" || r.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("replay under the new config: X-Site %q, want [two]", got)
	}
}
