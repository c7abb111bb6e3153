package main

import (
	"bytes"
	"os"
	"regexp"
	"testing"
	"time"
)

// TestBenchTable runs every scenario briefly against a real Caddy process and
// checks the report's shape, never its speed.
func TestBenchTable(t *testing.T) {
	var out bytes.Buffer
	o := options{duration: 300 * time.Millisecond, warmup: 50 * time.Millisecond, concurrency: 4, rounds: 2, only: scenarios}
	if err := run(o, &out); err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	report := out.String()
	for _, s := range scenarios {
		if !regexp.MustCompile(`(?m)^\| ` + s + ` \| \d+ \| [\d.]+ ms \| [\d.]+ ms \| [1-9]\d* \| (\d+ µs|n/a) \|$`).MatchString(report) {
			t.Errorf("no row for %s in\n%s", s, report)
		}
	}
	for _, q := range ratios {
		if !regexp.MustCompile(`(?m)^\| ` + q.num + `/` + q.den + ` \| \d+\.\d\d \| >= [\d.]+ \| (yes|no) \|$`).MatchString(report) {
			t.Errorf("no ratio %s/%s in\n%s", q.num, q.den, report)
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
