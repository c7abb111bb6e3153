package jcs

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"
)

// result is what the tests read of one AppendJSONWithout call: the
// canonical form it appended to a nil dst, and the Removal.
type result struct {
	Canonical []byte
	Removal
}

// canonicalize is AppendJSONWithout(nil, body, name) as one value.
func canonicalize(body []byte, name string) (result, error) {
	c, rm, err := AppendJSONWithout(nil, body, name)
	return result{c, rm}, err
}

func mustCanonical(t *testing.T, in string) string {
	t.Helper()
	res, err := canonicalize([]byte(in), "")
	if err != nil {
		t.Fatalf("AppendJSONWithout(%q): %v", in, err)
	}
	return string(res.Canonical)
}

// RFC 8785 section 3.2.2, the complete example, and its string example (3.2.2.2).
func TestCanonicalRFC8785Examples(t *testing.T) {
	cases := []struct{ name, in, want string }{
		{
			name: "3.2.2 full example",
			in: `{
  "numbers": [333333333.33333329, 1E30, 4.50,
              2e-3, 0.000000000000000000000000001],
  "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
  "literals": [null, true, false]
}`,
			want: `{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}`,
		},
		{
			name: "3.2.2.2 string escapes",
			in:   `"\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/"`,
			want: `"€$\u000f\nA'B\"\\\\\"/"`,
		},
		{
			name: "3.2.3 sorting",
			in: `{
  "\u20ac": "Euro Sign",
  "\r": "Carriage Return",
  "\ufb33": "Hebrew Letter Dalet With Dagesh",
  "1": "One",
  "\ud83d\ude00": "Emoji: Grinning Face",
  "\u0080": "Control",
  "\u00f6": "Latin Small Letter O With Diaeresis"
}`,
			want: "{" + `"\r":"Carriage Return",` + `"1":"One",` + "\"\u0080\":\"Control\"," +
				`"ö":"Latin Small Letter O With Diaeresis",` + `"€":"Euro Sign",` +
				`"😀":"Emoji: Grinning Face",` + "\"\ufb33\":\"Hebrew Letter Dalet With Dagesh\"" + "}",
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := mustCanonical(t, c.in); got != c.want {
				t.Errorf("got  %s\nwant %s", got, c.want)
			}
		})
	}
}

func TestCanonicalStrings(t *testing.T) {
	cases := []struct{ in, want string }{
		{`"\u0000\u001f\u0008\u000c\u000A\u000d\u0009"`, `"\u0000\u001f\b\f\n\r\t"`},
		{`"\u007f\u2028\u2029"`, "\"\x7f\u2028\u2029\""},
		{"\"\x7f\u2028 é 😀\"", "\"\x7f\u2028 é 😀\""},
		{`"\uD834\uDD1E"`, `"𝄞"`},
		{`"\u00E9"`, `"é"`},
		{`"a\/b"`, `"a/b"`},
		{`"\"\\"`, `"\"\\"`},
		{`""`, `""`},
		{`"</script>"`, `"</script>"`},
	}
	for _, c := range cases {
		if got := mustCanonical(t, c.in); got != c.want {
			t.Errorf("canonical(%s) = %q, want %q", c.in, got, c.want)
		}
	}
}

func TestCanonicalVariantsEqual(t *testing.T) {
	groups := []struct {
		name     string
		keyField string
		inputs   []string
	}{
		{"whitespace", "", []string{
			`{"a":[1,2,{"b":true}],"c":"x"}`,
			" \t\r\n{ \"a\" : [ 1 , 2 , { \"b\" : true } ] , \"c\" : \"x\" } \n",
		}},
		{"member order", "", []string{
			`{"a":1,"b":{"x":1,"y":[{"p":1,"q":2}]},"c":3}`,
			`{"c":3,"b":{"y":[{"q":2,"p":1}],"x":1},"a":1}`,
			`{"b":{"x":1,"y":[{"p":1,"q":2}]},"c":3,"a":1}`,
		}},
		{"number spellings", "", []string{
			`{"n":1}`, `{"n":1.0}`, `{"n":1e0}`, `{"n":10e-1}`, `{"n":0.1e1}`, `{"n":1E+0}`, `{"n":100e-2}`,
		}},
		{"escape spellings", "", []string{
			`{"s":"A/","A":1}`, `{"s":"\u0041\/","\u0041":1}`, `{"s":"\u0041/","A":1}`,
		}},
		{"top-level null member", "", []string{
			`{"a":1}`, `{"a":1,"b":null}`, `{"z":null,"a":1}`,
		}},
		{"key field", "idempotency_key", []string{
			`{"a":1}`,
			`{"a":1,"idempotency_key":"k1"}`,
			`{"idempotency_key":"other","a":1}`,
			`{"idempotency_key":"k","a":1,"n":null}`,
		}},
	}
	for _, g := range groups {
		t.Run(g.name, func(t *testing.T) {
			var first string
			for i, in := range g.inputs {
				res, err := canonicalize([]byte(in), g.keyField)
				if err != nil {
					t.Fatalf("AppendJSONWithout(%s): %v", in, err)
				}
				if i == 0 {
					first = string(res.Canonical)
					continue
				}
				if string(res.Canonical) != first {
					t.Errorf("canonical(%s) = %s, want %s (as for %s)", in, res.Canonical, first, g.inputs[0])
				}
			}
		})
	}
}

