package jcs

import (
	"bytes"
	"encoding/json"
	"errors"
	"maps"
	"reflect"
	"slices"
	"strconv"
	"testing"
	"unicode/utf16"
	"unicode/utf8"
)

// referenceJCS is a deliberately plain RFC 8785 serializer of a value decoded
// by encoding/json, used as an oracle for AppendJSONWithout. It shares only the
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
		res, err := canonicalize(in, "")
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
		again, err := canonicalize(res.Canonical, "")
		if err != nil {
			t.Fatalf("canonical %q of %q rejected: %v", res.Canonical, in, err)
		}
		if !bytes.Equal(again.Canonical, res.Canonical) {
			t.Fatalf("not idempotent: %q -> %q -> %q", in, res.Canonical, again.Canonical)
		}

		// With a key field: the stripped body is valid JSON and canonicalizes
		// to the same thing without a key.
		const kf = "idempotency_key"
		keyed, err := canonicalize(in, kf)
		if errors.Is(err, ErrMemberNotString) {
			return
		}
		if err != nil {
			t.Fatalf("accepted without key field but not with it: %q: %v", in, err)
		}
		if !keyed.Found {
			if !bytes.Equal(keyed.Canonical, res.Canonical) {
				t.Fatalf("no key, but canonical differs: %q vs %q", keyed.Canonical, res.Canonical)
			}
			return
		}
		if !json.Valid(keyed.Stripped) {
			t.Fatalf("stripped %q of %q is not valid JSON", keyed.Stripped, in)
		}
		re, err := canonicalize(keyed.Stripped, kf)
		if err != nil || re.Found || !bytes.Equal(re.Canonical, keyed.Canonical) {
			t.Fatalf("stripped %q of %q: canonical %q found=%v err=%v, want %q", keyed.Stripped, in, re.Canonical, re.Found, err, keyed.Canonical)
		}
	})
}

// FuzzCanonicalRoundTrip checks AppendJSONWithout with any key field name (also none):
// it never panics; what it accepts, encoding/json decodes to the same value as
// its Canonical output once the key field and top-level nulls are removed;
// canonicalizing Canonical again changes nothing; and Stripped is the input
// with exactly the key member cut out.
func FuzzCanonicalRoundTrip(f *testing.F) {
	for _, s := range []struct{ in, kf string }{
		{`{"idempotency_key":"k-1","b":[1,2],"a":null}`, "idempotency_key"},
		{`{"a":1,"idempotency_key":"k","c":{"idempotency_key":null}}`, "idempotency_key"},
		{` { "k" : "v" } `, "k"},
		{`{"\u006b":"v","x":-0}`, "k"},
		{`{"k":1}`, "k"},
		{`{"k":null,"k":"v"}`, "k"},
		{`{"é":"\ud83d\ude00"}`, "é"},
		{`{"":"empty name"}`, ""},
		{`[{"k":"nested only"}]`, "k"},
		{`{"a":1e21,"b":0.1,"c":123456789012345678901234567890}`, "idempotency_key"},
	} {
		f.Add([]byte(s.in), s.kf)
	}
	f.Fuzz(func(t *testing.T, in []byte, kf string) {
		checkRoundTrip(t, in, kf)
		// Random key field names rarely occur in random bodies: also use one
		// of the body's own top-level names.
		var top map[string]any
		if json.Unmarshal(in, &top) == nil && len(top) > 0 {
			names := slices.Sorted(maps.Keys(top))
			if name := names[len(kf)%len(names)]; name != "" && name != kf {
				checkRoundTrip(t, in, name)
			}
		}
	})
}

