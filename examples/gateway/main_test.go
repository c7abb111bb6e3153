package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// The test drives the gateway as its users run it: a binary built with go
// build, started against an upstream, spoken to over HTTP.

const (
	requestTimeout = 10 * time.Second // every HTTP request the test sends
	startTimeout   = 30 * time.Second // from exec to "listening"
	stopTimeout    = 20 * time.Second // from SIGTERM to exit
	buildTimeout   = 5 * time.Minute  // a cold build links Badger and go-redis
)

const batchBody = `{"input_file_id":"file-abc","endpoint":"/v1/chat/completions","completion_window":"24h"}`

func TestGatewayStores(t *testing.T) {
	bin := buildGateway(t)
	mods := modules(t, bin)
	for _, want := range []string{"github.com/dgraph-io/badger/v4", "github.com/redis/go-redis/v9"} {
		if !hasModule(mods, want) {
			t.Errorf("the gateway built with every store does not list %s: %v", want, mods)
		}
	}
	if hasModule(mods, "github.com/caddyserver/caddy") {
		t.Errorf("the gateway links Caddy: %v", mods)
	}

	t.Run("memory", func(t *testing.T) {
		up := newUpstream(t)
		g := startGateway(t, bin, "-upstream", up.URL, "-store", "memory")
		checkReplayAndReuse(t, g, up)
		g.stop()
	})

	t.Run("badger", func(t *testing.T) {
		up := newUpstream(t)
		dir := t.TempDir()
		// A namespace of its own: the default one names the listener's port,
		// which a restart on port 0 changes.
		args := []string{"-upstream", up.URL, "-store", "badger", "-badger-dir", dir, "-namespace", "test"}
		g := startGateway(t, bin, args...)
		key := checkReplayAndReuse(t, g, up)
		g.stop()

		// The records outlive the process.
		g = startGateway(t, bin, args...)
		resp := post(t, g.url, "Bearer sk-a", key, batchBody)
		if resp.status != http.StatusOK || resp.header.Get("Idempotent-Replayed") != "true" {
			t.Errorf("after a restart: %d, Idempotent-Replayed %q; want a replay", resp.status, resp.header.Get("Idempotent-Replayed"))
		}
		up.wantCreates(t, 2)
		g.stop()
	})

	t.Run("redis", func(t *testing.T) {
		// A Redis server must be there: without one this fails, never skips.
		redisURL := os.Getenv("REDIS_URL")
		if redisURL == "" {
			redisURL = "redis://127.0.0.1:6390/0"
		}
		up := newUpstream(t)
		// A prefix of its own, since the server may be shared; a short ttl, so
		// the records leave it soon.
		args := []string{"-upstream", up.URL, "-store", "redis", "-redis-url", redisURL,
			"-redis-prefix", "gateway-test:" + randomHex(8) + ":", "-ttl", "1m", "-namespace", "test"}
		a := startGateway(t, bin, args...)
		key := checkReplayAndReuse(t, a, up)

		// A second instance on the same Redis, prefix and namespace: a fleet.
		b := startGateway(t, bin, args...)
		resp := post(t, b.url, "Bearer sk-a", key, batchBody)
		if resp.status != http.StatusOK || resp.header.Get("Idempotent-Replayed") != "true" {
			t.Errorf("on a second instance: %d, Idempotent-Replayed %q; want a replay", resp.status, resp.header.Get("Idempotent-Replayed"))
		}
		up.wantCreates(t, 2)
		a.stop()
		b.stop()
	})
}

