package main

import (
	"bytes"
	"context"
	"errors"
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
	// The serving process's (Caddy's or the peer's) CPU time over the
	// measured slices; unknown where /proc is not.
	cpu        time.Duration
	cpuUnknown bool
	// The Redis server's, when the store is Redis: commands by name (INFO
	// commandstats, calls plus rejected calls, those run by scripts too),
	// round trips (reads of client requests) and CPU time (INFO cpu), over
	// the measured slices.
	redis        bool
	redisCalls   map[string]int64
	redisReads   int64
	redisCPU     time.Duration
	redisUnknown bool
}

// cpuPerRequest is the serving process's CPU time per request, or 0 when
// unknown.
func (r result) cpuPerRequest() time.Duration {
	if r.cpuUnknown || r.requests == 0 {
		return 0
	}
	return r.cpu / time.Duration(r.requests)
}

// addRedis adds the difference between two Redis samples to r.
func (r *result) addRedis(before, after redisStats) {
	r.redis = true
	if r.redisCalls == nil {
		r.redisCalls = map[string]int64{}
	}
	for cmd, n := range after.calls {
		if d := n - before.calls[cmd]; d != 0 {
			r.redisCalls[cmd] += d
		}
	}
	r.redisReads += after.reads - before.reads - 1 // the second sample's own
	r.redisCPU += after.cpu - before.cpu
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
	auth        string // the Authorization header, when not empty
	concurrency int
	replay      bool   // every answer must be marked Idempotent-Replayed: true
	wantLen     int64  // when not 0, every answer's length
	wantBody    []byte // when not nil, every answer's body
	seq         atomic.Int64
}

var bodyPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

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
	_, err := l.send(ctx, false)
	return err
}

// create sends one request like once and returns the body it got: the one
// that replays of its key must answer.
func (l *loader) create(ctx context.Context) ([]byte, error) { return l.send(ctx, true) }

func (l *loader) send(ctx context.Context, keep bool) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, l.url, bytes.NewReader(l.body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	if l.auth != "" {
		req.Header.Set("Authorization", l.auth)
	}
	switch l.mode {
	case newKey:
		req.Header.Set("Idempotency-Key", l.key+strconv.FormatInt(l.seq.Add(1), 10))
	case fixedKey:
		req.Header.Set("Idempotency-Key", l.key)
	}
	res, err := l.client.Do(req)
	if err != nil {
		return nil, err
	}
	var n int64
	var got []byte
	if keep || l.wantBody != nil {
		buf := bodyPool.Get().(*bytes.Buffer)
		defer bodyPool.Put(buf)
		buf.Reset()
		n, err = buf.ReadFrom(res.Body)
		got = buf.Bytes()
	} else {
		n, err = io.Copy(io.Discard, res.Body)
	}
	res.Body.Close()
	if err != nil {
		return nil, err
	}
	if res.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status %d", res.StatusCode)
	}
	if l.wantLen != 0 && n != l.wantLen {
		return nil, fmt.Errorf("body of %d bytes, want %d", n, l.wantLen)
	}
	// A replay that reached the upstream would measure the wrong thing: it
	// would carry another batch, and ours would not be marked.
	if l.replay && res.Header.Get("Idempotent-Replayed") != "true" {
		return nil, fmt.Errorf("not a replay")
	}
	if l.wantBody != nil && !bytes.Equal(got, l.wantBody) {
		return nil, fmt.Errorf("not a replay: the body differs from the first answer's")
	}
	if keep {
		return bytes.Clone(got), nil
	}
	return nil, nil
}

// errNoneFinished is run's error when no request ended, in success or
// failure, before d was over: a slice too short for the machine's load.
var errNoneFinished = errors.New("no request finished in time")

// warm readies a scenario before it is measured: one request that must
// succeed, however long the first connection and the store's first dial
// take (up to 30 seconds), then unmeasured load for d, where a request
// still in flight when d ends is not a failure.
func (l *loader) warm(d time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := l.once(ctx); err != nil {
		return fmt.Errorf("first request: %w", err)
	}
	if err := l.run(d, &result{}); err != nil && !errors.Is(err, errNoneFinished) {
		return err
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
	failed := 0
	for _, e := range errs {
		failed += e
	}
	r.errors += failed
	switch {
	case len(r.lat) == n && failed == 0:
		return errNoneFinished
	case len(r.lat) == n:
		return fmt.Errorf("no request succeeded (%d errors, first: %v)", failed, firstErr.Load())
	case failed > 0:
		return fmt.Errorf("%d requests failed, first: %v", failed, firstErr.Load())
	}
	return nil
}

func (r *result) summarize() {
	slices.Sort(r.lat)
	r.requests = len(r.lat)
	r.p50 = r.lat[len(r.lat)/2]
	r.p99 = r.lat[len(r.lat)*99/100]
}
