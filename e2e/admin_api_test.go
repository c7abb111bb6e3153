package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/caddy-idempotency/caddy-idempotency/idempotency"
	"github.com/caddy-idempotency/caddy-idempotency/internal/batchesbackend"
	"github.com/caddy-idempotency/caddy-idempotency/internal/redistest"
)

// The scope of the records the harness's requests make: their credential.
const adminScope = tenantA

type adminRecordJSON struct {
	Store       string              `json:"store"`
	KeyHash     string              `json:"key_hash"`
	State       string              `json:"state"`
	Fingerprint string              `json:"fingerprint"`
	Created     time.Time           `json:"created"`
	LeaseUntil  *time.Time          `json:"lease_until"`
	Expires     *time.Time          `json:"expires"`
	Status      int                 `json:"status"`
	BodyBytes   *int                `json:"body_bytes"`
	Headers     map[string][]string `json:"headers"`
	Body        *string             `json:"body"`
}

type adminStatsJSON struct {
	Store     string `json:"store"`
	Total     int64  `json:"total"`
	InFlight  int64  `json:"in_flight"`
	Completed int64  `json:"completed"`
	InDoubt   int64  `json:"in_doubt"`
}

// byScopeAndKey is the records path with the test site's namespace, scope
// and key in the query.
func byScopeAndKey(scope, key string, more ...string) string {
	q := url.Values{"namespace": {siteNamespace()}, "scope": {scope}, "key": {key}}
	for i := 0; i+1 < len(more); i += 2 {
		q.Set(more[i], more[i+1])
	}
	return "/idempotency/records?" + q.Encode()
}

func adminStats(t *testing.T, query string) adminStatsJSON {
	t.Helper()
	var st adminStatsJSON
	admin(t, http.MethodGet, "/idempotency/stats"+query, "").json(t, http.StatusOK, &st)
	return st
}

var hex64 = regexp.MustCompile(`^[0-9a-f]{64}$`)

