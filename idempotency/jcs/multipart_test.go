package jcs

import (
	"bytes"
	"errors"
	"io"
	"mime/multipart"
	"net/textproto"
	"strings"
	"testing"
)

// mpPart is one part for multipart.Writer.
type mpPart struct {
	header  textproto.MIMEHeader
	content string
}

func mpField(name, content string) mpPart {
	h := textproto.MIMEHeader{}
	h.Set("Content-Disposition", `form-data; name="`+name+`"`)
	return mpPart{h, content}
}

func mpFile(name, filename, contentType, content string) mpPart {
	h := textproto.MIMEHeader{}
	h.Set("Content-Disposition", `form-data; name="`+name+`"; filename="`+filename+`"`)
	h.Set("Content-Type", contentType)
	return mpPart{h, content}
}

// mpWriterBody encodes parts with multipart.Writer under boundary.
func mpWriterBody(t testing.TB, boundary string, parts ...mpPart) string {
	t.Helper()
	var buf bytes.Buffer
	w := multipart.NewWriter(&buf)
	if err := w.SetBoundary(boundary); err != nil {
		t.Fatal(err)
	}
	for _, p := range parts {
		pw, err := w.CreatePart(p.header)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(pw, p.content)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.String()
}

// mpHandBody frames raw parts ("headers\r\n\r\ncontent") with boundary b, CRLF.
func mpHandBody(b string, parts ...string) string {
	var s strings.Builder
	for i, p := range parts {
		if i > 0 {
			s.WriteString("\r\n")
		}
		s.WriteString("--" + b + "\r\n" + p)
	}
	if len(parts) > 0 {
		s.WriteString("\r\n")
	}
	s.WriteString("--" + b + "--\r\n")
	return s.String()
}

type mpInput struct{ body, boundary string }

func canonMultipart(t *testing.T, in mpInput) []byte {
	t.Helper()
	out, err := AppendMultipart(nil, []byte(in.body), in.boundary)
	if err != nil {
		t.Fatalf("AppendMultipart(%q, %q): %v", in.body, in.boundary, err)
	}
	return out
}

func TestCanonicalMultipartCollide(t *testing.T) {
	const cd = "Content-Disposition: form-data; name=\"a\"\r\n\r\nv"
	cases := []struct {
		name string
		a, b mpInput
	}{
		{"boundary",
			mpInput{mpWriterBody(t, "AaB03x", mpField("model", "whisper-1"), mpFile("file", "a.wav", "audio/wav", "RIFF\x00\x01")), "AaB03x"},
			mpInput{mpWriterBody(t, "----WebKitFormBoundary7MA4YWxkTrZu0gW", mpField("model", "whisper-1"), mpFile("file", "a.wav", "audio/wav", "RIFF\x00\x01")), "----WebKitFormBoundary7MA4YWxkTrZu0gW"}},
		{"writer and hand",
			mpInput{mpWriterBody(t, "x1", mpField("a", "v")), "x1"},
			mpInput{mpHandBody("y2", cd), "y2"}},
		{"quoting",
			mpInput{mpHandBody("b", cd), "b"},
			mpInput{mpHandBody("b", "Content-Disposition: form-data; name=a\r\n\r\nv"), "b"}},
		{"header name case",
			mpInput{mpHandBody("b", cd), "b"},
			mpInput{mpHandBody("b", "CONTENT-disposition: form-data; name=\"a\"\r\n\r\nv"), "b"}},
		{"whitespace",
			mpInput{mpHandBody("b", "Content-Disposition:form-data;name=\"a\"\r\n\r\nv"), "b"},
			mpInput{mpHandBody("b", "Content-Disposition: \t form-data ;  name = \"a\" ; \r\n\r\nv"), "b"}},
		{"folded header",
			mpInput{mpHandBody("b", cd), "b"},
			mpInput{mpHandBody("b", "Content-Disposition: form-data;\r\n name=\"a\"\r\n\r\nv"), "b"}},
		{"param order",
			mpInput{mpHandBody("b", "Content-Disposition: form-data; name=\"f\"; filename=\"x.txt\"\r\n\r\nv"), "b"},
			mpInput{mpHandBody("b", "Content-Disposition: form-data; filename=x.txt; name=f\r\n\r\nv"), "b"}},
		{"param name and type case",
			mpInput{mpHandBody("b", cd), "b"},
			mpInput{mpHandBody("b", "Content-Disposition: Form-Data; NAME=\"a\"\r\n\r\nv"), "b"}},
		{"unknown disposition params",
			mpInput{mpHandBody("b", cd), "b"},
			mpInput{mpHandBody("b", "Content-Disposition: form-data; name=\"a\"; size=1\r\n\r\nv"), "b"}},
		{"other part header spelling",
			mpInput{mpHandBody("b", "X-Foo: bar\r\nContent-Disposition: form-data; name=a\r\n\r\nv"), "b"},
			mpInput{mpHandBody("b", "Content-Disposition: form-data; name=a\r\nx-foo:  bar \r\n\r\nv"), "b"}},
		{"content type spelling",
			mpInput{mpHandBody("b", "Content-Disposition: form-data; name=a\r\nContent-Type: text/plain; charset=utf-8; format=flowed\r\n\r\nv"), "b"},
			mpInput{mpHandBody("b", "content-type: Text/Plain ; Format=\"flowed\";CHARSET=\"utf-8\"\r\nContent-Disposition: form-data; name=a\r\n\r\nv"), "b"}},
		{"transfer encoding case",
			mpInput{mpHandBody("b", cd[:len(cd)-5]+"\r\nContent-Transfer-Encoding: BINARY\r\n\r\nv"), "b"},
			mpInput{mpHandBody("b", cd[:len(cd)-5]+"\r\nContent-Transfer-Encoding: binary \r\n\r\nv"), "b"}},
		{"preamble and epilogue",
			mpInput{mpHandBody("b", cd), "b"},
			mpInput{"This is the preamble.\r\n\r\n" + mpHandBody("b", cd) + "\r\nepilogue\r\n--b\r\n", "b"}},
		{"no CRLF after close delimiter",
			mpInput{mpHandBody("b", cd), "b"},
			mpInput{strings.TrimSuffix(mpHandBody("b", cd), "\r\n"), "b"}},
		{"padding after delimiters",
			mpInput{mpHandBody("b", cd), "b"},
			mpInput{"--b \t\r\n" + cd + "\r\n--b--  ", "b"}},
		{"LF line endings",
			mpInput{mpHandBody("b", cd), "b"},
			mpInput{"--b\nContent-Disposition: form-data; name=a\n\nv\n--b--\n", "b"}},
		{"zero parts",
			mpInput{"--b--", "b"},
			mpInput{"preamble\r\n--zz--\r\nepilogue", "zz"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if a, b := canonMultipart(t, c.a), canonMultipart(t, c.b); !bytes.Equal(a, b) {
				t.Errorf("canonical forms differ:\n%q\n%q", a, b)
			}
		})
	}
}

func TestCanonicalMultipartDistinct(t *testing.T) {
	const b = "bnd"
	hand := func(parts ...string) mpInput { return mpInput{mpHandBody(b, parts...), b} }
	wr := func(parts ...mpPart) mpInput { return mpInput{mpWriterBody(t, b, parts...), b} }
	const cdA = "Content-Disposition: form-data; name=a\r\n"
	cases := []struct {
		name string
		a, b mpInput
	}{
		{"content by one byte", wr(mpField("a", "hello")), wr(mpField("a", "hellp"))},
		// An upstream may read any part header; one Go files under another
		// name (a space before the colon) still counts.
		{"extra part header", hand(cdA + "\r\nv"), hand("X-Foo: bar\r\n" + cdA + "\r\nv")},
		{"part header value", hand("X-Foo: bar\r\n" + cdA + "\r\nv"), hand("X-Foo: baz\r\n" + cdA + "\r\nv")},
		{"extended filename", hand("Content-Disposition: form-data; name=f; filename=\"evil.sh\"; filename*=UTF-8''ok.txt\r\n\r\nv"),
			hand("Content-Disposition: form-data; name=f; filename=\"other.sh\"; filename*=UTF-8''ok.txt\r\n\r\nv")},
		{"header names differing in case only", hand("X Foo: 1\r\nx foo: 2\r\n" + cdA + "\r\nv"), hand("X Foo: 2\r\nx foo: 1\r\n" + cdA + "\r\nv")},
		{"disposition under a misspelt name", hand("Content-Disposition : form-data; name=\"purpose\"\r\n\r\nv"),
			hand("Content-Disposition : form-data; name=\"model\"\r\n\r\nv")},
		{"content length", wr(mpField("a", "hello")), wr(mpField("a", "hello\r\n"))},
		{"part order", wr(mpField("a", "1"), mpField("b", "2")), wr(mpField("b", "2"), mpField("a", "1"))},
		{"name", wr(mpField("a", "1")), wr(mpField("b", "1"))},
		{"filename", wr(mpFile("f", "x.txt", "text/plain", "1")), wr(mpFile("f", "y.txt", "text/plain", "1"))},
		{"empty filename vs none", hand("Content-Disposition: form-data; name=f; filename=\"\"\r\n\r\n"), hand("Content-Disposition: form-data; name=f\r\n\r\n")},
		{"empty name vs none", hand("Content-Disposition: form-data; name=\"\"\r\n\r\nv"), hand("Content-Disposition: form-data\r\n\r\nv")},
		{"empty name vs no disposition", hand("Content-Disposition: form-data; name=\"\"\r\n\r\nv"), hand("\r\nv")},
		{"no disposition vs bare form-data", hand("\r\nv"), hand("Content-Disposition: form-data\r\n\r\nv")},
		{"disposition type", hand("Content-Disposition: form-data; name=a\r\n\r\nv"), hand("Content-Disposition: attachment; name=a\r\n\r\nv")},
		{"unparsable disposition", hand("Content-Disposition: form-data; name=a\r\n\r\nv"), hand("Content-Disposition: form-data; name=a; name=b\r\n\r\nv")},
		{"two dispositions", hand(cdA + "\r\nv"), hand(cdA + cdA + "\r\nv")},
		{"content type absent vs text/plain", hand(cdA + "\r\nv"), hand(cdA + "Content-Type: text/plain\r\n\r\nv")},
		{"content type params", hand(cdA + "Content-Type: text/plain; charset=utf-8\r\n\r\nv"), hand(cdA + "Content-Type: text/plain; charset=latin1\r\n\r\nv")},
		{"content type empty vs absent", hand(cdA + "Content-Type:\r\n\r\nv"), hand(cdA + "\r\nv")},
		{"content type unparsable vs parsed", hand(cdA + "Content-Type: text/plain; x\r\n\r\nv"), hand(cdA + "Content-Type: text/plain\r\n\r\nv")},
		{"one part vs split in two", wr(mpField("a", "12")), wr(mpField("a", "1"), mpField("a", "2"))},
		{"one empty part vs none", hand("\r\n"), hand()},
		{"content looking like a part", mpInput{mpWriterBody(t, "b1", mpField("a", "x\r\n--b2\r\nContent-Disposition: form-data; name=\"b\"\r\n\r\ny")), "b1"},
			mpInput{mpWriterBody(t, "b2", mpField("a", "x"), mpField("b", "y")), "b2"}},
		{"quoted-printable is hashed raw", hand(cdA + "Content-Transfer-Encoding: quoted-printable\r\n\r\na=3Db"), hand(cdA + "\r\na=b")},
		{"transfer encoding counts", hand(cdA + "Content-Transfer-Encoding: quoted-printable\r\n\r\na=3Db"), hand(cdA + "\r\na=3Db")},
		{"name and filename not confused", hand("Content-Disposition: form-data; name=x\r\n\r\nv"), hand("Content-Disposition: form-data; filename=x\r\n\r\nv")},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if a, b := canonMultipart(t, c.a), canonMultipart(t, c.b); bytes.Equal(a, b) {
				t.Errorf("canonical forms collide: %q", a)
			}
		})
	}
}

