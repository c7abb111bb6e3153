package idempotency

import (
	"math"
	"strconv"
)

// appendESNumber appends f as ECMAScript's Number.prototype.toString would
// (ECMA-262 Number::toString, as RFC 8785 section 3.2.2.3 requires): the
// shortest digits that round-trip, in plain notation when the decimal exponent
// is in [-7, 21), otherwise as d[.ddd]e±x. f must be finite.
func appendESNumber(dst []byte, f float64) []byte {
	if f == 0 {
		return append(dst, '0') // also -0
	}
	if math.IsNaN(f) || math.IsInf(f, 0) {
		panic("idempotency: appendESNumber of a non-finite number")
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
