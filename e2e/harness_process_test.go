package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// cmd/caddy as a process of its own, for tests that kill it or run the caddy
// command.

var caddyBinary struct {
	once sync.Once
	path string
	err  error
}

// buildCaddy builds cmd/caddy once per test run, into the run's directory.
func buildCaddy(t *testing.T) string {
	t.Helper()
	caddyBinary.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		caddyBinary.path = filepath.Join(testRoot, "bin", "caddy")
		const pkg = "github.com/caddy-idempotency/caddy-idempotency/cmd/caddy"
		out, err := exec.CommandContext(ctx, "go", "build", "-o", caddyBinary.path, pkg).CombinedOutput()
		if err != nil {
			caddyBinary.err = fmt.Errorf("go build %s: %v\n%s", pkg, err, out)
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
	defer logFile.Close()
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &caddyProcess{cmd: cmd, url: fmt.Sprintf("http://127.0.0.1:%d", port)}
	t.Cleanup(func() { p.kill() })
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(30 * time.Second)
	for {
		res, err := client.Get(p.url + "/healthz")
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
