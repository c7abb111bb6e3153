package jcs

import (
	"math"
	"strconv"
)

// number validates an RFC 8259 §6 number and writes it as RFC 8785 §3.2.2.3
// requires: as ECMAScript prints the nearest double. A number beyond the
// double range is an error (I-JSON, RFC 7493 §2.2); one that underflows is 0.
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
	var err error
	if i < len(src) && src[i] == '.' {
		simple = false
		if i, err = p.digits(i+1, "after '.'"); err != nil {
			return out, err
		}
	}
	if i < len(src) && (src[i] == 'e' || src[i] == 'E') {
		simple = false
		i++
		if i < len(src) && (src[i] == '+' || src[i] == '-') {
			i++
		}
		if i, err = p.digits(i, "in exponent"); err != nil {
			return out, err
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

// digits scans the one or more digits RFC 8259 §6 requires at src[i] (after
// a number's '.', and in its exponent) and returns the offset after them.
func (p *parser) digits(i int, where string) (int, error) {
	src := p.src
	if i >= len(src) {
		return 0, p.errEOF()
	}
	if src[i] < '0' || src[i] > '9' {
		return 0, p.errAt(i, "invalid number: expected digit "+where)
	}
	for i < len(src) && src[i] >= '0' && src[i] <= '9' {
		i++
	}
	return i, nil
}

// appendESNumber appends f as ECMAScript's Number.prototype.toString would
// (ECMA-262 Number::toString, as RFC 8785 section 3.2.2.3 requires): the
// shortest digits that round-trip, in plain notation when the decimal exponent
// is in [-7, 21), otherwise as d[.ddd]e±x. f must be finite.
func appendESNumber(dst []byte, f float64) []byte {
	if f == 0 {
		return append(dst, '0') // also -0
	}
	if math.IsNaN(f) || math.IsInf(f, 0) {
		panic("jcs: appendESNumber of a non-finite number")
	}
	var buf [32]byte
	b := strconv.AppendFloat(buf[:0], f, 'e', -1, 64) // -d.ddddde±dd
	if b[0] == '-' {
		dst = append(dst, '-')
		b = b[1:]
	}

	var digits [17]byte
	k := 0
	i := 0
	for ; b[i] != 'e'; i++ {
		if b[i] != '.' {
			digits[k] = b[i]
			k++
		}
	}
	exp := 0
	for _, c := range b[i+2:] {
		exp = exp*10 + int(c-'0')
	}
	if b[i+1] == '-' {
		exp = -exp
	}
	// In ECMA-262 terms the value is 0.d1d2...dk × 10^n.
	return appendESLayout(dst, digits[:k], exp+1)
}

// appendESLayout lays out the significant digits d (no leading or trailing
// zeros) of a value 0.d × 10^n as ECMA-262 Number::toString does.
func appendESLayout(dst, d []byte, n int) []byte {
	k := len(d)
	switch {
	case k <= n && n <= 21:
		dst = append(dst, d...)
		for j := k; j < n; j++ {
			dst = append(dst, '0')
		}
	case 0 < n && n <= 21:
		dst = append(dst, d[:n]...)
		dst = append(dst, '.')
		dst = append(dst, d[n:]...)
	case -6 < n && n <= 0:
		dst = append(dst, '0', '.')
		for j := n; j < 0; j++ {
			dst = append(dst, '0')
		}
		dst = append(dst, d...)
	default:
		dst = append(dst, d[0])
		if k > 1 {
			dst = append(dst, '.')
			dst = append(dst, d[1:]...)
		}
		dst = append(dst, 'e')
		if n-1 >= 0 {
			dst = append(dst, '+')
		}
		dst = strconv.AppendInt(dst, int64(n-1), 10)
	}
	return dst
}

// appendESDecimal is a fast path for appendESNumber(ParseFloat(num)) that
// works on the text of a valid RFC 8259 number, avoiding both conversions.
// It handles numbers with at most 15 significant digits whose magnitude is
// well inside the normal double range: such a decimal survives the round trip
// through float64 unchanged (DBL_DIG = 15), and no shorter or closer decimal
// maps to the same double, so its own digits are exactly the shortest
// round-trip digits ECMAScript would print. ok is false for anything else.
func appendESDecimal(dst, num []byte) (_ []byte, ok bool) {
	neg := num[0] == '-'
	if neg {
		num = num[1:]
	}
	var digits [15]byte
	k := 0
	pendingZeros := 0 // zeros after the last significant digit, kept only if another one follows
	j, first, intLen := 0, -1, -1
	i := 0
	for ; i < len(num); i++ {
		c := num[i]
		if c == '.' {
			intLen = j
			continue
		}
		if c == 'e' || c == 'E' {
			break
		}
		if c == '0' {
			if first >= 0 {
				pendingZeros++
			}
		} else {
			if first < 0 {
				first = j
			}
			if k+pendingZeros >= len(digits) {
				return dst, false
			}
			for ; pendingZeros > 0; pendingZeros-- {
				digits[k] = '0'
				k++
			}
			digits[k] = c
			k++
		}
		j++
	}
	if intLen < 0 {
		intLen = j
	}
	if first < 0 {
		return append(dst, '0'), true // any spelling of zero, also negative
	}
	exp := 0
	if i < len(num) {
		i++
		expNeg := num[i] == '-'
		if num[i] == '-' || num[i] == '+' {
			i++
		}
		for ; i < len(num); i++ {
			exp = exp*10 + int(num[i]-'0')
			if exp > 1000 {
				return dst, false
			}
		}
		if expNeg {
			exp = -exp
		}
	}
	n := intLen - first + exp
	if n < -300 || n > 300 {
		return dst, false
	}
	if neg {
		dst = append(dst, '-')
	}
	return appendESLayout(dst, digits[:k], n), true
}
