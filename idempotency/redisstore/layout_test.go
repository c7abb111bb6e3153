package redisstore_test

import (
	"bytes"
	"encoding/binary"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/caddy-idempotency/caddy-idempotency/idempotency"
)

func rawRecord(t *testing.T, c *redis.Client, rkey string) []byte {
	t.Helper()
	v, err := c.Get(t.Context(), rkey).Bytes()
	if err != nil {
		t.Fatalf("GET %s: %v", rkey, err)
	}
	return v
}

// inFlightValue is an in-flight record as redisRecordLayout has it; tail is
// what follows the owner token (nothing, or doubts and prior).
func inFlightValue(fp idempotency.Fingerprint, created, leaseUntil time.Time, owner idempotency.OwnerToken, tail ...byte) []byte {
	v := append([]byte{1, 1}, fp[:]...)
	v = binary.BigEndian.AppendUint64(v, uint64(created.UnixMilli()))
	v = binary.BigEndian.AppendUint64(v, uint64(leaseUntil.UnixMilli()))
	v = append(v, owner[:]...)
	return append(v, tail...)
}

// The values Hold and a takeover write, byte for byte, and their expiry
// (PX): a held record is 51 bytes (the header, then its doubts) and lives
// for the hold; the in-flight record of a takeover carries doubts and prior
// after its owner token (68 bytes), which Renew and a repeated Begin keep.
func TestRedisHeldRecordLayout(t *testing.T) {
	c := redisTestClient(t)
	s := newTestRedisStore(c)
	ctx := t.Context()
	key, fp, ownerA := randomRecordKey(), idempotency.Fingerprint{9, 8, 7}, idempotency.NewOwnerToken()
	rkey := s.redisKey(key)
	mustRedisBegin(t, s, key, fp, ownerA, time.Minute)
	fresh := rawRecord(t, c, rkey)
	if len(fresh) != 66 {
		t.Fatalf("fresh in-flight record of %d bytes, want 66 (no doubts, no prior)", len(fresh))
	}

	const hold = 5 * time.Second
	before := redisServerTime(t, c)
	if err := s.Hold(ctx, key, ownerA, hold); err != nil {
		t.Fatalf("Hold: %v", err)
	}
	held := rawRecord(t, c, rkey)
	want := append(append([]byte{1, 3}, fresh[2:42]...), held[42:50]...)
	if want = append(want, 1); !bytes.Equal(held, want) {
		t.Fatalf("held record\n% x\nwant\n% x", held, want)
	}
	if at := time.UnixMilli(int64(binary.BigEndian.Uint64(held[42:50]))); at.Before(before.Add(hold).Truncate(time.Millisecond)) || at.After(redisServerTime(t, c).Add(hold)) {
		t.Errorf("held until %v, want the server's time of the Hold (%v) + %v", at, before, hold)
	}
	wantPTTL(t, c, rkey, hold-time.Second, hold)

	ownerB := idempotency.NewOwnerToken()
	recB, owned := mustRedisBegin(t, s, key, fp, ownerB, time.Minute)
	if !owned || recB.Prior != idempotency.StateInDoubt || recB.Doubts != 1 {
		t.Fatalf("takeover = owned %v, %+v; want owned, Prior in_doubt, Doubts 1", owned, recB)
	}
	took := rawRecord(t, c, rkey)
	if len(took) != 68 || !bytes.Equal(took[:42], fresh[:42]) || !bytes.Equal(took[50:66], ownerB[:]) || took[66] != 1 || took[67] != 3 {
		t.Fatalf("takeover record % x, want the fresh header and createdAt, ownerB, doubts 1, prior 3", took)
	}
	wantPTTL(t, c, rkey, time.Minute+retention-time.Second, time.Minute+retention)

	if err := s.Renew(ctx, key, ownerB, 2*time.Minute); err != nil {
		t.Fatalf("Renew: %v", err)
	}
	if renewed := rawRecord(t, c, rkey); len(renewed) != 68 || !bytes.Equal(renewed[50:], took[50:]) {
		t.Fatalf("renewed record % x lost the owner, doubts or prior of % x", renewed, took)
	}
	again, owned := mustRedisBegin(t, s, key, fp, ownerB, 2*time.Minute)
	if !owned || again.Prior != idempotency.StateInDoubt || again.Doubts != 1 {
		t.Fatalf("repeated Begin of the takeover = owned %v, %+v; want owned, Prior in_doubt, Doubts 1", owned, again)
	}
	if got, ok, err := s.Get(ctx, key); err != nil || !ok || got.Prior != 0 || got.Doubts != 1 {
		t.Fatalf("Get = %+v (ok %v, err %v), want Doubts 1 and no Prior", got, ok, err)
	}

	if err := s.Hold(ctx, key, ownerB, hold); err != nil {
		t.Fatalf("second Hold: %v", err)
	}
	if v := rawRecord(t, c, rkey); len(v) != 51 || v[1] != 3 || v[50] != 2 || !bytes.Equal(v[2:42], fresh[2:42]) {
		t.Fatalf("record held again % x, want in doubt with 2 doubts and the first createdAt", v)
	}
}