// A completed record through a real Caddy and Badger: inspected by scope and
// key (query or JSON body) and by the key_hash the handler logs, with and
// without its response; purged, after which the key goes upstream again.
func TestAdminInspectAndPurgeCompleted(t *testing.T) {
	logFile, err := os.CreateTemp(testRoot, "admin-log-")
	if err != nil {
		t.Fatal(err)
	}
	logFile.Close()
	globals := fmt.Sprintf("log {\n\t\toutput file %s\n\t\tformat json\n\t\tlevel DEBUG\n\t}", logFile.Name())
	s := newSiteStack(t, globals, func(upstream string) string { return idempotencySite("\t\tstore badger "+storeDir(t), upstream) })
	backend := s.backend

	body := createBody(t, nil, "")
	before := time.Now().Add(-time.Second)
	created := s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", "adm-1")
	batch := created.batch(t)
	s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", "adm-2").batch(t)
	s.send(http.MethodPost, "/v1/batches", createBody(t, map[string]any{"metadata": map[string]string{"x": "y"}}, ""), "Idempotency-Key", "adm-3").batch(t)

	var rec adminRecordJSON
	admin(t, http.MethodGet, byScopeAndKey(adminScope, "adm-1"), "").json(t, http.StatusOK, &rec)
	wantHash := idempotency.NewRecordKey(siteNamespace(), adminScope, "adm-1").String()
	switch {
	case rec.State != "completed" || rec.Status != http.StatusOK || rec.KeyHash != wantHash:
		t.Fatalf("record %+v, want completed 200 with key hash %s", rec, wantHash)
	case !strings.HasPrefix(rec.Store, "badger:") || !hex64.MatchString(rec.Fingerprint):
		t.Fatalf("store %q fingerprint %q", rec.Store, rec.Fingerprint)
	case rec.Created.Before(before) || rec.Created.After(time.Now()):
		t.Fatalf("created %v, want between %v and now", rec.Created, before)
	case rec.Expires == nil || rec.Expires.Sub(rec.Created) < 24*time.Hour-time.Minute || rec.Expires.Sub(rec.Created) > 24*time.Hour+time.Minute:
		t.Fatalf("expires %v for created %v, want the default ttl of 24h later", rec.Expires, rec.Created)
	case rec.LeaseUntil != nil || rec.BodyBytes == nil || *rec.BodyBytes != len(created.Body):
		t.Fatalf("lease_until %v, body_bytes %v (want %d)", rec.LeaseUntil, rec.BodyBytes, len(created.Body))
	case rec.Body != nil || rec.Headers != nil || strings.Contains(string(admin(t, http.MethodGet, byScopeAndKey(adminScope, "adm-1"), "").Body), batch.ID):
		t.Fatalf("the response is shown without body=1: %+v", rec)
	}

	// The fingerprint is the request's: equal for the same body, not for another.
	var same, other adminRecordJSON
	admin(t, http.MethodGet, byScopeAndKey(adminScope, "adm-2"), "").json(t, http.StatusOK, &same)
	admin(t, http.MethodGet, byScopeAndKey(adminScope, "adm-3"), "").json(t, http.StatusOK, &other)
	if same.Fingerprint != rec.Fingerprint || other.Fingerprint == rec.Fingerprint {
		t.Fatalf("fingerprints adm-1 %s, adm-2 (same body) %s, adm-3 (other body) %s", rec.Fingerprint, same.Fingerprint, other.Fingerprint)
	}

	// By the key_hash the handler logged for adm-1's request, with the body.
	logged := loggedKeyHashes(t, logFile.Name())
	if !logged[wantHash] {
		t.Fatalf("the handler's logs carry key hashes %v, not %s", logged, wantHash)
	}
	var full adminRecordJSON
	admin(t, http.MethodGet, "/idempotency/records/"+wantHash+"?body=1", "").json(t, http.StatusOK, &full)
	if full.Body == nil || *full.Body != string(created.Body) || full.Headers["Content-Type"][0] != "application/json" || full.Fingerprint != rec.Fingerprint {
		t.Fatalf("with body=1: body %v headers %v; the client got %s", full.Body, full.Headers, created.Body)
	}
	// Upper-case hex is the same key.
	admin(t, http.MethodGet, "/idempotency/records/"+strings.ToUpper(wantHash), "").json(t, http.StatusOK, &full)

	// Scope and key in a JSON body, which Caddy does not log as it logs URIs.
	var viaBody adminRecordJSON
	admin(t, http.MethodGet, "/idempotency/records", `{"namespace":"`+siteNamespace()+`","scope":"`+adminScope+`","key":"adm-1"}`).json(t, http.StatusOK, &viaBody)
	if viaBody.KeyHash != wantHash {
		t.Fatalf("by JSON body: key hash %s, want %s", viaBody.KeyHash, wantHash)
	}
	// Another tenant's scope is another record.
	admin(t, http.MethodGet, byScopeAndKey("Bearer sk-tenant-b", "adm-1"), "").adminErr(t, http.StatusNotFound, "no live record")

	// Purge; the key is free: the retry goes upstream and is stored anew.
	var purged struct {
		KeyHash string `json:"key_hash"`
		Purged  bool   `json:"purged"`
	}
	admin(t, http.MethodDelete, byScopeAndKey(adminScope, "adm-1"), "").json(t, http.StatusOK, &purged)
	if !purged.Purged || purged.KeyHash != wantHash {
		t.Fatalf("purge answered %+v", purged)
	}
	admin(t, http.MethodGet, "/idempotency/records/"+wantHash, "").adminErr(t, http.StatusNotFound, "no live record", wantHash)
	admin(t, http.MethodDelete, "/idempotency/records/"+wantHash, "").adminErr(t, http.StatusNotFound, "nothing to purge")
	creates := backend.Creates()
	again := s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", "adm-1")
	if b := again.batch(t); b.ID == batch.ID || again.Header.Get("Idempotent-Replayed") != "" || backend.Creates() != creates+1 {
		t.Fatalf("after the purge: batch %s (first %s), replayed %q, creates %d -> %d", b.ID, batch.ID, again.Header.Get("Idempotent-Replayed"), creates, backend.Creates())
	}
	admin(t, http.MethodGet, "/idempotency/records/"+wantHash, "").json(t, http.StatusOK, &rec)

	// A purge by hash of the other record.
	admin(t, http.MethodDelete, "/idempotency/records/"+same.KeyHash, "").json(t, http.StatusOK, &purged)
	admin(t, http.MethodGet, byScopeAndKey(adminScope, "adm-2"), "").adminErr(t, http.StatusNotFound)
}

// loggedKeyHashes reads the key_hash fields of a JSON log file.
func loggedKeyHashes(t *testing.T, path string) map[string]bool {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	seen := map[string]bool{}
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var entry struct {
			KeyHash string `json:"key_hash"`
		}
		if json.Unmarshal(sc.Bytes(), &entry) == nil && entry.KeyHash != "" {
			seen[entry.KeyHash] = true
		}
	}
	return seen
}

