package idempotency

// The edges of ambiguous outcomes and reconciling: panics in a listing,
// responses that break off or are flushed, backends that rewrite what they
// were sent or compress what they list, the lease during a search.

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-idempotency/caddy-idempotency/idempotency/jcs"
	"github.com/caddy-idempotency/caddy-idempotency/internal/batchesbackend"
)

// reviewFP is the fingerprint of a JSON create to /v1/batches with body.
func reviewFP(t *testing.T, body string) Fingerprint {
	t.Helper()
	canon, _, err := jcs.AppendJSONWithout(nil, []byte(body), DefaultKeyField)
	if err != nil {
		t.Fatal(err)
	}
	return NewFingerprint(http.MethodPost, batchesPath, "", BodyJSON, canon)
}

// backendNext is next as a plain call into the batches backend.
func backendNext(b *batchesbackend.Server) Next {
	return func(w http.ResponseWriter, r *http.Request) error {
		b.ServeHTTP(w, r)
		return nil
	}
}

// handleRecovering calls h.Handle and returns the recorder and what next
// panicked with, if anything (as net/http's server would recover it).
func handleRecovering(h *Handler, req *http.Request, next Next) (w *httptest.ResponseRecorder, p any) {
	w = httptest.NewRecorder()
	defer func() { p = recover() }()
	_ = h.Handle(w, req, next)
	return w, nil
}

// matchingListing is a listing page holding one batch that matches
// createBody, created now.
func matchingListing(id string) string {
	return fmt.Sprintf(`{"object":"list","data":[{"id":%q,"object":"batch","input_file_id":"file-abc",`+
		`"endpoint":"/v1/chat/completions","completion_window":"24h","status":"validating","created_at":%d,`+
		`"metadata":{"team":"a","run":"1"}}],"first_id":%q,"last_id":%q,"has_more":false}`,
		id, time.Now().Unix(), id, id)
}

// A panic in the listing of a takeover (Caddy's reverse_proxy panics with
// http.ErrAbortHandler when a response body breaks off mid-copy) is a failed
// listing: the record is held in doubt, the lease is no longer renewed, and
// the client's connection is not aborted for it.
func TestListingPanicInTakeoverHoldsTheRecord(t *testing.T) {
	h, store := newHandler(t, Config{Reconcile: &Batches{}, Lease: 150 * time.Millisecond, Wait: NoWait})
	rk := NewRecordKey(newRequestNS, "", "k-takeover-panic")
	fp := reviewFP(t, createBody)
	if _, owned, err := store.Begin(t.Context(), rk, fp, NewOwnerToken(), 100*time.Millisecond); err != nil || !owned {
		t.Fatalf("dead owner's Begin = %v, %v", owned, err)
	}
	time.Sleep(150 * time.Millisecond) // the dead owner's lease runs out

	_, p := handleRecovering(h, jsonRequest(t, "k-takeover-panic", createBody), func(w http.ResponseWriter, r *http.Request) error {
		if r.Method == http.MethodGet {
			panic(http.ErrAbortHandler) // the listing's body broke off
		}
		t.Error("a create went upstream during the takeover")
		return nil
	})
	if p != nil {
		t.Fatalf("the listing's panic reached the client's connection: %v", p)
	}
	// Nobody owns the request any more: nothing renews a lease.
	time.Sleep(3 * 150 * time.Millisecond)
	rec, ok, err := store.Get(t.Context(), rk)
	if err != nil {
		t.Fatal(err)
	}
	if !ok || rec.State != StateInDoubt || rec.Doubts != 1 {
		t.Fatalf("record %+v (found %v); want it held in doubt once, no longer in flight", rec, ok)
	}
}

// A panic in the listing after an ambiguous outcome is a failed listing too:
// the request gets its one Decision, in_doubt, and a 409 outcome_unknown.
func TestListingPanicAfterAnAmbiguousOutcome(t *testing.T) {
	obs := &observed{}
	h, _ := newHandler(t, Config{Reconcile: &Batches{}, Observe: obs.observe})
	_, p := handleRecovering(h, jsonRequest(t, "k-amb-panic", createBody), func(w http.ResponseWriter, r *http.Request) error {
		if r.Method == http.MethodGet {
			panic(http.ErrAbortHandler)
		}
		_, _ = io.ReadAll(r.Body)
		w.WriteHeader(http.StatusBadGateway)
		return nil
	})
	if p != nil {
		t.Fatalf("the listing's panic reached the client's connection: %v", p)
	}
	if d := obs.take(); len(d) != 1 || d[0].Outcome != OutcomeInDoubt {
		t.Fatalf("decisions %+v; want exactly one, in_doubt", d)
	}
}

