package idempotency_test

import (
	"testing"

	"github.com/caddy-idempotency/caddy-idempotency/idempotency"
	"github.com/caddy-idempotency/caddy-idempotency/idempotency/storetest"
)

func TestMemoryStoreContract(t *testing.T) {
	storetest.Run(t, func(t *testing.T) idempotency.Store {
		s := idempotency.NewMemoryStore()
		t.Cleanup(func() { _ = s.Close() })
		return s
	})
}

func TestBadgerStoreContract(t *testing.T) {
	storetest.Run(t, func(t *testing.T) idempotency.Store {
		s, err := idempotency.OpenBadger(idempotency.BadgerOptions{Dir: t.TempDir()})
		if err != nil {
			t.Fatalf("OpenBadger: %v", err)
		}
		t.Cleanup(func() {
			if err := s.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		})
		return s
	})
}