// An in-flight record: inspected with its lease, counted, purged. Its owner's
// response still reaches its client but is not stored, so a retry runs again.
func TestAdminInFlightPurge(t *testing.T) {
	s := newStack(t, "\t\twait 0\n\t\tstore badger "+storeDir(t))
	body := createBody(t, nil, "")
	open := holdNextCreate(t, s.backend)
	first := make(chan reply, 1)
	go func() {
		first <- sendTo(t, s.client, http.MethodPost, s.url+"/v1/batches", body, "Idempotency-Key", "adm-flight")
	}()
	waitFor(t, "the first request upstream", func() bool { return s.backend.Requests() == 1 })

	var rec adminRecordJSON
	path := byScopeAndKey(adminScope, "adm-flight")
	admin(t, http.MethodGet, path+"&body=1", "").json(t, http.StatusOK, &rec)
	if rec.State != "in_flight" || rec.LeaseUntil == nil || !rec.LeaseUntil.After(time.Now()) || rec.Expires != nil || rec.Status != 0 || rec.Body != nil {
		t.Fatalf("in-flight record %+v", rec)
	}
	if st := adminStats(t, ""); st != (adminStatsJSON{Store: st.Store, Total: 1, InFlight: 1}) {
		t.Fatalf("stats %+v, want 1 in flight", st)
	}
	s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", "adm-flight").apiError(t, http.StatusConflict, "idempotency_key_in_use")

	admin(t, http.MethodDelete, path, "").json(t, http.StatusOK, &struct{}{})
	admin(t, http.MethodGet, path, "").adminErr(t, http.StatusNotFound)
	open()
	owner := (<-first).batch(t) // its client still gets its answer
	admin(t, http.MethodGet, path, "").adminErr(t, http.StatusNotFound, "no live record")

	retry := s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", "adm-flight")
	if b := retry.batch(t); b.ID == owner.ID || retry.Header.Get("Idempotent-Replayed") != "" || s.backend.Creates() != 2 {
		t.Fatalf("retry after purging the in-flight record: batch %s (owner's %s), replayed %q, creates %d",
			b.ID, owner.ID, retry.Header.Get("Idempotent-Replayed"), s.backend.Creates())
	}
	admin(t, http.MethodGet, path, "").json(t, http.StatusOK, &rec)
	if rec.State != "completed" {
		t.Fatalf("after the retry: %+v", rec)
	}
}

// Counts of live records: released and keyless requests leave none.
func TestAdminStats(t *testing.T) {
	s := newStack(t, "\t\tstore badger "+storeDir(t))
	if st := adminStats(t, ""); st != (adminStatsJSON{Store: st.Store}) || !strings.HasPrefix(st.Store, "badger:") {
		t.Fatalf("stats of a new store %+v", st)
	}
	body := createBody(t, nil, "")
	s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", "st-1").batch(t)
	s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", "st-2").batch(t)
	s.send(http.MethodPost, "/v1/batches", body).batch(t) // no key
	s.backend.SetFault(batchesbackend.Fault{Status: http.StatusInternalServerError, Times: 1})
	if r := s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", "st-released"); r.Status != http.StatusInternalServerError {
		t.Fatalf("status %d, want the upstream's 500", r.Status)
	}
	open := holdNextCreate(t, s.backend)
	done := make(chan reply, 1)
	go func() {
		done <- sendTo(t, s.client, http.MethodPost, s.url+"/v1/batches", body, "Idempotency-Key", "st-flight")
	}()
	waitFor(t, "st-flight upstream", func() bool { return s.backend.Requests() == 5 })
	st := adminStats(t, "")
	open()
	if st != (adminStatsJSON{Store: st.Store, Total: 3, InFlight: 1, Completed: 2}) {
		t.Fatalf("stats %+v, want 3: 1 in flight, 2 completed", st)
	}
	(<-done).batch(t)
	if st := adminStats(t, "?store="+url.QueryEscape(st.Store)); st != (adminStatsJSON{Store: st.Store, Total: 3, Completed: 3}) {
		t.Fatalf("stats %+v, want 3 completed", st)
	}
}

