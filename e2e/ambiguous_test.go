package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-idempotency/caddy-idempotency/internal/batchesbackend"
)

// Ambiguous outcomes through a real Caddy: the backend made the batch and
// its answer was lost (a 500 or 502 after the create, a hang past
// reverse_proxy's response_header_timeout, a reset connection), or it
// failed before creating anything. Each test counts the batches the backend
// holds for the tenant once an SDK-like client has finished retrying, and
// checks the client holds that batch.

// ambiguousFault is one way a create can go wrong.
type ambiguousFault struct {
	name        string
	fault       batchesbackend.Fault
	afterCreate bool // the backend made the batch before the fault struck
}

// ambiguousFaults are the fault kinds every table test runs. The hang is
// longer than the site's response_header_timeout (ambiguousProxyTimeout).
var ambiguousFaults = []ambiguousFault{
	{"create-then-500", batchesbackend.Fault{After: true, Status: http.StatusInternalServerError, Times: 1}, true},
	{"create-then-502", batchesbackend.Fault{After: true, Status: http.StatusBadGateway, Times: 1}, true},
	{"create-then-hang", batchesbackend.Fault{After: true, Delay: 3 * time.Second, Times: 1}, true},
	{"create-then-reset", batchesbackend.Fault{After: true, Reset: true, Times: 1}, true},
	{"fail-before-create", batchesbackend.Fault{Status: http.StatusInternalServerError, Times: 1}, false},
}

// ambiguousProxyTimeout is the site's reverse_proxy response_header_timeout.
const ambiguousProxyTimeout = "500ms"

// outcomeHeader carries {http.idempotency.outcome} on every answer of the
// ambiguous sites: a deferred header for what the chain answers, and one set
// by handle_errors for the errors reverse_proxy returns (reset, timeout).
const outcomeHeader = "X-Idempotency-Outcome"

// reconcileBlock is the idempotency block of the reconcile tests: a Badger
// store of the test's own and `reconcile batches`, with sub (lines inside
// its braces) when sub is not "".
func reconcileBlock(t *testing.T, sub string) string {
	block := "\t\tstore badger " + storeDir(t) + "\n\t\treconcile batches"
	if sub != "" {
		block += " {\n" + sub + "\n\t\t}"
	}
	return block
}

// plainBlock is the same block without reconcile.
func plainBlock(t *testing.T) string { return "\t\tstore badger " + storeDir(t) }

// ambiguousSite is a site body: the outcome header, the handler configured
// by block, and reverse_proxy with a response_header_timeout, so that a
// hung create is an error after the request was written.
func ambiguousSite(block string) func(upstream string) string {
	return func(upstream string) string {
		return fmt.Sprintf(`	header >%[1]s {http.idempotency.outcome}
	idempotency /v1/batches {
%[2]s
	}
	reverse_proxy %[3]s {
		transport http {
			response_header_timeout %[4]s
		}
	}
	handle_errors {
		header %[1]s {http.idempotency.outcome}
		respond "{err.status_code}" {err.status_code}
	}`, outcomeHeader, block, upstream, ambiguousProxyTimeout)
	}
}

// newAmbiguousStack loads ambiguousSite with block in front of a fresh
// batches backend, and opens a keep-alive connection of the stack's client
// (and so one of Caddy to the backend) by a GET that creates nothing.
func newAmbiguousStack(t *testing.T, block string) *stack {
	t.Helper()
	s := newSiteStack(t, quietLog, ambiguousSite(block))
	warmUp(t, s.client, s.url+"/v1/batches", siteHost(), "")
	return s
}

// tenantFor is a credential of t's own, so the backend's and the store's
// views of one test never meet another's.
func tenantFor(name string) string { return "Bearer sk-" + uniqueKey(name) }

// try is one attempt of the SDK-like client.
type try struct {
	reply
	err error
}