func checkRoundTrip(t *testing.T, in []byte, kf string) {
	t.Helper()
	// A dirty dst checks that the output is appended to it and dst itself
	// left alone.
	const dirty = "garbage"
	out, rm, err := AppendJSONWithout([]byte(dirty), in, kf)
	if !bytes.HasPrefix(out, []byte(dirty)) || err != nil && len(out) != len(dirty) {
		t.Fatalf("%q with key field %q: output %q, err %v; want %q and the canonical form, or %q alone on error", in, kf, out, err, dirty, dirty)
	}
	res := result{out[len(dirty):], rm}
	plain, plainErr := canonicalize(in, "")
	if err != nil {
		checkParseError(t, in, kf, err, plainErr)
		return
	}
	if plainErr != nil {
		t.Fatalf("%q accepted with key field %q but not without: %v", in, kf, plainErr)
	}
	if !json.Valid(in) {
		t.Fatalf("accepted input that encoding/json rejects: %q", in)
	}
	var orig any
	if err := json.Unmarshal(in, &orig); err != nil {
		t.Fatalf("accepted input that encoding/json cannot decode: %q: %v", in, err)
	}

	// What the key field is, according to encoding/json.
	top, isObject := orig.(map[string]any)
	keyVal, keyPresent := top[kf]
	wantKey := kf != "" && isObject && keyPresent && keyVal != nil
	keyNull := kf != "" && isObject && keyPresent && keyVal == nil // no key, but cut out too
	if res.Found != wantKey {
		t.Fatalf("%q with key field %q: Found = %v, want %v", in, kf, res.Found, wantKey)
	}
	if wantKey && keyVal != res.Value {
		t.Fatalf("%q with key field %q: Value = %q, encoding/json says %#v", in, kf, res.Value, keyVal)
	}

	// (a) Round trip: Canonical decodes to the input minus key and top-level nulls.
	want := decodeJSON(t, in)
	if m, ok := want.(map[string]any); ok {
		for k, v := range m {
			if v == nil || (kf != "" && k == kf) {
				delete(m, k)
			}
		}
	}
	if got := decodeJSON(t, res.Canonical); !reflect.DeepEqual(got, want) {
		t.Fatalf("canonical %q of %q (key field %q) decodes to %#v, want %#v", res.Canonical, in, kf, got, want)
	}
	if ref := referenceJCS(nil, want); !bytes.Equal(ref, res.Canonical) {
		t.Fatalf("canonical of %q (key field %q) is\n%q, reference gives\n%q", in, kf, res.Canonical, ref)
	}
	if !wantKey && !bytes.Equal(res.Canonical, plain.Canonical) {
		t.Fatalf("%q: no key for field %q, yet canonical %q differs from %q", in, kf, res.Canonical, plain.Canonical)
	}

	// (b) Idempotence, with and without the key field.
	for _, f2 := range []string{kf, ""} {
		again, err := canonicalize(res.Canonical, f2)
		if err != nil || again.Found || !bytes.Equal(again.Canonical, res.Canonical) {
			t.Fatalf("not idempotent (key field %q then %q): %q -> %q -> %q, found=%v, err=%v",
				kf, f2, in, res.Canonical, again.Canonical, again.Found, err)
		}
	}

	// Stripped: the input when there is no key member, else the input with
	// one contiguous cut that removes the key member (a string or null) and
	// nothing else.
	if !res.Found && !keyNull {
		if len(res.Stripped) != len(in) || (len(in) > 0 && &res.Stripped[0] != &in[0]) {
			t.Fatalf("no key, but Stripped %q is not the input slice %q", res.Stripped, in)
		}
		return
	}
	s := res.Stripped
	if !isOneCut(in, s) {
		t.Fatalf("stripped %q is not %q with one cut", s, in)
	}
	if !json.Valid(s) {
		t.Fatalf("stripped %q of %q is not valid JSON", s, in)
	}
	wantStripped := decodeJSON(t, in).(map[string]any)
	delete(wantStripped, kf)
	if got := decodeJSON(t, s); !reflect.DeepEqual(got, wantStripped) {
		t.Fatalf("stripped %q of %q decodes to %#v, want %#v", s, in, got, wantStripped)
	}
	re, err := canonicalize(s, kf)
	if err != nil || re.Found || !bytes.Equal(re.Canonical, res.Canonical) {
		t.Fatalf("stripped %q of %q: canonical %q found=%v err=%v, want %q", s, in, re.Canonical, re.Found, err, res.Canonical)
	}
}

// checkParseError checks a rejection: a *JSONError inside the input, the same
// one as without a key field; or ErrMemberNotString for valid JSON whose
// top-level key field is not a string.
func checkParseError(t *testing.T, in []byte, kf string, err, plainErr error) {
	t.Helper()
	if errors.Is(err, ErrMemberNotString) {
		if plainErr != nil {
			t.Fatalf("%q: ErrMemberNotString, but invalid without a key field: %v", in, plainErr)
		}
		var m map[string]any
		if kf == "" || json.Unmarshal(in, &m) != nil {
			t.Fatalf("%q: ErrMemberNotString for key field %q, but it is no object with that field", in, kf)
		}
		if v, ok := m[kf]; !ok {
			t.Fatalf("%q: ErrMemberNotString, but there is no field %q", in, kf)
		} else if _, isString := v.(string); isString {
			t.Fatalf("%q: ErrMemberNotString, but field %q is the string %q", in, kf, v)
		}
		return
	}
	var je *JSONError
	if !errors.As(err, &je) {
		t.Fatalf("%q: error %v is neither a *JSONError nor ErrMemberNotString", in, err)
	}
	if je.Offset < 0 || je.Offset > len(in) {
		t.Fatalf("offset %d outside input of length %d", je.Offset, len(in))
	}
	if !reflect.DeepEqual(err, plainErr) {
		t.Fatalf("%q: error with key field %q is %v, without it %v", in, kf, err, plainErr)
	}
}

func decodeJSON(t *testing.T, b []byte) any {
	t.Helper()
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("encoding/json cannot decode %q: %v", b, err)
	}
	return v
}

// isOneCut reports whether short is long with one contiguous run of bytes removed.
func isOneCut(long, short []byte) bool {
	if len(short) > len(long) {
		return false
	}
	p := 0
	for p < len(short) && long[p] == short[p] {
		p++
	}
	s := 0
	for s < len(short) && long[len(long)-1-s] == short[len(short)-1-s] {
		s++
	}
	return p+s >= len(short)
}
