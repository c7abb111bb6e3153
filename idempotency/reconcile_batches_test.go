package idempotency

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestBatchesCovers(t *testing.T) {
	var b Batches
	for _, tc := range []struct {
		method, path string
		want         bool
	}{
		{"POST", "/v1/batches", true},
		{"POST", "/v1/batches/", true},
		{"POST", "/openai/v1/batches", true},
		{"POST", "/batches", true},
		{"GET", "/v1/batches", false},
		{"PUT", "/v1/batches", false},
		{"POST", "/v1/batches/batch_1/cancel", false},
		{"POST", "/v1/batches/batch_1", false},
		{"POST", "/v1/batches//", false},
		{"POST", "/v1/mybatches", false},
		{"POST", "/v1/files", false},
		{"POST", "/", false},
	} {
		r, err := http.NewRequest(tc.method, "http://example.test"+tc.path, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got := b.Covers(r); got != tc.want {
			t.Errorf("Covers(%s %s) = %v, want %v", tc.method, tc.path, got, tc.want)
		}
	}
	if b.Covers(nil) {
		t.Error("Covers(nil) = true")
	}
}

func TestBatchesCheck(t *testing.T) {
	for _, tc := range []struct {
		name string
		b    Batches
		want string // in the error; "" for none
	}{
		{"zero", Batches{}, ""},
		{"bounds", Batches{PageSize: 1, Pages: 1, Window: time.Minute, TagKey: strings.Repeat("k", 64)}, ""},
		{"page size 100", Batches{PageSize: 100}, ""},
		{"page size 101", Batches{PageSize: 101}, "page size 101"},
		{"page size negative", Batches{PageSize: -1}, "page size -1"},
		{"pages negative", Batches{Pages: -1}, "pages -1"},
		{"window negative", Batches{Window: -time.Second}, "window -1s"},
		{"tag key long", Batches{TagKey: strings.Repeat("k", 65)}, "tag key is 65 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.b.Check()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("Check: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("Check = %v, want an error with %q", err, tc.want)
			}
		})
	}
}

func TestBatchesPrepareWithoutTag(t *testing.T) {
	var b Batches
	for _, body := range []string{`{"input_file_id":"f", "metadata":{"a":"1"}}`, `not json`, ``} {
		in := []byte(body)
		out, err := b.Prepare(&Attempt{Key: NewRecordKey("ns", "scope", "k")}, in)
		if err != nil {
			t.Fatalf("Prepare(%q): %v", body, err)
		}
		if string(out) != body {
			t.Fatalf("Prepare(%q) = %q, want it unchanged", body, out)
		}
	}
}

