// Package idempotency is the engine of caddy-idempotency: it makes requests
// to an OpenAI-compatible API (POST /v1/batches above all) safe to retry,
// without touching the backend. It has no Caddy import and works as plain
// net/http middleware; the Caddy module is a thin adapter over [Handler].
//
// A covered request (POST by default) with a key, in the Idempotency-Key
// header or the idempotency_key JSON body field, runs at most once per key
// and scope (by default the Authorization header):
//
//  1. The key is validated (an RFC 8941 sf-string or a bare value, 1 to 255
//     printable ASCII) and the body field removed before forwarding.
//  2. The fingerprint is SHA-256 over method, path, sorted query and the
//     body: strict RFC 8785 JSON without null top-level members, or raw bytes.
//  3. [Store].Begin atomically claims SHA-256(scope, key) with a lease that
//     the owner renews while it is upstream.
//  4. The owner forwards; a 2xx response within MaxResponse is stored before
//     the client sees a byte, anything else releases the claim.
//  5. The same request again replays the stored response, marked
//     Idempotent-Replayed: true; the key with other parameters gets 409
//     idempotency_key_reused.
//  6. A duplicate of a request still upstream gets 409 idempotency_key_in_use
//     with Retry-After, or with [Config].Wait, waits and replays.
//
// Errors are written in OpenAI's error envelope, so every SDK surfaces them.
// As net/http middleware in front of a reverse proxy:
//
//	store, err := badgerstore.Open(badgerstore.Options{Dir: dir})
//	if err != nil { ... }
//	defer store.Close()
//	h, err := idempotency.New(idempotency.Config{Store: store})
//	if err != nil { ... }
//	http.ListenAndServe(":8080", h.Middleware(httputil.NewSingleHostReverseProxy(backend)))
//
// A chain whose handlers return errors calls h.Handle(w, r, next) instead.
package idempotency
