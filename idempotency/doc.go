// Package idempotency is the engine of caddy-idempotency: it makes requests
// to an OpenAI-compatible API (POST /v1/batches above all) safe to retry,
// without touching the backend. It has no Caddy import and works as plain
// net/http middleware; the Caddy module is a thin adapter over [Handler].
//
// A covered request (POST by default) with a key, in the Idempotency-Key
// header or the idempotency_key JSON body field, runs at most once per key,
// scope (by default the Authorization header) and namespace (by default the
// request's site, host@listener):
//
//  1. The key is validated (an RFC 8941 sf-string or a bare value, 1 to 255
//     printable ASCII) and the body field removed before forwarding.
//  2. The fingerprint is SHA-256 over method, escaped path, the raw query
//     ordered by name (pairs of one name in the order sent) and the body,
//     decoded from its Content-Encoding, in a canonical form (package jcs):
//     strict RFC 8785 JSON without the key field and null top-level
//     members, multipart/form-data by its parts, a form by its pairs, or
//     raw bytes.
//  3. [Store].Begin atomically claims SHA-256(namespace, scope, key) with a
//     lease that the owner renews while it is upstream.
//  4. The owner forwards. A 2xx within MaxResponse is stored before the
//     client sees a byte (a stream the upstream flushes, when it ends); a
//     2xx that cannot be kept completes the record without it, so retries
//     get 409 idempotency_response_not_stored. Anything else releases the
//     claim.
//  5. The same request again replays the stored response, marked
//     Idempotent-Replayed: true; the key with other parameters gets 409
//     idempotency_key_reused.
//  6. A duplicate of a request still upstream waits up to [Config].Wait
//     (30s by default) and replays its result; with NoWait, or once the wait
//     runs out, it gets 409 idempotency_key_in_use with Retry-After.
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