func TestBatchesPrepareWithTag(t *testing.T) {
	rk := NewRecordKey("ns", "scope", "client-key-1")
	b := Batches{Tag: true}
	tag := b.TagValue(rk)
	entry := `"idempotency_tag":"` + tag + `"`
	meta := func(n int) string { // n entries, k0..k(n-1)
		var s []string
		for i := range n {
			s = append(s, fmt.Sprintf(`"k%d":"v"`, i))
		}
		return "{" + strings.Join(s, ",") + "}"
	}
	for _, tc := range []struct {
		name, body string
		tagKey     string
		want       string // the body prepared; "" when an error is wanted
		err        string // in the error
	}{
		{name: "absent", body: `{"input_file_id":"f","endpoint":"/v1/chat/completions","completion_window":"24h"}`,
			want: `{"input_file_id":"f","endpoint":"/v1/chat/completions","completion_window":"24h","metadata":{` + entry + `}}`},
		{name: "absent, spaced", body: " {\n \"z\": 1 ,\n \"a\": [1, 2]\n}\n",
			want: " {\n \"z\": 1 ,\n \"a\": [1, 2],\"metadata\":{" + entry + "}\n}\n"},
		{name: "empty body object", body: `{}`, want: `{"metadata":{` + entry + `}}`},
		{name: "null", body: `{"z":1,"metadata":null,"a":2}`, want: `{"z":1,"metadata":{` + entry + `},"a":2}`},
		{name: "empty metadata", body: `{"metadata":{ },"a":2}`, want: `{"metadata":{` + entry + ` },"a":2}`},
		{name: "existing", body: `{"z":1, "metadata": {"b":"2", "a":"1"} ,"a":2}`,
			want: `{"z":1, "metadata": {"b":"2", "a":"1",` + entry + `} ,"a":2}`},
		{name: "15 entries", body: `{"metadata":` + meta(15) + `}`,
			want: `{"metadata":` + strings.TrimSuffix(meta(15), "}") + "," + entry + `}}`},
		{name: "16 entries", body: `{"metadata":` + meta(16) + `}`,
			err: "metadata has 16 already, the most allowed (OpenAI API reference: metadata, up to 16 key-value pairs)"},
		{name: "tagged already", body: `{"metadata":{"a":"1",` + entry + `}}`, want: `{"metadata":{"a":"1",` + entry + `}}`},
		{name: "16 with the tag", body: `{"metadata":` + strings.TrimSuffix(meta(15), "}") + "," + entry + `}}`,
			want: `{"metadata":` + strings.TrimSuffix(meta(15), "}") + "," + entry + `}}`},
		{name: "tag key other value", body: `{"metadata":{"idempotency_tag":"mine"}}`, err: `"idempotency_tag", which the body gives another value`},
		{name: "tag key not a string", body: `{"metadata":{"idempotency_tag":1}}`, err: "another value"},
		{name: "custom tag key", tagKey: "my key\"", body: `{"metadata":{"a":"1"}}`,
			want: `{"metadata":{"a":"1","my key\"":"` + tag + `"}}`},
		{name: "metadata string", body: `{"metadata":"a"}`, err: "metadata to be an object or null"},
		{name: "metadata array", body: `{"metadata":[]}`, err: "metadata to be an object or null"},
		{name: "metadata number", body: `{"metadata":3}`, err: "metadata to be an object or null"},
		{name: "metadata twice", body: `{"metadata":null,"metadata":{}}`, err: "two"},
		{name: "array body", body: `[{"metadata":null}]`, err: "reconcile batches tag needs a JSON object body"},
		{name: "string body", body: `"x"`, err: "reconcile batches tag needs a JSON object body"},
		{name: "garbage", body: `{"a":`, err: "reconcile batches tag needs a JSON object body"},
		{name: "two objects", body: `{"a":1} {"b":2}`, err: "reconcile batches tag needs a JSON object body"},
		{name: "empty", body: ``, err: "reconcile batches tag needs a JSON object body"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := Batches{Tag: true, TagKey: tc.tagKey}
			in := []byte(tc.body)
			out, err := b.Prepare(&Attempt{Key: rk}, in)
			if string(in) != tc.body {
				t.Fatalf("Prepare changed its body to %q", in)
			}
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("Prepare = %q, %v; want an error with %q", out, err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Prepare: %v", err)
			}
			if string(out) != tc.want {
				t.Fatalf("Prepare =\n%s\nwant\n%s", out, tc.want)
			}
			var v struct{ Metadata map[string]string }
			if err := json.Unmarshal(out, &v); err != nil {
				t.Fatalf("prepared body is not JSON: %v", err)
			}
			if v.Metadata[b.tagKey()] != tag {
				t.Fatalf("metadata = %v, want %s: %s", v.Metadata, b.tagKey(), tag)
			}
		})
	}
}

func TestBatchesTagValue(t *testing.T) {
	const clientKey = "0123456789abcdef0123456789abcdef"
	rk := NewRecordKey("ns", "scope", clientKey)
	a, b := Batches{Tag: true}, Batches{Tag: true, TagKey: "other", Window: time.Hour}
	tag := a.TagValue(rk)
	if len(tag) != 32 || strings.Trim(tag, "0123456789abcdef") != "" {
		t.Fatalf("TagValue = %q, want 32 hex digits", tag)
	}
	if b.TagValue(rk) != tag || a.TagValue(rk) != tag {
		t.Fatal("TagValue depends on more than the record key")
	}
	if a.TagValue(NewRecordKey("ns", "scope", clientKey+"x")) == tag || a.TagValue(NewRecordKey("ns", "other", clientKey)) == tag {
		t.Fatal("TagValue is the same for two record keys")
	}
	out, err := a.Prepare(&Attempt{Key: rk}, []byte(`{"input_file_id":"f"}`))
	if err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{clientKey, rk.String(), rk.String()[:32]} {
		if bytes.Contains(out, []byte(secret)) {
			t.Fatalf("prepared body %s contains %q", out, secret)
		}
	}
}

