package caddyidempotency

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/caddy-idempotency/caddy-idempotency/internal/batchesbackend"
)

var caddyBinary struct {
	once sync.Once
	path string
	err  error
}

// buildCaddy builds cmd/caddy once per test run, for tests that need a real
// process to kill.
func buildCaddy(t *testing.T) string {
	t.Helper()
	caddyBinary.once.Do(func() {
		dir, err := os.MkdirTemp("", "caddy-idempotency-bin-")
		if err != nil {
			caddyBinary.err = err
			return
		}
		caddyBinary.path = filepath.Join(dir, "caddy")
		out, err := exec.Command("go", "build", "-o", caddyBinary.path, "./cmd/caddy").CombinedOutput()
		if err != nil {
			caddyBinary.err = fmt.Errorf("go build ./cmd/caddy: %v\n%s", err, out)
		}
	})
	if caddyBinary.err != nil {
		t.Fatal(caddyBinary.err)
	}
	return caddyBinary.path
}

// caddyProcess is cmd/caddy running a Caddyfile in its own process.
type caddyProcess struct {
	cmd *exec.Cmd
	url string
}

func startCaddy(t *testing.T, caddyfile string, port int) *caddyProcess {
	t.Helper()
	dir := t.TempDir()
	config := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(config, []byte(caddyfile), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(buildCaddy(t), "run", "--config", config, "--adapter", "caddyfile")
	cmd.Env = append(os.Environ(), "XDG_DATA_HOME="+dir+"/data", "XDG_CONFIG_HOME="+dir+"/config")
	logFile, err := os.Create(filepath.Join(dir, "caddy.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &caddyProcess{cmd: cmd, url: fmt.Sprintf("http://127.0.0.1:%d", port)}
	t.Cleanup(func() { p.kill() })
	deadline := time.Now().Add(30 * time.Second)
	for {
		res, err := http.Get(p.url + "/healthz")
		if err == nil {
			res.Body.Close()
			return p
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(logFile.Name())
			t.Fatalf("caddy did not start: %v\n%s", err, log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// kill sends SIGKILL: no Cleanup, no Badger Close.
func (p *caddyProcess) kill() {
	if p.cmd.ProcessState == nil {
		_ = p.cmd.Process.Kill()
		_ = p.cmd.Wait()
	}
}

func processCaddyfile(port int, block, upstream string) string {
	return fmt.Sprintf(`{
	admin off
	http_port %d
	persist_config off
}
http://127.0.0.1:%d {
	respond /healthz 200
	idempotency /v1/batches {
%s
	}
	reverse_proxy %s
}
`, port, port, block, upstream)
}

func TestReplayAfterProcessKillAndRestart(t *testing.T) {
	backend := batchesbackend.New()
	upstream := httptest.NewServer(backend)
	defer upstream.Close()
	port := freePort()
	config := processCaddyfile(port, "store badger "+t.TempDir(), upstream.Listener.Addr().String())
	client := &http.Client{Timeout: 10 * time.Second}
	body := createBody(t, nil, "")

	first := startCaddy(t, config, port)
	created := sendTo(t, client, http.MethodPost, first.url+"/v1/batches", body, "Idempotency-Key", "k-kill").batch(t)
	first.kill()

	second := startCaddy(t, config, port)
	r := sendTo(t, client, http.MethodPost, second.url+"/v1/batches", body, "Idempotency-Key", "k-kill")
	if b := r.batch(t); b.ID != created.ID || b.CreatedAt != created.CreatedAt || r.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("after kill -9 and restart got %s, want replay of %s", b.ID, created.ID)
	}
	if n := backend.Creates(); n != 1 {
		t.Fatalf("backend creates = %d, want 1", n)
	}
}
