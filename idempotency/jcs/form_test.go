package jcs

import (
	"bytes"
	"testing"
)

func formCanon(t *testing.T, body string) []byte {
	t.Helper()
	return AppendForm(nil, []byte(body))
}

func TestCanonicalFormCollide(t *testing.T) {
	cases := [][2]string{
		{"a=1&b=2", "b=2&a=1"},
		{"a=x+y", "a=x%20y"},
		{"%41=1", "A=1"},
		{"a=%c3%a9", "a=%C3%A9"},
		{"a=1&&b=2", "a=1&b=2"},
		{"&a=1&", "a=1"},
		{"", "&&&"},
		{"a==", "a=%3D"},
		{"a=%zz&b=1", "b=1&a=%zz"},
		{"a=1&a=2&b=3", "b=3&a=1&a=2"},
		{"n+m=v", "n%20m=v"},
		{"a=%2b", "a=%2B"},
	}
	for _, c := range cases {
		if a, b := formCanon(t, c[0]), formCanon(t, c[1]); !bytes.Equal(a, b) {
			t.Errorf("%q and %q: canonical forms differ:\n%q\n%q", c[0], c[1], a, b)
		}
	}
}

func TestCanonicalFormDistinct(t *testing.T) {
	cases := [][2]string{
		{"a=2&a=1", "a=1&a=2"},     // a repeated name keeps its order: the first value is not the same
		{"a=%zz&a=1", "a=1&a=%zz"}, // a raw pair is ordered with the other pairs of its name
		{"a%zz=1&a%25zz=2", "a%25zz=2&a%zz=1"},
		{"items%5B%5D=1&x=a&items%5B%5D=2", "items%5B%5D=2&x=a&items%5B%5D=1"},
		{"a", "a="},
		{"a=1&a=1", "a=1"},
		{"a=%zz", "a=zz"},
		{"a=%zz", "a=%25zz"},
		{"a=zz", "a=%25zz"},
		{"a=%4", "a=%254"},
		{"a=x%26b=y", "a=x&b=y"},
		{"a=1;b=2", "a=1&b=2"},
		{"a%3D1", "a=1"},
		{"=a", "a"},
		{"=a", "a="},
		{"a=+", "a=%2B"},
		{"a=1", "a=2"},
		{"a=1", ""},
		{"a=", ""},
		{"a=b=c", "a=b&c"},
		{"a=%zz", "a%3D%25zz"},
	}
	for _, c := range cases {
		if a, b := formCanon(t, c[0]), formCanon(t, c[1]); bytes.Equal(a, b) {
			t.Errorf("%q and %q: canonical forms collide: %q", c[0], c[1], a)
		}
	}
}

func TestCanonicalFormLayout(t *testing.T) {
	got := formCanon(t, "b=%zz&a=x+y&a")
	want := "\x07form/v1" + "\x03" +
		"d\x01a\x01\x03x y" + // a=x y, first of its name
		"d\x01a\x00" + // a
		"r\x05b=%zz" // raw segment
	if string(got) != want {
		t.Errorf("got  %q\nwant %q", got, want)
	}
	if got := formCanon(t, ""); string(got) != "\x07form/v1\x00" {
		t.Errorf("empty body: %q", got)
	}
}

func TestCanonicalFormAppends(t *testing.T) {
	out := AppendForm([]byte("prefix"), []byte("a=1"))
	if want := "prefix" + string(formCanon(t, "a=1")); string(out) != want {
		t.Errorf("got %q, want %q", out, want)
	}
}

func TestCanonicalFormNotMultipart(t *testing.T) {
	form := formCanon(t, "")
	mp := canonMultipart(t, mpInput{"--b--", "b"})
	if bytes.Equal(form, mp) {
		t.Errorf("empty form and empty multipart collide: %q", form)
	}
}
