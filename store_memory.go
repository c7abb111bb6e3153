package caddyidempotency

import (
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-idempotency/caddy-idempotency/idempotency"
)

func init() {
	caddy.RegisterModule(MemoryModule{})
}

// MemoryModule keeps records in this process's memory: they survive a reload
// (one store per process is shared by the configs, like Badger's handle) and
// are lost on a restart. For tests and development.
type MemoryModule struct {
	store      *idempotency.MemoryStore
	unregister func() // drops the admin API's reference
}

// memoryPoolKey names the process's one memory store in memoryPool.
const memoryPoolKey = "memory"

var memoryPool = caddy.NewUsagePool()

type pooledMemory struct{ *idempotency.MemoryStore }

func (p pooledMemory) Destruct() error { return p.Close() }

// CaddyModule returns the Caddy module information.
func (MemoryModule) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.idempotency.stores.memory",
		New: func() caddy.Module { return new(MemoryModule) },
	}
}

// Provision creates the store, or takes another reference to it.
func (m *MemoryModule) Provision(caddy.Context) error {
	val, _, err := memoryPool.LoadOrNew(memoryPoolKey, func() (caddy.Destructor, error) {
		return pooledMemory{idempotency.NewMemoryStore()}, nil
	})
	if err != nil {
		return err
	}
	m.store = val.(pooledMemory).MemoryStore
	m.unregister = adminStores.register("memory", "memory", m.store)
	return nil
}

// Store returns the store.
func (m *MemoryModule) Store() idempotency.Store { return m.store }

// Cleanup drops this config's reference; the last one closes the store.
func (m *MemoryModule) Cleanup() error {
	if m.store == nil {
		return nil
	}
	m.unregister()
	m.store = nil
	_, err := memoryPool.Delete(memoryPoolKey)
	return err
}

// UnmarshalCaddyfile sets up the store from `store memory`.
func (m *MemoryModule) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
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
	_ caddy.Provisioner     = (*MemoryModule)(nil)
	_ caddy.CleanerUpper    = (*MemoryModule)(nil)
	_ caddyfile.Unmarshaler = (*MemoryModule)(nil)
	_ StoreProvider         = (*MemoryModule)(nil)
)
