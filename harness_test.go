package caddyidempotency

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"

	"github.com/caddy-idempotency/caddy-idempotency/internal/batchesbackend"
)

// Every caddytest test in this package shares one in-process Caddy: keep them
// here and off t.Parallel(). Its admin port is picked per run, not caddytest's
// fixed 2999, so two test processes on one machine never configure each
// other's Caddy.

var (
	httpPort  int
	httpsPort int
	adminPort int
	testRoot  string // outlives every Caddy config of the run
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "caddy-idempotency-test-")
	if err != nil {
		panic(err)
	}
	os.Setenv("XDG_DATA_HOME", dir+"/data")
	os.Setenv("XDG_CONFIG_HOME", dir+"/config")
	testRoot = dir
	httpPort, httpsPort, adminPort = freePort(), freePort(), freePort()
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
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

// stack is a real Caddy with the handler in front of a real batches backend.
type stack struct {
	t        *testing.T
	tester   *caddytest.Tester
	backend  *batchesbackend.Server
	upstream string // the backend's host:port
	url      string // Caddy's base URL
	client   *http.Client
}

// newStack starts a batches backend and (re)loads Caddy with the idempotency
// directive configured by block (the lines inside its braces).
func newStack(t *testing.T, block string) *stack {
	t.Helper()
	backend := batchesbackend.New()
	upstream := httptest.NewServer(backend)
	t.Cleanup(upstream.Close)
	s := &stack{
		t:       t,
		tester:  newTester(t),
		backend: backend,
		url:     fmt.Sprintf("http://localhost:%d", httpPort),
		client:  &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 100}},
	}
	s.upstream = upstream.Listener.Addr().String()
	s.load(block, s.upstream)
	return s
}

// load applies a Caddyfile through the admin API: a config reload when Caddy
// already runs.
func (s *stack) load(block, upstream string) {
	s.t.Helper()
	s.tester.InitServer(caddyfileFor(block, upstream), "caddyfile")
	if s.t.Failed() {
		s.t.FailNow()
	}
}

// caddyfileFor is the harness's usual Caddyfile: the handler, configured by
// block, in front of upstream.
func caddyfileFor(block, upstream string) string {
	return testCaddyfile(quietLog, idempotencySite(block, upstream))
}

// quietLog is the usual global log option: errors only.
const quietLog = "log {\n\t\tlevel ERROR\n\t}"

// testCaddyfile is a whole Caddyfile for the shared in-process Caddy: this
// run's ports, the given global options, and one site on httpPort.
func testCaddyfile(globals, site string) string {
	return fmt.Sprintf("{\n\tadmin localhost:%d\n\tpersist_config off\n\thttp_port %d\n\thttps_port %d\n\t%s\n}\nhttp://localhost:%d {\n%s\n}\n",
		adminPort, httpPort, httpsPort, globals, httpPort, site)
}

// idempotencySite is a site body: idempotency on /v1/batches, configured by
// block, then reverse_proxy to upstream.
func idempotencySite(block, upstream string) string {
	return fmt.Sprintf("\tidempotency /v1/batches {\n%s\n\t}\n\treverse_proxy %s", block, upstream)
}

// reply is one response, read whole.
type reply struct {
	Status int
	Header http.Header
	Body   []byte
}

func (r reply) batch(t *testing.T) batchesbackend.Batch {
	t.Helper()
	var b batchesbackend.Batch
	if r.Status != http.StatusOK {
		t.Fatalf("status %d, want 200; body %s", r.Status, r.Body)
	}
	if err := json.Unmarshal(r.Body, &b); err != nil || b.ID == "" {
		t.Fatalf("not a batch: %v; body %s", err, r.Body)
	}
	return b
}

// apiError decodes OpenAI's error envelope and checks its fixed parts.
func (r reply) apiError(t *testing.T, status int, code string) string {
	t.Helper()
	var env struct {
		Error struct {
			Message string          `json:"message"`
			Type    string          `json:"type"`
			Param   json.RawMessage `json:"param"`
			Code    string          `json:"code"`
		} `json:"error"`
	}
	if r.Status != status {
		t.Fatalf("status %d, want %d; body %s", r.Status, status, r.Body)
	}
	if err := json.Unmarshal(r.Body, &env); err != nil {
		t.Fatalf("error body is not the envelope: %v; %s", err, r.Body)
	}
	if env.Error.Code != code || env.Error.Type != "invalid_request_error" || string(env.Error.Param) != "null" {
		t.Fatalf("error envelope %s, want code %q", r.Body, code)
	}
	return env.Error.Message
}

// send posts body to path with the given headers (name, value pairs).
func (s *stack) send(method, path, body string, headers ...string) reply {
	s.t.Helper()
	return sendTo(s.t, s.client, method, s.url+path, body, headers...)
}

// sendTo may run on any goroutine: it reports failures with Errorf and
// returns a zero reply.
func sendTo(t testing.TB, c *http.Client, method, url, body string, headers ...string) reply {
	t.Helper()
	r, err := request(c, method, url, body, headers...)
	if err != nil {
		t.Errorf("%s %s: %v", method, url, err)
	}
	return r
}

// request is sendTo for a request that may fail on purpose: it returns the
// transport error instead of reporting it.
func request(c *http.Client, method, url, body string, headers ...string) (reply, error) {
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		return reply{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer sk-tenant-a")
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	res, err := c.Do(req)
	if err != nil {
		return reply{}, err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	return reply{Status: res.StatusCode, Header: res.Header, Body: b}, err
}

// createBody is a batch create, with the key as body field when key != "".
func createBody(t *testing.T, fields map[string]any, key string) string {
	t.Helper()
	body := map[string]any{
		"input_file_id":     "file-abc123",
		"endpoint":          "/v1/chat/completions",
		"completion_window": "24h",
	}
	for k, v := range fields {
		body[k] = v
	}
	if key != "" {
		body["idempotency_key"] = key
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	if err := enc.Encode(body); err != nil {
		t.Fatal(err)
	}
	return buf.String()
}
