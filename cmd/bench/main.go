// Command bench measures, in one run on one machine, what the idempotency
// handler costs: the same Go load generator against Caddy (cmd/caddy, its own
// process) in front of the same local batches API, in five scenarios:
//
//	plain   reverse_proxy alone
//	pass    idempotency + reverse_proxy, requests without a key
//	write   the same, a new key per request (Badger)
//	replay  the same, one key repeated
//	static  respond with a body as large as the batch response
//
// It prints a Markdown table of requests/s, p50 and p99 and the ratios. Each
// scenario's -duration is split into -rounds slices run round-robin, so load
// from elsewhere on the machine spreads over all scenarios. Run it from the
// module: go run ./cmd/bench
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strings"
	"time"
)

type options struct {
	duration, warmup time.Duration
	concurrency      int
	caddy            string   // an existing binary; built when empty
	only             []string // scenarios to run
	profile          string   // scenario to CPU-profile through Caddy's admin pprof
	profileOut       string
	rounds           int // each scenario runs duration/rounds per round
	scale            int // when > 0, run the scale mode (scale.go) instead of the scenarios
}

func main() {
	var o options
	var only string
	flag.DurationVar(&o.duration, "duration", 10*time.Second, "measured time per scenario")
	flag.DurationVar(&o.warmup, "warmup", time.Second, "unmeasured load before each scenario")
	flag.IntVar(&o.concurrency, "concurrency", 32, "concurrent requests (one keep-alive connection each)")
	flag.StringVar(&o.caddy, "caddy", "", "path to a cmd/caddy binary (default: go build ./cmd/caddy into a temp dir)")
	flag.StringVar(&only, "only", strings.Join(scenarios, ","), "comma-separated scenarios to run")
	flag.IntVar(&o.rounds, "rounds", 5, "split each scenario's duration into this many interleaved rounds")
	flag.StringVar(&o.profile, "profile", "", "scenario to CPU-profile in Caddy (enables the admin endpoint on loopback)")
	flag.StringVar(&o.profileOut, "profile-out", "", "where the profile goes (default: bench-<scenario>.pprof)")
	flag.IntVar(&o.scale, "scale", 0, "fill a Badger store with this many records and measure replay, memory, disk and GC instead (0: off)")
	flag.Parse()
	for _, s := range strings.Split(only, ",") {
		if s = strings.TrimSpace(s); s != "" {
			o.only = append(o.only, s)
		}
	}
	runBench := run
	if o.scale > 0 {
		runBench = runScale
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
	if o.rounds < 1 {
		o.rounds = 1
	}
	if o.profile != "" && !slices.Contains(o.only, o.profile) {
		return fmt.Errorf("-profile %s: not among the scenarios run", o.profile)
	}
	e, err := newEnv("caddy-idempotency-bench-", o.caddy)
	if err != nil {
		return err
	}
	defer e.close()
	dir, bin, body, size := e.dir, e.bin, batchBody, e.batchSize

	free, err := freePorts(len(o.only) + 1)
	if err != nil {
		return err
	}
	ports := map[string]int{}
	var list []int
	for i, s := range o.only {
		ports[s] = free[i]
		list = append(list, free[i])
	}
	adminPort := 0
	if o.profile != "" {
		adminPort = free[len(o.only)]
	}
	cmd, err := startCaddy(bin, dir, caddyfile(ports, e.upstream, dir, size, adminPort), list)
	if err != nil {
		return err
	}
	defer stopCaddy(cmd)

	client := newClient(o.concurrency)
	loaders := map[string]*loader{}
	for _, s := range o.only {
		l := &loader{client: client, url: fmt.Sprintf("http://127.0.0.1:%d/v1/batches", ports[s]),
			body: body, concurrency: o.concurrency}
		switch s {
		case "write":
			l.mode, l.key = newKey, "bench-write-"
		case "replay":
			l.mode, l.key = fixedKey, "bench-replay"
			// Create the record once so every measured request replays it.
			if err := l.once(context.Background()); err != nil {
				return fmt.Errorf("replay: creating the key: %w", err)
			}
			l.replay = true
		case "static":
			l.wantLen = int64(size)
		}
		if o.warmup > 0 {
			if err := l.run(o.warmup, &result{}); err != nil {
				return fmt.Errorf("%s warmup: %w", s, err)
			}
		}
		loaders[s] = l
	}
	// Rounds interleave the scenarios so that a change in the machine's other
	// load during the run does not fall on one scenario only.
	results := map[string]*result{}
	slice := o.duration / time.Duration(o.rounds)
	for round := range o.rounds {
		for _, s := range o.only {
			if results[s] == nil {
				results[s] = &result{}
			}
			var prof chan error
			if s == o.profile && round == 0 {
				prof = profileAsync(adminPort, slice, o.profileOut, s)
			}
			cpuBefore, cpuErr := processCPU(cmd.Process.Pid)
			if err := loaders[s].run(slice, results[s]); err != nil {
				return fmt.Errorf("%s: %w", s, err)
			}
			cpuAfter, err := processCPU(cmd.Process.Pid)
			if cpuErr != nil || err != nil {
				results[s].cpuUnknown = true
			}
			results[s].caddyCPU += cpuAfter - cpuBefore
			if prof != nil {
				if err := <-prof; err != nil {
					return fmt.Errorf("profile %s: %w", s, err)
				}
			}
		}
	}
	for _, r := range results {
		r.summarize()
	}
	client.CloseIdleConnections()
	writeReport(w, o, size, results)
	return nil
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
