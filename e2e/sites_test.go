package e2e

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

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
			up := serveBackend(t, backend)
			return siteBlock("http://"+host,
				"idempotency /v1/batches {\n\t\t"+strings.Join(lines, "\n\t\t")+"\n\t}",
				"reverse_proxy "+up)
		}
		loadSites(t, site(openai, a), site(selfhosted, b))
		return a, b, siteClient(t, openai)
	}
	send := func(t *testing.T, c *http.Client, host, key string) reply {
		t.Helper()
		return sendTo(t, c, http.MethodPost, url, body, "Host", host, "Idempotency-Key", key)
	}

	for _, store := range []struct{ name, line string }{
		{"badger default dir", ""}, // both handlers on {caddy data dir}/idempotency
		{"badger one dir", "store badger " + storeDir(t)},
		{"memory", "store memory"},
		{"redis", fmt.Sprintf("store redis %s {\n\t\t\tkey_prefix %s\n\t\t}", redisURL, redistest.UniquePrefix("sites"))},
	} {
		t.Run(store.name+"/per host", func(t *testing.T) {
			a, b, c := sites(t, store.line)
			key := uniqueKey("sites")
			first := send(t, c, openai, key)
			mustFresh(t, first)
			other := send(t, c, selfhosted, key)
			mustFresh(t, other) // not the first site's record
			if first.batch(t).ID == other.batch(t).ID || a.Creates() != 1 || b.Creates() != 1 {
				t.Fatalf("batches %s and %s; creates: openai %d, selfhosted %d, want 1 each",
					first.batch(t).ID, other.batch(t).ID, a.Creates(), b.Creates())
			}
			// Each site keeps its own record, and the host's case is not a site.
			mustReplay(t, send(t, c, openaiUpper, key), first)
			mustReplay(t, send(t, c, selfhosted, key), other)
			if a.Creates() != 1 || b.Creates() != 1 {
				t.Fatalf("retries went upstream: creates openai %d, selfhosted %d", a.Creates(), b.Creates())
			}
		})
		t.Run(store.name+"/namespace shared", func(t *testing.T) {
			a, b, c := sites(t, store.line, "namespace shared")
			key := uniqueKey("sites-shared")
			first := send(t, c, openai, key)
			mustFresh(t, first)
			mustReplay(t, send(t, c, selfhosted, key), first)
			if a.Creates() != 1 || b.Creates() != 0 {
				t.Fatalf("creates: openai %d, selfhosted %d; want 1 and 0", a.Creates(), b.Creates())
			}
		})
	}
}

// A site is where Caddy routed the request, not what its Host header says:
// a request sent to one port with another port's Host, to one of two
// servers bound to two addresses on one port, or with a trailing dot
// Caddy's host matcher keeps, never replays the other site's record.
func TestFidelitySitesByListener(t *testing.T) {
	port2 := freePort()
	a, b := batchesbackend.New(), batchesbackend.New()
	site := func(address string, backend *batchesbackend.Server) string {
		return siteBlock(address, "idempotency /v1/batches", "reverse_proxy "+serveBackend(t, backend))
	}
	named := fmt.Sprintf("a.localhost:%d", httpPort)
	loadSites(t, site(fmt.Sprintf("http://:%d", httpPort), a), site(fmt.Sprintf("http://:%d", port2), b))
	c := siteClient(t, "")
	warmUp(t, c, fmt.Sprintf("http://127.0.0.1:%d%s", port2, warmUpPath), "", generation)
	body := []byte(createBody(t, nil, ""))
	key := uniqueKey("by-port")
	spoofed := fmt.Sprintf("127.0.0.1:%d", port2)
	onB := sendTo(t, c, http.MethodPost, fmt.Sprintf("http://127.0.0.1:%d/v1/batches", port2), body, "Idempotency-Key", key)
	mustFresh(t, onB)
	onA := sendTo(t, c, http.MethodPost, fmt.Sprintf("http://127.0.0.1:%d/v1/batches", httpPort), body, "Host", spoofed, "Idempotency-Key", key)
	mustFresh(t, onA)
	if onA.batch(t).ID == onB.batch(t).ID || a.Creates() != 1 || b.Creates() != 1 {
		t.Fatalf("the port-%d site answered with the other site's batch: creates %d and %d", httpPort, a.Creates(), b.Creates())
	}

	// Two servers on one port, bound to two addresses.
	a, b = batchesbackend.New(), batchesbackend.New()
	bound := func(ip string, backend *batchesbackend.Server) string {
		return siteBlock(fmt.Sprintf("http://:%d", port2), "bind "+ip, "idempotency /v1/batches", "reverse_proxy "+serveBackend(t, backend))
	}
	loadSites(t, site(fmt.Sprintf("http://:%d", httpPort), batchesbackend.New()), bound("127.0.0.1", a), bound("127.0.0.2", b))
	for _, ip := range []string{"127.0.0.1", "127.0.0.2"} {
		warmUp(t, c, fmt.Sprintf("http://%s:%d%s", ip, port2, warmUpPath), "", generation)
	}
	key = uniqueKey("by-bind")
	for _, ip := range []string{"127.0.0.1", "127.0.0.2"} {
		mustFresh(t, sendTo(t, c, http.MethodPost, fmt.Sprintf("http://%s:%d/v1/batches", ip, port2), body, "Host", "api.localhost", "Idempotency-Key", key))
	}
	if a.Creates() != 1 || b.Creates() != 1 {
		t.Fatalf("creates %d and %d, want one behind each bound server", a.Creates(), b.Creates())
	}

	a, b = batchesbackend.New(), batchesbackend.New()
	loadSites(t, site("http://"+named, a), site(fmt.Sprintf("http://:%d", httpPort), b))
	c = siteClient(t, named)
	key = uniqueKey("trailing-dot")
	url := fmt.Sprintf("http://127.0.0.1:%d/v1/batches", httpPort)
	first := sendTo(t, c, http.MethodPost, url, body, "Host", named, "Idempotency-Key", key)
	mustFresh(t, first)
	dotted := sendTo(t, c, http.MethodPost, url, body, "Host", fmt.Sprintf("a.localhost.:%d", httpPort), "Idempotency-Key", key)
	mustFresh(t, dotted) // the catch-all site, with its own backend
	if a.Creates() != 1 || b.Creates() != 1 {
		t.Fatalf("creates %d and %d, want one on each site", a.Creates(), b.Creates())
	}
}
