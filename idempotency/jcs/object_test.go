package jcs

import (
	"math/rand/v2"
	"slices"
	"testing"
	"unicode/utf16"
)

func TestCanonicalMemberOrderUTF16(t *testing.T) {
	// U+FFFD (EF BF BD) sorts after U+1F600 in UTF-16 (D83D DE00) but
	// before it in UTF-8 byte order.
	got := mustCanonical(t, `{"\ufffd":1,"\ud83d\ude00":2,"\ud7ff":3,"a":4,"ab":5,"":6}`)
	want := `{"":6,"a":4,"ab":5,"` + "\ud7ff" + `":3,"😀":2,"` + "\ufffd" + `":1}`
	if got != want {
		t.Errorf("got %s\nwant %s", got, want)
	}
}

func TestCanonicalCompareUTF16(t *testing.T) {
	cases := []struct {
		a, b string
		want int
	}{
		{"", "", 0},
		{"a", "a", 0},
		{"", "a", -1},
		{"a", "b", -1},
		{"ab", "a", 1},
		{"\u00e9", "z", 1},
		{"\U0001F600", "\uE000", -1},
		{"\U0001F600", "\uFFFF", -1},
		{"\uFB33", "\U0001F600", 1},
		{"\uD7FF", "\U00010000", -1},
		{"\U00010000", "\U0010FFFF", -1},
		{"x\U0001F600", "x\uFFFD", -1},
	}
	for _, c := range cases {
		got := compareUTF16([]byte(c.a), []byte(c.b))
		if sign(got) != c.want {
			t.Errorf("compareUTF16(%q, %q) = %d, want sign %d", c.a, c.b, got, c.want)
		}
		if sign(compareUTF16([]byte(c.b), []byte(c.a))) != -c.want {
			t.Errorf("compareUTF16(%q, %q) not antisymmetric", c.b, c.a)
		}
	}
}

func sign(x int) int {
	switch {
	case x < 0:
		return -1
	case x > 0:
		return 1
	}
	return 0
}

func TestCanonicalSortPrefixAgreesWithCompareUTF16(t *testing.T) {
	alphabet := []string{"", "a", "b", "\x00", "\x7f", "é", "\u07ff", "\u0800", "\ud7ff", "\ue000", "\uffff", "\U00010000", "\U0001F600", "\U0010FFFF"}
	r := rand.New(rand.NewPCG(1, 2))
	gen := func() []byte {
		var b []byte
		for range r.IntN(12) {
			b = append(b, alphabet[r.IntN(len(alphabet))]...)
		}
		return b
	}
	for range 100000 {
		a, b := gen(), gen()
		c := sign(compareUTF16(a, b))
		pa, pb := sortPrefix(a), sortPrefix(b)
		if pa < pb && c >= 0 || pa > pb && c <= 0 {
			t.Fatalf("sortPrefix(%q)=%#x, sortPrefix(%q)=%#x disagree with compareUTF16 = %d", a, pa, b, pb, c)
		}
		// Reference: compare as UTF-16 code units.
		ua, ub := utf16.Encode([]rune(string(a))), utf16.Encode([]rune(string(b)))
		if want := slices.Compare(ua, ub); want != c {
			t.Fatalf("compareUTF16(%q, %q) = %d, want %d", a, b, c, want)
		}
	}
	// A NUL byte is not the same as the end of the name.
	if _, err := canonicalize([]byte(`{"a":1,"a\u0000":2}`), ""); err != nil {
		t.Errorf(`"a" and "a\u0000" taken for duplicates: %v`, err)
	}
	if got := mustCanonical(t, `{"a\u0000":2,"a":1}`); got != `{"a":1,"a\u0000":2}` {
		t.Errorf("got %s", got)
	}
}
