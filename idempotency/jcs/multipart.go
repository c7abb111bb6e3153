package jcs

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"hash"
	"io"
	"mime"
	"mime/multipart"
	"net/textproto"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// multipartVersion tags the multipart encoding: bump it when the layout
// changes.
const multipartVersion = "multipart/v1"

// MultipartError reports a multipart/form-data body that has no canonical form
// (AppendMultipart's only error). Msg is printable ASCII, at most a few
// hundred bytes, safe to send to the client.
type MultipartError struct {
	Msg string // e.g. "invalid multipart body: part 2: body ends before the closing boundary"
	Err error  // the underlying cause, if any (e.g. multipart.ErrMessageTooLarge)
}

func (e *MultipartError) Error() string { return e.Msg }
func (e *MultipartError) Unwrap() error { return e.Err }

// AppendMultipart appends to dst the canonical encoding of a
// multipart/form-data body (RFC 7578) with the given boundary, the
// Content-Type's boundary parameter ("" when it has none). On error it
// returns dst as it was and a *MultipartError.
//
// A client picks the boundary at random, and SDKs such as the OpenAI Node
// SDK pick a new one each time they rebuild a FormData for a retry, so the
// encoding keeps what the upstream acts on and drops the framing. The
// content bytes are hashed as sent: the upstream receives them raw, so no
// Content-Transfer-Encoding is decoded.
//
// Layout (field = uvarint length + bytes; opt = 0, or 1 then a field):
//
//	field("multipart/v1")
//	per part, in order:
//	  'P'
//	  uvarint count of Content-Disposition headers, then each as
//	    'd' field(lower-cased type) opt(name) opt(filename)   parsed by mime.ParseMediaType
//	    'r' field(value, trimmed)                             unparsable, or with an extended (*=) parameter
//	  uvarint count of Content-Type headers, then each as
//	    'p' field(mime.FormatMediaType of the parsed value)   lower-cased type, sorted canonically quoted parameters
//	    'r' field(value, trimmed)                             unparsable
//	  uvarint count of Content-Transfer-Encoding headers, then each field(lower-cased, trimmed)
//	  uvarint count of other header names, then by lower-cased name:
//	    field(lower-cased name) uvarint(value count) field(value, trimmed)...
//	  field(SHA-256 of the part's content bytes as sent)
//	'E' uvarint(number of parts)
//
// The header counts are the presence flags: a part without Content-Type (0)
// differs from "text/plain" (1), one without a disposition from `form-data`,
// and `filename=""` (browsers' empty file input) from no filename. A
// disposition other than form-data is kept, type and all, rather than
// rejected. Other disposition parameters are ignored (RFC 7578 §4.2 defines
// only name and filename). A disposition with an extended parameter (RFC 2231
// filename*, name*) counts as written, since parsers disagree on whether it
// overrides the plain one. Every other part header follows, by lower-cased
// name, its values trimmed and in order: an upstream may read any of them.
// Content-Transfer-Encoding is kept
// because readers that decode it (Go's Reader.NextPart) give the upstream
// different data for the same raw bytes.
//
// Accepted syntax is what multipart.Reader accepts, with one exception: the
// closing delimiter `--boundary--` (RFC 2046 §5.1.1) is required.
// multipart.Reader reports a clean end when the body stops after a delimiter
// line or inside a part's headers; here that is a truncated body, as is one
// that stops inside a part. So "" is malformed, while "--boundary--" alone is
// a valid body with zero parts. Also malformed: an empty boundary, a body
// with no delimiter line, an unparsable part header block, and the reader's
// limits on part header count and size.
func AppendMultipart(dst, body []byte, boundary string) ([]byte, error) {
	if boundary == "" {
		return dst, multipartError("", errNoBoundary)
	}
	s := multipartScratchPool.Get().(*multipartScratch)
	defer s.release()
	s.src = endReader{b: body}
	return s.appendParts(dst, &s.src, boundary, func() bool { return endsWithCloseDelimiter(body, boundary) })
}

