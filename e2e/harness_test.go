package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddytest"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/caddy-idempotency/caddy-idempotency"
	"github.com/caddy-idempotency/caddy-idempotency/internal/batchesbackend"
)

// Every caddytest test in this package shares one in-process Caddy: keep them
// off t.Parallel(). Its admin port is picked per run, not caddytest's fixed
// 2999, so two test processes on one machine never configure each other's
// Caddy.

var (
	httpPort  int
	httpsPort int
	adminPort int
	testRoot  string // outlives every Caddy config of the run
)

func TestMain(m *testing.M) { os.Exit(runTests(m)) }

// runTests runs the tests with everything they write under one directory,
// removed at the end: Caddy's data and config directories, and $TMPDIR, so
// the t.TempDir of a test, the temp files of caddytest and the go build of
// cmd/caddy leave nothing behind either.
func runTests(m *testing.M) int {
	root, err := os.MkdirTemp("", "caddy-idempotency-e2e-")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(root)
	for name, dir := range map[string]string{"XDG_DATA_HOME": "data", "XDG_CONFIG_HOME": "config", "TMPDIR": "tmp"} {
		if err := os.Mkdir(filepath.Join(root, dir), 0o700); err != nil {
			panic(err)
		}
		os.Setenv(name, filepath.Join(root, dir))
	}
	// Caddy set these two from the environment as its package was
	// initialized, before TestMain: caddytest's first config autosaves, and
	// the default storage keeps its locks there.
	caddy.ConfigAutosavePath = filepath.Join(caddy.AppConfigDir(), "autosave.json")
	caddy.DefaultStorage.Path = caddy.AppDataDir()
	testRoot = root
	httpPort, httpsPort, adminPort = freePort(), freePort(), freePort()
	defer unloadCaddy()
	return m.Run()
}

// unloadCaddy loads an empty config into the in-process Caddy, if it runs,
// so that it lets go of its Badger directories and log files.
func unloadCaddy() {
	req, err := http.NewRequest(http.MethodPost, fmt.Sprintf("http://localhost:%d/load", adminPort),
		strings.NewReader(fmt.Sprintf(`{"admin": {"listen": "localhost:%d"}}`, adminPort)))
	if err != nil {
		return
	}
	req.Header.Set("Content-Type", "application/json")
	if res, err := adminClient.Do(req); err == nil {
		res.Body.Close()
	}
}

// siteHost is the host the test site's requests name.
func siteHost() string { return fmt.Sprintf("localhost:%d", httpPort) }

// siteNamespace is the namespace of the test site's records: its host name
// and the listen address of its server.
func siteNamespace() string { return fmt.Sprintf("localhost@:%d", httpPort) }

func newTester(t *testing.T) *caddytest.Tester {
	return caddytest.NewTester(t).WithDefaultOverrides(caddytest.Config{AdminPort: adminPort})
}

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// storeDir is a Badger directory for t that stays until the run ends: Caddy
// keeps a config's database open until the next config replaces it, after
// t's own TempDir is gone.
func storeDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp(testRoot, "badger-")
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// The Caddyfiles of the shared in-process Caddy.

// quietLog is the usual global log option: errors only.
const quietLog = "log {\n\t\tlevel ERROR\n\t}"

// globalOptions is the global options block of every Caddyfile loaded into
// the shared Caddy: this run's ports and admin address, and globals.
func globalOptions(globals string) string {
	return fmt.Sprintf("{\n\tadmin localhost:%d\n\tpersist_config off\n\thttp_port %d\n\thttps_port %d\n\t%s\n}\n",
		adminPort, httpPort, httpsPort, globals)
}

// testCaddyfile is a whole Caddyfile: the given global options, and one
// site on httpPort with the warm-up route.
func testCaddyfile(globals, site string) string {
	return globalOptions(globals) + fmt.Sprintf("http://localhost:%d {\n%s\n\t%s\n}\n", httpPort, site, warmUpRoute)
}

// idempotencySite is a site body: idempotency on /v1/batches, configured by
// block, then reverse_proxy to upstream.
func idempotencySite(block, upstream string) string {
	return fmt.Sprintf("\tidempotency /v1/batches {\n%s\n\t}\n\treverse_proxy %s", block, upstream)
}

// caddyfileFor is the harness's usual Caddyfile: the handler, configured by
// block, in front of upstream.
func caddyfileFor(block, upstream string) string {
	return testCaddyfile(quietLog, idempotencySite(block, upstream))
}

// Configs of several sites, each with its own upstreams, and a warm-up route
// that names the config's generation.