// The upstream made the batch, answered 500, and the 500's body broke off
// (a crashing upstream). ReverseProxy (and Caddy's reverse_proxy) panic with
// http.ErrAbortHandler on the body copy error. The status is ambiguous and
// the request was sent, so the panic is reconciled like any ambiguous
// outcome before it is re-raised: the retry replays the batch.
func TestAmbiguousResponseThatBreaksOffIsReconciled(t *testing.T) {
	b := batchesbackend.New()
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && b.Creates() == 0 {
			b.ServeHTTP(httptest.NewRecorder(), r) // the batch is made; its answer is lost
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Content-Length", "400")
			w.WriteHeader(http.StatusInternalServerError)
			_, _ = io.WriteString(w, `{"error":{"message":"The server had an`)
			conn, _, err := http.NewResponseController(w).Hijack()
			if err == nil {
				_ = conn.Close() // cut short: 400 bytes promised
			}
			return
		}
		b.ServeHTTP(w, r)
	}))
	t.Cleanup(up.Close)
	front := reconcilingFront(t, up.URL)

	send := func() (int, error) {
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, front.URL+batchesPath, strings.NewReader(createBody))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", tenant)
		req.Header.Set("Idempotency-Key", "k-truncated-500")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		_, _ = io.Copy(io.Discard, resp.Body)
		return resp.StatusCode, nil
	}
	status, err := send()
	t.Logf("first attempt: status %d, err %v", status, err)
	for i := 0; i < 3 && status != http.StatusOK; i++ {
		status, err = send() // what an SDK does with a broken connection or a 409 outcome_unknown
		t.Logf("retry: status %d, err %v", status, err)
	}
	if n := b.Creates(); n != 1 {
		t.Fatalf("the backend made %d batches for one key; the 500 with a broken body was released without reconciling", n)
	}
}

// The reconciled answer to the owner replaces the ambiguous 5xx, headers
// and all (they share the ResponseWriter's header map): a 500 that came
// gzip-encoded must not leave Content-Encoding: gzip on the identity JSON
// of the adopted batch.
func TestReconciledAnswerHasNoneOfThe5xxHeaders(t *testing.T) {
	h, _ := newHandler(t, Config{Reconcile: &Batches{}})
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	_, _ = io.WriteString(zw, `{"error":{"message":"The server had an error","type":"server_error"}}`)
	_ = zw.Close()
	w, p := handleRecovering(h, jsonRequest(t, "k-gzip-500", createBody), func(w http.ResponseWriter, r *http.Request) error {
		if r.Method == http.MethodGet {
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, matchingListing("batch_adopted"))
			return nil
		}
		_, _ = io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Encoding", "gzip")
		w.Header().Set("Retry-After", "30")
		w.WriteHeader(http.StatusInternalServerError)
		_, _ = w.Write(gz.Bytes())
		return nil
	})
	if p != nil {
		t.Fatal(p)
	}
	if w.Code != http.StatusOK || w.Header().Get(ReconciledHeader) != "true" {
		t.Fatalf("answer %d %s; want the reconciled batch", w.Code, w.Body.Bytes())
	}
	if !json.Valid(w.Body.Bytes()) {
		t.Fatalf("body %q is not the batch JSON", w.Body.Bytes())
	}
	if ce := w.Header().Get("Content-Encoding"); ce != "" {
		t.Fatalf("the reconciled identity JSON goes out with Content-Encoding: %s (and Retry-After: %q) left over from the 500 it replaces",
			ce, w.Header().Get("Retry-After"))
	}
}

