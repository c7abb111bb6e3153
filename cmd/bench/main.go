// Command bench measures, in one run on one machine, what the idempotency
// handler costs: the same Go load generator against Caddy (cmd/caddy, its own
// process) in front of the same local batches API, in five scenarios:
//
//	plain   reverse_proxy alone
//	pass    idempotency + reverse_proxy, requests without a key
//	write   the same, a new key per request
//	replay  the same, one key repeated
//	static  respond with a body as large as the batch response
//
// -upload <size> runs the upload scenario instead (upload.go): keyed
// multipart uploads through the handler and through plain reverse_proxy,
// with each Caddy's peak RSS and the throughput.
//
// pass, write and replay run once per store of -store (memory, badger,
// redis; a local redis-server is started for redis). Side by side, in the
// same rounds and with the same requests, it measures a peer (-peer, by
// default ../shared/peer/fiber: Fiber v3's idempotency middleware in front
// of the same upstream) in plain, pass, write and replay on the stores it
// has (memory, redis).
//
// It prints Markdown tables of requests/s, p50 and p99, each server's CPU
// per request (and the Redis server's, with its commands per request), the
// ratios, and what each handler adds over its own plain proxy. Each
// scenario's -duration is split into -rounds slices run round-robin, so load
// from elsewhere on the machine spreads over all scenarios. Run it from the
// module: go run ./cmd/bench
package main

import (
	"cmp"
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"
)

// benchAuth is the Authorization header of every request: the caller's
// identity, which our handler scopes keys by.
const benchAuth = "Bearer sk-bench"

type options struct {
	duration, warmup time.Duration
	concurrency      int
	caddy            string   // an existing binary; built when empty
	only             []string // scenarios to run
	stores           []string // stores of pass, write and replay; badger when empty
	peer             string   // the peer's source directory; none when empty
	peerNote         string   // why there is no peer, for the report
	profile          string   // scenario[:store] to CPU-profile through Caddy's admin pprof
	profileOut       string
	rounds           int // each scenario runs duration/rounds per round
	scale            int // when > 0, run the scale mode (scale.go) instead of the scenarios
	upload           uploadOptions
}

func main() {
	var o options
	var only, store, upload, uploadRate string
	flag.DurationVar(&o.duration, "duration", 10*time.Second, "measured time per scenario")
	flag.DurationVar(&o.warmup, "warmup", time.Second, "unmeasured load before each scenario")
	flag.IntVar(&o.concurrency, "concurrency", 32, "concurrent requests (one keep-alive connection each)")
	flag.StringVar(&o.caddy, "caddy", "", "path to a cmd/caddy binary (default: go build ./cmd/caddy into a temp dir)")
	flag.StringVar(&only, "only", strings.Join(scenarios, ","), "comma-separated scenarios to run")
	flag.StringVar(&store, "store", "badger", "store of pass, write and replay: memory, badger or redis, or a comma list to run each (redis starts a local redis-server)")
	flag.StringVar(&o.peer, "peer", defaultPeerDir, "source directory of the peer to measure side by side (Fiber v3's idempotency middleware; the default, relative to the module root, only if it exists), or off")
	flag.IntVar(&o.rounds, "rounds", 5, "split each scenario's duration into this many interleaved rounds")
	flag.StringVar(&o.profile, "profile", "", "scenario to CPU-profile in Caddy, as scenario or scenario:store (default store: the first of -store); enables the admin endpoint on loopback")
	flag.StringVar(&o.profileOut, "profile-out", "", "where the profile goes (default: bench-<scenario>.pprof, bench-<scenario>-<store>.pprof with a store)")
	flag.IntVar(&o.scale, "scale", 0, "fill a Badger store with this many records and measure replay, memory, disk and GC instead (0: off)")
	flag.StringVar(&upload, "upload", "", "run the upload scenario instead (upload.go): keyed multipart uploads of this size (300MB, 64MiB) through the handler and through plain reverse_proxy, each Caddy its own process; reports peak RSS (VmHWM) and throughput")
	flag.IntVar(&o.upload.concurrency, "upload-concurrency", 3, "uploads at once in the upload scenario")
	flag.IntVar(&o.upload.rounds, "upload-rounds", 3, "rounds of the upload scenario, each Caddy in turn")
	flag.StringVar(&uploadRate, "upload-rate", "", "pace each upload's client to this many bytes per second (100MB: a client on a gigabit link); default: as fast as loopback goes")
	flag.Parse()
	for _, s := range strings.Split(only, ",") {
		if s = strings.TrimSpace(s); s != "" {
			o.only = append(o.only, s)
		}
	}
	var err error
	if o.stores, err = parseStores(store); err != nil {
		log.Fatal(err)
	}
	explicit := false
	flag.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "peer" })
	requested := o.peer
	if o.peer, err = peerDir(o.peer, explicit); err != nil {
		log.Fatal(err)
	}
	switch {
	case requested == "off":
		o.peerNote = "off (-peer off)"
	case o.peer == "":
		o.peerNote = "none (" + defaultPeerDir + " not found next to the module; -peer <dir> names one)"
	}
	runBench := run
	switch {
	case o.scale > 0:
		runBench = runScale
	case upload != "":
		if o.upload.size, err = parseSize(upload); err != nil {
			log.Fatal("-upload: ", err)
		}
		if uploadRate != "" {
			if o.upload.rate, err = parseSize(uploadRate); err != nil {
				log.Fatal("-upload-rate: ", err)
			}
		}
		o.upload.caddy = o.caddy
		runBench = func(o options, w io.Writer) error { return runUpload(o.upload, w) }
	}
	if err := runBench(o, os.Stdout); err != nil {
		log.Fatal(err)
	}
}

