package jcs

import (
	"bytes"
	"errors"
	"strconv"
	"sync"
)

// maxDepth is the deepest nesting of arrays and objects accepted: a limit of
// this package (RFC 8259 §9 allows one), so that hostile input cannot grow
// the stack.
const maxDepth = 64

// JSONError reports why a body is not acceptable JSON: RFC 8259 syntax, or
// I-JSON's rules (RFC 7493 §2: valid UTF-8, no lone surrogate escapes, unique
// member names, numbers that fit a double), or nesting deeper than 64 arrays
// and objects.
type JSONError struct {
	Offset int    // byte offset into the body, 0 to len(body)
	Msg    string // e.g. `duplicate member name "a"`, `unexpected end of input`
}

func (e *JSONError) Error() string {
	return "invalid JSON at byte " + strconv.Itoa(e.Offset) + ": " + e.Msg
}

// ErrMemberNotString is AppendJSONWithout's error for a valid body whose
// member to remove has a value that is neither a string nor null.
var ErrMemberNotString = errors.New("jcs: the member to remove is neither a JSON string nor null")

// Removal is what AppendJSONWithout found of the member it removes.
type Removal struct {
	// Found: the member is there with a string value. A null value is no
	// value (Found is false), but the member is still cut from Stripped.
	Found bool
	Value string // the decoded string value, when Found
	// Stripped is the body without the member (a string or null) and one
	// comma next to it, every other byte as sent: still valid JSON. It is a
	// new slice when the member is there, else the body itself.
	Stripped []byte
}

// AppendJSONWithout validates the JSON text body strictly (I-JSON, RFC 7493,
// as RFC 8785 §3.1 requires, and at most 64 nested arrays and objects) and
// appends its RFC 8785 canonical form to dst, in one pass. When body is an
// object, two kinds of its members are left out: the one named name (its
// name compared once escapes are decoded; "" names none), whose value comes
// back in the Removal, and every member whose value is null. Nested members
// are kept whatever their name or value.
//
// A body that is not acceptable JSON gives a *JSONError; a valid one whose
// member to remove has a value other than a string or null gives
// ErrMemberNotString. On error dst is returned as it was.
func AppendJSONWithout(dst, body []byte, name string) ([]byte, Removal, error) {
	bufs := scratchPool.Get().(*parserScratch)
	p := parser{
		src:     body,
		remove:  name,
		rm:      removedSpan{prevComma: -1, nextComma: -1},
		members: bufs.members[:0],
		names:   bufs.names[:0],
		scratch: bufs.scratch[:0],
		keys:    bufs.keys[:0],
	}
	out, err := p.parse(dst)
	bufs.keep(&p)
	scratchPool.Put(bufs)

	if err == nil && p.rm.notString {
		err = ErrMemberNotString
	}
	if err != nil {
		return dst, Removal{}, err
	}
	res := Removal{Stripped: body}
	if p.rm.found {
		res.Found = true
		res.Value = p.rm.value
	}
	if p.rm.found || p.rm.null {
		res.Stripped = p.strip()
	}
	return out, res, nil
}

// parser is a value on AppendJSONWithout's stack; only its growable buffers
// are pooled. The output buffer is not kept here (see parse).
type parser struct {
	src    []byte
	pos    int
	remove string // the top-level member to remove; "" for none
	rm     removedSpan

	members []member  // a stack: each object uses members[base:] while open
	names   []byte    // decoded names that contained escapes, also a stack
	scratch []byte    // temporary copy of an object's output while reordering
	keys    []sortKey // finishObject's sort order
}

type parserScratch struct {
	members []member
	names   []byte
	scratch []byte
	keys    []sortKey
}

var scratchPool = sync.Pool{New: func() any { return new(parserScratch) }}

// maxRetained keeps one huge body from pinning large buffers in the pool.
const maxRetained = 4 << 20

func (s *parserScratch) keep(p *parser) {
	s.members, s.names, s.scratch, s.keys = p.members[:0], p.names[:0], p.scratch[:0], p.keys[:0]
	if cap(s.members) > maxRetained/64 {
		s.members = nil
	}
	if cap(s.keys) > maxRetained/16 {
		s.keys = nil
	}
	if cap(s.names) > maxRetained {
		s.names = nil
	}
	if cap(s.scratch) > maxRetained {
		s.scratch = nil
	}
}

