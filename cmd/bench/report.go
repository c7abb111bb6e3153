package main

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"time"
)

// ratios and the targets for them: on every store, or only on those named.
var ratios = []struct {
	num, den string
	target   float64
	stores   []string // nil: every store
}{
	{"pass", "plain", 0.97, nil},
	{"write", "plain", 0.85, []string{"badger"}},
	{"replay", "static", 0.90, nil},
	{"replay", "plain", 2.5, nil},
}

// costs are the handler's Caddy CPU per request over the scenario without it.
var costs = []struct{ with, without string }{
	{"pass", "plain"},
	{"write", "plain"},
	{"replay", "static"},
}

// report is what a run measured, and how.
type report struct {
	o            options
	batchSize    int
	targets      []target
	results      map[target]*result
	redisVersion string
	redisRecords map[string]recordSize // by server: what its records take in its Redis at the end
}

// get is the result of scenario on server, with store for the scenarios that
// have one, or nil when it did not run.
func (rep report) get(server, scenario, store string) *result {
	if !slices.Contains(storeScenarios, scenario) {
		store = ""
	}
	r := rep.results[target{server, scenario, store}]
	if r == nil || r.requests == 0 {
		return nil
	}
	return r
}

func (rep report) ran(server string) bool {
	return slices.ContainsFunc(rep.targets, func(t target) bool { return t.server == server })
}

func (rep report) write(w io.Writer) {
	o := rep.o
	peer := rep.ran(serverPeer)
	withRedis := slices.Contains(o.stores, "redis")
	fmt.Fprintf(w, "Machine: %s\n", machine())
	fmt.Fprintf(w, "Load: %d concurrent keep-alive connections, %s per scenario in %d round(s) after %s warmup, batch response %d bytes\n",
		o.concurrency, o.duration, o.rounds, o.warmup, rep.batchSize)
	fmt.Fprintf(w, "Requests: POST /v1/batches, Content-Type: application/json, Authorization, Idempotency-Key new per request (write), repeated (replay) or absent (plain, pass, static)\n")
	stores := "Stores: " + strings.Join(o.stores, ", ")
	if withRedis {
		stores += fmt.Sprintf(" (redis: a local redis-server %s, --save '' --appendonly no, one for Caddy and one for the peer)", rep.redisVersion)
	}
	fmt.Fprintln(w, stores)
	if peer {
		fmt.Fprintf(w, "Peer: Fiber v3's proxy behind its idempotency middleware (%s), one process per store, in the same rounds as Caddy\n", o.peer)
	} else if o.peerNote != "" {
		fmt.Fprintf(w, "Peer: %s\n", o.peerNote)
	}
	fmt.Fprintln(w)

	// Every measurement, Caddy's first.
	fmt.Fprint(w, "| server | scenario | store | requests/s | p50 | p99 | requests | CPU/request |")
	if withRedis {
		fmt.Fprint(w, " Redis round trips/request | Redis CPU/request |")
	}
	fmt.Fprint(w, "\n|---|---|---|---:|---:|---:|---:|---:|")
	if withRedis {
		fmt.Fprint(w, "---:|---:|")
	}
	fmt.Fprintln(w)
	for _, server := range []string{serverCaddy, serverPeer} {
		for _, t := range rep.targets {
			r := rep.results[t]
			if t.server != server || r == nil || r.requests == 0 {
				continue
			}
			fmt.Fprintf(w, "| %s | %s | %s | %.0f | %s | %s | %d | %s |", t.server, t.scenario, orDash(t.store),
				r.rps(), ms(r.p50), ms(r.p99), r.requests, us(r.cpuPerRequest()))
			if withRedis {
				if r.redis {
					fmt.Fprintf(w, " %s | %s |", redisTrips(r), redisCPU(r))
				} else {
					fmt.Fprint(w, " - | - |")
				}
			}
			fmt.Fprintln(w)
		}
	}

	// The ratios Caddy is held to, and the peer's same ratios.
	header := false
	for _, q := range ratios {
		for _, st := range o.stores {
			a, b := rep.get(serverCaddy, q.num, st), rep.get(serverCaddy, q.den, st)
			if a == nil || b == nil {
				continue
			}
			v := a.rps() / b.rps()
			pv := "-"
			if pa, pb := rep.get(serverPeer, q.num, st), rep.get(serverPeer, q.den, st); pa != nil && pb != nil {
				pv = fmt.Sprintf("%.2f", pa.rps()/pb.rps())
			}
			if !header {
				fmt.Fprintln(w)
				fmt.Fprintln(w, "| ratio (requests/s) | store | value | target | met | peer |")
				fmt.Fprintln(w, "|---|---|---:|---:|:---:|---:|")
				header = true
			}
			target, met := "-", "-"
			if q.stores == nil || slices.Contains(q.stores, st) {
				target, met = fmt.Sprintf(">= %.2f", q.target), yesNo(v >= q.target)
			}
			fmt.Fprintf(w, "| %s/%s | %s | %.2f | %s | %s | %s |\n", q.num, q.den, st, v, target, met, pv)
		}
	}

	// Caddy's CPU per request, the handler's share.
	header = false
	for _, c := range costs {
		for _, st := range o.stores {
			a, b := rep.get(serverCaddy, c.with, st), rep.get(serverCaddy, c.without, st)
			if a == nil || b == nil || a.cpuPerRequest() == 0 || b.cpuPerRequest() == 0 {
				continue
			}
			if !header {
				fmt.Fprintln(w)
				fmt.Fprintln(w, "| Caddy CPU/request | store | value |")
				fmt.Fprintln(w, "|---|---|---:|")
				header = true
			}
			fmt.Fprintf(w, "| %s - %s | %s | %s |\n", c.with, c.without, st, signedUS(a.cpuPerRequest()-b.cpuPerRequest()))
		}
	}

	if peer {
		rep.writeSideBySide(w)
	}
	rep.writeCPUTargets(w)
	if withRedis {
		rep.writeRedis(w)
	}
	rep.writeP99(w)
	if peer {
		fmt.Fprintln(w)
		fmt.Fprintln(w, "What each does for it: the peer keys a response on the Idempotency-Key alone (no body fingerprint, no tenant or site scope), stores any status once the handler returned (GET, GET again under an in-process lock, SET), makes in-flight duplicates wait on that in-process lock and has no lease. Ours claims SHA-256(site, Authorization, key) with a lease in the store before going upstream, fingerprints the canonical body, stores a 2xx before the client sees it, and answers the key with other parameters 409.")
	}
}

