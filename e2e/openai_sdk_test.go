package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/caddy-idempotency/caddy-idempotency/internal/batchesbackend"
)

// The official OpenAI Go SDK, unmodified, against the in-process Caddy with
// the handler in front of the real batches backend.

// attempt is one HTTP exchange the SDK made: what reached Caddy and what it answered.
type attempt struct {
	status       int
	code         string // the error envelope's code, if any
	shouldRetry  string // x-should-retry
	retryAfter   string // Retry-After
	retryAfterMs string // retry-after-ms
}

// countingTransport records every request the SDK sends, retries included.
type countingTransport struct {
	next http.RoundTripper
	mu   sync.Mutex
	seen []attempt
}

func (c *countingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	res, err := c.next.RoundTrip(req)
	a := attempt{}
	if res != nil {
		a = attempt{status: res.StatusCode, shouldRetry: res.Header.Get("x-should-retry"),
			retryAfter: res.Header.Get("Retry-After"), retryAfterMs: res.Header.Get("retry-after-ms")}
		if res.StatusCode >= 400 {
			body, _ := io.ReadAll(res.Body)
			res.Body.Close()
			res.Body = io.NopCloser(bytes.NewReader(body))
			a.code = errorCode(body)
		}
	}
	c.mu.Lock()
	c.seen = append(c.seen, a)
	c.mu.Unlock()
	return res, err
}

// take returns the attempts recorded so far and forgets them.
func (c *countingTransport) take() []attempt {
	c.mu.Lock()
	defer c.mu.Unlock()
	seen := c.seen
	c.seen = nil
	return seen
}

func errorCode(body []byte) string {
	var env struct {
		Error struct {
			Code string `json:"code"`
		} `json:"error"`
	}
	if err := json.Unmarshal(body, &env); err != nil {
		return ""
	}
	return env.Error.Code
}

// sdkClient is an SDK client for s with the harness's credential (so its
// scope is the one the other tests use) and a transport that counts attempts.
// Its connection is opened before it counts, by a request that creates
// nothing: a reload can reset a connection queued on Caddy's old socket, and
// the SDK would retry it.
func sdkClient(s *stack, opts ...option.RequestOption) (openai.Client, *countingTransport) {
	tr := &http.Transport{MaxIdleConnsPerHost: 100}
	s.t.Cleanup(tr.CloseIdleConnections)
	warmUp(s.t, &http.Client{Transport: tr, Timeout: 5 * time.Second}, s.url+"/v1/warm-up", siteHost(), "")
	ct := &countingTransport{next: tr}
	base := []option.RequestOption{
		option.WithBaseURL(s.url + "/v1/"),
		option.WithAPIKey("sk-tenant-a"),
		option.WithHTTPClient(&http.Client{Transport: ct, Timeout: requestTimeout}),
		option.WithRequestTimeout(15 * time.Second),
	}
	return openai.NewClient(append(base, opts...)...), ct
}

func sdkParams(inputFile string) openai.BatchNewParams {
	return openai.BatchNewParams{
		InputFileID:      inputFile,
		Endpoint:         openai.BatchNewParamsEndpointV1ChatCompletions,
		CompletionWindow: openai.BatchNewParamsCompletionWindow24h,
	}
}

// checkBatch asserts the SDK decoded a whole batch object.
func checkBatch(t *testing.T, b *openai.Batch, inputFile string) {
	t.Helper()
	if b == nil || b.ID == "" || b.Object != "batch" || b.InputFileID != inputFile ||
		b.Endpoint != "/v1/chat/completions" || b.CompletionWindow != "24h" || b.Status != openai.BatchStatusValidating {
		t.Fatalf("not the batch created: %+v", b)
	}
}

// sdkKeyCarriers are the two ways the SDK can carry the key.
var sdkKeyCarriers = []struct {
	name string
	key  func(string) option.RequestOption
}{
	{"header", func(k string) option.RequestOption { return option.WithHeader("Idempotency-Key", k) }},
	{"body_field", func(k string) option.RequestOption { return option.WithJSONSet("idempotency_key", k) }},
}