// The test's clocks: the proxy's "now" when the listing is received, the
// attempt's start, and the backend's clock, skew ahead of the proxy's.
var (
	btNow   = time.Date(2025, 3, 1, 12, 0, 0, 300e6, time.UTC)
	btSince = btNow.Add(-10 * time.Second)
)

// btBatch is a batch in the fake backend, created at btSince+At on the
// proxy's clock.
type btBatch struct {
	ID   string
	At   time.Duration
	File string // default file-abc
	Meta string // metadata as raw JSON, "$TAG" for the tag; "" leaves it out
}

// btBackend lists batches as OpenAI does: newest first, limit and after,
// with a Date header on its own clock, skew ahead of the proxy's.
type btBackend struct {
	items   []json.RawMessage // newest first
	ids     []string
	skew    time.Duration
	noDate  bool
	noLast  bool // leave last_id out
	mu      sync.Mutex
	queries []url.Values
}

func newBTBackend(t *testing.T, skew time.Duration, tag string, batches ...btBatch) *btBackend {
	t.Helper()
	type made struct {
		id      string
		created int64
		raw     json.RawMessage
	}
	var ms []made
	for _, b := range batches {
		created := btSince.Add(b.At + skew).Unix()
		file := b.File
		if file == "" {
			file = "file-abc"
		}
		md := ""
		if b.Meta != "" {
			md = `, "metadata": ` + strings.ReplaceAll(b.Meta, "$TAG", tag)
		}
		// Spaced unlike encoding/json, to see the bytes kept as listed.
		raw := fmt.Sprintf(`{"id": %q, "object": "batch", "endpoint": "/v1/chat/completions", "errors": null, "input_file_id": %q, "completion_window": "24h", "status": "validating", "created_at": %d, "request_counts": {"total": 0, "completed": 0, "failed": 0}%s}`,
			b.ID, file, created, md)
		if !json.Valid([]byte(raw)) {
			t.Fatalf("batch %s is not JSON: %s", b.ID, raw)
		}
		ms = append(ms, made{b.ID, created, json.RawMessage(raw)})
	}
	slices.SortStableFunc(ms, func(x, y made) int { return int(y.created - x.created) })
	be := &btBackend{skew: skew}
	for _, m := range ms {
		be.items = append(be.items, m.raw)
		be.ids = append(be.ids, m.id)
	}
	return be
}

func (be *btBackend) list(ctx context.Context, q url.Values) (*Listing, error) {
	be.mu.Lock()
	defer be.mu.Unlock()
	be.queries = append(be.queries, q)
	l := &Listing{Status: http.StatusOK, Header: http.Header{"Content-Type": {"application/json"}}, Received: btNow}
	if !be.noDate {
		// Stamped 50ms before the proxy received it, on the backend's clock.
		l.Header.Set("Date", btNow.Add(be.skew-50*time.Millisecond).Format(http.TimeFormat))
	}
	limit, err := strconv.Atoi(q.Get("limit"))
	if err != nil || limit < 1 || limit > 100 {
		l.Status, l.Body = http.StatusBadRequest, []byte(`{"error":{"message":"bad limit"}}`)
		return l, nil
	}
	from := 0
	if after := q.Get("after"); after != "" {
		i := slices.Index(be.ids, after)
		if i < 0 {
			l.Status, l.Body = http.StatusNotFound, []byte(`{"error":{"message":"no such batch"}}`)
			return l, nil
		}
		from = i + 1
	}
	to := min(from+limit, len(be.items))
	page := be.items[from:to]
	var body bytes.Buffer
	body.WriteString(`{"object":"list","data":[`)
	for i, it := range page {
		if i > 0 {
			body.WriteString(",\n")
		}
		body.Write(it)
	}
	body.WriteString(`]`)
	if len(page) > 0 {
		fmt.Fprintf(&body, `,"first_id":%q`, be.ids[from])
		if !be.noLast {
			fmt.Fprintf(&body, `,"last_id":%q`, be.ids[to-1])
		}
	} else {
		body.WriteString(`,"first_id":null,"last_id":null`)
	}
	fmt.Fprintf(&body, `,"has_more":%v}`, to < len(be.items))
	l.Body = body.Bytes()
	return l, nil
}

