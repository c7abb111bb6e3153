package caddyidempotency

import (
	"context"
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/caddy-idempotency/caddy-idempotency/idempotency"
)

// handlerMetrics are the handler's collectors in one config's registry
// (Caddy's /metrics). A reload brings a new registry, so Provision registers
// them again; handlers of one config share them. No label names a key.
type handlerMetrics struct {
	requests *prometheus.CounterVec                     // by outcome
	outcomes map[idempotency.Outcome]prometheus.Counter // requests' series, looked up once
	storeOps *prometheus.HistogramVec                   // by operation and result
	inFlight prometheus.Gauge                           // requests that own their key and are upstream
}

func newHandlerMetrics(reg *prometheus.Registry) (*handlerMetrics, error) {
	if reg == nil {
		reg = prometheus.NewRegistry() // a context without a config: nothing serves it
	}
	const ns, sub = "caddy", "http_idempotency"
	m := &handlerMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "requests_total",
			Help: "Requests seen by the idempotency handler, by outcome.",
		}, []string{"outcome"}),
		storeOps: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: ns, Subsystem: sub, Name: "store_operation_duration_seconds",
			Help:    "Latency of idempotency store operations, by operation and result (ok, not_owner, error).",
			Buckets: prometheus.ExponentialBuckets(25e-6, 4, 9), // 25µs to 1.6s
		}, []string{"operation", "result"}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "in_flight",
			Help: "Requests that own their idempotency key and are upstream now.",
		}),
	}
	var err error
	if m.requests, err = register(reg, m.requests); err != nil {
		return nil, err
	}
	if m.storeOps, err = register(reg, m.storeOps); err != nil {
		return nil, err
	}
	if m.inFlight, err = register(reg, m.inFlight); err != nil {
		return nil, err
	}
	// Every series exists from the start, and a request does no label lookup.
	m.outcomes = make(map[idempotency.Outcome]prometheus.Counter, len(idempotency.Outcomes))
	for _, o := range idempotency.Outcomes {
		m.outcomes[o] = m.requests.WithLabelValues(string(o))
	}
	return m, nil
}

// register adds c to reg, or returns the collector another handler of the
// same config registered under the same name.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	err := reg.Register(c)
	var dup prometheus.AlreadyRegisteredError
	if errors.As(err, &dup) {
		if existing, ok := dup.ExistingCollector.(C); ok {
			return existing, nil
		}
	}
	return c, err
}

// observedStore times each operation of the store, and counts the requests
// that own their key: a Begin that claims it starts one, and the owner's
// Complete or Release (the handler calls exactly one) ends it.
type observedStore struct {
	idempotency.Store
	m *handlerMetrics
}

func (s observedStore) observe(op string, start time.Time, err error) {
	result := "ok"
	switch {
	case errors.Is(err, idempotency.ErrNotOwner):
		result = "not_owner"
	case err != nil:
		result = "error"
	}
	s.m.storeOps.WithLabelValues(op, result).Observe(time.Since(start).Seconds())
}

func (s observedStore) Begin(ctx context.Context, key idempotency.RecordKey, fp idempotency.Fingerprint, owner idempotency.OwnerToken, lease time.Duration) (idempotency.Record, bool, error) {
	start := time.Now()
	rec, owned, err := s.Store.Begin(ctx, key, fp, owner, lease)
	s.observe("begin", start, err)
	if owned {
		s.m.inFlight.Inc()
	}
	return rec, owned, err
}

func (s observedStore) Renew(ctx context.Context, key idempotency.RecordKey, owner idempotency.OwnerToken, lease time.Duration) error {
	start := time.Now()
	err := s.Store.Renew(ctx, key, owner, lease)
	s.observe("renew", start, err)
	return err
}

func (s observedStore) Complete(ctx context.Context, key idempotency.RecordKey, owner idempotency.OwnerToken, resp idempotency.Response, ttl time.Duration) error {
	start := time.Now()
	err := s.Store.Complete(ctx, key, owner, resp, ttl)
	s.observe("complete", start, err)
	s.m.inFlight.Dec()
	return err
}

func (s observedStore) Release(ctx context.Context, key idempotency.RecordKey, owner idempotency.OwnerToken) error {
	start := time.Now()
	err := s.Store.Release(ctx, key, owner)
	s.observe("release", start, err)
	s.m.inFlight.Dec()
	return err
}

func (s observedStore) Get(ctx context.Context, key idempotency.RecordKey) (idempotency.Record, bool, error) {
	start := time.Now()
	rec, ok, err := s.Store.Get(ctx, key)
	s.observe("get", start, err)
	return rec, ok, err
}
