package caddyidempotency

import (
	"bytes"
	"context"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddy-idempotency/caddy-idempotency/idempotency/badgerstore"
	"github.com/caddy-idempotency/caddy-idempotency/internal/batchesbackend"
)

// caddyCommand runs the built cmd/caddy with args in its own data and config
// directories, and returns its combined output and exit error.
func caddyCommand(t *testing.T, timeout time.Duration, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	dir := t.TempDir()
	cmd := exec.CommandContext(ctx, buildCaddy(t), args...)
	cmd.Env = append(os.Environ(), "XDG_DATA_HOME="+dir+"/data", "XDG_CONFIG_HOME="+dir+"/config")
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("caddy %s did not finish within %s:\n%s", strings.Join(args, " "), timeout, out)
	}
	return string(out), err
}

// writeCaddyfile writes a Caddyfile for the caddy command to read.
func writeCaddyfile(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "Caddyfile")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

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
	upstream := httptest.NewServer(backend)
	defer upstream.Close()
	dir := t.TempDir()
	port := freePort()
	config := processCaddyfile(port, "store badger "+dir, upstream.Listener.Addr().String())
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
		writeCaddyfile(t, processCaddyfile(second, "store badger "+dir, upstream.Listener.Addr().String())), "--adapter", "caddyfile")
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
		writeCaddyfile(t, processCaddyfile(second, "store badger "+filepath.Join(notADir, "db"), upstream.Listener.Addr().String())), "--adapter", "caddyfile")
	if err == nil || !strings.Contains(out, "opening badger store at") {
		t.Fatalf("caddy validate of a store under a regular file: %v\n%s", err, out)
	}
}

// `caddy reload` sends a new config to the running process's admin
// endpoint; a record created before the reload replays after it.
func TestConventionReloadKeepsRecords(t *testing.T) {
	backend := batchesbackend.New()
	upstream := httptest.NewServer(backend)
	defer upstream.Close()
	dir := t.TempDir()
	port, admin := freePort(), freePort()
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
`, admin, port, port, gen, dir, 24+gen, upstream.Listener.Addr().String())
	}
	p := startCaddy(t, config(1), port)
	client := &http.Client{Timeout: 10 * time.Second}
	body := createBody(t, nil, "")
	created := sendTo(t, client, http.MethodPost, p.url+"/v1/batches", body, "Idempotency-Key", "k-reload").batch(t)

	out, err := caddyCommand(t, time.Minute, "reload", "--config", writeCaddyfile(t, config(2)), "--adapter", "caddyfile",
		"--address", fmt.Sprintf("localhost:%d", admin))
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

// lockHolder is "another process" holding a Badger directory: Badger's
// flock conflicts within one process too, across two opens.
var lockHolder struct {
	sync.Mutex
	store *badgerstore.Store
}

func init() { caddy.RegisterModule(releaseLockHandler{}) }

// releaseLockHandler closes lockHolder's database when it is provisioned:
// after the routes before it, before the config starts.
type releaseLockHandler struct{}

func (releaseLockHandler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.test_release_lock",
		New: func() caddy.Module { return new(releaseLockHandler) },
	}
}

func (releaseLockHandler) Provision(caddy.Context) error {
	lockHolder.Lock()
	defer lockHolder.Unlock()
	if lockHolder.store == nil {
		return nil
	}
	err := lockHolder.store.Close()
	lockHolder.store = nil
	return err
}

func (releaseLockHandler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	return next.ServeHTTP(w, r)
}

func holdBadger(t *testing.T, dir string) {
	t.Helper()
	s, err := badgerstore.Open(badgerstore.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	lockHolder.Lock()
	lockHolder.store = s
	lockHolder.Unlock()
	t.Cleanup(func() { _ = releaseLockHandler{}.Provision(caddy.Context{}) })
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
			"routes": [{"handle": [
				{"handler": "idempotency", "store": {"backend": "badger", "path": %q}},
				%s
				{"handler": "reverse_proxy", "upstreams": [{"dial": %q}]}
			]}]
		}}}}
	}`, adminPort, httpPort, httpsPort, httpPort, dir, releaser, upstream)
}