// checkReplayAndReuse sends a keyed create, its retry, the key with another
// body, and the key under another credential; it returns the key.
func checkReplayAndReuse(t *testing.T, g *gateway, up *upstream) string {
	t.Helper()
	key := "create-" + randomHex(8)

	first := post(t, g.url, "Bearer sk-a", key, batchBody)
	if first.status != http.StatusOK || first.header.Get("Idempotent-Replayed") != "" {
		t.Fatalf("first create: %d, Idempotent-Replayed %q, %s", first.status, first.header.Get("Idempotent-Replayed"), first.body)
	}
	up.wantCreates(t, 1)

	retry := post(t, g.url, "Bearer sk-a", key, batchBody)
	if retry.status != http.StatusOK || retry.header.Get("Idempotent-Replayed") != "true" || retry.body != first.body {
		t.Errorf("retry: %d, Idempotent-Replayed %q, %s; want 200, true, %s", retry.status, retry.header.Get("Idempotent-Replayed"), retry.body, first.body)
	}
	up.wantCreates(t, 1)

	other := strings.Replace(batchBody, "file-abc", "file-xyz", 1)
	reused := post(t, g.url, "Bearer sk-a", key, other)
	if reused.status != http.StatusConflict || reused.errorCode() != "idempotency_key_reused" {
		t.Errorf("key reused with another body: %d %s; want 409 idempotency_key_reused", reused.status, reused.body)
	}
	up.wantCreates(t, 1)

	// Another credential is another scope: the same key is free there.
	tenant := post(t, g.url, "Bearer sk-b", key, other)
	if tenant.status != http.StatusOK || tenant.header.Get("Idempotent-Replayed") != "" {
		t.Errorf("same key, another credential: %d, Idempotent-Replayed %q; want a create", tenant.status, tenant.header.Get("Idempotent-Replayed"))
	}
	up.wantCreates(t, 2)

	// Observe counted each decision, and logged a line for each.
	decisions := g.counters(t, "idempotency_decisions")
	for outcome, want := range map[string]int64{"stored": 2, "replayed": 1, "conflict": 1} {
		if decisions[outcome] != want {
			t.Errorf("idempotency_decisions[%s] = %d, want %d (all: %v)", outcome, decisions[outcome], want, decisions)
		}
	}
	if !g.logged(`"msg":"idempotency"`, `"outcome":"replayed"`, `"key_hash":"`) {
		t.Errorf("no decision line for the replay in the log:\n%s", g.logs())
	}
	// ObserveStore timed each store call: a Begin per keyed request.
	if calls := g.counters(t, "idempotency_store_calls"); calls["begin"] < 4 {
		t.Errorf("idempotency_store_calls = %v, want 4 begins at least", calls)
	}
	if n := g.gauge(t, "idempotency_in_flight"); n != 0 {
		t.Errorf("idempotency_in_flight = %d once every answer is in, want 0", n)
	}
	return key
}

func TestGatewayWithoutBadgerOrRedis(t *testing.T) {
	bin := buildGateway(t, "-tags", "no_badger,no_redis")
	mods := modules(t, bin)
	for _, m := range []string{"github.com/dgraph-io/badger", "github.com/redis/go-redis", "github.com/caddyserver/caddy"} {
		if hasModule(mods, m) {
			t.Errorf("built with -tags no_badger,no_redis, the gateway still lists %s: %v", m, mods)
		}
	}

	for store, tag := range map[string]string{"badger": "no_badger", "redis": "no_redis"} {
		ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
		out, err := exec.CommandContext(ctx, bin, "-listen", "127.0.0.1:0", "-upstream", "http://127.0.0.1:1",
			"-store", store, "-badger-dir", t.TempDir()).CombinedOutput()
		cancel()
		want := fmt.Sprintf("-store %s: this binary was built with -tags %s, which leaves the %s store out; it has memory", store, tag, store)
		if err == nil || !strings.Contains(string(out), want) {
			t.Errorf("-store %s: exit %v, output %q; want a failure saying %q", store, err, out, want)
		}
	}

	up := newUpstream(t)
	g := startGateway(t, bin, "-upstream", up.URL, "-store", "memory")
	checkReplayAndReuse(t, g, up)
	g.stop()
}

// buildGateway builds this package into a temporary directory. The go
// command's own work directory goes under the test's too (GOTMPDIR): a
// build the timeout kills cannot remove it, and must not leave it in $TMPDIR.
func buildGateway(t *testing.T, flags ...string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "gateway")
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	args := append(append([]string{"build"}, flags...), "-o", bin, ".")
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Env = append(os.Environ(), "GOTMPDIR="+t.TempDir())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return bin
}

// modules lists the module paths `go version -m` reports in bin.
func modules(t *testing.T, bin string) []string {
	t.Helper()
	out, err := exec.Command("go", "version", "-m", bin).Output()
	if err != nil {
		t.Fatalf("go version -m: %v", err)
	}
	var mods []string
	for line := range strings.Lines(string(out)) {
		if f := strings.Fields(line); len(f) >= 2 && (f[0] == "mod" || f[0] == "dep" || f[0] == "=>") {
			mods = append(mods, f[1])
		}
	}
	if len(mods) < 2 {
		t.Fatalf("go version -m lists no dependencies:\n%s", out)
	}
	return mods
}

func hasModule(mods []string, prefix string) bool {
	for _, m := range mods {
		if strings.HasPrefix(m, prefix) {
			return true
		}
	}
	return false
}

// upstream is a batches API that counts its creates.
type upstream struct {
	*httptest.Server
	creates atomic.Int64
}

