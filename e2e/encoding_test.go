package e2e

import (
	"bytes"
	"compress/flate"
	"compress/gzip"
	"compress/zlib"
	"errors"
	"fmt"
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
	batches := serveBackend(t, backend)
	up := testupstream.Start(t, nil)
	loadSites(t, siteBlock(localSite(),
		"idempotency {\n\t\tstore memory\n\t\tmax_body 1MiB\n\t}",
		"handle /v1/batches {\n\t\treverse_proxy "+batches+"\n\t}",
		"handle {\n\t\treverse_proxy "+up.Addr()+"\n\t}"))
	c := siteClient(t, "")
	plain := []byte(`{"model":"m","input":"hello","n":1}`)
	reordered := []byte(`{ "n": 1.0, "input": "hello", "model": "m" }`) // the same JSON value
	other := []byte(`{"model":"m","input":"goodbye","n":1}`)

	for _, tc := range []struct {
		name, coding string
		encode       func(testing.TB, []byte) []byte
	}{
		{"gzip", "gzip", gzipBody},
		{"x-gzip", "x-gzip", gzipBody},
		{"deflate", "deflate", zlibBody},
		{"raw deflate", "deflate", rawDeflateBody}, // sent by some clients under this name
		{"zstd", "zstd", zstdBody},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key := uniqueKey("coded")
			before := up.Count()
			encoded := tc.encode(t, plain)
			first := sendTo(t, c, http.MethodPost, siteURL("/v1/responses"), encoded,
				"Content-Encoding", tc.coding, "Idempotency-Key", key)
			mustFresh(t, first)
			got := up.Last()
			if !bytes.Equal(got.Body, encoded) || got.Header.Get("Content-Encoding") != tc.coding ||
				got.Header.Get("Content-Length") != strconv.Itoa(len(encoded)) {
				t.Fatalf("upstream got %q (Content-Encoding %q, Content-Length %q), want the %d bytes as sent",
					got.Body, got.Header.Get("Content-Encoding"), got.Header.Get("Content-Length"), len(encoded))
			}
			// Retries send the same JSON uncompressed, as a client whose
			// compression is off on retries does, and respelled.
			mustReplay(t, sendTo(t, c, http.MethodPost, siteURL("/v1/responses"), plain, "Idempotency-Key", key), first)
			mustReplay(t, sendTo(t, c, http.MethodPost, siteURL("/v1/responses"), reordered, "Idempotency-Key", key), first)
			mustConflict(t, sendTo(t, c, http.MethodPost, siteURL("/v1/responses"), tc.encode(t, other),
				"Content-Encoding", tc.coding, "Idempotency-Key", key))
			if n := up.Count() - before; n != 1 {
				t.Fatalf("upstream saw %d requests, want 1", n)
			}
		})
	}

	t.Run("key field in a gzip body", func(t *testing.T) {
		withField := []byte(createBody(t, nil, uniqueKey("field")))
		first := sendTo(t, c, http.MethodPost, siteURL("/v1/batches"), gzipBody(t, withField), "Content-Encoding", "gzip")
		created := first.batch(t) // the backend rejects unknown fields and non-JSON bodies
		got := backend.LastCreate()
		if bytes.Contains(got.Body, []byte("idempotency_key")) || got.Header.Get("Content-Encoding") != "" ||
			got.ContentLength != int64(len(got.Body)) {
			t.Fatalf("upstream got %q, Content-Encoding %q, Content-Length %d: want the decoded body without the field",
				got.Body, got.Header.Get("Content-Encoding"), got.ContentLength)
		}
		mustFresh(t, first)
		mustReplay(t, sendTo(t, c, http.MethodPost, siteURL("/v1/batches"), withField), first)
		if backend.Creates() != 1 {
			t.Fatalf("backend creates %d for batch %s, want 1", backend.Creates(), created.ID)
		}
	})

	t.Run("decompression bomb", func(t *testing.T) {
		before := up.Count()
		bomb := gzipBody(t, append(bytes.Repeat([]byte(" "), 10<<20), "{}"...)) // 10 MiB of JSON whitespace
		if len(bomb) >= 1<<20 {
			t.Fatalf("the bomb is %d bytes compressed, want it under max_body", len(bomb))
		}
		r := sendTo(t, c, http.MethodPost, siteURL("/v1/responses"), bomb, "Content-Encoding", "gzip", "Idempotency-Key", uniqueKey("bomb"))
		r.apiError(t, http.StatusRequestEntityTooLarge, "request_too_large")
		if up.Count() != before {
			t.Fatalf("the bomb reached the upstream")
		}
	})

	t.Run("corrupt gzip", func(t *testing.T) {
		key := uniqueKey("corrupt")
		before := up.Count()
		good := gzipBody(t, plain)
		corrupt := good[:len(good)-12] // cut inside the deflate stream and its trailer
		r := sendTo(t, c, http.MethodPost, siteURL("/v1/responses"), corrupt, "Content-Encoding", "gzip", "Idempotency-Key", key)
		r.apiError(t, http.StatusBadRequest, "invalid_content_encoding")
		if up.Count() != before {
			t.Fatalf("a corrupt body reached the upstream")
		}
		// Nothing was claimed: the repaired request runs under the same key.
		mustFresh(t, sendTo(t, c, http.MethodPost, siteURL("/v1/responses"), good, "Content-Encoding", "gzip", "Idempotency-Key", key))
		if up.Count() != before+1 {
			t.Fatalf("the repaired request did not reach the upstream")
		}
	})
}

