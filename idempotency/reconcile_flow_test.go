package idempotency

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/caddy-idempotency/caddy-idempotency/idempotency/jcs"
	"github.com/caddy-idempotency/caddy-idempotency/internal/batchesbackend"
)

const tenant = "Bearer tenant-a"

// batchesStack is client -> engine (Reconcile: Batches) -> reverse proxy ->
// the test batches backend.
type batchesStack struct {
	backend *batchesbackend.Server
	h       *Handler
	store   Store
	front   *httptest.Server
	obs     *observed
}

func newBatchesStack(t *testing.T, cfg Config, transport http.RoundTripper) *batchesStack {
	t.Helper()
	b := batchesbackend.New()
	back := httptest.NewServer(b)
	t.Cleanup(back.Close)
	if cfg.Store == nil {
		cfg.Store = openMemoryStore(t)
	}
	if cfg.Reconcile == nil {
		cfg.Reconcile = &Batches{}
	}
	obs := &observed{}
	cfg.Observe = obs.observe
	h, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	proxy := newProxy(t, back.URL)
	if transport != nil {
		proxy.Transport = transport
	}
	front := httptest.NewServer(h.Middleware(proxy))
	t.Cleanup(front.Close)
	return &batchesStack{backend: b, h: h, store: cfg.Store, front: front, obs: obs}
}

// create sends the create with key, as tenant, and returns the answer.
func (s *batchesStack) create(t *testing.T, key, body string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, s.front.URL+batchesPath, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", tenant)
	req.Header.Set("Idempotency-Key", key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return result{status: resp.StatusCode, header: resp.Header, body: b, err: err}
}

// retryUntilOK sends the create with key until it is answered 2xx, as an
// SDK does (at most 6 times), and returns the batch id it ends with.
func (s *batchesStack) retryUntilOK(t *testing.T, key string) (string, result) {
	t.Helper()
	var last result
	for range 6 {
		last = s.create(t, key, createBody)
		if last.status == http.StatusOK {
			var b struct{ ID string }
			if err := json.Unmarshal(last.body, &b); err != nil || b.ID == "" {
				t.Fatalf("2xx without a batch: %s", last.body)
			}
			return b.ID, last
		}
	}
	t.Fatalf("no 2xx after 6 tries; last %d %s", last.status, last.body)
	return "", last
}

func wantOneBatch(t *testing.T, b *batchesbackend.Server, id string) {
	t.Helper()
	got := b.Batches(tenant)
	if len(got) != 1 || got[0].ID != id {
		ids := make([]string, len(got))
		for i := range got {
			ids[i] = got[i].ID
		}
		t.Fatalf("backend holds batches %v for the tenant; want exactly [%s]", ids, id)
	}
}

func lastDecision(t *testing.T, obs *observed) Decision {
	t.Helper()
	d := obs.take()
	if len(d) == 0 {
		t.Fatal("no decision")
	}
	return d[len(d)-1]
}

// Each way a create's answer is lost after the backend made the batch ends
// with the client holding that batch, and the backend holding one.
func TestReconcileAdoptsTheBatchOfALostAnswer(t *testing.T) {
	for _, tc := range []struct {
		name      string
		fault     batchesbackend.Fault
		transport http.RoundTripper
	}{
		{"500 after create", batchesbackend.Fault{After: true, Status: 500, Times: 1}, nil},
		{"502 after create", batchesbackend.Fault{After: true, Status: 502, Times: 1}, nil},
		{"504 after create", batchesbackend.Fault{After: true, Status: 504, Times: 1}, nil},
		{"reset after create", batchesbackend.Fault{After: true, Reset: true, Times: 1}, nil},
		{"hang past the response header timeout", batchesbackend.Fault{After: true, Delay: 5 * time.Second, Times: 1},
			&http.Transport{ResponseHeaderTimeout: 300 * time.Millisecond}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newBatchesStack(t, Config{}, tc.transport)
			s.backend.SetFault(tc.fault)
			first := s.create(t, "k-lost", createBody)
			wantStatus(t, first, http.StatusOK)
			wantHeader(t, first, "Idempotent-Replayed", "true")
			wantHeader(t, first, ReconciledHeader, "true")
			if d := lastDecision(t, s.obs); d.Outcome != OutcomeReconciled {
				t.Errorf("decision %+v, want reconciled", d)
			}
			id, retry := s.retryUntilOK(t, "k-lost")
			wantHeader(t, retry, ReconciledHeader, "true")
			if string(retry.body) != string(first.body) {
				t.Errorf("retry got %s, first %s", retry.body, first.body)
			}
			wantOneBatch(t, s.backend, id)
		})
	}
}

