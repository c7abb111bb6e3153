package e2e

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-idempotency/caddy-idempotency/internal/testupstream"
)

const (
	streamChunks   = 5
	streamChunkGap = 300 * time.Millisecond
)

// A keyed stream reaches its client as the upstream writes it, while its
// copy is kept; the record completes when the stream ends, and a retry
// replays the whole stream. A stream larger than max_response still reaches
// its client whole, and its retry is told it succeeded.
func TestFidelityStreams(t *testing.T) {
	for _, tc := range []struct {
		name   string
		block  string
		stored bool
		encode bool // encode gzip in front, and the first client accepts gzip
	}{
		{"kept", "store memory", true, false},
		{"larger than max_response", "store memory\n\t\tmax_response 100", false, false},
		{"kept, behind encode", "store memory", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var finished atomic.Int32 // streams the upstream has ended
			up := testupstream.Start(t, streamUpstream(&finished))
			lines := []string{"idempotency {\n\t\t" + tc.block + "\n\t}", "reverse_proxy " + up.Addr()}
			if tc.encode {
				lines = append([]string{"encode gzip"}, lines...)
			}
			loadSites(t, siteBlock(localSite(), lines...))
			c := siteClient(t, "")
			key := uniqueKey("stream")
			body := []byte(`{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}`)
			retry := func() reply {
				return sendTo(t, c, http.MethodPost, siteURL("/v1/chat/completions"), body, "Idempotency-Key", key)
			}

			req, err := http.NewRequest(http.MethodPost, siteURL("/v1/chat/completions"), bytes.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Authorization", tenantA)
			req.Header.Set("Idempotency-Key", key)
			if tc.encode {
				req.Header.Set("Accept-Encoding", "gzip")
			}
			start := time.Now()
			res, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			var stream io.Reader = res.Body
			if tc.encode {
				if res.Header.Get("Content-Encoding") != "gzip" {
					t.Fatalf("behind encode: Content-Encoding %q, want gzip", res.Header.Get("Content-Encoding"))
				}
				if stream, err = gzip.NewReader(res.Body); err != nil {
					t.Fatal(err)
				}
			}
			br := bufio.NewReader(stream)
			first, err := br.ReadString('\n') // "data: ...\n"
			if err != nil {
				t.Fatal(err)
			}
			firstAt, doneAtFirst := time.Since(start), finished.Load()
			// A duplicate sent mid-stream waits (default wait) for the
			// record, which completes only when the stream ends.
			duplicate := make(chan reply, 1)
			go func() { duplicate <- retry() }()
			rest, err := io.ReadAll(br)
			total := time.Since(start)
			if err != nil {
				t.Fatal(err)
			}
			got := first + string(rest)
			if res.StatusCode != http.StatusOK || got != sseStream() || res.Header.Get("Idempotent-Replayed") != "" {
				t.Fatalf("stream: %d (Idempotent-Replayed %q) %q, want 200 %q", res.StatusCode, res.Header.Get("Idempotent-Replayed"), got, sseStream())
			}
			if firstAt >= time.Second || doneAtFirst != 0 || total < (streamChunks-1)*streamChunkGap {
				t.Fatalf("first chunk after %s (upstream finished: %d), whole stream after %s: want the first chunk under 1s, before the upstream's end",
					firstAt, doneAtFirst, total)
			}
			t.Logf("first chunk after %s, the whole stream after %s", firstAt, total)

			live := reply{Status: res.StatusCode, Body: []byte(got)}
			for _, r := range []reply{<-duplicate, retry()} {
				if !tc.stored {
					mustNotStored(t, r)
					continue
				}
				mustReplay(t, r, live)
				if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
					t.Fatalf("replayed Content-Type %q", ct)
				}
			}
			if up.Count() != 1 {
				t.Fatalf("upstream ran %d times, want 1", up.Count())
			}
		})
	}
}

// A 2xx too large to keep completes the record without a body: the
// upstream runs once, its client gets the whole answer, and duplicates
// waiting on it and later retries are told it succeeded. The answer comes
// with a Content-Length (held until it outgrows max_response) or chunked
// (flushed by reverse_proxy as it arrives).
func TestFidelityTooLarge(t *testing.T) {
	answer := fmt.Appendf(nil, `{"id":"obj-1","data":%q}`, strings.Repeat("x", 4<<10))
	for _, chunked := range []bool{false, true} {
		t.Run(map[bool]string{false: "Content-Length", true: "chunked"}[chunked], func(t *testing.T) {
			gate := make(chan struct{})
			up := testupstream.Start(t, func(w http.ResponseWriter, r *http.Request, n int) {
				if n == 1 {
					<-gate
				}
				w.Header().Set("Content-Type", "application/json")
				if !chunked {
					w.Header().Set("Content-Length", strconv.Itoa(len(answer)))
				}
				_, _ = w.Write(answer[:100])
				_ = http.NewResponseController(w).Flush() // without a Content-Length: chunked
				_, _ = w.Write(answer[100:])
			})
			open := opener(t, gate)
			loadSites(t, siteBlock(localSite(), "idempotency {\n\t\tstore memory\n\t\twait 10s\n\t\tmax_response 1KiB\n\t}", "reverse_proxy "+up.Addr()))
			c := siteClient(t, "")
			key := uniqueKey("large")
			send := func() reply {
				return sendTo(t, c, http.MethodPost, siteURL("/v1/responses"), []byte(`{"model":"m"}`), "Idempotency-Key", key)
			}

			owner := make(chan reply, 1)
			go func() { owner <- send() }()
			waitFor(t, "the owner upstream", func() bool { return up.Count() == 1 })
			const duplicates = 3
			waiting := make(chan reply, duplicates)
			for range duplicates {
				go func() { waiting <- send() }()
			}
			time.Sleep(300 * time.Millisecond) // real time for the duplicates to arrive and wait
			if len(waiting) != 0 || len(owner) != 0 {
				t.Fatalf("answered while the upstream is still running: %d duplicates, %d owner", len(waiting), len(owner))
			}
			open()

			first := <-owner
			mustFresh(t, first)
			if !bytes.Equal(first.Body, answer) {
				t.Fatalf("the owner got %d bytes, want the upstream's %d", len(first.Body), len(answer))
			}
			for range duplicates {
				mustNotStored(t, <-waiting)
			}
			mustNotStored(t, send())
			if up.Count() != 1 {
				t.Fatalf("upstream ran %d times, want 1", up.Count())
			}
		})
	}
}

// streamUpstream writes sseStream as server-sent events, one event every
// streamChunkGap, flushing each, and counts the streams it has ended.
func streamUpstream(finished *atomic.Int32) testupstream.Handler {
	return func(w http.ResponseWriter, r *http.Request, n int) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Cache-Control", "no-cache")
		w.WriteHeader(http.StatusOK)
		for i := range streamChunks {
			if i > 0 {
				time.Sleep(streamChunkGap) // a model producing its next tokens
			}
			_, _ = io.WriteString(w, sseEvent(i))
			_ = http.NewResponseController(w).Flush()
		}
		finished.Add(1)
	}
}

func sseEvent(i int) string {
	return fmt.Sprintf("data: {\"id\":\"chatcmpl-1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"tok%d\"}}]}\n\n", i)
}

// sseStream is the whole stream streamUpstream writes.
func sseStream() string {
	var b strings.Builder
	for i := range streamChunks {
		b.WriteString(sseEvent(i))
	}
	return b.String()
}