// b in each content coding. zlibBody is deflate as RFC 9110 names it, the
// zlib format; rawDeflateBody is what some clients send under that name.

func gzipBody(t testing.TB, b []byte) []byte {
	return encoded(t, b, func(w io.Writer) (io.WriteCloser, error) { return gzip.NewWriterLevel(w, gzip.BestCompression) })
}

func zlibBody(t testing.TB, b []byte) []byte {
	return encoded(t, b, func(w io.Writer) (io.WriteCloser, error) { return zlib.NewWriter(w), nil })
}

func rawDeflateBody(t testing.TB, b []byte) []byte {
	return encoded(t, b, func(w io.Writer) (io.WriteCloser, error) { return flate.NewWriter(w, flate.DefaultCompression) })
}

func zstdBody(t testing.TB, b []byte) []byte {
	return encoded(t, b, func(w io.Writer) (io.WriteCloser, error) { return zstd.NewWriter(w) })
}

func encoded(t testing.TB, b []byte, newWriter func(io.Writer) (io.WriteCloser, error)) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := newWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	_, err = w.Write(b)
	if err := errors.Join(err, w.Close()); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// A record is kept in the identity coding, whatever the first client
// accepted and whatever the upstream sent, since its replays go to clients
// that may accept nothing else; `encode` in front compresses each replay for
// its own client. Each case runs with an answer of known length and with a
// chunked one, which reverse_proxy flushes as it arrives.
func TestFidelityReplayEncoding(t *testing.T) {
	type testCase struct {
		name    string
		encode  bool // encode gzip in front of idempotency
		always  bool // the upstream gzips whatever it is asked
		chunked bool // the upstream sends no Content-Length
	}
	var cases []testCase
	for _, encode := range []bool{false, true} {
		for _, always := range []bool{false, true} {
			for _, chunked := range []bool{false, true} {
				name := map[bool]string{false: "no encode", true: "encode gzip"}[encode] +
					map[bool]string{false: ", negotiating upstream", true: ", always-gzip upstream"}[always] +
					map[bool]string{false: ", Content-Length", true: ", chunked"}[chunked]
				cases = append(cases, testCase{name, encode, always, chunked})
			}
		}
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			up := testupstream.Start(t, codingUpstream(tc.always, tc.chunked))
			lines := []string{"idempotency {\n\t\tstore memory\n\t}", "reverse_proxy " + up.Addr()}
			if tc.encode {
				lines = append([]string{"encode gzip"}, lines...)
			}
			loadSites(t, siteBlock(localSite(), lines...))
			c := siteClient(t, "")
			key := uniqueKey("coding")
			send := func(acceptEncoding string, headers ...string) reply {
				t.Helper()
				if acceptEncoding != "" {
					headers = append(headers, "Accept-Encoding", acceptEncoding)
				}
				return sendTo(t, c, http.MethodPost, siteURL("/v1/chat/completions"), []byte(`{"model":"m"}`), headers...)
			}
			want := largeJSON(1)

			first := send("gzip", "Idempotency-Key", key)
			mustFresh(t, first)
			// A chunked answer goes out as it arrives, as the upstream
			// coded it; this client accepts gzip.
			mustBeCoded(t, first, want, tc.encode || tc.always && tc.chunked)
			if ae := up.Last().Header.Get("Accept-Encoding"); ae != "identity" {
				t.Fatalf("the owner asked the upstream for Accept-Encoding %q, want identity", ae)
			}
			for _, ae := range []string{"gzip", "identity", "br", ""} {
				r := send(ae, "Idempotency-Key", key)
				if r.Status != http.StatusOK || r.Header.Get("Idempotent-Replayed") != "true" {
					t.Fatalf("Accept-Encoding %q: %d (Idempotent-Replayed %q), want a replay", ae, r.Status, r.Header.Get("Idempotent-Replayed"))
				}
				mustBeCoded(t, r, want, tc.encode && ae == "gzip")
			}
			if up.Count() != 1 {
				t.Fatalf("upstream saw %d requests, want 1", up.Count())
			}

			// The control: without a key the client's Accept-Encoding goes
			// upstream, and the upstream answers gzip.
			r := send("gzip")
			if ae := up.Last().Header.Get("Accept-Encoding"); ae != "gzip" || r.Header.Get("Content-Encoding") != "gzip" {
				t.Fatalf("keyless: upstream asked for %q, client got Content-Encoding %q; want gzip and gzip", ae, r.Header.Get("Content-Encoding"))
			}
		})
	}
}

