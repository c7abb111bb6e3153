package jcs

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

// sameAsAppendMultipart fails t unless AppendMultipartFrom, reading body
// whole, a byte at a time and in odd chunks, gives what AppendMultipart
// gives: the same encoding, or an error for the same bodies.
func sameAsAppendMultipart(t testing.TB, body []byte, boundary string) {
	t.Helper()
	want, wantErr := AppendMultipart([]byte("x"), body, boundary)
	readers := map[string]func() io.Reader{
		"whole":    func() io.Reader { return bytes.NewReader(body) },
		"one byte": func() io.Reader { return iotest.OneByteReader(bytes.NewReader(body)) },
		"halves":   func() io.Reader { return iotest.HalfReader(bytes.NewReader(body)) },
	}
	for name, reader := range readers {
		got, err := AppendMultipartFrom([]byte("x"), reader(), boundary)
		if (err == nil) != (wantErr == nil) || !bytes.Equal(got, want) {
			t.Fatalf("%s: AppendMultipartFrom(%q, %q) = %q, %v; AppendMultipart = %q, %v", name, body, boundary, got, err, want, wantErr)
		}
		if me, ok := errors.AsType[*MultipartError](err); err != nil && (!ok || !strings.HasPrefix(me.Msg, "invalid multipart body: ")) {
			t.Fatalf("%s: err = %v (%T), want a *MultipartError", name, err, err)
		}
	}
}

func TestCanonicalMultipartFromSameEncoding(t *testing.T) {
	const part = "Content-Disposition: form-data; name=a\r\n\r\nvalue"
	bodies := []struct{ body, boundary string }{
		{mpWriterBody(t, "AaB03x", mpField("model", "whisper-1"), mpFile("file", "a.wav", "audio/wav", "RIFF\r\n--AaB03")), "AaB03x"},
		{mpHandBody("b", part), "b"},
		{mpHandBody("b", part), ""},
		{"--b--", "b"},
		{"--b--  \t", "b"},
		{"--b--\r", "b"},
		{"x\n--b--", "b"},
		{"--b\r\n" + part + "\r\n--b--", "b"},
		{"--b\r\n" + part + "\r\n--b--\r\nepilogue", "b"},
		{"--b\r\n" + part + "\r\n--b--junk", "b"},
		{"--b\r\n" + part + "\r\n--b-", "b"},
		{"--b\r\n" + part + "\r\n--b", "b"},
		{"--b\r\n" + part + "\r\n--b\r\n", "b"},
		{"--b\r\n" + part, "b"},
		{"", "b"},
		{"garbage", "b"},
		{"preamble\r\n--b\nContent-Disposition: form-data; filename*=UTF-8''%E2%82%AC\n\nx\r\n--b--\nepilogue", "b"},
		{"--bnd\nContent-Disposition: form-data; name=a\n\nv\n--bnd\n\nw\n--bnd--\n", "bnd"},
	}
	for _, b := range bodies {
		sameAsAppendMultipart(t, []byte(b.body), b.boundary)
		for n := range len(b.body) { // every cut too
			sameAsAppendMultipart(t, []byte(b.body[:n]), b.boundary)
		}
	}
}

// A part larger than any buffer is hashed as it streams: the encoding of a
// 3 MiB file read in 1 KiB pieces is the in-memory one, and it holds to the
// same encoding under a new boundary.
func TestCanonicalMultipartFromLargePart(t *testing.T) {
	big := strings.Repeat("0123456789abcdef\r\n--", 3<<20/20)
	a := []byte(mpWriterBody(t, "first", mpField("purpose", "batch"), mpFile("file", "in.jsonl", "application/jsonl", big)))
	b := []byte(mpWriterBody(t, "second-boundary", mpField("purpose", "batch"), mpFile("file", "in.jsonl", "application/jsonl", big)))
	want, err := AppendMultipart(nil, a, "first")
	if err != nil {
		t.Fatal(err)
	}
	for body, boundary := range map[*[]byte]string{&a: "first", &b: "second-boundary"} {
		got, err := AppendMultipartFrom(nil, io.LimitReader(bytes.NewReader(*body), int64(len(*body))), boundary)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("boundary %q: %q, %v; want %q", boundary, got, err, want)
		}
	}
}

// A reader's own error ends the encoding, wrapped, so a caller can tell a
// body cut short from one that is not multipart.
func TestCanonicalMultipartFromReaderError(t *testing.T) {
	cause := errors.New("connection reset")
	body := mpWriterBody(t, "b", mpFile("file", "a.bin", "application/octet-stream", strings.Repeat("x", 10000)))
	r := io.MultiReader(strings.NewReader(body[:5000]), iotest.ErrReader(cause))
	_, err := AppendMultipartFrom(nil, r, "b")
	wantMultipartError(t, err, "invalid multipart body: ")
	if !errors.Is(err, cause) {
		t.Errorf("err = %v, want it to wrap the reader's error", err)
	}
}
