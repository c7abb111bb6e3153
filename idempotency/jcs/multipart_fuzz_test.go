package jcs

import (
	"bytes"
	"errors"
	"io"
	"mime/multipart"
	"net/textproto"
	"slices"
	"strconv"
	"strings"
	"testing"
)

func FuzzCanonicalMultipart(f *testing.F) {
	const cd = "Content-Disposition: form-data; name=\"a\"\r\n"
	f.Add([]byte(mpWriterBody(f, "AaB03x", mpField("model", "whisper-1"), mpFile("file", "a.wav", "audio/wav", "RIFF\r\n--AaB03"))), "AaB03x")
	f.Add([]byte(mpHandBody("b", cd+"\r\nv", "Content-Type: Text/Plain; charset=\"UTF-8\"\r\n"+cd+"\r\n")), "b")
	f.Add([]byte(mpHandBody("b", cd+"Content-Transfer-Encoding: quoted-printable\r\n\r\na=3Db", "\r\n")), "b")
	f.Add([]byte("preamble\r\n--b\nContent-Disposition: form-data; filename*=UTF-8''%E2%82%AC\n\nx\r\n--b--\nepilogue"), "b")
	f.Add([]byte("--b\r\n"+cd+"\r\nv\r\n--b\r\n"), "b")
	f.Add([]byte("--b\r\n"+cd), "b")
	f.Add([]byte("--b--"), "b")
	f.Add([]byte(""), "b")
	f.Add([]byte("--b\r\n\r\n\r\n--b--"), "")
	f.Fuzz(func(t *testing.T, body []byte, boundary string) {
		sameAsAppendMultipart(t, body, boundary)
		out, err := AppendMultipart(nil, body, boundary)
		again, err2 := AppendMultipart([]byte("x"), body, boundary)
		if (err == nil) != (err2 == nil) || err == nil && !bytes.Equal(again[1:], out) {
			t.Fatalf("not deterministic: %q, %v; then %q, %v", out, err, again, err2)
		}
		if err != nil {
			var fe *MultipartError
			if !errors.As(err, &fe) || !strings.HasPrefix(fe.Msg, "invalid multipart body: ") {
				t.Fatalf("err = %v (%T), want *MultipartError", err, err)
			}
			return
		}
		if !bytes.Contains(body, []byte("--"+boundary+"--")) {
			t.Fatalf("accepted a body without a close delimiter: %q", body)
		}
		parts, ok := rawParts(t, body, boundary)
		if !ok {
			return
		}
		other := "fuzz" + strconv.Itoa(len(body))
		for bytes.Contains(body, []byte(other)) {
			other += "z"
		}
		rebuilt := mpWriterBody(t, other, parts...)
		got, err := AppendMultipart(nil, []byte(rebuilt), other)
		if err != nil || !bytes.Equal(got, out) {
			t.Fatalf("rebuilt under boundary %q:\n%q\ngives %q, %v\nwant %q", other, rebuilt, got, err, out)
		}
	})
}

// rawParts reads the parts of a body that AppendMultipart accepted; ok is
// false when a header other than Content-Disposition and Content-Type (or a
// value multipart.Writer can't write back as it was) makes rebuilding the
// body under a new boundary not obviously equivalent.
func rawParts(t *testing.T, body []byte, boundary string) (parts []mpPart, ok bool) {
	mr := multipart.NewReader(bytes.NewReader(body), boundary)
	for {
		p, err := mr.NextRawPart()
		if err == io.EOF {
			return parts, true
		}
		if err != nil {
			t.Fatalf("accepted, but multipart.Reader fails: %v", err)
		}
		content, err := io.ReadAll(p)
		if err != nil {
			t.Fatalf("accepted, but multipart.Reader fails in a part: %v", err)
		}
		for k, vs := range p.Header {
			if k != "Content-Disposition" && k != "Content-Type" {
				return nil, false
			}
			if slices.ContainsFunc(vs, func(v string) bool { return strings.ContainsAny(v, "\r\n") }) {
				return nil, false
			}
		}
		parts = append(parts, mpPart{textproto.MIMEHeader(p.Header), string(content)})
	}
}