// A fault before the create: the listing finds nothing, the key is
// released with the backend's own answer, and the retry makes the batch.
// An identical batch the tenant made earlier without a key is not adopted.
func TestReconcileFindsNothingAndTheRetryRuns(t *testing.T) {
	s := newBatchesStack(t, Config{}, nil)
	meta := map[string]string{"team": "a", "run": "1"}
	earlier := s.backend.Seed(tenant, batchesbackend.Batch{InputFileID: "file-abc", Endpoint: "/v1/chat/completions",
		CompletionWindow: "24h", Metadata: meta, CreatedAt: time.Now().Add(-time.Hour).Unix()})

	s.backend.SetFault(batchesbackend.Fault{Status: 500, Times: 1})
	first := s.create(t, "k-none", createBody)
	wantStatus(t, first, http.StatusInternalServerError)
	if d := lastDecision(t, s.obs); d.Outcome != OutcomeReleased || !strings.Contains(d.Reason, "reconciled") {
		t.Errorf("decision %+v, want released after reconciling", d)
	}
	id, _ := s.retryUntilOK(t, "k-none")
	if id == earlier.ID {
		t.Fatal("adopted the batch made an hour before the attempt")
	}
	if got := s.backend.Batches(tenant); len(got) != 2 {
		t.Fatalf("backend holds %d batches, want the earlier one and the retry's", len(got))
	}
}

// Two batches that both match since the attempt: never adopt either. The
// record is held (409 idempotency_outcome_unknown, x-should-retry: true) and
// each retry looks again, up to MaxDoubts; then it is released.
func TestReconcileUnsureHoldsThenGivesUp(t *testing.T) {
	s := newBatchesStack(t, Config{MaxDoubts: 3}, nil)
	meta := map[string]string{"team": "a", "run": "1"}
	for range 2 {
		s.backend.Seed(tenant, batchesbackend.Batch{InputFileID: "file-abc", Endpoint: "/v1/chat/completions",
			CompletionWindow: "24h", Metadata: meta, CreatedAt: time.Now().Unix() + 1})
	}
	s.backend.SetFault(batchesbackend.Fault{Status: 502, Times: 1})
	first := s.create(t, "k-unsure", createBody)
	wantError(t, first, http.StatusConflict, CodeOutcomeUnknown)
	wantHeader(t, first, "X-Should-Retry", "true")
	if d := lastDecision(t, s.obs); d.Outcome != OutcomeInDoubt || !strings.HasPrefix(d.Reason, "held") {
		t.Errorf("decision %+v, want in_doubt, held", d)
	}
	rec, ok := getRecord(t, s.store, hostNS(s.front.URL), tenant, "k-unsure")
	if !ok || rec.State != StateInDoubt || rec.Doubts != 1 {
		t.Fatalf("record %+v (found %v), want in doubt once", rec, ok)
	}
	// Another request with the key and other parameters: a conflict.
	wantError(t, s.create(t, "k-unsure", `{"a":1}`), http.StatusConflict, CodeKeyReused)

	wantError(t, s.create(t, "k-unsure", createBody), http.StatusConflict, CodeOutcomeUnknown) // doubt 2
	creates := s.backend.Creates()
	gaveUp := s.create(t, "k-unsure", createBody) // doubt 3: released
	wantError(t, gaveUp, http.StatusConflict, CodeOutcomeUnknown)
	if d := lastDecision(t, s.obs); d.Outcome != OutcomeInDoubt || d.Reason != "gave up" {
		t.Errorf("decision %+v, want in_doubt, gave up", d)
	}
	if s.backend.Creates() != creates {
		t.Fatal("a create went upstream while a matching batch might be the attempt's")
	}
	if _, ok := getRecord(t, s.store, hostNS(s.front.URL), tenant, "k-unsure"); ok {
		t.Fatal("record still held after MaxDoubts")
	}
}

// A record whose owner died (its lease ran out) with the create upstream is
// taken over by the retry, which finds the batch instead of making another.
func TestReconcileTakesOverADeadOwnersRecord(t *testing.T) {
	s := newBatchesStack(t, Config{}, nil)
	// The dead owner: its record, and the batch its create made.
	canon, _, err := jcs.AppendJSONWithout(nil, []byte(createBody), DefaultKeyField)
	if err != nil {
		t.Fatal(err)
	}
	fp := NewFingerprint(http.MethodPost, batchesPath, "", BodyJSON, canon)
	rk := NewRecordKey(hostNS(s.front.URL), tenant, "k-dead")
	if _, owned, err := s.store.Begin(t.Context(), rk, fp, NewOwnerToken(), 100*time.Millisecond); err != nil || !owned {
		t.Fatalf("Begin = %v, %v", owned, err)
	}
	direct := httptest.NewServer(s.backend)
	defer direct.Close()
	req, _ := http.NewRequest(http.MethodPost, direct.URL+batchesPath, strings.NewReader(createBody))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", tenant)
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("the dead owner's create: %v %v", resp, err)
	}
	resp.Body.Close()
	time.Sleep(150 * time.Millisecond) // the lease runs out

	id, res := s.retryUntilOK(t, "k-dead")
	wantHeader(t, res, ReconciledHeader, "true")
	wantOneBatch(t, s.backend, id)
}

