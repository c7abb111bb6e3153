package caddyidempotency

import (
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/caddy-idempotency/caddy-idempotency/idempotency"
)

// Placeholders the handler sets on every request it sees.
const (
	placeholderOutcome = "http.idempotency.outcome"  // stored, replayed, conflict, ...
	placeholderKeyHash = "http.idempotency.key_hash" // the record key, as logged; empty without a key
)

// observe makes a decision visible: the placeholders (for headers and
// logs), two fields of the access log entry, and the outcome counter.
func (h *Handler) observe(r *http.Request, d idempotency.Decision) {
	h.metrics.outcomes[d.Outcome].Inc()
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
