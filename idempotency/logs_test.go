package idempotency

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// At every level, logs name a key only by its hash and never carry the
// credential, whatever path the request takes.
func TestLogsCarryNoKeyOrCredential(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	store := NewMemoryStore()
	defer store.Close()
	h, err := New(Config{Store: store, Logger: zap.New(core)})
	if err != nil {
		t.Fatal(err)
	}
	status := http.StatusOK
	upstream := h.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(status)
		_, _ = w.Write([]byte(`{"id":"batch_1"}`))
	}))
	const key, credential = "log-key-71c2", "sk-log-credential-55e0"
	send := func(body string, headers ...string) {
		r := httptest.NewRequest(http.MethodPost, "/v1/batches", strings.NewReader(body))
		r.Header.Set("Content-Type", "application/json")
		r.Header.Set("Authorization", "Bearer "+credential)
		for i := 0; i+1 < len(headers); i += 2 {
			r.Header.Add(headers[i], headers[i+1])
		}
		upstream.ServeHTTP(httptest.NewRecorder(), r)
	}
	send(`{"a":1}`, "Idempotency-Key", key)                              // stored
	send(`{"a":1}`, "Idempotency-Key", key)                              // replayed
	send(`{"a":2}`, "Idempotency-Key", key)                              // reused
	send(`{"a":1,"idempotency_key":"`+key+`x"}`, "Idempotency-Key", key) // mismatch
	send(`{"a":`, "Idempotency-Key", key)                                // invalid JSON
	send(`{"a":1}`, "Idempotency-Key", key, "Idempotency-Key", key)      // duplicated
	status = http.StatusInternalServerError
	send(`{"b":1,"idempotency_key":"` + key + `-2"}`) // released

	if logs.Len() < 6 {
		t.Fatalf("only %d log entries: the paths above were not logged", logs.Len())
	}
	// The control: decisions name the key by its hash.
	wantHash := NewRecordKey("example.com@:80", "Bearer "+credential, key).String()
	if n := logs.FilterField(zap.String("key_hash", wantHash)).Len(); n < 3 {
		t.Fatalf("%d log entries carry key_hash %s, want the stored, replayed and reused decisions", n, wantHash)
	}
	for _, e := range logs.All() {
		line := e.Message
		for k, v := range e.ContextMap() {
			line += fmt.Sprintf(" %s=%v", k, v)
		}
		if strings.Contains(line, key) || strings.Contains(line, credential) {
			t.Errorf("log entry leaks a secret: %s", line)
		}
	}
}
