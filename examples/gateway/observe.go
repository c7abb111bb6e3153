package main

import (
	"expvar"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-idempotency/caddy-idempotency/idempotency"
)

// slowStoreCall is when a store call is worth a warning: a local store
// answers in microseconds, Redis in about a millisecond.
const slowStoreCall = 100 * time.Millisecond

// metrics counts what the engine reports, in expvar maps that
// -metrics-listen serves at /debug/vars as JSON. The same two hooks feed
// Prometheus or OpenTelemetry just as well; expvar needs no dependency.
type metrics struct {
	decisions  *expvar.Map // outcome → requests
	storeCalls *expvar.Map // op → calls
	storeErrs  *expvar.Map // op → calls that returned an error
	storeSecs  *expvar.Map // op → seconds spent in the store
	inFlight   *expvar.Int // requests that own their key and are upstream now
}

func newMetrics() *metrics {
	m := &metrics{
		decisions:  expvar.NewMap("idempotency_decisions"),
		storeCalls: expvar.NewMap("idempotency_store_calls"),
		storeErrs:  expvar.NewMap("idempotency_store_errors"),
		storeSecs:  expvar.NewMap("idempotency_store_seconds"),
		inFlight:   expvar.NewInt("idempotency_in_flight"),
	}
	for _, o := range idempotency.Outcomes { // every series exists from the start, at 0
		m.decisions.Add(string(o), 0)
	}
	return m
}

// decision is Config.Observe: told once per request, before the answer is
// written. It logs one line and counts the outcome.
func (m *metrics) decision(r *http.Request, d idempotency.Decision, log *zap.Logger) {
	m.decisions.Add(string(d.Outcome), 1)
	fields := []zap.Field{
		zap.String("outcome", string(d.Outcome)),
		zap.Duration("duration", d.Duration),
		zap.String("method", r.Method),
		zap.String("path", r.URL.Path),
		zap.String("request_id", r.Header.Get(requestIDHeader)),
	}
	if d.Status != 0 { // 0: not known when decided (a request passed through, say)
		fields = append(fields, zap.Int("status", d.Status))
	}
	if d.Reason != "" {
		fields = append(fields, zap.String("reason", d.Reason))
	}
	if d.Keyed {
		// The record key, a hash: never log the client's key or credential.
		fields = append(fields, zap.Stringer("key_hash", d.Key))
	}
	log.Info("idempotency", fields...)
}

// storeCall is Config.ObserveStore: told of every store call as it returns.
// Failures are logged by the engine itself, with the request they hurt.
func (m *metrics) storeCall(c idempotency.StoreCall, log *zap.Logger) {
	m.storeCalls.Add(c.Op, 1)
	m.storeSecs.AddFloat(c.Op, c.Duration.Seconds())
	if c.Err != nil { // ErrNotOwner too: the request had lost its key
		m.storeErrs.Add(c.Op, 1)
	}
	// A Begin that claims the key sends the request upstream; exactly one
	// Complete or Release follows it.
	switch {
	case c.Op == "begin" && c.Owned:
		m.inFlight.Add(1)
	case c.Op == "complete", c.Op == "release":
		m.inFlight.Add(-1)
	}
	if c.Duration >= slowStoreCall {
		log.Warn("slow idempotency store call", zap.String("op", c.Op), zap.Duration("duration", c.Duration), zap.Error(c.Err))
	}
}
