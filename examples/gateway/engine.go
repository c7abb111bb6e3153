package main

import (
	"crypto/rand"
	"encoding/hex"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-idempotency/caddy-idempotency/idempotency"
)

// engineOptions are the flags that shape the engine.
type engineOptions struct {
	wait         time.Duration
	ttl          time.Duration
	namespace    string
	requireScope bool
	maxBody      int64
}

// newEngine configures the idempotency engine. Every field left out takes
// the engine's default: the Idempotency-Key header or the idempotency_key
// body field, POST only, responses kept up to 1 MiB, a 60s lease, 409 for a
// reused key, 503 (not an unprotected forward) when the store fails.
func newEngine(o engineOptions, store idempotency.Store, log *zap.Logger, m *metrics) (*idempotency.Handler, error) {
	wait := o.wait
	if wait == 0 {
		// The engine reads Wait 0 as "the default" (30s); this gateway's
		// -wait 0 means what it says: do not wait, answer 409 in_use.
		wait = idempotency.NoWait
	}
	return idempotency.New(idempotency.Config{
		Store: store,
		// Scope says whose records a request may meet: two clients that send
		// the same key with different credentials never see each other's
		// responses. This is the engine's default, spelled out so you can
		// replace it: with a tenant id your authentication resolved, say, so
		// that one tenant's rotated API keys share its records.
		Scope:        scopeFromAuthorization,
		RequireScope: o.requireScope,
		Namespace:    o.namespace,
		Wait:         wait,
		TTL:          o.ttl,
		// The engine reads every keyed POST body, and every JSON one, even
		// without a key header, to look for the idempotency_key field. So a
		// chat completion with large images needs a larger MaxBody, or the
		// engine only on the paths it protects, or KeyField KeyFieldOff.
		MaxBody: o.maxBody,
		// The engine logs store failures (WARN, ERROR) and, at DEBUG, one
		// line per request. A nil Logger would keep it silent.
		Logger:    log.Named("idempotency"),
		RequestID: func(r *http.Request) string { return r.Header.Get(requestIDHeader) },
		Observe: func(r *http.Request, d idempotency.Decision) {
			m.decision(r, d, log)
		},
		ObserveStore: func(c idempotency.StoreCall) {
			m.storeCall(c, log)
		},
	})
}

func scopeFromAuthorization(r *http.Request) string {
	return r.Header.Get("Authorization")
}

const requestIDHeader = "X-Request-Id"

// withRequestID gives every request an X-Request-Id (keeping the client's),
// which the engine's log lines carry as request_id and the upstream receives.
func withRequestID(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get(requestIDHeader) == "" {
			var b [8]byte
			_, _ = rand.Read(b[:])
			r.Header.Set(requestIDHeader, hex.EncodeToString(b[:]))
		}
		next.ServeHTTP(w, r)
	})
}
