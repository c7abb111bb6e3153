package idempotency

import (
	"bytes"
	"compress/gzip"
	"context"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
)

// A stack of codings whose middle layer is large and decodes to nothing
// (empty gzip members inside a gzip, 32 KiB that decode to 32 MiB that
// decode to nothing): every layer is held to max_body, as in memory, so the
// upload gets 413 rather than decoding all of the middle layer. Grown a
// thousandfold, an unbounded middle layer takes minutes of CPU per request.
func TestSpoolStackedCodingBomb(t *testing.T) {
	var empty bytes.Buffer
	z := gzip.NewWriter(&empty)
	if err := z.Close(); err != nil {
		t.Fatal(err)
	}
	var outer bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&outer, gzip.BestCompression)
	chunk := bytes.Repeat(empty.Bytes(), 1<<16)
	for range (32 << 20) / len(chunk) {
		if _, err := zw.Write(chunk); err != nil {
			t.Fatal(err)
		}
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	h, store := newHandler(t, Config{MaxBody: 4 << 20, SpoolDir: dir})
	req := newRequest(t, http.MethodPost, "/v1/files", bytes.NewReader(outer.Bytes()))
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set("Content-Encoding", "gzip, gzip")
	req.Header.Set("Idempotency-Key", "k")
	wantError(t, answerAlone(t, h, req, "a stacked gzip bomb"), http.StatusRequestEntityTooLarge, CodeRequestTooLarge)
	wantNoSpoolFiles(t, dir)
	if _, ok := getRecord(t, store, newRequestNS, "", "k"); ok {
		t.Fatal("a refused body consumed its key")
	}
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// Under RequireScope, an upload without a scope is refused before its body
// is read: a caller refused is not worth a file.
func TestSpoolScopeBeforeBody(t *testing.T) {
	dir := t.TempDir()
	h, _ := newHandler(t, Config{MaxBody: 64 << 20, SpoolDir: dir, RequireScope: true})
	body := &countingReader{r: bytes.NewReader(bytes.Repeat([]byte("x"), 8<<20))}
	req := newRequest(t, http.MethodPost, "/v1/files", body)
	req.ContentLength = 8 << 20
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set("Idempotency-Key", "k")
	req.Header.Del("Authorization")
	wantError(t, answerAlone(t, h, req, "an upload without a scope"), http.StatusBadRequest, CodeScopeRequired)
	if n := body.n.Load(); n > 0 {
		t.Errorf("%d bytes of the body were read before the refusal", n)
	}
	wantNoSpoolFiles(t, dir)
}

// stalledReader blocks until ctx ends, as a client that stopped sending.
type stalledReader struct{ ctx context.Context }

func (s stalledReader) Read([]byte) (int, error) {
	<-s.ctx.Done()
	return 0, io.ErrUnexpectedEOF
}

// At most cap(zstdStreams) zstd decoders run for spooled uploads at once:
// one more upload gets 503 while they stall, and its key stays free; once
// they end, a zstd upload is spooled again.
func TestSpoolZstdDecodersBounded(t *testing.T) {
	var frame bytes.Buffer
	e, err := zstd.NewWriter(&frame)
	if err != nil {
		t.Fatal(err)
	}
	// Random bytes: the compressed body, half of which the stalled uploads
	// send, is larger than what admission holds in memory.
	noise := make([]byte, 64<<10)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range noise {
		noise[i] = byte(rng.Uint32())
	}
	if _, err := e.Write(noise); err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	h, store := newHandler(t, Config{MaxBody: 64 << 20, SpoolDir: dir})
	h.spoolAbove = spoolTestAbove
	upload := func(body io.Reader, key string) *http.Request {
		req := newRequest(t, http.MethodPost, "/v1/files", body)
		req.ContentLength = -1
		req.Header.Set("Content-Type", "application/octet-stream")
		req.Header.Set("Content-Encoding", "zstd")
		req.Header.Set("Idempotency-Key", key)
		return req
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	for i := range cap(zstdStreams) {
		go func() {
			defer func() { done <- struct{}{} }()
			req := upload(io.MultiReader(bytes.NewReader(frame.Bytes()[:frame.Len()/2]), stalledReader{ctx}), "stalled-"+string(rune('a'+i)))
			_ = answerAlone(t, h, req, "a stalled zstd upload")
		}()
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(zstdStreams) < cap(zstdStreams) {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d zstd decoders in use", len(zstdStreams), cap(zstdStreams))
		}
		time.Sleep(10 * time.Millisecond)
	}
	wantError(t, answerAlone(t, h, upload(bytes.NewReader(frame.Bytes()), "one-more"), "a zstd upload past the bound"),
		http.StatusServiceUnavailable, CodeSpoolUnavailable)
	if _, ok := getRecord(t, store, newRequestNS, "", "one-more"); ok {
		t.Fatal("an upload refused for want of a decoder consumed its key")
	}
	cancel()
	for range cap(zstdStreams) {
		<-done
	}
	if n := len(zstdStreams); n != 0 {
		t.Fatalf("%d zstd decoders still counted after their uploads ended", n)
	}
	calls := 0
	w := httptest.NewRecorder()
	if err := h.Handle(w, upload(bytes.NewReader(frame.Bytes()), "after"), okNext(&calls, "{}")); err != nil {
		t.Fatal(err)
	}
	if w.Code != http.StatusOK || calls != 1 {
		t.Fatalf("a zstd upload once the others ended: status %d, %d calls upstream; want 200 and 1", w.Code, calls)
	}
	wantNoSpoolFiles(t, dir)
}

// A body that is not the length its Content-Length says (an embedder's
// request; net/http never makes one) is the client's fault: 400
// request_body_unreadable, not the spool's 503.
func TestSpoolBodyLengthMismatch(t *testing.T) {
	dir := t.TempDir()
	h, _ := newHandler(t, Config{MaxBody: 8 << 20, SpoolDir: dir})
	h.spoolAbove = spoolTestAbove
	body := bytes.Repeat([]byte("y"), 64<<10)
	req := newRequest(t, http.MethodPost, "/v1/files", bytes.NewReader(body))
	req.ContentLength = int64(len(body)) + 10
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set("Idempotency-Key", "k")
	wantError(t, answerAlone(t, h, req, "a body shorter than its Content-Length"), http.StatusBadRequest, CodeBodyUnreadable)
	wantNoSpoolFiles(t, dir)
}
