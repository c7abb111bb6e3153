package e2e

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddy-idempotency/caddy-idempotency/idempotency"
	"github.com/caddy-idempotency/caddy-idempotency/idempotency/badgerstore"
)

// Test-only Caddy modules, registered the way any plugin registers its own:
// a store that can be switched off, a handler that panics, and one that lets
// go of a Badger directory while a config is provisioned.

func init() {
	caddy.RegisterModule(failingStoreModule{})
	caddy.RegisterModule(new(panicHandler))
	httpcaddyfile.RegisterHandlerDirective("test_panic", func(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
		p := new(panicHandler)
		return p, p.UnmarshalCaddyfile(h.Dispenser)
	})
	caddy.RegisterModule(releaseLockHandler{})
}

// storeDown switches every test_failing store of this process off and on.
var storeDown atomic.Bool

// failingStoreModule, http.handlers.idempotency.stores.test_failing, is a
// memory store that fails every operation while storeDown is set: a store
// that became unreachable, then came back.
type failingStoreModule struct{ mem *idempotency.MemoryStore }

func (failingStoreModule) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.idempotency.stores.test_failing",
		New: func() caddy.Module { return new(failingStoreModule) },
	}
}

func (m *failingStoreModule) Provision(caddy.Context) error {
	m.mem = idempotency.NewMemoryStore()
	return nil
}

func (m *failingStoreModule) Cleanup() error                                { return m.mem.Close() }
func (m *failingStoreModule) Store() idempotency.Store                      { return switchedStore{m.mem} }
func (m *failingStoreModule) UnmarshalCaddyfile(*caddyfile.Dispenser) error { return nil }

type switchedStore struct{ idempotency.Store }

var errUnreachable = errors.New("test store: unreachable")

func (s switchedStore) Begin(ctx context.Context, k idempotency.RecordKey, fp idempotency.Fingerprint, owner idempotency.OwnerToken, lease time.Duration) (idempotency.Record, bool, error) {
	if storeDown.Load() {
		return idempotency.Record{}, false, errUnreachable
	}
	return s.Store.Begin(ctx, k, fp, owner, lease)
}

func (s switchedStore) Complete(ctx context.Context, k idempotency.RecordKey, owner idempotency.OwnerToken, resp idempotency.Response, ttl time.Duration) error {
	if storeDown.Load() {
		return errUnreachable
	}
	return s.Store.Complete(ctx, k, owner, resp, ttl)
}

func (s switchedStore) Release(ctx context.Context, k idempotency.RecordKey, owner idempotency.OwnerToken) error {
	if storeDown.Load() {
		return errUnreachable
	}
	return s.Store.Release(ctx, k, owner)
}

// panicHandler is the middleware http.handlers.test_panic: its first Panics
// requests panic (with http.ErrAbortHandler when Abort is set), later ones
// go on down the chain.
//
//	test_panic {
//		panics <n>
//		abort
//	}
type panicHandler struct {
	Panics int  `json:"panics,omitempty"`
	Abort  bool `json:"abort,omitempty"`

	left atomic.Int64
}

func (*panicHandler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "http.handlers.test_panic", New: func() caddy.Module { return new(panicHandler) }}
}

func (p *panicHandler) Provision(caddy.Context) error {
	p.left.Store(int64(p.Panics))
	return nil
}

func (p *panicHandler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if p.left.Add(-1) >= 0 {
		if p.Abort {
			panic(http.ErrAbortHandler)
		}
		panic("test_panic: injected panic")
	}
	return next.ServeHTTP(w, r)
}

func (p *panicHandler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next()
	for d.NextBlock(0) {
		switch d.Val() {
		case "panics":
			if !d.NextArg() {
				return d.ArgErr()
			}
			n, err := strconv.Atoi(d.Val())
			if err != nil {
				return d.Errf("panics: %v", err)
			}
			p.Panics = n
		case "abort":
			p.Abort = true
		default:
			return d.Errf("unknown test_panic option %q", d.Val())
		}
	}
	return nil
}

// lockHolder is "another process" holding a Badger directory: Badger's
// flock conflicts within one process too, across two opens.
var lockHolder struct {
	sync.Mutex
	store *badgerstore.Store
}

// holdBadger opens dir as lockHolder until releaseHeldBadger or t's end.
func holdBadger(t *testing.T, dir string) {
	t.Helper()
	s, err := badgerstore.Open(badgerstore.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	lockHolder.Lock()
	lockHolder.store = s
	lockHolder.Unlock()
	t.Cleanup(func() { _ = releaseHeldBadger() })
}

// releaseHeldBadger closes lockHolder's database, if it holds one.
func releaseHeldBadger() error {
	lockHolder.Lock()
	defer lockHolder.Unlock()
	if lockHolder.store == nil {
		return nil
	}
	err := lockHolder.store.Close()
	lockHolder.store = nil
	return err
}

// releaseLockHandler, http.handlers.test_release_lock, lets go of
// lockHolder's directory when it is provisioned: after the routes before
// it, before the config starts.
type releaseLockHandler struct{}

func (releaseLockHandler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.test_release_lock",
		New: func() caddy.Module { return new(releaseLockHandler) },
	}
}

func (releaseLockHandler) Provision(caddy.Context) error { return releaseHeldBadger() }

func (releaseLockHandler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	return next.ServeHTTP(w, r)
}

// Interface guards. A store module is what the handler loads from the
// store's namespace: a module with a Store method.
var (
	_ caddy.Provisioner                      = (*failingStoreModule)(nil)
	_ caddy.CleanerUpper                     = (*failingStoreModule)(nil)
	_ caddyfile.Unmarshaler                  = (*failingStoreModule)(nil)
	_ interface{ Store() idempotency.Store } = (*failingStoreModule)(nil)
	_ caddy.Provisioner                      = (*panicHandler)(nil)
	_ caddyhttp.MiddlewareHandler            = (*panicHandler)(nil)
	_ caddy.Provisioner                      = (*releaseLockHandler)(nil)
	_ caddyhttp.MiddlewareHandler            = (*releaseLockHandler)(nil)
)
