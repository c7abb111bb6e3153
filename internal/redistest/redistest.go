// Package redistest runs a real redis-server for tests: a private one on a
// free loopback port (Start), or the one CI provides in REDIS_URL (URL).
package redistest

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

const (
	startTimeout = 10 * time.Second
	stopTimeout  = 5 * time.Second
	// startAttempts retries on another port when a freshly picked one was
	// taken by someone else before redis-server bound it.
	startAttempts = 3
)

// Server is a redis-server process this test started. It keeps no data on
// disk: a Stop or Restart loses every key.
type Server struct {
	tb   testing.TB
	bin  string
	dir  string
	port int

	// Set by StartTLS: the server speaks only TLS and wants this password.
	tlsConfig *tls.Config
	password  string

	// Set by StartCluster and StartSentinel: a config file given first (a
	// sentinel needs one to rewrite), and arguments after the usual ones.
	conf      string
	extraArgs []string

	mu   sync.Mutex
	cmd  *exec.Cmd
	out  *bytes.Buffer
	done chan struct{} // closed when cmd has been waited for
}

// URL returns REDIS_URL when set (a server CI or the developer runs; tests
// sharing it must use a unique key prefix each), else the URL of a private
// server started for t.
func URL(t testing.TB) string {
	t.Helper()
	if u := os.Getenv("REDIS_URL"); u != "" {
		return u
	}
	return Start(t).URL()
}

// UniquePrefix is a key prefix, name-<random>:, that keeps the tests sharing
// one server (the one of URL) apart.
func UniquePrefix(name string) string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return name + "-" + hex.EncodeToString(b) + ":"
}

// Start runs redis-server on a free 127.0.0.1 port, without persistence, and
// returns once it answers PING. t's cleanup kills it. It fails t (never
// skips) when redis-server is not installed.
func Start(t testing.TB) *Server {
	t.Helper()
	s := &Server{tb: t, bin: serverBinary(t), dir: t.TempDir()}
	t.Cleanup(s.kill)
	if err := s.launch(nil); err != nil {
		t.Fatalf("redistest: %v", err)
	}
	return s
}

// serverBinary is redis-server's path; it fails t (never skips) when
// redis-server is not installed.
func serverBinary(t testing.TB) string {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("redis-server not found on PATH: install the Debian package redis-server; .ci/run does (%v)", err)
	}
	return bin
}

// launch starts s on a free port, and on another one when that was taken
// meanwhile. pick, when set, picks any other port s needs for this attempt.
func (s *Server) launch(pick func() error) error {
	var err, lastErr error
	for range startAttempts {
		if s.port, err = freePort(); err != nil {
			return fmt.Errorf("pick a port: %w", err)
		}
		if pick != nil {
			if err := pick(); err != nil {
				return fmt.Errorf("pick a port: %w", err)
			}
		}
		if lastErr = s.start(); lastErr == nil {
			return nil
		}
	}
	return lastErr
}

// StartTLS is Start for a server that speaks only TLS, with a certificate
// for 127.0.0.1 from a fresh CA (see CAFile), and requires password.
func StartTLS(t testing.TB, password string) *Server {
	t.Helper()
	s := &Server{tb: t, bin: serverBinary(t), dir: t.TempDir(), password: password}
	var err error
	if s.tlsConfig, err = writeCertificates(s.dir); err != nil {
		t.Fatalf("redistest: certificates: %v", err)
	}
	t.Cleanup(s.kill)
	if s.port, err = freePort(); err != nil {
		t.Fatalf("redistest: pick a port: %v", err)
	}
	if err := s.start(); err != nil {
		t.Fatalf("redistest: %v", err)
	}
	return s
}

// CAFile is the PEM file of the CA that signed a StartTLS server's certificate.
func (s *Server) CAFile() string { return filepath.Join(s.dir, "ca.pem") }

// Addr is host:port.
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)) }

// URL is redis://host:port.
func (s *Server) URL() string { return "redis://" + s.Addr() }

// Client returns a client of this server, closed by t's cleanup.
func (s *Server) Client(t testing.TB) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: s.Addr(), TLSConfig: s.tlsConfig, Password: s.password})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// Stop shuts the server down (SIGTERM, then SIGKILL if it lingers) and waits
// for it to exit. Its port stays this Server's for Restart.
func (s *Server) Stop() {
	s.tb.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(stopTimeout):
		_ = s.cmd.Process.Kill()
		<-s.done
	}
	s.cmd = nil
}

// Restart stops the server if it runs and starts it again on the same port,
// empty. It fails the test that called Start if it cannot.
func (s *Server) Restart() {
	s.tb.Helper()
	s.Stop()
	if err := s.start(); err != nil {
		s.tb.Fatalf("redistest: restart: %v", err)
	}
}

func (s *Server) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	plainPort := s.port
	if s.tlsConfig != nil {
		plainPort = 0 // TLS only
	}
	var args []string
	if s.conf != "" {
		args = append(args, s.conf)
	}
	args = append(args,
		"--port", strconv.Itoa(plainPort),
		"--bind", "127.0.0.1",
		"--save", "",
		"--appendonly", "no",
		"--dir", s.dir,
		"--daemonize", "no",
		"--logfile", "",
	)
	if s.tlsConfig != nil {
		args = append(args, "--tls-port", strconv.Itoa(s.port),
			"--tls-cert-file", filepath.Join(s.dir, "cert.pem"), "--tls-key-file", filepath.Join(s.dir, "key.pem"),
			"--tls-ca-cert-file", s.CAFile(), "--tls-auth-clients", "no", "--requirepass", s.password)
	}
	args = append(args, s.extraArgs...)
	cmd := exec.Command(s.bin, args...)
	out := new(bytes.Buffer)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = procAttr()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", s.bin, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	s.cmd, s.out, s.done = cmd, out, done

	c := redis.NewClient(&redis.Options{Addr: s.Addr(), MaxRetries: -1, DialTimeout: time.Second,
		TLSConfig: s.tlsConfig, Password: s.password})
	defer c.Close()
	deadline := time.Now().Add(startTimeout)
	for {
		select {
		case <-done:
			s.cmd = nil
			return fmt.Errorf("redis-server on port %d exited at start:\n%s", s.port, out)
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := c.Ping(ctx).Err()
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			<-done
			s.cmd = nil
			return fmt.Errorf("redis-server on port %d did not answer PING within %v (%v):\n%s", s.port, startTimeout, err, out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (s *Server) kill() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.done
	s.cmd = nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
