package idempotency

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

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
		r := newRequest(t, http.MethodPost, "/v1/batches", strings.NewReader(body))
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
	status = http.StatusUnprocessableEntity
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

// One debug line per decision, with the outcome, the key hash and the
// request id; nothing at info for healthy requests.
func TestDecisionLogLines(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	s := newStack(t, Config{Logger: zap.New(core), RequestID: func(r *http.Request) string { return r.Header.Get("X-Rid") }}, nil)
	rid := func(id string) reqOpt { return func(r *http.Request) { r.Header.Set("X-Rid", id) } }
	s.post(t, createBody, withKey("l-1"), rid("r-stored"))
	s.post(t, createBody, withKey("l-1"), rid("r-replayed"))
	s.post(t, createBody, rid("r-pass"))

	want := map[string]Outcome{"r-stored": OutcomeStored, "r-replayed": OutcomeReplayed, "r-pass": OutcomePassthrough}
	for _, e := range logs.All() {
		if e.Level > zapcore.DebugLevel {
			t.Errorf("a healthy request logged at %s: %s", e.Level, e.Message)
		}
	}
	decisions := logs.FilterMessage("idempotency decision").All()
	if len(decisions) != len(want) {
		t.Fatalf("%d decision lines, want %d: %+v", len(decisions), len(want), decisions)
	}
	for _, e := range decisions {
		fields := e.ContextMap()
		id, _ := fields["request_id"].(string)
		if fields["outcome"] != string(want[id]) {
			t.Errorf("request %q: outcome %v, want %s", id, fields["outcome"], want[id])
		}
		_, hasHash := fields["key_hash"]
		if hasHash != (id != "r-pass") {
			t.Errorf("request %q: key_hash present %v", id, hasHash)
		}
	}
}

// A refusal's decision line names its error code as code; a release names
// its reason as reason.
func TestDecisionLogCodeAndReason(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	s := newStack(t, Config{Logger: zap.New(core)}, func(w http.ResponseWriter, r *http.Request, n int64) {
		w.WriteHeader(http.StatusUnprocessableEntity)
	})
	s.post(t, "{", withKey("lc-bad"))        // rejected: invalid_json
	s.post(t, createBody, withKey("lc-422")) // released: not stored
	lines := logs.FilterMessage("idempotency decision").All()
	if len(lines) != 2 {
		t.Fatalf("%d decision lines, want 2", len(lines))
	}
	for i, want := range []map[string]any{
		{"outcome": string(OutcomeRejected), "code": CodeInvalidJSON},
		{"outcome": string(OutcomeReleased), "reason": "not stored", "status": int64(422)},
	} {
		got := lines[i].ContextMap()
		for k, v := range want {
			if got[k] != v {
				t.Errorf("line %d: %s = %v, want %v (line %v)", i, k, got[k], v, got)
			}
		}
	}
}

// The warn and error paths of a failing store name the key only by hash.
func TestStoreFailureLogsCarryNoKey(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	fs := newFailingStore(t)
	s := newStack(t, Config{Store: fs, Logger: zap.New(core), Lease: 150 * time.Millisecond}, nil)
	const key, credential = "fail-log-key-9a1e", "sk-fail-log-4b2c"
	auth := withAuth("Bearer " + credential)

	fs.begin.Store(true)
	s.post(t, createBody, withKey(key), auth) // error: begin
	fs.begin.Store(false)
	fs.complete.Store(true)
	s.post(t, createBody, withKey(key+"-c"), auth) // error: complete
	fs.complete.Store(false)
	fs.release.Store(true)
	s.post(t, "{", withKey(key+"-r"), auth) // rejected before the store
	open := newStack(t, Config{Store: fs, Logger: zap.New(core), FailOpen: true}, nil)
	fs.begin.Store(true)
	open.post(t, createBody, withKey(key+"-o"), auth) // warn: fail_open

	if logs.FilterLevelExact(zapcore.ErrorLevel).Len() < 2 || logs.FilterLevelExact(zapcore.WarnLevel).Len() < 1 {
		t.Fatalf("the failure paths were not logged: %d entries", logs.Len())
	}
	for _, e := range logs.All() {
		line := e.Message
		for k, v := range e.ContextMap() {
			line += " " + k + "=" + fmt.Sprint(v)
		}
		if strings.Contains(line, key) || strings.Contains(line, credential) {
			t.Errorf("log entry leaks a secret: %s", line)
		}
	}
}
