package e2e

import (
	"bytes"
	"flag"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptrace"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-idempotency/caddy-idempotency/internal/batchesbackend"
)

// Duplicates at once: one upstream request per key, whether the duplicates
// wait for it or are told to retry.

// Fifty clients send the same create at once while the backend is slow:
// with wait, all of them get the one batch.
func TestConcurrentDuplicatesWait(t *testing.T) {
	s := newStack(t, "store badger "+storeDir(t)+"\n\t\twait 10s")
	open := holdNextCreate(t, s.backend)
	replies := s.sendConcurrently(50, createBody(t, nil, ""), "Idempotency-Key", "dup-wait")
	waitFor(t, "one owner upstream", func() bool { return s.backend.Requests() == 1 }) // the rest waiting
	time.Sleep(200 * time.Millisecond)                                                 // let the duplicates arrive and begin waiting
	open()
	first := <-replies
	first.batch(t)
	for i := 1; i < 50; i++ {
		if r := <-replies; r.Status != first.Status || !bytes.Equal(r.Body, first.Body) {
			t.Fatalf("client got %d %s, another got %d %s", r.Status, r.Body, first.Status, first.Body)
		}
	}
	if n := s.backend.Creates(); n != 1 {
		t.Fatalf("backend creates = %d, want 1", n)
	}
}

// Without wait, the duplicates are told to retry, and their retries replay.
func TestConcurrentDuplicatesNoWait(t *testing.T) {
	s := newStack(t, "wait 0\n\t\tstore badger "+storeDir(t))
	open := holdNextCreate(t, s.backend)
	body := createBody(t, nil, "")

	owner := make(chan reply, 1)
	go func() { owner <- s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", "dup-nowait") }()
	waitFor(t, "the owner upstream", func() bool { return s.backend.Requests() == 1 })

	replies := s.sendConcurrently(49, body, "Idempotency-Key", "dup-nowait")
	for i := 0; i < 49; i++ {
		r := <-replies
		r.apiError(t, http.StatusConflict, "idempotency_key_in_use")
		if r.Header.Get("Retry-After") == "" || r.Header.Get("retry-after-ms") == "" || r.Header.Get("x-should-retry") != "true" {
			t.Fatalf("in-use headers missing: %v", r.Header)
		}
	}
	open()
	created := (<-owner).batch(t)
	replays := s.sendConcurrently(49, body, "Idempotency-Key", "dup-nowait")
	for i := 0; i < 49; i++ {
		r := <-replays
		if b := r.batch(t); b.ID != created.ID || r.Header.Get("Idempotent-Replayed") != "true" {
			t.Fatalf("retry got %s (replayed %q), want replay of %s", b.ID, r.Header.Get("Idempotent-Replayed"), created.ID)
		}
	}
	if n := s.backend.Creates(); n != 1 {
		t.Fatalf("backend creates = %d, want 1", n)
	}
}

// With no wait line, duplicates of an in-flight create wait for it (the
// default is 30s) and replay it: one batch for all of them.
func TestFidelityDefaultWait(t *testing.T) {
	s := newStack(t, "store badger "+storeDir(t))
	warmUp(t, s.client, s.url+"/v1/warm-up", siteHost(), "") // the backend's 404, no create
	s.backend.SetFault(batchesbackend.Fault{Delay: 2 * time.Second, Times: 1})
	body := createBody(t, nil, "")
	const clients = 8
	replies := make(chan reply, clients)
	for range clients {
		go func() {
			replies <- sendTo(t, s.client, http.MethodPost, s.url+"/v1/batches", body, "Idempotency-Key", "default-wait")
		}()
	}
	var first batchesbackend.Batch
	replayed := 0
	for i := range clients {
		r := <-replies
		b := r.batch(t)
		if i == 0 {
			first = b
		}
		if b.ID != first.ID {
			t.Fatalf("two batches for one key: %s and %s", first.ID, b.ID)
		}
		if r.Header.Get("Idempotent-Replayed") == "true" {
			replayed++
		}
	}
	if replayed != clients-1 || s.backend.Creates() != 1 {
		t.Fatalf("%d replays and %d creates, want %d and 1", replayed, s.backend.Creates(), clients-1)
	}
}

// wait 0 answers a duplicate of an in-flight request at once, 409
// idempotency_key_in_use, instead of the default wait.
func TestFidelityWaitZero(t *testing.T) {
	s := newStack(t, "store badger "+storeDir(t)+"\n\t\twait 0")
	warmUp(t, s.client, s.url+"/v1/warm-up", siteHost(), "")
	open := holdNextCreate(t, s.backend)
	body := createBody(t, nil, "")
	send := func() reply {
		return sendTo(t, s.client, http.MethodPost, s.url+"/v1/batches", body, "Idempotency-Key", "wait-zero")
	}

	owner := make(chan reply, 1)
	go func() { owner <- send() }()
	waitFor(t, "the owner upstream", func() bool { return s.backend.Requests() == 1 })
	start := time.Now()
	dup := send()
	took := time.Since(start)
	dup.apiError(t, http.StatusConflict, "idempotency_key_in_use")
	if took > time.Second || len(owner) != 0 || dup.Header.Get("x-should-retry") != "true" || dup.Header.Get("Retry-After") == "" {
		t.Fatalf("in use after %s (owner done: %v), headers %v: want an answer at once, while the owner runs", took, len(owner) != 0, dup.Header)
	}
	open()
	created := (<-owner).batch(t)
	if again := send(); again.batch(t).ID != created.ID || again.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("retry after the owner: %s, want a replay of %s", again.Body, created.ID)
	}
}

