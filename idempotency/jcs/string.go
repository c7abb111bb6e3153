package jcs

import (
	"bytes"
	"unicode/utf8"
)

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
// it contains escapes. Content without escapes is already canonical: RFC 8785
// §3.2.2.2 escapes only '"', '\\' and the controls, which RFC 8259 does not
// allow unescaped.
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

// scanEscape validates the escape at src[i] == '\\' and returns the offset
// after it. A \u escape of a surrogate must be a high one followed by a low
// one (I-JSON, RFC 7493 §2.1).
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

// hexVal is the value of a hex digit (either case), -1 for any other byte.
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

// appendQuoted appends validated string content (raw, between the quotes)
// as an RFC 8785 string, quotes included; esc says whether raw has escapes.
func appendQuoted(dst, raw []byte, esc bool) []byte {
	dst = append(dst, '"')
	if esc {
		dst = appendStringContent(dst, raw, true)
	} else {
		dst = append(dst, raw...)
	}
	return append(dst, '"')
}

// appendStringContent appends validated string content (without quotes)
// with its escapes decoded: to UTF-8, or, when canonical, to the RFC 8785
// form (§3.2.2.2). Unescaped runs are the same in both.
func appendStringContent(dst, raw []byte, canonical bool) []byte {
	for {
		i := bytes.IndexByte(raw, '\\')
		if i < 0 {
			return append(dst, raw...)
		}
		dst = append(dst, raw[:i]...)
		r, n := decodeEscape(raw[i:])
		if canonical {
			dst = appendCanonicalRune(dst, r)
		} else {
			dst = utf8.AppendRune(dst, r)
		}
		raw = raw[i+n:]
	}
}

// appendCanonicalRune appends r as RFC 8785 §3.2.2.2 writes it in a string:
// '"' and '\\' escaped, the controls with a two-character escape where JSON
// has one (\b \f \n \r \t) and as \u00xx (lower-case hex) otherwise, every
// other rune as UTF-8.
func appendCanonicalRune(dst []byte, r rune) []byte {
	if r >= utf8.RuneSelf {
		return utf8.AppendRune(dst, r)
	}
	if e := shortEscape[r]; e != 0 {
		return append(dst, '\\', e)
	}
	if r < 0x20 {
		const hex = "0123456789abcdef"
		return append(dst, '\\', 'u', '0', '0', hex[r>>4], hex[r&0xf])
	}
	return append(dst, byte(r))
}

// shortEscape is the letter of the two-character escape RFC 8785 §3.2.2.2
// writes for an ASCII rune, 0 for none.
var shortEscape = [utf8.RuneSelf]byte{'"': '"', '\\': '\\', '\b': 'b', '\f': 'f', '\n': 'n', '\r': 'r', '\t': 't'}
