package idempotency

import (
	"bytes"
	"encoding/binary"
	"errors"
	"slices"
	"strconv"
	"sync"
	"unicode/utf8"
)

// MaxJSONDepth is the deepest nesting of arrays and objects a body may have.
const MaxJSONDepth = 64

// JSONError reports why a body is not acceptable JSON; Offset is the byte offset.
type JSONError struct {
	Offset int
	Msg    string
}

func (e *JSONError) Error() string {
	return "invalid JSON at byte " + strconv.Itoa(e.Offset) + ": " + e.Msg
}

// ErrKeyFieldNotString: the top-level key field is present but its value is not a JSON string.
var ErrKeyFieldNotString = errors.New("idempotency: key field value is not a JSON string")

// ParsedJSON is what one pass over a JSON request body yields.
type ParsedJSON struct {
	Canonical []byte // RFC 8785 form of the body, without the key field and without top-level members whose value is null
	Key       string // the decoded string value of the top-level key field, when HasKey
	HasKey    bool
	Stripped  []byte // the original body bytes with the key-field member (a string or null) removed, everything else byte-for-byte, still valid JSON; the same slice as the input when there is no such member
}

// ParseJSON validates body strictly and canonicalizes it in one pass. keyField == "" disables key-field handling.
// Canonical is appended to dst[:0] (so callers can pass a pooled buffer).
func ParseJSON(body []byte, keyField string, dst []byte) (ParsedJSON, error) {
	bufs := scratchPool.Get().(*parserScratch)
	p := parser{
		src:      body,
		keyField: keyField,
		key:      keySpan{prevComma: -1, nextComma: -1},
		members:  bufs.members[:0],
		names:    bufs.names[:0],
		scratch:  bufs.scratch[:0],
		keys:     bufs.keys[:0],
	}
	out, err := p.parse(dst[:0])
	bufs.keep(&p)
	scratchPool.Put(bufs)

	if err == nil && p.key.notString {
		err = ErrKeyFieldNotString
	}
	if err != nil {
		return ParsedJSON{}, err
	}
	res := ParsedJSON{Canonical: out, Stripped: body}
	if p.key.found {
		res.HasKey = true
		res.Key = p.key.value
	}
	if p.key.found || p.key.null {
		res.Stripped = p.stripKey()
	}
	return res, nil
}

// member is one object member seen by the parser. Its decoded name lives
// either in the source (no escapes) or in parser.names, addressed by offsets
// because parser.names may move while the object is still being parsed.
type member struct {
	srcOff           int // offset of the name's opening quote in the source
	nameStart        int
	nameEnd          int
	outStart, outEnd int    // canonical `"name":value` in the output; outStart < 0 if dropped
	prefix           uint64 // sortPrefix of the name
	inNames          bool
}

type keySpan struct {
	found, notString bool
	null             bool // the field is present with the value null: no key, but still stripped
	value            string
	start, end       int // the member in the source, from the name's quote to the end of the value
	prevComma        int // comma before the member, or -1
	nextComma        int // comma after the member, or -1
}