// Several stores: /stores lists them (never a Redis password), ?store= picks
// one, and the Redis store works through the API like Badger.
func TestAdminSeveralStores(t *testing.T) {
	const password = "admin-test-redis-secret"
	srv := redistest.StartTLS(t, password)
	dir := storeDir(t)
	site := func(upstream string) string {
		return fmt.Sprintf(`	@redis header X-Store redis
	@badger not header X-Store redis
	idempotency @badger {
		store badger %s
	}
	idempotency @redis {
		store redis rediss://:%s@%s {
			tls_ca_file %s
			key_prefix admin-test:
		}
	}
	reverse_proxy %s`, dir, password, srv.Addr(), srv.CAFile(), upstream)
	}
	s := newSiteStack(t, quietLog, site)

	listing := admin(t, http.MethodGet, "/idempotency/stores", "")
	var stores []storeJSON
	listing.json(t, http.StatusOK, &stores)
	badgerName, redisName := "badger:"+dir, "redis:"+srv.Addr()+"/0/admin-test:"
	if len(stores) != 2 || stores[0].Name != badgerName || stores[0].Backend != "badger" || stores[1].Name != redisName || stores[1].Backend != "redis" {
		t.Fatalf("stores %s, want %s and %s", listing.Body, badgerName, redisName)
	}

	body := createBody(t, nil, "")
	s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", "multi", "X-Store", "redis").batch(t)
	s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", "multi-badger").batch(t)

	admin(t, http.MethodGet, "/idempotency/stats", "").adminErr(t, http.StatusBadRequest, "2 stores are in use", "?store=")
	admin(t, http.MethodGet, "/idempotency/stats?store=redis:nowhere", "").adminErr(t, http.StatusNotFound, `no store "redis:nowhere"`)
	inRedis := "?store=" + url.QueryEscape(redisName)
	if st := adminStats(t, inRedis); st.Store != redisName || st.Total != 1 || st.Completed != 1 {
		t.Fatalf("redis stats %+v", st)
	}
	hash := idempotency.NewRecordKey(siteNamespace(), adminScope, "multi").String()
	var rec adminRecordJSON
	admin(t, http.MethodGet, "/idempotency/records/"+hash+inRedis, "").json(t, http.StatusOK, &rec)
	if rec.State != "completed" || rec.Store != redisName {
		t.Fatalf("redis record %+v", rec)
	}
	admin(t, http.MethodGet, "/idempotency/records/"+hash+"?store="+url.QueryEscape(badgerName), "").adminErr(t, http.StatusNotFound)
	admin(t, http.MethodDelete, "/idempotency/records/"+hash+inRedis, "").json(t, http.StatusOK, &struct{}{})
	if st := adminStats(t, inRedis); st.Total != 0 {
		t.Fatalf("redis stats after the purge %+v", st)
	}
	if keys, err := srv.Client(t).Keys(t.Context(), "admin-test:*").Result(); err != nil || len(keys) != 0 {
		t.Fatalf("keys left in redis: %v, %v", keys, err)
	}
	if st := adminStats(t, "?store="+url.QueryEscape(badgerName)); st.Total != 1 {
		t.Fatalf("badger stats %+v", st)
	}

	// A store that fails is a 503 naming it, and no answer ever holds the password.
	srv.Stop()
	failed := admin(t, http.MethodGet, "/idempotency/stats"+inRedis, "")
	failed.adminErr(t, http.StatusServiceUnavailable, redisName, "failed")
	for _, r := range []reply{listing, failed, admin(t, http.MethodGet, "/idempotency/records/"+hash+inRedis, "")} {
		if strings.Contains(string(r.Body), password) {
			t.Fatalf("an admin answer holds the redis password: %s", r.Body)
		}
	}
}

