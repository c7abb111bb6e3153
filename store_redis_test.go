package caddyidempotency

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/redis/go-redis/v9"

	"github.com/caddy-idempotency/caddy-idempotency/idempotency"
	"github.com/caddy-idempotency/caddy-idempotency/internal/redistest"
)

func TestRedisStoreClientOptions(t *testing.T) {
	t.Setenv("TEST_REDIS_PASSWORD", "s3cret")
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	repl := caddy.NewReplacer()

	opts, err := (&RedisModule{URL: "rediss://user:pw@redis.internal:6380/3", TLSServerName: "other.internal"}).clientOptions(repl)
	if err != nil {
		t.Fatal(err)
	}
	if len(opts.Addrs) != 1 || opts.Addrs[0] != "redis.internal:6380" || opts.DB != 3 || opts.Username != "user" || opts.Password != "pw" ||
		opts.TLSConfig == nil || opts.TLSConfig.ServerName != "other.internal" || !opts.ContextTimeoutEnabled ||
		opts.DialTimeout != defaultRedisDialTimeout || opts.ReadTimeout != defaultRedisIOTimeout {
		t.Fatalf("from a rediss URL: %+v", opts)
	}

	opts, err = (&RedisModule{
		Addresses: []string{"a:6379", "b:6379"}, Password: "{env.TEST_REDIS_PASSWORD}",
		PoolSize: 7, ReadTimeout: caddy.Duration(time.Second),
	}).clientOptions(repl)
	if err != nil {
		t.Fatal(err)
	}
	if opts.Password != "s3cret" || opts.PoolSize != 7 || opts.ReadTimeout != time.Second || opts.TLSConfig != nil {
		t.Fatalf("from addresses: %+v", opts)
	}
	cluster := redis.NewUniversalClient(opts)
	defer cluster.Close()
	if _, ok := cluster.(*redis.ClusterClient); !ok {
		t.Fatal("two addresses did not make a cluster client")
	}
	opts.MasterName = "mymaster"
	failover := redis.NewUniversalClient(opts)
	defer failover.Close()
	if _, ok := failover.(*redis.Client); !ok {
		t.Fatal("a master name did not make a Sentinel failover client")
	}

	for _, bad := range []struct {
		store RedisModule
		want  string
	}{
		{RedisModule{}, "a url or at least one address"},
		{RedisModule{URL: "redis://a:6379", Addresses: []string{"b:6379"}}, "not both"},
		{RedisModule{URL: "http://a:6379"}, "url"},
		{RedisModule{URL: "redis://a:6379", TLSCAFile: caFile}, "no PEM certificate"},
		{RedisModule{URL: "redis://a:6379", TLSCAFile: caFile + ".missing"}, "tls_ca_file"},
		{RedisModule{URL: "redis://a:6379", DialTimeout: -1}, "negative"},
		{RedisModule{Addresses: []string{"a:26379"}, MasterName: "m", Cluster: true}, "exclude"},
	} {
		if _, err := bad.store.clientOptions(repl); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%+v: error %v, want one mentioning %q", bad.store, err, bad.want)
		}
	}
}

// Configs with the same setup share one client across a reload, so requests
// in flight on the old config finish on an open connection pool; the last
// cleanup closes it.
func TestRedisStoreSharedAcrossConfigs(t *testing.T) {
	url := redistest.URL(t)
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	oldCfg, newCfg := &RedisModule{URL: url, KeyPrefix: redistest.UniquePrefix("shared")}, &RedisModule{URL: url}
	newCfg.KeyPrefix = oldCfg.KeyPrefix
	for _, c := range []*RedisModule{oldCfg, newCfg} {
		if err := c.Provision(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if n, _ := redisPool.References(oldCfg.poolKey); n != 2 {
		t.Fatalf("%d references to the client, want 2 (one shared client)", n)
	}
	store := oldCfg.Store()
	key, token := idempotency.NewRecordKey("", "scope", "k-redis"), idempotency.NewOwnerToken()
	if _, owned, err := store.Begin(ctx, key, idempotency.Fingerprint{}, token, time.Minute); err != nil || !owned {
		t.Fatalf("begin: owned %v, %v", owned, err)
	}
	if err := oldCfg.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if err := store.Complete(ctx, key, token, idempotency.Response{Status: 200}, time.Minute); err != nil {
		t.Fatalf("the old config's request could not complete after its cleanup: %v", err)
	}
	if rec, ok, err := newCfg.Store().Get(ctx, key); err != nil || !ok || rec.State != idempotency.StateCompleted {
		t.Fatalf("the new config does not see the record: ok %v, %v", ok, err)
	}
	poolKey := newCfg.poolKey
	if err := newCfg.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if _, held := redisPool.References(poolKey); held {
		t.Fatal("the last cleanup left the client in the pool")
	}
	if _, _, err := store.Get(ctx, key); err == nil {
		t.Fatal("the last cleanup left the client open")
	}
}

// A reload that changes a Redis setting other than the address, database or
// prefix opens a new client for the same store and closes the old one: the
// admin API must then use the new config's client, not the closed one.
func TestRedisAdminAfterReloadWithNewClient(t *testing.T) {
	url, prefix := redistest.URL(t), redistest.UniquePrefix("admin-reload")
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	oldCfg := &RedisModule{URL: url, KeyPrefix: prefix}
	newCfg := &RedisModule{URL: url, KeyPrefix: prefix, PoolSize: 5}
	for _, c := range []*RedisModule{oldCfg, newCfg} {
		if err := c.Provision(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if oldCfg.poolKey == newCfg.poolKey {
		t.Fatal("the two setups share a client; the test needs two")
	}
	if err := oldCfg.Cleanup(); err != nil {
		t.Fatal(err)
	}
	defer newCfg.Cleanup()
	for _, req := range []*http.Request{
		httptest.NewRequest(http.MethodGet, "/idempotency/stats", nil),
		httptest.NewRequest(http.MethodDelete, "/idempotency/records/"+strings.Repeat("ab", 32), nil),
	} {
		err := serveAdmin(httptest.NewRecorder(), req)
		var apiErr caddy.APIError
		if err != nil && !(errors.As(err, &apiErr) && apiErr.HTTPStatus == http.StatusNotFound) {
			t.Fatalf("%s %s after the reload: %v", req.Method, req.URL.Path, err)
		}
	}
}
