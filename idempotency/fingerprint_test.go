package idempotency

import (
	"crypto/sha256"
	"encoding/binary"
	"testing"
)

func TestFingerprintEachFieldCounts(t *testing.T) {
	m, p, q, k, b := "POST", "/v1/batches", "x=1", BodyJSON, []byte(`{"endpoint":"/v1/chat/completions"}`)
	ref := NewFingerprint(m, p, q, k, b)
	if ref != NewFingerprint(m, p, "x=1", k, []byte(`{"endpoint":"/v1/chat/completions"}`)) {
		t.Fatal("the same inputs give different fingerprints")
	}
	variants := map[string]Fingerprint{
		"method": NewFingerprint("PUT", p, q, k, b),
		"path":   NewFingerprint(m, "/v1/files", q, k, b),
		"query":  NewFingerprint(m, p, "x=2", k, b),
		"kind":   NewFingerprint(m, p, q, BodyRaw, b),
		"body":   NewFingerprint(m, p, q, k, []byte(`{"endpoint":"/v1/embeddings"}`)),
	}
	for name, fp := range variants {
		if fp == ref {
			t.Errorf("changing the %s does not change the fingerprint", name)
		}
	}
	if NewFingerprint(m, p, q, k, nil) != NewFingerprint(m, p, q, k, []byte{}) {
		t.Error("nil and empty bodies should fingerprint alike")
	}
}

// Each field is length-prefixed: moving bytes from one field into its
// neighbour must change the hash.
func TestFingerprintLengthPrefixed(t *testing.T) {
	if NewFingerprint("POST", "/ab", "", BodyRaw, []byte("c")) == NewFingerprint("POST", "/a", "", BodyRaw, []byte("bc")) {
		t.Error("path/body boundary is ambiguous")
	}
	if NewFingerprint("POS", "T/a", "", BodyRaw, nil) == NewFingerprint("POST", "/a", "", BodyRaw, nil) {
		t.Error("method/path boundary is ambiguous")
	}
	if NewFingerprint("POST", "/a", "b&c", BodyRaw, nil) == NewFingerprint("POST", "/a", "b", BodyRaw, []byte("c")) {
		t.Error("query/body boundary is ambiguous")
	}
}

// The v2 layout is pinned: SHA-256 over uvarint-length-prefixed fields, the
// query as a pair count and its sorted pairs. A change to it must come with a
// new version string, or stored records would stop matching (or worse, match
// the wrong request).
func TestFingerprintLayoutV2(t *testing.T) {
	field := func(dst []byte, s string) []byte {
		dst = binary.AppendUvarint(dst, uint64(len(s)))
		return append(dst, s...)
	}
	body := `{"completion_window":"24h"}`
	var in []byte
	in = field(in, "caddy-idempotency/fingerprint/v2")
	in = field(in, "POST")
	in = field(in, "/v1/batches")
	in = binary.AppendUvarint(in, 3)
	in = field(in, "")
	in = field(in, "a=1")
	in = field(in, "b=2")
	in = field(in, "j")
	in = field(in, body)
	want := Fingerprint(sha256.Sum256(in))
	got := NewFingerprint("POST", "/v1/%62atches", "b=2&&a=1", BodyJSON, []byte(body))
	if got != want {
		t.Fatalf("fingerprint layout changed: got %x, want %x", got, want)
	}

	in = nil
	in = field(in, "caddy-idempotency/record-key/v2")
	in = field(in, "api.example.com")
	in = field(in, "Bearer sk-1")
	in = field(in, "key-1")
	if got, want := NewRecordKey("api.example.com", "Bearer sk-1", "key-1"), RecordKey(sha256.Sum256(in)); got != want {
		t.Fatalf("record key layout changed: got %s, want %x", got, want)
	}
}

func TestRecordKey(t *testing.T) {
	ref := NewRecordKey("a.example", "Bearer sk-a", "key-1")
	if ref != NewRecordKey("a.example", "Bearer sk-a", "key-1") {
		t.Fatal("the same namespace, scope and key give different record keys")
	}
	if ref == NewRecordKey("b.example", "Bearer sk-a", "key-1") {
		t.Error("the namespace does not change the record key")
	}
	if ref == NewRecordKey("a.example", "Bearer sk-b", "key-1") {
		t.Error("the scope does not change the record key")
	}
	if ref == NewRecordKey("a.example", "Bearer sk-a", "key-2") {
		t.Error("the key does not change the record key")
	}
	if NewRecordKey("", "ab", "c") == NewRecordKey("", "a", "bc") {
		t.Error(`("ab","c") and ("a","bc") share a record key: fields are not length-prefixed`)
	}
	if NewRecordKey("", "", "k") == NewRecordKey("", "k", "") || NewRecordKey("k", "", "") == NewRecordKey("", "k", "") {
		t.Error("moving a value between fields keeps the record key")
	}
	if s := ref.String(); len(s) != 64 {
		t.Errorf("RecordKey.String() = %q, want 64 hex digits", s)
	}
}

// go test -run '^$' -bench 'Fingerprint|RecordKey' -benchmem ./idempotency
func BenchmarkFingerprint(b *testing.B) {
	body := []byte(`{"completion_window":"24h","endpoint":"/v1/chat/completions","input_file_id":"file-abc123"}`)
	b.ReportAllocs()
	for b.Loop() {
		NewFingerprint("POST", "/v1/batches", "", BodyJSON, body)
	}
}

func BenchmarkRecordKey(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		NewRecordKey("api.example.com", "Bearer sk-test-0123456789abcdef", "9f2c1e0a-batch-create")
	}
}
