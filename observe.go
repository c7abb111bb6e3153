package caddyidempotency

import (
	"errors"
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/caddy-idempotency/caddy-idempotency/idempotency"
)

// Placeholders the handler sets on every request it sees.
const (
	placeholderOutcome = "http.idempotency.outcome"  // stored, replayed, conflict, ...
	placeholderKeyHash = "http.idempotency.key_hash" // the record key, as logged; empty without a key
)

// reasonGaveUp is the Decision.Reason of an in_doubt record released after
// MaxDoubts searches that could not find out whether the upstream acted.
const reasonGaveUp = "gave up"

// observe makes a decision visible: the placeholders (for headers and
// logs), two fields of the access log entry, and the outcome counter (and
// the gave-up counter).
func (h *HandlerModule) observe(r *http.Request, d idempotency.Decision) {
	h.metrics.outcomes[d.Outcome].Inc()
	if d.Outcome == idempotency.OutcomeInDoubt && d.Reason == reasonGaveUp {
		h.metrics.gaveUp.Inc()
	}
	var keyHash string
	if d.Keyed {
		keyHash = d.Key.String()
	}
	if repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer); ok {
		repl.Set(placeholderOutcome, string(d.Outcome))
		if d.Keyed {
			repl.Set(placeholderKeyHash, keyHash)
		}
	}
	if extra, ok := r.Context().Value(caddyhttp.ExtraLogFieldsCtxKey).(*caddyhttp.ExtraLogFields); ok {
		extra.Set(zap.String("idempotency_outcome", string(d.Outcome)))
		if d.Keyed {
			extra.Set(zap.String("idempotency_key_hash", keyHash))
		}
	}
}

// requestID names a request in the handler's log lines: Caddy's per-request
// UUID, which an access log shows with `log_append request_id {http.request.uuid}`.
func requestID(r *http.Request) string {
	repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if !ok {
		return ""
	}
	id, _ := repl.GetString("http.request.uuid")
	return id
}

// handlerMetrics are the handler's collectors in one config's registry
// (Caddy's /metrics). A reload brings a new registry, so Provision registers
// them again; handlers of one config share them. No label names a key.
type handlerMetrics struct {
	requests *prometheus.CounterVec                     // by outcome
	outcomes map[idempotency.Outcome]prometheus.Counter // requests' series, looked up once
	storeOps *prometheus.HistogramVec                   // by operation and result
	inFlight prometheus.Gauge                           // requests that own their key and are upstream
	gaveUp   prometheus.Counter                         // records released after max_doubts unsure searches
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
		gaveUp: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "reconcile_gave_up_total",
			Help: "Records released after reconcile.max_doubts searches could not tell whether the upstream acted on them: a retry may have run the request twice.",
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
	if m.gaveUp, err = register(reg, m.gaveUp); err != nil {
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

// observeStore times each call to the store, and counts the requests that
// own their key: a Begin that claims it starts one, and the owner's Complete,
// Release or Hold (the engine calls exactly one) ends it.
func (m *handlerMetrics) observeStore(c idempotency.StoreCall) {
	result := "ok"
	switch {
	case errors.Is(c.Err, idempotency.ErrNotOwner):
		result = "not_owner"
	case c.Err != nil:
		result = "error"
	}
	m.storeOps.WithLabelValues(c.Op, result).Observe(c.Duration.Seconds())
	switch {
	case c.Op == "begin" && c.Owned:
		m.inFlight.Inc()
	case c.Op == "complete", c.Op == "release", c.Op == "hold":
		m.inFlight.Dec()
	}
}
