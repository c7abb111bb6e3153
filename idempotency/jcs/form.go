package jcs

import (
	"bytes"
	"encoding/binary"
	"net/url"
	"slices"
	"strings"
	"sync"
)

// formVersion tags the form encoding: bump it when the layout changes.
const formVersion = "form/v1"

// AppendForm appends to dst the canonical encoding of an
// application/x-www-form-urlencoded body: its name/value pairs, decoded and
// ordered by name. Every byte string has one, as in the WHATWG parser; call
// it only for a body that IsForm accepts, and hash any other as raw bytes.
//
// Parsing follows the WHATWG URL Standard (§5.1,
// application/x-www-form-urlencoded parsing): split on '&' only (';' is
// data), skip empty segments, split each at its first '=', then decode name
// and value with url.QueryUnescape ('+' and %20 are both a space, %41 is A).
// It keeps apart what servers disagree on, where WHATWG would merge it: a
// segment without '=' differs from "name=", and a segment with an invalid
// escape (%zz, %4), which WHATWG keeps literally and Go's url.ParseQuery
// drops, is kept as its raw text, tagged so it equals no decoded pair.
// Duplicates are kept. Pairs are ordered by their names as AppendFormDecoded
// decodes them (invalid escapes kept, so a raw pair sorts with the others of
// its name), and pairs of one name keep their order: form handlers look pairs
// up by name, and one that reads the first of a repeated name tells
// model=a&model=b from model=b&model=a.
//
// Layout (field = uvarint length + bytes): field("form/v1"), uvarint(number
// of pairs), then the pairs, each one of
//
//	'd' field(name) 0                 no '='
//	'd' field(name) 1 field(value)
//	'r' field(segment)                invalid escape
//
// Two bodies share an encoding exactly when they have the same pairs in the
// same order within each name.
func AppendForm(dst, body []byte) []byte {
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
	dst = canonField(dst, formVersion)
	dst = binary.AppendUvarint(dst, uint64(len(s.spans)))
	for _, sp := range s.spans {
		dst = append(dst, s.enc[sp.start:sp.end]...)
	}
	return dst
}

// IsForm reports whether body could have come from a form serializer (the
// WHATWG URL Standard's urlencoded serializer, §5.2, JavaScript's
// encodeURIComponent, Go's url.Values.Encode, Python's urlencode): only ASCII
// letters and digits and the bytes %+=& and -._~*!'(). Any other
// byte (a JSON body sent with curl's default Content-Type, say) means the
// body is not a form to the client that wrote it: decoding it as one would
// merge "2+2" with "2 2".
func IsForm(body []byte) bool {
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

// AppendFormDecoded appends raw, a name or value of a form body or URL
// query, decoded as the WHATWG URL Standard's urlencoded parser decodes it
// (§5.1): '+' is a space, a valid %XX its byte (either case of hex digit),
// and an invalid escape stays as it is. It is how servers find the name a
// pair belongs to; the output need not be UTF-8.
func AppendFormDecoded(dst, raw []byte) []byte {
	for i := 0; i < len(raw); i++ {
		switch c := raw[i]; {
		case c == '+':
			dst = append(dst, ' ')
		case c == '%' && i+2 < len(raw) && hexVal[raw[i+1]] >= 0 && hexVal[raw[i+2]] >= 0:
			dst = append(dst, byte(hexVal[raw[i+1]])<<4|byte(hexVal[raw[i+2]]))
			i += 2
		default:
			dst = append(dst, c)
		}
	}
	return dst
}

// formScratch holds the pair encodings of one body until they are sorted.
type formScratch struct {
	enc   []byte
	names []byte // each pair's name, as AppendFormDecoded decodes it: its sort key
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
	s.names = AppendFormDecoded(s.names, name)
	s.spans = append(s.spans, formSpan{start, len(s.enc), nameStart, len(s.names)})
}

func appendFormPair(dst, seg []byte) []byte {
	start := len(dst)
	name, value, hasValue := bytes.Cut(seg, []byte{'='})
	dst, ok := appendFormField(append(dst, 'd'), name)
	if ok && !hasValue {
		return append(dst, 0)
	}
	if ok {
		if dst, ok = appendFormField(append(dst, 1), value); ok {
			return dst
		}
	}
	return canonFieldBytes(append(dst[:start], 'r'), seg)
}

// appendFormField appends the decoded form of one name or value as a field;
// ok is false when its escapes are invalid.
func appendFormField(dst, raw []byte) (_ []byte, ok bool) {
	if bytes.IndexAny(raw, "%+") < 0 {
		return canonFieldBytes(dst, raw), true // nothing to decode: no string copy
	}
	s, err := url.QueryUnescape(string(raw))
	if err != nil {
		return dst, false
	}
	return canonField(dst, s), true
}
