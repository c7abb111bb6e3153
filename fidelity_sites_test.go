package caddyidempotency

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/caddy-idempotency/caddy-idempotency/internal/batchesbackend"
	"github.com/caddy-idempotency/caddy-idempotency/internal/redistest"
)

// Two sites on one store, each in front of its own backend: the same
// credential, key and body sent to both are two requests, because a
// record's namespace is the request's host. A site's records are the
// same whatever case its host is written in, and `namespace` joins sites
// on purpose.
func TestFidelitySites(t *testing.T) {
	openai := fmt.Sprintf("openai.gw.localhost:%d", httpPort)
	selfhosted := fmt.Sprintf("selfhosted.gw.localhost:%d", httpPort)
	openaiUpper := fmt.Sprintf("OpenAI.GW.localhost:%d", httpPort)
	url := fmt.Sprintf("http://127.0.0.1:%d/v1/batches", httpPort) // the host is the Host header's
	redisURL := redistest.URL(t)
	body := []byte(createBody(t, nil, ""))

	// sites loads both sites, each with the given idempotency lines and
	// its own fresh backend.
	sites := func(t *testing.T, lines ...string) (a, b *batchesbackend.Server, c *http.Client) {
		a, b = batchesbackend.New(), batchesbackend.New()
		site := func(host string, backend *batchesbackend.Server) string {
			up := newFidBatches(t, backend)
			return fidSite("http://"+host,
				"idempotency /v1/batches {\n\t\t"+strings.Join(lines, "\n\t\t")+"\n\t}",
				"reverse_proxy "+up)
		}
		fidLoad(t, site(openai, a), site(selfhosted, b))
		return a, b, fidClient(t, openai)
	}
	send := func(t *testing.T, c *http.Client, host, key string) reply {
		t.Helper()
		return fidSend(t, c, http.MethodPost, url, body, "Host", host, "Idempotency-Key", key)
	}

	for _, store := range []struct{ name, line string }{
		{"badger default dir", ""}, // both handlers on {caddy data dir}/idempotency
		{"badger one dir", "store badger " + storeDir(t)},
		{"memory", "store memory"},
		{"redis", fmt.Sprintf("store redis %s {\n\t\t\tkey_prefix fidelity-sites-%d:\n\t\t}", redisURL, time.Now().UnixNano())},
	} {
		t.Run(store.name+"/per host", func(t *testing.T) {
			a, b, c := sites(t, store.line)
			key := fidKey("sites")
			first := send(t, c, openai, key)
			fidFresh(t, first)
			other := send(t, c, selfhosted, key)
			fidFresh(t, other) // not the first site's record
			if first.batch(t).ID == other.batch(t).ID || a.Creates() != 1 || b.Creates() != 1 {
				t.Fatalf("batches %s and %s; creates: openai %d, selfhosted %d, want 1 each",
					first.batch(t).ID, other.batch(t).ID, a.Creates(), b.Creates())
			}
			// Each site keeps its own record, and the host's case is not a site.
			fidReplay(t, send(t, c, openaiUpper, key), first)
			fidReplay(t, send(t, c, selfhosted, key), other)
			if a.Creates() != 1 || b.Creates() != 1 {
				t.Fatalf("retries went upstream: creates openai %d, selfhosted %d", a.Creates(), b.Creates())
			}
		})
		t.Run(store.name+"/namespace shared", func(t *testing.T) {
			a, b, c := sites(t, store.line, "namespace shared")
			key := fidKey("sites-shared")
			first := send(t, c, openai, key)
			fidFresh(t, first)
			fidReplay(t, send(t, c, selfhosted, key), first)
			if a.Creates() != 1 || b.Creates() != 0 {
				t.Fatalf("creates: openai %d, selfhosted %d; want 1 and 0", a.Creates(), b.Creates())
			}
		})
	}
}