// AppendMultipartFrom is AppendMultipart for a body read from r: it appends
// the same encoding, holding no more of the body than a part header and a
// read buffer, so a body of any size is encoded in one pass (a spooled
// upload is hashed as it is written to disk). It reads r to the closing
// delimiter, not beyond: a caller that must see the whole body (the
// epilogue) reads the rest itself. An error of r other than io.EOF ends
// the encoding with a *MultipartError that wraps it.
func AppendMultipartFrom(dst []byte, r io.Reader, boundary string) ([]byte, error) {
	if boundary == "" {
		return dst, multipartError("", errNoBoundary)
	}
	s := multipartScratchPool.Get().(*multipartScratch)
	defer s.release()
	src := &lastLineReader{r: r, delim: "--" + boundary + "--", blank: true}
	return s.appendParts(dst, src, boundary, src.closeDelimiter)
}

// appendParts encodes the parts read from src (which ends with errBodyEnd,
// not io.EOF); closed reports whether the body's last line is a close
// delimiter, once src has ended.
func (s *multipartScratch) appendParts(dst []byte, src io.Reader, boundary string, closed func() bool) ([]byte, error) {
	mr := multipart.NewReader(src, boundary)
	start := len(dst)
	dst = canonField(dst, multipartVersion)
	n := 0
	for {
		p, err := mr.NextRawPart()
		if err == io.EOF || (errors.Is(err, errBodyEnd) && closed()) {
			break
		}
		if err != nil {
			where := ""
			if n > 0 {
				where = "after part " + strconv.Itoa(n)
			}
			return dst[:start], multipartError(where, err)
		}
		n++
		dst = appendPartHeaders(dst, p.Header)
		if dst, err = s.appendDigest(dst, p); err != nil {
			return dst[:start], multipartError("part "+strconv.Itoa(n), err)
		}
	}
	dst = append(dst, 'E')
	return binary.AppendUvarint(dst, uint64(n)), nil
}

var errNoBoundary = errors.New("no boundary parameter in the Content-Type")

// errBodyEnd stands in for io.EOF at the end of a multipart body. The reader
// treats io.EOF while reading a part's headers as the end of the parts; with
// any other error it reports the truncation.
var errBodyEnd = errors.New("body ends before the closing boundary")

// endReader reads b, then fails with errBodyEnd.
type endReader struct{ b []byte }

func (r *endReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, errBodyEnd
	}
	n := copy(p, r.b)
	r.b = r.b[n:]
	return n, nil
}

// endsWithCloseDelimiter: the body's last line, with no line break after
// it, is a close delimiter. It is where multipart.Reader, reading lines
// between parts, would accept io.EOF as the end; endReader hides that EOF.
func endsWithCloseDelimiter(body []byte, boundary string) bool {
	last := body[bytes.LastIndexByte(body, '\n')+1:]
	rest, ok := bytes.CutPrefix(last, []byte("--"+boundary+"--"))
	return ok && len(bytes.TrimLeft(rest, " \t")) == 0
}

// lastLineReader reads r, with errBodyEnd for its io.EOF, and follows the
// body's last line as it goes by: closeDelimiter is endsWithCloseDelimiter
// for a body it never holds.
type lastLineReader struct {
	r     io.Reader
	delim string // "--" + boundary + "--"
	line  []byte // the last line's first len(delim) bytes
	blank bool   // the last line has only spaces and tabs after them
}

func (l *lastLineReader) Read(p []byte) (int, error) {
	n, err := l.r.Read(p)
	l.see(p[:n])
	if err == io.EOF {
		err = errBodyEnd
	}
	return n, err
}

func (l *lastLineReader) see(b []byte) {
	if i := bytes.LastIndexByte(b, '\n'); i >= 0 {
		l.line, l.blank, b = l.line[:0], true, b[i+1:]
	}
	take := min(len(b), len(l.delim)-len(l.line))
	l.line = append(l.line, b[:take]...)
	if l.blank && len(bytes.TrimLeft(b[take:], " \t")) > 0 {
		l.blank = false
	}
}

func (l *lastLineReader) closeDelimiter() bool {
	return l.blank && string(l.line) == l.delim
}

// multipartScratch is what one AppendMultipart call needs, pooled: a
// hasher reused for every part and the copy buffer io.Copy would allocate.
type multipartScratch struct {
	h   hash.Hash
	buf []byte
	src endReader
}

var multipartScratchPool = sync.Pool{New: func() any {
	return &multipartScratch{h: sha256.New(), buf: make([]byte, 16<<10)}
}}

func (s *multipartScratch) release() {
	s.src = endReader{}
	multipartScratchPool.Put(s)
}