// The listing keeps the create's query and sets limit/after on top: a
// backend that selects the account by a query parameter (Azure's
// api-version is required on every call; gateways select a project this
// way) is listed where the create went. Listed elsewhere, the lost create
// would be judged "nothing made" and the retry would make a second batch.
func TestListingKeepsTheCreatesQuery(t *testing.T) {
	projects := map[string]*batchesbackend.Server{"": batchesbackend.New(), "p1": batchesbackend.New()}
	p1 := projects["p1"]
	p1.SetFault(batchesbackend.Fault{After: true, Status: http.StatusInternalServerError, Times: 1})
	var mu sync.Mutex
	var listQueries []string
	next := func(w http.ResponseWriter, r *http.Request) error {
		if r.Method == http.MethodGet {
			mu.Lock()
			listQueries = append(listQueries, r.URL.RawQuery)
			mu.Unlock()
		}
		projects[r.URL.Query().Get("project")].ServeHTTP(w, r)
		return nil
	}
	h, _ := newHandler(t, Config{Reconcile: &Batches{}})
	create := func() *httptest.ResponseRecorder {
		req := newRequest(t, http.MethodPost, batchesPath+"?project=p1", strings.NewReader(createBody))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Idempotency-Key", "k-query")
		w := httptest.NewRecorder()
		_ = h.Handle(w, req, next)
		return w
	}
	first := create()
	retry := create()
	t.Logf("first %d, retry %d %s; listing queries %q", first.Code, retry.Code, retry.Header().Get(ReconciledHeader), listQueries)
	if n := p1.Creates(); n != 1 {
		t.Fatalf("project p1 holds %d batches for one key: the listing (queries %q) did not carry project=p1", n, listQueries)
	}
}

// Two scopes that share the listing's credentials (a scope set to a user
// header in front of one API key; or two OpenAI API keys of one project,
// which list the same batches) see each other's batches. With tag, each
// attempt is found by a tag of its own record key: user B, whose create
// failed before the backend made anything, is never handed user A's batch.
// (Without tag, that identical batch would match: the README says so.)
func TestTagKeepsScopesSharingCredentialsApart(t *testing.T) {
	b := batchesbackend.New()
	h, _ := newHandler(t, Config{Reconcile: &Batches{Tag: true}, Scope: func(r *http.Request) string { return r.Header.Get("X-User") }})
	send := func(user, key string) *httptest.ResponseRecorder {
		req := newRequest(t, http.MethodPost, batchesPath, strings.NewReader(createBody))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer shared-org-key")
		req.Header.Set("X-User", user)
		if key != "" {
			req.Header.Set("Idempotency-Key", key)
		}
		w := httptest.NewRecorder()
		_ = h.Handle(w, req, backendNext(b))
		return w
	}
	a := send("alice", "alice-key")
	if a.Code != http.StatusOK {
		t.Fatalf("alice: %d %s", a.Code, a.Body.Bytes())
	}
	var aliceBatch struct{ ID string }
	_ = json.Unmarshal(a.Body.Bytes(), &aliceBatch)

	b.SetFault(batchesbackend.Fault{Status: http.StatusBadGateway, Times: 1}) // before the create: nothing made
	bob := send("bob", "bob-key")
	var got struct{ ID string }
	_ = json.Unmarshal(bob.Body.Bytes(), &got)
	if got.ID == aliceBatch.ID {
		t.Fatalf("bob (another scope) was answered alice's batch %s (status %d, %s: %q); his own create made nothing",
			got.ID, bob.Code, ReconciledHeader, bob.Header().Get(ReconciledHeader))
	}
}

// A backend that echoes metadata otherwise than it was sent (drops it, as
// some OpenAI-compatible servers do, or adds an entry of its own, as
// gateways do) makes the attempt's batch look like another. A batch of the
// same input file and endpoint since the attempt is therefore unsure, never
// "nothing made": the retry must not make a second batch.
func TestBackendThatRewritesMetadataIsUnsure(t *testing.T) {
	for _, tc := range []struct {
		name    string
		rc      *Batches
		rewrite func(map[string]any)
	}{
		{"tag, backend drops metadata", &Batches{Tag: true}, func(b map[string]any) { b["metadata"] = nil }},
		{"no tag, backend adds an entry", &Batches{}, func(b map[string]any) {
			md, _ := b["metadata"].(map[string]any)
			if md == nil {
				md = map[string]any{}
			}
			md["gateway_user"] = "u1"
			b["metadata"] = md
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			back := batchesbackend.New()
			back.SetFault(batchesbackend.Fault{After: true, Status: http.StatusInternalServerError, Times: 1})
			next := rewritingListings(back, func(w http.ResponseWriter, listing []byte) error {
				var l map[string]any
				if err := json.Unmarshal(listing, &l); err != nil {
					return err
				}
				for _, it := range l["data"].([]any) {
					tc.rewrite(it.(map[string]any))
				}
				w.Header().Set("Content-Type", "application/json")
				return json.NewEncoder(w).Encode(l)
			})
			h, _ := newHandler(t, Config{Reconcile: tc.rc})
			for range 3 {
				w := httptest.NewRecorder()
				_ = h.Handle(w, jsonRequest(t, "k-meta", createBody), next)
				if w.Code == http.StatusOK {
					break
				}
			}
			if n := back.Creates(); n != 1 {
				t.Fatalf("backend made %d batches for one key", n)
			}
		})
	}
}

