package jcs

import (
	"bytes"
	"encoding/binary"
	"slices"
	"strconv"
)

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

// removedSpan is where the top-level member to remove was found, if it was.
type removedSpan struct {
	found, notString bool
	null             bool // the member is there with the value null: no value, but still stripped
	value            string
	start, end       int // the member in the source, from the name's quote to the end of the value
	prevComma        int // comma before the member, or -1
	nextComma        int // comma after the member, or -1
}

// object parses an object. Members are written out in source order as they
// are parsed; if they turn out not to be in canonical order (RFC 8785 §3.2.3)
// the object's output is rearranged once at the end. At the top level, null
// members and the member to remove are not written at all.
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
			p.names = appendStringContent(p.names, p.src[rawStart:rawEnd], false)
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

		isRemoved := top && p.remove != "" && string(name) == p.remove
		switch {
		case isRemoved:
			if err := p.removedValue(depth, m.srcOff, prevComma); err != nil {
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
			out = append(appendQuoted(out, p.src[rawStart:rawEnd], esc), ':')
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
			if isRemoved {
				p.rm.nextComma = p.pos
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

// removedValue consumes the value of the top-level member to remove without
// writing it.
func (p *parser) removedValue(depth, memberStart, prevComma int) error {
	if p.src[p.pos] == 'n' {
		// null is no value, as an absent member (an optional parameter).
		if _, err := p.literal(nil, "null"); err != nil {
			return err
		}
		p.rm.null = true
		p.rm.start, p.rm.end = memberStart, p.pos
		p.rm.prevComma, p.rm.nextComma = prevComma, -1
		return nil
	}
	if p.src[p.pos] != '"' {
		// Still validate the rest of the body: a malformed body is a JSON
		// error first, a misused member second.
		p.rm.notString = true
		_, err := p.value(nil, depth)
		return err
	}
	start, end, esc, err := p.scanString()
	if err != nil {
		return err
	}
	if esc {
		mark := len(p.names)
		p.names = appendStringContent(p.names, p.src[start:end], false)
		p.rm.value = string(p.names[mark:])
		p.names = p.names[:mark]
	} else {
		p.rm.value = string(p.src[start:end])
	}
	p.rm.found = true
	p.rm.start = memberStart
	p.rm.end = p.pos
	p.rm.prevComma = prevComma
	p.rm.nextComma = -1
	return nil
}

// strip returns a copy of the source without the removed member and exactly
// one adjacent comma.
func (p *parser) strip() []byte {
	src, k := p.src, &p.rm
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

// finishObject checks the members of the object just parsed for duplicates
// (RFC 7493 §2.3) and puts its output into canonical member order (RFC 8785
// §3.2.3).
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

// compareUTF16 orders decoded (valid UTF-8) names as RFC 8785 §3.2.3
// requires: by their UTF-16 code units. That is UTF-8 byte order except at
// the first differing byte, where utf16Order puts characters above U+FFFF
// (surrogate pairs) before U+E000-U+FFFF.
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