func TestCanonicalPairsDiffer(t *testing.T) {
	pairs := [][2]string{
		{`{"metadata":{}}`, `{"metadata":null}`},
		{`"1"`, `1`},
		{`{"a":"1"}`, `{"a":1}`},
		{`{"a":{"b":null}}`, `{"a":{}}`},
		{`[1,2]`, `[2,1]`},
		{`{"a":[null]}`, `{"a":[]}`},
		{`{"a":true}`, `{"a":"true"}`},
		{`{"a":1}`, `{"A":1}`},
	}
	for _, p := range pairs {
		a, b := mustCanonical(t, p[0]), mustCanonical(t, p[1])
		if a == b {
			t.Errorf("canonical(%s) == canonical(%s) == %s", p[0], p[1], a)
		}
	}
}

func TestCanonicalNonObjectTopLevel(t *testing.T) {
	cases := []struct{ in, want string }{
		{` [ {"idempotency_key":"k", "b":null} , null ] `, `[{"b":null,"idempotency_key":"k"},null]`},
		{`"idempotency_key"`, `"idempotency_key"`},
		{` 12.0 `, `12`},
		{`null`, `null`},
		{`true`, `true`},
	}
	for _, c := range cases {
		res, err := canonicalize([]byte(c.in), "idempotency_key")
		if err != nil {
			t.Fatalf("AppendJSONWithout(%s): %v", c.in, err)
		}
		if string(res.Canonical) != c.want || res.Found || res.Value != "" {
			t.Errorf("AppendJSONWithout(%s) = %s found=%v key=%q, want %s and no key", c.in, res.Canonical, res.Found, res.Value, c.want)
		}
	}
}

func TestCanonicalRejects(t *testing.T) {
	deep := strings.Repeat("[", 100000)
	cases := []struct{ name, in string }{
		{"empty", ""},
		{"whitespace only", " \t\r\n "},
		{"duplicate top-level", `{"a":1,"a":2}`},
		{"duplicate top-level non-adjacent", `{"a":1,"b":2,"a":3}`},
		{"duplicate nested", `{"x":{"a":1,"b":2,"a":1}}`},
		{"duplicate in array object", `[{"b":1,"b":1}]`},
		{"duplicate escaped-equal", `{"a":1,"\u0061":2}`},
		{"duplicate escaped-equal nested", `{"o":{"\u00e9":1,"é":2}}`},
		{"duplicate null members", `{"a":null,"a":null}`},
		{"invalid UTF-8 in string", "\"a\xffb\""},
		{"invalid UTF-8 in name", "{\"\xc3\":1}"},
		{"overlong UTF-8", "\"\xc0\xaf\""},
		{"UTF-8 encoded surrogate", "\"\xed\xa0\x80\""},
		{"invalid UTF-8 outside string", "[1,\xff]"},
		{"lone high surrogate", `"\ud83d"`},
		{"lone high surrogate then text", `"\ud83dx"`},
		{"high surrogate then BMP escape", `"\ud83d\u0041"`},
		{"high surrogate then high", `"\ud83d\ud83d"`},
		{"lone low surrogate", `"\ude00"`},
		{"reversed surrogates", `"\ude00\ud83d"`},
		{"deep array", deep},
		{"deep array closed", strings.Repeat("[", maxDepth+1) + strings.Repeat("]", maxDepth+1)},
		{"deep object", strings.Repeat(`{"a":`, maxDepth+1) + "1" + strings.Repeat("}", maxDepth+1)},
		{"overflow", `1e400`},
		{"negative overflow", `-1e400`},
		{"overflow nested", `{"a":[1.8e308]}`},
		{"truncated object", `{"a":1`},
		{"truncated name", `{"a`},
		{"truncated after colon", `{"a":`},
		{"truncated string", `"abc`},
		{"truncated escape", `"\u00`},
		{"truncated literal", `tru`},
		{"truncated array", `[1,`},
		{"truncated number", `-`},
		{"truncated exponent", `1e`},
		{"trailing garbage", `{} x`},
		{"two values", `1 2`},
		{"trailing comma array", `[1,]`},
		{"trailing comma object", `{"a":1,}`},
		{"leading zero", `01`},
		{"leading zero negative", `-01`},
		{"missing fraction digits", `1.`},
		{"missing integer part", `.5`},
		{"plus sign", `+1`},
		{"NaN", `NaN`},
		{"Infinity", `Infinity`},
		{"negative Infinity", `-Infinity`},
		{"hex number", `0x10`},
		{"raw tab in string", "\"a\tb\""},
		{"raw newline in string", "\"a\nb\""},
		{"raw NUL in string", "\"a\x00b\""},
		{"bad escape", `"\x"`},
		{"bad unicode escape", `"\u12g4"`},
		{"single quotes", `'a'`},
		{"unquoted name", `{a:1}`},
		{"missing colon", `{"a" 1}`},
		{"non-string name", `{1:1}`},
		{"bad literal", `nul`},
		{"capital literal", `True`},
		{"byte order mark", "\xef\xbb\xbf{}"},
		{"comment", `{} // x`},
		{"vertical tab whitespace", "\v1"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			start := time.Now()
			res, err := canonicalize([]byte(c.in), "")
			var je *JSONError
			if !errors.As(err, &je) {
				t.Fatalf("AppendJSONWithout(%.40q) = %q, %v; want *JSONError", c.in, res.Canonical, err)
			}
			if je.Offset < 0 || je.Offset > len(c.in) {
				t.Errorf("offset %d outside input of length %d", je.Offset, len(c.in))
			}
			if !strings.HasPrefix(err.Error(), "invalid JSON at byte "+strconv.Itoa(je.Offset)+": ") {
				t.Errorf("Error() = %q", err.Error())
			}
			if d := time.Since(start); d > 100*time.Millisecond {
				t.Errorf("took %v", d)
			}
		})
	}
}

