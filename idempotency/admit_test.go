package idempotency

import (
	"bytes"
	"compress/flate"
	"compress/gzip"
	"compress/zlib"
	"context"
	"crypto/tls"
	"io"
	"mime/multipart"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// A request as a test case describes it: what admit sees.
type admitReq struct {
	method, target, host string
	tls                  bool
	listener             string   // the local address the request arrived on; "" for none
	header               []string // name, value pairs
	body                 []byte
	keyless              bool // no Idempotency-Key header is added
}

func (a admitReq) build() *http.Request {
	method := a.method
	if method == "" {
		method = http.MethodPost
	}
	target := a.target
	if target == "" {
		target = batchesPath
	}
	r := httptest.NewRequest(method, target, bytes.NewReader(a.body))
	if a.host != "" {
		r.Host = a.host
	}
	if a.tls {
		r.TLS = &tls.ConnectionState{}
	}
	if a.listener != "" {
		addr, err := net.ResolveTCPAddr("tcp", a.listener)
		if err != nil {
			panic(err)
		}
		r = r.WithContext(context.WithValue(r.Context(), http.LocalAddrContextKey, addr))
	}
	for i := 0; i+1 < len(a.header); i += 2 {
		r.Header.Add(a.header[i], a.header[i+1])
	}
	if !a.keyless && r.Header.Get("Idempotency-Key") == "" && !bytes.Contains(a.body, []byte(`"`+DefaultKeyField+`":"`)) {
		r.Header.Set("Idempotency-Key", "k-pair")
	}
	return r
}

func jsonReq(body string, header ...string) admitReq {
	return admitReq{body: []byte(body), header: append([]string{"Content-Type", "application/json"}, header...)}
}

func encoded(coding string, b []byte) []byte {
	var buf bytes.Buffer
	var w io.WriteCloser
	switch coding {
	case "gzip":
		w = gzip.NewWriter(&buf)
	case "deflate":
		w = zlib.NewWriter(&buf)
	case "raw-deflate":
		w, _ = flate.NewWriter(&buf, flate.DefaultCompression)
	case "zstd":
		w, _ = zstd.NewWriter(&buf)
	}
	_, _ = w.Write(b)
	_ = w.Close()
	return buf.Bytes()
}

func multipartBody(boundary string, parts ...[3]string) ([]byte, string) {
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	_ = mw.SetBoundary(boundary)
	for _, p := range parts { // name, filename, content
		var w io.Writer
		if p[1] != "" {
			w, _ = mw.CreateFormFile(p[0], p[1])
		} else {
			w, _ = mw.CreateFormField(p[0])
		}
		_, _ = io.WriteString(w, p[2])
	}
	_ = mw.Close()
	return buf.Bytes(), mw.FormDataContentType()
}

func multipartReq(boundary string, parts ...[3]string) admitReq {
	body, ct := multipartBody(boundary, parts...)
	return admitReq{target: "/v1/files", body: body, header: []string{"Content-Type", ct}}
}

func formReq(body string) admitReq {
	return admitReq{body: []byte(body), header: []string{"Content-Type", "application/x-www-form-urlencoded"}}
}

func admitted(t *testing.T, h *Handler, a admitReq) admission {
	t.Helper()
	adm, ref := h.admit(a.build())
	if ref != nil {
		t.Fatalf("admit(%s %s, %q) refused: %d %s %s", a.target, a.host, a.header, ref.status, ref.code, ref.message)
	}
	if !adm.keyed {
		t.Fatalf("admit(%s %s, %q) found no key", a.target, a.host, a.header)
	}
	return adm
}

// Requests that reach the upstream alike share a fingerprint and a record;
// requests that reach it differently, or come from another site, never do.
func TestAdmitFingerprintPairs(t *testing.T) {
	h, _ := newHandler(t, Config{})
	const batch = `{"input_file_id":"file-1","endpoint":"/v1/chat/completions","completion_window":"24h"}`
	pdf := strings.Repeat("%PDF-1.7 binary\x00\xff", 64)

	same := []struct {
		name string
		a, b admitReq
	}{
		{"query pair order", jsonReq(batch).at("/v1/batches?a=1&b=2"), jsonReq(batch).at("/v1/batches?b=2&a=1")},
		{"query with ; in pair order", jsonReq(batch).at("/v1/x?to=alice;x=1&y=2"), jsonReq(batch).at("/v1/x?y=2&to=alice;x=1")},
		{"empty query and none", jsonReq(batch).at("/v1/batches?"), jsonReq(batch).at("/v1/batches")},
		{"escaped unreserved path character", jsonReq(batch).at("/v1/%62atches"), jsonReq(batch).at("/v1/batches")},
		{"path escape hex case", jsonReq(batch).at("/v1/a%2fb"), jsonReq(batch).at("/v1/a%2Fb")},
		{"host case", jsonReq(batch).on("API.Example.COM"), jsonReq(batch).on("api.example.com")},
		{"default http port", jsonReq(batch).on("api.example.com:80"), jsonReq(batch).on("api.example.com")},
		{"default https port", jsonReq(batch).on("api.example.com:443").overTLS(), jsonReq(batch).on("api.example.com").overTLS()},
		{"Host port on one listener", jsonReq(batch).on("api.example.com:9999").via("127.0.0.1:8080"), jsonReq(batch).on("api.example.com").via("10.0.0.1:8080")},
		{"zstd body with a large window", jsonReq(batch).withBody(zstdFrame(22, []byte(batch))).with("Content-Encoding", "zstd"), jsonReq(batch)},
		{"gzip body", jsonReq(batch).coded("gzip"), jsonReq(batch)},
		{"x-gzip body", jsonReq(batch).coded("gzip").with("Content-Encoding", "x-gzip"), jsonReq(batch)},
		{"deflate (zlib) body", jsonReq(batch).coded("deflate"), jsonReq(batch)},
		{"raw deflate body", jsonReq(batch).coded("raw-deflate").with("Content-Encoding", "deflate"), jsonReq(batch)},
		{"zstd body", jsonReq(batch).coded("zstd"), jsonReq(batch)},
		{"gzip then zstd", jsonReq(batch).coded("gzip").coded("zstd"), jsonReq(batch)},
		{"identity coding", jsonReq(batch).with("Content-Encoding", "identity"), jsonReq(batch)},
		{"gzip raw body", admitReq{body: encoded("gzip", []byte(pdf)), header: []string{"Content-Type", "application/pdf", "Content-Encoding", "gzip"}},
			admitReq{body: []byte(pdf), header: []string{"Content-Type", "application/pdf"}}},
		{"key field null and absent", jsonReq(`{"idempotency_key":null,"a":1}`), jsonReq(`{"a":1}`)},
		{"key in the body and in the header", jsonReq(`{"a":1,"idempotency_key":"k-pair"}`), jsonReq(`{"a":1}`, "Idempotency-Key", "k-pair")},
		{"multipart boundary", multipartReq("AaB03x", [3]string{"purpose", "", "batch"}, [3]string{"file", "in.jsonl", pdf}),
			multipartReq("form-boundary-9f2c", [3]string{"purpose", "", "batch"}, [3]string{"file", "in.jsonl", pdf})},
		{"gzip multipart", multipartReq("AaB03x", [3]string{"purpose", "", "batch"}).coded("gzip"), multipartReq("zz", [3]string{"purpose", "", "batch"})},
		{"form pair order", formReq("a=1&b=2"), formReq("b=2&a=1")},
		{"form space spelling", formReq("q=a+b"), formReq("q=a%20b")},
		{"form escaped letter", formReq("q=%41"), formReq("q=A")},
	}
	for _, tc := range same {
		t.Run("same/"+tc.name, func(t *testing.T) {
			a, b := admitted(t, h, tc.a), admitted(t, h, tc.b)
			if a.fp != b.fp || a.rk != b.rk {
				t.Fatalf("fingerprints equal %v, records equal %v; want both", a.fp == b.fp, a.rk == b.rk)
			}
		})
	}

	differ := []struct {
		name     string
		a, b     admitReq
		byRecord bool // they differ by record key (another site), not fingerprint
	}{
		{"query value after ;", jsonReq(batch).at("/v1/x?to=alice;x=1"), jsonReq(batch).at("/v1/x?to=mallory;x=1"), false},
		{"query bad escape", jsonReq(batch).at("/v1/x?a=%zz&b=1"), jsonReq(batch).at("/v1/x?a=%yy&b=1"), false},
		{"query repeated pair", jsonReq(batch).at("/v1/x?a=1&a=1"), jsonReq(batch).at("/v1/x?a=1"), false},
		{"query escape is not decoded", jsonReq(batch).at("/v1/x?a=%41"), jsonReq(batch).at("/v1/x?a=A"), false},
		{"query empty pair", jsonReq(batch).at("/v1/x?a=1&"), jsonReq(batch).at("/v1/x?a=1"), false},
		{"query repeated name order", jsonReq(batch).at("/v1/x?model=a&model=b"), jsonReq(batch).at("/v1/x?model=b&model=a"), false},
		{"query repeated name, escaped", jsonReq(batch).at("/v1/x?a=1&%61=2"), jsonReq(batch).at("/v1/x?%61=2&a=1"), false},
		{"query repeated name, + and %20", jsonReq(batch).at("/v1/x?a+b=1&a%20b=2"), jsonReq(batch).at("/v1/x?a%20b=2&a+b=1"), false},
		{"query interleaved repeated names", jsonReq(batch).at("/v1/x?i=1&n=x&i=2&n=y"), jsonReq(batch).at("/v1/x?i=1&n=y&i=2&n=x"), false},
		{"query + and %20", jsonReq(batch).at("/v1/x?q=a+b"), jsonReq(batch).at("/v1/x?q=a%20b"), false},
		{"escaped slash", jsonReq(batch).at("/v1/a%2Fb"), jsonReq(batch).at("/v1/a/b"), false},
		{"escaped percent", jsonReq(batch).at("/v1/a%2541"), jsonReq(batch).at("/v1/aA"), false},
		{"another host", jsonReq(batch).on("openai.gw.example"), jsonReq(batch).on("selfhosted.gw.example"), true},
		{"another port", jsonReq(batch).on("gw.example:8443"), jsonReq(batch).on("gw.example"), true},
		{"https port without TLS", jsonReq(batch).on("gw.example:443"), jsonReq(batch).on("gw.example"), true},
		{"trailing dot", jsonReq(batch).on("api.example.com."), jsonReq(batch).on("api.example.com"), true},
		{"another listener, same Host", jsonReq(batch).on("127.0.0.1:18083").via("127.0.0.1:18080"), jsonReq(batch).on("127.0.0.1:18083").via("127.0.0.1:18083"), true},
		{"too many codings", jsonReq(batch).coded("gzip").coded("gzip").coded("gzip").coded("gzip"), jsonReq(batch), false},
		{"gzip of other content", jsonReq(batch).coded("gzip"), jsonReq(`{"a":1}`), false},
		{"unknown coding named", admitReq{body: []byte("abc"), header: []string{"Content-Encoding", "br"}}, admitReq{body: []byte("abc")}, false},
		{"unknown coding differs", admitReq{body: []byte("abc"), header: []string{"Content-Encoding", "br"}},
			admitReq{body: []byte("abc"), header: []string{"Content-Encoding", "compress"}}, false},
		{"compressed bytes sent as content", admitReq{body: encoded("gzip", []byte(pdf))}, admitReq{body: encoded("gzip", []byte(pdf)), header: []string{"Content-Encoding", "gzip"}}, false},
		{"multipart content", multipartReq("b", [3]string{"file", "in.jsonl", "a"}), multipartReq("b", [3]string{"file", "in.jsonl", "b"}), false},
		{"multipart file name", multipartReq("b", [3]string{"file", "a.jsonl", "x"}), multipartReq("b", [3]string{"file", "b.jsonl", "x"}), false},
		{"multipart part order", multipartReq("b", [3]string{"a", "", "1"}, [3]string{"b", "", "2"}),
			multipartReq("b", [3]string{"b", "", "2"}, [3]string{"a", "", "1"}), false},
		{"multipart and raw", multipartReq("b", [3]string{"a", "", "1"}), func() admitReq {
			r := multipartReq("b", [3]string{"a", "", "1"})
			r.header = []string{"Content-Type", "application/octet-stream"}
			return r
		}(), false},
		{"form value", formReq("a=1"), formReq("a=2"), false},
		{"form name without =", formReq("a"), formReq("a="), false},
		{"form repeated pair", formReq("a=1&a=1"), formReq("a=1"), false},
		{"form and JSON", formReq(`{"a":1}`), jsonReq(`{"a":1}`), false},
		{"form repeated name order", formReq("model=a&model=b"), formReq("model=b&model=a"), false},
		{"form repeated name with a bad escape", formReq("tag=100%&tag=a"), formReq("tag=a&tag=100%"), false},
		{"form repeated name, escaped", formReq("a=1&%61=2"), formReq("%61=2&a=1"), false},
		{"JSON sent as a form: +", formReq(`{"input":"2+2"}`), formReq(`{"input":"2 2"}`), false},
		{"JSON sent as a form: &", formReq(`{"input":"say &yes&no& now"}`), formReq(`{"input":"say &no&yes& now"}`), false},
		{"method", jsonReq(batch), func() admitReq { r := jsonReq(batch); r.method = http.MethodPut; return r }(), false},
	}
	hPut, _ := newHandler(t, Config{Methods: []string{http.MethodPost, http.MethodPut}})
	for _, tc := range differ {
		t.Run("differ/"+tc.name, func(t *testing.T) {
			a, b := admitted(t, hPut, tc.a), admitted(t, hPut, tc.b)
			if tc.byRecord {
				if a.rk == b.rk {
					t.Fatal("two sites share a record key")
				}
				return
			}
			if a.fp == b.fp {
				t.Fatal("the fingerprints are equal")
			}
		})
	}

	// A namespace puts several hosts on the same records.
	shared, _ := newHandler(t, Config{Namespace: "gateway"})
	a, b := admitted(t, shared, jsonReq(batch).on("openai.gw.example")), admitted(t, shared, jsonReq(batch).on("selfhosted.gw.example"))
	if a.rk != b.rk || a.fp != b.fp {
		t.Fatal("with a namespace, two hosts do not share the record")
	}
}

func (a admitReq) at(target string) admitReq    { a.target = target; return a }
func (a admitReq) on(host string) admitReq      { a.host = host; return a }
func (a admitReq) overTLS() admitReq            { a.tls = true; return a }
func (a admitReq) via(listener string) admitReq { a.listener = listener; return a }

// zstdFrame is b as one raw block in a zstd frame that declares a window of
// 1<<windowLog bytes (RFC 8878 §3.1.1), as streaming encoders such as the
// zstd CLI declare one much larger than a small body.
func zstdFrame(windowLog byte, b []byte) []byte {
	frame := []byte{0x28, 0xb5, 0x2f, 0xfd, 0x00, (windowLog - 10) << 3}
	size := len(b)<<3 | 1 // Last_Block, a raw block of len(b) bytes
	frame = append(frame, byte(size), byte(size>>8), byte(size>>16))
	return append(frame, b...)
}
func (a admitReq) with(name, value string) admitReq {
	h := append([]string(nil), a.header...)
	for i := 0; i+1 < len(h); i += 2 {
		if http.CanonicalHeaderKey(h[i]) == http.CanonicalHeaderKey(name) && name == "Content-Encoding" {
			h[i+1] = value
			a.header = h
			return a
		}
	}
	a.header = append(h, name, value)
	return a
}

// coded compresses the body with coding, adding it to Content-Encoding.
func (a admitReq) coded(coding string) admitReq {
	a.body = encoded(coding, a.body)
	name := coding
	if coding == "raw-deflate" {
		name = "deflate"
	}
	for i := 0; i+1 < len(a.header); i += 2 {
		if a.header[i] == "Content-Encoding" {
			h := append([]string(nil), a.header...)
			h[i+1] += ", " + name
			a.header = h
			return a
		}
	}
	a.header = append(append([]string(nil), a.header...), "Content-Encoding", name)
	return a
}

// Bad bodies are refused before anything is claimed, each with its code.
func TestAdmitRefusals(t *testing.T) {
	h, _ := newHandler(t, Config{MaxBody: 1 << 10})
	bomb := encoded("gzip", bytes.Repeat([]byte(" "), 1<<20))
	zbomb := encoded("zstd", bytes.Repeat([]byte(" "), 1<<20))
	for _, tc := range []struct {
		name   string
		req    admitReq
		status int
		code   string
	}{
		{"gzip bomb", jsonReq("").with("Content-Encoding", "gzip").withBody(bomb), http.StatusRequestEntityTooLarge, CodeRequestTooLarge},
		{"zstd bomb", jsonReq("").with("Content-Encoding", "zstd").withBody(zbomb), http.StatusRequestEntityTooLarge, CodeRequestTooLarge},
		{"keyless gzip bomb", jsonReq("").with("Content-Encoding", "gzip").withBody(bomb).withoutKey(), http.StatusRequestEntityTooLarge, CodeRequestTooLarge},
		{"broken gzip", jsonReq("").with("Content-Encoding", "gzip").withBody([]byte("not gzip at all")), http.StatusBadRequest, CodeInvalidEncoding},
		{"truncated gzip", jsonReq("").with("Content-Encoding", "gzip").withBody(encoded("gzip", []byte(`{"a":1}`))[:12]), http.StatusBadRequest, CodeInvalidEncoding},
		{"gzip of bad JSON", jsonReq(`{"a":`).coded("gzip"), http.StatusBadRequest, CodeInvalidJSON},
		{"multipart without boundary", admitReq{body: []byte("--x\r\n\r\n--x--"), header: []string{"Content-Type", "multipart/form-data"}}, http.StatusBadRequest, CodeInvalidMultipart},
		{"multipart with xboundary", admitReq{body: []byte("--x\r\n\r\n--x--"), header: []string{"Content-Type", "multipart/form-data; xboundary=AAA; boundary=x"}}, http.StatusBadRequest, CodeInvalidMultipart},
		{"multipart with boundary*", admitReq{body: []byte("--x\r\n\r\n--x--"), header: []string{"Content-Type", "multipart/form-data; boundary*=UTF-8''x; boundary=abc"}}, http.StatusBadRequest, CodeInvalidMultipart},
		{"zstd window over 8 MiB", jsonReq("").with("Content-Encoding", "zstd").withBody(zstdFrame(26, []byte(`{"a":1}`))), http.StatusBadRequest, CodeInvalidEncoding},
		{"truncated multipart", func() admitReq {
			r := multipartReq("b", [3]string{"file", "f", "content"})
			r.body = r.body[:len(r.body)-8]
			return r
		}(), http.StatusBadRequest, CodeInvalidMultipart},
		{"key field empty", jsonReq(`{"idempotency_key":""}`), http.StatusBadRequest, CodeInvalidKey},
		{"key field a number", jsonReq(`{"idempotency_key":1}`), http.StatusBadRequest, CodeInvalidKey},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, ref := h.admit(tc.req.build())
			if ref == nil || ref.status != tc.status || ref.code != tc.code {
				t.Fatalf("admit = %+v, want %d %s", ref, tc.status, tc.code)
			}
		})
	}
	// Without a key, a body that does not decode is not ours to judge.
	r := jsonReq("").with("Content-Encoding", "gzip").withBody([]byte("not gzip")).withoutKey().build()
	if a, ref := h.admit(r); ref != nil || a.keyed {
		t.Fatalf("a keyless undecodable body: %+v %+v, want a pass", a, ref)
	}
	if got, _ := io.ReadAll(r.Body); string(got) != "not gzip" || r.Header.Get("Content-Encoding") != "gzip" {
		t.Fatalf("the pass forwards %q with Content-Encoding %q, want the bytes as sent", got, r.Header.Get("Content-Encoding"))
	}
}

