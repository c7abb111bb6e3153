package caddyidempotency

import (
	"bytes"
	"flag"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// CI runs TestLoad small; the full size is
//
//	go test -run '^TestLoad$' -count=1 -v . -args -load.requests=20000 -load.keys=2000 -load.conns=200
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
