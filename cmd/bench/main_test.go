package main

import (
	"bytes"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestBenchTable runs every scenario briefly against a real Caddy process,
// on the memory, Badger and Redis stores (the bench starts its own
// redis-server), and checks the report's shape, never its speed.
func TestBenchTable(t *testing.T) {
	stores := []string{"memory", "badger", "redis"}
	var out bytes.Buffer
	o := options{duration: 300 * time.Millisecond, warmup: 50 * time.Millisecond, concurrency: 4, rounds: 2,
		only: scenarios, stores: stores}
	if err := run(o, &out); err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	report := out.String()
	if testing.Verbose() {
		t.Log("\n" + report)
	}
	redisCols := ""
	if slices.Contains(stores, "redis") {
		redisCols = ` (- \| -|\d+\.\d\d \| \d+ µs) \|`
	}
	for _, tg := range plan(scenarios, stores, false) {
		row := `(?m)^\| Caddy \| ` + tg.scenario + ` \| ` + orDash(tg.store) + ` \| \d+ \| [\d.]+ ms \| [\d.]+ ms \| [1-9]\d* \| (\d+ µs|n/a) \|` + redisCols + `$`
		if !regexp.MustCompile(row).MatchString(report) {
			t.Errorf("no row for %s in\n%s", tg, report)
		}
	}
	for _, q := range ratios {
		for _, st := range stores {
			target := `>= [\d.]+ \| (yes|no)`
			if q.stores != nil && !slices.Contains(q.stores, st) {
				target = `- \| -`
			}
			if !regexp.MustCompile(`(?m)^\| ` + q.num + `/` + q.den + ` \| ` + st + ` \| \d+\.\d\d \| ` + target + ` \| - \|$`).MatchString(report) {
				t.Errorf("no ratio %s/%s for %s in\n%s", q.num, q.den, st, report)
			}
		}
	}
	if !regexp.MustCompile(`(?m)^\| Badger \| - \| [+-]\d+\.\d\d ms \|$`).MatchString(report) {
		t.Errorf("no p99 row for Badger in\n%s", report)
	}
	if regexp.MustCompile(`(?m)^\| peer \|`).MatchString(report) || strings.Contains(report, "peer: added") {
		t.Errorf("the peer measured without -peer in\n%s", report)
	}
}

// TestBenchPeer runs the peer side by side with Caddy on the memory and Redis
// stores, where the peer's source and redis-server are at hand.
func TestBenchPeer(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the peer")
	}
	dir, err := peerDir(defaultPeerDir, false)
	if err != nil || dir == "" {
		t.Skipf("no peer at %s (%v)", defaultPeerDir, err)
	}
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Fatal("no redis-server: the bench starts its own for the Redis store (Debian: apt-get install redis-server)")
	}
	var out bytes.Buffer
	o := options{duration: 300 * time.Millisecond, warmup: 50 * time.Millisecond, concurrency: 4, rounds: 2,
		only: scenarios, stores: []string{"memory", "badger", "redis"}, peer: dir}
	if err := run(o, &out); err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	report := out.String()
	if testing.Verbose() {
		t.Log("\n" + report)
	}
	us, plusUS, redisUS := `\d+ µs`, `[+-]\d+ µs`, `[+-]\d+ µs \+ \d+ µs`
	for _, want := range []string{
		`(?m)^\| peer \| plain \| - \| \d+ \| [\d.]+ ms \| [\d.]+ ms \| [1-9]\d* \| ` + us + ` \| - \| - \|$`,
		`(?m)^\| peer \| write \| redis \| \d+ \| [\d.]+ ms \| [\d.]+ ms \| [1-9]\d* \| ` + us + ` \| \d+\.\d\d \| ` + us + ` \|$`,
		`(?m)^\| pass/plain \| memory \| \d+\.\d\d \| >= 0\.97 \| (yes|no) \| \d+\.\d\d \|$`,
		`(?m)^\| plain proxy \(absolute\) \| ` + us + ` \| ` + us + ` \|$`,
		`(?m)^\| write, memory \| ` + plusUS + ` \| ` + plusUS + ` \|$`,
		`(?m)^\| write, Badger \| - \| ` + plusUS + ` \|$`,
		`(?m)^\| write, Redis \(proxy \+ Redis server\) \| ` + redisUS + ` \| ` + redisUS + ` \|$`,
		`(?m)^\| replay, memory \(absolute\) \| ` + us + ` \| ` + us + ` \(Caddy ` + "`respond`" + ` alone: ` + us + `\) \|$`,
		`(?m)^\| replay, Redis \(proxy \+ Redis server, absolute\) \| ` + us + ` \+ ` + us + ` \| ` + us + ` \+ ` + us + ` \(Caddy ` + "`respond`" + ` alone: ` + us + `\) \|$`,
		// The peer's write is GET, GET under its lock, SET; each of ours a script.
		`(?m)^\| write \| 3\.\d\d \| 3\.\d\d \(get 2\.\d\d, set 1\.\d\d\) \| ` + us + ` \| \d\.\d\d \| \d+\.\d\d \(.*evalsha.*\) \| ` + us + ` \|$`,
		`(?m)^\| memory \| [+-][\d.]+ ms \| [+-][\d.]+ ms \|$`,
		`(?m)^\| Badger \| - \| [+-][\d.]+ ms \|$`,
		`(?m)^\| Redis \| [+-][\d.]+ ms \| [+-][\d.]+ ms \|$`,
		`(?m)^\| a \d+-byte batch response, stored \| [1-9]\d* B \(MEMORY USAGE [1-9]\d* B\), [1-9]\d* keys \| [1-9]\d* B \(MEMORY USAGE [1-9]\d* B\), [1-9]\d* keys \|$`,
		`(?m)^\| write, Badger: Caddy CPU added over plain \| <= 20 µs \| ` + plusUS + ` \| (yes|no) \|$`,
		`(?m)^\| replay, Redis: Redis server CPU \| <= 10 µs \| ` + us + ` \| (yes|no) \|$`,
	} {
		if !regexp.MustCompile(want).MatchString(report) {
			t.Errorf("no match for %s in\n%s", want, report)
		}
	}
}

