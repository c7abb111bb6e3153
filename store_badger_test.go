package caddyidempotency

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-idempotency/caddy-idempotency/idempotency"
)

func provisionBadger(t *testing.T, dir string) (*BadgerModule, error) {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	b := &BadgerModule{Path: dir}
	return b, b.Provision(ctx)
}

// Two configs (old and new, during a reload) on one directory share one
// handle; the database closes with the last reference only.
func TestBadgerStoreSharedAcrossConfigs(t *testing.T) {
	dir := t.TempDir()
	oldCfg, err := provisionBadger(t, dir)
	if err != nil {
		t.Fatal(err)
	}
	newCfg, err := provisionBadger(t, dir) // would fail on Badger's directory lock if not shared
	if err != nil {
		t.Fatal(err)
	}
	if oldCfg.Store() != newCfg.Store() {
		t.Fatal("two configs on one directory got two databases")
	}
	if err := oldCfg.Cleanup(); err != nil {
		t.Fatal(err)
	}
	store := newCfg.Store()
	key, token := idempotency.NewRecordKey("", "scope", "k"), idempotency.NewOwnerToken()
	if _, owned, err := store.Begin(context.Background(), key, idempotency.Fingerprint{}, token, time.Minute); err != nil || !owned {
		t.Fatalf("store closed by the old config's cleanup: owned %v, %v", owned, err)
	}
	if err := newCfg.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := store.Get(context.Background(), key); err == nil {
		t.Fatal("the last cleanup left the database open")
	}
	// Closed for real: the directory opens again, with the record in it.
	again, err := provisionBadger(t, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer again.Cleanup()
	if rec, ok, err := again.Store().Get(context.Background(), key); err != nil || !ok || rec.Owner != token {
		t.Fatalf("record after reopen: ok %v, %v", ok, err)
	}
}

// A Provision that failed holds nothing, so its Cleanup must release nothing.
func TestBadgerStoreCleanupAfterFailedProvision(t *testing.T) {
	dir := t.TempDir()
	live, err := provisionBadger(t, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer live.Cleanup()

	notADir := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(notADir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	failed, err := provisionBadger(t, filepath.Join(notADir, "sub"))
	if err == nil {
		t.Fatal("provisioning a store under a file succeeded")
	}
	if err := failed.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := live.Store().Get(context.Background(), idempotency.NewRecordKey("", "", "k")); err != nil {
		t.Fatalf("a failed config's cleanup closed another config's store: %v", err)
	}
}
