package jcs

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"testing"
)

// RFC 8785 Appendix B.
func TestCanonicalNumbersRFC8785AppendixB(t *testing.T) {
	cases := []struct {
		bits uint64
		want string
	}{
		{0x0000000000000000, "0"},
		{0x8000000000000000, "0"},
		{0x0000000000000001, "5e-324"},
		{0x8000000000000001, "-5e-324"},
		{0x7fefffffffffffff, "1.7976931348623157e+308"},
		{0xffefffffffffffff, "-1.7976931348623157e+308"},
		{0x4340000000000000, "9007199254740992"},
		{0xc340000000000000, "-9007199254740992"},
		{0x4430000000000000, "295147905179352830000"},
		{0x44b52d02c7e14af5, "9.999999999999997e+22"},
		{0x44b52d02c7e14af6, "1e+23"},
		{0x44b52d02c7e14af7, "1.0000000000000001e+23"},
		{0x444b1ae4d6e2ef4e, "999999999999999700000"},
		{0x444b1ae4d6e2ef4f, "999999999999999900000"},
		{0x444b1ae4d6e2ef50, "1e+21"},
		{0x3eb0c6f7a0b5ed8c, "9.999999999999997e-7"},
		{0x3eb0c6f7a0b5ed8d, "0.000001"},
		{0x41b3de4355555553, "333333333.3333332"},
		{0x41b3de4355555554, "333333333.33333325"},
		{0x41b3de4355555555, "333333333.3333333"},
		{0x41b3de4355555556, "333333333.3333334"},
		{0x41b3de4355555557, "333333333.33333343"},
		{0xbecbf647612f3696, "-0.0000033333333333333333"},
		{0x43143ff3c1cb0959, "1424953923781206.2"},
	}
	for _, c := range cases {
		f := math.Float64frombits(c.bits)
		if got := string(appendESNumber(nil, f)); got != c.want {
			t.Errorf("appendESNumber(%#016x) = %q, want %q", c.bits, got, c.want)
		}
		// The same value written in JSON by Go must canonicalize to the same string.
		in := strconv.FormatFloat(f, 'g', -1, 64)
		if got := mustCanonical(t, in); got != c.want {
			t.Errorf("AppendJSONWithout(%s) (%#016x) = %q, want %q", in, c.bits, got, c.want)
		}
	}
}

func TestCanonicalNumberLayout(t *testing.T) {
	cases := []struct{ in, want string }{
		{"0", "0"},
		{"-0", "0"},
		{"-0.0", "0"},
		{"0e10", "0"},
		{"1e-400", "0"},
		{"-1e-400", "0"},
		{"1e21", "1e+21"},
		{"1e20", "100000000000000000000"},
		{"123456789012345678901", "123456789012345680000"},
		{"1e-7", "1e-7"},
		{"1e-6", "0.000001"},
		{"1.5e-7", "1.5e-7"},
		{"0.1", "0.1"},
		{"-0.5", "-0.5"},
		{"100", "100"},
		{"-100", "-100"},
		{"999999999999999", "999999999999999"},    // 15 digits: fast path
		{"9999999999999999", "10000000000000000"}, // 16 digits: rounds
		{"9007199254740993", "9007199254740992"},
		{"1E+2", "100"},
		{"1e+030", "1e+30"},
		{"12.50", "12.5"},
	}
	for _, c := range cases {
		if got := mustCanonical(t, c.in); got != c.want {
			t.Errorf("canonical(%s) = %q, want %q", c.in, got, c.want)
		}
	}
}

// The textual fast path must agree with ParseFloat + appendESNumber wherever
// it claims a result.
func TestCanonicalESDecimalFastPathMatchesFloatPath(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	fast := 0
	check := func(num string) {
		t.Helper()
		f, err := strconv.ParseFloat(num, 64)
		if err != nil {
			return
		}
		want := string(appendESNumber(nil, f))
		got, ok := appendESDecimal(nil, []byte(num))
		if ok && string(got) != want {
			t.Fatalf("appendESDecimal(%s) = %s, want %s", num, got, want)
		}
		if ok {
			fast++
		}
	}
	fixed := []string{
		"0.1", "0.30000000000000004", "123.450", "-0.000", "0e5", "100.001", "1.00000000000000e2",
		"999999999999999e285", "1e300", "1e-300", "1e-299", "123456789012345e-314", "1.5e-7", "1.5e-6",
		"10000000000000000000000", "12345678901234.5", "1234567890123456.5", "-9.99999999999999e-301",
		"0.000000000000000000000000000000001", "1E+0001", "4.50", "2e-3",
	}
	for _, s := range fixed {
		check(s)
	}
	for range 200000 {
		// Up to 17 significant digits, zeros sprinkled in, decimal point anywhere, random exponent.
		nd := 1 + r.IntN(17)
		b := make([]byte, 0, 32)
		if r.IntN(2) == 0 {
			b = append(b, '-')
		}
		digits := make([]byte, nd)
		for i := range digits {
			if r.IntN(3) == 0 {
				digits[i] = '0'
			} else {
				digits[i] = byte('0' + r.IntN(10))
			}
		}
		if digits[0] == '0' {
			digits[0] = '1'
		}
		point := 1 + r.IntN(nd)
		b = append(b, digits[:point]...)
		if point < nd {
			b = append(b, '.')
			b = append(b, digits[point:]...)
		}
		if r.IntN(3) > 0 {
			b = fmt.Appendf(b, "e%d", r.IntN(640)-320)
		}
		check(string(b))
	}
	if fast < 50000 {
		t.Errorf("only %d numbers took the fast path; the test is not exercising it", fast)
	}
}
