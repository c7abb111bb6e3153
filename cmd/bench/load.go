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
	_, err = io.Copy(io.Discard, res.Body)
	res.Body.Close()
	if err != nil {
		return err
	}
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d", res.StatusCode)
	}
	return nil
}

// run sends requests for d and returns the latencies of those that succeeded.
func (l *loader) run(d time.Duration) (result, error) {
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
	r := result{elapsed: time.Since(start)}
	all := slices.Concat(lat...)
	for _, e := range errs {
		r.errors += e
	}
	r.requests = len(all)
	if r.requests == 0 {
		return r, fmt.Errorf("no request succeeded (%d errors, first: %v)", r.errors, firstErr.Load())
	}
	slices.Sort(all)
	r.p50 = all[len(all)/2]
	r.p99 = all[len(all)*99/100]
	if r.errors > 0 {
		return r, fmt.Errorf("%d requests failed, first: %v", r.errors, firstErr.Load())
	}
	return r, nil
}
