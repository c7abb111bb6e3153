package caddyidempotency

import (
	"context"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-idempotency/caddy-idempotency/idempotency"
)

// The memory store is shared by the old and new configs of a reload, so a
// request in flight on the old config completes into the store the new one
// reads; the last cleanup closes it.
func TestMemoryStoreSharedAcrossConfigs(t *testing.T) {
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	// An earlier test's Caddy config may still hold the process's store.
	before, _ := memoryPool.References(memoryPoolKey)
	oldCfg, newCfg := new(MemoryModule), new(MemoryModule)
	if err := oldCfg.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	if err := newCfg.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	store := oldCfg.Store()
	if store != newCfg.Store() {
		t.Fatal("two configs got two memory stores")
	}
	key, token := idempotency.NewRecordKey("", "scope", "k-mem"), idempotency.NewOwnerToken()
	if _, owned, err := store.Begin(ctx, key, idempotency.Fingerprint{}, token, time.Minute); err != nil || !owned {
		t.Fatalf("begin: owned %v, %v", owned, err)
	}
	if err := oldCfg.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if err := store.Complete(ctx, key, token, idempotency.Response{Status: 200}, time.Minute); err != nil {
		t.Fatalf("the old config's in-flight request could not complete after its cleanup: %v", err)
	}
	if rec, ok, err := newCfg.Store().Get(ctx, key); err != nil || !ok || rec.State != idempotency.StateCompleted {
		t.Fatalf("the new config does not see the record: ok %v, %v", ok, err)
	}
	if err := newCfg.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if after, _ := memoryPool.References(memoryPoolKey); after != before {
		t.Fatalf("%d references after both cleanups, want %d", after, before)
	}
	if _, _, err := store.Get(ctx, key); before == 0 && err == nil {
		t.Fatal("the last cleanup left the memory store open")
	}
}
