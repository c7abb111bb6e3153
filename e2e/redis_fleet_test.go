package e2e

import (
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/caddy-idempotency/caddy-idempotency/internal/batchesbackend"
	"github.com/caddy-idempotency/caddy-idempotency/internal/redistest"
)

// Two cmd/caddy processes share one Redis behind a load balancer that
// spreads duplicates over both: one upstream create, one batch for everyone,
// and the instance that did not create it replays it.
func TestFleetSharesOneRedis(t *testing.T) {
	redisURL := redistest.URL(t)
	backend := batchesbackend.New()
	// Slow enough that the duplicates overlap the create on both instances.
	backend.SetFault(batchesbackend.Fault{Delay: 300 * time.Millisecond, Times: 1})
	upstream := serveBackend(t, backend)
	// The instances listen on two ports, so their hosts differ: a namespace
	// puts them on the same records, as one host name behind a load balancer does.
	block := fmt.Sprintf("\t\twait 10s\n\t\tnamespace fleet\n\t\tstore redis %s {\n\t\t\tkey_prefix %s\n\t\t}", redisURL, redistest.UniquePrefix("fleet"))
	portA, portB := freePort(), freePort()
	instances := []*caddyProcess{
		startCaddy(t, processCaddyfile(portA, block, upstream), portA),
		startCaddy(t, processCaddyfile(portB, block, upstream), portB),
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

// The instance that owns a key dies (kill -9) with its create upstream: the
// other instance answers in_use while the dead owner's lease runs, then takes
// the key over, creates once and replays.
func TestFleetOwnerKilledMidRequest(t *testing.T) {
	redisURL := redistest.URL(t)
	backend := batchesbackend.New()
	watched, taken := watchFaults(backend)
	upstream := serveBackend(t, watched)
	holdNextCreate(t, backend)

	const lease = 2 * time.Second
	config := fmt.Sprintf("\t\twait 0\n\t\tnamespace fleet\n\t\tlock_timeout %s\n\t\tstore redis %s {\n\t\t\tkey_prefix %s\n\t\t}", lease, redisURL, redistest.UniquePrefix("fleet-kill"))
	portA, portB := freePort(), freePort()
	a := startCaddy(t, processCaddyfile(portA, config, upstream), portA)
	b := startCaddy(t, processCaddyfile(portB, config, upstream), portB)
	body := createBody(t, nil, "")
	client := &http.Client{Timeout: 20 * time.Second}

	go func() {
		_, _ = request(client, http.MethodPost, a.url+"/v1/batches", body, "Idempotency-Key", "fleet-kill")
	}()
	waitTaken(t, taken)
	a.kill()
	killed := time.Now()

	sendTo(t, client, http.MethodPost, b.url+"/v1/batches", body, "Idempotency-Key", "fleet-kill").
		apiError(t, http.StatusConflict, "idempotency_key_in_use")
	var created batchesbackend.Batch
	waitFor(t, "the key free on the other instance", func() bool {
		r := sendTo(t, client, http.MethodPost, b.url+"/v1/batches", body, "Idempotency-Key", "fleet-kill")
		if r.Status == http.StatusConflict {
			return false
		}
		created = r.batch(t)
		return true
	})
	freed := time.Since(killed)
	if freed > lease+time.Second {
		t.Fatalf("the dead owner's key was free only %s after the kill, lock_timeout is %s", freed, lease)
	}
	r := sendTo(t, client, http.MethodPost, b.url+"/v1/batches", body, "Idempotency-Key", "fleet-kill")
	if got := r.batch(t); got.ID != created.ID || r.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("after the takeover got %s, want a replay of %s", got.ID, created.ID)
	}
	if n := backend.Creates(); n != 1 {
		t.Fatalf("backend creates = %d, want 1 (the dead owner's create never finished)", n)
	}
	t.Logf("key free %s after the owner was killed (lock_timeout %s)", freed, lease)
}