// Bad requests get Caddy's admin error answer, {"error": "..."}, with a 4xx.
func TestAdminBadInput(t *testing.T) {
	newStack(t, "\t\tstore badger "+storeDir(t))
	hash := idempotency.NewRecordKey(siteNamespace(), adminScope, "k").String()
	for _, tc := range []struct {
		method, path, body string
		status             int
		says               string
	}{
		{"GET", "/idempotency/records/zz" + hash[2:], "", 400, "64 hex digits"},
		{"GET", "/idempotency/records/" + hash[:62], "", 400, "64 hex digits"},
		{"GET", "/idempotency/records/" + hash + "00", "", 400, "64 hex digits"},
		{"DELETE", "/idempotency/records/", "", 400, "64 hex digits"},
		{"GET", "/idempotency/records/" + hash + "?store=memory", "", 404, `no store "memory" is in use`},
		{"GET", "/idempotency/records?scope=x", "", 400, "key is required"},
		{"DELETE", "/idempotency/records?namespace=h&key=k", "", 400, "scope is required"},
		{"DELETE", "/idempotency/records?scope=x&key=k", "", 400, "namespace is required"},
		{"GET", "/idempotency/records", "", 400, "key is required"},
		{"GET", "/idempotency/records", `{"scope":"x"}`, 400, "key is required"},
		{"GET", "/idempotency/records", `{"scope":"x","key":"k"}`, 400, "namespace is required"},
		{"GET", "/idempotency/records", `{"namespace":"h","scope":"x","key":"k","extra":1}`, 400, "unknown field"},
		{"GET", "/idempotency/records", `{"scope":`, 400, "the body must be"},
		{"GET", "/idempotency/records?key=k", `{"scope":"x","key":"k"}`, 400, "not both"},
		{"GET", "/idempotency/records?namespace=h&scope=x&key=" + strings.Repeat("k", 256), "", 400, "longer than 255"},
		{"GET", "/idempotency/records?scope=x&key=k&body=maybe", "", 400, "body="},
		{"DELETE", "/idempotency/records?scope=x&key=k&body=1", "", 400, `unknown query parameter "body"`},
		{"GET", "/idempotency/records?scope=x&key=k&key=j", "", 400, "given 2 times"},
		{"GET", "/idempotency/records?scope=x&keys=k", "", 400, `unknown query parameter "keys"`},
		{"GET", "/idempotency/stats?scope=x", "", 400, "unknown query parameter"},
		{"POST", "/idempotency/records/" + hash, "", 405, "method POST not allowed"},
		{"DELETE", "/idempotency/stats", "", 405, "not allowed"},
		{"GET", "/idempotency/nothing", "", 404, "no idempotency admin resource"},
		{"GET", "/idempotency/records?namespace=h&scope=x&key=k", "", 404, "no live record"},
	} {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			admin(t, tc.method, tc.path, tc.body).adminErr(t, tc.status, tc.says)
		})
	}
}

// Without an idempotency handler there is no store to look at.
func TestAdminNoStore(t *testing.T) {
	newTester(t).InitServer(testCaddyfile(quietLog, "\trespond ok"), "caddyfile")
	var stores []any
	admin(t, http.MethodGet, "/idempotency/stores", "").json(t, http.StatusOK, &stores)
	if len(stores) != 0 {
		t.Fatalf("stores %v with no handler", stores)
	}
	admin(t, http.MethodGet, "/idempotency/stats", "").adminErr(t, http.StatusNotFound, "no idempotency store is in use")
}

// The API is served by Caddy's admin endpoint, not a site, and refuses what
// that endpoint refuses for its own routes, with the same answer.
func TestAdminProtectedAsCaddyAdmin(t *testing.T) {
	s := newStack(t, "\t\tstore badger "+storeDir(t))
	admin(t, http.MethodGet, "/idempotency/stores", "").json(t, http.StatusOK, &[]any{})
	if r := s.send(http.MethodGet, "/idempotency/stores", ""); r.Status == http.StatusOK && strings.Contains(string(r.Body), `"backend"`) {
		t.Fatalf("the site serves the admin API: %s", r.Body)
	}

	own := fmt.Sprintf("localhost:%d", adminPort)
	for _, tc := range []struct {
		name    string
		headers []string
		status  int
	}{
		{"foreign origin", []string{"Origin", "http://evil.example"}, http.StatusForbidden},
		{"origin on another port", []string{"Origin", "http://localhost:1"}, http.StatusForbidden},
		{"foreign host (DNS rebinding)", []string{"Host", "evil.example:" + fmt.Sprint(adminPort)}, http.StatusForbidden},
		{"null origin", []string{"Origin", "null"}, http.StatusBadRequest},
		{"no-cors", []string{"Sec-Fetch-Mode", "no-cors"}, http.StatusBadRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ours := admin(t, http.MethodGet, "/idempotency/stores", "", tc.headers...)
			caddys := admin(t, http.MethodGet, "/config/", "", tc.headers...)
			if ours.Status != tc.status || ours.Status != caddys.Status || string(ours.Body) != string(caddys.Body) {
				t.Fatalf("ours: %d %s; Caddy's /config/: %d %s", ours.Status, ours.Body, caddys.Status, caddys.Body)
			}
			ours.adminErr(t, tc.status)
			for _, method := range []string{http.MethodDelete, http.MethodGet} {
				admin(t, method, "/idempotency/records/"+strings.Repeat("0", 64), "", tc.headers...).adminErr(t, tc.status)
			}
		})
	}
	allowed := admin(t, http.MethodGet, "/idempotency/stores", "", "Origin", "http://"+own)
	if allowed.Status != http.StatusOK || allowed.Header.Get("Access-Control-Allow-Origin") != "http://"+own {
		t.Fatalf("own origin: %d, Access-Control-Allow-Origin %q", allowed.Status, allowed.Header.Get("Access-Control-Allow-Origin"))
	}
}
