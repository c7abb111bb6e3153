package caddyidempotency

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-idempotency/caddy-idempotency/internal/batchesbackend"
)

// Helpers of the TestFidelity* tests: they load whole Caddyfiles (several
// sites, custom upstreams) into the harness's shared in-process Caddy.

// fidCaddyfile is a whole Caddyfile for the shared in-process Caddy: this
// run's ports and admin address, errors-only logs, and the given site
// blocks, whose warm-up routes answer generation.
func fidCaddyfile(generation string, sites ...string) string {
	return fmt.Sprintf("{\n\tadmin localhost:%d\n\tpersist_config off\n\thttp_port %d\n\thttps_port %d\n\t%s\n}\n%s\n",
		adminPort, httpPort, httpsPort, quietLog, strings.ReplaceAll(strings.Join(sites, "\n"), fidGenerationMark, generation))
}

// fidSite is one site block: its address, then its directives, one a line,
// and a warm-up route that goes nowhere upstream and names the config's
// generation.
func fidSite(address string, lines ...string) string {
	lines = append(lines, "handle "+fidWarmUpPath+" {\n\t\trespond \""+fidGenerationMark+"\"\n\t}")
	return address + " {\n\t" + strings.Join(lines, "\n\t") + "\n}"
}

const (
	fidWarmUpPath     = "/fidelity-warm-up"
	fidGenerationMark = "FIDELITY-GENERATION"
)

var (
	fidGenerations atomic.Int64
	fidGeneration  string // of the config fidLoad loaded last
)

// fidWarmUp opens a keep-alive connection of c to the config just loaded,
// retrying until one is answered with want ("" for any answer): a reload
// can reset a connection queued on Caddy's old socket or kept alive by its
// old server (README, What is not promised), and a test's first request
// must not be it.
func fidWarmUp(t *testing.T, c *http.Client, url, host, want string) {
	t.Helper()
	var last string
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		req, err := http.NewRequest(http.MethodGet, url, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Host = host
		res, err := c.Do(req)
		if err == nil {
			b, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if want == "" || string(b) == want {
				return
			}
			last = fmt.Sprintf("answer %q", b)
			c.CloseIdleConnections() // a connection to the old server
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			t.Fatalf("Caddy did not answer with the new config after the load: %s", last)
		}
	}
}

// fidLoad (re)loads the shared Caddy with the given site blocks.
func fidLoad(t *testing.T, sites ...string) {
	t.Helper()
	fidGeneration = fmt.Sprintf("generation-%d", fidGenerations.Add(1))
	newTester(t).InitServer(fidCaddyfile(fidGeneration, sites...), "caddyfile")
	if t.Failed() {
		t.FailNow()
	}
}

// fidLocalSite is the address of a test's only site, the host siteHost names.
func fidLocalSite() string { return "http://" + siteHost() }

// fidURL is a URL on the site fidLocalSite serves.
func fidURL(pathAndQuery string) string { return "http://" + siteHost() + pathAndQuery }

// fidClient is a client for the config just loaded, warmed up through the
// site of host ("" for siteHost): its own connections, so none is a
// keep-alive left over from a config a reload replaced. It never asks for or
// decodes a Content-Encoding by itself, so tests see the bytes sent.
func fidClient(t *testing.T, host string) *http.Client {
	tr := &http.Transport{DisableCompression: true, MaxIdleConnsPerHost: 16, ExpectContinueTimeout: time.Second}
	t.Cleanup(tr.CloseIdleConnections)
	c := &http.Client{Timeout: 20 * time.Second, Transport: tr}
	if host == "" {
		host = siteHost()
		// fidURL's requests go to localhost, a connection pool of its own.
		fidWarmUp(t, c, fidURL(fidWarmUpPath), host, fidGeneration)
	}
	fidWarmUp(t, c, fmt.Sprintf("http://127.0.0.1:%d%s", httpPort, fidWarmUpPath), host, fidGeneration)
	return c
}

// fidSend sends one request and reads the whole reply. headers are name,
// value pairs; "Host" sets the request's host. Authorization and
// Content-Type default to one tenant's bearer and JSON. It may run on any
// goroutine: a transport error is reported with Errorf and gives a zero reply.
func fidSend(t testing.TB, c *http.Client, method, url string, body []byte, headers ...string) reply {
	t.Helper()
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		t.Errorf("%s %s: %v", method, url, err)
		return reply{}
	}
	req.Header.Set("Authorization", "Bearer sk-fidelity")
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(headers); i += 2 {
		if headers[i] == "Host" {
			req.Host = headers[i+1]
			continue
		}
		req.Header.Set(headers[i], headers[i+1])
	}
	res, err := c.Do(req)
	if err != nil {
		t.Errorf("%s %s: %v", method, url, err)
		return reply{}
	}
	defer res.Body.Close()
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(res.Body); err != nil {
		t.Errorf("%s %s: reading the reply: %v", method, url, err)
	}
	return reply{Status: res.StatusCode, Header: res.Header, Body: buf.Bytes()}
}

// fidKey is a key no earlier run of the process used: the memory store and
// the default Badger directory outlive a test.
func fidKey(name string) string {
	return name + "-" + strconv.FormatInt(time.Now().UnixNano(), 36)
}

// fidFresh checks that r is a 200 the upstream just made, not a replay.
func fidFresh(t testing.TB, r reply) {
	t.Helper()
	if r.Status != http.StatusOK || r.Header.Get("Idempotent-Replayed") != "" {
		t.Fatalf("want a fresh 200: got %d (Idempotent-Replayed %q) %s", r.Status, r.Header.Get("Idempotent-Replayed"), r.Body)
	}
}

// fidReplay checks that r replays first: its status and body bytes, marked.
func fidReplay(t testing.TB, r, first reply) {
	t.Helper()
	if r.Status != first.Status || !bytes.Equal(r.Body, first.Body) || r.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("want a replay of %d %s; got %d (Idempotent-Replayed %q) %s",
			first.Status, first.Body, r.Status, r.Header.Get("Idempotent-Replayed"), r.Body)
	}
}

// fidConflict checks that r is the key-reused refusal.
func fidConflict(t *testing.T, r reply) {
	t.Helper()
	r.apiError(t, http.StatusConflict, "idempotency_key_reused")
	if r.Header.Get("x-should-retry") != "false" {
		t.Fatalf("key reused without x-should-retry: false: %v", r.Header)
	}
}

// fidNotStored checks that r is the refusal of a retry whose first request
// succeeded with a response too large to keep.
func fidNotStored(t *testing.T, r reply) {
	t.Helper()
	msg := r.apiError(t, http.StatusConflict, "idempotency_response_not_stored")
	if r.Header.Get("x-should-retry") != "false" || !strings.Contains(msg, "succeeded") {
		t.Fatalf("not stored: x-should-retry %q, message %q", r.Header.Get("x-should-retry"), msg)
	}
}

// fidWaitFor polls cond until it holds, failing after 10s.
func fidWaitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// fidOpener returns what opens gate, a channel a blocked upstream waits
// on. t's cleanup opens it too if the test did not: call it after starting
// that upstream, so the cleanup runs before the upstream's close waits for
// its handlers.
func fidOpener(t *testing.T, gate chan struct{}) (open func()) {
	var once sync.Once
	open = func() { once.Do(func() { close(gate) }) }
	t.Cleanup(open)
	return open
}

// newFidBatches serves backend on a loopback port for t and returns its address.
func newFidBatches(t *testing.T, backend *batchesbackend.Server) string {
	srv := httptest.NewServer(backend)
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}
