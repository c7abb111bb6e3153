package idempotency

import (
	"net/http"
	"strconv"
	"testing"
)

func TestFirstForwardedSecondReplayed(t *testing.T) {
	s := newStack(t, Config{}, nil)
	first := s.post(t, createBody, withKey("k-1"))
	wantForwarded(t, first, http.StatusOK)
	if first.header.Get("Set-Cookie") == "" {
		t.Fatal("the first response lost the upstream's Set-Cookie")
	}
	if first.header.Get("X-Request-Id") != "req_1" {
		t.Fatalf("X-Request-Id %q, want req_1", first.header.Get("X-Request-Id"))
	}

	rec, ok := getRecord(t, s.store, s.ns(), "", "k-1")
	if !ok || rec.State != StateCompleted || rec.Response == nil {
		t.Fatalf("after a 2xx the record is %+v (found %v), want completed", rec, ok)
	}
	if rec.Response.Header.Get("Set-Cookie") != "" || rec.Response.Header.Get("Date") != "" {
		t.Fatalf("stored headers include per-response values: %v", rec.Response.Header)
	}

	for range 2 {
		again := s.post(t, createBody, withKey("k-1"))
		wantReplayOf(t, again, first)
		wantHeader(t, again, "Set-Cookie", "")
		wantHeader(t, again, "X-Request-Id", "req_1")
		wantHeader(t, again, "Content-Type", "application/json")
		wantHeader(t, again, "Content-Length", strconv.Itoa(len(first.body)))
	}
	s.up.wantCalls(t, 1)

	// The sf-string form of the same key is the same key.
	wantReplayOf(t, s.post(t, createBody, withKey(`"k-1"`)), first)
	// A new key is a new request.
	wantForwarded(t, s.post(t, createBody, withKey("k-2")), http.StatusOK)
	s.up.wantCalls(t, 2)
}

func TestEquivalentJSONReplays(t *testing.T) {
	s := newStack(t, Config{}, nil)
	first := s.post(t, createBody, withKey("k-eq"))
	wantForwarded(t, first, http.StatusOK)
	variants := map[string]string{
		"member order": `{"metadata":{"run":"1","team":"a"},"completion_window":"24h","endpoint":"/v1/chat/completions","input_file_id":"file-abc"}`,
		"whitespace": "\n{ \"input_file_id\" : \"file-abc\",\r\n\t\"endpoint\":\"/v1/chat/completions\" ,\"completion_window\":\"24h\",\n" +
			"  \"metadata\": { \"team\": \"a\", \"run\": \"1\" } }\n",
		"escapes":       `{"input_file_id":"file-\u0061bc","endpoint":"\/v1\/chat\/completions","completion_window":"24h","metadata":{"team":"a","run":"1"}}`,
		"null metadata": `{"input_file_id":"file-abc","endpoint":"/v1/chat/completions","completion_window":"24h","metadata":{"team":"a","run":"1"},"extra":null}`,
	}
	for name, body := range variants {
		t.Run(name, func(t *testing.T) {
			wantReplayOf(t, s.post(t, body, withKey("k-eq")), first)
		})
	}
	s.up.wantCalls(t, 1)
}

// llama-stack's seed tests: absent == null, and {} differs from both.
func TestNullEqualsAbsent(t *testing.T) {
	const (
		absent = `{"input_file_id":"f","endpoint":"/v1/embeddings","completion_window":"24h"}`
		null   = `{"input_file_id":"f","endpoint":"/v1/embeddings","completion_window":"24h","metadata":null}`
		empty  = `{"input_file_id":"f","endpoint":"/v1/embeddings","completion_window":"24h","metadata":{}}`
	)
	t.Run("absent then null replays", func(t *testing.T) {
		s := newStack(t, Config{}, nil)
		first := s.post(t, absent, withKey("k"))
		wantForwarded(t, first, http.StatusOK)
		wantReplayOf(t, s.post(t, null, withKey("k")), first)
		wantError(t, s.post(t, empty, withKey("k")), http.StatusConflict, CodeKeyReused)
		s.up.wantCalls(t, 1)
	})
	t.Run("null then absent replays", func(t *testing.T) {
		s := newStack(t, Config{}, nil)
		first := s.post(t, null, withKey("k"))
		wantForwarded(t, first, http.StatusOK)
		wantReplayOf(t, s.post(t, absent, withKey("k")), first)
		s.up.wantCalls(t, 1)
	})
	t.Run("empty object conflicts with null and absent", func(t *testing.T) {
		s := newStack(t, Config{}, nil)
		first := s.post(t, empty, withKey("k"))
		wantForwarded(t, first, http.StatusOK)
		wantError(t, s.post(t, null, withKey("k")), http.StatusConflict, CodeKeyReused)
		wantError(t, s.post(t, absent, withKey("k")), http.StatusConflict, CodeKeyReused)
		wantReplayOf(t, s.post(t, empty, withKey("k")), first)
		s.up.wantCalls(t, 1)
	})
}

// POST /v1/batches/{id}/cancel has no body, yet SDKs send it as JSON.
func TestEmptyJSONBodyWithKey(t *testing.T) {
	s := newStack(t, Config{}, nil)
	cancel := withPath("/v1/batches/batch_1/cancel")
	first := s.post(t, "", withKey("k-cancel"), cancel)
	wantForwarded(t, first, http.StatusOK)
	wantReplayOf(t, s.post(t, "", withKey("k-cancel"), cancel), first)
	wantError(t, s.post(t, "{}", withKey("k-cancel"), cancel), http.StatusConflict, CodeKeyReused)
	s.up.wantCalls(t, 1)
}

func TestNonJSONBodyHashesRawBytes(t *testing.T) {
	s := newStack(t, Config{}, nil)
	text := withType("text/plain")
	first := s.post(t, `{"b":1,"a":2}`, withKey("k-raw"), text)
	wantForwarded(t, first, http.StatusOK)
	if seen := s.up.requests(); string(seen[0].Body) != `{"b":1,"a":2}` {
		t.Fatalf("upstream body %q, want it untouched", seen[0].Body)
	}
	wantReplayOf(t, s.post(t, `{"b":1,"a":2}`, withKey("k-raw"), text), first)
	// Raw bytes: a JSON-equivalent reordering is a different request...
	wantError(t, s.post(t, `{"a":2,"b":1}`, withKey("k-raw"), text), http.StatusConflict, CodeKeyReused)
	wantError(t, s.post(t, `{"b":1,"a":2} `, withKey("k-raw"), text), http.StatusConflict, CodeKeyReused)
	// ...and the same bytes as JSON are a different request too.
	wantError(t, s.post(t, `{"b":1,"a":2}`, withKey("k-raw")), http.StatusConflict, CodeKeyReused)
	s.up.wantCalls(t, 1)

	// A key field inside a non-JSON body is not a key, and stays in the body.
	const withField = `{"idempotency_key":"k-other"}`
	wantForwarded(t, s.post(t, withField, text), http.StatusOK)
	wantForwarded(t, s.post(t, withField, text), http.StatusOK)
	if seen := s.up.requests(); string(seen[2].Body) != withField {
		t.Fatalf("upstream body %q, want %q", seen[2].Body, withField)
	}
	s.up.wantCalls(t, 3)
}
