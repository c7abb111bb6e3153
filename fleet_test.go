package caddyidempotency

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/caddy-idempotency/caddy-idempotency/internal/batchesbackend"
	"github.com/caddy-idempotency/caddy-idempotency/internal/redistest"
)

// uniquePrefix keeps tests that share one Redis apart.
func uniquePrefix(name string) string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return name + "-" + hex.EncodeToString(b) + ":"
}

// Two cmd/caddy processes share one Redis behind a load balancer that
// spreads duplicates over both: one upstream create, one batch for everyone,
// and the instance that did not create it replays it.
func TestFleetSharesOneRedis(t *testing.T) {
	redisURL := redistest.URL(t)
	backend := batchesbackend.New()
	// Slow enough that the duplicates overlap the create on both instances.
	backend.SetFault(batchesbackend.Fault{Delay: 300 * time.Millisecond, Times: 1})
	upstream := httptest.NewServer(backend)
	defer upstream.Close()
	block := fmt.Sprintf("\t\twait 10s\n\t\tstore redis %s {\n\t\t\tkey_prefix %s\n\t\t}", redisURL, uniquePrefix("fleet"))
	portA, portB := freePort(), freePort()
	instances := []*caddyProcess{
		startCaddy(t, processCaddyfile(portA, block, upstream.Listener.Addr().String()), portA),
		startCaddy(t, processCaddyfile(portB, block, upstream.Listener.Addr().String()), portB),
	}

	const clients = 40
	body := createBody(t, nil, "")
	client := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: clients}}
	replies := make([]reply, clients)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range clients {
		wg.Go(func() {
			replies[i] = sendTo(t, client, http.MethodPost, instances[i%2].url+"/v1/batches", body, "Idempotency-Key", "fleet-1")
		})
	}
	wg.Wait()
	took := time.Since(start)

	creator := -1
	var id string
	replayed := [2]int{}
	for i, r := range replies {
		b := r.batch(t)
		if id == "" {
			id = b.ID
		}
		if b.ID != id {
			t.Fatalf("client %d got batch %s, another got %s", i, b.ID, id)
		}
		if r.Header.Get("Idempotent-Replayed") == "true" {
			replayed[i%2]++
		} else if creator >= 0 {
			t.Fatalf("two responses were not replays (instances %d and %d)", creator, i%2)
		} else {
			creator = i % 2
		}
	}
	if n := backend.Creates(); n != 1 || creator < 0 {
		t.Fatalf("backend creates = %d (creator %d), want 1", n, creator)
	}
	t.Logf("%d clients over 2 instances: 1 create (instance %d), replays %d on A and %d on B, %s", clients, creator, replayed[0], replayed[1], took)

	other := instances[1-creator]
	r := sendTo(t, client, http.MethodPost, other.url+"/v1/batches", body, "Idempotency-Key", "fleet-1")
	if b := r.batch(t); b.ID != id || r.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("the other instance answered %s (replayed %q), want a replay of %s", b.ID, r.Header.Get("Idempotent-Replayed"), id)
	}
	// A conflict is seen fleet-wide too.
	sendTo(t, client, http.MethodPost, other.url+"/v1/batches", createBody(t, map[string]any{"input_file_id": "file-other"}, ""), "Idempotency-Key", "fleet-1").
		apiError(t, http.StatusConflict, "idempotency_key_reused")
	if n := backend.Creates(); n != 1 {
		t.Fatalf("backend creates = %d after the retries, want 1", n)
	}
}