// With tag, the create carries a metadata entry naming the record, and the
// match is on it: an identical batch made since the attempt without the
// tag is not the attempt's.
func TestReconcileTagMatchesExactly(t *testing.T) {
	s := newBatchesStack(t, Config{Reconcile: &Batches{Tag: true}}, nil)
	meta := map[string]string{"team": "a", "run": "1"}
	s.backend.Seed(tenant, batchesbackend.Batch{InputFileID: "file-abc", Endpoint: "/v1/chat/completions",
		CompletionWindow: "24h", Metadata: meta, CreatedAt: time.Now().Unix() + 1})
	s.backend.SetFault(batchesbackend.Fault{After: true, Status: 500, Times: 1})
	first := s.create(t, "k-tag", createBody)
	wantStatus(t, first, http.StatusOK)
	wantHeader(t, first, ReconciledHeader, "true")
	var b batchesbackend.Batch
	if err := json.Unmarshal(first.body, &b); err != nil {
		t.Fatal(err)
	}
	if b.Metadata[DefaultBatchesTagKey] == "" || b.Metadata["team"] != "a" {
		t.Fatalf("adopted batch metadata %v, want the client's and the tag", b.Metadata)
	}
	if got := s.backend.Batches(tenant); len(got) != 2 {
		t.Fatalf("backend holds %d batches, want the seeded and the tagged", len(got))
	}
	// The tagged request's fingerprint is the client's: the same body replays.
	wantReplayOf(t, s.create(t, "k-tag", createBody), first)
}

// hostNS is the default namespace of requests to a test server at rawURL.
func hostNS(rawURL string) string {
	u, _ := url.Parse(rawURL)
	return u.Hostname() + "@:" + u.Port()
}

// Many duplicates of a create whose answer is lost, at once: one create
// upstream, and every caller ends with that batch. Duplicates that waited
// for an owner that ended unsure are told so without spending its doubts.
func TestReconcileConcurrentDuplicates(t *testing.T) {
	for _, tc := range []struct {
		name   string
		unsure bool
	}{{"adopted", false}, {"unsure", true}} {
		t.Run(tc.name, func(t *testing.T) {
			s := newBatchesStack(t, Config{}, nil)
			if tc.unsure {
				meta := map[string]string{"team": "a", "run": "1"}
				s.backend.Seed(tenant, batchesbackend.Batch{InputFileID: "file-abc", Endpoint: "/v1/chat/completions",
					CompletionWindow: "24h", Metadata: meta, CreatedAt: time.Now().Unix() + 1})
			}
			open := make(chan struct{})
			s.backend.SetFault(batchesbackend.Fault{After: true, Status: 502, Block: open, Times: 1})
			const n = 24
			results := make(chan result, n)
			for range n {
				go func() { results <- s.create(t, "k-many", createBody) }()
			}
			waitFor(t, "the create upstream", func() bool { return s.backend.Requests() == 1 })
			time.Sleep(50 * time.Millisecond) // the duplicates are waiting
			close(open)
			var ids = map[string]int{}
			unknown := 0
			for range n {
				r := <-results
				switch {
				case r.status == http.StatusOK:
					var b struct{ ID string }
					_ = json.Unmarshal(r.body, &b)
					ids[b.ID]++
				case r.status == http.StatusConflict && strings.Contains(string(r.body), CodeOutcomeUnknown):
					unknown++
				default:
					t.Errorf("answer %d %s", r.status, r.body)
				}
			}
			if s.backend.Requests() != 1 {
				t.Fatalf("%d creates reached the backend, want 1", s.backend.Requests())
			}
			if !tc.unsure {
				if len(ids) != 1 || unknown != 0 {
					t.Fatalf("callers hold batches %v and %d unknowns; want one batch for all", ids, unknown)
				}
				return
			}
			if len(ids) != 0 || unknown != n {
				t.Fatalf("callers hold batches %v and %d unknowns; want all %d unknown", ids, unknown, n)
			}
			rec, ok := getRecord(t, s.store, hostNS(s.front.URL), tenant, "k-many")
			if !ok || rec.State != StateInDoubt || rec.Doubts != 1 {
				t.Fatalf("record %+v (found %v), want in doubt once: waiting duplicates spend no doubts", rec, ok)
			}
		})
	}
}
