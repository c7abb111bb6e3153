package redistest

import (
	"context"
	"fmt"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func TestRedisStartStopRestart(t *testing.T) {
	s := Start(t)
	if !strings.HasPrefix(s.URL(), "redis://127.0.0.1:") || !strings.HasSuffix(s.URL(), s.Addr()) {
		t.Fatalf("URL %q, Addr %q: want redis://127.0.0.1:PORT", s.URL(), s.Addr())
	}
	c := s.Client(t)
	ctx := t.Context()
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatalf("SET: %v", err)
	}
	// No persistence configured: nothing to survive a restart.
	for _, kv := range [][2]string{{"save", ""}, {"appendonly", "no"}, {"bind", "127.0.0.1"}} {
		got, err := c.ConfigGet(ctx, kv[0]).Result()
		if err != nil || got[kv[0]] != kv[1] {
			t.Errorf("CONFIG GET %s = %v (%v), want %q", kv[0], got, err, kv[1])
		}
	}

	addr := s.Addr()
	s.Stop()
	if conn, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		conn.Close()
		t.Fatalf("%s still accepts connections after Stop", addr)
	}
	s.Stop() // a second Stop is a no-op

	s.Restart()
	if s.Addr() != addr {
		t.Fatalf("Restart moved the server from %s to %s", addr, s.Addr())
	}
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatalf("PING after Restart: %v", err)
	}
	if n, err := c.Exists(ctx, "k").Result(); err != nil || n != 0 {
		t.Fatalf("EXISTS k after Restart = %d (%v), want 0: the restarted server is empty", n, err)
	}
}

// Cleanup kills the server: its port no longer answers after the test.
func TestRedisCleanupKills(t *testing.T) {
	var addr string
	t.Run("inner", func(t *testing.T) { addr = Start(t).Addr() })
	if conn, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		conn.Close()
		t.Fatalf("%s still accepts connections after the test that started it ended", addr)
	}
}

func TestRedisURLPrefersEnv(t *testing.T) {
	t.Setenv("REDIS_URL", "redis://example.invalid:1")
	if got := URL(t); got != "redis://example.invalid:1" {
		t.Fatalf("URL with REDIS_URL set = %q", got)
	}
}

func TestRedisURLStartsServer(t *testing.T) {
	t.Setenv("REDIS_URL", "")
	opts, err := redis.ParseURL(URL(t))
	if err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(opts)
	defer c.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatalf("PING the server URL started: %v", err)
	}
}

// Without redis-server on PATH, Start fails the test with the install hint.
func TestRedisMissingBinaryFails(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	ft := &fatalRecorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		Start(ft)
	}()
	<-done
	if !strings.Contains(ft.msg, "redis-server not found on PATH") || !strings.Contains(ft.msg, "Debian package redis-server") {
		t.Fatalf("Start without redis-server: fatal %q, want the install hint", ft.msg)
	}
	if ft.skipped {
		t.Fatal("Start skipped instead of failing")
	}
}

// fatalRecorder records Fatalf and Skip instead of ending the real test.
type fatalRecorder struct {
	testing.TB
	msg     string
	skipped bool
}

func (f *fatalRecorder) Helper() {}

func (f *fatalRecorder) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func (f *fatalRecorder) Skip(args ...any)                 { f.skipped = true; runtime.Goexit() }
func (f *fatalRecorder) Skipf(format string, args ...any) { f.skipped = true; runtime.Goexit() }
func (f *fatalRecorder) SkipNow()                         { f.skipped = true; runtime.Goexit() }
