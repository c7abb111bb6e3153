package idempotency

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf16"
)

func mustCanonical(t *testing.T, in string) string {
	t.Helper()
	res, err := ParseJSON([]byte(in), "", nil)
	if err != nil {
		t.Fatalf("ParseJSON(%q): %v", in, err)
	}
	return string(res.Canonical)
}

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
			t.Errorf("ParseJSON(%s) (%#016x) = %q, want %q", in, c.bits, got, c.want)
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

func TestCanonicalMemberOrderUTF16(t *testing.T) {
	// U+FFFD (EF BF BD) sorts after U+1F600 in UTF-16 (D83D DE00) but
	// before it in UTF-8 byte order.
	got := mustCanonical(t, `{"\ufffd":1,"\ud83d\ude00":2,"\ud7ff":3,"a":4,"ab":5,"":6}`)
	want := `{"":6,"a":4,"ab":5,"` + "\ud7ff" + `":3,"😀":2,"` + "\ufffd" + `":1}`
	if got != want {
		t.Errorf("got %s\nwant %s", got, want)
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
				res, err := ParseJSON([]byte(in), g.keyField, nil)
				if err != nil {
					t.Fatalf("ParseJSON(%s): %v", in, err)
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

func TestCanonicalKeepsNestedNullsAndNestedKeyField(t *testing.T) {
	res, err := ParseJSON([]byte(`{"k":"v","n":null,"o":{"k":1,"n":null},"a":[null,{"k":null}]}`), "k", nil)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"a":[null,{"k":null}],"o":{"k":1,"n":null}}`
	if string(res.Canonical) != want {
		t.Errorf("got %s, want %s", res.Canonical, want)
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
		res, err := ParseJSON([]byte(c.in), "idempotency_key", nil)
		if err != nil {
			t.Fatalf("ParseJSON(%s): %v", c.in, err)
		}
		if string(res.Canonical) != c.want || res.HasKey || res.Key != "" {
			t.Errorf("ParseJSON(%s) = %s hasKey=%v key=%q, want %s and no key", c.in, res.Canonical, res.HasKey, res.Key, c.want)
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
		{"deep array closed", strings.Repeat("[", MaxJSONDepth+1) + strings.Repeat("]", MaxJSONDepth+1)},
		{"deep object", strings.Repeat(`{"a":`, MaxJSONDepth+1) + "1" + strings.Repeat("}", MaxJSONDepth+1)},
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
			res, err := ParseJSON([]byte(c.in), "", nil)
			var je *JSONError
			if !errors.As(err, &je) {
				t.Fatalf("ParseJSON(%.40q) = %q, %v; want *JSONError", c.in, res.Canonical, err)
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
	ok := strings.Repeat("[", MaxJSONDepth) + strings.Repeat("]", MaxJSONDepth)
	if _, err := ParseJSON([]byte(ok), "", nil); err != nil {
		t.Errorf("depth %d rejected: %v", MaxJSONDepth, err)
	}
	okObj := strings.Repeat(`{"a":`, MaxJSONDepth-1) + "[]" + strings.Repeat("}", MaxJSONDepth-1)
	if _, err := ParseJSON([]byte(okObj), "", nil); err != nil {
		t.Errorf("mixed depth %d rejected: %v", MaxJSONDepth, err)
	}
	_, err := ParseJSON([]byte(strings.Repeat("[", MaxJSONDepth+1)+strings.Repeat("]", MaxJSONDepth+1)), "", nil)
	var je *JSONError
	if !errors.As(err, &je) || je.Offset != MaxJSONDepth {
		t.Errorf("depth %d: err = %v, want *JSONError at byte %d", MaxJSONDepth+1, err, MaxJSONDepth)
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
		_, err := ParseJSON([]byte(c.in), "", nil)
		var je *JSONError
		if !errors.As(err, &je) {
			t.Errorf("ParseJSON(%q): %v, want *JSONError", c.in, err)
			continue
		}
		if je.Offset != c.offset || !strings.Contains(je.Msg, c.msg) {
			t.Errorf("ParseJSON(%q) error = %v, want offset %d and %q", c.in, err, c.offset, c.msg)
		}
	}
}

func TestParseJSONStripped(t *testing.T) {
	const kf = "idempotency_key"
	cases := []struct{ name, in, want string }{
		{"first", `{"idempotency_key":"k","a":1,"b":2}`, `{"a":1,"b":2}`},
		{"middle", `{"a":1, "idempotency_key":"k", "b":2}`, `{"a":1, "b":2}`},
		{"last", `{"a":1,"b":2,"idempotency_key":"k"}`, `{"a":1,"b":2}`},
		{"only", `{"idempotency_key":"k"}`, `{}`},
		{"only with whitespace", " { \"idempotency_key\" : \"k\" } \n", " {  } \n"},
		{"first with whitespace", "{\n  \"idempotency_key\" : \"k\" ,\n  \"a\": 1\n}", "{\n  \n  \"a\": 1\n}"},
		{"last with whitespace", "{\n  \"a\": 1 ,\n  \"idempotency_key\" : \"k\"\n}", "{\n  \"a\": 1 \n}"},
		{"escaped name", `{"a":1,"idempotency\u005fkey":"k"}`, `{"a":1}`},
		{"nested same name stays", `{"o":{"idempotency_key":"x"},"idempotency_key":"k"}`, `{"o":{"idempotency_key":"x"}}`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			res, err := ParseJSON([]byte(c.in), kf, nil)
			if err != nil {
				t.Fatal(err)
			}
			if !res.HasKey || res.Key != "k" {
				t.Errorf("HasKey=%v Key=%q, want true %q", res.HasKey, res.Key, "k")
			}
			if string(res.Stripped) != c.want {
				t.Errorf("Stripped = %q, want %q", res.Stripped, c.want)
			}
			if !json.Valid(res.Stripped) {
				t.Errorf("Stripped %q is not valid JSON", res.Stripped)
			}
			var top map[string]any
			if err := json.Unmarshal(res.Stripped, &top); err != nil {
				t.Fatal(err)
			}
			if _, ok := top[kf]; ok {
				t.Errorf("Stripped %q still has the key field", res.Stripped)
			}
			again, err := ParseJSON(res.Stripped, kf, nil)
			if err != nil || again.HasKey || !bytes.Equal(again.Canonical, res.Canonical) {
				t.Errorf("ParseJSON(Stripped) = %s hasKey=%v err=%v, want %s without key", again.Canonical, again.HasKey, err, res.Canonical)
			}
		})
	}
}

func TestParseJSONNoKeySameSlice(t *testing.T) {
	for _, kf := range []string{"idempotency_key", ""} {
		body := []byte(`{"a":1,"idempotency_keyx":"k","o":{"idempotency_key":"k"}}`)
		res, err := ParseJSON(body, kf, nil)
		if err != nil {
			t.Fatal(err)
		}
		if res.HasKey || res.Key != "" {
			t.Errorf("keyField %q: HasKey=%v Key=%q", kf, res.HasKey, res.Key)
		}
		if len(res.Stripped) != len(body) || &res.Stripped[0] != &body[0] {
			t.Errorf("keyField %q: Stripped is not the input slice", kf)
		}
	}
	// keyField "" never matches, not even an empty member name.
	res, err := ParseJSON([]byte(`{"":"k"}`), "", nil)
	if err != nil || res.HasKey || string(res.Canonical) != `{"":"k"}` {
		t.Errorf("empty keyField: %s hasKey=%v err=%v", res.Canonical, res.HasKey, err)
	}
}

func TestParseJSONKeyDecoding(t *testing.T) {
	cases := []struct{ in, want string }{
		{`{"k":"plain"}`, "plain"},
		{`{"k":"a\"b\\c\/d"}`, `a"b\c/d`},
		{`{"k":"\u0041\u00e9\ud83d\ude00\n"}`, "Aé😀\n"},
		{`{"k":""}`, ""},
		{`{"k":"caf` + "\u00e9" + `"}`, "café"},
	}
	for _, c := range cases {
		res, err := ParseJSON([]byte(c.in), "k", nil)
		if err != nil {
			t.Fatalf("ParseJSON(%s): %v", c.in, err)
		}
		if !res.HasKey || res.Key != c.want {
			t.Errorf("ParseJSON(%s): HasKey=%v Key=%q, want %q", c.in, res.HasKey, res.Key, c.want)
		}
		if string(res.Canonical) != "{}" {
			t.Errorf("ParseJSON(%s): Canonical=%s, want {}", c.in, res.Canonical)
		}
	}
}

// "idempotency_key": null is no key, as an absent field is (llama-stack's
// optional parameter), and the member is still removed before the request
// goes upstream.
func TestParseJSONKeyFieldNull(t *testing.T) {
	for in, stripped := range map[string]string{
		`{"a":1,"idempotency_key":null,"b":2}`:  `{"a":1,"b":2}`,
		`{"idempotency_key" : null , "a":1}`:    `{ "a":1}`,
		`{"a":1, "idempotency_key":null}`:       `{"a":1}`,
		`{"idempotency_key":null}`:              `{}`,
		`{"a":{"idempotency_key":null},"b":[]}`: `{"a":{"idempotency_key":null},"b":[]}`,
	} {
		res, err := ParseJSON([]byte(in), "idempotency_key", nil)
		if err != nil || res.HasKey || string(res.Stripped) != stripped {
			t.Errorf("ParseJSON(%s) = HasKey %v, Stripped %s, %v; want no key, %s", in, res.HasKey, res.Stripped, err, stripped)
		}
		absent, _ := ParseJSON([]byte(stripped), "idempotency_key", nil)
		if string(res.Canonical) != string(absent.Canonical) {
			t.Errorf("ParseJSON(%s): canonical %s differs from the body without the member, %s", in, res.Canonical, absent.Canonical)
		}
	}
	if _, err := ParseJSON([]byte(`{"idempotency_key":nul}`), "idempotency_key", nil); err == nil {
		t.Error("a broken null literal parsed")
	}
}

func TestParseJSONKeyFieldNotString(t *testing.T) {
	for _, v := range []string{`1`, `{}`, `{"x":"k"}`, `["k"]`, `true`, `false`} {
		in := `{"a":1,"idempotency_key":` + v + `,"b":2}`
		_, err := ParseJSON([]byte(in), "idempotency_key", nil)
		if !errors.Is(err, ErrKeyFieldNotString) {
			t.Errorf("ParseJSON(%s) = %v, want ErrKeyFieldNotString", in, err)
		}
	}
	// A malformed body is reported as such even when the key field is wrong.
	_, err := ParseJSON([]byte(`{"idempotency_key":1,"b":}`), "idempotency_key", nil)
	var je *JSONError
	if !errors.As(err, &je) {
		t.Errorf("malformed body with numeric key: %v, want *JSONError", err)
	}
	// Duplicate key fields are duplicate members.
	_, err = ParseJSON([]byte(`{"idempotency_key":"a","idempotency_key":"b"}`), "idempotency_key", nil)
	if !errors.As(err, &je) || !strings.Contains(je.Msg, "duplicate") {
		t.Errorf("duplicate key field: %v, want duplicate member *JSONError", err)
	}
}

func TestParseJSONReusesDst(t *testing.T) {
	dst := make([]byte, 5, 256)
	copy(dst, "junk!")
	res, err := ParseJSON([]byte(`{"b":1,"a":2}`), "", dst)
	if err != nil {
		t.Fatal(err)
	}
	if string(res.Canonical) != `{"a":2,"b":1}` {
		t.Errorf("Canonical = %s", res.Canonical)
	}
	if &res.Canonical[0] != &dst[:1][0] {
		t.Error("Canonical does not reuse dst")
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

func TestParseJSONAllocs(t *testing.T) {
	body := []byte(`{"idempotency_key":"abc","items":[{"sku":"A-1","qty":2,"price":12.5},{"qty":1,"sku":"B-2","price":3}],"note":"x\ny"}`)
	if !poolKeepsItems() {
		t.Skip("sync.Pool drops items in this build (race detector); allocation counts are meaningless")
	}
	dst := make([]byte, 0, 512)
	ParseJSON(body, "idempotency_key", dst) // warm the pool
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := ParseJSON(body, "idempotency_key", dst); err != nil {
			t.Fatal(err)
		}
	})
	// The key string and the stripped copy.
	if allocs > 2 {
		t.Errorf("ParseJSON allocates %.1f times per call, want <= 2", allocs)
	}
}

// poolKeepsItems reports whether a sync.Pool hands back what was put in it;
// the race detector makes Put drop items at random.
func poolKeepsItems() bool {
	var p sync.Pool
	for range 100 {
		x := new(int)
		p.Put(x)
		if p.Get() != x {
			return false
		}
	}
	return true
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
	if _, err := ParseJSON([]byte(`{"a":1,"a\u0000":2}`), "", nil); err != nil {
		t.Errorf(`"a" and "a\u0000" taken for duplicates: %v`, err)
	}
	if got := mustCanonical(t, `{"a\u0000":2,"a":1}`); got != `{"a":1,"a\u0000":2}` {
		t.Errorf("got %s", got)
	}
}
