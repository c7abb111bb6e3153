package caddyidempotency

import (
	"net/http"
	"testing"

	"github.com/caddy-idempotency/caddy-idempotency/internal/testupstream"
)

// The fingerprint is the target the upstream receives: two requests that
// reach it differently are two requests under one key (a conflict), and
// two spellings it cannot tell apart are one (a replay).
func TestFidelityQueryAndPath(t *testing.T) {
	up := testupstream.Start(t, nil)
	fidLoad(t, fidSite(fidLocalSite(), "idempotency {\n\t\tstore memory\n\t}", "reverse_proxy "+up.Addr()))
	c := fidClient(t, "")
	body := []byte(`{"model":"m","input":"same body"}`)

	for _, tc := range []struct {
		name          string
		first, second string
		replay        bool // else a conflict
	}{
		// A parser that drops ';' pairs would see "x=1" twice.
		{"semicolon query values differ", "/v1/x?to=alice;x=1", "/v1/x?to=mallory;x=1", false},
		{"semicolon is no separator", "/v1/x?a=1;b=2", "/v1/x?b=2;a=1", false},
		{"query pair order", "/v1/x?a=1&b=2", "/v1/x?b=2&a=1", true},
		{"query value differs", "/v1/x?a=1&b=2", "/v1/x?a=1&b=3", false},
		{"empty pair kept", "/v1/x?a=1&", "/v1/x?a=1", false},
		{"encoded slash is not a slash", "/v1/files/a%2Fb", "/v1/files/a/b", false},
		{"escape hex case", "/v1/files/a%2fb", "/v1/files/a%2Fb", true},
		{"unreserved escape", "/v1/%62atches", "/v1/batches", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key := fidKey("target")
			before := up.Count()
			first := fidSend(t, c, http.MethodPost, fidURL(tc.first), body, "Idempotency-Key", key)
			fidFresh(t, first)
			if got := up.Last().RequestURI; got != tc.first {
				t.Fatalf("upstream got target %q, want %q as sent", got, tc.first)
			}
			second := fidSend(t, c, http.MethodPost, fidURL(tc.second), body, "Idempotency-Key", key)
			if tc.replay {
				fidReplay(t, second, first)
			} else {
				fidConflict(t, second)
			}
			if n := up.Count() - before; n != 1 {
				t.Fatalf("upstream saw %d requests, want 1", n)
			}
		})
	}
}