func (a try) String() string {
	if a.err != nil {
		return "error: " + a.err.Error()
	}
	s := fmt.Sprintf("%d", a.Status)
	if o := a.Header.Get(outcomeHeader); o != "" {
		s += " " + o
	}
	if a.Status >= 400 {
		if c := errorCode(a.Body); c != "" {
			s += " " + c
		}
	}
	if a.Header.Get("Idempotent-Reconciled") == "true" {
		s += " (reconciled)"
	} else if a.Header.Get("Idempotent-Replayed") == "true" {
		s += " (replayed)"
	}
	return s
}

// retryable reports whether an SDK retries the attempt: a transport error,
// a 5xx, or a 409 that says x-should-retry: true.
func (a try) retryable() bool {
	return a.err != nil || a.Status >= 500 ||
		(a.Status == http.StatusConflict && a.Header.Get("x-should-retry") == "true")
}

// maxTries bounds the SDK-like client's attempts at one create.
const maxTries = 5

// createWithRetries sends the create to url as an SDK does: the same body
// and key again after a transport error, a 5xx or a retryable 409, at most
// maxTries times, until a 200. It returns every attempt and the batch the
// client ends with; it fails t if it ends with none.
func createWithRetries(t *testing.T, c *http.Client, url, body string, headers ...string) ([]try, batchesbackend.Batch) {
	t.Helper()
	var tries []try
	for range maxTries {
		r, err := request(c, http.MethodPost, url, body, headers...)
		a := try{r, err}
		tries = append(tries, a)
		if err == nil && r.Status == http.StatusOK {
			return tries, r.batch(t)
		}
		if !a.retryable() {
			t.Fatalf("attempt %d: %v, which an SDK does not retry; attempts %v", len(tries), a, tries)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("no batch after %d attempts: %v", maxTries, tries)
	return tries, batchesbackend.Batch{}
}

// mustHold checks that the backend holds exactly want batches for tenant,
// and that held (the client's) is the newest of them; it returns them.
func mustHold(t *testing.T, backend *batchesbackend.Server, tenant string, want int, held batchesbackend.Batch) []batchesbackend.Batch {
	t.Helper()
	got := backend.Batches(tenant)
	if len(got) != want {
		t.Fatalf("the backend holds %d batches for the tenant (%s), want %d", len(got), batchIDList(got), want)
	}
	if want > 0 && got[len(got)-1].ID != held.ID {
		t.Fatalf("the client holds %s; the tenant's batches are %s", held.ID, batchIDList(got))
	}
	return got
}

func batchIDList(bs []batchesbackend.Batch) string {
	ids := make([]string, len(bs))
	for i, b := range bs {
		ids[i] = b.ID
	}
	return "[" + strings.Join(ids, " ") + "]"
}

// mustReconciled checks r is the adopted batch: a 200 marked replayed and
// reconciled, decided reconciled.
func mustReconciled(t *testing.T, r reply) {
	t.Helper()
	if r.Status != http.StatusOK || r.Header.Get("Idempotent-Replayed") != "true" || r.Header.Get("Idempotent-Reconciled") != "true" {
		t.Fatalf("want a reconciled 200: got %d (Idempotent-Replayed %q, Idempotent-Reconciled %q) %s",
			r.Status, r.Header.Get("Idempotent-Replayed"), r.Header.Get("Idempotent-Reconciled"), r.Body)
	}
	if o := r.Header.Get(outcomeHeader); o != "reconciled" {
		t.Fatalf("outcome %q, want reconciled", o)
	}
}

// mustOutcome checks the decision a reply carries.
func mustOutcome(t *testing.T, r reply, want string) {
	t.Helper()
	if o := r.Header.Get(outcomeHeader); o != want {
		t.Fatalf("outcome %q, want %s; status %d %s", o, want, r.Status, r.Body)
	}
}

// mustUnknown checks r is 409 idempotency_outcome_unknown, to be retried.
func mustUnknown(t *testing.T, r reply) {
	t.Helper()
	r.apiError(t, http.StatusConflict, "idempotency_outcome_unknown")
	if r.Header.Get("x-should-retry") != "true" || r.Header.Get("Retry-After") == "" {
		t.Fatalf("outcome unknown without x-should-retry: true and Retry-After: %v", r.Header)
	}
}

func logBatches(t *testing.T, fault, reconcile string, n int, tries []try) {
	t.Helper()
	t.Logf("fault=%s reconcile=%s batches=%d attempts=%d %v", fault, reconcile, n, len(tries), tries)
}

// With `reconcile batches`, every fault ends with one batch for the tenant,
// held by the client; when the batch was made before the answer was lost,
// the first answer is already that batch, reconciled.
func TestAmbiguousFaultsReconciled(t *testing.T) {
	for _, fc := range ambiguousFaults {
		t.Run(fc.name, func(t *testing.T) {
			s := newAmbiguousStack(t, reconcileBlock(t, ""))
			tenant := tenantFor("reconciled-" + fc.name)
			key := uniqueKey("amb-" + fc.name)
			s.backend.SetFault(fc.fault)

			tries, held := createWithRetries(t, s.client, s.url+"/v1/batches", createBody(t, nil, ""),
				"Authorization", tenant, "Idempotency-Key", key)
			got := mustHold(t, s.backend, tenant, 1, held)
			logBatches(t, fc.name, "on", len(got), tries)
			first := tries[0]
			if fc.afterCreate {
				if first.err != nil {
					t.Fatalf("first attempt: %v", first.err)
				}
				mustReconciled(t, first.reply)
				if len(tries) != 1 {
					t.Fatalf("%d attempts, want the first to be answered", len(tries))
				}
			} else {
				// Nothing made: the listing finds nothing, the key is
				// released with the backend's 500, and the retry creates.
				if first.err != nil || first.Status != http.StatusInternalServerError {
					t.Fatalf("first attempt %v, want the backend's 500", first)
				}
				mustOutcome(t, first.reply, "released")
				mustFresh(t, tries[len(tries)-1].reply)
			}
			if n := s.backend.CreatesFor(tenant); n != 1 {
				t.Fatalf("backend created %d batches for the tenant, want 1", n)
			}
			if s.backend.Lists() < 2 { // the warm-up, and the reconcile's
				t.Fatalf("backend lists = %d: the handler never listed", s.backend.Lists())
			}
			// A later retry replays the batch the client holds.
			r := s.send(http.MethodPost, "/v1/batches", createBody(t, nil, ""), "Authorization", tenant, "Idempotency-Key", key)
			if b := r.batch(t); b.ID != held.ID || r.Header.Get("Idempotent-Replayed") != "true" {
				t.Fatalf("a later retry got %s (replayed %q), want %s replayed", b.ID, r.Header.Get("Idempotent-Replayed"), held.ID)
			}
		})
	}
}

// Without reconcile, the documented behaviour: an ambiguous outcome releases
// the key, decided in_doubt, and the retry creates again, so a batch made
// before its answer was lost is made twice.
func TestAmbiguousFaultsWithoutReconcile(t *testing.T) {
	for _, fc := range ambiguousFaults {
		t.Run(fc.name, func(t *testing.T) {
			s := newAmbiguousStack(t, plainBlock(t))
			tenant := tenantFor("plain-" + fc.name)
			s.backend.SetFault(fc.fault)

			tries, held := createWithRetries(t, s.client, s.url+"/v1/batches", createBody(t, nil, ""),
				"Authorization", tenant, "Idempotency-Key", uniqueKey("plain-"+fc.name))
			want := 1
			if fc.afterCreate {
				want = 2
			}
			got := mustHold(t, s.backend, tenant, want, held)
			logBatches(t, fc.name, "off", len(got), tries)
			first := tries[0]
			if first.err != nil || first.Status < 500 {
				t.Fatalf("first attempt %v, want a 5xx", first)
			}
			mustOutcome(t, first.reply, "in_doubt")
			if len(tries) != 2 {
				t.Fatalf("%d attempts, want 2 (the fault, then the retry that creates)", len(tries))
			}
			mustFresh(t, tries[1].reply)
			mustOutcome(t, tries[1].reply, "stored")
		})
	}
}

// The owner's create goes over a keep-alive connection to the backend,
// which resets it after creating: reverse_proxy's transport, which resends
// a request with an Idempotency-Key header on a reused connection when it
// can (net/http's isReplayable), does not resend it.
func TestAmbiguousResetNotResentByProxy(t *testing.T) {
	backend := batchesbackend.New()
	var conns atomic.Int64
	srv := httptest.NewUnstartedServer(backend)
	srv.Config.ConnState = func(_ net.Conn, state http.ConnState) {
		if state == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	upstream := srv.Listener.Addr().String()
	s := &stack{t: t, backend: backend, upstream: upstream,
		url: fmt.Sprintf("http://localhost:%d", httpPort), client: newClient(t)}
	s.loadCaddyfile(testCaddyfile(quietLog, ambiguousSite(plainBlock(t))(upstream)))
	tenant := tenantFor("reset-keepalive")

	// A GET through Caddy: passed through, it leaves Caddy a keep-alive
	// connection to the backend.
	warmUp(t, s.client, s.url+"/v1/batches", siteHost(), "")
	if n := conns.Load(); n != 1 || backend.Lists() == 0 {
		t.Fatalf("after the GET: %d connections to the backend, %d lists; want 1 and some", n, backend.Lists())
	}

	backend.SetFault(batchesbackend.Fault{After: true, Reset: true, Times: 1})
	r := s.send(http.MethodPost, "/v1/batches", createBody(t, nil, ""), "Authorization", tenant, "Idempotency-Key", uniqueKey("reset-keepalive"))
	if r.Status != http.StatusBadGateway {
		t.Fatalf("reset create: %d %s, want reverse_proxy's 502", r.Status, r.Body)
	}
	mustOutcome(t, r, "in_doubt")
	if n := backend.Requests(); n != 1 {
		t.Fatalf("backend received %d creates, want 1: the proxy resent the create", n)
	}
	if n := backend.CreatesFor(tenant); n != 1 {
		t.Fatalf("backend created %d batches, want 1", n)
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("%d connections to the backend, want the one kept alive (the create reused it)", n)
	}
}

// identicalBatch is a batch as createBody(t, nil, "") makes it.
func identicalBatch(createdAt int64) batchesbackend.Batch {
	return batchesbackend.Batch{InputFileID: "file-abc123", Endpoint: "/v1/chat/completions",
		CompletionWindow: "24h", CreatedAt: createdAt}
}

// An identical batch the tenant made without a key before the attempt began
// (10s before, well past the 1s window) is never adopted.
func TestReconcileIgnoresEarlierIdenticalBatch(t *testing.T) {
	for _, fc := range []ambiguousFault{ambiguousFaults[4], ambiguousFaults[0]} { // fail-before-create, create-then-500
		t.Run(fc.name, func(t *testing.T) {
			s := newAmbiguousStack(t, reconcileBlock(t, ""))
			tenant := tenantFor("earlier-" + fc.name)
			earlier := s.backend.Seed(tenant, identicalBatch(time.Now().Add(-10*time.Second).Unix()))
			s.backend.SetFault(fc.fault)

			tries, held := createWithRetries(t, s.client, s.url+"/v1/batches", createBody(t, nil, ""),
				"Authorization", tenant, "Idempotency-Key", uniqueKey("earlier"))
			t.Logf("fault=%s reconcile=on earlier-identical attempts %v", fc.name, tries)
			if held.ID == earlier.ID {
				t.Fatalf("the client holds %s, the batch made 10s before the attempt", held.ID)
			}
			mustHold(t, s.backend, tenant, 2, held) // the earlier one, and the attempt's
			if n := s.backend.CreatesFor(tenant); n != 1 {
				t.Fatalf("backend created %d batches, want 1", n)
			}
			if fc.afterCreate {
				mustReconciled(t, tries[0].reply)
			} else {
				mustOutcome(t, tries[0].reply, "released")
				mustFresh(t, tries[len(tries)-1].reply)
			}
		})
	}
}

// Another tenant's identical batch, made while the attempt is upstream, is
// not in the tenant's listing: the attempt adopts its own.
func TestReconcileIgnoresOtherTenantsBatch(t *testing.T) {
	s := newAmbiguousStack(t, reconcileBlock(t, ""))
	tenantA, tenantB := tenantFor("isolation-a"), tenantFor("isolation-b")
	gate := make(chan struct{})
	open := opener(t, gate)
	s.backend.SetFault(batchesbackend.Fault{After: true, Block: gate, Status: http.StatusInternalServerError, Times: 1})

	body := createBody(t, nil, "")
	done := make(chan []try, 1)
	go func() {
		r, err := request(s.client, http.MethodPost, s.url+"/v1/batches", body, "Authorization", tenantA, "Idempotency-Key", uniqueKey("isolation"))
		done <- []try{{r, err}}
	}()
	waitTaken(t, s.taken) // A's batch is made, its answer held back
	other := s.send(http.MethodPost, "/v1/batches", body, "Authorization", tenantB).batch(t)
	open()
	tries := <-done
	first := tries[0]
	if first.err != nil {
		t.Fatal(first.err)
	}
	mustReconciled(t, first.reply)
	held := first.batch(t)
	if held.ID == other.ID {
		t.Fatalf("tenant A adopted tenant B's batch %s", other.ID)
	}
	got := mustHold(t, s.backend, tenantA, 1, held)
	mustHold(t, s.backend, tenantB, 1, other)
	logBatches(t, "create-then-500 other-tenant", "on", len(got), tries)
}

// adminRecord is the admin API's view of the record of tenant's key on the
// test site: its state and doubts, or found false.
func adminRecord(t *testing.T, tenant, key string) (state string, doubts int, found bool) {
	t.Helper()
	q := url.Values{"namespace": {siteNamespace()}, "scope": {tenant}, "key": {key}}
	r := admin(t, http.MethodGet, "/idempotency/records?"+q.Encode(), "")
	if r.Status == http.StatusNotFound {
		return "", 0, false
	}
	var rec struct {
		State  string `json:"state"`
		Doubts int    `json:"doubts"`
	}
	r.json(t, http.StatusOK, &rec)
	return rec.State, rec.Doubts, true
}

// Two identical batches made since the attempt began, and the attempt's
// own: the search cannot tell which is the attempt's. The record is held
// (409 idempotency_outcome_unknown, x-should-retry: true) and nothing goes
// upstream while it is; with max_doubts 2 the second search gives up and
// releases it (still 409), and the next retry creates.
func TestReconcileUnsureHeldThenGivesUp(t *testing.T) {
	s := newAmbiguousStack(t, reconcileBlock(t, "\t\t\tmax_doubts 2"))
	tenant := tenantFor("unsure")
	key := uniqueKey("unsure")
	now := time.Now().Unix()
	s.backend.Seed(tenant, identicalBatch(now))
	s.backend.Seed(tenant, identicalBatch(now))
	s.backend.SetFault(batchesbackend.Fault{After: true, Status: http.StatusInternalServerError, Times: 1})
	body := createBody(t, nil, "")
	headers := []string{"Authorization", tenant, "Idempotency-Key", key}

	first := s.send(http.MethodPost, "/v1/batches", body, headers...)
	mustUnknown(t, first)
	mustOutcome(t, first, "in_doubt")
	if state, doubts, ok := adminRecord(t, tenant, key); !ok || state != "in_doubt" || doubts != 1 {
		t.Fatalf("record state %q doubts %d (found %v), want in_doubt once", state, doubts, ok)
	}
	// The key with other parameters is still refused while it is held.
	mustConflict(t, s.send(http.MethodPost, "/v1/batches", createBody(t, map[string]any{"input_file_id": "file-other"}, ""), headers...))

	second := s.send(http.MethodPost, "/v1/batches", body, headers...) // doubt 2 of 2: gives up
	mustUnknown(t, second)
	mustOutcome(t, second, "in_doubt")
	if n := s.backend.Requests(); n != 1 {
		t.Fatalf("backend received %d creates while the record was held, want only the first", n)
	}
	if state, _, ok := adminRecord(t, tenant, key); ok {
		t.Fatalf("record still there (%s) after max_doubts unsure searches", state)
	}

	third := s.send(http.MethodPost, "/v1/batches", body, headers...)
	mustFresh(t, third)
	held := third.batch(t)
	got := mustHold(t, s.backend, tenant, 4, held) // 2 seeded, the first attempt's, the third's
	if n, r := s.backend.CreatesFor(tenant), s.backend.Requests(); n != 2 || r != 2 {
		t.Fatalf("backend creates %d, requests %d; want 2 and 2", n, r)
	}
	t.Logf("fault=create-then-500 two-identical-since reconcile=on max_doubts=2 batches=%d answers %d, %d, %d",
		len(got), first.Status, second.Status, third.Status)
}

var tagValue = regexp.MustCompile(`^[0-9a-f]{32}$`)

// With `reconcile batches { tag }` the create sent upstream carries the tag
// in its metadata and the search matches it; the fingerprint is the
// client's body, so a retry replays; a body whose metadata has no room for
// the tag is refused before anything goes upstream, and the key stays free.
func TestReconcileTagThroughCaddy(t *testing.T) {
	s := newAmbiguousStack(t, reconcileBlock(t, "\t\t\ttag"))
	tenant := tenantFor("tag")
	key := uniqueKey("tag")
	body := createBody(t, map[string]any{"metadata": map[string]string{"team": "a"}}, "")
	s.backend.SetFault(batchesbackend.Fault{After: true, Status: http.StatusInternalServerError, Times: 1})

	tries, held := createWithRetries(t, s.client, s.url+"/v1/batches", body, "Authorization", tenant, "Idempotency-Key", key)
	mustReconciled(t, tries[0].reply)
	got := mustHold(t, s.backend, tenant, 1, held)
	logBatches(t, "create-then-500 tag", "on", len(got), tries)
	var sent struct {
		Metadata map[string]string `json:"metadata"`
	}
	if err := json.Unmarshal(s.backend.LastCreate().Body, &sent); err != nil {
		t.Fatal(err)
	}
	if len(sent.Metadata) != 2 || sent.Metadata["team"] != "a" || !tagValue.MatchString(sent.Metadata["idempotency_tag"]) {
		t.Fatalf("metadata sent upstream %v, want the client's and idempotency_tag", sent.Metadata)
	}
	if held.Metadata["idempotency_tag"] != sent.Metadata["idempotency_tag"] {
		t.Fatalf("the adopted batch's metadata %v, want the tag sent", held.Metadata)
	}
	retry := s.send(http.MethodPost, "/v1/batches", body, "Authorization", tenant, "Idempotency-Key", key)
	mustReplay(t, retry, tries[0].reply)

	// Metadata with 16 entries, OpenAI's most: no room for the tag.
	full := map[string]string{}
	for i := range 16 {
		full[fmt.Sprintf("k%02d", i)] = "v"
	}
	key2 := uniqueKey("tag-full")
	requests := s.backend.Requests()
	refused := s.send(http.MethodPost, "/v1/batches", createBody(t, map[string]any{"metadata": full}, ""), "Authorization", tenant, "Idempotency-Key", key2)
	refused.apiError(t, http.StatusBadRequest, "idempotency_reconcile_refused")
	if n := s.backend.Requests(); n != requests {
		t.Fatalf("the refused create reached the backend (%d creates, were %d)", n, requests)
	}
	if _, _, ok := adminRecord(t, tenant, key2); ok {
		t.Fatal("the refused create left a record")
	}
	delete(full, "k15")
	fixed := s.send(http.MethodPost, "/v1/batches", createBody(t, map[string]any{"metadata": full}, ""), "Authorization", tenant, "Idempotency-Key", key2)
	mustFresh(t, fixed)
	if b := fixed.batch(t); len(b.Metadata) != 16 || !tagValue.MatchString(b.Metadata["idempotency_tag"]) {
		t.Fatalf("the fixed create's batch metadata %v, want 15 entries and the tag", b.Metadata)
	}
}

// `key_field idempotency_key { forward }` in front of a backend that dedups
// on that body field itself (OGX/llama-stack), without reconcile: the
// handler releases the key on the lost answer, and the retry reaches the
// backend with the same field, which answers the batch it made.
func TestAmbiguousForwardedKeyFieldBackendDedups(t *testing.T) {
	s := newAmbiguousStack(t, plainBlock(t)+"\n\t\tkey_field idempotency_key {\n\t\t\tforward\n\t\t}")
	s.backend.HonourIdempotencyKey()
	tenant := tenantFor("forward")
	key := uniqueKey("forward")
	s.backend.SetFault(batchesbackend.Fault{After: true, Status: http.StatusInternalServerError, Times: 1})

	tries, held := createWithRetries(t, s.client, s.url+"/v1/batches", createBody(t, nil, key), "Authorization", tenant)
	got := mustHold(t, s.backend, tenant, 1, held)
	logBatches(t, "create-then-500 key_field-forward+backend-dedup", "off", len(got), tries)
	mustOutcome(t, tries[0].reply, "in_doubt")
	if len(tries) != 2 || s.backend.Requests() != 2 || s.backend.CreatesFor(tenant) != 1 {
		t.Fatalf("%d attempts, %d backend requests, %d creates; want 2, 2, 1", len(tries), s.backend.Requests(), s.backend.CreatesFor(tenant))
	}
	var sent struct {
		Key string `json:"idempotency_key"`
	}
	if err := json.Unmarshal(s.backend.LastCreate().Body, &sent); err != nil || sent.Key != key {
		t.Fatalf("the backend got idempotency_key %q (%v), want %q", sent.Key, err, key)
	}
}

// A record held in doubt lives through a config reload: the new config's
// handler, on the same Badger directory, takes it over on the next retry
// and finds the batch. Here the first search is unsure because its listing
// (one batch per page, one page) cannot reach back past two newer batches of
// another file; the reloaded config lists with the defaults.
func TestReconcileHeldRecordSurvivesReload(t *testing.T) {
	dir := storeDir(t)
	block := func(sub string) string {
		return "\t\tstore badger " + dir + "\n\t\treconcile batches" + sub
	}
	s := newAmbiguousStack(t, block(" {\n\t\t\tpage_size 1\n\t\t\tpages 1\n\t\t}"))
	tenant := tenantFor("reload")
	key := uniqueKey("reload")
	for range 2 {
		other := identicalBatch(time.Now().Unix() + 1)
		other.InputFileID = "file-other"
		s.backend.Seed(tenant, other)
	}
	s.backend.SetFault(batchesbackend.Fault{After: true, Status: http.StatusInternalServerError, Times: 1})
	body := createBody(t, nil, "")
	headers := []string{"Authorization", tenant, "Idempotency-Key", key}

	first := s.send(http.MethodPost, "/v1/batches", body, headers...)
	mustUnknown(t, first)
	if state, doubts, ok := adminRecord(t, tenant, key); !ok || state != "in_doubt" || doubts != 1 {
		t.Fatalf("record state %q doubts %d (found %v), want in_doubt once", state, doubts, ok)
	}

	s.loadCaddyfile(testCaddyfile(quietLog, ambiguousSite(block(""))(s.upstream)))
	retry := s.send(http.MethodPost, "/v1/batches", body, headers...)
	mustReconciled(t, retry)
	held := retry.batch(t)
	if held.InputFileID != "file-abc123" {
		t.Fatalf("adopted %+v, want the attempt's batch", held)
	}
	mustReplay(t, s.send(http.MethodPost, "/v1/batches", body, headers...), retry)
	if n, r := s.backend.CreatesFor(tenant), s.backend.Requests(); n != 1 || r != 1 {
		t.Fatalf("backend creates %d, requests %d; want the first attempt's only", n, r)
	}
}
