// Package e2e holds the end-to-end tests of the idempotency handler: a real
// Caddy (in-process through caddytest, and cmd/caddy processes the tests
// start and kill) in front of real upstreams, with real Badger directories
// and Redis servers. The tests see the handler only as its users do: through
// Caddyfile and JSON configs, the admin API, the caddy command and HTTP.
//
// Each file is named for the behaviour its tests prove; harness_test.go and
// the other harness_*_test.go files hold what they share. They run off
// t.Parallel(), since they share one in-process Caddy:
//
//	REDIS_URL=redis://127.0.0.1:6379/0 go test -race ./e2e/
package e2e