const (
	warmUpPath     = "/e2e-warm-up"
	generationMark = "E2E-GENERATION"
	// warmUpRoute goes nowhere upstream and names the config's generation;
	// warmUpRouteJSON is the same route in a JSON config's routes.
	warmUpRoute     = "handle " + warmUpPath + " {\n\t\trespond \"" + generationMark + "\"\n\t}"
	warmUpRouteJSON = `{"match": [{"path": ["` + warmUpPath + `"]}], "handle": [{"handler": "static_response", "body": "` + generationMark + `"}]}`
)

var (
	generations atomic.Int64
	generation  string // of the config loadSites loaded last
)

// siteBlock is one site block: its address, then its directives, one a
// line, and a warm-up route that goes nowhere upstream and names the
// config's generation.
func siteBlock(address string, lines ...string) string {
	lines = append(lines, warmUpRoute)
	return address + " {\n\t" + strings.Join(lines, "\n\t") + "\n}"
}

// loadSites (re)loads the shared Caddy with the given site blocks.
func loadSites(t *testing.T, sites ...string) {
	t.Helper()
	loadConfig(t, globalOptions(quietLog)+strings.Join(sites, "\n")+"\n", "caddyfile")
}

// loadConfig (re)loads the shared Caddy with config, in the form adapter
// names ("caddyfile", "json"), as a new generation, which its warm-up
// routes name.
func loadConfig(t *testing.T, config, adapter string) {
	t.Helper()
	generation = fmt.Sprintf("generation-%d", generations.Add(1))
	newTester(t).InitServer(strings.ReplaceAll(config, generationMark, generation), adapter)
	if t.Failed() {
		t.FailNow()
	}
}

// localSite is the address of a test's only site, the host siteHost names.
func localSite() string { return "http://" + siteHost() }

// siteURL is a URL on the site localSite serves.
func siteURL(pathAndQuery string) string { return "http://" + siteHost() + pathAndQuery }

// siteClient is a client for the config loadSites just loaded, warmed up
// through the site of host ("" for siteHost).
func siteClient(t *testing.T, host string) *http.Client {
	c := newClient(t)
	if host == "" {
		host = siteHost()
		// siteURL's requests go to localhost, a connection pool of its own.
		warmUp(t, c, siteURL(warmUpPath), host, generation)
	}
	warmUp(t, c, fmt.Sprintf("http://127.0.0.1:%d%s", httpPort, warmUpPath), host, generation)
	return c
}

// waitFor polls cond until it holds, failing after 10s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// opener returns what opens gate, a channel a blocked upstream waits on.
// t's cleanup opens it too if the test did not, whatever way the test
// ended: an owner's request goes upstream without its client's
// cancellation, so only the gate ends it. Call it after starting that
// upstream, so the cleanup runs before the upstream's close waits for its
// handlers.
func opener(t testing.TB, gate chan struct{}) (open func()) {
	var once sync.Once
	open = func() { once.Do(func() { close(gate) }) }
	t.Cleanup(open)
	return open
}

// holdNextCreate makes backend hold the next create until open is called,
// or t ends; see opener.
func holdNextCreate(t testing.TB, backend *batchesbackend.Server) (open func()) {
	gate := make(chan struct{})
	open = opener(t, gate)
	backend.SetFault(batchesbackend.Fault{Block: gate, Times: 1})
	return open
}

// serveBackend serves backend on a loopback port for t and returns its
// host:port.
func serveBackend(t testing.TB, backend http.Handler) string {
	srv := httptest.NewServer(backend)
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

// watchFaults wraps a batches backend and signals on the returned channel
// when a POST starts waiting on a Block or Delay fault: the backend waits on
// the request context's Done, and nothing before that asks for it.
func watchFaults(backend http.Handler) (http.Handler, <-chan struct{}) {
	taken := make(chan struct{}, 16)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			r = r.WithContext(&doneProbe{Context: r.Context(), taken: taken})
		}
		backend.ServeHTTP(w, r)
	}), taken
}

type doneProbe struct {
	context.Context
	once  sync.Once
	taken chan<- struct{}
}

func (c *doneProbe) Done() <-chan struct{} {
	c.once.Do(func() {
		select {
		case c.taken <- struct{}{}:
		default: // nobody is watching this many
		}
	})
	return c.Context.Done()
}

func waitTaken(t *testing.T, taken <-chan struct{}) {
	t.Helper()
	select {
	case <-taken:
	case <-time.After(10 * time.Second):
		t.Fatal("the backend did not take the blocking fault within 10s")
	}
}