func TestUnknownScenario(t *testing.T) {
	if err := run(options{only: []string{"plain", "nope"}}, &bytes.Buffer{}); err == nil {
		t.Fatal("run accepted an unknown scenario")
	}
}

// processCPU reads this process's own CPU time, and it grows with work.
func TestProcessCPU(t *testing.T) {
	before, err := processCPU(os.Getpid())
	if err != nil {
		t.Fatalf("processCPU: %v", err)
	}
	for start := time.Now(); time.Since(start) < 200*time.Millisecond; {
	}
	after, err := processCPU(os.Getpid())
	if err != nil {
		t.Fatalf("processCPU: %v", err)
	}
	if after-before < 5*clockTick {
		t.Errorf("CPU grew by %v over 200ms of spinning, want at least %v", after-before, 5*clockTick)
	}
}

// TestBenchUpload runs the upload scenario briefly against two real Caddy
// processes and checks the report's shape (its rows and targets), never
// its speed.
func TestBenchUpload(t *testing.T) {
	var out bytes.Buffer
	if err := runUpload(uploadOptions{size: 4 << 20, concurrency: 2, rounds: 1}, &out); err != nil {
		t.Fatalf("runUpload: %v\n%s", err, out.String())
	}
	report := out.String()
	if testing.Verbose() {
		t.Log("\n" + report)
	}
	for _, row := range []string{
		`(?m)^\| idempotency \+ reverse_proxy \| 2 \| \d+ MB/s \| [\d.]+ s \| [\d.]+ MiB \| [\d.]+ MiB \|$`,
		`(?m)^\| reverse_proxy \| 2 \| \d+ MB/s \| [\d.]+ s \| [\d.]+ MiB \| [\d.]+ MiB \|$`,
		`(?m)^\| handler's peak RSS < 64 MiB \+ 2 MiB x 2 = 68 MiB \| [\d.]+ MiB \| (yes|no) \|$`,
		`(?m)^\| handler's throughput >= 0.90 x plain \| \d+\.\d\d \| (yes|no) \|$`,
	} {
		if !regexp.MustCompile(row).MatchString(report) {
			t.Errorf("no match for %s in\n%s", row, report)
		}
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"300MB": 300e6, "64MiB": 64 << 20, "1048576": 1 << 20} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "0", "lots", "-1MB"} {
		if _, err := parseSize(bad); err == nil {
			t.Errorf("parseSize(%q) accepted", bad)
		}
	}
}
