package main

import (
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"time"
)

// The peer (../shared/peer, see its README) is Fiber v3's proxy middleware
// in front of the same batches upstream, behind Fiber v3's idempotency
// middleware. It runs as one process per store (plain: no middleware), so
// that each one's CPU is its own.

// defaultPeerDir is the peer's source, relative to the module root.
const defaultPeerDir = "../shared/peer/fiber"

// peerStores are the -store values the peer has; it has no Badger store.
var peerStores = []string{"memory", "redis"}

// peerDir resolves -peer: "off" is none; the default is used only when it
// exists (relative to the module root); any other directory must exist.
func peerDir(flagValue string, explicit bool) (string, error) {
	if flagValue == "off" || flagValue == "" {
		return "", nil
	}
	dir := flagValue
	if !explicit && !filepath.IsAbs(dir) {
		root, err := moduleRoot()
		if err != nil {
			return "", nil // no module, no default peer
		}
		dir = filepath.Join(root, dir)
	}
	if _, err := os.Stat(filepath.Join(dir, "go.mod")); err != nil {
		if !explicit && errors.Is(err, fs.ErrNotExist) {
			return "", nil
		}
		return "", fmt.Errorf("-peer %s: %w", flagValue, err)
	}
	return filepath.Abs(dir)
}

// buildPeer builds the peer's source in src into dir.
func buildPeer(src, dir string) (string, error) {
	bin := filepath.Join(dir, "fiberpeer")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	cmd.Dir = src
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build the peer in %s: %v\n%s", src, err, out)
	}
	return bin, nil
}

// startPeer runs the peer with store (plain, memory or redis) on port and
// waits until it answers.
func startPeer(bin, dir, store string, port int, upstream, redisURL string) (*exec.Cmd, error) {
	logFile, err := os.Create(filepath.Join(dir, "peer-"+store+".log"))
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	args := []string{"-addr", fmt.Sprintf("127.0.0.1:%d", port), "-upstream", "http://" + upstream, "-store", store}
	if store == "redis" {
		args = append(args, "-redis", redisURL)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	// Any answer will do: the peer proxies every path to the upstream.
	for deadline := time.Now().Add(30 * time.Second); ; {
		res, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/healthz", port))
		if err == nil {
			res.Body.Close()
			return cmd, nil
		}
		if time.Now().After(deadline) {
			stopCaddy(cmd)
			log, _ := os.ReadFile(logFile.Name())
			return nil, fmt.Errorf("the peer (-store %s) did not start: %v\n%s", store, err, log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func peerHas(store string) bool { return slices.Contains(peerStores, store) }
