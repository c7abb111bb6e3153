package e2e

import (
	"encoding/json"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"
)

// The cases of llama-stack's test_reference_idempotency.py, over HTTP through
// a real Caddy in front of a backend that has no idempotency of its own. Each
// runs with the key in the Idempotency-Key header and in the body field.

type keyTransport struct {
	name string
	// request builds a create carrying key (no key when key is "").
	request func(t *testing.T, fields map[string]any, key string) (body string, headers []string)
}

var keyTransports = []keyTransport{
	{"header", func(t *testing.T, fields map[string]any, key string) (string, []string) {
		if key == "" {
			return createBody(t, fields, ""), nil
		}
		return createBody(t, fields, ""), []string{"Idempotency-Key", key}
	}},
	{"body_field", func(t *testing.T, fields map[string]any, key string) (string, []string) {
		return createBody(t, fields, key), nil
	}},
}

func (s *stack) create(tr keyTransport, fields map[string]any, key string) reply {
	s.t.Helper()
	body, headers := tr.request(s.t, fields, key)
	return s.send(http.MethodPost, "/v1/batches", body, headers...)
}

func TestSeedIdempotentCreationSameParams(t *testing.T) {
	for _, tr := range keyTransports {
		t.Run(tr.name, func(t *testing.T) {
			s := newStack(t, "store badger "+storeDir(t))
			// The same metadata in two member orders, sent as raw JSON.
			first := `{"input_file_id":"file-abc123","endpoint":"/v1/chat/completions","completion_window":"24h",` +
				`"metadata":{"test":"value1","other":"value2"}%s}`
			second := `{"metadata":{"other":"value2","test":"value1"},"completion_window":"24h",` +
				`"endpoint":"/v1/chat/completions","input_file_id":"file-abc123"%s}`
			send := func(tmpl string) reply {
				if tr.name == "header" {
					return s.send(http.MethodPost, "/v1/batches", strings.Replace(tmpl, "%s", "", 1), "Idempotency-Key", "unique-token-1")
				}
				return s.send(http.MethodPost, "/v1/batches", strings.Replace(tmpl, "%s", `,"idempotency_key":"unique-token-1"`, 1))
			}

			r1 := send(first)
			batch1 := r1.batch(t)
			time.Sleep(1100 * time.Millisecond) // so a second create would get another created_at
			r2 := send(second)
			batch2 := r2.batch(t)

			if batch1.ID != batch2.ID || batch1.CreatedAt != batch2.CreatedAt ||
				batch1.InputFileID != batch2.InputFileID || !reflect.DeepEqual(batch1.Metadata, batch2.Metadata) {
				t.Fatalf("replay differs:\n%s\n%s", r1.Body, r2.Body)
			}
			if got := s.backend.Creates(); got != 1 {
				t.Fatalf("backend creates = %d, want 1", got)
			}
			if r1.Header.Get("Idempotent-Replayed") != "" || r2.Header.Get("Idempotent-Replayed") != "true" {
				t.Fatalf("Idempotent-Replayed: first %q, replay %q", r1.Header.Get("Idempotent-Replayed"), r2.Header.Get("Idempotent-Replayed"))
			}
		})
	}
}

func TestSeedDifferentKeysCreateDifferentBatches(t *testing.T) {
	for _, tr := range keyTransports {
		t.Run(tr.name, func(t *testing.T) {
			s := newStack(t, "store badger "+storeDir(t))
			b1 := s.create(tr, nil, "token-A").batch(t)
			b2 := s.create(tr, nil, "token-B").batch(t)
			if b1.ID == b2.ID {
				t.Fatalf("two keys gave one batch %s", b1.ID)
			}
			if got := s.backend.Creates(); got != 2 {
				t.Fatalf("backend creates = %d, want 2", got)
			}
		})
	}
}

func TestSeedNoKeyIsNotIdempotent(t *testing.T) {
	s := newStack(t, "store badger "+storeDir(t))
	tr := keyTransports[0]
	b1 := s.create(tr, nil, "").batch(t)
	b2 := s.create(tr, nil, "").batch(t)
	if b1.ID == b2.ID {
		t.Fatalf("no key, yet one batch %s", b1.ID)
	}
	if b1.InputFileID != b2.InputFileID || b1.Endpoint != b2.Endpoint ||
		b1.CompletionWindow != b2.CompletionWindow || !reflect.DeepEqual(b1.Metadata, b2.Metadata) {
		t.Fatalf("parameters differ: %+v %+v", b1, b2)
	}
}

func TestSeedSameKeyDifferentParamsConflict(t *testing.T) {
	cases := []struct {
		name          string
		param         string
		first, second any
	}{
		{"input_file_id", "input_file_id", "file_001", "file_002"},
		{"metadata_values", "metadata", map[string]any{"test": "value1"}, map[string]any{"test": "value2"}},
		{"metadata_null_vs_empty", "metadata", nil, map[string]any{}},
	}
	for _, tr := range keyTransports {
		for _, c := range cases {
			t.Run(tr.name+"/"+c.name, func(t *testing.T) {
				s := newStack(t, "store badger "+storeDir(t))
				batch1 := s.create(tr, map[string]any{c.param: c.first}, "same-token").batch(t)

				r := s.create(tr, map[string]any{c.param: c.second}, "same-token")
				msg := r.apiError(t, http.StatusConflict, "idempotency_key_reused")
				want := "Idempotency key 'same-token' was previously used with different parameters. " +
					"Either use a new idempotency key or ensure all parameters match the original request."
				if msg != want {
					t.Fatalf("message %q\nwant    %q", msg, want)
				}
				if r.Header.Get("x-should-retry") != "false" {
					t.Fatalf("x-should-retry = %q, want false", r.Header.Get("x-should-retry"))
				}

				got := s.send(http.MethodGet, "/v1/batches/"+batch1.ID, "")
				var retrieved map[string]any
				if err := json.Unmarshal(got.Body, &retrieved); err != nil || retrieved["id"] != batch1.ID {
					t.Fatalf("retrieve %s: %s", batch1.ID, got.Body)
				}
				if !reflect.DeepEqual(retrieved[c.param], c.first) {
					t.Fatalf("%s = %v, want %v", c.param, retrieved[c.param], c.first)
				}
				if n := s.backend.Creates(); n != 1 {
					t.Fatalf("backend creates = %d, want 1", n)
				}
			})
		}
	}
}