// The search may take up to reconcileTimeout (30s), longer than a short
// lock_timeout: the owner keeps renewing its lease while it searches, so a
// duplicate is told in_use (or waits) instead of taking a live owner's
// record over and running a search and a create of its own.
func TestLeaseRenewedDuringTheSearch(t *testing.T) {
	h, _ := newHandler(t, Config{Reconcile: &Batches{}, Lease: 200 * time.Millisecond, Wait: NoWait})
	var creates, lists atomic.Int64
	listing := make(chan struct{})
	release := make(chan struct{})
	t.Cleanup(func() {
		select {
		case <-release:
		default:
			close(release)
		}
	})
	next := func(w http.ResponseWriter, r *http.Request) error {
		if r.Method == http.MethodGet {
			if lists.Add(1) == 1 {
				close(listing)
				<-release // a slow listing: many pages, a slow backend
			}
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, `{"object":"list","data":[],"has_more":false}`)
			return nil
		}
		_, _ = io.ReadAll(r.Body)
		if creates.Add(1) == 1 {
			w.WriteHeader(http.StatusBadGateway)
			return nil
		}
		writeBatch(w, http.StatusOK, creates.Load())
		return nil
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = h.Handle(httptest.NewRecorder(), jsonRequest(t, "k-slow-search", createBody), next)
	}()
	waitClosed(t, listing, "the owner's listing")
	time.Sleep(600 * time.Millisecond) // three leases into a search the owner is still running
	w := httptest.NewRecorder()
	_ = h.Handle(w, jsonRequest(t, "k-slow-search", createBody), next)
	close(release)
	<-done
	if w.Code != http.StatusConflict || !strings.Contains(w.Body.String(), CodeKeyInUse) {
		t.Fatalf("a duplicate during the live owner's search got %d %s (creates upstream: %d, listings: %d); "+
			"want 409 %s: the owner was alive", w.Code, w.Body.Bytes(), creates.Load(), lists.Load(), CodeKeyInUse)
	}
}

// The Badger codec and the Redis layout saturate Doubts at 255, so
// MaxDoubts may be at most that: a larger one would never be reached, and
// the record would be held again on every retry.
func TestMaxDoubtsFitsWhatStoresKeep(t *testing.T) {
	if _, err := New(Config{Store: NewMemoryStore(), Reconcile: &Batches{}, MaxDoubts: MaxDoubtsLimit + 1}); err == nil {
		t.Fatalf("MaxDoubts %d accepted", MaxDoubtsLimit+1)
	}
	if _, err := New(Config{Store: NewMemoryStore(), Reconcile: &Batches{}, MaxDoubts: MaxDoubtsLimit}); err != nil {
		t.Fatalf("MaxDoubts %d refused: %v", MaxDoubtsLimit, err)
	}
	rec := Record{State: StateInFlight, Owner: NewOwnerToken(), CreatedAt: time.Now(), LeaseUntil: time.Now().Add(time.Minute), Doubts: 255}
	held := rec.Held(time.Now(), time.Hour) // the 256th doubt
	data, err := held.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var back Record
	if err := back.UnmarshalBinary(data); err != nil {
		t.Fatal(err)
	}
	if back.Doubts+1 < MaxDoubtsLimit {
		t.Fatalf("Config accepts MaxDoubts 300, but a stored record keeps at most %d doubts (held %d): "+
			"Doubts+1 >= MaxDoubts never holds, the key is held in doubt on every retry forever", back.Doubts, held.Doubts)
	}
}

