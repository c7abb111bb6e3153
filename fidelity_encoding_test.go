package caddyidempotency

import (
	"bytes"
	"compress/flate"
	"compress/gzip"
	"compress/zlib"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/caddy-idempotency/caddy-idempotency/internal/batchesbackend"
	"github.com/caddy-idempotency/caddy-idempotency/internal/testupstream"
)

// A request body in a Content-Encoding is fingerprinted by what it decodes
// to, and goes upstream as sent; only when the key field must come out is
// it sent decoded. A body that decodes past max_body, or does not decode,
// is refused before anything is claimed or forwarded.
func TestFidelityRequestEncoding(t *testing.T) {
	backend := batchesbackend.New()
	batches := newFidBatches(t, backend)
	up := testupstream.Start(t, nil)
	fidLoad(t, fidSite(fidLocalSite(),
		"idempotency {\n\t\tstore memory\n\t\tmax_body 1MiB\n\t}",
		"handle /v1/batches {\n\t\treverse_proxy "+batches+"\n\t}",
		"handle {\n\t\treverse_proxy "+up.Addr()+"\n\t}"))
	c := fidClient(t, "")
	plain := []byte(`{"model":"m","input":"hello","n":1}`)
	reordered := []byte(`{ "n": 1.0, "input": "hello", "model": "m" }`) // the same JSON value
	other := []byte(`{"model":"m","input":"goodbye","n":1}`)

	for _, tc := range []struct {
		name, coding string
		encode       func(testing.TB, []byte) []byte
	}{
		{"gzip", "gzip", fidGzip},
		{"x-gzip", "x-gzip", fidGzip},
		{"deflate", "deflate", fidZlib},
		{"raw deflate", "deflate", fidRawDeflate}, // sent by some clients under this name
		{"zstd", "zstd", fidZstd},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key := fidKey("coded")
			before := up.Count()
			encoded := tc.encode(t, plain)
			first := fidSend(t, c, http.MethodPost, fidURL("/v1/responses"), encoded,
				"Content-Encoding", tc.coding, "Idempotency-Key", key)
			fidFresh(t, first)
			got := up.Last()
			if !bytes.Equal(got.Body, encoded) || got.Header.Get("Content-Encoding") != tc.coding ||
				got.Header.Get("Content-Length") != strconv.Itoa(len(encoded)) {
				t.Fatalf("upstream got %q (Content-Encoding %q, Content-Length %q), want the %d bytes as sent",
					got.Body, got.Header.Get("Content-Encoding"), got.Header.Get("Content-Length"), len(encoded))
			}
			// Retries send the same JSON uncompressed, as a client whose
			// compression is off on retries does, and respelled.
			fidReplay(t, fidSend(t, c, http.MethodPost, fidURL("/v1/responses"), plain, "Idempotency-Key", key), first)
			fidReplay(t, fidSend(t, c, http.MethodPost, fidURL("/v1/responses"), reordered, "Idempotency-Key", key), first)
			fidConflict(t, fidSend(t, c, http.MethodPost, fidURL("/v1/responses"), tc.encode(t, other),
				"Content-Encoding", tc.coding, "Idempotency-Key", key))
			if n := up.Count() - before; n != 1 {
				t.Fatalf("upstream saw %d requests, want 1", n)
			}
		})
	}

	t.Run("key field in a gzip body", func(t *testing.T) {
		withField := []byte(createBody(t, nil, fidKey("field")))
		first := fidSend(t, c, http.MethodPost, fidURL("/v1/batches"), fidGzip(t, withField), "Content-Encoding", "gzip")
		created := first.batch(t) // the backend rejects unknown fields and non-JSON bodies
		got := backend.LastCreate()
		if bytes.Contains(got.Body, []byte("idempotency_key")) || got.Header.Get("Content-Encoding") != "" ||
			got.ContentLength != int64(len(got.Body)) {
			t.Fatalf("upstream got %q, Content-Encoding %q, Content-Length %d: want the decoded body without the field",
				got.Body, got.Header.Get("Content-Encoding"), got.ContentLength)
		}
		fidFresh(t, first)
		fidReplay(t, fidSend(t, c, http.MethodPost, fidURL("/v1/batches"), withField), first)
		if backend.Creates() != 1 {
			t.Fatalf("backend creates %d for batch %s, want 1", backend.Creates(), created.ID)
		}
	})

	t.Run("decompression bomb", func(t *testing.T) {
		before := up.Count()
		bomb := fidGzip(t, append(bytes.Repeat([]byte(" "), 10<<20), "{}"...)) // 10 MiB of JSON whitespace
		if len(bomb) >= 1<<20 {
			t.Fatalf("the bomb is %d bytes compressed, want it under max_body", len(bomb))
		}
		r := fidSend(t, c, http.MethodPost, fidURL("/v1/responses"), bomb, "Content-Encoding", "gzip", "Idempotency-Key", fidKey("bomb"))
		r.apiError(t, http.StatusRequestEntityTooLarge, "request_too_large")
		if up.Count() != before {
			t.Fatalf("the bomb reached the upstream")
		}
	})

	t.Run("corrupt gzip", func(t *testing.T) {
		key := fidKey("corrupt")
		before := up.Count()
		good := fidGzip(t, plain)
		corrupt := good[:len(good)-12] // cut inside the deflate stream and its trailer
		r := fidSend(t, c, http.MethodPost, fidURL("/v1/responses"), corrupt, "Content-Encoding", "gzip", "Idempotency-Key", key)
		r.apiError(t, http.StatusBadRequest, "invalid_content_encoding")
		if up.Count() != before {
			t.Fatalf("a corrupt body reached the upstream")
		}
		// Nothing was claimed: the repaired request runs under the same key.
		fidFresh(t, fidSend(t, c, http.MethodPost, fidURL("/v1/responses"), good, "Content-Encoding", "gzip", "Idempotency-Key", key))
		if up.Count() != before+1 {
			t.Fatalf("the repaired request did not reach the upstream")
		}
	})
}