// stack is a real Caddy with the handler in front of a real batches backend.
type stack struct {
	t        *testing.T
	backend  *batchesbackend.Server
	upstream string          // the backend's host:port
	taken    <-chan struct{} // see watchFaults
	url      string          // Caddy's base URL
	client   *http.Client
}

// newStack starts a batches backend and (re)loads Caddy with the idempotency
// directive configured by block (the lines inside its braces).
func newStack(t *testing.T, block string) *stack {
	t.Helper()
	return newSiteStack(t, quietLog, func(upstream string) string { return idempotencySite(block, upstream) })
}

// newSiteStack is newStack with global options and a site block of the
// test's own: site gets the backend's host:port and returns what goes inside
// http://localhost:<port> { }.
func newSiteStack(t *testing.T, globals string, site func(upstream string) string) *stack {
	t.Helper()
	backend := batchesbackend.New()
	watched, taken := watchFaults(backend)
	s := &stack{
		t:        t,
		backend:  backend,
		upstream: serveBackend(t, watched),
		taken:    taken,
		url:      fmt.Sprintf("http://localhost:%d", httpPort),
		client:   newClient(t),
	}
	s.loadCaddyfile(testCaddyfile(globals, site(s.upstream)))
	return s
}

// load applies the usual Caddyfile with block through the admin API: a
// config reload when Caddy already runs.
func (s *stack) load(block, upstream string) {
	s.t.Helper()
	s.loadCaddyfile(caddyfileFor(block, upstream))
}

// loadCaddyfile applies a whole Caddyfile through the admin API.
func (s *stack) loadCaddyfile(caddyfile string) {
	s.t.Helper()
	s.loadConfig(caddyfile, "caddyfile")
}

// loadConfig applies config, which has the warm-up route, through the admin
// API, and returns once the stack's client has a connection to the new
// config: after a reload, the old server can still answer on a kept-alive
// connection.
func (s *stack) loadConfig(config, adapter string) {
	s.t.Helper()
	loadConfig(s.t, config, adapter)
	warmUp(s.t, s.client, s.url+warmUpPath, "", generation)
}

// send sends a request to path on the stack's site; see sendTo.
func (s *stack) send(method, path, body string, headers ...string) reply {
	s.t.Helper()
	return sendTo(s.t, s.client, method, s.url+path, body, headers...)
}

// sendConcurrently sends n identical creates at once; replies arrive on the
// channel.
func (s *stack) sendConcurrently(n int, body string, headers ...string) <-chan reply {
	out := make(chan reply, n)
	var start sync.WaitGroup
	start.Add(1)
	for i := 0; i < n; i++ {
		go func() {
			start.Wait()
			out <- sendTo(s.t, s.client, http.MethodPost, s.url+"/v1/batches", body, headers...)
		}()
	}
	start.Done()
	return out
}

// Caddy's admin endpoint.

var adminClient = &http.Client{Timeout: requestTimeout}

// admin calls Caddy's admin endpoint; headers are name, value pairs.
func admin(t *testing.T, method, path, body string, headers ...string) reply {
	t.Helper()
	req, err := http.NewRequest(method, fmt.Sprintf("http://localhost:%d%s", adminPort, path), strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	setHeaders(req, headers)
	r, err := do(adminClient, req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	return r
}

// json decodes an admin answer of status want into v.
func (r reply) json(t *testing.T, want int, v any) {
	t.Helper()
	if r.Status != want {
		t.Fatalf("status %d, want %d; body %s", r.Status, want, r.Body)
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("Content-Type %q; body %s", ct, r.Body)
	}
	if err := json.Unmarshal(r.Body, v); err != nil {
		t.Fatalf("decoding %s: %v", r.Body, err)
	}
}

// adminErr checks Caddy's admin error answer: status and {"error": "..."}
// holding every one of parts.
func (r reply) adminErr(t *testing.T, status int, parts ...string) {
	t.Helper()
	var e struct {
		Error string `json:"error"`
	}
	r.json(t, status, &e)
	for _, p := range parts {
		if !strings.Contains(e.Error, p) {
			t.Fatalf("error %q does not say %q", e.Error, p)
		}
	}
}

// storesInUse is the admin API's list of the stores the running config's
// handlers hold.
func storesInUse(t *testing.T) []storeJSON {
	t.Helper()
	var stores []storeJSON
	admin(t, http.MethodGet, "/idempotency/stores", "").json(t, http.StatusOK, &stores)
	return stores
}

type storeJSON struct{ Name, Backend string }
