package idempotency

import (
	"bytes"
	"math/rand/v2"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"
)

func codecSamples() map[string]Record {
	at := time.UnixMilli(1_760_000_000_123)
	var fp Fingerprint
	var owner OwnerToken
	for i := range fp {
		fp[i] = byte(i)
	}
	for i := range owner {
		owner[i] = byte(0xf0 + i)
	}
	return map[string]Record{
		"zero": {},
		"in-flight": {
			State: StateInFlight, Fingerprint: fp, Owner: owner,
			LeaseUntil: at.Add(30 * time.Second), CreatedAt: at,
		},
		"completed": {
			State: StateCompleted, Fingerprint: fp, CreatedAt: at, ExpiresAt: at.Add(24 * time.Hour),
			Response: &Response{
				Status: 200,
				Header: http.Header{
					"Content-Type": {"application/json"},
					"Set-Cookie":   {"a=1", "b=2"},
					"X-Empty":      {""},
					"X-None":       {},
				},
				Body: []byte(`{"id":"batch_1","status":"validating"}`),
			},
		},
		"completed empty response": {
			State: StateCompleted, ExpiresAt: at,
			Response: &Response{Status: 204, Header: http.Header{}},
		},
		"large body": {
			State: StateCompleted, ExpiresAt: at,
			Response: &Response{Status: 200, Header: http.Header{}, Body: bytes.Repeat([]byte("0123456789"), 100_000)},
		},
		"pre-1970 time": {State: StateCompleted, ExpiresAt: time.UnixMilli(-5)},
		"in doubt": {
			State: StateInDoubt, Fingerprint: fp, CreatedAt: at, ExpiresAt: at.Add(24 * time.Hour), Doubts: 2,
		},
		"in flight taken over": {
			State: StateInFlight, Fingerprint: fp, Owner: owner,
			LeaseUntil: at.Add(30 * time.Second), CreatedAt: at, Doubts: 255,
		},
		"response not stored": {
			State: StateCompleted, Fingerprint: fp, CreatedAt: at, ExpiresAt: at,
			Response: &Response{Status: 201, Header: http.Header{}, NotStored: true},
		},
	}
}

// A record whose response was not kept says so in its flags, which a
// record without a response may not claim.
func TestRecordCodecResponseNotStored(t *testing.T) {
	base := codecSamples()["completed empty response"]
	plain, _ := base.MarshalBinary()
	unkept := base
	unkept.Response = &Response{Status: 204, Header: http.Header{}, NotStored: true}
	marked, _ := unkept.MarshalBinary()
	const flagsAt = 1 + 1 + 32 + 16
	if len(marked) != len(plain) || marked[flagsAt] != plain[flagsAt]|flagResponseNotStored {
		t.Fatalf("a not-stored response encodes as % x, want % x with flag %#x", marked, plain, flagResponseNotStored)
	}
	var got Record
	if err := got.UnmarshalBinary(marked); err != nil || !got.Response.NotStored {
		t.Fatalf("decoded: %v, NotStored %v", err, got.Response != nil && got.Response.NotStored)
	}
	orphan := codecSamples()["pre-1970 time"]
	data, _ := orphan.MarshalBinary()
	data[flagsAt] |= flagResponseNotStored
	if err := got.UnmarshalBinary(data); err == nil {
		t.Fatal("a not-stored mark without a response decoded")
	}
}

// Doubts is encoded only when there are some (flagDoubts), so a record
// without doubts encodes as it did before the field existed; an in-doubt
// record keeps its state, fingerprint, times and doubts, and its state
// reads without a full decode.
func TestRecordCodecDoubtsAndInDoubt(t *testing.T) {
	const flagsAt = 1 + 1 + 32 + 16
	inFlight := codecSamples()["in-flight"]
	plain, _ := inFlight.MarshalBinary()
	if plain[flagsAt]&flagDoubts != 0 {
		t.Fatalf("a record without doubts has flagDoubts: % x", plain)
	}
	for _, doubts := range []int{1, 2, 127, 128, 255} {
		rec := inFlight
		rec.Doubts = doubts
		data, err := rec.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		if data[flagsAt]&flagDoubts == 0 || len(data) <= len(plain) {
			t.Fatalf("Doubts %d encodes as % x, want flagDoubts and the count", doubts, data)
		}
		var got Record
		if err := got.UnmarshalBinary(data); err != nil {
			t.Fatalf("Doubts %d: %v", doubts, err)
		}
		if got.Doubts != doubts {
			t.Errorf("Doubts %d decodes as %d", doubts, got.Doubts)
		}
		assertSameRecord(t, got, rec)
	}

	held := codecSamples()["in doubt"]
	data, err := held.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var got Record
	if err := got.UnmarshalBinary(data); err != nil {
		t.Fatal(err)
	}
	assertSameRecord(t, got, held)
	if got.State != StateInDoubt || got.State.String() != "in_doubt" || got.Owner != (OwnerToken{}) || got.Response != nil {
		t.Errorf("in-doubt record decodes as %+v", got)
	}
	for _, tc := range []struct {
		now  time.Time
		live bool
	}{{held.ExpiresAt.Add(-time.Millisecond), true}, {held.ExpiresAt, false}} {
		state, live, err := ReadRecordState(data, tc.now)
		if err != nil || state != StateInDoubt || live != tc.live {
			t.Errorf("ReadRecordState at %v = %v, live %v, err %v; want in_doubt, live %v", tc.now, state, live, err, tc.live)
		}
	}
	if _, _, err := ReadRecordState(withByte(data, 1, 4), held.CreatedAt); err == nil {
		t.Error("ReadRecordState accepted state 4")
	}
}

