package jcs

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
)

func TestCanonicalKeepsNestedNullsAndNestedKeyField(t *testing.T) {
	res, err := canonicalize([]byte(`{"k":"v","n":null,"o":{"k":1,"n":null},"a":[null,{"k":null}]}`), "k")
	if err != nil {
		t.Fatal(err)
	}
	want := `{"a":[null,{"k":null}],"o":{"k":1,"n":null}}`
	if string(res.Canonical) != want {
		t.Errorf("got %s, want %s", res.Canonical, want)
	}
}

func TestAppendJSONWithoutStripped(t *testing.T) {
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
			res, err := canonicalize([]byte(c.in), kf)
			if err != nil {
				t.Fatal(err)
			}
			if !res.Found || res.Value != "k" {
				t.Errorf("Found=%v Value=%q, want true %q", res.Found, res.Value, "k")
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
			again, err := canonicalize(res.Stripped, kf)
			if err != nil || again.Found || !bytes.Equal(again.Canonical, res.Canonical) {
				t.Errorf("AppendJSONWithout(Stripped) = %s found=%v err=%v, want %s without key", again.Canonical, again.Found, err, res.Canonical)
			}
		})
	}
}

func TestAppendJSONWithoutNoMemberSameSlice(t *testing.T) {
	for _, kf := range []string{"idempotency_key", ""} {
		body := []byte(`{"a":1,"idempotency_keyx":"k","o":{"idempotency_key":"k"}}`)
		res, err := canonicalize(body, kf)
		if err != nil {
			t.Fatal(err)
		}
		if res.Found || res.Value != "" {
			t.Errorf("keyField %q: Found=%v Value=%q", kf, res.Found, res.Value)
		}
		if len(res.Stripped) != len(body) || &res.Stripped[0] != &body[0] {
			t.Errorf("keyField %q: Stripped is not the input slice", kf)
		}
	}
	// keyField "" never matches, not even an empty member name.
	res, err := canonicalize([]byte(`{"":"k"}`), "")
	if err != nil || res.Found || string(res.Canonical) != `{"":"k"}` {
		t.Errorf("empty keyField: %s found=%v err=%v", res.Canonical, res.Found, err)
	}
}

func TestAppendJSONWithoutValueDecoding(t *testing.T) {
	cases := []struct{ in, want string }{
		{`{"k":"plain"}`, "plain"},
		{`{"k":"a\"b\\c\/d"}`, `a"b\c/d`},
		{`{"k":"\u0041\u00e9\ud83d\ude00\n"}`, "Aé😀\n"},
		{`{"k":""}`, ""},
		{`{"k":"caf` + "\u00e9" + `"}`, "café"},
	}
	for _, c := range cases {
		res, err := canonicalize([]byte(c.in), "k")
		if err != nil {
			t.Fatalf("AppendJSONWithout(%s): %v", c.in, err)
		}
		if !res.Found || res.Value != c.want {
			t.Errorf("AppendJSONWithout(%s): Found=%v Value=%q, want %q", c.in, res.Found, res.Value, c.want)
		}
		if string(res.Canonical) != "{}" {
			t.Errorf("AppendJSONWithout(%s): Canonical=%s, want {}", c.in, res.Canonical)
		}
	}
}

// "idempotency_key": null is no key, as an absent field is (llama-stack's
// optional parameter), and the member is still removed before the request
// goes upstream.
func TestAppendJSONWithoutNullMember(t *testing.T) {
	for in, stripped := range map[string]string{
		`{"a":1,"idempotency_key":null,"b":2}`:  `{"a":1,"b":2}`,
		`{"idempotency_key" : null , "a":1}`:    `{ "a":1}`,
		`{"a":1, "idempotency_key":null}`:       `{"a":1}`,
		`{"idempotency_key":null}`:              `{}`,
		`{"a":{"idempotency_key":null},"b":[]}`: `{"a":{"idempotency_key":null},"b":[]}`,
	} {
		res, err := canonicalize([]byte(in), "idempotency_key")
		if err != nil || res.Found || string(res.Stripped) != stripped {
			t.Errorf("AppendJSONWithout(%s) = Found %v, Stripped %s, %v; want no key, %s", in, res.Found, res.Stripped, err, stripped)
		}
		absent, _ := canonicalize([]byte(stripped), "idempotency_key")
		if string(res.Canonical) != string(absent.Canonical) {
			t.Errorf("AppendJSONWithout(%s): canonical %s differs from the body without the member, %s", in, res.Canonical, absent.Canonical)
		}
	}
	if _, err := canonicalize([]byte(`{"idempotency_key":nul}`), "idempotency_key"); err == nil {
		t.Error("a broken null literal parsed")
	}
}

func TestAppendJSONWithoutMemberNotString(t *testing.T) {
	for _, v := range []string{`1`, `{}`, `{"x":"k"}`, `["k"]`, `true`, `false`} {
		in := `{"a":1,"idempotency_key":` + v + `,"b":2}`
		_, err := canonicalize([]byte(in), "idempotency_key")
		if !errors.Is(err, ErrMemberNotString) {
			t.Errorf("AppendJSONWithout(%s) = %v, want ErrMemberNotString", in, err)
		}
	}
	// A malformed body is reported as such even when the key field is wrong.
	_, err := canonicalize([]byte(`{"idempotency_key":1,"b":}`), "idempotency_key")
	var je *JSONError
	if !errors.As(err, &je) {
		t.Errorf("malformed body with numeric key: %v, want *JSONError", err)
	}
	// Duplicate key fields are duplicate members.
	_, err = canonicalize([]byte(`{"idempotency_key":"a","idempotency_key":"b"}`), "idempotency_key")
	if !errors.As(err, &je) || !strings.Contains(je.Msg, "duplicate") {
		t.Errorf("duplicate key field: %v, want duplicate member *JSONError", err)
	}
}

func TestAppendJSONWithoutAppends(t *testing.T) {
	dst := make([]byte, 5, 256)
	copy(dst, "junk!")
	out, _, err := AppendJSONWithout(dst, []byte(`{"b":1,"a":2}`), "")
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != `junk!{"a":2,"b":1}` {
		t.Errorf("output = %s, want the canonical form after dst", out)
	}
	if &out[0] != &dst[0] {
		t.Error("the output does not reuse dst")
	}
	// On error, dst comes back as it was.
	out, _, err = AppendJSONWithout(dst, []byte(`{"b":1,"a":`), "")
	if err == nil || string(out) != "junk!" {
		t.Errorf("on error: %q, %v; want %q and an error", out, err, "junk!")
	}
}

func TestAppendJSONWithoutAllocs(t *testing.T) {
	body := []byte(`{"idempotency_key":"abc","items":[{"sku":"A-1","qty":2,"price":12.5},{"qty":1,"sku":"B-2","price":3}],"note":"x\ny"}`)
	if !poolKeepsItems() {
		t.Skip("sync.Pool drops items in this build (race detector); allocation counts are meaningless")
	}
	dst := make([]byte, 0, 512)
	AppendJSONWithout(dst, body, "idempotency_key") // warm the pool
	allocs := testing.AllocsPerRun(100, func() {
		if _, _, err := AppendJSONWithout(dst, body, "idempotency_key"); err != nil {
			t.Fatal(err)
		}
	})
	// The key string and the stripped copy.
	if allocs > 2 {
		t.Errorf("AppendJSONWithout allocates %.1f times per call, want <= 2", allocs)
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
