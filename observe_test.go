package caddyidempotency

import (
	"context"
	"net/http/httptest"
	"slices"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/caddy-idempotency/caddy-idempotency/idempotency"
)

// gather returns every sample of reg by metric name and, for requests_total,
// outcome label: "caddy_http_idempotency_requests_total{in_doubt}".
func gather(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	samples := make(map[string]float64)
	for _, f := range families {
		if f.GetType().String() != "COUNTER" {
			continue
		}
		for _, m := range f.GetMetric() {
			name := f.GetName()
			for _, l := range m.GetLabel() {
				if l.GetName() == "outcome" {
					name += "{" + l.GetValue() + "}"
				}
			}
			samples[name] = m.GetCounter().GetValue()
		}
	}
	return samples
}

// Every outcome's series, reconciled and in_doubt among them, and the
// gave-up counter exist from the start; a record released after max_doubts
// counts in both in_doubt and reconcile_gave_up_total, so an operator can
// alert on the latter alone.
func TestMetricsReconcileSeries(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := newHandlerMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	const requests, gaveUp = "caddy_http_idempotency_requests_total", "caddy_http_idempotency_reconcile_gave_up_total"
	samples := gather(t, reg)
	for _, o := range []idempotency.Outcome{idempotency.OutcomeReconciled, idempotency.OutcomeInDoubt} {
		if !slices.Contains(idempotency.Outcomes, o) {
			t.Errorf("idempotency.Outcomes lacks %q", o)
		}
	}
	for _, o := range idempotency.Outcomes {
		if v, ok := samples[requests+"{"+string(o)+"}"]; !ok || v != 0 {
			t.Errorf("%s{outcome=%q} = %v (present %v), want a 0 series", requests, o, v, ok)
		}
	}
	if v, ok := samples[gaveUp]; !ok || v != 0 {
		t.Errorf("%s = %v (present %v), want a 0 series", gaveUp, v, ok)
	}

	h := &HandlerModule{metrics: m}
	for _, d := range []idempotency.Decision{
		{Outcome: idempotency.OutcomeReconciled, Status: 200},
		{Outcome: idempotency.OutcomeInDoubt, Status: 409, Reason: idempotency.CodeOutcomeUnknown}, // held
		{Outcome: idempotency.OutcomeInDoubt, Status: 502},                                         // released without reconcile
		{Outcome: idempotency.OutcomeInDoubt, Status: 502, Reason: "gave up"},
		{Outcome: idempotency.OutcomeReleased, Reason: "gave up"}, // only in_doubt gives up
	} {
		h.observe(httptest.NewRequest("POST", "/v1/batches", nil), d)
	}
	samples = gather(t, reg)
	for name, want := range map[string]float64{
		requests + "{reconciled}": 1,
		requests + "{in_doubt}":   3,
		requests + "{released}":   1,
		gaveUp:                    1,
	} {
		if samples[name] != want {
			t.Errorf("%s = %v, want %v", name, samples[name], want)
		}
	}

	// A second handler of the config shares the counter.
	m2, err := newHandlerMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	(&HandlerModule{metrics: m2}).observe(httptest.NewRequest("POST", "/v1/batches", nil),
		idempotency.Decision{Outcome: idempotency.OutcomeInDoubt, Reason: "gave up"})
	if v := gather(t, reg)[gaveUp]; v != 2 {
		t.Errorf("%s = %v after a second handler's give-up, want 2", gaveUp, v)
	}
}

// The outcome placeholder carries the new outcomes as they are spelled.
func TestPlaceholderReconcileOutcomes(t *testing.T) {
	m, err := newHandlerMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	h := &HandlerModule{metrics: m}
	for _, o := range []idempotency.Outcome{idempotency.OutcomeReconciled, idempotency.OutcomeInDoubt} {
		repl := caddy.NewReplacer()
		r := httptest.NewRequest("POST", "/v1/batches", nil)
		r = r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, repl))
		h.observe(r, idempotency.Decision{Outcome: o})
		if got, _ := repl.GetString(placeholderOutcome); got != string(o) {
			t.Errorf("{%s} = %q, want %q", placeholderOutcome, got, o)
		}
	}
}