// A listing the upstream compressed although asked for identity (an
// upstream that always gzips) is decoded as stored responses are
// (identityBody); undecoded, every search would be unsure until MaxDoubts
// released the record.
func TestCompressedListingIsRead(t *testing.T) {
	back := batchesbackend.New()
	back.SetFault(batchesbackend.Fault{After: true, Status: http.StatusBadGateway, Times: 1})
	next := rewritingListings(back, func(w http.ResponseWriter, listing []byte) error {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Encoding", "gzip")
		zw := gzip.NewWriter(w)
		_, _ = zw.Write(listing)
		return zw.Close()
	})
	h, _ := newHandler(t, Config{Reconcile: &Batches{}})
	w := httptest.NewRecorder()
	_ = h.Handle(w, jsonRequest(t, "k-gzip-list", createBody), next)
	if w.Code != http.StatusOK {
		t.Fatalf("answer %d %s; want the batch the create made (the listing held it, gzip-encoded)", w.Code, w.Body.Bytes())
	}
}

// With the engine used without Caddy (Middleware + httputil.ReverseProxy,
// as the README's "Using the engine without Caddy" shows), a refused dial
// comes back as a 502 written by the proxy, with no error and nothing sent.
// Nothing reached an upstream: the key is released and the client gets the
// proxy's 502, not a search and a 409 idempotency_outcome_unknown.
func TestRefusedDialBehindReverseProxyIsReleased(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + ln.Addr().String()
	_ = ln.Close() // nothing listens: every dial is refused
	obs := &observed{}
	h, err := New(Config{Store: openMemoryStore(t), Reconcile: &Batches{}, Observe: obs.observe})
	if err != nil {
		t.Fatal(err)
	}
	front := httptest.NewServer(h.Middleware(newProxy(t, dead)))
	t.Cleanup(front.Close)
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, front.URL+batchesPath, strings.NewReader(createBody))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", "k-dial")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	d := obs.take()
	if resp.StatusCode != http.StatusBadGateway || len(d) != 1 || d[0].Outcome != OutcomeReleased {
		t.Fatalf("a refused dial got %d %s, decision %+v; want the proxy's 502 and the key released", resp.StatusCode, body, d)
	}
}

// An ambiguous 5xx without Content-Length is flushed by the proxy
// (ReverseProxy and Caddy flush responses of unknown length at once), and a
// flush must not start the held 5xx on its way: the client gets the batch
// the search finds, on its first answer.
func TestFlushed500IsReplacedByTheBatch(t *testing.T) {
	b := batchesbackend.New()
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && b.Creates() == 0 {
			b.ServeHTTP(httptest.NewRecorder(), r) // made; answer lost
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusInternalServerError)
			_, _ = io.WriteString(w, `{"error":{"message":"The server had an error","type":"server_error"}}`)
			http.NewResponseController(w).Flush() // chunked: no Content-Length
			return
		}
		b.ServeHTTP(w, r)
	}))
	t.Cleanup(up.Close)
	front := reconcilingFront(t, up.URL)
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodPost, front.URL+batchesPath, strings.NewReader(createBody))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", "k-flushed-500")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("first answer %d %s; want the batch the create made (backend made %d)", resp.StatusCode, body, b.Creates())
	}
}

// ===========================================================================
// Probes that held up.

// Prepare's splice keeps every byte and puts the tag in the one top-level
// metadata member, however it is spelled.
func TestTagSpliceIsStrictJSON(t *testing.T) {
	rc := &Batches{Tag: true}
	a := &Attempt{Key: NewRecordKey("ns", "s", "k")}
	tag := rc.TagValue(a.Key)
	for _, body := range []string{
		`{"input_file_id":"f","metadata":{"a":"b"}}`,
		`{"input_file_id":"f","metadata" : { } }`,
		` { "input_file_id" : "f" , "metadata" :null } `,
		`{"meta\u0064ata":{"x":"y"},"input_file_id":"f"}`,
		`{"input_file_id":"f","other":{"metadata":{"z":"1"}}}`,
		`{}`,
		"{\r\n\t\"input_file_id\":\"f\",\r\n\t\"metadata\":{\r\n\t\t\"k\":\"\\u00e9\"\r\n\t}\r\n}",
		`{"input_file_id":"f","metadata":{"idempotency\u005ftag":"` + tag + `"}}`,
	} {
		out, err := rc.Prepare(a, []byte(body))
		if err != nil {
			t.Errorf("%s: %v", body, err)
			continue
		}
		var v struct {
			Metadata map[string]string `json:"metadata"`
			Other    struct {
				Metadata map[string]string `json:"metadata"`
			} `json:"other"`
		}
		if err := json.Unmarshal(out, &v); err != nil || v.Metadata[DefaultBatchesTagKey] != tag || v.Other.Metadata[DefaultBatchesTagKey] != "" {
			t.Errorf("%s -> %s (%v)", body, out, err)
		}
		if _, _, err := jcs.AppendJSONWithout(nil, out, ""); err != nil {
			t.Errorf("%s -> %s: not strict JSON: %v", body, out, err)
		}
	}
	for _, body := range []string{
		`{"metadata":{"idempotency_tag":"other"}}`,
		`{"metadata":[]}`,
		`{"metadata":"x"}`,
		`[]`,
	} {
		if out, err := rc.Prepare(a, []byte(body)); err == nil {
			t.Errorf("%s accepted: %s", body, out)
		}
	}
}

