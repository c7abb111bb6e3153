package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/caddy-idempotency/caddy-idempotency/internal/batchesbackend"
	"github.com/caddy-idempotency/caddy-idempotency/internal/testupstream"
)

// exampleRoute is one route of an adapted example's server.
type exampleRoute struct {
	Match  []map[string]json.RawMessage `json:"match"`
	Handle []json.RawMessage            `json:"handle"`
}

// examplesDir holds the example Caddyfiles users copy, one per backend.
const examplesDir = "../examples/caddyfiles"

// exampleRoutes adapts examples/caddyfiles/<name> with Caddy's Caddyfile
// adapter, which must give no warning, and returns the routes of its one
// server.
func exampleRoutes(t *testing.T, name string) []exampleRoute {
	t.Helper()
	path := filepath.Join(examplesDir, name)
	src, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt(src, map[string]any{"filename": path})
	if err != nil {
		t.Fatalf("adapt %s: %v", name, err)
	}
	if len(warnings) > 0 {
		t.Fatalf("adapt %s: warnings %+v", name, warnings)
	}
	var cfg struct {
		Apps struct {
			HTTP struct {
				Servers map[string]struct {
					Listen []string       `json:"listen"`
					Routes []exampleRoute `json:"routes"`
				} `json:"servers"`
			} `json:"http"`
		} `json:"apps"`
	}
	if err := json.Unmarshal(out, &cfg); err != nil {
		t.Fatal(err)
	}
	srv, ok := cfg.Apps.HTTP.Servers["srv0"]
	if len(cfg.Apps.HTTP.Servers) != 1 || !ok || !slices.Equal(srv.Listen, []string{":8080"}) {
		t.Fatalf("%s: want one server on :8080, got %s", name, out)
	}
	return srv.Routes
}

// handlerName is the "handler" of one handle entry.
func handlerName(t *testing.T, raw json.RawMessage) string {
	t.Helper()
	var h struct {
		Handler string `json:"handler"`
	}
	if err := json.Unmarshal(raw, &h); err != nil {
		t.Fatal(err)
	}
	return h.Handler
}

// exampleHandler is an idempotency handler of an adapted example: the fields
// of its JSON form that the examples set.
type exampleHandler struct {
	KeyField     string          `json:"key_field"`
	Scope        string          `json:"scope"`
	RequireScope bool            `json:"require_scope"`
	Wait         *caddy.Duration `json:"wait"`
	MaxBody      int64           `json:"max_body"`
	MaxResponse  int64           `json:"max_response"`
	Store        json.RawMessage `json:"store"`

	ForwardKeyField bool `json:"forward_key_field"`
	Reconcile       *struct {
		Kind string `json:"kind"`
		Tag  bool   `json:"tag"`
	} `json:"reconcile"`
}

// exampleIdempotency returns the idempotency handler of the route matched by
// exactly these paths, and the route's index.
func exampleIdempotency(t *testing.T, routes []exampleRoute, paths ...string) (exampleHandler, int) {
	t.Helper()
	for i, r := range routes {
		if len(r.Match) != 1 || len(r.Match[0]) != 1 || len(r.Handle) != 1 || handlerName(t, r.Handle[0]) != "idempotency" {
			continue
		}
		var got []string
		if err := json.Unmarshal(r.Match[0]["path"], &got); err != nil || !slices.Equal(got, paths) {
			continue
		}
		var h exampleHandler
		if err := json.Unmarshal(r.Handle[0], &h); err != nil {
			t.Fatal(err)
		}
		return h, i
	}
	t.Fatalf("no route with only the idempotency handler on path %v", paths)
	return exampleHandler{}, 0
}

