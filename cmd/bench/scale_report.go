package main

import (
	"fmt"
	"io"
	"time"
)

// writeScaleReport writes what a -scale run measured, as text for the README.
func writeScaleReport(w io.Writer, sr scaleRun, rep *scaleReport) {
	small, large := rep.latency["small"], rep.latency["large"]
	fmt.Fprintf(w, "Machine: %s\n", machine())
	fmt.Fprintf(w, "Command: go run ./cmd/bench -scale %d -duration %s -warmup %s -concurrency %d -rounds %d\n",
		sr.n, sr.duration, sr.warmup, sr.concurrency, sr.rounds)
	fmt.Fprintf(w, "Stores: small = %d records created over HTTP; large = the same %d plus %d written with Begin+Complete (%d goroutines); batch response %d bytes, stored record %d bytes\n\n",
		scaleHot, scaleHot, sr.n-scaleHot, fillWorkers, rep.batchSize, rep.valueSize)
	fmt.Fprintf(w, "Fill: %d records in %s (%.0f records/s); levels after: %s\n\n",
		sr.n-scaleHot, rep.fillTime.Round(10*time.Millisecond), float64(sr.n-scaleHot)/rep.fillTime.Seconds(), rep.levels)

	fmt.Fprintf(w, "Replay of the %d hot keys round-robin, both stores in one Caddy, %d concurrent keep-alive connections, %s each in %d interleaved round(s) after %s warmup:\n\n",
		scaleHot, sr.concurrency, sr.duration, sr.rounds, sr.warmup)
	fmt.Fprintln(w, "| store | records | requests/s | p50 | p99 | requests |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|")
	for _, s := range []struct {
		name string
		n    int
	}{{"small", scaleHot}, {"large", sr.n}} {
		r := rep.latency[s.name]
		fmt.Fprintf(w, "| %s | %d | %.0f | %s | %s | %d |\n", s.name, s.n, r.rps(), ms(r.p50), ms(r.p99), r.requests)
	}
	ratio := float64(large.p99) / float64(small.p99)
	fmt.Fprintf(w, "\n| ratio | value | target | met |\n|---|---:|---:|:---:|\n| p99 large/small | %.2f | <= 1.50 | %s |\n\n", ratio, yesNo(ratio <= 1.5))

	fmt.Fprintln(w, "Caddy's memory (/proc/<pid>/status), each store alone, when its sites answer and after replays:")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| store | when | VmRSS | VmHWM | RssAnon | RssFile | target VmRSS <= 200 MiB |")
	fmt.Fprintln(w, "|---|---|---:|---:|---:|---:|:---:|")
	for _, r := range rep.rss {
		met := "-"
		if r.store == "large" {
			met = yesNo(r.status["VmRSS"] <= 200<<10)
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s |\n", r.store, r.when,
			kib(r.status["VmRSS"]), kib(r.status["VmHWM"]), kib(r.status["RssAnon"]), kib(r.status["RssFile"]), met)
	}

	fmt.Fprintln(w, "\nDisk, store closed (allocated blocks):")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| store | records | .sst | .vlog | other | total | bytes/record |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|---:|")
	for _, s := range []struct {
		name string
		n    int
	}{{"small", scaleHot}, {"large", sr.n}} {
		d := rep.disk[s.name]
		fmt.Fprintf(w, "| %s | %d | %s | %s | %s | %s | %.0f |\n", s.name, s.n, mib(d.sst), mib(d.vlog), mib(d.other), mib(d.total()), float64(d.total())/float64(s.n))
	}

	early := ""
	if rep.expiryMin.Before(rep.measuredUntil) {
		early = fmt.Sprintf("; the first %s before the measurements ended, so some were expired during part of them", rep.measuredUntil.Sub(rep.expiryMin).Round(time.Second))
	}
	fmt.Fprintf(w, "\nGC once the %d bulk records expired (over %s%s): %d dead keys stored. Each candidate starts from a copy of that store; disk once closed (open: at the end of the step, the store still open):\n\n",
		sr.n-scaleHot, rep.expiryMax.Sub(rep.expiryMin).Round(time.Second), early, rep.expired)
	fmt.Fprintln(w, "| step | took | .sst | .vlog | other | total | open | reclaimed | dead keys stored | levels (tables/size) |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
	first := rep.gc[0].disk.total()
	for _, g := range rep.gc {
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s | %.0f%% | %d | %s |\n", g.step, g.took.Round(10*time.Millisecond), mib(g.disk.sst), mib(g.disk.vlog), mib(g.disk.other),
			mib(g.disk.total()), mib(g.open.total()), 100*float64(first-g.disk.total())/float64(first), g.dead, g.levels)
	}
	fmt.Fprintf(w, "\nThe sweep deleted %d keys.\n", rep.swept)
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
