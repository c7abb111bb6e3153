package e2e

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/caddy-idempotency/caddy-idempotency/internal/redistest"
)

// A Redis that speaks only TLS and wants a password: the store reaches it
// with a rediss URL, the password from an env placeholder and a private CA;
// without that CA the certificate is refused and keyed requests get 503.
func TestRedisTLSWithPasswordThroughCaddy(t *testing.T) {
	t.Setenv("TEST_REDIS_TLS_PASSWORD", "tls-test-password")
	srv := redistest.StartTLS(t, "tls-test-password")
	block := "\t\tstore redis rediss://" + srv.Addr() + " {\n\t\t\tpassword {env.TEST_REDIS_TLS_PASSWORD}\n\t\t\tdial_timeout 500ms\n"
	body := createBody(t, nil, "")

	s := newStack(t, block+"\t\t\ttls_ca_file "+srv.CAFile()+"\n\t\t}")
	created := s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", "tls-1").batch(t)
	r := s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", "tls-1")
	if b := r.batch(t); b.ID != created.ID || r.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("over TLS got %s, want a replay of %s", b.ID, created.ID)
	}
	keys, err := srv.Client(t).Keys(t.Context(), "caddy-idempotency:r:*").Result()
	if err != nil || len(keys) != 1 {
		t.Fatalf("records in the TLS server: %v, %v", keys, err)
	}

	untrusted := newStack(t, block+"\t\t}")
	untrusted.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", "tls-2").
		apiError(t, http.StatusServiceUnavailable, "idempotency_store_unavailable")
}

// A real Redis Cluster, named by all its nodes or by one seed with
// `cluster`: creates replay and conflict through Caddy, and the records
// spread over the masters.
func TestRedisClusterThroughCaddy(t *testing.T) {
	cluster := redistest.StartCluster(t, 3)
	t.Run("all nodes", func(t *testing.T) {
		testClusterThroughCaddy(t, cluster, "cluster-all:", strings.Join(cluster.Addrs(), " "))
	})
	t.Run("one seed", func(t *testing.T) {
		testClusterThroughCaddy(t, cluster, "cluster-seed:", cluster.Addrs()[0]+"\n\t\t\tcluster")
	})
}

func testClusterThroughCaddy(t *testing.T, cluster *redistest.Cluster, prefix, addresses string) {
	s := newStack(t, fmt.Sprintf("\t\tstore redis {\n\t\t\taddresses %s\n\t\t\tkey_prefix %s\n\t\t}", addresses, prefix))
	const keys = 20 // all 20 on one of 3 masters: about 1 run in 10^8
	createAndReplay(t, s, "cluster", keys)

	total, holding := 0, 0
	for _, addr := range cluster.Addrs() {
		n := countRedisKeys(t, addr, prefix)
		total += n
		if n > 0 {
			holding++
		}
	}
	if total != keys || holding < 2 {
		t.Fatalf("%d records on %d masters, want %d spread over at least 2", total, holding, keys)
	}
}

// `addresses` naming a Sentinel, with master_name: creates replay through
// Caddy, and the records are on the master that Sentinel names.
func TestRedisSentinelThroughCaddy(t *testing.T) {
	sentinel := redistest.StartSentinel(t)
	const prefix = "sentinel-caddy:"
	s := newStack(t, fmt.Sprintf("\t\tstore redis {\n\t\t\taddresses %s\n\t\t\tmaster_name %s\n\t\t\tkey_prefix %s\n\t\t}",
		strings.Join(sentinel.SentinelAddrs(), " "), sentinel.MasterName(), prefix))
	const keys = 5
	createAndReplay(t, s, "sentinel", keys)
	if n := countRedisKeys(t, sentinel.Master().Addr(), prefix); n != keys {
		t.Fatalf("the master holds %d records, want %d", n, keys)
	}
}

// createAndReplay creates n batches under distinct keys, replays each, and
// sees a reused key with other parameters refused: n creates upstream.
func createAndReplay(t *testing.T, s *stack, name string, n int) {
	t.Helper()
	body := createBody(t, nil, "")
	for i := range n {
		key := fmt.Sprintf("%s-%d", name, i)
		created := s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", key).batch(t)
		r := s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", key)
		if b := r.batch(t); b.ID != created.ID || r.Header.Get("Idempotent-Replayed") != "true" {
			t.Fatalf("key %s: replay got batch %s (Idempotent-Replayed %q), want %s replayed",
				key, b.ID, r.Header.Get("Idempotent-Replayed"), created.ID)
		}
	}
	other := createBody(t, map[string]any{"input_file_id": "file-other"}, "")
	s.send(http.MethodPost, "/v1/batches", other, "Idempotency-Key", name+"-0").
		apiError(t, http.StatusConflict, "idempotency_key_reused")
	if got := s.backend.Creates(); got != int64(n) {
		t.Fatalf("backend creates = %d, want %d", got, n)
	}
}

// countRedisKeys counts the keys under prefix that the server at addr holds
// itself.
func countRedisKeys(t *testing.T, addr, prefix string) int {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: addr})
	defer c.Close()
	n := 0
	iter := c.Scan(t.Context(), 0, prefix+"*", 1000).Iterator()
	for iter.Next(t.Context()) {
		n++
	}
	if err := iter.Err(); err != nil {
		t.Fatalf("SCAN %s: %v", addr, err)
	}
	return n
}