// parser is a value on ParseJSON's stack; only its growable buffers are
// pooled. The output buffer is not kept here (see parse).
type parser struct {
	src      []byte
	pos      int
	keyField string
	key      keySpan

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
		if depth >= MaxJSONDepth {
			return out, p.errAt(p.pos, "nesting deeper than "+strconv.Itoa(MaxJSONDepth))
		}
		return p.object(out, depth+1, false)
	case '[':
		if depth >= MaxJSONDepth {
			return out, p.errAt(p.pos, "nesting deeper than "+strconv.Itoa(MaxJSONDepth))
		}
		return p.array(out, depth+1)
	case '"':
		start, end, esc, err := p.scanString()
		if err != nil {
			return out, err
		}
		out = append(out, '"')
		if esc {
			out = appendCanonicalRaw(out, p.src[start:end])
		} else {
			out = append(out, p.src[start:end]...)
		}
		return append(out, '"'), nil
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

// object parses an object. Members are written out in source order as they
// are parsed; if they turn out not to be in canonical order the object's
// output is rearranged once at the end. At the top level, null members and
// the key field are not written at all.
func (p *parser) object(out []byte, depth int, top bool) ([]byte, error) {
	p.pos++
	out = append(out, '{')
	base := len(p.members)
	namesBase := len(p.names)
	contentStart := len(out)
	emitted := 0
	prevComma := -1

	p.skipWS()
	if p.pos < len(p.src) && p.src[p.pos] == '}' {
		p.pos++
		return append(out, '}'), nil
	}
	for {
		if p.pos >= len(p.src) {
			return out, p.errEOF()
		}
		if p.src[p.pos] != '"' {
			return out, p.errUnexpected("a member name")
		}
		m := member{srcOff: p.pos}
		rawStart, rawEnd, esc, err := p.scanString()
		if err != nil {
			return out, err
		}
		var name []byte
		if esc {
			m.inNames = true
			m.nameStart = len(p.names)
			p.names = appendDecodedRaw(p.names, p.src[rawStart:rawEnd])
			m.nameEnd = len(p.names)
			name = p.names[m.nameStart:m.nameEnd]
		} else {
			m.nameStart, m.nameEnd = rawStart, rawEnd
			name = p.src[rawStart:rawEnd]
		}
		m.prefix = sortPrefix(name)
		p.skipWS()
		if p.pos >= len(p.src) || p.src[p.pos] != ':' {
			return out, p.errUnexpected("':'")
		}
		p.pos++
		p.skipWS()
		if p.pos >= len(p.src) {
			return out, p.errEOF()
		}

		isKey := top && p.keyField != "" && string(name) == p.keyField
		switch {
		case isKey:
			if err := p.keyValue(depth, m.srcOff, prevComma); err != nil {
				return out, err
			}
			m.outStart = -1
		case top && p.src[p.pos] == 'n':
			if out, err = p.literal(out, "null"); err != nil {
				return out, err
			}
			out = out[:len(out)-len("null")]
			m.outStart = -1
		default:
			if emitted > 0 {
				out = append(out, ',')
			}
			m.outStart = len(out)
			out = append(out, '"')
			if esc {
				out = appendCanonicalRaw(out, p.src[rawStart:rawEnd])
			} else {
				out = append(out, p.src[rawStart:rawEnd]...)
			}
			out = append(out, '"', ':')
			if out, err = p.value(out, depth); err != nil {
				return out, err
			}
			m.outEnd = len(out)
			emitted++
		}
		p.members = append(p.members, m)

		p.skipWS()
		if p.pos >= len(p.src) {
			return out, p.errEOF()
		}
		switch p.src[p.pos] {
		case ',':
			if isKey {
				p.key.nextComma = p.pos
			}
			prevComma = p.pos
			p.pos++
			p.skipWS()
			continue
		case '}':
			p.pos++
		default:
			return out, p.errUnexpected("',' or '}'")
		}
		break
	}

	out, err := p.finishObject(out, base, contentStart)
	if err != nil {
		return out, err
	}
	p.members = p.members[:base]
	p.names = p.names[:namesBase]
	return append(out, '}'), nil
}

// keyValue consumes the value of the top-level key field without writing it.
func (p *parser) keyValue(depth, memberStart, prevComma int) error {
	if p.src[p.pos] == 'n' {
		// null is no key, as an absent field (llama-stack's optional parameter).
		if _, err := p.literal(nil, "null"); err != nil {
			return err
		}
		p.key.null = true
		p.key.start, p.key.end = memberStart, p.pos
		p.key.prevComma, p.key.nextComma = prevComma, -1
		return nil
	}
	if p.src[p.pos] != '"' {
		// Still validate the rest of the body: a malformed body is a JSON
		// error first, a misused key field second.
		p.key.notString = true
		_, err := p.value(nil, depth)
		return err
	}
	start, end, esc, err := p.scanString()
	if err != nil {
		return err
	}
	if esc {
		mark := len(p.names)
		p.names = appendDecodedRaw(p.names, p.src[start:end])
		p.key.value = string(p.names[mark:])
		p.names = p.names[:mark]
	} else {
		p.key.value = string(p.src[start:end])
	}
	p.key.found = true
	p.key.start = memberStart
	p.key.end = p.pos
	p.key.prevComma = prevComma
	p.key.nextComma = -1
	return nil
}

func (p *parser) nameOf(m *member) []byte {
	if m.inNames {
		return p.names[m.nameStart:m.nameEnd]
	}
	return p.src[m.nameStart:m.nameEnd]
}

// sortKey is what members are sorted by: small, so that moving it is cheap.
type sortKey struct {
	prefix uint64 // sortPrefix of the name
	idx    int    // index into parser.members
}

func (p *parser) compareKeys(a, b sortKey) int {
	if a.prefix != b.prefix {
		if a.prefix < b.prefix {
			return -1
		}
		return 1
	}
	return compareUTF16(p.nameOf(&p.members[a.idx]), p.nameOf(&p.members[b.idx]))
}

// finishObject checks the members of the object just parsed for duplicates and
// puts its output into canonical member order.
func (p *parser) finishObject(out []byte, base, contentStart int) ([]byte, error) {
	seg := p.members[base:]
	if len(seg) < 2 {
		return out, nil
	}
	keys := p.keys[:0]
	for i := range seg {
		keys = append(keys, sortKey{prefix: seg[i].prefix, idx: base + i})
	}
	p.keys = keys
	sorted := true
	for i := 1; i < len(keys); i++ {
		if p.compareKeys(keys[i-1], keys[i]) >= 0 {
			sorted = false
			break
		}
	}
	if sorted {
		// Strictly increasing names: no duplicates, and the output is already in order.
		return out, nil
	}
	if len(keys) <= 16 {
		for i := 1; i < len(keys); i++ {
			k := keys[i]
			j := i
			for ; j > 0 && p.compareKeys(k, keys[j-1]) < 0; j-- {
				keys[j] = keys[j-1]
			}
			keys[j] = k
		}
	} else {
		slices.SortFunc(keys, p.compareKeys)
	}
	for i := 1; i < len(keys); i++ {
		if keys[i-1].prefix != keys[i].prefix {
			continue
		}
		a, b := &p.members[keys[i-1].idx], &p.members[keys[i].idx]
		if name := p.nameOf(b); bytes.Equal(p.nameOf(a), name) {
			return out, p.errAt(max(a.srcOff, b.srcOff), "duplicate member name "+strconv.Quote(string(name)))
		}
	}
	scratch := append(p.scratch[:0], out[contentStart:]...)
	p.scratch = scratch
	out = out[:contentStart]
	first := true
	for _, k := range keys {
		m := &p.members[k.idx]
		if m.outStart < 0 {
			continue
		}
		if !first {
			out = append(out, ',')
		}
		first = false
		out = append(out, scratch[m.outStart-contentStart:m.outEnd-contentStart]...)
	}
	return out, nil
}

// sortPrefix packs the first eight bytes of a decoded name into an integer
// whose order agrees with compareUTF16 wherever two prefixes differ. Equal
// prefixes (including "a" vs "a\x00") need the full comparison.
func sortPrefix(name []byte) uint64 {
	var k uint64
	if len(name) >= 8 {
		k = binary.BigEndian.Uint64(name)
	} else {
		for i, c := range name {
			k |= uint64(c) << (56 - 8*i)
		}
	}
	const high = 0x8080808080808080
	if k&high == 0 {
		return k
	}
	var r uint64
	for i := range 8 {
		r = r<<8 | uint64(utf16Order[byte(k>>(56-8*i))])
	}
	return r
}

// utf16Order remaps UTF-8 lead bytes so that plain byte order is UTF-16 code
// unit order: lead bytes of characters above U+FFFF (0xF0-0xF4, surrogate
// pairs in UTF-16) move below those of U+E000-U+FFFF (0xEE, 0xEF). Other
// bytes, including all continuation bytes, are unchanged.
var utf16Order = func() (t [256]byte) {
	for i := range t {
		t[i] = byte(i)
	}
	for c := 0xF0; c <= 0xF4; c++ {
		t[c] = byte(c - 2)
	}
	t[0xEE], t[0xEF] = 0xF3, 0xF4
	return t
}()

// stripKey returns a copy of the source without the key member and exactly one
// adjacent comma.
func (p *parser) stripKey() []byte {
	src, k := p.src, &p.key
	var cutStart, cutEnd int
	switch {
	case k.prevComma >= 0:
		cutStart, cutEnd = k.prevComma, k.end
	case k.nextComma >= 0:
		cutStart, cutEnd = k.start, k.nextComma+1
	default:
		cutStart, cutEnd = k.start, k.end
	}
	out := make([]byte, 0, len(src)-(cutEnd-cutStart))
	out = append(out, src[:cutStart]...)
	return append(out, src[cutEnd:]...)
}

// compareUTF16 orders decoded (valid UTF-8) names as RFC 8785 requires: by
// their UTF-16 code units. That is UTF-8 byte order except at the first
// differing byte, where utf16Order puts characters above U+FFFF (surrogate
// pairs) before U+E000-U+FFFF.
func compareUTF16(a, b []byte) int {
	n := min(len(a), len(b))
	i := 0
	for i < n && a[i] == b[i] {
		i++
	}
	if i == n {
		return len(a) - len(b)
	}
	return int(utf16Order[a[i]]) - int(utf16Order[b[i]])
}

// strSafe marks bytes that may appear in a string and need no further look:
// printable ASCII other than '"' and '\\'.
var strSafe = func() (t [256]bool) {
	for c := 0x20; c < 0x80; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// scanString validates the string starting at the quote at p.pos and leaves
// p.pos after its closing quote. It returns the raw content span and whether
// it contains escapes. Content without escapes is already canonical.
func (p *parser) scanString() (start, end int, esc bool, err error) {
	src := p.src
	i := p.pos + 1
	start = i
	for {
		for i+8 <= len(src) && strSafe[src[i]] && strSafe[src[i+1]] && strSafe[src[i+2]] && strSafe[src[i+3]] &&
			strSafe[src[i+4]] && strSafe[src[i+5]] && strSafe[src[i+6]] && strSafe[src[i+7]] {
			i += 8
		}
		for i < len(src) && strSafe[src[i]] {
			i++
		}
		if i >= len(src) {
			return 0, 0, false, p.errEOF()
		}
		switch c := src[i]; {
		case c == '"':
			p.pos = i + 1
			return start, i, esc, nil
		case c == '\\':
			esc = true
			if i, err = p.scanEscape(i); err != nil {
				return 0, 0, false, err
			}
		case c < 0x20:
			return 0, 0, false, p.errAt(i, "control character in string")
		default:
			r, size := utf8.DecodeRune(src[i:])
			if r == utf8.RuneError && size == 1 {
				return 0, 0, false, p.errAt(i, "invalid UTF-8")
			}
			i += size
		}
	}
}

// scanEscape validates the escape at src[i] == '\\' and returns the offset after it.
func (p *parser) scanEscape(i int) (int, error) {
	src := p.src
	if i+1 >= len(src) {
		return 0, p.errEOF()
	}
	switch src[i+1] {
	case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
		return i + 2, nil
	case 'u':
	default:
		return 0, p.errAt(i, "invalid escape sequence")
	}
	r, err := p.hex4(i)
	if err != nil {
		return 0, err
	}
	i += 6
	switch {
	case r < 0xD800 || r > 0xDFFF:
		return i, nil
	case r >= 0xDC00:
		return 0, p.errAt(i-6, "unpaired low surrogate in \\u escape")
	}
	if i >= len(src) || (src[i] == '\\' && i+1 >= len(src)) {
		return 0, p.errEOF()
	}
	if src[i] != '\\' || src[i+1] != 'u' {
		return 0, p.errAt(i-6, "high surrogate not followed by a low surrogate escape")
	}
	r2, err := p.hex4(i)
	if err != nil {
		return 0, err
	}
	if r2 < 0xDC00 || r2 > 0xDFFF {
		return 0, p.errAt(i-6, "high surrogate not followed by a low surrogate escape")
	}
	return i + 6, nil
}

// hex4 reads the four hex digits of the \u escape at src[i].
func (p *parser) hex4(i int) (rune, error) {
	src := p.src
	if i+6 > len(src) {
		for j := i + 2; j < len(src); j++ {
			if hexVal[src[j]] < 0 {
				return 0, p.errAt(i, "invalid \\u escape")
			}
		}
		return 0, p.errEOF()
	}
	var r rune
	for _, c := range src[i+2 : i+6] {
		v := hexVal[c]
		if v < 0 {
			return 0, p.errAt(i, "invalid \\u escape")
		}
		r = r<<4 | rune(v)
	}
	return r, nil
}

var hexVal = func() (t [256]int8) {
	for i := range t {
		t[i] = -1
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = int8(c - '0')
	}
	for c := 'a'; c <= 'f'; c++ {
		t[c] = int8(c - 'a' + 10)
		t[c-'a'+'A'] = int8(c - 'a' + 10)
	}
	return t
}()

// decodeEscape decodes the already validated escape at raw[0] == '\\' and
// returns the rune and the escape's length.
func decodeEscape(raw []byte) (rune, int) {
	switch raw[1] {
	case 'b':
		return '\b', 2
	case 'f':
		return '\f', 2
	case 'n':
		return '\n', 2
	case 'r':
		return '\r', 2
	case 't':
		return '\t', 2
	case 'u':
		r := hexRune(raw[2:6])
		if r >= 0xD800 && r < 0xDC00 {
			lo := hexRune(raw[8:12])
			return 0x10000 + (r-0xD800)<<10 + (lo - 0xDC00), 12
		}
		return r, 6
	default: // '"', '\\', '/'
		return rune(raw[1]), 2
	}
}

func hexRune(h []byte) rune {
	return rune(hexVal[h[0]])<<12 | rune(hexVal[h[1]])<<8 | rune(hexVal[h[2]])<<4 | rune(hexVal[h[3]])
}

// appendDecodedRaw appends the decoded form of validated string content.
func appendDecodedRaw(dst, raw []byte) []byte {
	for {
		i := bytes.IndexByte(raw, '\\')
		if i < 0 {
			return append(dst, raw...)
		}
		dst = append(dst, raw[:i]...)
		r, n := decodeEscape(raw[i:])
		dst = utf8.AppendRune(dst, r)
		raw = raw[i+n:]
	}
}

// appendCanonicalRaw appends the RFC 8785 form of validated string content
// (without quotes). Unescaped runs are already canonical; only escapes change.
func appendCanonicalRaw(dst, raw []byte) []byte {
	for {
		i := bytes.IndexByte(raw, '\\')
		if i < 0 {
			return append(dst, raw...)
		}
		dst = append(dst, raw[:i]...)
		r, n := decodeEscape(raw[i:])
		dst = appendCanonicalRune(dst, r)
		raw = raw[i+n:]
	}
}

func appendCanonicalRune(dst []byte, r rune) []byte {
	switch r {
	case '"':
		return append(dst, '\\', '"')
	case '\\':
		return append(dst, '\\', '\\')
	case '\b':
		return append(dst, '\\', 'b')
	case '\f':
		return append(dst, '\\', 'f')
	case '\n':
		return append(dst, '\\', 'n')
	case '\r':
		return append(dst, '\\', 'r')
	case '\t':
		return append(dst, '\\', 't')
	}
	if r < 0x20 {
		const hex = "0123456789abcdef"
		return append(dst, '\\', 'u', '0', '0', hex[r>>4], hex[r&0xf])
	}
	return utf8.AppendRune(dst, r)
}

// number validates an RFC 8259 number and writes its ECMAScript form.
func (p *parser) number(out []byte) ([]byte, error) {
	src := p.src
	start := p.pos
	i := start
	if src[i] == '-' {
		i++
	}
	digitsStart := i
	if i >= len(src) {
		return out, p.errEOF()
	}
	switch c := src[i]; {
	case c == '0':
		i++
	case c >= '1' && c <= '9':
		i++
		for i < len(src) && src[i] >= '0' && src[i] <= '9' {
			i++
		}
	default:
		return out, p.errAt(i, "invalid number")
	}
	intDigits := i - digitsStart
	simple := true
	if i < len(src) && src[i] == '.' {
		simple = false
		i++
		if i >= len(src) {
			return out, p.errEOF()
		}
		if src[i] < '0' || src[i] > '9' {
			return out, p.errAt(i, "invalid number: expected digit after '.'")
		}
		for i < len(src) && src[i] >= '0' && src[i] <= '9' {
			i++
		}
	}
	if i < len(src) && (src[i] == 'e' || src[i] == 'E') {
		simple = false
		i++
		if i < len(src) && (src[i] == '+' || src[i] == '-') {
			i++
		}
		if i >= len(src) {
			return out, p.errEOF()
		}
		if src[i] < '0' || src[i] > '9' {
			return out, p.errAt(i, "invalid number: expected digit in exponent")
		}
		for i < len(src) && src[i] >= '0' && src[i] <= '9' {
			i++
		}
	}
	p.pos = i
	// Integers of up to 15 digits are exact doubles that ECMAScript prints
	// digit for digit, so they need no conversion.
	if simple && intDigits <= 15 {
		if intDigits == 1 && src[digitsStart] == '0' {
			return append(out, '0'), nil // also "-0"
		}
		return append(out, src[start:i]...), nil
	}
	if res, ok := appendESDecimal(out, src[start:i]); ok {
		return res, nil
	}
	f, err := strconv.ParseFloat(string(src[start:i]), 64)
	if err != nil {
		return out, p.errAt(start, "number out of range")
	}
	return appendESNumber(out, f), nil
}
