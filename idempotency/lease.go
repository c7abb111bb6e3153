package idempotency

import (
	"context"
	"errors"
	"sync"
	"time"

	"go.uber.org/zap"
)

// keepLease renews the owner's lease every third of Config.Lease, so only a
// dead owner's lease ever runs out. The returned func stops it and waits for
// a renewal under way; it may be called more than once. A timer rather than
// a goroutine per request: most requests finish long before the first
// renewal.
func (h *Handler) keepLease(ctx context.Context, rk RecordKey, owner OwnerToken, log keyLogger) (stop func()) {
	var (
		mu      sync.Mutex
		stopped bool
		running sync.WaitGroup
		timer   *time.Timer
	)
	period := h.cfg.Lease / 3
	renew := func() {
		mu.Lock()
		if stopped {
			mu.Unlock()
			return
		}
		running.Add(1) // under mu, so stop's Wait cannot miss it
		mu.Unlock()
		defer running.Done()

		rctx, cancel := context.WithTimeout(ctx, period)
		err := h.store.Renew(rctx, rk, owner, h.cfg.Lease)
		cancel()
		switch {
		case errors.Is(err, ErrNotOwner):
			log.Warn("idempotency lease lost while the request was upstream")
			return
		case err != nil:
			log.Warn("idempotency lease renewal failed", zap.Error(err))
		}
		mu.Lock()
		if !stopped {
			timer.Reset(period)
		}
		mu.Unlock()
	}
	mu.Lock()
	timer = time.AfterFunc(period, renew)
	mu.Unlock()
	return func() {
		mu.Lock()
		stopped = true
		mu.Unlock()
		timer.Stop()
		running.Wait()
	}
}