// writeSideBySide is the CPU each handler adds over its own plain proxy.
func (rep report) writeSideBySide(w io.Writer) {
	peerPlain, ourPlain := rep.get(serverPeer, "plain", ""), rep.get(serverCaddy, "plain", "")
	static := rep.get(serverCaddy, "static", "")
	var rows [][3]string
	row := func(path, theirs, ours string) {
		if theirs != "-" || ours != "-" {
			rows = append(rows, [3]string{path, theirs, ours})
		}
	}
	row("plain proxy (absolute)", absCPU(peerPlain), absCPU(ourPlain))
	// added is r's CPU per request over base's, with the Redis server's.
	added := func(r, base *result) string {
		if r == nil || base == nil || r.cpuPerRequest() == 0 || base.cpuPerRequest() == 0 {
			return "-"
		}
		s := signedUS(r.cpuPerRequest() - base.cpuPerRequest())
		if r.redis {
			s += " + " + redisCPU(r)
		}
		return s
	}
	for _, scenario := range []string{"pass", "write"} {
		for _, st := range rep.o.stores {
			ours, theirs := rep.get(serverCaddy, scenario, st), rep.get(serverPeer, scenario, st)
			if ours == nil && theirs == nil {
				continue
			}
			path := scenario
			if scenario == "pass" {
				path = "no key"
			}
			path += ", " + storeTitle(st)
			if st == "redis" {
				path += " (proxy + Redis server)"
			}
			row(path, added(theirs, peerPlain), added(ours, ourPlain))
		}
	}
	for _, st := range rep.o.stores {
		ours, theirs := rep.get(serverCaddy, "replay", st), rep.get(serverPeer, "replay", st)
		if ours == nil && theirs == nil {
			continue
		}
		path := "replay, " + storeTitle(st) + " (absolute)"
		if st == "redis" {
			path = "replay, Redis (proxy + Redis server, absolute)"
		}
		our := absCPU(ours)
		if static != nil && static.cpuPerRequest() != 0 && our != "-" {
			our += fmt.Sprintf(" (Caddy `respond` alone: %s)", us(static.cpuPerRequest()))
		}
		row(path, absCPU(theirs), our)
	}
	if len(rows) == 0 {
		return
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| path, CPU per request | peer: added over its plain proxy | ours: added over Caddy's plain reverse_proxy |")
	fmt.Fprintln(w, "|---|---:|---:|")
	for _, r := range rows {
		fmt.Fprintf(w, "| %s | %s | %s |\n", r[0], r[1], r[2])
	}
}

// writeRedis is the Redis server's share: round trips, commands and CPU per
// request.
func (rep report) writeRedis(w io.Writer) {
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Redis server, per request: round trips (INFO stats total_reads_processed), commands run, a script's own included (INFO commandstats), CPU (INFO cpu used_cpu_sys + used_cpu_user):")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| scenario | peer: round trips | peer: commands | peer: Redis CPU | ours: round trips | ours: commands | ours: Redis CPU |")
	fmt.Fprintln(w, "|---|---:|---|---:|---:|---|---:|")
	for _, scenario := range storeScenarios {
		ours, theirs := rep.get(serverCaddy, scenario, "redis"), rep.get(serverPeer, scenario, "redis")
		if ours == nil && theirs == nil {
			continue
		}
		cells := func(r *result) string {
			if r == nil || !r.redis {
				return "- | - | -"
			}
			return redisTrips(r) + " | " + redisCommands(r) + " | " + redisCPU(r)
		}
		name := scenario
		if scenario == "pass" {
			name = "pass (no key)"
		}
		fmt.Fprintf(w, "| %s | %s | %s |\n", name, cells(theirs), cells(ours))
	}
	size := func(server string) string {
		rs, ok := rep.redisRecords[server]
		if !ok || rs.keys == 0 {
			return "-"
		}
		return fmt.Sprintf("%d B (MEMORY USAGE %d B), %d keys", rs.perKey, rs.sampled, rs.keys)
	}
	if len(rep.redisRecords) > 0 {
		fmt.Fprintln(w)
		fmt.Fprintln(w, "| Redis memory per record at the end (used_memory growth / keys; mean MEMORY USAGE of sampled keys) | peer | ours |")
		fmt.Fprintln(w, "|---|---:|---:|")
		fmt.Fprintf(w, "| a %d-byte batch response, stored | %s | %s |\n", rep.batchSize, size(serverPeer), size(serverCaddy))
	}
}

// writeP99 is the latency a create gains through the handler, per store.
func (rep report) writeP99(w io.Writer) {
	header := false
	for _, st := range rep.o.stores {
		ours := p99Gain(rep.get(serverCaddy, "write", st), rep.get(serverCaddy, "plain", ""))
		theirs := p99Gain(rep.get(serverPeer, "write", st), rep.get(serverPeer, "plain", ""))
		if ours == "-" && theirs == "-" {
			continue
		}
		if !header {
			fmt.Fprintln(w)
			fmt.Fprintln(w, "| p99 a create gains through the handler | peer: write p99 - its plain p99 | ours: write p99 - Caddy's plain p99 |")
			fmt.Fprintln(w, "|---|---:|---:|")
			header = true
		}
		fmt.Fprintf(w, "| %s | %s | %s |\n", storeTitle(st), theirs, ours)
	}
}

func p99Gain(write, plain *result) string {
	if write == nil || plain == nil {
		return "-"
	}
	d := write.p99 - plain.p99
	sign := "+"
	if d < 0 {
		sign, d = "-", -d
	}
	return sign + ms(d)
}

func storeTitle(st string) string {
	switch st {
	case "badger":
		return "Badger"
	case "redis":
		return "Redis"
	}
	return st
}

// absCPU is r's CPU per request, with the Redis server's when it has one.
func absCPU(r *result) string {
	if r == nil || r.cpuPerRequest() == 0 {
		return "-"
	}
	s := us(r.cpuPerRequest())
	if r.redis {
		s += " + " + redisCPU(r)
	}
	return s
}

func redisCommands(r *result) string {
	if r.redisUnknown {
		return "n/a"
	}
	return commandsPerRequest(r.redisCalls, r.requests)
}

func redisTrips(r *result) string {
	if r.redisUnknown || r.requests == 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.2f", float64(r.redisReads)/float64(r.requests))
}

func redisCPU(r *result) string {
	if r.redisUnknown || r.requests == 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.0f µs", float64(r.redisCPU/time.Duration(r.requests))/float64(time.Microsecond))
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func us(d time.Duration) string {
	if d == 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.0f µs", float64(d)/float64(time.Microsecond))
}

// signedUS is a difference of CPU times, with its sign.
func signedUS(d time.Duration) string {
	v := math.Round(float64(d) / float64(time.Microsecond))
	if v == 0 {
		v = 0 // not -0
	}
	return fmt.Sprintf("%+.0f µs", v)
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond)) }
