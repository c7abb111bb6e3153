package idempotency_test

import (
	"testing"

	"github.com/caddy-idempotency/caddy-idempotency/idempotency"
	"github.com/caddy-idempotency/caddy-idempotency/idempotency/storetest"
)

func newMemoryStore(t *testing.T) idempotency.Store {
	s := idempotency.NewMemoryStore()
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func TestMemoryStoreContract(t *testing.T) { storetest.Run(t, newMemoryStore) }

func TestMemoryStoreHandler(t *testing.T) { storetest.RunHandler(t, newMemoryStore) }