func TestCanonicalMultipartLayout(t *testing.T) {
	body := mpHandBody("b", "Content-Disposition: form-data; name=a; filename=\"\"\r\nContent-Type: Text/Plain\r\n\r\n")
	got := canonMultipart(t, mpInput{body, "b"})
	emptySHA := "\xe3\xb0\xc4\x42\x98\xfc\x1c\x14\x9a\xfb\xf4\xc8\x99\x6f\xb9\x24\x27\xae\x41\xe4\x64\x9b\x93\x4c\xa4\x95\x99\x1b\x78\x52\xb8\x55"
	want := "\x0cmultipart/v1" +
		"P" + "\x01" + "d\x09form-data" + "\x01\x01a" + "\x01\x00" + // disposition: name "a", filename ""
		"\x01" + "p\x0atext/plain" + // one Content-Type
		"\x00" + // no Content-Transfer-Encoding
		"\x00" + // no other headers
		"\x20" + emptySHA +
		"E\x01"
	if string(got) != want {
		t.Errorf("got  %q\nwant %q", got, want)
	}
}

func TestCanonicalMultipartAppends(t *testing.T) {
	body := []byte(mpHandBody("b", "\r\nv"))
	prefix := []byte("prefix")
	out, err := AppendMultipart(prefix, body, "b")
	if err != nil {
		t.Fatal(err)
	}
	alone, _ := AppendMultipart(nil, body, "b")
	if !bytes.Equal(out, append([]byte("prefix"), alone...)) {
		t.Errorf("got %q", out)
	}
	out, err = AppendMultipart(prefix, []byte("--b\r\n"), "b")
	if err == nil || string(out) != "prefix" {
		t.Errorf("on error: %q, %v; want dst unchanged", out, err)
	}
}