// exampleProxy returns the last route's handler, which must be reverse_proxy
// with no matcher (every route not answered before passes through), and its
// index.
func exampleProxy(t *testing.T, routes []exampleRoute) (reverseproxy.Handler, int) {
	t.Helper()
	last := len(routes) - 1
	if last < 0 || len(routes[last].Match) != 0 || len(routes[last].Handle) != 1 || handlerName(t, routes[last].Handle[0]) != "reverse_proxy" {
		t.Fatalf("the last route is not an unmatched reverse_proxy: %+v", routes)
	}
	var h reverseproxy.Handler
	if err := json.Unmarshal(routes[last].Handle[0], &h); err != nil {
		t.Fatal(err)
	}
	return h, last
}

func upstreamDials(h reverseproxy.Handler) []string {
	var dials []string
	for _, u := range h.Upstreams {
		dials = append(dials, u.Dial)
	}
	return dials
}

// plainUpstream checks a reverse_proxy to one plain-HTTP upstream.
func plainUpstream(t *testing.T, h reverseproxy.Handler, dial string) {
	t.Helper()
	if got := upstreamDials(h); !slices.Equal(got, []string{dial}) || h.TransportRaw != nil || h.Headers != nil {
		t.Fatalf("reverse_proxy to %v, transport %s, headers %+v; want plain HTTP to %s", got, h.TransportRaw, h.Headers, dial)
	}
}

func TestExampleCaddyfiles(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(examplesDir, "*.Caddyfile"))
	if err != nil {
		t.Fatal(err)
	}
	checks := map[string]func(t *testing.T, routes []exampleRoute){
		"openai.Caddyfile": func(t *testing.T, routes []exampleRoute) {
			h, at := exampleIdempotency(t, routes, "/v1/batches")
			if h.Scope != "" || !waitIs(h.Wait, 30*time.Second) || h.KeyField != "" || h.Store != nil {
				t.Fatalf("handler %+v: want the default scope, key field and store, wait 30s", h)
			}
			if h.Reconcile == nil || h.Reconcile.Kind != "batches" || !h.Reconcile.Tag {
				t.Fatalf("reconcile %+v: want batches with tag", h.Reconcile)
			}
			proxy, last := exampleProxy(t, routes)
			if at >= last {
				t.Fatal("idempotency does not run before reverse_proxy")
			}
			if got := upstreamDials(proxy); !slices.Equal(got, []string{"api.openai.com:443"}) {
				t.Fatalf("upstreams %v, want api.openai.com:443", got)
			}
			var transport reverseproxy.HTTPTransport
			if err := json.Unmarshal(proxy.TransportRaw, &transport); err != nil || transport.TLS == nil {
				t.Fatalf("transport %s: want the http transport with TLS (%v)", proxy.TransportRaw, err)
			}
			// Caddy's own default for a TLS upstream sets Host to the
			// upstream's host:port; an explicit header_up Host would only
			// earn the adapter's "unnecessary" warning.
			if proxy.Headers != nil {
				t.Fatalf("explicit header operations %+v", proxy.Headers)
			}
			ops := transport.RequestHeaderOps()
			if ops == nil || ops.Set.Get("Host") != "{http.reverse_proxy.upstream.hostport}" {
				t.Fatalf("the TLS transport does not set Host to the upstream: %+v", ops)
			}
		},
		"ogx.Caddyfile": func(t *testing.T, routes []exampleRoute) {
			h, _ := exampleIdempotency(t, routes, "/v1/batches")
			if h.KeyField != "idempotency_key" || !h.ForwardKeyField || h.Scope != "" || !waitIs(h.Wait, 30*time.Second) {
				t.Fatalf("handler %+v: want key_field idempotency_key forwarded, the default scope, wait 30s", h)
			}
			proxy, _ := exampleProxy(t, routes)
			plainUpstream(t, proxy, "localhost:8321")
		},
		"vllm.Caddyfile": func(t *testing.T, routes []exampleRoute) {
			h, _ := exampleIdempotency(t, routes, "/v1/chat/completions", "/v1/completions")
			if h.MaxResponse != 4<<20 || !waitIs(h.Wait, 30*time.Second) || h.Scope != "" {
				t.Fatalf("handler %+v: want max_response 4MiB, wait 30s, the default scope", h)
			}
			proxy, _ := exampleProxy(t, routes)
			plainUpstream(t, proxy, "localhost:8000")
		},
		"litellm.Caddyfile": func(t *testing.T, routes []exampleRoute) {
			h, _ := exampleIdempotency(t, routes, "/v1/batches", "/batches")
			if h.Scope != "{http.request.header.Authorization}{http.request.header.X-Litellm-Api-Key}" || !h.RequireScope {
				t.Fatalf("handler %+v: want the scope of LiteLLM's two key headers, required", h)
			}
			proxy, _ := exampleProxy(t, routes)
			plainUpstream(t, proxy, "localhost:4000")
		},
		"gateway.Caddyfile": func(t *testing.T, routes []exampleRoute) {
			batches, b := exampleIdempotency(t, routes, "/v1/batches")
			if batches.MaxBody != 0 || !waitIs(batches.Wait, 30*time.Second) {
				t.Fatalf("batches handler %+v: want the default max_body, wait 30s", batches)
			}
			files, f := exampleIdempotency(t, routes, "/v1/files")
			if files.MaxBody != 200<<20 || files.KeyField != "" {
				t.Fatalf("files handler %+v: want max_body 200MiB", files)
			}
			if len(routes) != 3 {
				t.Fatalf("%d routes, want batches, files and the pass-through", len(routes))
			}
			proxy, last := exampleProxy(t, routes)
			if b >= last || f >= last {
				t.Fatal("idempotency does not run before reverse_proxy")
			}
			plainUpstream(t, proxy, "localhost:9000")
		},
	}
	if len(files) != len(checks) {
		t.Fatalf("examples %v, checks for %d", files, len(checks))
	}
	for _, file := range files {
		name := filepath.Base(file)
		t.Run(name, func(t *testing.T) {
			check, ok := checks[name]
			if !ok {
				t.Fatalf("no check for %s", name)
			}
			check(t, exampleRoutes(t, name))
		})
	}
}

