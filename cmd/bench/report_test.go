package main

import (
	"bytes"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// An INFO commandstats cpu stats reply of redis-server 7.0, cut short.
const infoReply = "# Commandstats\r\n" +
	"cmdstat_evalsha:calls=200,usec=900,usec_per_call=4.50,rejected_calls=1,failed_calls=0\r\n" +
	"cmdstat_get:calls=200,usec=100,usec_per_call=0.50,rejected_calls=0,failed_calls=0\r\n" +
	"cmdstat_client|setinfo:calls=4,usec=4,usec_per_call=1.00,rejected_calls=0,failed_calls=0\r\n" +
	"cmdstat_info:calls=7,usec=300,usec_per_call=42.86,rejected_calls=0,failed_calls=0\r\n" +
	"\r\n# CPU\r\n" +
	"used_cpu_sys:1.250000\r\nused_cpu_user:0.500125\r\nused_cpu_sys_children:0.000000\r\n" +
	"\r\n# Stats\r\n" +
	"total_connections_received:5\r\ntotal_commands_processed:611\r\ntotal_reads_processed:215\r\n"

func TestParseRedisInfo(t *testing.T) {
	st, err := parseRedisInfo(infoReply)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int64{"evalsha": 201, "get": 200, "client|setinfo": 4}
	if !reflect.DeepEqual(st.calls, want) {
		t.Errorf("calls = %v, want %v (INFO's own left out)", st.calls, want)
	}
	if st.cpu != 1750125*time.Microsecond {
		t.Errorf("cpu = %v, want 1.750125s", st.cpu)
	}
	if st.reads != 215 {
		t.Errorf("reads = %d, want 215", st.reads)
	}
	for _, bad := range []string{
		"used_cpu_user:0.5\r\ntotal_reads_processed:1\r\n",                   // no used_cpu_sys
		"used_cpu_sys:x\r\nused_cpu_user:0.5\r\ntotal_reads_processed:1\r\n", // not a number
		"used_cpu_sys:1\r\nused_cpu_user:0.5\r\n",                            // no reads
		"cmdstat_get:calls=x\r\nused_cpu_sys:1\r\nused_cpu_user:0.5\r\ntotal_reads_processed:1\r\n",
	} {
		if _, err := parseRedisInfo(bad); err == nil {
			t.Errorf("parseRedisInfo(%q) accepted it", bad)
		}
	}
}

func TestAddRedis(t *testing.T) {
	var r result
	before := redisStats{calls: map[string]int64{"get": 10, "set": 5}, reads: 100, cpu: time.Second}
	after := redisStats{calls: map[string]int64{"get": 30, "set": 15, "hello": 1}, reads: 131, cpu: time.Second + 300*time.Microsecond}
	r.addRedis(before, after)
	r.addRedis(before, after)
	if want := map[string]int64{"get": 40, "set": 20, "hello": 2}; !reflect.DeepEqual(r.redisCalls, want) {
		t.Errorf("calls = %v, want %v", r.redisCalls, want)
	}
	// Each second sample's own read is not a request's.
	if !r.redis || r.redisReads != 60 || r.redisCPU != 600*time.Microsecond {
		t.Errorf("redis %v, reads %d, cpu %v; want true, 60, 600µs", r.redis, r.redisReads, r.redisCPU)
	}
}

func TestCommandsPerRequest(t *testing.T) {
	for _, c := range []struct {
		calls    map[string]int64
		requests int
		want     string
	}{
		{map[string]int64{"set": 100, "get": 200}, 100, "3.00 (get 2.00, set 1.00)"},
		{map[string]int64{"evalsha": 201, "time": 200, "hello": 0}, 100, "4.01 (evalsha 2.01, time 2.00)"},
		{map[string]int64{"evalsha": 1000, "hello": 1}, 1000, "1.00 (evalsha 1.00)"}, // under 0.005 left out
		{nil, 100, "0.00"},
		{nil, 0, "n/a"},
	} {
		if got := commandsPerRequest(c.calls, c.requests); got != c.want {
			t.Errorf("commandsPerRequest(%v, %d) = %q, want %q", c.calls, c.requests, got, c.want)
		}
	}
}

func TestParseStores(t *testing.T) {
	for in, want := range map[string][]string{
		"badger":                {"badger"},
		"memory,badger,redis":   {"memory", "badger", "redis"},
		" redis , memory ,":     {"redis", "memory"},
		"nope":                  nil,
		"memory,memory":         nil,
		"":                      nil,
		"memory,badger,postgre": nil,
	} {
		got, err := parseStores(in)
		if (err == nil) != (want != nil) || !reflect.DeepEqual(got, want) {
			t.Errorf("parseStores(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
}

func TestPlan(t *testing.T) {
	got := plan(scenarios, []string{"badger", "memory"}, true)
	var names []string
	for _, tg := range got {
		names = append(names, tg.String())
	}
	want := []string{
		"Caddy plain", "peer plain",
		"Caddy pass (badger)", "Caddy write (badger)", "Caddy replay (badger)",
		"Caddy pass (memory)", "peer pass (memory)", "Caddy write (memory)", "peer write (memory)", "Caddy replay (memory)", "peer replay (memory)",
		"Caddy static",
	}
	if !reflect.DeepEqual(names, want) {
		t.Errorf("plan =\n%s\nwant\n%s", strings.Join(names, "\n"), strings.Join(want, "\n"))
	}
	if got := plan([]string{"write"}, []string{"redis"}, false); !reflect.DeepEqual(got, []target{{serverCaddy, "write", "redis"}}) {
		t.Errorf("plan(write, redis, no peer) = %v", got)
	}
}

func TestCaddyfileStores(t *testing.T) {
	ts := plan(scenarios, []string{"memory", "badger", "redis"}, false)
	ports := map[target]int{}
	for i, tg := range ts {
		ports[tg] = 20000 + i
	}
	cf := caddyfile(ts, ports, "127.0.0.1:9001", "/data", 483, 0, "redis://127.0.0.1:6390/0")
	for _, want := range []string{
		"admin off",
		"\tidempotency /v1/batches {\n\t\tstore memory\n\t}\n\treverse_proxy 127.0.0.1:9001\n",
		"\t\tstore badger " + filepath.Join("/data", "badger-write") + "\n",
		"\t\tstore redis redis://127.0.0.1:6390/0\n",
		"\trespond \"" + strings.Repeat("x", 483) + "\" 200\n",
	} {
		if !strings.Contains(cf, want) {
			t.Errorf("no %q in\n%s", want, cf)
		}
	}
	if n := strings.Count(cf, "\nhttp://127.0.0.1:"); n != len(ts) {
		t.Errorf("%d sites, want %d", n, len(ts))
	}
	if n := strings.Count(cf, "store memory"); n != 3 {
		t.Errorf("%d memory sites, want 3", n)
	}
}

func TestProfileTarget(t *testing.T) {
	o := options{stores: []string{"memory", "redis"}}
	for profile, want := range map[string]struct {
		t    target
		name string
	}{
		"write":        {target{serverCaddy, "write", "memory"}, "write"},
		"replay:redis": {target{serverCaddy, "replay", "redis"}, "replay-redis"},
		"static":       {target{serverCaddy, "static", ""}, "static"},
	} {
		o.profile = profile
		tg, name, err := profileTarget(o)
		if err != nil || tg != want.t || name != want.name {
			t.Errorf("profileTarget(%s) = %v, %q, %v; want %v, %q", profile, tg, name, err, want.t, want.name)
		}
	}
	o.profile = "plain:redis"
	if _, _, err := profileTarget(o); err == nil {
		t.Error("profileTarget accepted a store for plain")
	}
}

func TestPeerDirOff(t *testing.T) {
	for _, v := range []string{"off", ""} {
		if dir, err := peerDir(v, true); dir != "" || err != nil {
			t.Errorf("peerDir(%q) = %q, %v", v, dir, err)
		}
	}
	if _, err := peerDir(filepath.Join(t.TempDir(), "none"), true); err == nil {
		t.Error("peerDir accepted a named directory that does not exist")
	}
	if dir, err := peerDir("no/such/peer", false); dir != "" || err != nil {
		t.Errorf("a missing default: peerDir = %q, %v; want none", dir, err)
	}
}

func TestSignedUS(t *testing.T) {
	for d, want := range map[time.Duration]string{
		43 * time.Microsecond:   "+43 µs",
		-3 * time.Microsecond:   "-3 µs",
		-400 * time.Nanosecond:  "+0 µs",
		1500 * time.Nanosecond:  "+2 µs",
		-1500 * time.Nanosecond: "-2 µs",
	} {
		if got := signedUS(d); got != want {
			t.Errorf("signedUS(%v) = %q, want %q", d, got, want)
		}
	}
}

// fakeResult is a result of n requests over a second with the given CPU per
// request and p99.
func fakeResult(n int, cpu, p99 time.Duration) *result {
	return &result{requests: n, elapsed: time.Second, p50: p99 / 3, p99: p99, cpu: cpu * time.Duration(n)}
}

func withRedis(r *result, calls map[string]int64, reads int64, cpu time.Duration) *result {
	r.redis, r.redisCalls, r.redisReads, r.redisCPU = true, calls, reads, cpu*time.Duration(r.requests)
	return r
}

// TestReportSideBySide writes the report of made-up measurements and checks
// the side-by-side tables' rows.
func TestReportSideBySide(t *testing.T) {
	o := options{duration: 10 * time.Second, warmup: time.Second, concurrency: 32, rounds: 5,
		only: scenarios, stores: []string{"memory", "badger", "redis"}, peer: "/peer/fiber"}
	ms := time.Millisecond
	res := map[target]*result{
		{serverCaddy, "plain", ""}:        fakeResult(1000, 90*time.Microsecond, 10*ms),
		{serverCaddy, "static", ""}:       fakeResult(3000, 32*time.Microsecond, 7*ms),
		{serverCaddy, "pass", "memory"}:   fakeResult(1000, 100*time.Microsecond, 11*ms),
		{serverCaddy, "write", "memory"}:  fakeResult(800, 133*time.Microsecond, 13500*time.Microsecond),
		{serverCaddy, "replay", "memory"}: fakeResult(2000, 47*time.Microsecond, 7*ms),
		{serverCaddy, "pass", "badger"}:   fakeResult(1000, 95*time.Microsecond, 11*ms),
		{serverCaddy, "write", "badger"}:  fakeResult(700, 160*time.Microsecond, 15*ms),
		{serverCaddy, "replay", "badger"}: fakeResult(2000, 51*time.Microsecond, 7*ms),
		{serverCaddy, "pass", "redis"}:    withRedis(fakeResult(1000, 91*time.Microsecond, 11*ms), nil, 0, 0),
		{serverCaddy, "write", "redis"}: withRedis(fakeResult(500, 196*time.Microsecond, 18*ms),
			map[string]int64{"evalsha": 1000, "get": 1000, "set": 1000, "time": 1000}, 1000, 53*time.Microsecond),
		{serverCaddy, "replay", "redis"}: withRedis(fakeResult(1300, 74*time.Microsecond, 9*ms),
			map[string]int64{"evalsha": 1300, "get": 1300, "time": 1300}, 1300, 20*time.Microsecond),
		{serverPeer, "plain", ""}:        fakeResult(1600, 36*time.Microsecond, 8*ms),
		{serverPeer, "pass", "memory"}:   fakeResult(1600, 37*time.Microsecond, 8*ms),
		{serverPeer, "write", "memory"}:  fakeResult(1200, 53*time.Microsecond, 9*ms),
		{serverPeer, "replay", "memory"}: fakeResult(3200, 21*time.Microsecond, 5*ms),
		{serverPeer, "pass", "redis"}:    withRedis(fakeResult(1400, 43*time.Microsecond, 8*ms), nil, 0, 0),
		{serverPeer, "write", "redis"}: withRedis(fakeResult(800, 96*time.Microsecond, 7*ms),
			map[string]int64{"get": 1600, "set": 800}, 2400, 35*time.Microsecond),
		{serverPeer, "replay", "redis"}: withRedis(fakeResult(1900, 40*time.Microsecond, 6*ms),
			map[string]int64{"get": 1900}, 1900, 12*time.Microsecond),
	}
	var out bytes.Buffer
	report{o: o, batchSize: 483, targets: plan(o.only, o.stores, true), results: res, redisVersion: "7.0.15"}.write(&out)
	got := out.String()
	if testing.Verbose() {
		t.Log("\n" + got)
	}
	for _, want := range []string{
		"| Caddy | plain | - | 1000 | 3.33 ms | 10.00 ms | 1000 | 90 µs | - | - |\n",
		"| Caddy | write | redis | 500 | 6.00 ms | 18.00 ms | 500 | 196 µs | 2.00 | 53 µs |\n",
		"| peer | replay | memory | 3200 | 1.67 ms | 5.00 ms | 3200 | 21 µs | - | - |\n",
		"| write/plain | memory | 0.80 | - | - | 0.75 |\n",
		"| write/plain | badger | 0.70 | >= 0.85 | no | - |\n",
		"| replay/static | badger | 0.67 | >= 0.90 | no | - |\n",
		"| write - plain | redis | +106 µs |\n",
		"| plain proxy (absolute) | 36 µs | 90 µs |\n",
		"| no key, memory | +1 µs | +10 µs |\n",
		"| write, memory | +17 µs | +43 µs |\n",
		"| write, Badger | - | +70 µs |\n",
		"| write, Redis (proxy + Redis server) | +60 µs + 35 µs | +106 µs + 53 µs |\n",
		"| replay, memory (absolute) | 21 µs | 47 µs (Caddy `respond` alone: 32 µs) |\n",
		"| replay, Badger (absolute) | - | 51 µs (Caddy `respond` alone: 32 µs) |\n",
		"| replay, Redis (proxy + Redis server, absolute) | 40 µs + 12 µs | 74 µs + 20 µs (Caddy `respond` alone: 32 µs) |\n",
		"| write | 3.00 | 3.00 (get 2.00, set 1.00) | 35 µs | 2.00 | 8.00 (evalsha 2.00, get 2.00, set 2.00, time 2.00) | 53 µs |\n",
		"| replay | 1.00 | 1.00 (get 1.00) | 12 µs | 1.00 | 3.00 (evalsha 1.00, get 1.00, time 1.00) | 20 µs |\n",
		"| memory | +1.00 ms | +3.50 ms |\n",
		"| Badger | - | +5.00 ms |\n",
		"| Redis | -1.00 ms | +8.00 ms |\n",
		"Peer: Fiber v3's proxy behind its idempotency middleware (/peer/fiber)",
		// The CPU targets: write on memory +43 > 12, Badger +70 > 20; a
		// replay at 47/32 = 1.47x; Redis: +106 against the peer's +60, and
		// the server's 53 and 20 µs against 35 and 10.
		"| write, memory: Caddy CPU added over plain | <= 12 µs | +43 µs | no |\n",
		"| write, Badger: Caddy CPU added over plain | <= 20 µs | +70 µs | no |\n",
		"| replay, memory: Caddy CPU over `respond`'s | <= 1.15x | 1.47x (47 µs vs 32 µs) | no |\n",
		"| write, Redis: proxy CPU added over plain | <= the peer's (+60 µs) | +106 µs | no |\n",
		"| write, Redis: Redis server CPU | <= 35 µs | 53 µs | no |\n",
		"| replay, Redis: Redis server CPU | <= 10 µs | 20 µs | no |\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("no %q in\n%s", want, got)
		}
	}
}

// Without the peer the report has no column of its numbers to show, and says
// why.
func TestReportWithoutPeer(t *testing.T) {
	o := options{duration: time.Second, rounds: 1, only: scenarios, stores: []string{"badger"},
		peerNote: "not run: it has no badger store (it has memory and redis)"}
	res := map[target]*result{
		{serverCaddy, "plain", ""}:       fakeResult(1000, 90*time.Microsecond, 10*time.Millisecond),
		{serverCaddy, "write", "badger"}: fakeResult(700, 160*time.Microsecond, 15*time.Millisecond),
	}
	var out bytes.Buffer
	report{o: o, batchSize: 483, targets: plan(o.only, o.stores, false), results: res}.write(&out)
	got := out.String()
	for _, want := range []string{
		"Peer: not run: it has no badger store (it has memory and redis)\n",
		"| write/plain | badger | 0.70 | >= 0.85 | no | - |\n",
		"| Badger | - | +5.00 ms |\n",
		"| write, Badger: Caddy CPU added over plain | <= 20 µs | +70 µs | no |\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("no %q in\n%s", want, got)
		}
	}
	for _, not := range []string{"peer: added", "Redis", "What each does"} {
		if strings.Contains(got, not) {
			t.Errorf("%q in\n%s", not, got)
		}
	}
}

// A target met says yes: the same table with numbers inside every bound.
func TestCPUTargetsMet(t *testing.T) {
	o := options{stores: []string{"memory", "badger", "redis"}}
	us := time.Microsecond
	res := map[target]*result{
		{serverCaddy, "plain", ""}:        fakeResult(1000, 100*us, time.Millisecond),
		{serverCaddy, "static", ""}:       fakeResult(1000, 40*us, time.Millisecond),
		{serverCaddy, "write", "memory"}:  fakeResult(1000, 112*us, time.Millisecond),
		{serverCaddy, "write", "badger"}:  fakeResult(1000, 120*us, time.Millisecond),
		{serverCaddy, "replay", "memory"}: fakeResult(1000, 46*us, time.Millisecond),
		{serverCaddy, "write", "redis"}:   withRedis(fakeResult(1000, 140*us, time.Millisecond), nil, 2000, 35*us),
		{serverCaddy, "replay", "redis"}:  withRedis(fakeResult(1000, 60*us, time.Millisecond), nil, 1000, 10*us),
		{serverPeer, "plain", ""}:         fakeResult(1000, 40*us, time.Millisecond),
		{serverPeer, "write", "redis"}:    withRedis(fakeResult(1000, 80*us, time.Millisecond), nil, 3000, 30*us),
	}
	rows := report{o: o, results: res}.cpuTargets()
	if len(rows) != 7 {
		t.Fatalf("%d rows, want 7: %+v", len(rows), rows)
	}
	for _, r := range rows {
		if r.what == "replay, Redis: Caddy CPU over `respond`'s" {
			if r.met {
				t.Errorf("%s met at %s", r.what, r.measured) // 60/40 = 1.5x
			}
			continue
		}
		if !r.met {
			t.Errorf("%s: %s, not met against %s", r.what, r.measured, r.target)
		}
	}
}