func wantMultipartError(t *testing.T, err error, prefix string) *MultipartError {
	t.Helper()
	var fe *MultipartError
	if !errors.As(err, &fe) {
		t.Fatalf("err = %v (%T), want *MultipartError", err, err)
	}
	if !strings.HasPrefix(fe.Msg, prefix) {
		t.Errorf("Msg = %q, want prefix %q", fe.Msg, prefix)
	}
	for _, c := range []byte(fe.Msg) {
		if c < ' ' || c > '~' {
			t.Errorf("Msg %q is not printable ASCII", fe.Msg)
			break
		}
	}
	return fe
}

func TestCanonicalMultipartMalformed(t *testing.T) {
	const part = "Content-Disposition: form-data; name=a\r\n\r\nvalue"
	valid := mpHandBody("b", part)
	cases := []struct {
		name, body, boundary string
	}{
		{"no boundary", valid, ""},
		{"other boundary", valid, "c"},
		{"empty body", "", "b"},
		{"garbage", "garbage", "b"},
		{"preamble only", "preamble\r\nmore\r\n", "b"},
		{"delimiter only", "--b\r\n", "b"},
		{"cut in part headers", "--b\r\nContent-Disposition: form-data; name=a", "b"},
		{"cut after part headers", "--b\r\n" + part[:len(part)-5], "b"},
		{"cut mid part", "--b\r\n" + part, "b"},
		{"cut after delimiter", "--b\r\n" + part + "\r\n--b\r\n", "b"},
		{"cut in next part headers", "--b\r\n" + part + "\r\n--b\r\nContent-Type: text/plain\r\n", "b"},
		{"no close delimiter", "--b\r\n" + part + "\r\n--b", "b"},
		{"half close delimiter", "--b\r\n" + part + "\r\n--b-", "b"},
		{"junk after close delimiter", "--b\r\n" + part + "\r\n--b--junk", "b"},
		{"header without colon", mpHandBody("b", "nocolon\r\n\r\nv"), "b"},
		{"header with leading space", mpHandBody("b", " Content-Type: a\r\n\r\nv"), "b"},
		{"control byte in header", mpHandBody("b", "Content-Type: a\rb\x00\r\n\r\nv"), "b"},
		{"unexpected line between parts", "--b\r\n" + part + "\r\n--b x\r\n--b--", "b"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out, err := AppendMultipart(nil, []byte(c.body), c.boundary)
			if err == nil {
				t.Fatalf("accepted %q: %q", c.body, out)
			}
			wantMultipartError(t, err, "invalid multipart body: ")
		})
	}
}

