package caddyidempotency

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/caddy-idempotency/caddy-idempotency/internal/testupstream"
)

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
			up := testupstream.Start(t, fidCodingUpstream(tc.always, tc.chunked))
			lines := []string{"idempotency {\n\t\tstore memory\n\t}", "reverse_proxy " + up.Addr()}
			if tc.encode {
				lines = append([]string{"encode gzip"}, lines...)
			}
			fidLoad(t, fidSite(fidLocalSite(), lines...))
			c := fidClient(t, "")
			key := fidKey("coding")
			send := func(acceptEncoding string, headers ...string) reply {
				t.Helper()
				if acceptEncoding != "" {
					headers = append(headers, "Accept-Encoding", acceptEncoding)
				}
				return fidSend(t, c, http.MethodPost, fidURL("/v1/chat/completions"), []byte(`{"model":"m"}`), headers...)
			}
			want := fidLargeJSON(1)

			first := send("gzip", "Idempotency-Key", key)
			fidFresh(t, first)
			// A chunked answer goes out as it arrives, as the upstream
			// coded it; this client accepts gzip.
			fidCoded(t, first, want, tc.encode || tc.always && tc.chunked)
			if ae := up.Last().Header.Get("Accept-Encoding"); ae != "identity" {
				t.Fatalf("the owner asked the upstream for Accept-Encoding %q, want identity", ae)
			}
			for _, ae := range []string{"gzip", "identity", "br", ""} {
				r := send(ae, "Idempotency-Key", key)
				if r.Status != http.StatusOK || r.Header.Get("Idempotent-Replayed") != "true" {
					t.Fatalf("Accept-Encoding %q: %d (Idempotent-Replayed %q), want a replay", ae, r.Status, r.Header.Get("Idempotent-Replayed"))
				}
				fidCoded(t, r, want, tc.encode && ae == "gzip")
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

// fidCoded checks that r's body is want, gzipped when gzipped is set and
// in the identity coding otherwise.
func fidCoded(t *testing.T, r reply, want []byte, gzipped bool) {
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

// fidCodingUpstream answers fidLargeJSON(n), gzipped when the request
// accepts gzip or when always is set; chunked, in two flushed halves
// without a Content-Length, when chunked is set.
func fidCodingUpstream(always, chunked bool) testupstream.Handler {
	return func(w http.ResponseWriter, r *http.Request, n int) {
		body := fidLargeJSON(n)
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

// fidLargeJSON is the n-th answer: about 2 KiB, well over encode's minimum
// length, and different for every n.
func fidLargeJSON(n int) []byte {
	return fmt.Appendf(nil, `{"id":"chatcmpl-%d","object":"chat.completion","content":%q}`, n, strings.Repeat("token ", 340))
}
