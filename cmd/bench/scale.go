package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/caddy-idempotency/caddy-idempotency/idempotency"
	"github.com/caddy-idempotency/caddy-idempotency/idempotency/badgerstore"
)

// scaleHot is how many keys are created over HTTP, in both stores, and
// replayed in the latency measurement.
const scaleHot = 1000

// fillWorkers write the bulk records. On 2 cores the fill is CPU-bound: 4
// writers filled 100,000 records at 23,900/s, 2 at 19,600/s, 16 at 22,700/s.
const fillWorkers = 4

// scaleRun is one -scale measurement.
type scaleRun struct {
	options
	n int // records in the large store
	// slack: how long after the projected end of the fill the bulk records
	// stay live; it must cover restarting Caddy three times and the loads.
	slack      time.Duration
	gcInterval time.Duration // the product's GC tick (value-log GC, then a flatten once half the records are dead) in the GC step
	gcWindow   time.Duration // how long the store stays open with that GC
}

func newScaleRun(o options) scaleRun {
	return scaleRun{options: o, n: o.scale,
		slack:      2*o.duration + 6*o.warmup + 45*time.Second,
		gcInterval: time.Second, gcWindow: 15 * time.Second}
}

// scaleStore is one Badger directory behind its own Caddy site.
type scaleStore struct {
	name    string
	records int
	dir     string
	port    int
}

// scaleReport collects what the run measured, for writeScaleReport.
type scaleReport struct {
	batchSize, valueSize int
	fillTime             time.Duration
	expiryMin, expiryMax time.Time // of the bulk records
	measuredUntil        time.Time
	latency              map[string]*result
	disk                 map[string]diskUsage
	levels               string // of the large store after the fill
	rss                  []rssRow
	gc                   []gcRow
	expired              int // dead keys found before GC
	swept                int // keys the sweep deleted
}

type rssRow struct {
	store, when string
	status      map[string]int64 // kB, from /proc/<pid>/status
}

type gcRow struct {
	step       string
	took       time.Duration
	open, disk diskUsage // at the end of the step, and once closed
	levels     string
	dead       int // keys stored whose newest version is expired or deleted
}

// runScale fills a Badger store with o.scale records and measures replay
// latency against a store of scaleHot records, Caddy's memory, the disk per
// record and what GC reclaims once the records expire.
func runScale(o options, w io.Writer) error { return newScaleRun(o).run(w) }

func (sr scaleRun) run(w io.Writer) error {
	if sr.n <= scaleHot {
		return fmt.Errorf("-scale %d: must be more than %d", sr.n, scaleHot)
	}
	if sr.rounds < 1 {
		sr.rounds = 1
	}
	e, err := newEnv("caddy-idempotency-scale-", sr.caddy)
	if err != nil {
		return err
	}
	defer e.close()
	dir, bin, body, up := e.dir, e.bin, batchBody, e.upstream
	rep := &scaleReport{latency: map[string]*result{}, disk: map[string]diskUsage{}, batchSize: e.batchSize}
	ports, err := freePorts(2)
	if err != nil {
		return err
	}
	small := &scaleStore{name: "small", records: scaleHot, dir: filepath.Join(dir, "badger-small"), port: ports[0]}
	large := &scaleStore{name: "large", records: sr.n, dir: filepath.Join(dir, "badger-large"), port: ports[1]}
	stores := []*scaleStore{small, large}

	// 1. The hot keys, over HTTP so the records are the handler's own.
	cmd, err := startCaddy(bin, dir, scaleCaddyfile(up, stores...), []int{small.port, large.port})
	if err != nil {
		return err
	}
	for _, s := range stores {
		if err := createHot(s, body, sr.concurrency); err != nil {
			stopCaddyGracefully(cmd)
			return fmt.Errorf("%s store: creating the hot keys: %w", s.name, err)
		}
	}
	if err := stopCaddyGracefully(cmd); err != nil {
		return err
	}

	// 2. The bulk records, through the engine.
	if err := sr.fill(large, rep); err != nil {
		return fmt.Errorf("fill: %w", err)
	}
	for _, s := range stores {
		if rep.disk[s.name], err = du(s.dir); err != nil {
			return err
		}
	}

	// 3. Replay latency, both stores in one Caddy, in interleaved rounds.
	if err := sr.measureLatency(bin, dir, up, body, stores, rep); err != nil {
		return err
	}
	// 4. Caddy's memory, with one store at a time.
	for _, s := range stores {
		if err := sr.measureRSS(bin, dir, up, body, s, rep); err != nil {
			return err
		}
	}
	rep.measuredUntil = time.Now()

	// 5. What GC reclaims once the bulk records have expired. Badger's own
	// TTL ends up to 1s past the record's (a 1s pad, cut to whole seconds).
	time.Sleep(time.Until(rep.expiryMax.Add(1500 * time.Millisecond)))
	if err := sr.collect(large, rep); err != nil {
		return fmt.Errorf("gc: %w", err)
	}
	writeScaleReport(w, sr, rep)
	return nil
}