// An in-flight record written before doubts were stored (66 bytes) reads
// as Doubts 0: live, it can be held; its owner dead, it is taken over by
// its fingerprint only.
func TestRedisReadsInFlightRecordWithoutDoubts(t *testing.T) {
	c := redisTestClient(t)
	s := newTestRedisStore(c)
	ctx := t.Context()
	now := redisServerTime(t, c)
	fp := idempotency.Fingerprint{4, 2}

	live, owner := randomRecordKey(), idempotency.NewOwnerToken()
	if err := c.Set(ctx, s.redisKey(live), inFlightValue(fp, now, now.Add(time.Minute), owner), time.Hour).Err(); err != nil {
		t.Fatal(err)
	}
	if rec, ok, err := s.Get(ctx, live); err != nil || !ok || rec.State != idempotency.StateInFlight || rec.Owner != owner || rec.Doubts != 0 {
		t.Fatalf("Get = %+v (ok %v, err %v), want owner's in-flight record, Doubts 0", rec, ok, err)
	}
	if err := s.Hold(ctx, live, owner, time.Minute); err != nil {
		t.Fatalf("Hold: %v", err)
	}
	if rec, ok, err := s.Get(ctx, live); err != nil || !ok || rec.State != idempotency.StateInDoubt || rec.Doubts != 1 {
		t.Fatalf("Get after Hold = %+v (ok %v, err %v), want in doubt, Doubts 1", rec, ok, err)
	}

	dead, created := randomRecordKey(), now.Add(-10*time.Second).Truncate(time.Millisecond)
	if err := c.Set(ctx, s.redisKey(dead), inFlightValue(fp, created, now.Add(-time.Second), owner), time.Hour).Err(); err != nil {
		t.Fatal(err)
	}
	rec, owned := mustRedisBegin(t, s, dead, idempotency.Fingerprint{5}, idempotency.NewOwnerToken(), time.Minute)
	if owned || rec.State != idempotency.StateInFlight || rec.Owner != owner || rec.Doubts != 0 {
		t.Fatalf("Begin with another fingerprint = owned %v, %+v; want the dead owner's record", owned, rec)
	}
	rec, owned = mustRedisBegin(t, s, dead, fp, idempotency.NewOwnerToken(), time.Minute)
	if !owned || rec.Prior != idempotency.StateInFlight || rec.Doubts != 0 || !rec.CreatedAt.Equal(created) {
		t.Fatalf("Begin with its fingerprint = owned %v, %+v; want a takeover, Prior in_flight, CreatedAt %v", owned, rec, created)
	}
	if v := rawRecord(t, c, s.redisKey(dead)); len(v) != 68 || v[66] != 0 || v[67] != 1 {
		t.Fatalf("takeover record % x, want 68 bytes with doubts 0 and prior 1", v)
	}
}

// Doubts stop at 255, the most one byte holds.
func TestRedisDoubtsSaturate(t *testing.T) {
	c := redisTestClient(t)
	s := newTestRedisStore(c)
	ctx := t.Context()
	now := redisServerTime(t, c)
	key, owner := randomRecordKey(), idempotency.NewOwnerToken()
	if err := c.Set(ctx, s.redisKey(key), inFlightValue(idempotency.Fingerprint{1}, now, now.Add(time.Minute), owner, 255, 3), time.Hour).Err(); err != nil {
		t.Fatal(err)
	}
	if err := s.Hold(ctx, key, owner, time.Minute); err != nil {
		t.Fatalf("Hold: %v", err)
	}
	if rec, ok, err := s.Get(ctx, key); err != nil || !ok || rec.State != idempotency.StateInDoubt || rec.Doubts != 255 {
		t.Fatalf("Get = %+v (ok %v, err %v), want in doubt with 255 doubts", rec, ok, err)
	}
}
