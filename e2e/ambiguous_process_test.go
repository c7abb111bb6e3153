package e2e

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/caddy-idempotency/caddy-idempotency/internal/batchesbackend"
	"github.com/caddy-idempotency/caddy-idempotency/internal/redistest"
)

// kill -9 of the Caddy that owns a create after the backend made the batch:
// the answer is lost with the process. Caddy restarts on the same port and
// store; the client's retry waits for the dead owner's lease
// (lock_timeout), takes the record over, and reconciles before anything
// goes upstream: it gets the batch the dead owner's create made, and the
// backend holds that one batch.

func TestAmbiguousOwnerKilledBadger(t *testing.T) {
	testOwnerKilledReconciles(t, "badger", "store badger "+storeDir(t))
}

func TestAmbiguousOwnerKilledRedis(t *testing.T) {
	redisURL := redistest.URL(t)
	testOwnerKilledReconciles(t, "redis", fmt.Sprintf("store redis %s {\n\t\t\tkey_prefix %s\n\t\t}", redisURL, redistest.UniquePrefix("ambiguous-kill")))
}

func testOwnerKilledReconciles(t *testing.T, name, store string) {
	backend := batchesbackend.New()
	watched, taken := watchFaults(backend)
	upstream := serveBackend(t, watched)
	gate := make(chan struct{})
	open := opener(t, gate)
	backend.SetFault(batchesbackend.Fault{After: true, Block: gate, Times: 1})

	const lease = time.Second
	block := fmt.Sprintf("\t\t%s\n\t\tlock_timeout %s\n\t\treconcile batches", store, lease)
	port := freePort()
	caddyfile := processCaddyfile(port, block, upstream)
	first := startCaddy(t, caddyfile, port)
	tenant := tenantFor("killed")
	key := uniqueKey("killed")
	body := createBody(t, nil, "")
	client := &http.Client{Timeout: 20 * time.Second}
	headers := []string{"Authorization", tenant, "Idempotency-Key", key}

	lost := make(chan error, 1)
	go func() {
		_, err := request(client, http.MethodPost, first.url+"/v1/batches", body, headers...)
		lost <- err
	}()
	waitTaken(t, taken)
	waitFor(t, "the backend to create the batch", func() bool { return backend.CreatesFor(tenant) == 1 })
	first.kill()
	killed := time.Now()
	open()
	if err := <-lost; err == nil {
		t.Fatal("the request to the killed Caddy got an answer")
	}

	second := startCaddy(t, caddyfile, port)
	tries, held := createWithRetries(t, client, second.url+"/v1/batches", body, headers...)
	took := time.Since(killed)
	got := mustHold(t, backend, tenant, 1, held)
	logBatches(t, "owner-killed-after-create store="+name, "on", len(got), tries)
	last := tries[len(tries)-1]
	if last.Header.Get("Idempotent-Reconciled") != "true" || last.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("the retry's batch is not the reconciled one: %v %v", last, last.Header)
	}
	if n, r := backend.CreatesFor(tenant), backend.Requests(); n != 1 || r != 1 {
		t.Fatalf("backend creates %d, requests %d; want 1 and 1 (nothing upstream after the takeover)", n, r)
	}
	// Replays from now on.
	r := sendTo(t, client, http.MethodPost, second.url+"/v1/batches", body, headers...)
	if b := r.batch(t); b.ID != held.ID || r.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("a later retry got %s, want %s replayed", b.ID, held.ID)
	}
	t.Logf("reconciled %s after the kill (lock_timeout %s)", took.Round(time.Millisecond), lease)
}
