package main

import (
	"bytes"
	"regexp"
	"testing"
	"time"
)

// TestScaleReport runs the -scale mode with a few thousand records against
// real Caddy processes and a real Badger store, and checks the report's
// shape, never its speed or sizes.
func TestScaleReport(t *testing.T) {
	sr := newScaleRun(options{duration: 300 * time.Millisecond, warmup: 50 * time.Millisecond,
		concurrency: 4, rounds: 2, scale: 3000})
	sr.slack, sr.gcInterval, sr.gcWindow = 1500*time.Millisecond, 100*time.Millisecond, 300*time.Millisecond
	var out bytes.Buffer
	if err := sr.run(&out); err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	report := out.String()
	if testing.Verbose() {
		t.Log("\n" + report)
	}
	num, size := `\d+(\.\d+)?`, `\d+\.\d MiB`
	for _, want := range []string{
		`(?m)^Fill: 2000 records in \S+ \(\d+ records/s\); levels after: (L\d:\d+/` + size + ` ?)+$`,
		`(?m)^\| small \| 1000 \| \d+ \| ` + num + ` ms \| ` + num + ` ms \| [1-9]\d* \|$`,
		`(?m)^\| large \| 3000 \| \d+ \| ` + num + ` ms \| ` + num + ` ms \| [1-9]\d* \|$`,
		`(?m)^\| p99 large/small \| \d+\.\d\d \| <= 1\.50 \| (yes|no) \|$`,
		`(?m)^\| small \| started \| (` + size + ` \| ){4}- \|$`,
		`(?m)^\| large \| after replays \| (` + size + ` \| ){4}(yes|no) \|$`,
		`(?m)^\| large \| 3000 \| (` + size + ` \| ){4}[1-9]\d* \|$`,
		// How many bulk records are dead by the GC step depends on the
		// machine's speed (some may already be compacted away): shape only.
		`(?m)^\| expired, before GC: a scan for dead keys \| \S+ \| (` + size + ` \| ){5}0% \| \d+ \| `,
		`(?m)^\| product as is: open \S+, its GC tick every \S+ \| \S+ \| (` + size + ` \| ){5}-?\d+% \| \d+ \| `,
		`(?m)^\| db.Flatten\(2\) \| \S+ \| (` + size + ` \| ){5}-?\d+% \| \d+ \| `,
		`(?m)^\| delete the expired keys \(sweep\), then open \S+ \| \S+ \| (` + size + ` \| ){5}-?\d+% \| \d+ \| `,
		`(?m)^\| then reopen, db.Flatten\(2\) \| \S+ \| (` + size + ` \| ){5}-?\d+% \| \d+ \| `,
		`(?m)^The sweep deleted \d+ keys\.$`,
	} {
		if !regexp.MustCompile(want).MatchString(report) {
			t.Errorf("no match for %s in\n%s", want, report)
		}
	}
}

func TestScaleTooSmall(t *testing.T) {
	if err := runScale(options{scale: scaleHot}, &bytes.Buffer{}); err == nil {
		t.Fatal("runScale accepted a store no larger than the hot keys")
	}
}
