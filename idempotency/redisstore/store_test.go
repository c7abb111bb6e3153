package redisstore_test

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/caddy-idempotency/caddy-idempotency/idempotency"
	"github.com/caddy-idempotency/caddy-idempotency/idempotency/redisstore"
	"github.com/caddy-idempotency/caddy-idempotency/idempotency/storetest"
	"github.com/caddy-idempotency/caddy-idempotency/internal/redistest"
)

// redisTestClient is a client of redistest.URL: CI's shared server when
// REDIS_URL is set, else a private one for t. Stores on it need their own
// prefix (newTestRedisStore).
func redisTestClient(t *testing.T) *redis.Client {
	t.Helper()
	opts, err := redis.ParseURL(redistest.URL(t))
	if err != nil {
		t.Fatalf("parse redis URL: %v", err)
	}
	c := redis.NewClient(opts)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// testRedisStore knows its prefix, to look at its keys in Redis.
type testRedisStore struct {
	*redisstore.Store
	prefix string
}

func newTestRedisStore(c redis.UniversalClient) testRedisStore {
	var b [8]byte
	_, _ = rand.Read(b[:])
	prefix := fmt.Sprintf("test:%x:", b)
	return testRedisStore{redisstore.New(c, redisstore.Options{Prefix: prefix}), prefix}
}

// redisKey is where the store keeps key's record: prefix + "r:" + hex.
func (s testRedisStore) redisKey(key idempotency.RecordKey) string {
	return s.prefix + "r:" + key.String()
}

const retention = idempotency.InFlightRetention

func randomRecordKey() idempotency.RecordKey {
	var k idempotency.RecordKey
	_, _ = rand.Read(k[:])
	return k
}

func mustRedisBegin(t *testing.T, s idempotency.Store, key idempotency.RecordKey, fp idempotency.Fingerprint, owner idempotency.OwnerToken, lease time.Duration) (idempotency.Record, bool) {
	t.Helper()
	rec, owned, err := s.Begin(t.Context(), key, fp, owner, lease)
	if err != nil {
		t.Fatalf("Begin: %v", err)
	}
	return rec, owned
}

func wantPTTL(t *testing.T, c *redis.Client, key string, lo, hi time.Duration) time.Duration {
	t.Helper()
	got, err := c.PTTL(t.Context(), key).Result()
	if err != nil {
		t.Fatalf("PTTL %s: %v", key, err)
	}
	if got < lo || got > hi {
		t.Fatalf("PTTL %s = %v, want between %v and %v", key, got, lo, hi)
	}
	return got
}

func redisServerTime(t *testing.T, c *redis.Client) time.Time {
	t.Helper()
	now, err := c.Time(t.Context()).Result()
	if err != nil {
		t.Fatalf("TIME: %v", err)
	}
	return now
}

// The shared contract, unchanged: every test its own prefix on one server.
func TestContract(t *testing.T) {
	c := redisTestClient(t)
	storetest.Run(t, func(t *testing.T) idempotency.Store { return newTestRedisStore(c) })
}

// The engine on Redis: concurrent duplicates, one upstream call.
func TestHandler(t *testing.T) {
	c := redisTestClient(t)
	storetest.RunHandler(t, func(t *testing.T) idempotency.Store { return newTestRedisStore(c) })
}

// A stale owner whose lease ran out and whose key was taken over (by a
// request with its fingerprint) can neither renew, complete, release nor
// hold: the new owner's record stays byte for byte.
func TestRedisStaleOwnerRefusedAfterTakeover(t *testing.T) {
	c := redisTestClient(t)
	s := newTestRedisStore(c)
	ctx := t.Context()
	key := randomRecordKey()
	rkey := s.redisKey(key)
	const lease = 200 * time.Millisecond

	ownerA, ownerB := idempotency.NewOwnerToken(), idempotency.NewOwnerToken()
	recA, owned := mustRedisBegin(t, s, key, idempotency.Fingerprint{1}, ownerA, lease)
	if !owned {
		t.Fatal("first Begin not owned")
	}
	if _, owned := mustRedisBegin(t, s, key, idempotency.Fingerprint{1}, ownerB, time.Minute); owned {
		t.Fatal("Begin took over a live lease")
	}
	time.Sleep(time.Until(recA.LeaseUntil)) // the lease must really pass
	deadline := time.Now().Add(3 * time.Second)
	var recB idempotency.Record
	for owned = false; !owned; {
		if time.Now().After(deadline) {
			t.Fatal("no takeover within 3s of the lease's end")
		}
		recB, owned = mustRedisBegin(t, s, key, idempotency.Fingerprint{1}, ownerB, time.Minute)
	}
	if !recB.CreatedAt.Equal(recA.CreatedAt) || recB.Owner != ownerB || recB.Prior != idempotency.StateInFlight {
		t.Fatalf("takeover record %+v, want ownerB's with A's CreatedAt and Prior in_flight", recB)
	}
	before, err := c.Get(ctx, rkey).Bytes()
	if err != nil {
		t.Fatalf("GET: %v", err)
	}
	pttlBefore := wantPTTL(t, c, rkey, time.Minute, time.Minute+retention)

	if err := s.Renew(ctx, key, ownerA, time.Hour); !errors.Is(err, idempotency.ErrNotOwner) {
		t.Errorf("stale Renew = %v, want idempotency.ErrNotOwner", err)
	}
	if err := s.Complete(ctx, key, ownerA, idempotency.Response{Status: 200, Body: []byte("stale")}, time.Hour); !errors.Is(err, idempotency.ErrNotOwner) {
		t.Errorf("stale Complete = %v, want idempotency.ErrNotOwner", err)
	}
	if err := s.Release(ctx, key, ownerA); !errors.Is(err, idempotency.ErrNotOwner) {
		t.Errorf("stale Release = %v, want idempotency.ErrNotOwner", err)
	}
	if err := s.Hold(ctx, key, ownerA, time.Hour); !errors.Is(err, idempotency.ErrNotOwner) {
		t.Errorf("stale Hold = %v, want idempotency.ErrNotOwner", err)
	}
	after, err := c.Get(ctx, rkey).Bytes()
	if err != nil {
		t.Fatalf("GET after the stale owner's calls: %v", err)
	}
	if !bytes.Equal(before, after) {
		t.Fatalf("the new owner's record changed:\n%x\n%x", before, after)
	}
	wantPTTL(t, c, rkey, pttlBefore-time.Second, pttlBefore) // not extended by the stale Renew

	if err := s.Complete(ctx, key, ownerB, idempotency.Response{Status: 200, Body: []byte("b")}, time.Hour); err != nil {
		t.Fatalf("new owner's Complete: %v", err)
	}
}

// An in-flight key lives in Redis for lease + retention (PX), Renew
// moves that, and Get stops reporting the record once its lease passed
// although Redis still keeps it for a late owner.
func TestRedisInFlightRetention(t *testing.T) {
	c := redisTestClient(t)
	s := newTestRedisStore(c)
	ctx := t.Context()
	key, owner := randomRecordKey(), idempotency.NewOwnerToken()
	const lease = 300 * time.Millisecond
	rec, _ := mustRedisBegin(t, s, key, idempotency.Fingerprint{1}, owner, lease)
	rkey := s.redisKey(key)
	wantPTTL(t, c, rkey, lease+retention-200*time.Millisecond, lease+retention)
	if got := rec.LeaseUntil.Sub(rec.CreatedAt); got != lease {
		t.Errorf("LeaseUntil - CreatedAt = %v, want %v", got, lease)
	}

	if err := s.Renew(ctx, key, owner, 10*time.Second); err != nil {
		t.Fatalf("Renew: %v", err)
	}
	wantPTTL(t, c, rkey, 10*time.Second+retention-200*time.Millisecond, 10*time.Second+retention)
	if err := s.Renew(ctx, key, owner, lease); err != nil {
		t.Fatalf("Renew: %v", err)
	}
	rec, ok, err := s.Get(ctx, key)
	if err != nil || !ok {
		t.Fatalf("Get during the lease = ok %v, err %v", ok, err)
	}
	time.Sleep(time.Until(rec.LeaseUntil.Add(50 * time.Millisecond)))
	if _, ok, err := s.Get(ctx, key); err != nil || ok {
		t.Fatalf("Get after the lease = ok %v, err %v; want no live record", ok, err)
	}
	wantPTTL(t, c, rkey, retention-time.Second, retention)
	if err := s.Release(ctx, key, owner); err != nil {
		t.Fatalf("late owner's Release: %v", err)
	}
	if n, err := c.Exists(ctx, rkey).Result(); err != nil || n != 0 {
		t.Fatalf("EXISTS after Release = %d (%v), want 0", n, err)
	}
}

// A completed record carries its TTL in Redis (PX, ms precision) and the
// key is gone from Redis once it expires.
func TestRedisTTLExpiry(t *testing.T) {
	c := redisTestClient(t)
	s := newTestRedisStore(c)
	ctx := t.Context()
	key, owner := randomRecordKey(), idempotency.NewOwnerToken()
	mustRedisBegin(t, s, key, idempotency.Fingerprint{1}, owner, time.Minute)
	const ttl = 400 * time.Millisecond
	before := redisServerTime(t, c)
	if err := s.Complete(ctx, key, owner, idempotency.Response{Status: 200, Body: []byte("done")}, ttl); err != nil {
		t.Fatalf("Complete: %v", err)
	}
	after := redisServerTime(t, c)
	rkey := s.redisKey(key)
	wantPTTL(t, c, rkey, ttl-200*time.Millisecond, ttl)
	rec, ok, err := s.Get(ctx, key)
	if err != nil || !ok {
		t.Fatalf("Get = ok %v, err %v", ok, err)
	}
	if rec.ExpiresAt.Before(before.Add(ttl).Truncate(time.Millisecond)) || rec.ExpiresAt.After(after.Add(ttl)) {
		t.Errorf("ExpiresAt %v, want completion time on the server (%v..%v) + %v", rec.ExpiresAt, before, after, ttl)
	}

	deadline := time.Now().Add(3 * time.Second)
	for {
		n, err := c.Exists(ctx, rkey).Result()
		if err != nil {
			t.Fatalf("EXISTS: %v", err)
		}
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("key %s still in Redis 3s after its TTL of %v", rkey, ttl)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if now := redisServerTime(t, c); now.Before(rec.ExpiresAt) {
		t.Errorf("key gone at server time %v, before ExpiresAt %v", now, rec.ExpiresAt)
	}
	if d, err := c.PTTL(ctx, rkey).Result(); err != nil || d != -2*time.Nanosecond && d != -2*time.Millisecond {
		t.Errorf("PTTL of the expired key = %v (%v), want -2 (no key)", d, err)
	}
	if _, owned := mustRedisBegin(t, s, key, idempotency.Fingerprint{2}, idempotency.NewOwnerToken(), time.Minute); !owned {
		t.Error("Begin after expiry not owned")
	}
}

// Two prefixes on one server never see each other's records.
func TestRedisPrefixesIndependent(t *testing.T) {
	c := redisTestClient(t)
	a, b := newTestRedisStore(c), newTestRedisStore(c)
	ctx := t.Context()
	key := randomRecordKey()
	ownerA, ownerB := idempotency.NewOwnerToken(), idempotency.NewOwnerToken()
	if _, owned := mustRedisBegin(t, a, key, idempotency.Fingerprint{1}, ownerA, time.Minute); !owned {
		t.Fatal("Begin in prefix a not owned")
	}
	if _, owned := mustRedisBegin(t, b, key, idempotency.Fingerprint{2}, ownerB, time.Minute); !owned {
		t.Fatal("Begin of the same key in prefix b not owned: the prefixes share records")
	}
	if err := a.Complete(ctx, key, ownerA, idempotency.Response{Status: 200, Body: []byte("a")}, time.Hour); err != nil {
		t.Fatalf("Complete in a: %v", err)
	}
	if err := b.Complete(ctx, key, ownerA, idempotency.Response{Status: 200}, time.Hour); !errors.Is(err, idempotency.ErrNotOwner) {
		t.Fatalf("a's owner completing in b = %v, want idempotency.ErrNotOwner", err)
	}
	rec, ok, err := b.Get(ctx, key)
	if err != nil || !ok || rec.State != idempotency.StateInFlight || rec.Owner != ownerB {
		t.Fatalf("b's record = %+v (ok %v, err %v), want ownerB's in flight", rec, ok, err)
	}
	if err := b.Release(ctx, key, ownerB); err != nil {
		t.Fatalf("Release in b: %v", err)
	}
	if rec, ok, err := a.Get(ctx, key); err != nil || !ok || rec.State != idempotency.StateCompleted {
		t.Fatalf("a's record after b released = %+v (ok %v, err %v), want completed", rec, ok, err)
	}
	if n, _ := c.Exists(ctx, a.redisKey(key), b.redisKey(key)).Result(); n != 1 {
		t.Fatalf("EXISTS a's and b's keys = %d, want 1 (a's)", n)
	}

	d := redisstore.New(c, redisstore.Options{})
	key = randomRecordKey()
	mustRedisBegin(t, d, key, idempotency.Fingerprint{}, idempotency.NewOwnerToken(), time.Minute)
	if n, _ := c.Exists(ctx, redisstore.DefaultPrefix+"r:"+key.String()).Result(); n != 1 {
		t.Fatalf("an empty Prefix did not store under %q", redisstore.DefaultPrefix)
	}
}

// idempotency.Record times come from the Redis server's clock (TIME), in milliseconds.
func TestRedisServerClock(t *testing.T) {
	c := redisTestClient(t)
	s := newTestRedisStore(c)
	before := redisServerTime(t, c).Truncate(time.Millisecond)
	rec, _ := mustRedisBegin(t, s, randomRecordKey(), idempotency.Fingerprint{1}, idempotency.NewOwnerToken(), 1234*time.Millisecond)
	after := redisServerTime(t, c)
	if rec.CreatedAt.Before(before) || rec.CreatedAt.After(after) {
		t.Fatalf("CreatedAt %v, want between server TIME %v and %v", rec.CreatedAt, before, after)
	}
	if rec.CreatedAt.Sub(rec.CreatedAt.Truncate(time.Millisecond)) != 0 {
		t.Fatalf("CreatedAt %v has sub-millisecond digits", rec.CreatedAt)
	}
	if got := rec.LeaseUntil.Sub(rec.CreatedAt); got != 1234*time.Millisecond {
		t.Fatalf("lease on the server = %v, want 1.234s", got)
	}
}

// A Begin repeated by the same owner (go-redis retries a command whose
// reply was lost) finds its own live record and still owns it.
func TestRedisBeginRepeatedBySameOwner(t *testing.T) {
	s := newTestRedisStore(redisTestClient(t))
	key, owner := randomRecordKey(), idempotency.NewOwnerToken()
	first, _ := mustRedisBegin(t, s, key, idempotency.Fingerprint{1}, owner, time.Minute)
	again, owned := mustRedisBegin(t, s, key, idempotency.Fingerprint{1}, owner, time.Minute)
	if !owned || again != first {
		t.Fatalf("repeated Begin = owned %v, %+v; want owned, the first record %+v", owned, again, first)
	}
	if _, owned := mustRedisBegin(t, s, key, idempotency.Fingerprint{1}, idempotency.NewOwnerToken(), time.Minute); owned {
		t.Fatal("another owner's Begin owns the key too")
	}
}