func (p *parser) errAt(off int, msg string) error {
	return &JSONError{Offset: off, Msg: msg}
}

func (p *parser) errEOF() error {
	return &JSONError{Offset: len(p.src), Msg: "unexpected end of input"}
}

func (p *parser) errUnexpected(what string) error {
	if p.pos >= len(p.src) {
		return p.errEOF()
	}
	return &JSONError{Offset: p.pos, Msg: "unexpected character " + quoteByte(p.src[p.pos]) + ", expected " + what}
}

func quoteByte(c byte) string {
	if c >= 0x20 && c < 0x7f {
		return strconv.QuoteRune(rune(c))
	}
	return "byte 0x" + strconv.FormatUint(uint64(c), 16)
}

// skipWS skips RFC 8259 whitespace: space, tab, LF, CR and nothing else.
func (p *parser) skipWS() {
	for p.pos < len(p.src) {
		switch p.src[p.pos] {
		case ' ', '\t', '\n', '\r':
			p.pos++
		default:
			return
		}
	}
}

// The parsing methods take the output buffer as an argument and return it
// rather than keeping it in the parser: stores to a heap or pointed-to slice
// header need GC write barriers, locals do not.

func (p *parser) parse(out []byte) ([]byte, error) {
	p.skipWS()
	if p.pos >= len(p.src) {
		return out, p.errAt(p.pos, "empty body")
	}
	var err error
	if p.src[p.pos] == '{' {
		out, err = p.object(out, 1, true)
	} else {
		out, err = p.value(out, 0)
	}
	if err != nil {
		return out, err
	}
	p.skipWS()
	if p.pos < len(p.src) {
		return out, p.errAt(p.pos, "unexpected data after the top-level value")
	}
	return out, nil
}

// value parses one value at p.pos (which must not be whitespace). depth is the
// nesting depth of the enclosing container; it is checked here, before
// recursing, so hostile input cannot grow the stack.
func (p *parser) value(out []byte, depth int) ([]byte, error) {
	if p.pos >= len(p.src) {
		return out, p.errEOF()
	}
	switch c := p.src[p.pos]; c {
	case '{':
		if depth >= maxDepth {
			return out, p.errAt(p.pos, "nesting deeper than "+strconv.Itoa(maxDepth))
		}
		return p.object(out, depth+1, false)
	case '[':
		if depth >= maxDepth {
			return out, p.errAt(p.pos, "nesting deeper than "+strconv.Itoa(maxDepth))
		}
		return p.array(out, depth+1)
	case '"':
		start, end, esc, err := p.scanString()
		if err != nil {
			return out, err
		}
		return appendQuoted(out, p.src[start:end], esc), nil
	case 't':
		return p.literal(out, "true")
	case 'f':
		return p.literal(out, "false")
	case 'n':
		return p.literal(out, "null")
	default:
		if c == '-' || (c >= '0' && c <= '9') {
			return p.number(out)
		}
		return out, p.errUnexpected("a value")
	}
}

// literal reads true, false or null, written as they are (RFC 8785 §3.2.2.1).
func (p *parser) literal(out []byte, lit string) ([]byte, error) {
	if !bytes.HasPrefix(p.src[p.pos:], []byte(lit)) {
		if len(p.src)-p.pos < len(lit) && bytes.HasPrefix([]byte(lit), p.src[p.pos:]) {
			return out, p.errEOF()
		}
		return out, p.errAt(p.pos, "invalid literal, expected "+lit)
	}
	p.pos += len(lit)
	return append(out, lit...), nil
}

func (p *parser) array(out []byte, depth int) ([]byte, error) {
	p.pos++
	out = append(out, '[')
	p.skipWS()
	if p.pos < len(p.src) && p.src[p.pos] == ']' {
		p.pos++
		return append(out, ']'), nil
	}
	for {
		var err error
		if out, err = p.value(out, depth); err != nil {
			return out, err
		}
		p.skipWS()
		if p.pos >= len(p.src) {
			return out, p.errEOF()
		}
		switch p.src[p.pos] {
		case ',':
			p.pos++
			out = append(out, ',')
			p.skipWS()
		case ']':
			p.pos++
			return append(out, ']'), nil
		default:
			return out, p.errUnexpected("',' or ']'")
		}
	}
}