// appendDigest streams the part's raw content into the hasher and appends the
// digest as a field.
func (s *multipartScratch) appendDigest(dst []byte, p *multipart.Part) ([]byte, error) {
	s.h.Reset()
	if _, err := io.CopyBuffer(s.h, p, s.buf); err != nil {
		return dst, err
	}
	dst = binary.AppendUvarint(dst, sha256.Size)
	return s.h.Sum(dst), nil
}

func appendPartHeaders(dst []byte, h textproto.MIMEHeader) []byte {
	dst = append(dst, 'P')
	cd := h["Content-Disposition"]
	dst = binary.AppendUvarint(dst, uint64(len(cd)))
	for _, v := range cd {
		dst = appendDisposition(dst, v)
	}
	ct := h["Content-Type"]
	dst = binary.AppendUvarint(dst, uint64(len(ct)))
	for _, v := range ct {
		dst = appendPartMediaType(dst, v)
	}
	cte := h["Content-Transfer-Encoding"]
	dst = binary.AppendUvarint(dst, uint64(len(cte)))
	for _, v := range cte {
		dst = canonField(dst, strings.ToLower(strings.TrimSpace(v)))
	}
	return appendOtherPartHeaders(dst, h)
}

// appendOtherPartHeaders appends every other part header, by lower-cased
// name, values trimmed and in order: an upstream may read any of them, and
// one a parser reads under another name than Go does ("Content-Disposition :
// ...", with a space) must not go unseen. An SDK that rebuilds its form for
// a retry writes the same part headers again.
func appendOtherPartHeaders(dst []byte, h textproto.MIMEHeader) []byte {
	var names []string
	for name := range h {
		if !knownPartHeader[name] {
			names = append(names, name)
		}
	}
	// A total order: textproto keeps a name it cannot canonicalize ("X Foo")
	// as sent, so two names may differ only in case.
	slices.SortFunc(names, func(a, b string) int {
		if c := strings.Compare(strings.ToLower(a), strings.ToLower(b)); c != 0 {
			return c
		}
		return strings.Compare(a, b)
	})
	dst = binary.AppendUvarint(dst, uint64(len(names)))
	for _, name := range names {
		dst = canonField(dst, strings.ToLower(name))
		dst = binary.AppendUvarint(dst, uint64(len(h[name])))
		for _, v := range h[name] {
			dst = canonField(dst, strings.TrimSpace(v))
		}
	}
	return dst
}

var knownPartHeader = map[string]bool{"Content-Disposition": true, "Content-Type": true, "Content-Transfer-Encoding": true}

func appendDisposition(dst []byte, v string) []byte {
	v = strings.TrimSpace(v)
	typ, params, err := mime.ParseMediaType(v)
	// An extended parameter (RFC 2231 filename*, name*) overrides the plain
	// one for Go and not for every parser: such a value counts as written.
	if err != nil || strings.Contains(v, "*=") {
		return canonField(append(dst, 'r'), v)
	}
	dst = canonField(append(dst, 'd'), typ)
	dst = appendOptionalParam(dst, params, "name")
	return appendOptionalParam(dst, params, "filename")
}

func appendOptionalParam(dst []byte, params map[string]string, name string) []byte {
	v, ok := params[name]
	if !ok {
		return append(dst, 0)
	}
	return canonField(append(dst, 1), v)
}

func appendPartMediaType(dst []byte, v string) []byte {
	v = strings.TrimSpace(v)
	if typ, params, err := mime.ParseMediaType(v); err == nil {
		if f := mime.FormatMediaType(typ, params); f != "" {
			return canonField(append(dst, 'p'), f)
		}
	}
	return canonField(append(dst, 'r'), v)
}

// multipartError builds the *MultipartError for a failure at where ("" for the
// body as a whole, else e.g. "part 2").
func multipartError(where string, cause error) *MultipartError {
	msg := "invalid multipart body: "
	if where != "" {
		msg += where + ": "
	}
	if errors.Is(cause, errBodyEnd) {
		msg += errBodyEnd.Error()
	} else {
		msg += printableASCII(cause.Error(), 160)
	}
	return &MultipartError{Msg: msg, Err: cause}
}

// printableASCII keeps an error text that may quote the client's bytes
// (textproto quotes a malformed header line) short and plain.
func printableASCII(s string, limit int) string {
	if len(s) > limit {
		s = s[:limit] + "..."
	}
	return strings.Map(func(r rune) rune {
		if r < ' ' || r > '~' {
			return '?'
		}
		return r
	}, s)
}
