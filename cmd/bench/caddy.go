package main

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// buildCaddy builds ./cmd/caddy of this module into dir. It runs from the
// module root, found by `go env GOMOD`, so the command works from any
// directory of the clone.
func buildCaddy(dir string) (string, error) {
	root, err := moduleRoot()
	if err != nil {
		return "", fmt.Errorf("%w: run from the clone or pass -caddy", err)
	}
	bin := filepath.Join(dir, "caddy")
	// No DWARF: the link is the slow part of the build; pprof does not need it.
	cmd := exec.Command("go", "build", "-ldflags=-w", "-o", bin, "./cmd/caddy")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/caddy: %v\n%s", err, out)
	}
	return bin, nil
}

// moduleRoot is the directory of the module's go.mod, by `go env GOMOD`.
func moduleRoot() (string, error) {
	gomod, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	if mod := string(trimNL(gomod)); mod == "" || mod == os.DevNull {
		return "", fmt.Errorf("not inside the caddy-idempotency module")
	}
	return filepath.Dir(string(trimNL(gomod))), nil
}

func trimNL(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}

// startCaddy runs bin on config in its own process, with env (NAME=value)
// added to its environment, and waits until every port answers /healthz.
func startCaddy(bin, dir, config string, ports []int, env ...string) (*exec.Cmd, error) {
	path := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		return nil, err
	}
	logFile, err := os.Create(filepath.Join(dir, "caddy.log"))
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	cmd := exec.Command(bin, "run", "--config", path, "--adapter", "caddyfile")
	cmd.Env = append(os.Environ(), "XDG_DATA_HOME="+dir+"/data", "XDG_CONFIG_HOME="+dir+"/config")
	cmd.Env = append(cmd.Env, env...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, port := range ports {
		for {
			res, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/healthz", port))
			if err == nil {
				res.Body.Close()
				break
			}
			if time.Now().After(deadline) {
				stopCaddy(cmd)
				log, _ := os.ReadFile(logFile.Name())
				return nil, fmt.Errorf("caddy did not start: %v\n%s", err, log)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return cmd, nil
}

func stopCaddy(cmd *exec.Cmd) {
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
}

// freePorts returns n distinct loopback ports that were free a moment ago.
func freePorts(n int) ([]int, error) {
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	ports := make([]int, n)
	for i := range ports {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		lns = append(lns, ln)
		ports[i] = ln.Addr().(*net.TCPAddr).Port
	}
	return ports, nil
}
