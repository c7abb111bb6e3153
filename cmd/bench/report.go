package main

import (
	"fmt"
	"io"
	"time"
)

// ratios and the targets for them.
var ratios = []struct {
	num, den string
	target   float64
}{
	{"pass", "plain", 0.97},
	{"write", "plain", 0.90},
	{"replay", "static", 0.90},
	{"replay", "plain", 2.5},
}

func writeReport(w io.Writer, o options, size int, results map[string]*result) {
	fmt.Fprintf(w, "Machine: %s\n", machine())
	fmt.Fprintf(w, "Load: %d concurrent keep-alive connections, %s per scenario in %d round(s) after %s warmup, batch response %d bytes\n\n",
		o.concurrency, o.duration, o.rounds, o.warmup, size)
	fmt.Fprintln(w, "| scenario | requests/s | p50 | p99 | requests | Caddy CPU/request |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|")
	for _, s := range scenarios {
		r, ok := results[s]
		if !ok {
			continue
		}
		fmt.Fprintf(w, "| %s | %.0f | %s | %s | %d | %s |\n", s, r.rps(), ms(r.p50), ms(r.p99), r.requests, us(r.cpuPerRequest()))
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| ratio (requests/s) | value | target | met |")
	fmt.Fprintln(w, "|---|---:|---:|:---:|")
	for _, q := range ratios {
		a, okA := results[q.num]
		b, okB := results[q.den]
		if !okA || !okB {
			continue
		}
		v := a.rps() / b.rps()
		met := "no"
		if v >= q.target {
			met = "yes"
		}
		fmt.Fprintf(w, "| %s/%s | %.2f | >= %.2f | %s |\n", q.num, q.den, v, q.target, met)
	}
	writeCosts(w, results)
}

// costs are the handler's Caddy CPU per request over the scenario without it.
var costs = []struct{ with, without string }{
	{"pass", "plain"},
	{"write", "plain"},
	{"replay", "static"},
}

func writeCosts(w io.Writer, results map[string]*result) {
	header := false
	for _, c := range costs {
		a, okA := results[c.with]
		b, okB := results[c.without]
		if !okA || !okB || a.cpuPerRequest() == 0 || b.cpuPerRequest() == 0 {
			continue
		}
		if !header {
			fmt.Fprintln(w)
			fmt.Fprintln(w, "| Caddy CPU/request | value |")
			fmt.Fprintln(w, "|---|---:|")
			header = true
		}
		fmt.Fprintf(w, "| %s - %s | %s |\n", c.with, c.without, us(a.cpuPerRequest()-b.cpuPerRequest()))
	}
}

func us(d time.Duration) string {
	if d == 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.0f µs", float64(d)/float64(time.Microsecond))
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond)) }