func (be *btBackend) raw(id string) []byte {
	return be.items[slices.Index(be.ids, id)]
}

const btRequest = `{"input_file_id":"file-abc","endpoint":"/v1/chat/completions","completion_window":"24h","metadata":{"a":"1"}}`

func TestBatchesFind(t *testing.T) {
	const (
		hour = time.Hour
		sec  = time.Second
	)
	for _, tc := range []struct {
		name    string
		b       Batches
		request string // default btRequest
		skew    time.Duration
		noDate  bool
		noLast  bool
		mutate  func(*btBackend)
		batches []btBatch
		want    FindResult
		wantID  string          // the batch found, for FindOne
		reason  string          // in the reason
		queries []string        // the listing's queries, encoded; nil: not checked
		skews   []time.Duration // more skews to run the case with
	}{
		{name: "one match", batches: []btBatch{
			{ID: "batch_new", At: 5 * sec, Meta: `{"a":"2"}`},
			{ID: "batch_mine", At: 2 * sec, Meta: `{"a":"1"}`},
			{ID: "batch_old", At: -hour, Meta: `{"a":"1"}`},
		}, want: FindOne, wantID: "batch_mine", reason: "batch batch_mine matches",
			queries: []string{"limit=100"}, skews: []time.Duration{hour, -hour}},
		{name: "identical batch before the attempt only", batches: []btBatch{
			{ID: "batch_new", At: 5 * sec, File: "file-other", Meta: `{"a":"2"}`},
			{ID: "batch_old", At: -60 * sec, Meta: `{"a":"1"}`},
			{ID: "batch_older", At: -hour, Meta: `{"a":"1"}`},
		}, want: FindNone, reason: "no batch since", skews: []time.Duration{hour, -hour}},
		{name: "the bound", batches: []btBatch{{ID: "batch_old", At: -hour}},
			want: FindNone, reason: "no batch since 2025-03-01T11:59:49Z (created_at >= 1740830389)"},
		{name: "identical batch just before the bound", batches: []btBatch{
			{ID: "batch_old", At: -1400 * time.Millisecond, Meta: `{"a":"1"}`}, // created_at 11:59:48
		}, want: FindNone, skews: []time.Duration{hour, -hour}},
		{name: "identical batch at the bound", batches: []btBatch{
			{ID: "batch_edge", At: -1300 * time.Millisecond, Meta: `{"a":"1"}`}, // created_at 11:59:49
			{ID: "batch_old", At: -hour, Meta: `{"a":"1"}`},
		}, want: FindOne, wantID: "batch_edge", skews: []time.Duration{hour, -hour}},
		{name: "wider window", b: Batches{Window: time.Minute}, batches: []btBatch{
			{ID: "batch_mine", At: 2 * sec, Meta: `{"a":"1"}`},
			{ID: "batch_old", At: -50 * sec, Meta: `{"a":"1"}`},
			{ID: "batch_older", At: -hour, Meta: `{"a":"1"}`},
		}, want: FindUnsure, reason: "2 batches match since 2025-03-01T11:58:50Z (created_at >= 1740830330): batch_mine, batch_old"},
		{name: "two matches", batches: []btBatch{
			{ID: "batch_1", At: 2 * sec, Meta: `{"a":"1"}`},
			{ID: "batch_2", At: 3 * sec, Meta: `{"a":"1"}`},
			{ID: "batch_old", At: -hour},
		}, want: FindUnsure, reason: "2 batches match", skews: []time.Duration{hour, -hour}},
		{name: "none, reached back", batches: []btBatch{
			{ID: "batch_1", At: 2 * sec, File: "file-other", Meta: `{"a":"1"}`},
			{ID: "batch_2", At: 3 * sec, File: "file-other", Meta: `{"a":"1","b":"2"}`},
			{ID: "batch_old", At: -hour},
		}, want: FindNone, reason: "no batch since"},
		// A batch of the same input file and endpoint since the attempt,
		// differing only in what a backend may rewrite (metadata, the
		// window), may be the attempt's: nothing proves none was made.
		{name: "near, metadata rewritten", batches: []btBatch{
			{ID: "batch_2", At: 3 * sec, Meta: `{"a":"1","b":"2"}`},
			{ID: "batch_old", At: -hour},
		}, want: FindUnsure, reason: "but 1 with its input file and endpoint differ in other fields: batch_2"},
		{name: "near, beside a match", batches: []btBatch{
			{ID: "batch_2", At: 3 * sec, Meta: `{"a":"1","b":"2"}`},
			{ID: "batch_mine", At: 2 * sec, Meta: `{"a":"1"}`},
			{ID: "batch_old", At: -hour},
		}, want: FindOne, wantID: "batch_mine"},
		{name: "none, end of the list", batches: []btBatch{
			{ID: "batch_1", At: 2 * sec, File: "file-other", Meta: `{"a":"1"}`},
		}, want: FindNone, queries: []string{"limit=100"}},
		{name: "none, empty list", want: FindNone, queries: []string{"limit=100"}},
		{name: "pages run out", b: Batches{PageSize: 2, Pages: 2}, batches: []btBatch{
			{ID: "batch_1", At: 1 * sec}, {ID: "batch_2", At: 2 * sec}, {ID: "batch_3", At: 3 * sec},
			{ID: "batch_4", At: 4 * sec}, {ID: "batch_5", At: 5 * sec}, {ID: "batch_old", At: -hour},
		}, want: FindUnsure, reason: "listing did not reach back to the attempt's start in 2 pages",
			queries: []string{"limit=2", "after=batch_4&limit=2"}},
		{name: "pages run out after a match", b: Batches{PageSize: 2, Pages: 2}, batches: []btBatch{
			{ID: "batch_1", At: 1 * sec}, {ID: "batch_2", At: 2 * sec}, {ID: "batch_3", At: 3 * sec},
			{ID: "batch_4", At: 4 * sec, Meta: `{"a":"1"}`}, {ID: "batch_5", At: 5 * sec}, {ID: "batch_old", At: -hour},
		}, want: FindUnsure, reason: "in 2 pages"},
		{name: "paging", b: Batches{PageSize: 2, Pages: 3}, batches: []btBatch{
			{ID: "batch_1", At: 1 * sec, Meta: `{"a":"1"}`}, {ID: "batch_2", At: 2 * sec}, {ID: "batch_3", At: 3 * sec},
			{ID: "batch_4", At: 4 * sec}, {ID: "batch_5", At: 5 * sec},
		}, want: FindOne, wantID: "batch_1",
			queries: []string{"limit=2", "after=batch_4&limit=2", "after=batch_2&limit=2"}},
		{name: "paging without last_id", noLast: true, b: Batches{PageSize: 2, Pages: 3}, batches: []btBatch{
			{ID: "batch_1", At: 1 * sec, Meta: `{"a":"1"}`}, {ID: "batch_2", At: 2 * sec}, {ID: "batch_3", At: 3 * sec},
			{ID: "batch_4", At: 4 * sec}, {ID: "batch_5", At: 5 * sec}, {ID: "batch_old", At: -hour, Meta: `{"a":"1"}`},
		}, want: FindOne, wantID: "batch_1",
			queries: []string{"limit=2", "after=batch_4&limit=2", "after=batch_2&limit=2"}},
		{name: "reached back on a page boundary", b: Batches{PageSize: 2, Pages: 2}, batches: []btBatch{
			{ID: "batch_1", At: 1 * sec}, {ID: "batch_2", At: 2 * sec, Meta: `{"a":"1"}`},
			{ID: "batch_old", At: -hour, Meta: `{"a":"1"}`}, {ID: "batch_older", At: -2 * hour, Meta: `{"a":"1"}`},
		}, want: FindOne, wantID: "batch_2", queries: []string{"limit=2", "after=batch_1&limit=2"}},
		{name: "request metadata absent, batch null", request: `{"input_file_id":"file-abc","endpoint":"/v1/chat/completions","completion_window":"24h"}`,
			batches: []btBatch{{ID: "batch_mine", At: sec, Meta: `null`}, {ID: "batch_old", At: -hour}}, want: FindOne, wantID: "batch_mine"},
		{name: "request metadata {}, batch absent", request: `{"input_file_id":"file-abc","endpoint":"/v1/chat/completions","completion_window":"24h","metadata":{}}`,
			batches: []btBatch{{ID: "batch_mine", At: sec}, {ID: "batch_old", At: -hour}}, want: FindOne, wantID: "batch_mine"},
		{name: "request metadata null, batch {}", request: `{"input_file_id":"file-abc","endpoint":"/v1/chat/completions","completion_window":"24h","metadata":null}`,
			batches: []btBatch{{ID: "batch_mine", At: sec, Meta: `{}`}, {ID: "batch_old", At: -hour}}, want: FindOne, wantID: "batch_mine"},
		{name: "different metadata", batches: []btBatch{
			{ID: "batch_1", At: sec, Meta: `{"a":"2"}`}, {ID: "batch_2", At: sec, Meta: `{}`}, {ID: "batch_3", At: sec},
			{ID: "batch_4", At: sec, Meta: `{"a":"1","b":""}`}, {ID: "batch_5", At: sec, Meta: `{"A":"1"}`},
			{ID: "batch_old", At: -hour},
		}, want: FindUnsure, reason: "but 5 with its input file and endpoint differ"},
		{name: "other endpoint or window", request: `{"input_file_id":"file-abc","endpoint":"/v1/embeddings","completion_window":"24h","metadata":{"a":"1"}}`,
			batches: []btBatch{{ID: "batch_1", At: sec, Meta: `{"a":"1"}`}, {ID: "batch_old", At: -hour}}, want: FindNone},
		{name: "tag", b: Batches{Tag: true}, batches: []btBatch{
			{ID: "batch_untagged", At: 3 * sec, Meta: `{"a":"1"}`},
			{ID: "batch_other_tag", At: 3 * sec, Meta: `{"a":"1","idempotency_tag":"0123456789abcdef0123456789abcdef"}`},
			{ID: "batch_tag_other_file", At: 2 * sec, File: "file-other", Meta: `{"a":"1","idempotency_tag":"$TAG"}`},
			{ID: "batch_mine", At: 2 * sec, Meta: `{"a":"1","idempotency_tag":"$TAG"}`},
			{ID: "batch_old", At: -hour, Meta: `{"a":"1","idempotency_tag":"$TAG"}`},
		}, want: FindOne, wantID: "batch_mine", skews: []time.Duration{hour, -hour}},
		{name: "tag, only untagged", b: Batches{Tag: true}, batches: []btBatch{
			{ID: "batch_untagged", At: 3 * sec, Meta: `{"a":"1"}`},
			{ID: "batch_old", At: -hour, Meta: `{"a":"1","idempotency_tag":"$TAG"}`},
		}, want: FindUnsure, reason: "batch_untagged"}, // a backend may drop the tag
		{name: "tag, only another attempt's", b: Batches{Tag: true}, batches: []btBatch{
			{ID: "batch_other_tag", At: 3 * sec, Meta: `{"a":"1","idempotency_tag":"0123456789abcdef0123456789abcdef"}`},
			{ID: "batch_old", At: -hour, Meta: `{"a":"1","idempotency_tag":"$TAG"}`},
		}, want: FindNone},
		{name: "tag, custom key", b: Batches{Tag: true, TagKey: "t"}, batches: []btBatch{
			{ID: "batch_default_key", At: 3 * sec, Meta: `{"idempotency_tag":"$TAG"}`},
			{ID: "batch_mine", At: 2 * sec, Meta: `{"a":"1","t":"$TAG"}`},
		}, want: FindOne, wantID: "batch_mine"},
		{name: "no Date header", noDate: true, batches: []btBatch{
			{ID: "batch_mine", At: 2 * sec, Meta: `{"a":"1"}`},
			{ID: "batch_old", At: -1400 * time.Millisecond, Meta: `{"a":"1"}`},
		}, want: FindOne, wantID: "batch_mine", reason: "batch batch_mine matches"},
		{name: "request not JSON", request: `{"input_file_id":`, batches: []btBatch{{ID: "batch_1", At: sec}},
			want: FindUnsure, reason: "request body"},
		{name: "request metadata not strings", request: `{"input_file_id":"file-abc","metadata":{"a":1}}`,
			want: FindUnsure, reason: "request body"},
		{name: "batch without created_at", batches: []btBatch{{ID: "batch_1", At: sec}},
			mutate: func(be *btBackend) {
				be.items[0] = bytes.Replace(be.items[0], []byte(`"created_at"`), []byte(`"created"`), 1)
			}, want: FindUnsure, reason: "batch batch_1 has no created_at"},
	} {
		skews := append([]time.Duration{tc.skew}, tc.skews...)
		for _, skew := range skews {
			t.Run(fmt.Sprintf("%s/skew %v", tc.name, skew), func(t *testing.T) {
				rk := NewRecordKey("ns", "scope", "key")
				be := newBTBackend(t, skew, tc.b.TagValue(rk), tc.batches...)
				be.noDate, be.noLast = tc.noDate, tc.noLast
				if tc.mutate != nil {
					tc.mutate(be)
				}
				req := tc.request
				if req == "" {
					req = btRequest
				}
				f := tc.b.Find(context.Background(), &Attempt{Body: []byte(req), Key: rk, Since: btSince}, be.list)
				if f.Result != tc.want {
					t.Fatalf("Find = %v (%s), want %v", f.Result, f.Reason, tc.want)
				}
				if !strings.Contains(f.Reason, tc.reason) {
					t.Fatalf("reason %q, want it to contain %q", f.Reason, tc.reason)
				}
				if tc.want == FindOne {
					btWantFound(t, f, be.raw(tc.wantID), tc.wantID)
				} else if f.Response.Status != 0 || f.Response.Body != nil {
					t.Fatalf("Find = %v with a response %+v", f.Result, f.Response)
				}
				if tc.queries != nil {
					var got []string
					for _, q := range be.queries {
						got = append(got, q.Encode())
					}
					if !slices.Equal(got, tc.queries) {
						t.Fatalf("queries %q, want %q", got, tc.queries)
					}
				}
			})
		}
	}
}