func TestRecordCodecRoundTrip(t *testing.T) {
	for name, rec := range codecSamples() {
		t.Run(name, func(t *testing.T) {
			data, err := rec.MarshalBinary()
			if err != nil {
				t.Fatalf("MarshalBinary: %v", err)
			}
			if data[0] != recordFormatV1 {
				t.Errorf("first byte = %d, want format version %d", data[0], recordFormatV1)
			}
			var got Record
			if err := got.UnmarshalBinary(data); err != nil {
				t.Fatalf("UnmarshalBinary: %v", err)
			}
			assertSameRecord(t, got, rec)

			again, err := got.MarshalBinary()
			if err != nil {
				t.Fatalf("MarshalBinary of the decoded record: %v", err)
			}
			if !bytes.Equal(again, data) {
				t.Error("re-encoding the decoded record gives different bytes")
			}
		})
	}
}

func TestRecordCodecTruncatesToMilliseconds(t *testing.T) {
	rec := Record{State: StateInFlight, LeaseUntil: time.Unix(100, 123_456_789)}
	data, _ := rec.MarshalBinary()
	var got Record
	if err := got.UnmarshalBinary(data); err != nil {
		t.Fatal(err)
	}
	if want := time.Unix(100, 123_000_000); !got.LeaseUntil.Equal(want) {
		t.Errorf("LeaseUntil = %v, want %v", got.LeaseUntil, want)
	}
}

func TestRecordCodecRejectsTruncated(t *testing.T) {
	for name, rec := range codecSamples() {
		if name == "large body" {
			continue // every prefix of a megabyte is slow and adds nothing
		}
		data, _ := rec.MarshalBinary()
		for n := range len(data) {
			var got Record
			if err := got.UnmarshalBinary(data[:n]); err == nil {
				t.Errorf("%s: decoding the first %d of %d bytes succeeded", name, n, len(data))
			}
		}
	}
}

func TestRecordCodecRejectsGarbage(t *testing.T) {
	sample := codecSamples()["completed"]
	valid, _ := sample.MarshalBinary()
	cases := map[string][]byte{
		"nil":             nil,
		"unknown version": append([]byte{2}, valid[1:]...),
		"version zero":    append([]byte{0}, valid[1:]...),
		"trailing byte":   append(append([]byte(nil), valid...), 0),
		"unknown flag":    withByte(valid, 1+1+32+16, 0x80),
		"text":            []byte("not a record at all"),
		// version, state, fingerprint, owner, flags=response, status 200,
		// then a header count of 2^62 that the remaining bytes cannot hold.
		"huge count": append(append([]byte{recordFormatV1, 2}, make([]byte, 48)...),
			flagResponse, 0x90, 0x03, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40),
	}
	for name, data := range cases {
		var got Record
		if err := got.UnmarshalBinary(data); err == nil {
			t.Errorf("%s: decoded without error into %+v", name, got)
		}
	}
}

func TestRecordCodecRejectsBadStatus(t *testing.T) {
	rec := Record{State: StateCompleted, Response: &Response{Status: 1000}}
	if _, err := rec.MarshalBinary(); err == nil {
		t.Error("MarshalBinary accepted status 1000")
	}
}

// A failed decode must leave the destination untouched.
func TestRecordCodecErrorKeepsRecord(t *testing.T) {
	rec := codecSamples()["in-flight"]
	before := rec
	if err := rec.UnmarshalBinary([]byte{recordFormatV1, 1, 2}); err == nil {
		t.Fatal("decoded a truncated record")
	}
	assertSameRecord(t, rec, before)
}

func TestRecordCodecRandomInputNeverPanics(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	sample := codecSamples()["completed"]
	valid, _ := sample.MarshalBinary()
	for range 20_000 {
		data := append([]byte(nil), valid...)
		for range 1 + rng.IntN(4) {
			data[rng.IntN(len(data))] = byte(rng.Uint32())
		}
		data = data[:rng.IntN(len(data)+1)]
		var got Record
		_ = got.UnmarshalBinary(data)
	}
}

