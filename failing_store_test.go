package caddyidempotency

import (
	"context"
	"errors"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-idempotency/caddy-idempotency/idempotency"
)

// storeDown switches every test_failing store of this process off and on.
var storeDown atomic.Bool

func init() { caddy.RegisterModule(failingStoreModule{}) }

// failingStoreModule is a memory store that fails every operation while
// storeDown is set: a store that became unreachable, then came back.
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

// A store that fails answers covered requests 503 and forwards nothing;
// Caddy keeps serving, and the same key works once the store is back.
func TestStoreDownThroughCaddy(t *testing.T) {
	s := newStack(t, "store test_failing")
	t.Cleanup(func() { storeDown.Store(false) })
	body := createBody(t, nil, "")

	storeDown.Store(true)
	for _, key := range []string{"down-1", "down-2"} {
		r := s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", key)
		r.apiError(t, http.StatusServiceUnavailable, "idempotency_store_unavailable")
		if r.Header.Get("x-should-retry") != "true" {
			t.Fatalf("503 without x-should-retry: true: %v", r.Header)
		}
	}
	s.send(http.MethodPost, "/v1/batches", createBody(t, nil, "down-3")).
		apiError(t, http.StatusServiceUnavailable, "idempotency_store_unavailable")
	if n := s.backend.Creates(); n != 0 {
		t.Fatalf("%d creates forwarded while the store was down, want 0", n)
	}
	s.send(http.MethodPost, "/v1/batches", body).batch(t) // no key: no store needed

	storeDown.Store(false)
	created := s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", "down-1").batch(t)
	if again := s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", "down-1").batch(t); again.ID != created.ID {
		t.Fatalf("after recovery got %s, want replay of %s", again.ID, created.ID)
	}
	if n := s.backend.Creates(); n != 2 {
		t.Fatalf("backend creates = %d, want 2", n)
	}
}

// With fail_open, a keyed request is forwarded unprotected while the store
// is down: the retry creates again, which is what the operator opted into.
func TestStoreDownFailOpenThroughCaddy(t *testing.T) {
	s := newStack(t, "fail_open\n\t\tstore test_failing")
	t.Cleanup(func() { storeDown.Store(false) })
	storeDown.Store(true)
	first := s.send(http.MethodPost, "/v1/batches", createBody(t, nil, "open-1")).batch(t)
	second := s.send(http.MethodPost, "/v1/batches", createBody(t, nil, "open-1")).batch(t)
	if first.ID == second.ID || s.backend.Creates() != 2 {
		t.Fatalf("fail_open: %s and %s, creates %d; want two unprotected creates", first.ID, second.ID, s.backend.Creates())
	}
	// Forwarded with the key field stripped, as a protected request would be:
	// the strict backend would have rejected it otherwise.
	storeDown.Store(false)
	third := s.send(http.MethodPost, "/v1/batches", createBody(t, nil, "open-1")).batch(t)
	if again := s.send(http.MethodPost, "/v1/batches", createBody(t, nil, "open-1")).batch(t); again.ID != third.ID {
		t.Fatalf("after recovery got %s, want replay of %s", again.ID, third.ID)
	}
}

var (
	_ caddy.Provisioner     = (*failingStoreModule)(nil)
	_ caddy.CleanerUpper    = (*failingStoreModule)(nil)
	_ caddyfile.Unmarshaler = (*failingStoreModule)(nil)
	_ StoreProvider         = (*failingStoreModule)(nil)
)