func btWantFound(t *testing.T, f Finding, raw []byte, id string) {
	t.Helper()
	r := f.Response
	if r.Status != http.StatusOK {
		t.Fatalf("status %d", r.Status)
	}
	if !bytes.Equal(r.Body, raw) {
		t.Fatalf("body\n%s\nwant the batch as listed\n%s", r.Body, raw)
	}
	if got := r.Header.Get("Content-Type"); got != "application/json" {
		t.Fatalf("Content-Type %q", got)
	}
	if got := r.Header.Get(ReconciledHeader); got != "true" {
		t.Fatalf("%s %q", ReconciledHeader, got)
	}
	if len(r.Header) != 2 {
		t.Fatalf("header %v", r.Header)
	}
	if !strings.Contains(f.Reason, id) {
		t.Fatalf("reason %q does not name %s", f.Reason, id)
	}
}

func TestBatchesFindListingFails(t *testing.T) {
	ok := func(body string) Lister {
		return func(ctx context.Context, q url.Values) (*Listing, error) {
			return &Listing{Status: 200, Header: http.Header{"Date": {btNow.Format(http.TimeFormat)}}, Body: []byte(body), Received: btNow}, nil
		}
	}
	item := func(id string, at time.Duration) string {
		return fmt.Sprintf(`{"id":%q,"input_file_id":"file-abc","endpoint":"/v1/chat/completions","completion_window":"24h","metadata":{"a":"1"},"created_at":%d}`, id, btSince.Add(at).Unix())
	}
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	for _, tc := range []struct {
		name   string
		ctx    context.Context
		list   Lister
		reason string
	}{
		{"error", nil, func(ctx context.Context, q url.Values) (*Listing, error) {
			return nil, errors.New("connection refused")
		},
			"listing failed: connection refused"},
		{"500", nil, func(ctx context.Context, q url.Values) (*Listing, error) {
			return &Listing{Status: 500, Body: []byte(`{"error":{}}`)}, nil
		}, "listing answered 500"},
		{"404", nil, func(ctx context.Context, q url.Values) (*Listing, error) { return &Listing{Status: 404}, nil },
			"listing answered 404"},
		{"nil listing", nil, func(ctx context.Context, q url.Values) (*Listing, error) { return nil, nil }, "no response"},
		{"garbage", nil, ok(`<html>bad gateway</html>`), "listing is not a list"},
		{"truncated", nil, ok(`{"object":"list","data":[`), "listing is not a list"},
		{"not a list", nil, ok(`{"object":"batch","id":"batch_1"}`), "listing is not a list"},
		{"no data", nil, ok(`{"object":"list","has_more":false}`), "no data array"},
		{"data not an array", nil, ok(`{"object":"list","data":{},"has_more":false}`), "listing is not a list"},
		{"item not an object", nil, ok(`{"object":"list","data":[1],"has_more":false}`), "item 0"},
		{"item without id", nil, ok(`{"object":"list","data":[{"created_at":1}],"has_more":false}`), "no id"},
		{"not newest first", nil, ok(`{"object":"list","data":[` + item("batch_1", btSec(1)) + `,` + item("batch_2", btSec(2)) + `],"has_more":false}`),
			"not newest first at batch batch_2"},
		{"newer after older", nil, ok(`{"object":"list","data":[` + item("batch_1", btSec(1)) + `,` + item("batch_old", -time.Hour) + `,` + item("batch_2", btSec(1)) + `],"has_more":false}`),
			"not newest first at batch batch_2"},
		{"repeated", nil, ok(`{"object":"list","data":[` + item("batch_1", btSec(2)) + `,` + item("batch_1", btSec(1)) + `],"has_more":false}`),
			"repeats batch batch_1"},
		{"more without a cursor", nil, ok(`{"object":"list","data":[],"has_more":true}`), "names no last_id"},
		{"has_more absent, page repeats", nil, ok(`{"object":"list","data":[` + item("batch_2", btSec(2)) + `],"last_id":"batch_2"}`),
			"repeats batch batch_2"},
		{"cursor stuck", nil, ok(`{"object":"list","data":[],"last_id":"batch_2","has_more":true}`), "does not advance"},
		{"canceled", canceled, ok(`{"object":"list","data":[],"has_more":false}`), "listing canceled"},
		{"canceled while listing", nil, nil, "listing canceled"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, list := tc.ctx, tc.list
			if ctx == nil {
				ctx = context.Background()
			}
			if list == nil { // cancels the search during its first listing
				c, cancel := context.WithCancel(ctx)
				defer cancel()
				ctx = c
				list = func(ctx context.Context, q url.Values) (*Listing, error) {
					cancel()
					return nil, ctx.Err()
				}
			}
			f := (&Batches{}).Find(ctx, &Attempt{Body: []byte(btRequest), Since: btSince}, list)
			if f.Result != FindUnsure || !strings.Contains(f.Reason, tc.reason) {
				t.Fatalf("Find = %v (%s), want unsure with %q", f.Result, f.Reason, tc.reason)
			}
		})
	}
}

func btSec(n int) time.Duration { return time.Duration(n) * time.Second }
