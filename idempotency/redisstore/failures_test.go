package redisstore_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/caddy-idempotency/caddy-idempotency/idempotency"
	"github.com/caddy-idempotency/caddy-idempotency/internal/redistest"
)

// A value the store did not write is an error, never a panic or a record.
func TestRedisForeignValue(t *testing.T) {
	c := redisTestClient(t)
	s := newTestRedisStore(c)
	ctx := t.Context()
	key := randomRecordKey()
	far := "\x7f" + strings.Repeat("\xff", 7) // a time no clock reaches: the record stays live
	for _, v := range []string{
		"garbage",                  // not the format at all
		strings.Repeat("\x01", 50), // in flight but too short for an owner
		"\x01\x02" + strings.Repeat("\x00", 40) + far + "\xff",                                  // completed, response truncated
		"\x01\x01" + strings.Repeat("\x01", 40) + far + strings.Repeat("\x02", 16) + "\x05",     // in flight, doubts without prior
		"\x01\x01" + strings.Repeat("\x01", 40) + far + strings.Repeat("\x02", 16) + "\x01\x02", // in flight, prior "completed"
		"\x01\x03" + strings.Repeat("\x01", 40) + far,                                           // in doubt without its doubts
		"\x01\x03" + strings.Repeat("\x01", 40) + far + "\x01\x00",                              // in doubt, a byte too many
		"\x01\x04" + strings.Repeat("\x01", 40) + far + "\x01",                                  // unknown state
	} {
		if err := c.Set(ctx, s.redisKey(key), v, time.Minute).Err(); err != nil {
			t.Fatal(err)
		}
		if _, owned, err := s.Begin(ctx, key, idempotency.Fingerprint{}, idempotency.NewOwnerToken(), time.Minute); err == nil || owned {
			t.Errorf("Begin over %q = owned %v, err %v; want an error", v, owned, err)
		}
		if _, ok, err := s.Get(ctx, key); err == nil || ok {
			t.Errorf("Get of %q = ok %v, err %v; want an error", v, ok, err)
		}
	}
	// An unencodable response is refused before Redis is touched.
	owner := idempotency.NewOwnerToken()
	key = randomRecordKey()
	mustRedisBegin(t, s, key, idempotency.Fingerprint{}, owner, time.Minute)
	if err := s.Complete(ctx, key, owner, idempotency.Response{Status: 1000}, time.Hour); err == nil || errors.Is(err, idempotency.ErrNotOwner) {
		t.Errorf("Complete with status 1000 = %v, want an encoding error", err)
	}
	if rec, ok, err := s.Get(ctx, key); err != nil || !ok || rec.State != idempotency.StateInFlight {
		t.Errorf("record after the refused Complete = %+v (ok %v, err %v), want still in flight", rec, ok, err)
	}
}

// With the server stopped every operation returns an error (the engine
// answers 503) within the client's timeouts; after a restart the same store
// and client work again.
func TestRedisServerStoppedAndRestarted(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client(t)
	s := newTestRedisStore(c)
	ctx := t.Context()
	key, owner := randomRecordKey(), idempotency.NewOwnerToken()
	mustRedisBegin(t, s, key, idempotency.Fingerprint{1}, owner, time.Minute)

	srv.Stop()
	start := time.Now()
	_, owned, err := s.Begin(ctx, randomRecordKey(), idempotency.Fingerprint{1}, idempotency.NewOwnerToken(), time.Minute)
	took := time.Since(start)
	if err == nil || owned || errors.Is(err, idempotency.ErrNotOwner) {
		t.Fatalf("Begin with the server stopped = owned %v, err %v; want a store error", owned, err)
	}
	t.Logf("Begin with the server stopped failed after %v: %v", took, err)
	if took > 10*time.Second {
		t.Errorf("Begin took %v to fail", took)
	}
	// The other operations, at once (each takes as long as Begin did).
	var wg sync.WaitGroup
	for name, op := range map[string]func() error{
		"Renew":    func() error { return s.Renew(ctx, key, owner, time.Minute) },
		"Complete": func() error { return s.Complete(ctx, key, owner, idempotency.Response{Status: 200}, time.Hour) },
		"Release":  func() error { return s.Release(ctx, key, owner) },
		"Get":      func() error { _, _, err := s.Get(ctx, key); return err },
	} {
		wg.Go(func() {
			if err := op(); err == nil || errors.Is(err, idempotency.ErrNotOwner) {
				t.Errorf("%s with the server stopped = %v, want a store error", name, err)
			}
		})
	}
	wg.Wait()
	start = time.Now()
	_, _, err = s.Begin(ctx, randomRecordKey(), idempotency.Fingerprint{1}, idempotency.NewOwnerToken(), time.Minute)
	t.Logf("the next Begin failed after %v: %v", time.Since(start), err)

	srv.Restart()
	// go-redis, after failed dials, probes the server once a second before
	// it dials again: the store recovers by itself, within about that.
	restarted := time.Now()
	owner2 := idempotency.NewOwnerToken()
	for {
		_, owned, err := s.Begin(ctx, key, idempotency.Fingerprint{2}, owner2, time.Minute)
		if err == nil {
			// The restarted server is empty (no persistence here): the key is free.
			if !owned {
				t.Fatal("Begin after restart not owned")
			}
			break
		}
		if time.Since(restarted) > 5*time.Second {
			t.Fatalf("Begin still fails 5s after the restart: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("the store works again %v after the restart", time.Since(restarted))
	if err := s.Complete(ctx, key, owner2, idempotency.Response{Status: 200, Body: []byte("ok")}, time.Hour); err != nil {
		t.Fatalf("Complete after restart: %v", err)
	}
}

// A context deadline that passes while Redis does not answer ends the call,
// given a client with ContextTimeoutEnabled (without it, go-redis waits for
// its ReadTimeout whatever the context says).
func TestRedisContextDeadline(t *testing.T) {
	srv := redistest.Start(t) // private: the pause holds every client
	c := redis.NewClient(&redis.Options{Addr: srv.Addr(), ContextTimeoutEnabled: true})
	t.Cleanup(func() { _ = c.Close() })
	s := newTestRedisStore(c)
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	// CLIENT PAUSE holds every write command of other clients.
	if err := c.Do(t.Context(), "CLIENT", "PAUSE", "1000", "WRITE").Err(); err != nil {
		t.Fatalf("CLIENT PAUSE: %v", err)
	}
	defer c.Do(context.Background(), "CLIENT", "UNPAUSE")
	start := time.Now()
	_, _, err := s.Begin(ctx, randomRecordKey(), idempotency.Fingerprint{}, idempotency.NewOwnerToken(), time.Minute)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Begin against a paused server = %v, want context.DeadlineExceeded", err)
	}
	if took := time.Since(start); took > 500*time.Millisecond {
		t.Fatalf("Begin returned %v after its 50ms deadline", took)
	}
}
