package idempotency

import (
	"context"
	"errors"
	"sync"
	"time"

	"go.uber.org/zap"
)

// leaseKeeper renews an owner's lease every third of Config.Lease, so only
// a dead owner's lease ever runs out. A timer rather than a goroutine per
// request: most requests finish long before the first renewal. Its zero
// value is stopped; it lives in the forwarding it serves, so keeping a
// lease costs a request one timer.
type leaseKeeper struct {
	h      *Handler
	ctx    context.Context
	rk     RecordKey
	owner  OwnerToken
	log    keyLogger
	period time.Duration

	mu      sync.Mutex
	stopped bool
	running sync.WaitGroup
	timer   *time.Timer
}

// start arms the first renewal.
func (k *leaseKeeper) start(h *Handler, ctx context.Context, rk RecordKey, owner OwnerToken, log keyLogger) {
	k.h, k.ctx, k.rk, k.owner, k.log, k.period = h, ctx, rk, owner, log, h.cfg.Lease/3
	k.mu.Lock()
	k.timer = time.AfterFunc(k.period, k.renew)
	k.mu.Unlock()
}

func (k *leaseKeeper) renew() {
	k.mu.Lock()
	if k.stopped {
		k.mu.Unlock()
		return
	}
	k.running.Add(1) // under mu, so stop's Wait cannot miss it
	k.mu.Unlock()
	defer k.running.Done()

	rctx, cancel := context.WithTimeout(k.ctx, k.period)
	err := k.h.store.Renew(rctx, k.rk, k.owner, k.h.cfg.Lease)
	cancel()
	switch {
	case errors.Is(err, ErrNotOwner):
		k.log.Warn("idempotency lease lost while the request was upstream")
		return
	case err != nil:
		k.log.Warn("idempotency lease renewal failed", zap.Error(err))
	}
	k.mu.Lock()
	if !k.stopped {
		k.timer.Reset(k.period)
	}
	k.mu.Unlock()
}

// stop ends the renewals and waits for one under way; it may be called
// more than once, and on a keeper never started.
func (k *leaseKeeper) stop() {
	k.mu.Lock()
	k.stopped = true
	timer := k.timer
	k.mu.Unlock()
	if timer != nil {
		timer.Stop()
	}
	k.running.Wait()
}