// run measures the chosen scenarios and writes the report to w.
func run(o options, w io.Writer) error {
	for _, s := range o.only {
		if !slices.Contains(scenarios, s) {
			return fmt.Errorf("unknown scenario %q (have %s)", s, strings.Join(scenarios, ", "))
		}
	}
	if len(o.stores) == 0 {
		o.stores = []string{"badger"}
	}
	for _, st := range o.stores {
		if !slices.Contains(storeNames, st) {
			return fmt.Errorf("unknown store %q (have %s)", st, strings.Join(storeNames, ", "))
		}
	}
	if o.rounds < 1 {
		o.rounds = 1
	}
	if o.peer != "" && !slices.ContainsFunc(o.stores, peerHas) {
		o.peerNote = fmt.Sprintf("not run: it has no %s store (it has %s)", strings.Join(o.stores, " or "), strings.Join(peerStores, " and "))
		o.peer = ""
	}
	targets := plan(o.only, o.stores, o.peer != "")
	if len(targets) == 0 {
		return fmt.Errorf("no scenario to run")
	}
	profTarget, profName, err := profileTarget(o)
	if err != nil {
		return err
	}
	if o.profile != "" && !slices.Contains(targets, profTarget) {
		return fmt.Errorf("-profile %s: not among the scenarios run", o.profile)
	}
	e, err := newEnv("caddy-idempotency-bench-", o.caddy)
	if err != nil {
		return err
	}
	defer e.close()
	dir, bin, body, size := e.dir, e.bin, batchBody, e.batchSize

	// A Redis server for each server that uses one, so each one's commands
	// and CPU are its own.
	redisFor := map[string]*redisServer{}
	for _, t := range targets {
		if t.store != "redis" || redisFor[t.server] != nil {
			continue
		}
		r, err := startRedis(filepath.Join(dir, "redis-"+strings.ToLower(t.server)))
		if err != nil {
			return err
		}
		defer r.stop()
		redisFor[t.server] = r
	}
	redisURL := ""
	if r := redisFor[serverCaddy]; r != nil {
		redisURL = r.url()
	}

	free, err := freePorts(len(targets) + 1)
	if err != nil {
		return err
	}
	ports := map[target]int{}
	for i, t := range targets {
		ports[t] = free[i]
	}
	adminPort := 0
	if o.profile != "" {
		adminPort = free[len(targets)]
	}

	// The peer: one process per store, plain for its plain proxy.
	pids := map[target]int{}
	if o.peer != "" {
		peerBin, err := buildPeer(o.peer, dir)
		if err != nil {
			return err
		}
		peerPort := map[string]int{}
		for _, t := range targets {
			if t.server != serverPeer {
				continue
			}
			store := cmp.Or(t.store, "plain")
			if _, ok := peerPort[store]; !ok {
				url := ""
				if r := redisFor[serverPeer]; r != nil {
					url = r.url()
				}
				cmd, err := startPeer(peerBin, dir, store, ports[t], e.upstream, url)
				if err != nil {
					return err
				}
				defer stopCaddy(cmd)
				peerPort[store] = ports[t]
				for _, u := range targets {
					if u.server == serverPeer && cmp.Or(u.store, "plain") == store {
						pids[u] = cmd.Process.Pid
					}
				}
			}
			ports[t] = peerPort[store]
		}
	}

	var caddyPorts []int
	for _, t := range targets {
		if t.server == serverCaddy {
			caddyPorts = append(caddyPorts, ports[t])
		}
	}
	cmd, err := startCaddy(bin, dir, caddyfile(targets, ports, e.upstream, dir, size, adminPort, redisURL), caddyPorts)
	if err != nil {
		return err
	}
	defer stopCaddy(cmd)
	for _, t := range targets {
		if t.server == serverCaddy {
			pids[t] = cmd.Process.Pid
		}
	}

	loaders := map[target]*loader{}
	defer func() {
		for _, l := range loaders {
			l.client.CloseIdleConnections()
		}
	}()
	for _, t := range targets {
		// A client each, so every target keeps its keep-alive connections
		// from one round to the next.
		l := &loader{client: newClient(o.concurrency), url: fmt.Sprintf("http://127.0.0.1:%d/v1/batches", ports[t]),
			body: body, auth: benchAuth, concurrency: o.concurrency}
		loaders[t] = l
		switch t.scenario {
		case "write":
			l.mode, l.key = newKey, fmt.Sprintf("bench-write-%s-%s-", strings.ToLower(t.server), t.store)
		case "replay":
			l.mode, l.key = fixedKey, fmt.Sprintf("bench-replay-%s-%s", strings.ToLower(t.server), t.store)
			// Create the record once so every measured request replays it.
			first, err := l.create(context.Background())
			if err != nil {
				return fmt.Errorf("%s: creating the key: %w", t, err)
			}
			l.wantBody = first
			l.replay = t.server == serverCaddy // the peer marks no replay
		case "static":
			l.wantLen = int64(size)
		}
		if o.warmup > 0 {
			if err := l.warm(o.warmup); err != nil {
				return fmt.Errorf("%s warmup: %w", t, err)
			}
		}
	}
	// Rounds interleave the scenarios so that a change in the machine's other
	// load during the run does not fall on one scenario only.
	results := map[target]*result{}
	slice := o.duration / time.Duration(o.rounds)
	for round := range o.rounds {
		for _, t := range targets {
			r := results[t]
			if r == nil {
				r = &result{}
				results[t] = r
			}
			var prof chan error
			if t == profTarget && round == 0 {
				prof = profileAsync(adminPort, slice, o.profileOut, profName)
			}
			rs := redisFor[t.server]
			if t.store != "redis" {
				rs = nil
			}
			var redisBefore redisStats
			var redisErr error
			if rs != nil {
				redisBefore, redisErr = rs.stats()
			}
			e.resetUpstream()
			cpuBefore, cpuErr := processCPU(pids[t])
			if err := loaders[t].run(slice, r); err != nil {
				return fmt.Errorf("%s: %w", t, err)
			}
			cpuAfter, err := processCPU(pids[t])
			if cpuErr != nil || err != nil {
				r.cpuUnknown = true
			}
			r.cpu += cpuAfter - cpuBefore
			if rs != nil {
				redisAfter, err := rs.stats()
				if redisErr != nil || err != nil {
					r.redis, r.redisUnknown = true, true
				} else {
					r.addRedis(redisBefore, redisAfter)
				}
			}
			if prof != nil {
				if err := <-prof; err != nil {
					return fmt.Errorf("profile %s: %w", t, err)
				}
			}
		}
	}
	for _, r := range results {
		r.summarize()
	}
	rep := report{o: o, batchSize: size, targets: targets, results: results, redisRecords: map[string]recordSize{}}
	if r := cmp.Or(redisFor[serverCaddy], redisFor[serverPeer]); r != nil {
		rep.redisVersion = r.version
	}
	for server, r := range redisFor {
		rs, err := r.recordSize()
		if err != nil {
			return fmt.Errorf("%s's Redis: record size: %w", server, err)
		}
		rep.redisRecords[server] = rs
	}
	rep.write(w)
	return nil
}

// profileTarget is the Caddy target -profile names, and the name of its
// profile: scenario, or scenario-store when -profile gives the store.
func profileTarget(o options) (target, string, error) {
	if o.profile == "" {
		return target{}, "", nil
	}
	scenario, store, withStore := strings.Cut(o.profile, ":")
	name := scenario
	switch {
	case !slices.Contains(storeScenarios, scenario):
		if withStore {
			return target{}, "", fmt.Errorf("-profile %s: %s has no store", o.profile, scenario)
		}
	case withStore:
		name += "-" + store
	default:
		store = o.stores[0]
	}
	return target{serverCaddy, scenario, store}, name, nil
}

// responseSize sends body to the upstream directly and returns how long the
// batch it answers is.
func responseSize(url string, body []byte) (int, error) {
	res, err := http.Post(url, "application/json", strings.NewReader(string(body)))
	if err != nil {
		return 0, err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		return 0, err
	}
	if res.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("status %d: %s", res.StatusCode, b)
	}
	return len(b), nil
}

// machine describes where the numbers came from.
func machine() string {
	host, _ := os.Hostname()
	return fmt.Sprintf("%s/%s, %d CPUs, GOMAXPROCS %d, %s, host %s",
		runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.Version(), host)
}
