package caddyidempotency

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-idempotency/caddy-idempotency/idempotency"
)

func init() {
	caddy.RegisterModule(BadgerStore{})
	caddy.RegisterModule(MemoryStore{})
}

// badgerPool keeps one open database per directory across config reloads:
// Caddy provisions the new config before it cleans up the old one, and
// Badger locks its directory, so the two configs must share the handle.
var badgerPool = caddy.NewUsagePool()

// BadgerStore keeps records in an embedded Badger database.
type BadgerStore struct {
	// The database directory. Default: {caddy data dir}/idempotency.
	Path string `json:"path,omitempty"`

	poolKey string // set only once Provision holds a reference
	store   *idempotency.BadgerStore
}

type pooledBadger struct{ *idempotency.BadgerStore }

// closeTimeout bounds how long a reload waits for Badger to close. Badger
// retries a failing memtable flush forever (its directory deleted, the disk
// gone), and Caddy holds its config lock during Cleanup.
const closeTimeout = 10 * time.Second

func (p pooledBadger) Destruct() error {
	done := make(chan error, 1)
	go func() { done <- p.Close() }()
	select {
	case err := <-done:
		return err
	case <-time.After(closeTimeout):
		return fmt.Errorf("badger store did not close within %s; its directory stays locked", closeTimeout)
	}
}

// CaddyModule returns the Caddy module information.
func (BadgerStore) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.idempotency.stores.badger",
		New: func() caddy.Module { return new(BadgerStore) },
	}
}

// Provision opens the database, or takes another reference to it.
func (b *BadgerStore) Provision(ctx caddy.Context) error {
	dir := b.Path
	if dir == "" {
		dir = filepath.Join(caddy.AppDataDir(), "idempotency")
	}
	dir, err := filepath.Abs(caddy.NewReplacer().ReplaceKnown(dir, ""))
	if err != nil {
		return err
	}
	val, _, err := badgerPool.LoadOrNew(dir, func() (caddy.Destructor, error) {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, err
		}
		// The pooled database outlives this config, so it logs to Caddy's
		// process logger rather than one that a reload may close.
		s, err := idempotency.OpenBadger(idempotency.BadgerOptions{
			Dir:    dir,
			Logger: caddy.Log().Named("idempotency.badger"),
		})
		if err != nil {
			return nil, err
		}
		return pooledBadger{s}, nil
	})
	if err != nil {
		return fmt.Errorf("opening badger store at %s: %w", dir, err)
	}
	b.poolKey, b.store = dir, val.(pooledBadger).BadgerStore
	return nil
}

// Store returns the open store.
func (b *BadgerStore) Store() idempotency.Store { return b.store }

// Cleanup drops this config's reference; the last one closes the database.
func (b *BadgerStore) Cleanup() error {
	if b.poolKey == "" {
		return nil // Provision failed before it held a reference
	}
	_, err := badgerPool.Delete(b.poolKey)
	b.poolKey, b.store = "", nil
	return err
}

// UnmarshalCaddyfile sets up the store from `store badger [<dir>]`.
func (b *BadgerStore) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the store name
	if d.NextArg() {
		b.Path = d.Val()
	}
	if d.NextArg() {
		return d.ArgErr()
	}
	if d.NextBlock(0) {
		return d.Errf("store badger takes no block")
	}
	return nil
}

// MemoryStore keeps records in this process's memory: they survive a reload
// (one store per process is shared by the configs, like Badger's handle) and
// are lost on a restart. For tests and development.
type MemoryStore struct {
	store *idempotency.MemoryStore
}

// memoryPoolKey names the process's one memory store in memoryPool.
const memoryPoolKey = "memory"

var memoryPool = caddy.NewUsagePool()

type pooledMemory struct{ *idempotency.MemoryStore }

func (p pooledMemory) Destruct() error { return p.Close() }

// CaddyModule returns the Caddy module information.
func (MemoryStore) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.idempotency.stores.memory",
		New: func() caddy.Module { return new(MemoryStore) },
	}
}

// Provision creates the store, or takes another reference to it.
func (m *MemoryStore) Provision(caddy.Context) error {
	val, _, err := memoryPool.LoadOrNew(memoryPoolKey, func() (caddy.Destructor, error) {
		return pooledMemory{idempotency.NewMemoryStore()}, nil
	})
	if err != nil {
		return err
	}
	m.store = val.(pooledMemory).MemoryStore
	return nil
}

// Store returns the store.
func (m *MemoryStore) Store() idempotency.Store { return m.store }

// Cleanup drops this config's reference; the last one closes the store.
func (m *MemoryStore) Cleanup() error {
	if m.store == nil {
		return nil
	}
	m.store = nil
	_, err := memoryPool.Delete(memoryPoolKey)
	return err
}

// UnmarshalCaddyfile sets up the store from `store memory`.
func (m *MemoryStore) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the store name
	if d.NextArg() {
		return d.ArgErr()
	}
	if d.NextBlock(0) {
		return d.Errf("store memory takes no block")
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner     = (*BadgerStore)(nil)
	_ caddy.CleanerUpper    = (*BadgerStore)(nil)
	_ caddyfile.Unmarshaler = (*BadgerStore)(nil)
	_ StoreProvider         = (*BadgerStore)(nil)
	_ caddy.Provisioner     = (*MemoryStore)(nil)
	_ caddy.CleanerUpper    = (*MemoryStore)(nil)
	_ caddyfile.Unmarshaler = (*MemoryStore)(nil)
	_ StoreProvider         = (*MemoryStore)(nil)
)