func TestCanonicalDepthLimit(t *testing.T) {
	ok := strings.Repeat("[", maxDepth) + strings.Repeat("]", maxDepth)
	if _, err := canonicalize([]byte(ok), ""); err != nil {
		t.Errorf("depth %d rejected: %v", maxDepth, err)
	}
	okObj := strings.Repeat(`{"a":`, maxDepth-1) + "[]" + strings.Repeat("}", maxDepth-1)
	if _, err := canonicalize([]byte(okObj), ""); err != nil {
		t.Errorf("mixed depth %d rejected: %v", maxDepth, err)
	}
	_, err := canonicalize([]byte(strings.Repeat("[", maxDepth+1)+strings.Repeat("]", maxDepth+1)), "")
	var je *JSONError
	if !errors.As(err, &je) || je.Offset != maxDepth {
		t.Errorf("depth %d: err = %v, want *JSONError at byte %d", maxDepth+1, err, maxDepth)
	}
}

func TestCanonicalErrorOffsets(t *testing.T) {
	cases := []struct {
		in     string
		offset int
		msg    string
	}{
		{`{"a":1, "a":2}`, 8, `duplicate member name "a"`},
		{`{"b":1,"a":2,"b":3}`, 13, `duplicate member name "b"`},
		{`{"a":1} x`, 8, "unexpected data"},
		{"\"ab\x01\"", 3, "control character"},
		{"\"ab\xff\"", 3, "invalid UTF-8"},
		{`[1e400]`, 1, "out of range"},
		{`"\ude00"`, 1, "surrogate"},
		{`[1,`, 3, "end of input"},
	}
	for _, c := range cases {
		_, err := canonicalize([]byte(c.in), "")
		var je *JSONError
		if !errors.As(err, &je) {
			t.Errorf("AppendJSONWithout(%q): %v, want *JSONError", c.in, err)
			continue
		}
		if je.Offset != c.offset || !strings.Contains(je.Msg, c.msg) {
			t.Errorf("AppendJSONWithout(%q) error = %v, want offset %d and %q", c.in, err, c.offset, c.msg)
		}
	}
}

func TestCanonicalIdempotentAndMatchesEncodingJSON(t *testing.T) {
	inputs := []string{
		`{"z":[1,2.5,-3e-9,{"y":"\u00e9\n","x":null}],"a":{"c":true,"b":false},"m":"\ud83d\ude00"}`,
		`[0.1,0.2,0.30000000000000004,1e100,-1.5e-300,123456789012345678]`,
		`{"deep":{"deeper":{"deepest":[[],{},""]}}}`,
	}
	for _, in := range inputs {
		c1 := mustCanonical(t, in)
		if c2 := mustCanonical(t, c1); c2 != c1 {
			t.Errorf("not idempotent: %s -> %s", c1, c2)
		}
		var a, b any
		if err := json.Unmarshal([]byte(in), &a); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal([]byte(c1), &b); err != nil {
			t.Fatalf("canonical %s: %v", c1, err)
		}
		// Canonical and encoding/json agree once encoding/json sorts keys;
		// compare values rather than bytes (encoding/json escapes differently).
		ja, _ := json.Marshal(a)
		jb, _ := json.Marshal(b)
		if !bytes.Equal(ja, jb) {
			t.Errorf("value changed: %s vs %s", ja, jb)
		}
	}
}
