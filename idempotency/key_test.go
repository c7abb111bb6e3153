package idempotency

import (
	"errors"
	"strings"
	"testing"
)

func TestParseKeyHeader(t *testing.T) {
	longest := strings.Repeat("k", MaxKeyLength)
	tests := []struct {
		name   string
		values []string
		want   string
		err    error
	}{
		{"bare", []string{"batch-create-1"}, "batch-create-1", nil},
		{"sf-string", []string{`"batch-create-1"`}, "batch-create-1", nil},
		{"sf-string escaped quote", []string{`"a\"b"`}, `a"b`, nil},
		{"sf-string escaped backslash", []string{`"a\\b"`}, `a\b`, nil},
		{"sf-string both escapes", []string{`"\\\"\\"`}, `\"\`, nil},
		{"sf-string may hold a comma", []string{`"a,b"`}, "a,b", nil},
		{"sf-string may hold spaces", []string{`"a b"`}, "a b", nil},
		{"bare is not unescaped", []string{`a\b`}, `a\b`, nil},
		{"whitespace around bare trimmed", []string{" \tkey-1\t "}, "key-1", nil},
		{"whitespace around sf-string trimmed", []string{"\t \"key-1\" \t"}, "key-1", nil},
		{"255 bare", []string{longest}, longest, nil},
		{"255 sf-string", []string{`"` + longest + `"`}, longest, nil},

		{"invalid escape n", []string{`"a\nb"`}, "", ErrKeySyntax},
		{"invalid escape u", []string{`"a\u0041"`}, "", ErrKeySyntax},
		{"escape at the end", []string{`"ab\`}, "", ErrKeySyntax},
		{"escaped closing quote leaves it unterminated", []string{`"ab\"`}, "", ErrKeySyntax},
		{"unterminated", []string{`"abc`}, "", ErrKeySyntax},
		{"only an opening quote", []string{`"`}, "", ErrKeySyntax},
		{"trailing after the quote", []string{`"abc"x`}, "", ErrKeySyntax},
		{"inner unescaped quote", []string{`"a"b"`}, "", ErrKeySyntax},
		{"two sf-strings merged by a proxy", []string{`"a", "b"`}, "", ErrKeySyntax},
		{"parameters are not accepted", []string{`"a";p=1`}, "", ErrKeySyntax},

		{"two header fields", []string{"a", "b"}, "", ErrKeyDuplicated},
		{"two identical header fields", []string{"a", "a"}, "", ErrKeyDuplicated},
		{"bare with a comma", []string{"a,b"}, "", ErrKeyDuplicated},
		{"bare merged by a proxy", []string{"a, a"}, "", ErrKeyDuplicated},

		{"empty", []string{""}, "", ErrKeyEmpty},
		{"whitespace only", []string{" \t "}, "", ErrKeyEmpty},
		{"empty sf-string", []string{`""`}, "", ErrKeyEmpty},

		{"256 bare", []string{longest + "k"}, "", ErrKeyTooLong},
		{"256 sf-string", []string{`"` + longest + `k"`}, "", ErrKeyTooLong},

		{"tab inside bare", []string{"a\tb"}, "", ErrKeyCharacters},
		{"tab inside sf-string", []string{"\"a\tb\""}, "", ErrKeyCharacters},
		{"DEL bare", []string{"a\x7fb"}, "", ErrKeyCharacters},
		{"DEL sf-string", []string{"\"a\x7fb\""}, "", ErrKeyCharacters},
		{"NUL bare", []string{"a\x00b"}, "", ErrKeyCharacters},
		{"newline bare", []string{"a\nb"}, "", ErrKeyCharacters},
		{"non-ASCII bare", []string{"clé"}, "", ErrKeyCharacters},
		{"non-ASCII sf-string", []string{`"clé"`}, "", ErrKeyCharacters},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			key, ok, err := parseKeyHeader(tc.values)
			if !ok {
				t.Fatalf("parseKeyHeader(%q): ok = false, want true (a key header is present)", tc.values)
			}
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("parseKeyHeader(%q) = %q, %v; want error %v", tc.values, key, err, tc.err)
				}
				return
			}
			if err != nil || key != tc.want {
				t.Fatalf("parseKeyHeader(%q) = %q, %v; want %q, nil", tc.values, key, err, tc.want)
			}
		})
	}
}

func TestParseKeyHeaderAbsent(t *testing.T) {
	for _, values := range [][]string{nil, {}} {
		key, ok, err := parseKeyHeader(values)
		if ok || err != nil || key != "" {
			t.Errorf("parseKeyHeader(%#v) = %q, %v, %v; want \"\", false, nil", values, key, ok, err)
		}
	}
}

func TestValidateKey(t *testing.T) {
	tests := []struct {
		key string
		err error
	}{
		{"a", nil},
		{" !~", nil}, // the printable range ends are allowed: space, '!', '~'
		{strings.Repeat("x", 255), nil},
		{"", ErrKeyEmpty},
		{strings.Repeat("x", 256), ErrKeyTooLong},
		{"a\x1fb", ErrKeyCharacters},
		{"a\x7f", ErrKeyCharacters},
		{"\x80", ErrKeyCharacters},
		{"日本", ErrKeyCharacters},
	}
	for _, tc := range tests {
		err := ValidateKey(tc.key)
		if tc.err == nil && err != nil || tc.err != nil && !errors.Is(err, tc.err) {
			t.Errorf("ValidateKey(%q) = %v, want %v", tc.key, err, tc.err)
		}
	}
}
