package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// keyMode says which Idempotency-Key, if any, each request carries.
type keyMode int

const (
	noKey    keyMode = iota
	newKey           // a fresh key per request
	fixedKey         // the same key every time
)

// result is one scenario's measurement.
type result struct {
	requests int
	errors   int
	elapsed  time.Duration
	p50, p99 time.Duration
	lat      []time.Duration
	// Caddy's CPU time over the measured slices; unknown where /proc is not.
	caddyCPU   time.Duration
	cpuUnknown bool
}

// cpuPerRequest is Caddy's CPU time per request, or 0 when unknown.
func (r result) cpuPerRequest() time.Duration {
	if r.cpuUnknown || r.requests == 0 {
		return 0
	}
	return r.caddyCPU / time.Duration(r.requests)
}

func (r result) rps() float64 { return float64(r.requests) / r.elapsed.Seconds() }

// loader sends the fixed body to one URL from many goroutines over keep-alive
// connections.
type loader struct {
	client      *http.Client
	url         string
	body        []byte
	mode        keyMode
	key         string // for fixedKey; prefix for newKey
	concurrency int
	replay      bool  // every answer must be a replay
	wantLen     int64 // when not 0, every answer's length
	seq         atomic.Int64
}

func newClient(concurrency int) *http.Client {
	return &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			MaxIdleConns:        concurrency * 2,
			MaxIdleConnsPerHost: concurrency * 2,
			MaxConnsPerHost:     concurrency,
			IdleConnTimeout:     time.Minute,
			DisableCompression:  true,
		},
	}
}

// once sends one request and returns an error unless it got a 200 and read
// the whole body.
func (l *loader) once(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, l.url, bytes.NewReader(l.body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	switch l.mode {
	case newKey:
		req.Header.Set("Idempotency-Key", l.key+strconv.FormatInt(l.seq.Add(1), 10))
	case fixedKey:
		req.Header.Set("Idempotency-Key", l.key)
	}
	res, err := l.client.Do(req)
	if err != nil {
		return err
	}
	n, err := io.Copy(io.Discard, res.Body)
	res.Body.Close()
	if err != nil {
		return err
	}
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d", res.StatusCode)
	}
	if l.wantLen != 0 && n != l.wantLen {
		return fmt.Errorf("body of %d bytes, want %d", n, l.wantLen)
	}
	// A replay that reached the upstream would measure the wrong thing.
	if l.replay && res.Header.Get("Idempotent-Replayed") != "true" {
		return fmt.Errorf("not a replay")
	}
	return nil
}

// run sends requests for d and adds the latencies of those that succeeded to
// r; summarize sorts them into percentiles once every round is in.
func (l *loader) run(d time.Duration, r *result) error {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	lat := make([][]time.Duration, l.concurrency)
	errs := make([]int, l.concurrency)
	var firstErr atomic.Value
	var wg sync.WaitGroup
	start := time.Now()
	for w := range l.concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			mine := make([]time.Duration, 0, 1<<14)
			for ctx.Err() == nil {
				t0 := time.Now()
				if err := l.once(ctx); err != nil {
					if ctx.Err() == nil {
						errs[w]++
						firstErr.CompareAndSwap(nil, err.Error())
					}
					continue
				}
				mine = append(mine, time.Since(t0))
			}
			lat[w] = mine
		}()
	}
	wg.Wait()
	r.elapsed += time.Since(start)
	n := len(r.lat)
	r.lat = slices.Concat(append([][]time.Duration{r.lat}, lat...)...)
	errors := 0
	for _, e := range errs {
		errors += e
	}
	r.errors += errors
	switch {
	case len(r.lat) == n:
		return fmt.Errorf("no request succeeded (%d errors, first: %v)", errors, firstErr.Load())
	case errors > 0:
		return fmt.Errorf("%d requests failed, first: %v", errors, firstErr.Load())
	}
	return nil
}

func (r *result) summarize() {
	slices.Sort(r.lat)
	r.requests = len(r.lat)
	r.p50 = r.lat[len(r.lat)/2]
	r.p99 = r.lat[len(r.lat)*99/100]
}
