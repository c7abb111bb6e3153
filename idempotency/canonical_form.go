package idempotency

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
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// Canonical forms of form bodies for the request fingerprint.
//
// A multipart/form-data body (RFC 7578) is framed by a boundary that the
// client picks at random, and SDKs such as the OpenAI Node SDK pick a new one
// each time they rebuild a FormData for a retry. Hashing the raw bytes would
// turn every such retry into "key reused". The canonical form keeps what the
// upstream acts on — the parts in order, each part's name, filename, media
// type and transfer encoding, and its content bytes exactly as sent (the
// upstream receives the raw bytes, so no transfer decoding is applied) — and
// drops the framing: the boundary, the preamble and epilogue, header-name
// case, whitespace, and parameter quoting and order.
//
// An application/x-www-form-urlencoded body is reduced to its decoded
// name/value pairs, sorted, following the WHATWG URL standard's
// application/x-www-form-urlencoded parser, but stricter where servers
// disagree (see canonicalURLEncoded).
//
// Both encodings start with a version tag and length-prefix every variable
// field (uvarint length, then the bytes), so no two different inputs to the
// fingerprint share an encoding. Bump a tag when its layout changes.
const (
	multipartCanonVersion = "multipart/v1"
	formCanonVersion      = "form/v1"
)

// FormError reports a multipart/form-data or application/x-www-form-urlencoded
// body that cannot be canonicalized; the handler answers 400. Msg is printable
// ASCII, at most a few hundred bytes, safe to send to the client.
type FormError struct {
	Msg string // e.g. "invalid multipart body: part 2: body ends before the closing boundary"
	Err error  // the underlying cause, if any (e.g. multipart.ErrMessageTooLarge)
}

func (e *FormError) Error() string { return e.Msg }
func (e *FormError) Unwrap() error { return e.Err }