// The listing request: a GET for the path, no body, none of the body's
// headers, no key header, identity; the client's credentials and other
// headers kept. No keyless or uncovered request lists.
func TestListingRequestShape(t *testing.T) {
	b := batchesbackend.New()
	b.SetFault(batchesbackend.Fault{After: true, Status: http.StatusBadGateway, Times: 1})
	var seen []*http.Request
	var mu sync.Mutex
	next := func(w http.ResponseWriter, r *http.Request) error {
		if r.Method == http.MethodGet {
			body, _ := io.ReadAll(r.Body)
			if len(body) != 0 || r.ContentLength != 0 {
				t.Errorf("listing carries a body %q (%d)", body, r.ContentLength)
			}
			mu.Lock()
			seen = append(seen, r.Clone(context.Background()))
			mu.Unlock()
		}
		b.ServeHTTP(w, r)
		return nil
	}
	h, _ := newHandler(t, Config{Reconcile: &Batches{}})
	req := jsonRequest(t, "k-shape", createBody)
	req.Header.Set("Authorization", tenant)
	req.Header.Set("OpenAI-Organization", "org-1")
	req.Header.Set("Content-Encoding", "identity")
	w := httptest.NewRecorder()
	_ = h.Handle(w, req, next)
	if w.Code != http.StatusOK || len(seen) != 1 {
		t.Fatalf("%d %s, %d listings", w.Code, w.Body.Bytes(), len(seen))
	}
	l := seen[0]
	q, _ := url.ParseQuery(l.URL.RawQuery)
	if l.URL.Path != batchesPath || q.Get("limit") != "100" || len(q) != 1 {
		t.Errorf("listing %s %s", l.Method, l.URL)
	}
	for _, name := range []string{"Content-Type", "Content-Length", "Content-Encoding", "Idempotency-Key", "Expect"} {
		if v := l.Header.Get(name); v != "" {
			t.Errorf("listing carries %s: %q", name, v)
		}
	}
	if l.Header.Get("Authorization") != tenant || l.Header.Get("OpenAI-Organization") != "org-1" || l.Header.Get("Accept-Encoding") != "identity" {
		t.Errorf("listing headers %v", l.Header)
	}

	// Keyless and uncovered ambiguous requests never list.
	seen = nil
	for _, r := range []*http.Request{
		func() *http.Request { r := jsonRequest(t, "", createBody); r.Header.Del("Idempotency-Key"); return r }(),
		func() *http.Request {
			r := jsonRequest(t, "k-files", createBody)
			r.URL.Path = "/v1/files"
			return r
		}(),
	} {
		_ = h.Handle(httptest.NewRecorder(), r, func(w http.ResponseWriter, r *http.Request) error {
			if r.Method == http.MethodGet {
				seen = append(seen, r)
			}
			_, _ = io.ReadAll(r.Body)
			w.WriteHeader(http.StatusBadGateway)
			return nil
		})
	}
	if len(seen) != 0 {
		t.Errorf("%d listings for keyless or uncovered requests", len(seen))
	}
}

// A request the tag refuses claims nothing: the same key with a good body
// then runs.
func TestRefusedTagClaimsNothing(t *testing.T) {
	h, store := newHandler(t, Config{Reconcile: &Batches{Tag: true}})
	var md []string
	for i := range 16 {
		md = append(md, fmt.Sprintf(`"k%d":"v"`, i))
	}
	full := `{"input_file_id":"file-abc","endpoint":"/v1/chat/completions","completion_window":"24h","metadata":{` + strings.Join(md, ",") + `}}`
	res := answerAlone(t, h, jsonRequest(t, "k-refused", full), "a refused request")
	wantError(t, res, http.StatusBadRequest, CodeReconcileRefused)
	if _, ok := getRecord(t, store, newRequestNS, "", "k-refused"); ok {
		t.Fatal("a refused request left a record")
	}
}