// Each transport creates exactly one batch in one attempt, and the SDK gets a
// typed Batch; the body field never reaches the strict backend.
func TestOpenAISDKCreate(t *testing.T) {
	for _, kc := range sdkKeyCarriers {
		t.Run(kc.name, func(t *testing.T) {
			s := newStack(t, "store badger "+storeDir(t))
			client, ct := sdkClient(s)
			var res *http.Response
			b, err := client.Batches.New(context.Background(), sdkParams("file-abc123"),
				kc.key("sdk-create-"+kc.name), option.WithResponseInto(&res))
			if err != nil {
				t.Fatalf("Batches.New: %v", err)
			}
			checkBatch(t, b, "file-abc123")
			if n := len(ct.take()); n != 1 {
				t.Fatalf("SDK made %d attempts, want 1", n)
			}
			if res.Header.Get("Idempotent-Replayed") != "" {
				t.Fatalf("a first create is marked replayed: %v", res.Header)
			}
			if n := s.backend.Creates(); n != 1 {
				t.Fatalf("backend creates = %d, want 1", n)
			}
			if body := s.backend.LastCreate().Body; bytes.Contains(body, []byte("idempotency_key")) {
				t.Fatalf("upstream saw the key field: %s", body)
			}
		})
	}
}

// The second New with the same key and params is the same batch, replayed.
func TestOpenAISDKReplay(t *testing.T) {
	for _, kc := range sdkKeyCarriers {
		t.Run(kc.name, func(t *testing.T) {
			s := newStack(t, "store badger "+storeDir(t))
			client, ct := sdkClient(s)
			ctx := context.Background()
			key := kc.key("sdk-replay-" + kc.name)
			first, err := client.Batches.New(ctx, sdkParams("file-abc123"), key)
			if err != nil {
				t.Fatalf("first New: %v", err)
			}
			var res *http.Response
			again, err := client.Batches.New(ctx, sdkParams("file-abc123"), key, option.WithResponseInto(&res))
			if err != nil {
				t.Fatalf("second New: %v", err)
			}
			checkBatch(t, again, "file-abc123")
			if again.ID != first.ID || again.CreatedAt != first.CreatedAt || again.RawJSON() != first.RawJSON() {
				t.Fatalf("replay differs:\n%s\n%s", first.RawJSON(), again.RawJSON())
			}
			if got := res.Header.Get("Idempotent-Replayed"); got != "true" {
				t.Fatalf("Idempotent-Replayed = %q, want true", got)
			}
			if n := len(ct.take()); n != 2 {
				t.Fatalf("SDK made %d attempts for two calls, want 2", n)
			}
			if n := s.backend.Creates(); n != 1 {
				t.Fatalf("backend creates = %d, want 1", n)
			}
		})
	}
}

// Same key, other params: a typed 409 idempotency_key_reused that the SDK,
// which retries 409 by default, does not retry (x-should-retry: false).
func TestOpenAISDKReuseConflictNotRetried(t *testing.T) {
	s := newStack(t, "store badger "+storeDir(t))
	client, ct := sdkClient(s) // the SDK's default MaxRetries (2)
	ctx := context.Background()
	key := option.WithHeader("Idempotency-Key", "sdk-reuse")
	if _, err := client.Batches.New(ctx, sdkParams("file-abc123"), key); err != nil {
		t.Fatalf("first New: %v", err)
	}
	ct.take()

	b, err := client.Batches.New(ctx, sdkParams("file-other"), key)
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) {
		t.Fatalf("got batch %+v, error %v; want *openai.Error", b, err)
	}
	if apiErr.StatusCode != http.StatusConflict || apiErr.Code != "idempotency_key_reused" ||
		apiErr.Type != "invalid_request_error" || apiErr.Message == "" {
		t.Fatalf("error %d code %q type %q message %q", apiErr.StatusCode, apiErr.Code, apiErr.Type, apiErr.Message)
	}
	attempts := ct.take()
	if len(attempts) != 1 {
		t.Fatalf("SDK made %d attempts for the conflict, want 1: %+v", len(attempts), attempts)
	}
	t.Logf("conflict: %d attempt(s), %+v", len(attempts), attempts[0])
	if c, r := s.backend.Creates(), s.backend.Requests(); c != 1 || r != 1 {
		t.Fatalf("backend creates = %d, requests = %d; want 1, 1", c, r)
	}
}