func newUpstream(t *testing.T) *upstream {
	u := &upstream{}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/v1/batches" {
			http.NotFound(w, r)
			return
		}
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"id":"batch_%d","object":"batch"}`, u.creates.Add(1))
	}))
	t.Cleanup(u.Close)
	return u
}

func (u *upstream) wantCreates(t *testing.T, want int64) {
	t.Helper()
	if got := u.creates.Load(); got != want {
		t.Fatalf("the upstream created %d batches, want %d", got, want)
	}
}

// gateway is a running gateway process.
type gateway struct {
	t          *testing.T
	cmd        *exec.Cmd
	url        string // the gateway
	metricsURL string // its /debug/vars listener
	done       chan struct{}
	exitErr    error // set before done is closed

	mu  sync.Mutex
	log strings.Builder // its stderr: zap's JSON lines
}

// startGateway runs bin on free loopback ports and returns once it listens.
// t's cleanup kills it if the test has not stopped it.
func startGateway(t *testing.T, bin string, args ...string) *gateway {
	t.Helper()
	args = append([]string{"-listen", "127.0.0.1:0", "-metrics-listen", "127.0.0.1:0"}, args...)
	g := &gateway{t: t, cmd: exec.Command(bin, args...), done: make(chan struct{})}
	stderr, err := g.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := g.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(g.kill)

	listening := make(chan [2]string, 2) // serves, addr
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			line := sc.Text()
			g.mu.Lock()
			g.log.WriteString(line + "\n")
			g.mu.Unlock()
			var l struct{ Msg, Serves, Addr string }
			if json.Unmarshal([]byte(line), &l) == nil && l.Msg == "listening" {
				listening <- [2]string{l.Serves, l.Addr}
			}
		}
		_, _ = io.Copy(io.Discard, stderr)
		g.exitErr = g.cmd.Wait() // after the last read of the pipe
		close(g.done)
	}()

	deadline := time.After(startTimeout)
	for g.url == "" || g.metricsURL == "" {
		select {
		case l := <-listening:
			if l[0] == "metrics" {
				g.metricsURL = "http://" + l[1]
			} else {
				g.url = "http://" + l[1]
			}
		case <-g.done:
			t.Fatalf("the gateway exited before listening (%v):\n%s", g.exitErr, g.logs())
		case <-deadline:
			t.Fatalf("the gateway did not listen within %s:\n%s", startTimeout, g.logs())
		}
	}
	return g
}

// stop shuts the gateway down as SIGTERM does in production, and checks it
// exits cleanly, its store closed.
func (g *gateway) stop() {
	g.t.Helper()
	if err := g.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		g.t.Fatalf("SIGTERM: %v", err)
	}
	select {
	case <-g.done:
	case <-time.After(stopTimeout):
		g.t.Fatalf("the gateway did not exit within %s of SIGTERM:\n%s", stopTimeout, g.logs())
	}
	if g.exitErr != nil || !g.logged(`"msg":"store closed"`) {
		g.t.Errorf("after SIGTERM: exit %v, want 0 and the store closed:\n%s", g.exitErr, g.logs())
	}
}

func (g *gateway) kill() {
	select {
	case <-g.done:
		return
	default:
	}
	_ = g.cmd.Process.Kill()
	select {
	case <-g.done:
	case <-time.After(stopTimeout):
		g.t.Errorf("the gateway (pid %d) did not die when killed", g.cmd.Process.Pid)
	}
}

func (g *gateway) logs() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.log.String()
}

// logged reports whether one log line contains every one of parts.
func (g *gateway) logged(parts ...string) bool {
	for line := range strings.Lines(g.logs()) {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(line, p)
		}
		if all {
			return true
		}
	}
	return false
}

// counters reads one expvar map from the gateway's /debug/vars.
func (g *gateway) counters(t *testing.T, name string) map[string]int64 {
	t.Helper()
	var m map[string]int64
	g.expvar(t, name, &m)
	return m
}

// gauge reads one expvar integer from the gateway's /debug/vars.
func (g *gateway) gauge(t *testing.T, name string) int64 {
	t.Helper()
	var n int64
	g.expvar(t, name, &n)
	return n
}

func (g *gateway) expvar(t *testing.T, name string, v any) {
	t.Helper()
	resp := get(t, g.metricsURL+"/debug/vars")
	var vars map[string]json.RawMessage
	if err := json.Unmarshal([]byte(resp.body), &vars); err != nil {
		t.Fatalf("/debug/vars: %v", err)
	}
	if err := json.Unmarshal(vars[name], v); err != nil {
		t.Fatalf("/debug/vars %s: %v in %s", name, err, vars[name])
	}
}

type response struct {
	status int
	header http.Header
	body   string
}

// errorCode is the code of an OpenAI error envelope.
func (r response) errorCode() string {
	var e struct{ Error struct{ Code string } }
	_ = json.Unmarshal([]byte(r.body), &e)
	return e.Error.Code
}

var client = &http.Client{Timeout: requestTimeout}

// post sends a keyed create as an OpenAI SDK does.
func post(t *testing.T, base, auth, key, body string) response {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, base+"/v1/batches", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", auth)
	req.Header.Set("Idempotency-Key", key)
	return do(t, req)
}

func get(t *testing.T, url string) response {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	return do(t, req)
}

func do(t *testing.T, req *http.Request) response {
	t.Helper()
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the body: %v", req.Method, req.URL, err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: string(b)}
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