// In one process: a directory held at provisioning is opened at the start;
// one still held then fails the load with the reason, and the running config
// stays.
func TestConventionDeferredOpen(t *testing.T) {
	s := newStack(t, "store memory")
	dir := storeDir(t)

	holdBadger(t, dir)
	res, err := http.Post(fmt.Sprintf("http://localhost:%d/load", adminPort), "application/json",
		strings.NewReader(deferredConfig(dir, s.upstream, false)))
	if err != nil {
		t.Fatal(err)
	}
	var msg bytes.Buffer
	_, _ = msg.ReadFrom(res.Body)
	res.Body.Close()
	if res.StatusCode == http.StatusOK || !strings.Contains(msg.String(), "badger store directory "+dir+" is in use by another process") {
		t.Fatalf("load on a held directory: %d %s", res.StatusCode, msg.String())
	}
	body := createBody(t, nil, "")
	s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", "k-before").batch(t) // the memory config still serves

	// Still held at provisioning; let go of before the start.
	s.tester.InitServer(deferredConfig(dir, s.upstream, true), "json")
	if t.Failed() {
		t.FailNow()
	}
	created := s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", "k-deferred").batch(t)
	r := s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", "k-deferred")
	if b := r.batch(t); b.ID != created.ID || r.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("deferred store: %s then %s", created.ID, b.ID)
	}
	if refs, ok := badgerPool.References(dir); !ok || refs != 1 {
		t.Fatalf("the started config holds %d references to its directory (found %v), want 1", refs, ok)
	}
}

// The fields a module's JSON docs show: each has its own doc comment (Caddy's
// docs render a field's doc comment and nothing else), written as sentences,
// and one whose empty value means a default names it.
func TestConventionFieldDocs(t *testing.T) {
	modules := map[string][]string{
		"module.go":       {"Handler"},
		"stores.go":       {"BadgerStore", "MemoryStore"},
		"stores_redis.go": {"RedisStore"},
	}
	// A default, or what happens without the field, in so many words.
	statesDefault := regexp.MustCompile(`(?i)\bdefault\b|\brequired\b`)
	fset := token.NewFileSet()
	for file, types := range modules {
		f, err := parser.ParseFile(fset, file, nil, parser.ParseComments)
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range types {
			spec := findStruct(f, name)
			if spec == nil {
				t.Errorf("%s: no struct %s", file, name)
				continue
			}
			for _, field := range spec.Fields.List {
				tag := ""
				if field.Tag != nil {
					tag = reflect.StructTag(strings.Trim(field.Tag.Value, "`")).Get("json")
				}
				if tag == "" || tag == "-" {
					continue
				}
				jsonName, _, _ := strings.Cut(tag, ",")
				where := fmt.Sprintf("%s: %s.%s (%q)", file, name, field.Names[0].Name, jsonName)
				if len(field.Names) != 1 {
					t.Errorf("%s: %d names share one doc comment", where, len(field.Names))
				}
				doc := strings.TrimSpace(field.Doc.Text())
				switch {
				case doc == "":
					t.Errorf("%s: no doc comment", where)
				case !unicode.IsUpper([]rune(doc)[0]) || !strings.HasSuffix(doc, "."):
					t.Errorf("%s: doc comment is not a sentence: %q", where, doc)
				case !isBool(field.Type) && !statesDefault.MatchString(doc):
					t.Errorf("%s: doc comment does not state the default: %q", where, doc)
				}
			}
		}
	}
}

func findStruct(f *ast.File, name string) *ast.StructType {
	for _, decl := range f.Decls {
		gen, ok := decl.(*ast.GenDecl)
		if !ok {
			continue
		}
		for _, spec := range gen.Specs {
			if ts, ok := spec.(*ast.TypeSpec); ok && ts.Name.Name == name {
				st, _ := ts.Type.(*ast.StructType)
				return st
			}
		}
	}
	return nil
}

func isBool(expr ast.Expr) bool {
	id, ok := expr.(*ast.Ident)
	return ok && id.Name == "bool"
}