// Metadata spelled null, {} or absent matches a batch listed with any of
// them; key order and escapes do not matter; "1" and 1 are never confused
// (a number cannot reach the backend as a string value anyway).
func TestMetadataEquivalences(t *testing.T) {
	now := time.Now().Unix()
	listed := func(md string) string {
		return fmt.Sprintf(`{"object":"list","data":[{"id":"b1","input_file_id":"f","endpoint":"/v1/chat/completions",`+
			`"completion_window":"24h","created_at":%d%s}],"has_more":false}`, now, md)
	}
	for _, tc := range []struct {
		req, md string
		want    FindResult
	}{
		{`{"input_file_id":"f","endpoint":"/v1/chat/completions","completion_window":"24h"}`, `,"metadata":null`, FindOne},
		{`{"input_file_id":"f","endpoint":"/v1/chat/completions","completion_window":"24h","metadata":{}}`, ``, FindOne},
		{`{"input_file_id":"f","endpoint":"/v1/chat/completions","completion_window":"24h","metadata":null}`, `,"metadata":{}`, FindOne},
		{`{"input_file_id":"f","endpoint":"/v1/chat/completions","completion_window":"24h","metadata":{"b":"2","a":"\u00e9"}}`, `,"metadata":{"a":"é","b":"2"}`, FindOne},
		{`{"input_file_id":"f","endpoint":"/v1/chat/completions","completion_window":"24h","metadata":{"a":"1"}}`, `,"metadata":{"a":"1 "}`, FindUnsure}, // near: a backend may rewrite metadata
		{`{"input_file_id":"f","endpoint":"/v1/chat/completions","completion_window":"24h","metadata":{"a":1}}`, `,"metadata":{"a":"1"}`, FindUnsure},
	} {
		body := listed(tc.md)
		got := (&Batches{}).Find(t.Context(), &Attempt{Body: []byte(tc.req), Since: time.Now()}, func(context.Context, url.Values) (*Listing, error) {
			return &Listing{Status: 200, Header: http.Header{}, Body: []byte(body), Received: time.Now()}, nil
		})
		if got.Result != tc.want {
			t.Errorf("request %s vs listed %s: %s (%s), want %s", tc.req, tc.md, got.Result, got.Reason, tc.want)
		}
	}
}

// failingHold is a store whose Hold (or Complete) fails.
type failingHold struct {
	Store
	hold, complete bool
}

func (s failingHold) Hold(ctx context.Context, key RecordKey, owner OwnerToken, d time.Duration) error {
	if s.hold {
		return fmt.Errorf("store down")
	}
	return s.Store.Hold(ctx, key, owner, d)
}

func (s failingHold) Complete(ctx context.Context, key RecordKey, owner OwnerToken, resp Response, ttl time.Duration) error {
	if s.complete {
		return fmt.Errorf("store down")
	}
	return s.Store.Complete(ctx, key, owner, resp, ttl)
}