// CI runs TestLoad small; the full size is
//
//	go test -run '^TestLoad$' -count=1 -v ./e2e/ -args -load.requests=20000 -load.keys=2000 -load.conns=200
var (
	loadRequests = flag.Int("load.requests", 2000, "TestLoad: keyed creates to send")
	loadKeys     = flag.Int("load.keys", 200, "TestLoad: distinct keys among them")
	loadConns    = flag.Int("load.conns", 50, "TestLoad: concurrent client connections")
)

// loadResult is one keyed create, retries included.
type loadResult struct {
	timedReply
	start   time.Time // of the first attempt
	retries int       // 409 idempotency_key_in_use answers retried
}

// Keyed creates, copies of each key shuffled through the list so they run
// concurrently, from many connections through the handler on Badger.
func TestLoad(t *testing.T) {
	n, keys, conns := *loadRequests, *loadKeys, *loadConns
	if keys < 1 || n < keys || conns < 1 {
		t.Fatalf("bad load flags: %d requests, %d keys, %d conns", n, keys, conns)
	}
	s := newStack(t, "store badger "+storeDir(t)+"\n\t\twait 30s")
	order := make([]string, n)
	for i := range order {
		order[i] = "load-" + strconv.Itoa(i%keys)
	}
	rand.Shuffle(n, func(i, j int) { order[i], order[j] = order[j], order[i] })

	client := &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{MaxConnsPerHost: conns, MaxIdleConnsPerHost: conns}}
	url := s.url + "/v1/batches"
	results := make([]loadResult, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	began := time.Now()
	for range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(next.Add(1) - 1); i < n; i = int(next.Add(1) - 1) {
				results[i] = sendRetryingInUse(t, client, url, order[i])
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(began)
	if t.Failed() {
		t.FailNow()
	}

	owner := map[string]loadResult{} // the response that came from upstream
	for _, r := range results {
		if r.Status != http.StatusOK {
			t.Fatalf("key %s: status %d; body %s", r.key, r.Status, r.Body)
		}
		if r.Header.Get("Idempotent-Replayed") != "true" {
			if o, dup := owner[r.key]; dup {
				t.Fatalf("key %s went upstream twice: %s and %s", r.key, o.Body, r.Body)
			}
			owner[r.key] = r
		}
	}
	var retries, concurrentDups, opened int
	latencies := make([]time.Duration, 0, n)
	for _, r := range results {
		o, ok := owner[r.key]
		if !ok || !bytes.Equal(r.Body, o.Body) {
			t.Fatalf("key %s: response %s differs from the upstream one %s", r.key, r.Body, o.Body)
		}
		if r.start.Before(o.end) && r.Header.Get("Idempotent-Replayed") == "true" {
			concurrentDups++ // sent before the first copy was answered
		}
		retries += r.retries
		if !r.reused {
			opened++
		}
		latencies = append(latencies, r.end.Sub(r.start))
	}
	if c, req := s.backend.Creates(), s.backend.Requests(); c != int64(keys) || req != int64(keys) {
		t.Fatalf("backend creates %d, requests %d; want %d", c, req, keys)
	}
	if concurrentDups == 0 {
		t.Fatal("no duplicate was sent while its key was in flight; the test proves nothing")
	}
	slices.Sort(latencies)
	pct := func(p float64) time.Duration { return latencies[int(p*float64(len(latencies)-1))] }
	t.Logf("%d requests, %d keys, %d conns (%d opened): %v, %.0f requests/s, latency p50 %v p99 %v max %v; "+
		"%d upstream creates, %d duplicates sent while in flight, %d in_use retries",
		n, keys, conns, opened, elapsed.Round(time.Millisecond), float64(n)/elapsed.Seconds(),
		pct(0.50).Round(time.Microsecond), pct(0.99).Round(time.Microsecond), latencies[n-1].Round(time.Microsecond),
		s.backend.Creates(), concurrentDups, retries)
}

// sendRetryingInUse sends a keyed create and, like OpenAI's SDKs, retries
// a 409 idempotency_key_in_use after its retry-after-ms.
func sendRetryingInUse(t *testing.T, c *http.Client, url, key string) loadResult {
	res := loadResult{start: time.Now()}
	for {
		r, err := postKeyed(c, url, key, keyedBody(key))
		if err != nil {
			t.Errorf("key %s: %v", key, err)
			return res
		}
		res.timedReply = r
		if r.Status != http.StatusConflict || !bytes.Contains(r.Body, []byte(`"idempotency_key_in_use"`)) {
			return res
		}
		res.retries++
		ms, err := strconv.Atoi(r.Header.Get("retry-after-ms"))
		if err != nil {
			t.Errorf("key %s: in_use without retry-after-ms: %v", key, r.Header)
			return res
		}
		time.Sleep(time.Duration(ms) * time.Millisecond)
	}
}

// timedReply is one keyed create as a client saw it.
type timedReply struct {
	reply
	key        string
	start, end time.Time
	reused     bool  // sent on a kept-alive connection
	err        error // a connection error, when there is no reply
}

// postKeyed sends a keyed create, with the key in the header (which also
// lets net/http resend it on a keep-alive connection the server closed).
func postKeyed(c *http.Client, url, key, body string) (timedReply, error) {
	tr := timedReply{key: key, start: time.Now()}
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		return tr, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer sk-tenant-a")
	req.Header.Set("Idempotency-Key", key)
	req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
		// Per attempt: net/http resends on a new connection when a kept-alive one was closed.
		GetConn: func(string) { tr.reused = false },
		GotConn: func(i httptrace.GotConnInfo) { tr.reused = i.Reused },
	}))
	res, err := c.Do(req)
	if err != nil {
		return tr, err
	}
	defer res.Body.Close()
	tr.Body, err = io.ReadAll(res.Body)
	tr.Status, tr.Header, tr.end = res.StatusCode, res.Header, time.Now()
	return tr, err
}

// keyedBody is the create sent under key: the same for every copy of a key.
func keyedBody(key string) string {
	return `{"input_file_id":"file-abc123","endpoint":"/v1/chat/completions","completion_window":"24h","metadata":{"key":"` + key + `"}}`
}
