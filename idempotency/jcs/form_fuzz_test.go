package jcs

import (
	"bytes"
	"slices"
	"testing"
)

func FuzzCanonicalForm(f *testing.F) {
	for _, s := range []string{"", "a=1&b=2", "a", "a=", "a=%zz&b=%4", "a=x+y%20z&&", "%41=%c3%a9;b", "=&=&a==b"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		out := AppendForm(nil, body)
		again := AppendForm([]byte("x"), body)
		if !bytes.Equal(again[1:], out) {
			t.Fatalf("not deterministic: %q then %q", out, again[1:])
		}
		// Grouping the pairs by name, each name's pairs in their order, changes
		// nothing. Names are compared raw, so only where raw and decoded
		// names agree: no escapes or '+' in any name.
		segs := bytes.Split(body, []byte{'&'})
		name := func(seg []byte) []byte { n, _, _ := bytes.Cut(seg, []byte{'='}); return n }
		if !slices.ContainsFunc(segs, func(seg []byte) bool { return bytes.ContainsAny(name(seg), "%+") }) {
			slices.Reverse(segs)
			slices.SortStableFunc(segs, func(a, b []byte) int { return bytes.Compare(name(a), name(b)) })
			slices.Reverse(segs) // distinct names in reverse order, each name's pairs as sent
			reordered := AppendForm(nil, bytes.Join(segs, []byte{'&'}))
			if !bytes.Equal(reordered, out) {
				t.Fatalf("the order of different names matters: %q vs %q", out, reordered)
			}
		}
		doubled := AppendForm(nil, append(slices.Clip(body), '&', 'x'))
		if bytes.Equal(doubled, out) {
			t.Fatalf("adding a pair changes nothing: %q", out)
		}
	})
}