// Every example also loads and provisions in a real Caddy (`caddy validate`):
// the TLS transport, the placeholders and the default Badger store included.
func TestExampleValidate(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(examplesDir, "*.Caddyfile"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no examples: %v", err)
	}
	for _, file := range files {
		if out, err := caddyCommand(t, time.Minute, "validate", "--config", file, "--adapter", "caddyfile"); err != nil || !strings.Contains(out, "Valid configuration") {
			t.Errorf("caddy validate %s: %v\n%s", file, err, out)
		}
	}
}

// The gateway example itself, in a real Caddy in front of real upstreams:
// a keyed multipart upload larger than the default max_body goes upstream
// once and its retry is replayed byte for byte; another file under the same
// key is a conflict.
func TestExampleGatewayFileUpload(t *testing.T) {
	batches := batchesbackend.New()
	up := testupstream.Start(t, func(w http.ResponseWriter, r *http.Request, n int) {
		if r.URL.Path == "/v1/files" {
			filesUpstream(w, r, n)
			return
		}
		batches.ServeHTTP(w, r)
	})
	upstream := up.Addr()
	// uploads are the requests that reached the files endpoint.
	uploads := func() (n int, last []byte) {
		for _, r := range up.Requests() {
			if strings.HasPrefix(r.RequestURI, "/v1/files") {
				n, last = n+1, r.Body
			}
		}
		return n, last
	}

	src, err := os.ReadFile(filepath.Join(examplesDir, "gateway.Caddyfile"))
	if err != nil {
		t.Fatal(err)
	}
	site := string(src)
	for old, repl := range map[string]string{
		":8080 {":        fmt.Sprintf("http://localhost:%d {\n\t%s", httpPort, warmUpRoute),
		"localhost:9000": upstream,
	} {
		if strings.Count(site, old) != 1 {
			t.Fatalf("gateway.Caddyfile has %q %d times, want once", old, strings.Count(site, old))
		}
		site = strings.Replace(site, old, repl, 1)
	}
	loadConfig(t, globalOptions(quietLog)+site, "caddyfile")
	client := newClient(t)
	base := fmt.Sprintf("http://localhost:%d", httpPort)
	warmUp(t, client, base+warmUpPath, "", generation)
	key := uniqueKey("upload")
	upload := func(contentType string, body []byte, key string) reply {
		t.Helper()
		headers := []string{"Content-Type", contentType, "Authorization", "Bearer sk-examples"}
		if key != "" {
			headers = append(headers, "Idempotency-Key", key)
		}
		return sendTo(t, client, http.MethodPost, base+"/v1/files", body, headers...)
	}

	// 3 MiB: over the default max_body of 1 MiB, under the example's 200MiB.
	content := bytes.Repeat([]byte(`{"custom_id":"r","method":"POST","url":"/v1/chat/completions","body":{}}`+"\n"), 3<<20/72)
	const boundary = "example-boundary-0123456789"
	contentType, body := multipartUpload(t, boundary, content)

	first := upload(contentType, body, key)
	if first.Status != http.StatusOK || first.Header.Get("Idempotent-Replayed") != "" {
		t.Fatalf("first upload: %d %s", first.Status, first.Body)
	}
	if n, got := uploads(); n != 1 || !bytes.Equal(got, body) {
		t.Fatalf("upstream got %d uploads, the last one intact: %v", n, bytes.Equal(got, body))
	}

	retry := upload(contentType, body, key)
	if retry.Status != http.StatusOK || !bytes.Equal(retry.Body, first.Body) || retry.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("retry: %d %q (replayed %q), want the first answer %s replayed", retry.Status, retry.Body, retry.Header.Get("Idempotent-Replayed"), first.Body)
	}
	if n, _ := uploads(); n != 1 {
		t.Fatalf("the retry went upstream: %d uploads", n)
	}

	otherType, other := multipartUpload(t, boundary, append([]byte(`{"custom_id":"other"}`+"\n"), content...))
	upload(otherType, other, key).apiError(t, http.StatusConflict, "idempotency_key_reused")
	// The fingerprint is the parts, not the bytes: the same file under a new
	// boundary, as an SDK that rebuilds its form for each retry sends it, is
	// the same request and replays.
	newType, newBoundary := multipartUpload(t, "", content)
	if r := upload(newType, newBoundary, key); r.Status != http.StatusOK || !bytes.Equal(r.Body, first.Body) || r.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("the same file under a new boundary: %d %q, want the first answer replayed", r.Status, r.Body)
	}
	if n, _ := uploads(); n != 1 {
		t.Fatalf("a conflicting upload went upstream: %d uploads", n)
	}

	// Without a key an upload passes through, and the batches route of the
	// same gateway still has its own protection.
	if r := upload(contentType, body, ""); r.Status != http.StatusOK || bytes.Equal(r.Body, first.Body) {
		t.Fatalf("keyless upload: %d %s", r.Status, r.Body)
	}
	create := createBody(t, nil, "")
	created := sendTo(t, client, http.MethodPost, base+"/v1/batches", create, "Idempotency-Key", key+"-batch").batch(t)
	again := sendTo(t, client, http.MethodPost, base+"/v1/batches", create, "Idempotency-Key", key+"-batch")
	if b := again.batch(t); b.ID != created.ID || again.Header.Get("Idempotent-Replayed") != "true" || batches.Creates() != 1 {
		t.Fatalf("batch create through the gateway: %s then %s, %d creates", created.ID, b.ID, batches.Creates())
	}
}

// waitIs reports whether a handler's wait is set to d.
func waitIs(wait *caddy.Duration, d time.Duration) bool {
	return wait != nil && time.Duration(*wait) == d
}
