package storetest_test

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/caddy-idempotency/caddy-idempotency/idempotency"
)

// BenchmarkHandler measures the handler's own work per request, without
// Caddy or a network: a replay (body read, canonical form, fingerprint, store
// lookup, answer), a first request (also Begin and Complete, with a no-op
// upstream) and a keyless pass-through, on the memory and Badger stores.
//
//	go test -run '^$' -bench Handler -benchmem ./idempotency/storetest
func BenchmarkHandler(b *testing.B) {
	stores := []struct {
		name string
		open func(b *testing.B) idempotency.Store
	}{
		{"memory", func(b *testing.B) idempotency.Store { return idempotency.NewMemoryStore() }},
		{"badger", openBenchBadger},
	}
	for _, st := range stores {
		b.Run(st.name, func(b *testing.B) {
			h, err := idempotency.New(idempotency.Config{Store: st.open(b)})
			if err != nil {
				b.Fatal(err)
			}
			b.Run("Replay", func(b *testing.B) {
				serveBench(b, h, func(int) string { return "bench-replay" })
			})
			b.Run("Write", func(b *testing.B) {
				run := benchRuns.Add(1) // -count runs it again: each run's keys are new
				serveBench(b, h, func(i int) string { return fmt.Sprintf("bench-write-%d-%d", run, i) })
			})
			b.Run("Pass", func(b *testing.B) {
				serveBench(b, h, func(int) string { return "" })
			})
		})
	}
}

// benchRuns numbers the Write runs of one process.
var benchRuns atomic.Int64

var benchBatchBody = []byte(`{"input_file_id":"file-abc123","endpoint":"/v1/chat/completions","completion_window":"24h"}`)

var benchBatchResponse = bytes.Repeat([]byte("b"), 480)

// serveBench sends b.N requests with key(i) (none when "") through h to an
// upstream that answers a batch-sized 200.
func serveBench(b *testing.B, h *idempotency.Handler, key func(i int) string) {
	upstream := func(w http.ResponseWriter, r *http.Request) error {
		if _, err := io.Copy(io.Discard, r.Body); err != nil {
			return err
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		_, err := w.Write(benchBatchResponse)
		return err
	}
	w := &discardWriter{header: http.Header{}}
	b.ReportAllocs()
	cpu := processCPU()
	i := 0
	for b.Loop() {
		r, err := http.NewRequest(http.MethodPost, "http://gw/v1/batches", bytes.NewReader(benchBatchBody))
		if err != nil {
			b.Fatal(err)
		}
		r.Header.Set("Content-Type", "application/json")
		r.Header.Set("Authorization", "Bearer sk-bench")
		if k := key(i); k != "" {
			r.Header.Set("Idempotency-Key", k)
		}
		clear(w.header)
		w.status = 0
		if err := h.Handle(w, r, upstream); err != nil || w.status != http.StatusOK {
			b.Fatalf("request %d: status %d, err %v", i, w.status, err)
		}
		i++
	}
	// Wall time per op leaves out the store's background work on the other
	// cores (Badger's writer, flushes, compactions) and the GC's: the
	// process's CPU time counts them.
	b.ReportMetric(float64(processCPU()-cpu)/float64(b.N), "cpu-ns/op")
}

// processCPU is the CPU time, user and system, of every thread of this process.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// discardWriter is a ResponseWriter that keeps only the status, so the
// benchmark measures the handler rather than a recorder's buffering.
type discardWriter struct {
	header http.Header
	status int
}

func (w *discardWriter) Header() http.Header { return w.header }
func (w *discardWriter) WriteHeader(status int) {
	if w.status == 0 {
		w.status = status
	}
}
func (w *discardWriter) Write(p []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	return len(p), nil
}
