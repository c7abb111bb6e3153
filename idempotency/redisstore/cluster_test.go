package redisstore_test

import (
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/caddy-idempotency/caddy-idempotency/idempotency"
	"github.com/caddy-idempotency/caddy-idempotency/idempotency/storetest"
	"github.com/caddy-idempotency/caddy-idempotency/internal/redistest"
)

// The shared contract, unchanged, on a real 3-master Redis Cluster; then
// 100 records land on several masters, each one readable through the store.
func TestRedisClusterStoreContract(t *testing.T) {
	start := time.Now()
	cluster := redistest.StartCluster(t, 3)
	t.Logf("cluster %v ready in %v", cluster.Addrs(), time.Since(start))
	c := redis.NewUniversalClient(&redis.UniversalOptions{Addrs: cluster.Addrs(), ContextTimeoutEnabled: true})
	t.Cleanup(func() { _ = c.Close() })
	if _, ok := c.(*redis.ClusterClient); !ok {
		t.Fatalf("NewUniversalClient with %d addresses made a %T, want a cluster client", len(cluster.Addrs()), c)
	}
	t.Run("contract", func(t *testing.T) {
		storetest.Run(t, func(t *testing.T) idempotency.Store { return newTestRedisStore(c) })
	})
	if t.Failed() {
		return
	}

	s := newTestRedisStore(c)
	writeAndReadBack(t, s, 100)
	total, holding := 0, 0
	for _, addr := range cluster.Addrs() {
		node := redis.NewClient(&redis.Options{Addr: addr})
		t.Cleanup(func() { _ = node.Close() })
		n := countKeys(t, node, s.prefix)
		total += n
		if n > 0 {
			holding++
		}
		stats := infoFields(t, node, "commandstats", "errorstats", "memory")
		t.Logf("node %s: %d of the 100 records; evalsha %s, eval %s, NOSCRIPT errors %s, cached scripts %s", addr, n,
			stats["cmdstat_evalsha"], stats["cmdstat_eval"], stats["errorstat_NOSCRIPT"], stats["number_of_cached_scripts"])
		// Every master ran the scripts by EVALSHA and loaded them itself
		// after a NOSCRIPT: nothing needs loading scripts cluster-wide ahead.
		if stats["cmdstat_evalsha"] == "" || stats["number_of_cached_scripts"] == "0" {
			t.Errorf("node %s ran no EVALSHA or caches no script: %v", addr, stats)
		}
	}
	if total != 100 || holding < 2 {
		t.Fatalf("%d records on %d of %d masters, want all 100 spread over at least 2", total, holding, len(cluster.Addrs()))
	}
}

// The shared contract, unchanged, through a Sentinel failover client: the
// records are on the master the sentinel names.
func TestRedisSentinelStoreContract(t *testing.T) {
	start := time.Now()
	sentinel := redistest.StartSentinel(t)
	t.Logf("master %s and sentinel %v ready in %v", sentinel.Master().Addr(), sentinel.SentinelAddrs(), time.Since(start))
	c := redis.NewUniversalClient(&redis.UniversalOptions{
		MasterName:            sentinel.MasterName(),
		Addrs:                 sentinel.SentinelAddrs(),
		ContextTimeoutEnabled: true,
	})
	t.Cleanup(func() { _ = c.Close() })
	t.Run("contract", func(t *testing.T) {
		storetest.Run(t, func(t *testing.T) idempotency.Store { return newTestRedisStore(c) })
	})
	if t.Failed() {
		return
	}

	s := newTestRedisStore(c)
	writeAndReadBack(t, s, 100)
	if n := countKeys(t, sentinel.Master().Client(t), s.prefix); n != 100 {
		t.Fatalf("the master holds %d of the 100 records", n)
	}
}

// writeAndReadBack completes n records in s and reads each back through s.
func writeAndReadBack(t *testing.T, s testRedisStore, n int) {
	t.Helper()
	ctx := t.Context()
	for i := range n {
		key, owner := randomRecordKey(), idempotency.NewOwnerToken()
		fp := idempotency.Fingerprint{byte(i)}
		mustRedisBegin(t, s, key, fp, owner, time.Minute)
		body := []byte(strconv.Itoa(i))
		if err := s.Complete(ctx, key, owner, idempotency.Response{Status: http.StatusOK, Body: body}, time.Hour); err != nil {
			t.Fatalf("Complete %d: %v", i, err)
		}
		rec, ok, err := s.Get(ctx, key)
		if err != nil || !ok || rec.State != idempotency.StateCompleted || rec.Response == nil || string(rec.Response.Body) != string(body) || rec.Fingerprint != fp {
			t.Fatalf("Get %d = %+v, %v, %v; want the completed record", i, rec, ok, err)
		}
	}
}

// countKeys counts node's own keys under prefix.
func countKeys(t *testing.T, node *redis.Client, prefix string) int {
	t.Helper()
	n := 0
	iter := node.Scan(t.Context(), 0, prefix+"*", 1000).Iterator()
	for iter.Next(t.Context()) {
		n++
	}
	if err := iter.Err(); err != nil {
		t.Fatalf("SCAN %s: %v", node.Options().Addr, err)
	}
	return n
}

// infoFields is node's INFO sections as name → value.
func infoFields(t *testing.T, node *redis.Client, sections ...string) map[string]string {
	t.Helper()
	info, err := node.Info(t.Context(), sections...).Result()
	if err != nil {
		t.Fatalf("INFO %s: %v", node.Options().Addr, err)
	}
	fields := make(map[string]string)
	for line := range strings.SplitSeq(info, "\r\n") {
		if name, value, ok := strings.Cut(line, ":"); ok {
			fields[name] = value
		}
	}
	return fields
}