func TestCanonicalMultipartTooManyHeaders(t *testing.T) {
	var h strings.Builder
	for range 10001 {
		h.WriteString("X-A: 1\r\n")
	}
	_, err := AppendMultipart(nil, []byte(mpHandBody("b", h.String()+"\r\nv")), "b")
	wantMultipartError(t, err, "invalid multipart body: ")
	if !errors.Is(err, multipart.ErrMessageTooLarge) {
		t.Errorf("err = %v, want it to wrap multipart.ErrMessageTooLarge", err)
	}
}

// Every cut of a valid body before its close delimiter is complete is an error.
func TestCanonicalMultipartTruncated(t *testing.T) {
	bodies := []string{
		mpWriterBody(t, "bnd", mpField("a", "1"), mpFile("f", "x.bin", "application/octet-stream", "\r\n--bn\r\n\r\n"), mpField("", "")),
		"--bnd\nContent-Disposition: form-data; name=a\n\nv\n--bnd\n\nw\n--bnd--\n",
	}
	for _, body := range bodies {
		closeAt := strings.LastIndex(body, "--bnd--") + len("--bnd--")
		for n := range closeAt {
			if out, err := AppendMultipart(nil, []byte(body[:n]), "bnd"); err == nil {
				t.Errorf("accepted prefix %q: %q", body[:n], out)
			} else {
				wantMultipartError(t, err, "invalid multipart body: ")
			}
		}
		whole := canonMultipart(t, mpInput{body, "bnd"})
		if got := canonMultipart(t, mpInput{body[:closeAt], "bnd"}); !bytes.Equal(got, whole) {
			t.Errorf("without the final line break: %q, want %q", got, whole)
		}
	}
}

func BenchmarkCanonicalMultipart(b *testing.B) {
	big := strings.Repeat("0123456789abcdef", 1<<16) // 1 MiB
	body := []byte(mpWriterBody(b, "----WebKitFormBoundary7MA4YWxkTrZu0gW",
		mpField("model", "whisper-1"), mpField("language", "en"), mpField("response_format", "json"),
		mpFile("file", "audio.wav", "audio/wav", big)))
	var dst []byte
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		var err error
		if dst, err = AppendMultipart(dst[:0], body, "----WebKitFormBoundary7MA4YWxkTrZu0gW"); err != nil {
			b.Fatal(err)
		}
	}
}