// scaleCaddyfile has one idempotency site per store.
func scaleCaddyfile(upstream string, stores ...*scaleStore) string {
	var b strings.Builder
	b.WriteString("{\n\tadmin off\n\tpersist_config off\n\tauto_https off\n\tlog {\n\t\tlevel ERROR\n\t}\n}\n")
	for _, s := range stores {
		fmt.Fprintf(&b, "\nhttp://127.0.0.1:%d {\n\trespond /healthz 200\n\tidempotency /v1/batches {\n\t\tstore badger %s\n\t}\n\treverse_proxy %s\n}\n",
			s.port, s.dir, upstream)
	}
	return b.String()
}

// stopCaddyGracefully interrupts Caddy so it closes its stores (flushing
// Badger's memtable) and waits for it to exit, which unlocks the directories.
func stopCaddyGracefully(cmd *exec.Cmd) error {
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		stopCaddy(cmd)
		return nil
	}
	select {
	case <-done:
		return nil
	case <-time.After(2 * time.Minute):
		_ = cmd.Process.Kill()
		<-done
		return errors.New("caddy did not exit within 2m of an interrupt")
	}
}

func hotKey(i int64) string { return "scale-" + strconv.FormatInt(i, 10) }

// createHot creates the keys scale-1 … scale-1000 in s over HTTP.
func createHot(s *scaleStore, body []byte, concurrency int) error {
	client := newClient(concurrency)
	defer client.CloseIdleConnections()
	l := &loader{client: client, url: fmt.Sprintf("http://127.0.0.1:%d/v1/batches", s.port),
		body: body, mode: newKey, key: "scale-"}
	var next atomic.Int64
	errs := make(chan error, concurrency)
	for range concurrency {
		go func() {
			// Each once takes the next key from l.seq, so exactly scaleHot keys.
			for next.Add(1) <= scaleHot {
				if err := l.once(context.Background()); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	var first error
	for range concurrency {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// fill adds s.records-scaleHot completed records to the large store with
// Begin and Complete, each holding the handler's stored batch response with
// its own batch id. Their TTL ends sr.slack after the projected end of the
// fill, so they are live while Caddy is measured and expired for step 5.
func (sr scaleRun) fill(s *scaleStore, rep *scaleReport) error {
	st, err := badgerstore.Open(badgerstore.Options{Dir: s.dir})
	if err != nil {
		return err
	}
	defer st.Close()
	ctx := context.Background()
	// Created over HTTP: the namespace is the host the loader sent it to.
	rec, ok, err := st.Get(ctx, idempotency.NewRecordKey(fmt.Sprintf("127.0.0.1@:%d", s.port), "", hotKey(1)))
	if err != nil || !ok || rec.Response == nil {
		return fmt.Errorf("reading the record of %s: found %v, %v", hotKey(1), ok, err)
	}
	tmpl := *rec.Response
	if v, err := rec.MarshalBinary(); err == nil {
		rep.valueSize = len(v)
	}
	idAt := bytes.Index(tmpl.Body, []byte(`"batch_`))

	count := int64(s.records - scaleHot)
	start := time.Now()
	var done atomic.Int64
	// deadline is when the bulk records expire: re-projected from the rate so
	// far, so records written early and late expire about together.
	var deadline atomic.Int64
	project := func() {
		elapsed := time.Since(start)
		left := 100 * time.Microsecond * time.Duration(count) // a guess until there is a rate
		if d := done.Load(); d > 0 {
			// The fill slows as the tree deepens: 1,000,000 took 1.4x the
			// time its first seconds projected.
			left = time.Duration(float64(elapsed) / float64(d) * float64(count-d) * 1.5)
		}
		deadline.Store(time.Now().Add(left + sr.slack).UnixNano())
	}
	project()
	stop := make(chan struct{})
	go func() {
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				project()
			}
		}
	}()
	defer close(stop)

	var next atomic.Int64
	var mu sync.Mutex
	expMin, expMax := time.Time{}, time.Time{}
	errs := make(chan error, fillWorkers)
	for range fillWorkers {
		go func() {
			var lo, hi time.Time
			var err error
			for i := next.Add(1); i <= count && err == nil; i = next.Add(1) {
				var exp time.Time
				exp, err = fillOne(ctx, st, i, tmpl, idAt, time.Unix(0, deadline.Load()))
				if lo.IsZero() || exp.Before(lo) {
					lo = exp
				}
				if exp.After(hi) {
					hi = exp
				}
				done.Add(1)
			}
			mu.Lock()
			if !lo.IsZero() && (expMin.IsZero() || lo.Before(expMin)) {
				expMin = lo
			}
			if hi.After(expMax) {
				expMax = hi
			}
			mu.Unlock()
			errs <- err
		}()
	}
	var first error
	for range fillWorkers {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	if first != nil {
		return first
	}
	rep.fillTime = time.Since(start)
	rep.expiryMin, rep.expiryMax = expMin, expMax
	if err := st.Close(); err != nil {
		return err
	}
	db, err := openRawBadger(s.dir)
	if err != nil {
		return err
	}
	rep.levels = levels(db)
	return db.Close()
}

// openRawBadger opens dir as a plain Badger database, for the measurements
// the store does not offer (levels, dead keys, Flatten).
func openRawBadger(dir string) (*badger.DB, error) {
	return badger.Open(badger.DefaultOptions(dir).WithLogger(nil))
}

// fillOne writes bulk record i to expire at until and returns when that is.
func fillOne(ctx context.Context, st *badgerstore.Store, i int64, tmpl idempotency.Response, idAt int, until time.Time) (time.Time, error) {
	key := idempotency.NewRecordKey("", "", "scale-fill-"+strconv.FormatInt(i, 10))
	var fp idempotency.Fingerprint
	_, _ = rand.Read(fp[:])
	resp := tmpl
	resp.Body = bytes.Clone(tmpl.Body)
	if idAt >= 0 && idAt+7+24 <= len(resp.Body) {
		var id [12]byte
		_, _ = rand.Read(id[:])
		hex.Encode(resp.Body[idAt+7:idAt+7+24], id[:])
	}
	owner := idempotency.NewOwnerToken()
	if _, owned, err := st.Begin(ctx, key, fp, owner, time.Minute); err != nil || !owned {
		return time.Time{}, fmt.Errorf("begin record %d: owned %v, %v", i, owned, err)
	}
	ttl := time.Until(until)
	if err := st.Complete(ctx, key, owner, resp, ttl); err != nil {
		return time.Time{}, fmt.Errorf("complete record %d: %w", i, err)
	}
	return time.Now().Add(ttl), nil
}

// rotatingKeys sends each request with the next hot key, so the bench's
// loader replays all scaleHot keys round-robin.
type rotatingKeys struct {
	base *http.Transport
	seq  atomic.Int64
}

func (t *rotatingKeys) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Idempotency-Key", hotKey(t.seq.Add(1)%scaleHot+1))
	return t.base.RoundTrip(r)
}

func (t *rotatingKeys) CloseIdleConnections() { t.base.CloseIdleConnections() }

func replayLoader(s *scaleStore, body []byte, concurrency int) *loader {
	client := newClient(concurrency)
	client.Transport = &rotatingKeys{base: client.Transport.(*http.Transport)}
	return &loader{client: client, url: fmt.Sprintf("http://127.0.0.1:%d/v1/batches", s.port),
		body: body, mode: fixedKey, key: "rotated-per-request", concurrency: concurrency, replay: true}
}

func (sr scaleRun) measureLatency(bin, dir, up string, body []byte, stores []*scaleStore, rep *scaleReport) error {
	cmd, err := startCaddy(bin, dir, scaleCaddyfile(up, stores...), []int{stores[0].port, stores[1].port})
	if err != nil {
		return err
	}
	loaders := map[string]*loader{}
	for _, s := range stores {
		l := replayLoader(s, body, sr.concurrency)
		defer l.client.CloseIdleConnections()
		if sr.warmup > 0 {
			if err := l.warm(sr.warmup); err != nil {
				stopCaddyGracefully(cmd)
				return fmt.Errorf("%s store warmup: %w", s.name, err)
			}
		}
		loaders[s.name] = l
		rep.latency[s.name] = &result{}
	}
	slice := sr.duration / time.Duration(sr.rounds)
	for round := range sr.rounds {
		order := stores
		if round%2 == 1 { // neither store always goes first
			order = []*scaleStore{stores[1], stores[0]}
		}
		for _, s := range order {
			if err := loaders[s.name].run(slice, rep.latency[s.name]); err != nil {
				stopCaddyGracefully(cmd)
				return fmt.Errorf("%s store replay: %w", s.name, err)
			}
		}
	}
	for _, r := range rep.latency {
		r.summarize()
	}
	return stopCaddyGracefully(cmd)
}

// measureRSS starts Caddy with s alone and reads its memory once the store is
// open and again after a replay load.
func (sr scaleRun) measureRSS(bin, dir, up string, body []byte, s *scaleStore, rep *scaleReport) error {
	cmd, err := startCaddy(bin, dir, scaleCaddyfile(up, s), []int{s.port})
	if err != nil {
		return err
	}
	defer stopCaddyGracefully(cmd)
	st, err := procStatus(cmd.Process.Pid)
	if err != nil {
		return err
	}
	rep.rss = append(rep.rss, rssRow{s.name, "started", st})
	l := replayLoader(s, body, sr.concurrency)
	defer l.client.CloseIdleConnections()
	if err := l.run(sr.warmup+sr.duration/time.Duration(sr.rounds), &result{}); err != nil {
		return fmt.Errorf("%s store replay: %w", s.name, err)
	}
	if st, err = procStatus(cmd.Process.Pid); err != nil {
		return err
	}
	rep.rss = append(rep.rss, rssRow{s.name, "after replays", st})
	return nil
}

// procStatus reads the memory lines of /proc/<pid>/status, in kB.
func procStatus(pid int) (map[string]int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, fmt.Errorf("caddy's memory: %w", err)
	}
	out := map[string]int64{}
	for _, line := range strings.Split(string(b), "\n") {
		name, rest, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		switch name {
		case "VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem":
			v, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err == nil {
				out[name] = v
			}
		}
	}
	return out, nil
}
