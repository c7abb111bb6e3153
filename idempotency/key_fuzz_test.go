package idempotency

import (
	"errors"
	"regexp"
	"strings"
	"testing"
)

// sfStringRE is RFC 8941's sf-string: printable ASCII, with '"' and '\\' only
// escaped, and the only escapes \" and \\.
var sfStringRE = regexp.MustCompile(`^"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*)"$`)

// referenceKey is a plain restatement of parseKeyHeader's rules for one
// header value: the key it accepts, or ok == false.
func referenceKey(v string) (key string, ok bool) {
	v = strings.Trim(v, " \t")
	if strings.HasPrefix(v, `"`) {
		m := sfStringRE.FindStringSubmatch(v)
		if m == nil {
			return "", false
		}
		key = strings.NewReplacer(`\"`, `"`, `\\`, `\`).Replace(m[1])
	} else {
		if strings.Contains(v, ",") {
			return "", false
		}
		key = v
	}
	if len(key) < 1 || len(key) > MaxKeyLength {
		return "", false
	}
	for _, c := range []byte(key) {
		if c < 0x20 || c > 0x7e {
			return "", false
		}
	}
	return key, true
}

var keyErrors = []error{ErrKeyDuplicated, ErrKeyEmpty, ErrKeyTooLong, ErrKeyCharacters, ErrKeySyntax}

// FuzzParseKeyHeader feeds parseKeyHeader n (0 to 3) header values taken in
// turn from a and b.
func FuzzParseKeyHeader(f *testing.F) {
	for _, s := range []struct {
		a, b string
		n    uint8
	}{
		{"batch-create-1", "", 1},
		{`"a\"b\\c"`, "", 1},
		{` "a,b" `, "", 1},
		{"a, b", "", 1},
		{`"a", "b"`, "", 1},
		{"a\tb", "", 1},
		{`"ab\`, "", 1},
		{`"a"x`, "", 1},
		{"", "", 0},
		{"a", "a", 2},
		{"", "", 2},
		{"a", "b", 3},
		{strings.Repeat("k", MaxKeyLength), "", 1},
		{`"` + strings.Repeat("k", MaxKeyLength) + `"`, "", 1},
		{strings.Repeat("k", MaxKeyLength+1), "", 1},
		{`"` + strings.Repeat(`\\`, MaxKeyLength) + `"`, "", 1},
	} {
		f.Add(s.a, s.b, s.n)
	}
	f.Fuzz(func(t *testing.T, a, b string, n uint8) {
		values := []string{a, b, a}[:n%4]
		key, ok, err := parseKeyHeader(values)
		switch {
		case len(values) == 0:
			if key != "" || ok || err != nil {
				t.Fatalf("no values: got %q, %v, %v; want \"\", false, nil", key, ok, err)
			}
			return
		case len(values) > 1:
			if !ok || !errors.Is(err, ErrKeyDuplicated) {
				t.Fatalf("%q: got %q, %v, %v; want ErrKeyDuplicated", values, key, ok, err)
			}
			return
		}
		if !ok {
			t.Fatalf("%q: ok = false for a present header", values)
		}
		want, wantOK := referenceKey(a)
		if err != nil {
			known := false
			for _, e := range keyErrors {
				known = known || errors.Is(err, e)
			}
			if !known {
				t.Fatalf("%q: unexpected error %v", a, err)
			}
			if wantOK {
				t.Fatalf("%q rejected (%v), but the reference accepts %q", a, err, want)
			}
			return
		}
		if !wantOK || key != want {
			t.Fatalf("%q accepted as %q, reference gives %q, %v", a, key, want, wantOK)
		}
		if err := ValidateKey(key); err != nil {
			t.Fatalf("%q accepted as %q, which ValidateKey rejects: %v", a, key, err)
		}
		trimmed := strings.Trim(a, " \t")
		if !strings.HasPrefix(trimmed, `"`) {
			if key != trimmed {
				t.Fatalf("bare %q accepted as %q, want the trimmed value %q", a, key, trimmed)
			}
			return
		}
		// An sf-string has one serialization: it must be the input, and parse back.
		ser := `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(key) + `"`
		if ser != trimmed {
			t.Fatalf("%q accepted as %q, which serializes to %q", a, key, ser)
		}
		if back, _, err := parseKeyHeader([]string{ser}); err != nil || back != key {
			t.Fatalf("%q re-serialized as %q parses to %q, %v", key, ser, back, err)
		}
	})
}
