package caddyidempotency

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"

	"github.com/caddy-idempotency/caddy-idempotency/idempotency"
)

// adminGet serves GET path (with query) and decodes its JSON answer into v.
func adminGet(t *testing.T, target string, v any) {
	t.Helper()
	w := httptest.NewRecorder()
	if err := serveAdmin(w, httptest.NewRequest(http.MethodGet, target, nil)); err != nil {
		t.Fatalf("GET %s: %v", target, err)
	}
	if err := json.Unmarshal(w.Body.Bytes(), v); err != nil {
		t.Fatalf("GET %s: %v in %s", target, err, w.Body.Bytes())
	}
}

// Stats counts held (in-doubt) records in in_doubt and in total; a held
// record shows when its hold ends and its doubts, and no lease.
func TestAdminStatsAndRecordInDoubt(t *testing.T) {
	store := idempotency.NewMemoryStore()
	defer store.Close()
	name := "memory:admin-test-" + t.Name()
	defer adminStores.register(name, "memory", store)()
	ctx := t.Context()
	begin := func(key idempotency.RecordKey) idempotency.OwnerToken {
		owner := idempotency.NewOwnerToken()
		if _, owned, err := store.Begin(ctx, key, idempotency.Fingerprint{1}, owner, time.Minute); err != nil || !owned {
			t.Fatalf("Begin = owned %v, err %v", owned, err)
		}
		return owner
	}
	begin(idempotency.RecordKey{1})
	done := idempotency.RecordKey{2}
	if err := store.Complete(ctx, done, begin(done), idempotency.Response{Status: 200}, time.Hour); err != nil {
		t.Fatal(err)
	}
	held := idempotency.RecordKey{3}
	if err := store.Hold(ctx, held, begin(held), time.Hour); err != nil {
		t.Fatal(err)
	}

	q := "?store=" + url.QueryEscape(name)
	var st map[string]any
	adminGet(t, "/idempotency/stats"+q, &st)
	want := map[string]any{"store": name, "total": 3.0, "in_flight": 1.0, "completed": 1.0, "in_doubt": 1.0}
	if len(st) != len(want) {
		t.Fatalf("stats = %v, want %v", st, want)
	}
	for k, v := range want {
		if st[k] != v {
			t.Fatalf("stats = %v, want %v", st, want)
		}
	}

	var rec map[string]any
	adminGet(t, "/idempotency/records/"+held.String()+q, &rec)
	if rec["state"] != "in_doubt" || rec["doubts"] != 1.0 || rec["expires"] == nil || rec["lease_until"] != nil {
		t.Fatalf("held record = %v, want in_doubt with doubts 1, expires and no lease_until", rec)
	}
	var flying map[string]any
	adminGet(t, "/idempotency/records/"+idempotency.RecordKey{1}.String()+q, &flying)
	if _, ok := flying["doubts"]; ok || flying["state"] != "in_flight" {
		t.Fatalf("in-flight record = %v, want no doubts", flying)
	}
}
