package jcs

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strconv"
	"testing"
)

// batchBody generates a deterministic batch-like request body of about size
// bytes: an idempotency key, some envelope fields (members deliberately not
// in canonical order) and an array of item objects with nested metadata.
func batchBody(size int) []byte {
	r := rand.New(rand.NewPCG(1, uint64(size)))
	b := []byte(`{"idempotency_key":"3f2b9c1e-7d4a-4c1b-9e55-0a6f1c2d3e4f","customer_id":"cus_`)
	b = strconv.AppendUint(b, r.Uint64()%1e9, 10)
	b = append(b, `","currency":"EUR","dry_run":false,"note":null,"items":[`...)
	words := []string{"alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "caf\u00e9", "na\\u00efve", "line\\nbreak", "quote\\\"d"}
	for i := 0; ; i++ {
		if i > 0 {
			b = append(b, ',')
		}
		b = fmt.Appendf(b, `{"sku":"SKU-%06d","quantity":%d,"unit_price":%.2f,"discount":%g,`,
			r.IntN(1e6), 1+r.IntN(20), r.Float64()*500, r.Float64()/10)
		b = fmt.Appendf(b, `"description":"%s %s %s","tags":["%s","%s"],"gift":%t,`,
			words[r.IntN(len(words))], words[r.IntN(len(words))], words[r.IntN(len(words))],
			words[r.IntN(len(words))], words[r.IntN(len(words))], r.IntN(2) == 0)
		b = fmt.Appendf(b, `"metadata":{"source":"web","line":%d,"weight_kg":%g,"dims":[%d,%d,%d],"warehouse":null}}`,
			i, float64(r.IntN(100000))/1000, r.IntN(100), r.IntN(100), r.IntN(100))
		if len(b) >= size-64 {
			break
		}
	}
	b = append(b, `],"requested_at":"2026-01-02T03:04:05Z","total_hint":1.5e3}`...)
	if !json.Valid(b) {
		panic("batchBody produced invalid JSON")
	}
	return b
}

var benchSizes = []struct {
	name string
	size int
}{
	{"1KiB", 1 << 10},
	{"64KiB", 64 << 10},
	{"1MiB", 1 << 20},
}

func BenchmarkAppendJSONWithout(b *testing.B) {
	for _, s := range benchSizes {
		body := batchBody(s.size)
		b.Run(s.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(body)))
			dst := make([]byte, 0, len(body))
			for b.Loop() {
				out, _, err := AppendJSONWithout(dst[:0], body, "idempotency_key")
				if err != nil {
					b.Fatal(err)
				}
				dst = out
			}
		})
	}
}

// BenchmarkEncodingJSONBaseline is what AppendJSONWithout replaces: decode into any
// and re-encode (which sorts object keys).
func BenchmarkEncodingJSONBaseline(b *testing.B) {
	for _, s := range benchSizes {
		body := batchBody(s.size)
		b.Run(s.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(body)))
			for b.Loop() {
				var v any
				if err := json.Unmarshal(body, &v); err != nil {
					b.Fatal(err)
				}
				if _, err := json.Marshal(v); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
