package idempotency

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"slices"
	"strconv"
	"testing"
	"unicode/utf16"
	"unicode/utf8"
)

// referenceJCS is a deliberately plain RFC 8785 serializer of a value decoded
// by encoding/json, used as an oracle for ParseJSON. It shares only the
// number formatter, which has its own tests against RFC 8785 Appendix B.
func referenceJCS(b []byte, v any) []byte {
	switch v := v.(type) {
	case nil:
		return append(b, "null"...)
	case bool:
		return strconv.AppendBool(b, v)
	case float64:
		return appendESNumber(b, v)
	case string:
		b = append(b, '"')
		for _, r := range v {
			switch {
			case r == '"' || r == '\\':
				b = append(b, '\\', byte(r))
			case r == '\b':
				b = append(b, `\b`...)
			case r == '\f':
				b = append(b, `\f`...)
			case r == '\n':
				b = append(b, `\n`...)
			case r == '\r':
				b = append(b, `\r`...)
			case r == '\t':
				b = append(b, `\t`...)
			case r < 0x20:
				b = append(b, `\u00`...)
				b = append(b, "0123456789abcdef"[r>>4], "0123456789abcdef"[r&0xf])
			default:
				b = utf8.AppendRune(b, r)
			}
		}
		return append(b, '"')
	case []any:
		b = append(b, '[')
		for i, e := range v {
			if i > 0 {
				b = append(b, ',')
			}
			b = referenceJCS(b, e)
		}
		return append(b, ']')
	case map[string]any:
		names := make([]string, 0, len(v))
		for k := range v {
			names = append(names, k)
		}
		slices.SortFunc(names, func(x, y string) int {
			return slices.Compare(utf16.Encode([]rune(x)), utf16.Encode([]rune(y)))
		})
		b = append(b, '{')
		for i, k := range names {
			if i > 0 {
				b = append(b, ',')
			}
			b = referenceJCS(b, k)
			b = append(b, ':')
			b = referenceJCS(b, v[k])
		}
		return append(b, '}')
	}
	panic("referenceJCS: unexpected type")
}

func FuzzCanonicalJSON(f *testing.F) {
	for _, s := range []string{
		`{"b":1,"a":[true,false,null],"c":{"y":"\u00e9","x":-0.0}}`,
		`{"idempotency_key":"k","a":null,"b":1e-7}`,
		`[1e21,1E+21,0.000001,123456789012345678901,5e-324]`,
		`"\ud83d\ude00\u2028\/\u0000"`,
		`{"\u20ac":1,"\ufb33":2,"\ud83d\ude00":3,"\r":4}`,
		" \t{ \"a\" : [ ] , \"b\" : { } }\n",
		`{"a":1,"a":2}`,
		`[[[[[[[[[[]]]]]]]]]]`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		res, err := ParseJSON(in, "", nil)
		if err != nil {
			var je *JSONError
			if !errors.As(err, &je) {
				t.Fatalf("error %v is not a *JSONError", err)
			}
			if je.Offset < 0 || je.Offset > len(in) {
				t.Fatalf("offset %d outside input of length %d", je.Offset, len(in))
			}
			return
		}
		if !json.Valid(in) {
			t.Fatalf("accepted input that encoding/json rejects: %q", in)
		}
		var want, got any
		if err := json.Unmarshal(in, &want); err != nil {
			t.Fatalf("accepted input that encoding/json cannot decode: %q: %v", in, err)
		}
		if m, ok := want.(map[string]any); ok {
			for k, v := range m {
				if v == nil {
					delete(m, k)
				}
			}
		}
		if err := json.Unmarshal(res.Canonical, &got); err != nil {
			t.Fatalf("canonical %q of %q does not decode: %v", res.Canonical, in, err)
		}
		if !reflect.DeepEqual(want, got) {
			t.Fatalf("canonical %q of %q decodes to %#v, want %#v", res.Canonical, in, got, want)
		}
		if ref := referenceJCS(nil, want); !bytes.Equal(ref, res.Canonical) {
			t.Fatalf("canonical of %q is\n%q, reference gives\n%q", in, res.Canonical, ref)
		}
		again, err := ParseJSON(res.Canonical, "", nil)
		if err != nil {
			t.Fatalf("canonical %q of %q rejected: %v", res.Canonical, in, err)
		}
		if !bytes.Equal(again.Canonical, res.Canonical) {
			t.Fatalf("not idempotent: %q -> %q -> %q", in, res.Canonical, again.Canonical)
		}

		// With a key field: the stripped body is valid JSON and canonicalizes
		// to the same thing without a key.
		const kf = "idempotency_key"
		keyed, err := ParseJSON(in, kf, nil)
		if errors.Is(err, ErrKeyFieldNotString) {
			return
		}
		if err != nil {
			t.Fatalf("accepted without key field but not with it: %q: %v", in, err)
		}
		if !keyed.HasKey {
			if !bytes.Equal(keyed.Canonical, res.Canonical) {
				t.Fatalf("no key, but canonical differs: %q vs %q", keyed.Canonical, res.Canonical)
			}
			return
		}
		if !json.Valid(keyed.Stripped) {
			t.Fatalf("stripped %q of %q is not valid JSON", keyed.Stripped, in)
		}
		re, err := ParseJSON(keyed.Stripped, kf, nil)
		if err != nil || re.HasKey || !bytes.Equal(re.Canonical, keyed.Canonical) {
			t.Fatalf("stripped %q of %q: canonical %q hasKey=%v err=%v, want %q", keyed.Stripped, in, re.Canonical, re.HasKey, err, keyed.Canonical)
		}
	})
}