// mustBeCoded checks that r's body is want, gzipped when gzipped is set and
// in the identity coding otherwise.
func mustBeCoded(t *testing.T, r reply, want []byte, gzipped bool) {
	t.Helper()
	ce := r.Header.Get("Content-Encoding")
	body := r.Body
	switch {
	case gzipped && ce != "gzip", !gzipped && ce != "":
		t.Fatalf("Content-Encoding %q, want gzip: %v", ce, gzipped)
	case gzipped:
		zr, err := gzip.NewReader(bytes.NewReader(r.Body))
		if err != nil {
			t.Fatalf("not gzip: %v", err)
		}
		if body, err = io.ReadAll(zr); err != nil {
			t.Fatalf("not gzip: %v", err)
		}
	}
	if !bytes.Equal(body, want) {
		t.Fatalf("body %.80q..., want %.80q...", body, want)
	}
}

// codingUpstream answers largeJSON(n), gzipped when the request
// accepts gzip or when always is set; chunked, in two flushed halves
// without a Content-Length, when chunked is set.
func codingUpstream(always, chunked bool) testupstream.Handler {
	return func(w http.ResponseWriter, r *http.Request, n int) {
		body := largeJSON(n)
		w.Header().Set("Content-Type", "application/json")
		if always || strings.Contains(r.Header.Get("Accept-Encoding"), "gzip") {
			var buf bytes.Buffer
			zw := gzip.NewWriter(&buf)
			_, _ = zw.Write(body)
			_ = zw.Close()
			w.Header().Set("Content-Encoding", "gzip")
			body = buf.Bytes()
		}
		if !chunked {
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
			_, _ = w.Write(body)
			return
		}
		half := len(body) / 2
		_, _ = w.Write(body[:half])
		_ = http.NewResponseController(w).Flush()
		_, _ = w.Write(body[half:])
	}
}

// largeJSON is the n-th answer: about 2 KiB, well over encode's minimum
// length, and different for every n.
func largeJSON(n int) []byte {
	return fmt.Appendf(nil, `{"id":"chatcmpl-%d","object":"chat.completion","content":%q}`, n, strings.Repeat("token ", 340))
}
