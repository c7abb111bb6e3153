package e2e

import (
	"fmt"
	"net/http"
	"testing"

	"github.com/caddy-idempotency/caddy-idempotency/internal/batchesbackend"
	"github.com/caddy-idempotency/caddy-idempotency/internal/redistest"
)

// The JSON form of the README, loaded as JSON: every field set.
func TestJSONConfig(t *testing.T) {
	s := loadJSONConfig(t, fmt.Sprintf(`{"backend": "badger", "path": %q}`, storeDir(t)))
	checkJSONConfig(t, s)
}

// The Redis store in its JSON form.
func TestJSONConfigRedis(t *testing.T) {
	s := loadJSONConfig(t, fmt.Sprintf(`{"backend": "redis", "url": %q, "key_prefix": %q, "pool_size": 4,
		"dial_timeout": "1s", "read_timeout": "1s", "write_timeout": "1s"}`, redistest.URL(t), redistest.UniquePrefix("json")))
	checkJSONConfig(t, s)
}

// loadJSONConfig loads a JSON config with every handler field set and the
// given store, in front of a new backend.
func loadJSONConfig(t *testing.T, storeJSON string) *stack {
	backend := batchesbackend.New()
	upstream := serveBackend(t, backend)
	s := &stack{t: t, backend: backend, url: fmt.Sprintf("http://localhost:%d", httpPort), client: newClient(t)}
	s.loadConfig(fmt.Sprintf(`{
		"admin": {"listen": "localhost:%d"},
		"logging": {"logs": {"default": {"level": "ERROR"}}},
		"apps": {"http": {"http_port": %d, "https_port": %d, "servers": {"srv0": {
			"listen": [":%d"],
			"automatic_https": {"disable": true},
			"routes": [%s, {
				"match": [{"path": ["/v1/batches"]}],
				"handle": [{
					"handler": "idempotency",
					"key_header": "X-Key",
					"key_field": "idempotency_key",
					"forward_key_field": true,
					"scope": "{http.request.header.Authorization}",
					"require_scope": true,
					"namespace": "json-site",
					"methods": ["POST"],
					"ttl": "1h",
					"lock_timeout": "30s",
					"wait": "5s",
					"max_body": 65536,
					"max_response": 65536,
					"conflict_status": 422,
					"fail_open": true,
					"reconcile": {"kind": "batches", "tag": true, "tag_key": "idempotency_tag", "window": "1s", "page_size": 100, "pages": 10, "max_doubts": 5},
					"store": %s
				}, {
					"handler": "reverse_proxy",
					"upstreams": [{"dial": %q}]
				}]
			}]
		}}}}
	}`, adminPort, httpPort, httpsPort, httpPort, warmUpRouteJSON, storeJSON, upstream), "json")
	return s
}

func checkJSONConfig(t *testing.T, s *stack) {
	body := createBody(t, nil, "")
	created := s.send(http.MethodPost, "/v1/batches", body, "X-Key", "json-1").batch(t)
	r := s.send(http.MethodPost, "/v1/batches", body, "X-Key", "json-1")
	if b := r.batch(t); b.ID != created.ID || r.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("no replay under the JSON config: %s vs %s", b.ID, created.ID)
	}
	s.send(http.MethodPost, "/v1/batches", createBody(t, map[string]any{"input_file_id": "file-2"}, ""), "X-Key", "json-1").
		apiError(t, http.StatusUnprocessableEntity, "idempotency_key_reused")
	s.send(http.MethodPost, "/v1/batches", body, "X-Key", "json-2", "Authorization", "").
		apiError(t, http.StatusBadRequest, "idempotency_scope_required")
}
