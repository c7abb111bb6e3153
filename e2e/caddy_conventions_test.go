package e2e

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/caddy-idempotency/caddy-idempotency/internal/batchesbackend"
)

func TestConventionListModules(t *testing.T) {
	out, err := caddyCommand(t, time.Minute, "list-modules")
	if err != nil {
		t.Fatalf("caddy list-modules: %v\n%s", err, out)
	}
	listed := make(map[string]bool)
	for _, line := range strings.Split(out, "\n") {
		listed[strings.TrimSpace(line)] = true
	}
	for _, id := range []string{
		"http.handlers.idempotency",
		"http.handlers.idempotency.stores.badger",
		"http.handlers.idempotency.stores.memory",
		"http.handlers.idempotency.stores.redis",
	} {
		if !listed[id] {
			t.Errorf("caddy list-modules does not list %s", id)
		}
	}
}

// `caddy validate` and `caddy adapt` of a running Caddy's own config, on
// its Badger directory, pass; a second `caddy run` on that directory fails
// with an error that says why; the running one keeps its records.
func TestConventionValidateWhileRunning(t *testing.T) {
	backend := batchesbackend.New()
	upstream := serveBackend(t, backend)
	dir := t.TempDir()
	port := freePort()
	config := processCaddyfile(port, "store badger "+dir, upstream)
	running := startCaddy(t, config, port)
	client := &http.Client{Timeout: 10 * time.Second}
	body := createBody(t, nil, "")
	created := sendTo(t, client, http.MethodPost, running.url+"/v1/batches", body, "Idempotency-Key", "k-validate").batch(t)

	file := writeCaddyfile(t, config)
	out, err := caddyCommand(t, time.Minute, "validate", "--config", file, "--adapter", "caddyfile")
	if err != nil || !strings.Contains(out, "Valid configuration") {
		t.Fatalf("caddy validate next to the running Caddy: %v\n%s", err, out)
	}
	if !strings.Contains(out, "in use by another process") {
		t.Fatalf("caddy validate does not say it left the held directory unopened:\n%s", out)
	}
	out, err = caddyCommand(t, time.Minute, "adapt", "--config", file, "--adapter", "caddyfile")
	if err != nil || !strings.Contains(out, fmt.Sprintf("%q", dir)) {
		t.Fatalf("caddy adapt next to the running Caddy: %v\n%s", err, out)
	}

	// A config that would run on the held directory does not start.
	second := freePort()
	out, err = caddyCommand(t, time.Minute, "run", "--config",
		writeCaddyfile(t, processCaddyfile(second, "store badger "+dir, upstream)), "--adapter", "caddyfile")
	if err == nil || !strings.Contains(out, "badger store directory "+dir+" is in use by another process") {
		t.Fatalf("a second caddy run on the held directory: %v\n%s", err, out)
	}

	r := sendTo(t, client, http.MethodPost, running.url+"/v1/batches", body, "Idempotency-Key", "k-validate")
	if b := r.batch(t); b.ID != created.ID || r.Header.Get("Idempotent-Replayed") != "true" || backend.Creates() != 1 {
		t.Fatalf("after validate, adapt and a failed run: %s, want the replay of %s; %d creates", b.ID, created.ID, backend.Creates())
	}

	// Where no process holds the directory, validate still opens it, so a
	// directory that cannot be opened fails validation.
	notADir := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(notADir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err = caddyCommand(t, time.Minute, "validate", "--config",
		writeCaddyfile(t, processCaddyfile(second, "store badger "+filepath.Join(notADir, "db"), upstream)), "--adapter", "caddyfile")
	if err == nil || !strings.Contains(out, "opening badger store at") {
		t.Fatalf("caddy validate of a store under a regular file: %v\n%s", err, out)
	}
}

// `caddy reload` sends a new config to the running process's admin
// endpoint; a record created before the reload replays after it.
func TestConventionReloadKeepsRecords(t *testing.T) {
	backend := batchesbackend.New()
	upstream := serveBackend(t, backend)
	dir := t.TempDir()
	port, adminAt := freePort(), freePort()
	config := func(gen int) string {
		return fmt.Sprintf(`{
	admin localhost:%d
	http_port %d
	persist_config off
}
http://127.0.0.1:%d {
	respond /healthz 200
	header {
		defer
		X-Config-Gen %d
	}
	idempotency /v1/batches {
		store badger %s
		ttl %dh
	}
	reverse_proxy %s
}
`, adminAt, port, port, gen, dir, 24+gen, upstream)
	}
	p := startCaddy(t, config(1), port)
	client := &http.Client{Timeout: 10 * time.Second}
	body := createBody(t, nil, "")
	created := sendTo(t, client, http.MethodPost, p.url+"/v1/batches", body, "Idempotency-Key", "k-reload").batch(t)

	out, err := caddyCommand(t, time.Minute, "reload", "--config", writeCaddyfile(t, config(2)), "--adapter", "caddyfile",
		"--address", fmt.Sprintf("localhost:%d", adminAt))
	if err != nil {
		t.Fatalf("caddy reload: %v\n%s", err, out)
	}
	r := sendTo(t, client, http.MethodPost, p.url+"/v1/batches", body, "Idempotency-Key", "k-reload")
	if gen := r.Header.Get("X-Config-Gen"); gen != "2" {
		t.Fatalf("served by config %q after the reload, want 2", gen)
	}
	if b := r.batch(t); b.ID != created.ID || r.Header.Get("Idempotent-Replayed") != "true" || backend.Creates() != 1 {
		t.Fatalf("after caddy reload: %s, want the replay of %s; %d creates", b.ID, created.ID, backend.Creates())
	}
}

// deferredConfig is a JSON config with the handler on a Badger directory,
// then (when release) the handler that lets the directory go, then the proxy.
func deferredConfig(dir, upstream string, release bool) string {
	releaser := ""
	if release {
		releaser = `{"handler": "test_release_lock"},`
	}
	return fmt.Sprintf(`{
		"admin": {"listen": "localhost:%d"},
		"logging": {"logs": {"default": {"level": "ERROR"}}},
		"apps": {"http": {"http_port": %d, "https_port": %d, "servers": {"srv0": {
			"listen": [":%d"],
			"automatic_https": {"disable": true},
			"routes": [%s, {"handle": [
				{"handler": "idempotency", "store": {"backend": "badger", "path": %q}},
				%s
				{"handler": "reverse_proxy", "upstreams": [{"dial": %q}]}
			]}]
		}}}}
	}`, adminPort, httpPort, httpsPort, httpPort, warmUpRouteJSON, dir, releaser, upstream)
}

// In one process: a directory held at provisioning is opened at the start;
// one still held then fails the load with the reason, and the running config
// stays. The started config holds the directory once: the admin API lists
// it, and a reload to another store lets it go.
func TestConventionDeferredOpen(t *testing.T) {
	s := newStack(t, "store memory")
	dir := storeDir(t)

	holdBadger(t, dir)
	r := admin(t, http.MethodPost, "/load", deferredConfig(dir, s.upstream, false), "Content-Type", "application/json")
	if r.Status == http.StatusOK || !strings.Contains(string(r.Body), "badger store directory "+dir+" is in use by another process") {
		t.Fatalf("load on a held directory: %d %s", r.Status, r.Body)
	}
	body := createBody(t, nil, "")
	s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", "k-before").batch(t) // the memory config still serves

	// Still held at provisioning; let go of before the start.
	s.loadConfig(deferredConfig(dir, s.upstream, true), "json")
	created := s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", "k-deferred").batch(t)
	r = s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", "k-deferred")
	if b := r.batch(t); b.ID != created.ID || r.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("deferred store: %s then %s", created.ID, b.ID)
	}
	if stores := storesInUse(t); !slices.Contains(stores, storeJSON{"badger:" + dir, "badger"}) {
		t.Fatalf("stores in use %+v, want badger:%s", stores, dir)
	}
	// Neither the failed load nor the deferred open kept a reference: the
	// config that replaces this one releases the last.
	s.load("store memory", s.upstream)
	db, err := badger.Open(badger.DefaultOptions(dir).WithLogger(nil))
	if err != nil {
		t.Fatalf("the directory is still held once no config uses it: %v", err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
}
