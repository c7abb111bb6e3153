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
// A directory named through a symbolic link (or with a trailing "/.") is the
// same directory: configs share its database instead of finding it locked
// by their own process.
func TestBadgerStoreOneDirectoryManyNames(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "records")
	link := filepath.Join(root, "link")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(dir, link); err != nil {
		t.Fatal(err)
	}
	var stores []*BadgerModule
	for _, name := range []string{dir, link, link + "/."} {
		b, err := provisionBadger(t, name)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		t.Cleanup(func() { _ = b.Cleanup() })
		if b.deferred != nil {
			t.Fatalf("%s: the open was deferred, as if another process held the directory", name)
		}
		stores = append(stores, b)
	}
	for _, b := range stores[1:] {
		if b.Store() != stores[0].Store() {
			t.Fatal("two names of one directory got two databases")
		}
	}
}

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