// Every new path decides exactly once, and a Hold or Complete that fails
// leaves a record that a retry takes over once the lease runs out.
func TestOneDecisionPerReconcilePath(t *testing.T) {
	twoMatches := func(w http.ResponseWriter, r *http.Request) error {
		now := time.Now().Unix()
		fmt.Fprintf(w, `{"object":"list","data":[{"id":"b2","input_file_id":"file-abc","endpoint":"/v1/chat/completions","completion_window":"24h","created_at":%d,"metadata":{"team":"a","run":"1"}},{"id":"b1","input_file_id":"file-abc","endpoint":"/v1/chat/completions","completion_window":"24h","created_at":%d,"metadata":{"team":"a","run":"1"}}],"has_more":false}`, now, now)
		return nil
	}
	one := func(w http.ResponseWriter, r *http.Request) error {
		_, _ = io.WriteString(w, matchingListing("b1"))
		return nil
	}
	none := func(w http.ResponseWriter, r *http.Request) error {
		_, _ = io.WriteString(w, `{"object":"list","data":[],"has_more":false}`)
		return nil
	}
	post := func(status int, big bool) Next {
		return func(w http.ResponseWriter, r *http.Request) error {
			_, _ = io.ReadAll(r.Body)
			w.WriteHeader(status)
			if big {
				_, _ = w.Write(bytes.Repeat([]byte("x"), 4096))
			}
			return nil
		}
	}
	for _, tc := range []struct {
		name     string
		takeover bool
		maxD     int
		list     Next
		post     Next
		hold     bool
		complete bool
		want     Outcome
		status   int
	}{
		{"owner found one", false, 0, one, post(502, false), false, false, OutcomeReconciled, 200},
		{"owner found none", false, 0, none, post(502, false), false, false, OutcomeReleased, 502},
		{"owner unsure", false, 0, twoMatches, post(500, false), false, false, OutcomeInDoubt, 409},
		{"owner gave up", false, 1, twoMatches, post(504, false), false, false, OutcomeInDoubt, 504},
		{"owner 500 over max_response, found one", false, 0, one, post(500, true), false, false, OutcomeReconciled, 500},
		{"takeover found one", true, 0, one, nil, false, false, OutcomeReconciled, 200},
		{"takeover unsure", true, 0, twoMatches, nil, false, false, OutcomeInDoubt, 409},
		{"takeover gave up", true, 1, twoMatches, nil, false, false, OutcomeInDoubt, 409},
		{"takeover none then stored", true, 0, none, post(200, false), false, false, OutcomeStored, 200},
		{"owner unsure, hold fails", false, 0, twoMatches, post(500, false), true, false, OutcomeInDoubt, 409},
		{"owner found one, complete fails", false, 0, one, post(500, false), false, true, OutcomeStoreError, 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			obs := &observed{}
			mem := NewMemoryStore()
			t.Cleanup(func() { _ = mem.Close() })
			h, err := New(Config{Store: failingHold{mem, tc.hold, tc.complete}, Reconcile: &Batches{}, MaxDoubts: tc.maxD,
				Observe: obs.observe, Lease: 150 * time.Millisecond, MaxResponse: 1024})
			if err != nil {
				t.Fatal(err)
			}
			rk := NewRecordKey(newRequestNS, "", "k-dec")
			if tc.takeover {
				if _, owned, _ := mem.Begin(t.Context(), rk, reviewFP(t, createBody), NewOwnerToken(), 100*time.Millisecond); !owned {
					t.Fatal("not owned")
				}
				time.Sleep(120 * time.Millisecond)
			}
			w := httptest.NewRecorder()
			_ = h.Handle(w, jsonRequest(t, "k-dec", createBody), func(w http.ResponseWriter, r *http.Request) error {
				if r.Method == http.MethodGet {
					return tc.list(w, r)
				}
				if tc.post == nil {
					t.Error("create went upstream")
					return nil
				}
				return tc.post(w, r)
			})
			d := obs.take()
			if len(d) != 1 || d[0].Outcome != tc.want || w.Code != tc.status {
				t.Fatalf("answer %d, decisions %+v; want one %s and %d", w.Code, d, tc.want, tc.status)
			}
			if tc.hold || tc.complete {
				time.Sleep(200 * time.Millisecond)
				if rec, ok, _ := mem.Get(t.Context(), rk); ok {
					t.Fatalf("record %v still live after its lease; want it free for a takeover", rec.State)
				}
			}
		})
	}
}

// reconcilingFront is the engine, reconciling batches on a memory store, in
// front of a reverse proxy to upstream.
func reconcilingFront(t *testing.T, upstream string) *httptest.Server {
	t.Helper()
	h, err := New(Config{Store: openMemoryStore(t), Reconcile: &Batches{}})
	if err != nil {
		t.Fatal(err)
	}
	front := httptest.NewServer(h.Middleware(newProxy(t, upstream)))
	t.Cleanup(front.Close)
	return front
}

// rewritingListings is back as the upstream, with each listing (a GET) it
// answers handed to rewrite to write in its place; a create goes as is.
func rewritingListings(back *batchesbackend.Server, rewrite func(w http.ResponseWriter, listing []byte) error) Next {
	return func(w http.ResponseWriter, r *http.Request) error {
		if r.Method != http.MethodGet {
			back.ServeHTTP(w, r)
			return nil
		}
		rec := httptest.NewRecorder()
		back.ServeHTTP(rec, r)
		return rewrite(w, rec.Body.Bytes())
	}
}