func (a admitReq) withBody(b []byte) admitReq { a.body = b; return a }
func (a admitReq) withoutKey() admitReq       { a.keyless = true; return a }

// The record key of a request with the default namespace is that of its
// DefaultNamespace: what the admin API is given to find it.
func TestDefaultNamespace(t *testing.T) {
	for _, tc := range []struct {
		req      admitReq
		listener string
		want     string
	}{
		{jsonReq("").on("API.Example.com"), "", "api.example.com@:80"},
		{jsonReq("").on("api.example.com").overTLS(), "", "api.example.com@:443"},
		{jsonReq("").on("api.example.com:8443"), "", "api.example.com@:8443"},
		{jsonReq("").on("api.example.com:8443").via("127.0.0.1:9000"), "", "api.example.com@:9000"},
		{jsonReq("").on("api.example.com:8443").via("127.0.0.1:9000"), "127.0.0.2:8480", "api.example.com@127.0.0.2:8480"},
		{jsonReq("").on("a.test."), "", "a.test.@:80"},
		{jsonReq("").on("[::1]:8080"), "", "::1@:8080"},
		{jsonReq("").on("[::1]").via("[::1]:443"), "", "::1@:443"},
		{jsonReq("").on("[a.test]]"), "", "a.test]@:80"},
	} {
		r := tc.req.build()
		if got := DefaultNamespace(r, tc.listener); got != tc.want {
			t.Errorf("DefaultNamespace(Host %q, %q) = %q, want %q", tc.req.host, tc.listener, got, tc.want)
		}
		h, _ := newHandler(t, Config{Listener: func(*http.Request) string { return tc.listener }})
		if got, want := h.recordKey(r, "s", "k"), NewRecordKey(tc.want, "s", "k"); got != want {
			t.Errorf("Host %q: the record key is not that of %q", tc.req.host, tc.want)
		}
	}
	h, _ := newHandler(t, Config{Namespace: "gw"})
	if h.recordKey(jsonReq("").build(), "s", "k") != NewRecordKey("gw", "s", "k") {
		t.Error("a configured namespace is not the record key's")
	}
}

// Host values are read as Caddy's host matcher reads them (MatchHost), so a
// namespace never joins two hosts Caddy routes apart.
func TestSplitHost(t *testing.T) {
	for in, want := range map[string][2]string{
		"a.test":        {"a.test", ""},
		"a.test:8080":   {"a.test", "8080"},
		"a.test:":       {"a.test", ""},
		"[::1]":         {"::1", ""},
		"[::1]:443":     {"::1", "443"},
		"[a.test]":      {"a.test", ""},
		"[a.test]]":     {"a.test]", ""},
		"[a.test]x":     {"a.test]x", ""},
		"[a.test]:x:y":  {"a.test]:x:y", ""},
		"[::1":          {"::1", ""},
		"":              {"", ""},
		"127.0.0.1:80":  {"127.0.0.1", "80"},
		"xn--bcher-kva": {"xn--bcher-kva", ""},
	} {
		if h, p := splitHost(in); h != want[0] || p != want[1] {
			t.Errorf("splitHost(%q) = %q, %q; want %q, %q", in, h, p, want[0], want[1])
		}
	}
}