// canonicalMultipart appends to dst a canonical encoding of a
// multipart/form-data body with the given boundary (the handler passes "" when
// the Content-Type has none). On error it returns dst cut back to its original
// length and a *FormError.
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
// rejected. Other disposition parameters are ignored (RFC 7578 defines only
// name and filename). A disposition with an extended parameter (RFC 2231
// filename*, name*) counts as written, since parsers disagree on whether it
// overrides the plain one. Every other
// part header follows, by lower-cased name (see appendOtherPartHeaders).
// Content-Transfer-Encoding is kept because readers that decode it (Go's
// Reader.NextPart) give the upstream different data for the same raw bytes.
//
// Accepted syntax is what multipart.Reader accepts, with one exception: the
// closing delimiter `--boundary--` is required. multipart.Reader reports a
// clean end when the body stops after a delimiter line or inside a part's
// headers; here that is a truncated body, as is one that stops inside a part.
// So "" is malformed, while "--boundary--" alone is a valid body with zero
// parts. Also malformed: an empty boundary (no boundary parameter), a body with
// no delimiter line, an unparsable part header block, and the reader's limits
// on part header count and size.
func canonicalMultipart(dst, body []byte, boundary string) ([]byte, error) {
	if boundary == "" {
		return dst, multipartError("", errNoBoundary)
	}
	s := multipartScratchPool.Get().(*multipartScratch)
	defer s.release()
	s.src = endReader{b: body}
	mr := multipart.NewReader(&s.src, boundary)

	start := len(dst)
	dst = canonField(dst, multipartCanonVersion)
	n := 0
	for {
		p, err := mr.NextRawPart()
		if err == io.EOF || (errors.Is(err, errBodyEnd) && endsWithCloseDelimiter(body, boundary)) {
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

// multipartScratch is what one canonicalMultipart call needs, pooled: a
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

// multipartError builds the *FormError for a failure at where ("" for the
// body as a whole, else e.g. "part 2").
func multipartError(where string, cause error) *FormError {
	msg := "invalid multipart body: "
	if where != "" {
		msg += where + ": "
	}
	if errors.Is(cause, errBodyEnd) {
		msg += errBodyEnd.Error()
	} else {
		msg += printableASCII(cause.Error(), 160)
	}
	return &FormError{Msg: msg, Err: cause}
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

// canonicalURLEncoded appends to dst a canonical encoding of an
// application/x-www-form-urlencoded body: its name/value pairs, decoded and
// ordered by name. The error is always nil today (every byte string parses,
// as in the WHATWG parser); it is there so callers treat both form kinds
// alike. Only a body that a form serializer could have written is read this
// way (see isSerializedForm); the handler hashes any other as raw bytes.
//
// Parsing follows the WHATWG URL standard (application/x-www-form-urlencoded
// parsing): split on '&' only (';' is data), skip empty segments, split each
// at its first '=', then decode name and value with url.QueryUnescape ('+'
// and %20 are both a space, %41 is A). It keeps apart what servers disagree
// on, where WHATWG would merge it: a segment without '=' differs from
// "name=", and a segment with an invalid escape (%zz, %4), which WHATWG keeps
// literally and Go's url.ParseQuery drops, is kept as its raw text, tagged so
// it equals no decoded pair. Duplicates are kept. Pairs are ordered by their
// names, decoded as the WHATWG parser decodes them (invalid escapes kept, so
// a raw pair sorts with the others of its name), and pairs of one name keep
// their order: form handlers look pairs up by name, and one that reads the
// first of a repeated name tells model=a&model=b from model=b&model=a.
//
// Layout: field("form/v1"), uvarint(number of pairs), then the pairs, each
// one of
//
//	'd' field(name) 0                 no '='
//	'd' field(name) 1 field(value)
//	'r' field(segment)                invalid escape
//
// Two bodies share an encoding exactly when they have the same pairs in the
// same order within each name.
func canonicalURLEncoded(dst, body []byte) ([]byte, error) {
	s := formScratchPool.Get().(*formScratch)
	defer s.release()
	for seg := range bytes.SplitSeq(body, []byte{'&'}) {
		if len(seg) > 0 {
			s.add(seg)
		}
	}
	slices.SortStableFunc(s.spans, func(a, b formSpan) int {
		return bytes.Compare(s.names[a.nameStart:a.nameEnd], s.names[b.nameStart:b.nameEnd])
	})
	dst = canonField(dst, formCanonVersion)
	dst = binary.AppendUvarint(dst, uint64(len(s.spans)))
	for _, sp := range s.spans {
		dst = append(dst, s.enc[sp.start:sp.end]...)
	}
	return dst, nil
}

// formScratch holds the pair encodings of one body until they are sorted.
type formScratch struct {
	enc   []byte
	names []byte // each pair's name, decoded leniently: its sort key
	spans []formSpan
}

type formSpan struct{ start, end, nameStart, nameEnd int }

var formScratchPool = sync.Pool{New: func() any { return new(formScratch) }}

func (s *formScratch) release() {
	if cap(s.enc) > 64<<10 || cap(s.spans) > 4<<10 {
		return // a large body's buffers are not kept pooled
	}
	s.enc, s.names, s.spans = s.enc[:0], s.names[:0], s.spans[:0]
	formScratchPool.Put(s)
}

func (s *formScratch) add(seg []byte) {
	start, nameStart := len(s.enc), len(s.names)
	s.enc = appendFormPair(s.enc, seg)
	name, _, _ := bytes.Cut(seg, []byte{'='})
	s.names = appendLenientUnescape(s.names, name)
	s.spans = append(s.spans, formSpan{start, len(s.enc), nameStart, len(s.names)})
}

func appendFormPair(dst, seg []byte) []byte {
	start := len(dst)
	name, value, hasValue := bytes.Cut(seg, []byte{'='})
	dst, ok := appendUnescaped(append(dst, 'd'), name)
	if ok && !hasValue {
		return append(dst, 0)
	}
	if ok {
		if dst, ok = appendUnescaped(append(dst, 1), value); ok {
			return dst
		}
	}
	return canonFieldBytes(append(dst[:start], 'r'), seg)
}

// appendLenientUnescape appends raw decoded as the WHATWG urlencoded parser
// decodes it: '+' is a space, a valid %XX its byte, and an invalid escape
// stays as it is. It is how servers find the name a pair belongs to.
func appendLenientUnescape(dst, raw []byte) []byte {
	for i := 0; i < len(raw); i++ {
		switch c := raw[i]; {
		case c == '+':
			dst = append(dst, ' ')
		case c == '%' && i+2 < len(raw) && isHex(raw[i+1]) && isHex(raw[i+2]):
			dst = append(dst, unhex(raw[i+1])<<4|unhex(raw[i+2]))
			i += 2
		default:
			dst = append(dst, c)
		}
	}
	return dst
}

// isSerializedForm reports whether body could have come from a form
// serializer (the WHATWG urlencoded serializer, JavaScript's
// encodeURIComponent, Go's url.Values.Encode, Python's urlencode): only
// letters, digits, percent-escapes, '+', '=', '&' and -._~*!'(). Any other
// byte (a JSON body sent with curl's default Content-Type, say) means the
// body is not a form to the client that wrote it, so it is hashed as raw
// bytes: decoding it as a form would merge "2+2" with "2 2".
func isSerializedForm(body []byte) bool {
	for _, c := range body {
		if !formByte[c] {
			return false
		}
	}
	return true
}

var formByte = func() (t [256]bool) {
	for c := range 256 {
		t[c] = 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("%+=&-._~*!'()", byte(c)) >= 0
	}
	return t
}()

// appendUnescaped appends the decoded form of one name or value as a field;
// ok is false when its escapes are invalid.
func appendUnescaped(dst, raw []byte) (_ []byte, ok bool) {
	if bytes.IndexAny(raw, "%+") < 0 {
		return canonFieldBytes(dst, raw), true // nothing to decode: no string copy
	}
	s, err := url.QueryUnescape(string(raw))
	if err != nil {
		return dst, false
	}
	return canonField(dst, s), true
}

// canonField appends s length-prefixed.
func canonField(dst []byte, s string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

func canonFieldBytes(dst, b []byte) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(b)))
	return append(dst, b...)
}