func FuzzRecordCodec(f *testing.F) {
	for _, rec := range codecSamples() {
		data, _ := rec.MarshalBinary()
		if len(data) < 4096 {
			f.Add(data)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var rec Record
		if err := rec.UnmarshalBinary(data); err != nil {
			return
		}
		again, err := rec.MarshalBinary()
		if err != nil {
			t.Fatalf("re-encoding a decoded record: %v", err)
		}
		var back Record
		if err := back.UnmarshalBinary(again); err != nil {
			t.Fatalf("decoding a re-encoded record: %v", err)
		}
		assertSameRecord(t, back, rec)
	})
}

func withByte(data []byte, i int, b byte) []byte {
	out := append([]byte(nil), data...)
	out[i] = b
	return out
}

func assertSameRecord(t *testing.T, got, want Record) {
	t.Helper()
	var diffs []string
	if got.State != want.State {
		diffs = append(diffs, "State")
	}
	if got.Fingerprint != want.Fingerprint {
		diffs = append(diffs, "Fingerprint")
	}
	if got.Owner != want.Owner {
		diffs = append(diffs, "Owner")
	}
	if got.Doubts != want.Doubts {
		diffs = append(diffs, "Doubts")
	}
	for _, tm := range []struct {
		name      string
		got, want time.Time
	}{
		{"LeaseUntil", got.LeaseUntil, want.LeaseUntil},
		{"CreatedAt", got.CreatedAt, want.CreatedAt},
		{"ExpiresAt", got.ExpiresAt, want.ExpiresAt},
	} {
		if tm.got.IsZero() != tm.want.IsZero() || !tm.got.Equal(tm.want) {
			diffs = append(diffs, tm.name)
		}
	}
	switch g, w := got.Response, want.Response; {
	case (g == nil) != (w == nil):
		diffs = append(diffs, "Response presence")
	case g != nil:
		if g.Status != w.Status {
			diffs = append(diffs, "Status")
		}
		if !bytes.Equal(g.Body, w.Body) {
			diffs = append(diffs, "Body")
		}
		if len(g.Header) != len(w.Header) || (len(w.Header) > 0 && !reflect.DeepEqual(normalizeHeader(g.Header), normalizeHeader(w.Header))) {
			diffs = append(diffs, "Header")
		}
	}
	if len(diffs) > 0 {
		t.Errorf("records differ in %s:\n got %+v\nwant %+v", strings.Join(diffs, ", "), got, want)
	}
}

// normalizeHeader maps empty value lists to nil so decoded and original compare equal.
func normalizeHeader(h http.Header) http.Header {
	out := make(http.Header, len(h))
	for k, v := range h {
		if len(v) == 0 {
			v = nil
		}
		out[k] = v
	}
	return out
}

// openAIResponse is a batch create's response with the end-to-end headers
// OpenAI sends with one.
func openAIResponse() *Response {
	return &Response{Status: 200, Header: http.Header{
		"Content-Type":              {"application/json"},
		"Openai-Organization":       {"org-abc123"},
		"Openai-Processing-Ms":      {"187"},
		"Openai-Version":            {"2020-10-01"},
		"X-Request-Id":              {"req_5f0c2a9e8b7d4c3a"},
		"Strict-Transport-Security": {"max-age=31536000; includeSubDomains; preload"},
		"Cf-Cache-Status":           {"DYNAMIC"},
		"Cf-Ray":                    {"8f1e2d3c4b5a6978-AMS"},
		"Server":                    {"cloudflare"},
		"Alt-Svc":                   {`h3=":443"; ma=86400`},
		"Vary":                      {"Origin", "Accept-Encoding"},
	}, Body: bytes.Repeat([]byte("b"), 480)}
}

// Decoding a response allocates a few times however many headers it has:
// one string for the header block, one slice for all values, the map (its
// table too, past 8 names), the Response and the body. One string and one
// slice per header would make it 40 here.
func TestRecordCodecDecodeAllocations(t *testing.T) {
	rec := Record{State: StateCompleted, Response: openAIResponse()}
	data, err := rec.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var got Record
	allocs := testing.AllocsPerRun(100, func() {
		if err := got.UnmarshalBinary(data); err != nil {
			t.Fatal(err)
		}
	})
	assertSameRecord(t, got, rec)
	if allocs > 8 {
		t.Errorf("decoding a response with %d headers allocates %.0f times, want at most 8", len(rec.Response.Header), allocs)
	}
}

func BenchmarkRecordDecode(b *testing.B) {
	rec := Record{State: StateCompleted, Response: openAIResponse()}
	data, err := rec.MarshalBinary()
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		var got Record
		if err := got.UnmarshalBinary(data); err != nil {
			b.Fatal(err)
		}
	}
}