// N callers at once with one key while the upstream is slow, under wait 0:
// the handler tells the losers 409 idempotency_key_in_use with retry hints,
// and the SDK's own retries turn that into one batch for everyone.
func TestOpenAISDKConcurrentDuplicates(t *testing.T) {
	const n = 8
	const delay = 1500 * time.Millisecond // longer than the handler's 1 s retry hint
	s := newStack(t, "wait 0\n\t\tstore badger "+storeDir(t))
	s.backend.SetFault(batchesbackend.Fault{Delay: delay, Times: 1})
	client, ct := sdkClient(s, option.WithMaxRetries(10))

	type result struct {
		batch    *openai.Batch
		replayed string
		err      error
	}
	results := make(chan result, n)
	start := make(chan struct{})
	began := time.Now()
	for i := 0; i < n; i++ {
		go func() {
			<-start
			var res *http.Response
			b, err := client.Batches.New(context.Background(), sdkParams("file-abc123"),
				option.WithHeader("Idempotency-Key", "sdk-concurrent"), option.WithResponseInto(&res))
			r := result{batch: b, err: err}
			if res != nil {
				r.replayed = res.Header.Get("Idempotent-Replayed")
			}
			results <- r
		}()
	}
	close(start)

	var id string
	replayed := 0
	for i := 0; i < n; i++ {
		r := <-results
		if r.err != nil {
			t.Fatalf("caller %d: %v", i, r.err)
		}
		checkBatch(t, r.batch, "file-abc123")
		if id == "" {
			id = r.batch.ID
		}
		if r.batch.ID != id {
			t.Fatalf("callers got batches %s and %s", id, r.batch.ID)
		}
		if r.replayed == "true" {
			replayed++
		}
	}
	elapsed := time.Since(began)

	attempts := ct.take()
	inUse := 0
	for _, a := range attempts {
		switch {
		case a.status == http.StatusOK:
		case a.status == http.StatusConflict && a.code == "idempotency_key_in_use":
			if a.shouldRetry != "true" || a.retryAfter == "" || a.retryAfterMs == "" {
				t.Fatalf("in-use answer without retry hints: %+v", a)
			}
			inUse++
		default:
			t.Fatalf("unexpected answer: %+v", a)
		}
	}
	t.Logf("%d callers: %d attempts (%d answered 409 idempotency_key_in_use), %d replayed, %v",
		n, len(attempts), inUse, replayed, elapsed.Round(time.Millisecond))
	if c, r := s.backend.Creates(), s.backend.Requests(); c != 1 || r != 1 {
		t.Fatalf("backend creates = %d, requests = %d; want 1, 1", c, r)
	}
	if replayed != n-1 {
		t.Fatalf("%d callers got a replay, want %d (all but the owner)", replayed, n-1)
	}
	if len(attempts) <= n || inUse < n-1 || len(attempts) != n+inUse {
		t.Fatalf("%d attempts with %d in-use answers for %d callers: the SDK did not retry as told", len(attempts), inUse, n)
	}
}

// With the default wait, duplicates of a create slower than the SDK's whole
// retry budget (two retries about a second apart) still end in one batch for
// every caller, each in one attempt: the handler holds them for the result.
func TestOpenAISDKDuplicatesDefaultWait(t *testing.T) {
	const n = 8
	const delay = 3500 * time.Millisecond
	s := newStack(t, "store badger "+storeDir(t))
	s.backend.SetFault(batchesbackend.Fault{Delay: delay, Times: 1})
	client, ct := sdkClient(s) // the SDK's default retries

	ids := make(chan string, n)
	errs := make(chan error, n)
	for range n {
		go func() {
			b, err := client.Batches.New(context.Background(), sdkParams("file-abc123"),
				option.WithHeader("Idempotency-Key", "sdk-default-wait"))
			if err != nil {
				errs <- err
				return
			}
			ids <- b.ID
		}()
	}
	var id string
	for i := range n {
		select {
		case err := <-errs:
			t.Fatalf("caller %d: %v", i, err)
		case got := <-ids:
			if id == "" {
				id = got
			}
			if got != id {
				t.Fatalf("callers got batches %s and %s", id, got)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("caller %d had no answer after 30s", i)
		}
	}
	if attempts := ct.take(); len(attempts) != n {
		t.Fatalf("%d SDK attempts for %d callers, want one each: %+v", len(attempts), n, attempts)
	}
	if c := s.backend.Creates(); c != 1 {
		t.Fatalf("backend creates = %d, want 1", c)
	}
}