// The handler reads a keyed body before it forwards it, so the upstream is
// sent a body with nothing left to ask: no Expect: 100-continue.
func TestFidelityExpect(t *testing.T) {
	up := testupstream.Start(t, nil)
	fidLoad(t, fidSite(fidLocalSite(), "idempotency {\n\t\tstore memory\n\t}", "reverse_proxy "+up.Addr()))
	c := fidClient(t, "")
	for _, tc := range []struct {
		name        string
		contentType string
		body        string
		key         bool // an Idempotency-Key header
		wantExpect  bool
	}{
		{"header key, JSON", "application/json", `{"input":"x"}`, true, false},
		{"body field key", "application/json", `{"input":"x","idempotency_key":"` + fidKey("expect") + `"}`, false, false},
		{"header key, text", "text/plain", "some text", true, false},
		// The control: a body the handler never reads keeps its Expect, so
		// the upstream would show one that the handler had left.
		{"no key, text", "text/plain", "some text", false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			headers := []string{"Content-Type", tc.contentType, "Expect", "100-continue"}
			if tc.key {
				headers = append(headers, "Idempotency-Key", fidKey("expect"))
			}
			fidFresh(t, fidSend(t, c, http.MethodPost, fidURL("/v1/responses"), []byte(tc.body), headers...))
			got := up.Last()
			if has := strings.EqualFold(got.Header.Get("Expect"), "100-continue"); has != tc.wantExpect || string(got.Body) == "" {
				t.Fatalf("upstream Expect %q with body %q; want Expect: %v", got.Header.Get("Expect"), got.Body, tc.wantExpect)
			}
		})
	}
}

func fidGzip(t testing.TB, b []byte) []byte {
	var buf bytes.Buffer
	w, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	fidCompress(t, w, b)
	return buf.Bytes()
}

// fidZlib is deflate as RFC 9110 names it: the zlib format.
func fidZlib(t testing.TB, b []byte) []byte {
	var buf bytes.Buffer
	fidCompress(t, zlib.NewWriter(&buf), b)
	return buf.Bytes()
}

func fidRawDeflate(t testing.TB, b []byte) []byte {
	var buf bytes.Buffer
	w, _ := flate.NewWriter(&buf, flate.DefaultCompression)
	fidCompress(t, w, b)
	return buf.Bytes()
}

func fidZstd(t testing.TB, b []byte) []byte {
	var buf bytes.Buffer
	w, err := zstd.NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	fidCompress(t, w, b)
	return buf.Bytes()
}

func fidCompress(t testing.TB, w io.WriteCloser, b []byte) {
	t.Helper()
	if _, err := w.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
}
