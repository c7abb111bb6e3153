package batchesbackend

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const validBody = `{"input_file_id":"file-abc","endpoint":"/v1/chat/completions","completion_window":"24h","metadata":{"k":"v"}}`

var batchID = regexp.MustCompile(`^batch_[0-9a-f]{24}$`)

func start(t *testing.T) (*Server, *httptest.Server) {
	t.Helper()
	s := New()
	ts := httptest.NewServer(s)
	t.Cleanup(ts.Close)
	return s, ts
}

// do sends a request without Authorization (tenant "") and decodes the JSON
// response into a generic map.
func do(t *testing.T, ts *httptest.Server, method, path, body string) (*http.Response, map[string]any) {
	t.Helper()
	return doAs(t, ts, "", method, path, body)
}

// doAs is do for tenant: its Authorization header, none for "". Every
// response must carry a valid Date header.
func doAs(t *testing.T, ts *httptest.Server, tenant, method, path, body string) (*http.Response, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(method, ts.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if tenant != "" {
		req.Header.Set("Authorization", tenant)
	}
	resp, err := ts.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if _, err := http.ParseTime(resp.Header.Get("Date")); err != nil {
		t.Errorf("%s %s: Date header %q: %v", method, path, resp.Header.Get("Date"), err)
	}
	var m map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		t.Fatalf("%s %s: decoding response: %v", method, path, err)
	}
	return resp, m
}

func create(t *testing.T, ts *httptest.Server) map[string]any {
	t.Helper()
	resp, m := do(t, ts, "POST", "/v1/batches", validBody)
	if resp.StatusCode != 200 {
		t.Fatalf("create: status %d, body %v", resp.StatusCode, m)
	}
	return m
}

func wantError(t *testing.T, resp *http.Response, m map[string]any, status int, param any, msgPart string) {
	t.Helper()
	if resp.StatusCode != status {
		t.Fatalf("status = %d, want %d (%v)", resp.StatusCode, status, m)
	}
	e, ok := m["error"].(map[string]any)
	if !ok {
		t.Fatalf("no error envelope: %v", m)
	}
	if e["param"] != param || !strings.Contains(e["message"].(string), msgPart) {
		t.Fatalf("error = %v, want param %v and message containing %q", e, param, msgPart)
	}
	if _, ok := e["type"].(string); !ok {
		t.Fatalf("error type missing: %v", e)
	}
	if _, ok := e["code"]; !ok {
		t.Fatalf("error code key missing: %v", e)
	}
}

func TestCreate(t *testing.T) {
	s, ts := start(t)
	before := time.Now().Unix()
	resp, m := do(t, ts, "POST", "/v1/batches", validBody)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %v", resp.StatusCode, m)
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	want := "cancelled_at cancelling_at completed_at completion_window created_at endpoint error_file_id errors expired_at expires_at failed_at finalizing_at id in_progress_at input_file_id metadata object output_file_id request_counts status"
	if got := strings.Join(keys, " "); got != want {
		t.Fatalf("keys:\n got %s\nwant %s", got, want)
	}
	if !batchID.MatchString(m["id"].(string)) {
		t.Errorf("id = %v", m["id"])
	}
	for k, v := range map[string]any{"object": "batch", "endpoint": "/v1/chat/completions", "input_file_id": "file-abc", "completion_window": "24h", "status": "validating"} {
		if m[k] != v {
			t.Errorf("%s = %v, want %v", k, m[k], v)
		}
	}
	for _, k := range []string{"errors", "output_file_id", "error_file_id", "in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at", "cancelling_at", "cancelled_at"} {
		if m[k] != nil {
			t.Errorf("%s = %v, want null", k, m[k])
		}
	}
	created := m["created_at"].(float64)
	if created != float64(int64(created)) || int64(created) < before || int64(created) > time.Now().Unix() {
		t.Errorf("created_at = %v, want Unix seconds near %d", created, before)
	}
	if m["expires_at"] != created+86400 {
		t.Errorf("expires_at = %v, want created_at+86400", m["expires_at"])
	}
	if rc := fmt.Sprint(m["request_counts"]); rc != "map[completed:0 failed:0 total:0]" {
		t.Errorf("request_counts = %s", rc)
	}
	if md := fmt.Sprint(m["metadata"]); md != "map[k:v]" {
		t.Errorf("metadata = %s", md)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q", ct)
	}
	if resp.Header.Get("X-Request-Id") == "" {
		t.Error("no X-Request-Id")
	}
	if c := resp.Header.Get("Set-Cookie"); !regexp.MustCompile(`^backend_session=[0-9a-f]+; Path=/; HttpOnly$`).MatchString(c) {
		t.Errorf("Set-Cookie = %q", c)
	}

	// metadata omitted → null; ids unique.
	_, m2 := do(t, ts, "POST", "/v1/batches", `{"input_file_id":"f","endpoint":"/v1/embeddings","completion_window":"24h"}`)
	if v, ok := m2["metadata"]; !ok || v != nil {
		t.Errorf("metadata = %v (present %v), want null", v, ok)
	}
	if m2["id"] == m["id"] {
		t.Error("duplicate id")
	}
	if s.Creates() != 2 || s.Requests() != 2 {
		t.Errorf("Creates=%d Requests=%d, want 2/2", s.Creates(), s.Requests())
	}
	if got := s.LastCreate(); !strings.Contains(string(got.Body), "/v1/embeddings") || got.Header.Get("Content-Type") != "application/json" || got.ContentLength != int64(len(got.Body)) {
		t.Errorf("LastCreate = %+v", got)
	}
}

func TestGetListCancel(t *testing.T) {
	_, ts := start(t)
	if _, m := do(t, ts, "GET", "/v1/batches", ""); m["object"] != "list" || len(m["data"].([]any)) != 0 || m["first_id"] != nil || m["has_more"] != false {
		t.Fatalf("empty list = %v", m)
	}
	a, b := create(t, ts), create(t, ts)

	resp, got := do(t, ts, "GET", "/v1/batches/"+a["id"].(string), "")
	if resp.StatusCode != 200 || fmt.Sprint(got) != fmt.Sprint(a) {
		t.Fatalf("GET = %d %v, want %v", resp.StatusCode, got, a)
	}
	resp, m := do(t, ts, "GET", "/v1/batches/batch_nope", "")
	wantError(t, resp, m, 404, nil, "batch_nope")

	_, l := do(t, ts, "GET", "/v1/batches", "")
	data := l["data"].([]any)
	if len(data) != 2 || data[0].(map[string]any)["id"] != b["id"] || data[1].(map[string]any)["id"] != a["id"] ||
		l["first_id"] != b["id"] || l["last_id"] != a["id"] || l["has_more"] != false {
		t.Fatalf("list = %v", l)
	}

	resp, c := do(t, ts, "POST", "/v1/batches/"+a["id"].(string)+"/cancel", "")
	if resp.StatusCode != 200 || c["status"] != "cancelling" || c["cancelling_at"] == nil || c["id"] != a["id"] {
		t.Fatalf("cancel = %d %v", resp.StatusCode, c)
	}
	if _, g := do(t, ts, "GET", "/v1/batches/"+a["id"].(string), ""); g["status"] != "cancelled" || g["cancelled_at"] == nil {
		t.Fatalf("after cancel: %v", g)
	}
	resp, m = do(t, ts, "POST", "/v1/batches/batch_nope/cancel", "")
	wantError(t, resp, m, 404, nil, "batch_nope")
}

func TestUnknownRoutes(t *testing.T) {
	_, ts := start(t)
	for _, r := range [][2]string{{"GET", "/v1/files"}, {"PUT", "/v1/batches"}, {"DELETE", "/v1/batches/x"}, {"GET", "/v1/batches/x/cancel"}, {"GET", "/v1/batches/"}} {
		resp, m := do(t, ts, r[0], r[1], "")
		wantError(t, resp, m, 404, nil, "Invalid URL")
	}
}

func TestCreateValidation(t *testing.T) {
	s, ts := start(t)
	tooMany := map[string]string{}
	for i := range 17 {
		tooMany[fmt.Sprint("k", i)] = "v"
	}
	tooManyJSON, _ := json.Marshal(tooMany)
	cases := []struct {
		name, body string
		param      any
		msg        string
	}{
		{"idempotency_key", `{"input_file_id":"f","endpoint":"/v1/responses","completion_window":"24h","idempotency_key":"abc"}`, "idempotency_key", "Unrecognized request argument supplied: idempotency_key"},
		{"malformed", `{"input_file_id":`, nil, "could not parse the JSON"},
		{"array", `[1]`, nil, "could not parse the JSON"},
		{"null", `null`, nil, "could not parse the JSON"},
		{"trailing", validBody + `x`, nil, "could not parse the JSON"},
		{"missing", `{"endpoint":"/v1/responses","completion_window":"24h"}`, "input_file_id", "Missing required parameter"},
		{"type", `{"input_file_id":1,"endpoint":"/v1/responses","completion_window":"24h"}`, "input_file_id", "Invalid type"},
		{"endpoint", `{"input_file_id":"f","endpoint":"/v1/moderations","completion_window":"24h"}`, "endpoint", "Invalid value"},
		{"window", `{"input_file_id":"f","endpoint":"/v1/responses","completion_window":"1h"}`, "completion_window", "Invalid value"},
		{"metadata type", `{"input_file_id":"f","endpoint":"/v1/responses","completion_window":"24h","metadata":{"a":1}}`, "metadata", "Invalid type"},
		{"metadata size", `{"input_file_id":"f","endpoint":"/v1/responses","completion_window":"24h","metadata":` + string(tooManyJSON) + `}`, "metadata", "too many"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			resp, m := do(t, ts, "POST", "/v1/batches", c.body)
			wantError(t, resp, m, 400, c.param, c.msg)
			if resp.Header.Get("Set-Cookie") == "" {
				t.Error("no Set-Cookie on error response")
			}
		})
	}
	// Content-Type must be JSON.
	resp, err := ts.Client().Post(ts.URL+"/v1/batches", "text/plain", strings.NewReader(validBody))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&m)
	resp.Body.Close()
	wantError(t, resp, m, 400, nil, "Content-Type")

	if want := int64(len(cases) + 1); s.Creates() != 0 || s.Requests() != want {
		t.Errorf("Creates=%d Requests=%d, want 0/%d", s.Creates(), s.Requests(), want)
	}
}

// rawPost writes a hand-made HTTP/1.1 request with the given Content-Length
// header, half-closes the connection and returns the first response.
func rawPost(t *testing.T, ts *httptest.Server, contentLength int, body string) (*http.Response, map[string]any) {
	t.Helper()
	conn, err := net.Dial("tcp", ts.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(conn, "POST /v1/batches HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", contentLength, body)
	_ = conn.(*net.TCPConn).CloseWrite()
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		t.Fatal(err)
	}
	return resp, m
}

func TestContentLengthMismatch(t *testing.T) {
	s, ts := start(t)

	// Header promises more than is sent: the handler sees a short body.
	resp, m := rawPost(t, ts, len(validBody)+10, validBody)
	wantError(t, resp, m, 400, nil, "does not match Content-Length")
	if got := s.LastCreate(); got.ContentLength != int64(len(validBody)+10) || string(got.Body) != validBody {
		t.Errorf("LastCreate = CL %d body %q", got.ContentLength, got.Body)
	}

	// Header promises less than is sent: Go's server cuts the body at
	// Content-Length, so the handler sees truncated JSON.
	resp, m = rawPost(t, ts, len(validBody)-5, validBody)
	wantError(t, resp, m, 400, nil, "could not parse the JSON")
	if got := s.LastCreate(); got.ContentLength != int64(len(validBody)-5) || string(got.Body) != validBody[:len(validBody)-5] {
		t.Errorf("LastCreate = CL %d body %q", got.ContentLength, got.Body)
	}

	// Exact length works over the same raw path.
	if resp, m = rawPost(t, ts, len(validBody), validBody); resp.StatusCode != 200 {
		t.Fatalf("exact Content-Length: %d %v", resp.StatusCode, m)
	}
	if s.Creates() != 1 || s.Requests() != 3 {
		t.Errorf("Creates=%d Requests=%d, want 1/3", s.Creates(), s.Requests())
	}
}

func TestFaultStatusTimes(t *testing.T) {
	s, ts := start(t)
	s.SetFault(Fault{Status: 500, Times: 1})
	resp, m := do(t, ts, "POST", "/v1/batches", validBody)
	wantError(t, resp, m, 500, nil, "server had an error")
	create(t, ts) // fault cleared itself

	s.SetFault(Fault{Status: 429, Times: 2})
	for range 2 {
		resp, m = do(t, ts, "POST", "/v1/batches", validBody)
		wantError(t, resp, m, 429, nil, "Rate limit")
		if m["error"].(map[string]any)["code"] != "rate_limit_exceeded" {
			t.Errorf("429 envelope = %v", m)
		}
	}
	create(t, ts)

	s.SetFault(Fault{Status: 400}) // sticky until changed
	for range 3 {
		resp, m = do(t, ts, "POST", "/v1/batches", validBody)
		wantError(t, resp, m, 400, nil, "Injected fault")
	}
	s.SetFault(Fault{})
	create(t, ts)

	if s.Creates() != 3 || s.Requests() != 9 {
		t.Errorf("Creates=%d Requests=%d, want 3/9", s.Creates(), s.Requests())
	}
}

func TestFaultDelay(t *testing.T) {
	s, ts := start(t)
	s.SetFault(Fault{Delay: 100 * time.Millisecond, Times: 1})
	t0 := time.Now()
	create(t, ts)
	if d := time.Since(t0); d < 100*time.Millisecond {
		t.Errorf("delayed create took %v", d)
	}
}

func (s *Server) faultPending() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fault != (Fault{})
}

func TestFaultBlock(t *testing.T) {
	s, ts := start(t)
	release := make(chan struct{})
	s.SetFault(Fault{Block: release, Times: 1})

	done := make(chan map[string]any, 1)
	go func() {
		resp, err := ts.Client().Post(ts.URL+"/v1/batches", "application/json", strings.NewReader(validBody))
		if err != nil {
			done <- nil
			return
		}
		defer resp.Body.Close()
		var m map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&m)
		done <- m
	}()
	// Wait until the first request took the fault: counting its arrival is
	// not enough, since a later request could overtake it and block instead.
	for s.faultPending() {
		time.Sleep(time.Millisecond)
	}
	// A second request is not blocked: Times was 1.
	create(t, ts)
	select {
	case m := <-done:
		t.Fatalf("blocked request answered early: %v", m)
	case <-time.After(100 * time.Millisecond):
	}
	if s.Creates() != 1 {
		t.Fatalf("Creates = %d while blocked, want 1", s.Creates())
	}
	close(release)
	if m := <-done; m == nil || m["object"] != "batch" {
		t.Fatalf("released request = %v", m)
	}
	if s.Creates() != 2 {
		t.Fatalf("Creates = %d, want 2", s.Creates())
	}

	// A blocked request whose client gives up creates nothing.
	s.SetFault(Fault{Block: make(chan struct{})})
	giveUpOnBlockedCreate(t, ts)
	s.SetFault(Fault{})
	create(t, ts)
	if s.Creates() != 3 || s.Requests() != 4 {
		t.Errorf("Creates=%d Requests=%d, want 3/4", s.Creates(), s.Requests())
	}
}

func TestConcurrentCreates(t *testing.T) {
	s, ts := start(t)
	s.SetFault(Fault{Status: 503, Times: 5})
	const n = 32
	var (
		mu     sync.Mutex
		ids    = map[string]bool{}
		failed int
		wg     sync.WaitGroup
	)
	for range n {
		wg.Go(func() {
			resp, err := ts.Client().Post(ts.URL+"/v1/batches", "application/json", strings.NewReader(validBody))
			if err != nil {
				t.Error(err)
				return
			}
			defer resp.Body.Close()
			var m map[string]any
			_ = json.NewDecoder(resp.Body).Decode(&m)
			_, _ = io.Copy(io.Discard, resp.Body)
			mu.Lock()
			defer mu.Unlock()
			if resp.StatusCode == 503 {
				failed++
			} else if id, _ := m["id"].(string); batchID.MatchString(id) {
				ids[id] = true
			}
		})
	}
	wg.Wait()
	if failed != 5 || len(ids) != n-5 {
		t.Errorf("failed=%d unique ids=%d, want 5 and %d", failed, len(ids), n-5)
	}
	if s.Creates() != n-5 || s.Requests() != n {
		t.Errorf("Creates=%d Requests=%d, want %d/%d", s.Creates(), s.Requests(), n-5, n)
	}
	_, l := do(t, ts, "GET", "/v1/batches?limit=100", "")
	if len(l["data"].([]any)) != n-5 {
		t.Errorf("list has %d batches", len(l["data"].([]any)))
	}
}

const (
	tenantA = "Bearer sk-tenant-a"
	tenantB = "Bearer sk-tenant-b"
)

func createAs(t *testing.T, ts *httptest.Server, tenant, body string) map[string]any {
	t.Helper()
	resp, m := doAs(t, ts, tenant, "POST", "/v1/batches", body)
	if resp.StatusCode != 200 {
		t.Fatalf("create as %q: status %d, body %v", tenant, resp.StatusCode, m)
	}
	return m
}

// listIDs returns the ids of a list page.
func listIDs(t *testing.T, l map[string]any) []string {
	t.Helper()
	data, ok := l["data"].([]any)
	if !ok || l["object"] != "list" {
		t.Fatalf("not a list: %v", l)
	}
	ids := make([]string, len(data))
	for i, d := range data {
		ids[i] = d.(map[string]any)["id"].(string)
	}
	return ids
}

func batchIDs(bs []Batch) []string {
	ids := make([]string, len(bs))
	for i, b := range bs {
		ids[i] = b.ID
	}
	return ids
}

func reversed(ids []string) []string {
	out := make([]string, len(ids))
	for i, id := range ids {
		out[len(ids)-1-i] = id
	}
	return out
}

func TestTenants(t *testing.T) {
	s, ts := start(t)
	a1 := createAs(t, ts, tenantA, validBody)["id"].(string)
	b1 := createAs(t, ts, tenantB, validBody)["id"].(string)
	a2 := createAs(t, ts, tenantA, validBody)["id"].(string)
	n1 := createAs(t, ts, "", validBody)["id"].(string)

	for tenant, want := range map[string][]string{tenantA: {a2, a1}, tenantB: {b1}, "": {n1}, "Bearer other": {}} {
		_, l := doAs(t, ts, tenant, "GET", "/v1/batches", "")
		if got := listIDs(t, l); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("list as %q = %v, want %v", tenant, got, want)
		}
		if got := batchIDs(s.Batches(tenant)); fmt.Sprint(got) != fmt.Sprint(reversed(want)) {
			t.Errorf("Batches(%q) = %v, want %v", tenant, got, reversed(want))
		}
		if got := s.CreatesFor(tenant); got != len(want) {
			t.Errorf("CreatesFor(%q) = %d, want %d", tenant, got, len(want))
		}
	}
	if s.Creates() != 4 {
		t.Errorf("Creates = %d, want 4", s.Creates())
	}

	// Another tenant's batch is a missing batch, to GET and to cancel.
	for _, c := range []struct{ tenant, id string }{{tenantB, a1}, {"", a1}, {tenantA, b1}, {tenantA, n1}} {
		resp, m := doAs(t, ts, c.tenant, "GET", "/v1/batches/"+c.id, "")
		wantError(t, resp, m, 404, nil, "No batch found with id '"+c.id+"'")
		resp, m = doAs(t, ts, c.tenant, "POST", "/v1/batches/"+c.id+"/cancel", "")
		wantError(t, resp, m, 404, nil, "No batch found with id '"+c.id+"'")
	}
	// Listing after another tenant's batch finds nothing of it.
	_, l := doAs(t, ts, tenantA, "GET", "/v1/batches?after="+b1, "")
	if ids := listIDs(t, l); len(ids) != 0 || l["has_more"] != false || l["first_id"] != nil || l["last_id"] != nil {
		t.Errorf("list after another tenant's batch = %v", l)
	}
	// The owner still can, and its batch is untouched.
	if resp, m := doAs(t, ts, tenantA, "GET", "/v1/batches/"+a1, ""); resp.StatusCode != 200 || m["status"] != "validating" {
		t.Errorf("owner GET = %d %v", resp.StatusCode, m)
	}
	if resp, m := doAs(t, ts, tenantA, "POST", "/v1/batches/"+a1+"/cancel", ""); resp.StatusCode != 200 || m["status"] != "cancelling" {
		t.Errorf("owner cancel = %d %v", resp.StatusCode, m)
	}

	// Batches returns copies.
	bs := s.Batches(tenantA)
	bs[0].Metadata["k"] = "changed"
	*bs[0].ExpiresAt = 0
	bs[0].Status = "changed"
	if again := s.Batches(tenantA)[0]; again.Metadata["k"] != "v" || *again.ExpiresAt == 0 || again.Status != "cancelling" {
		t.Errorf("Batches shares state: %+v", again)
	}
}

func TestListPaging(t *testing.T) {
	s, ts := start(t)
	const n = 250
	for i := range n {
		createAs(t, ts, tenantA, validBody)
		if i%10 == 0 {
			createAs(t, ts, tenantB, validBody)
		}
	}
	want := reversed(batchIDs(s.Batches(tenantA))) // newest first
	if len(want) != n {
		t.Fatalf("Batches(tenantA) has %d", len(want))
	}
	listsBefore := s.Lists()

	// Default page: the newest 20.
	_, l := doAs(t, ts, tenantA, "GET", "/v1/batches", "")
	if ids := listIDs(t, l); fmt.Sprint(ids) != fmt.Sprint(want[:20]) || l["has_more"] != true || l["first_id"] != want[0] || l["last_id"] != want[19] {
		t.Fatalf("default page: %d ids, has_more %v, first %v, last %v", len(ids), l["has_more"], l["first_id"], l["last_id"])
	}
	requests := int64(1)

	for _, limit := range []int{1, 7, 20, 100} {
		var (
			got   []string
			seen  = map[string]bool{}
			after string
		)
		for page := 0; ; page++ {
			path := fmt.Sprintf("/v1/batches?limit=%d", limit)
			if after != "" {
				path += "&after=" + after
			}
			resp, l := doAs(t, ts, tenantA, "GET", path, "")
			requests++
			if resp.StatusCode != 200 {
				t.Fatalf("limit %d page %d: %d %v", limit, page, resp.StatusCode, l)
			}
			ids := listIDs(t, l)
			rest := n - len(got)
			wantLen := min(limit, rest)
			if len(ids) != wantLen || l["has_more"] != (rest > limit) {
				t.Fatalf("limit %d page %d: %d ids, has_more %v; want %d, %v", limit, page, len(ids), l["has_more"], wantLen, rest > limit)
			}
			if l["first_id"] != ids[0] || l["last_id"] != ids[len(ids)-1] {
				t.Fatalf("limit %d page %d: first_id %v last_id %v, data %v…%v", limit, page, l["first_id"], l["last_id"], ids[0], ids[len(ids)-1])
			}
			for _, id := range ids {
				if seen[id] {
					t.Fatalf("limit %d: %s listed twice", limit, id)
				}
				seen[id] = true
			}
			got = append(got, ids...)
			if l["has_more"] == false {
				break
			}
			after = l["last_id"].(string)
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("limit %d: paging listed %d batches, not all of tenant A's newest first", limit, len(got))
		}
		// After the oldest batch there is nothing.
		_, l := doAs(t, ts, tenantA, "GET", fmt.Sprintf("/v1/batches?limit=%d&after=%s", limit, want[n-1]), "")
		requests++
		if ids := listIDs(t, l); len(ids) != 0 || l["has_more"] != false || l["first_id"] != nil || l["last_id"] != nil {
			t.Fatalf("after the oldest: %v", l)
		}
	}

	// An unknown after gives an empty page.
	_, l = doAs(t, ts, tenantA, "GET", "/v1/batches?after=batch_unknown", "")
	requests++
	if ids := listIDs(t, l); len(ids) != 0 || l["has_more"] != false {
		t.Fatalf("unknown after: %v", l)
	}
	if got := s.Lists() - listsBefore; got != requests {
		t.Errorf("Lists grew by %d, want %d", got, requests)
	}
	// The list order is stable.
	_, l1 := doAs(t, ts, tenantA, "GET", "/v1/batches?limit=100", "")
	_, l2 := doAs(t, ts, tenantA, "GET", "/v1/batches?limit=100", "")
	if fmt.Sprint(listIDs(t, l1)) != fmt.Sprint(listIDs(t, l2)) {
		t.Error("list order changed between two listings")
	}
}

func TestListBadLimit(t *testing.T) {
	s, ts := start(t)
	createAs(t, ts, tenantA, validBody)
	cases := []struct{ query, code, msg string }{
		{"limit=0", "integer_below_min_value", "Expected a value >= 1, but got 0 instead"},
		{"limit=-5", "integer_below_min_value", "Expected a value >= 1"},
		{"limit=101", "integer_above_max_value", "Expected a value <= 100, but got 101 instead"},
		{"limit=99999999999999999999", "integer_above_max_value", "Expected a value <= 100"},
		{"limit=-99999999999999999999", "integer_below_min_value", "Expected a value >= 1"},
		{"limit=abc", "invalid_type", "expected an integer"},
		{"limit=1.5", "invalid_type", "expected an integer"},
		{"limit=", "invalid_type", "expected an integer"},
		{"limit=abc&after=batch_x", "invalid_type", "expected an integer"},
	}
	for _, c := range cases {
		resp, m := doAs(t, ts, tenantA, "GET", "/v1/batches?"+c.query, "")
		wantError(t, resp, m, 400, "limit", c.msg)
		if e := m["error"].(map[string]any); e["code"] != c.code || e["type"] != "invalid_request_error" {
			t.Errorf("%s: error %v, want code %s", c.query, e, c.code)
		}
	}
	for _, q := range []string{"limit=1", "limit=100", "limit=%2B3"} {
		if resp, l := doAs(t, ts, tenantA, "GET", "/v1/batches?"+q, ""); resp.StatusCode != 200 || len(listIDs(t, l)) != 1 {
			t.Errorf("%s: %d %v", q, resp.StatusCode, l)
		}
	}
	if want := int64(len(cases) + 3); s.Lists() != want {
		t.Errorf("Lists = %d, want %d", s.Lists(), want)
	}
}

func TestFaultAfterStatus(t *testing.T) {
	s, ts := start(t)
	for i, status := range []int{500, 502, 504} {
		s.SetFault(Fault{Status: status, After: true, Times: 1})
		resp, m := doAs(t, ts, tenantA, "POST", "/v1/batches", validBody)
		wantError(t, resp, m, status, nil, "server had an error")
		if got := s.Creates(); got != int64(i+1) {
			t.Fatalf("after %d: Creates = %d, want %d", status, got, i+1)
		}
	}
	bs := s.Batches(tenantA)
	if len(bs) != 3 || s.CreatesFor(tenantA) != 3 {
		t.Fatalf("Batches = %d, CreatesFor = %d, want 3/3", len(bs), s.CreatesFor(tenantA))
	}
	// The lost batch is real: its owner can read it and list it.
	if resp, m := doAs(t, ts, tenantA, "GET", "/v1/batches/"+bs[0].ID, ""); resp.StatusCode != 200 || m["input_file_id"] != "file-abc" {
		t.Fatalf("GET lost batch = %d %v", resp.StatusCode, m)
	}
	// Times ran out: the next create is answered.
	createAs(t, ts, tenantA, validBody)

	// Times counts After faults too; an invalid create gets the fault's
	// answer, but nothing is created.
	s.SetFault(Fault{Status: 503, After: true, Times: 2})
	resp, m := doAs(t, ts, tenantA, "POST", "/v1/batches", `{"input_file_id":"f"}`)
	wantError(t, resp, m, 503, nil, "server had an error")
	resp, m = doAs(t, ts, tenantA, "POST", "/v1/batches", validBody)
	wantError(t, resp, m, 503, nil, "server had an error")
	createAs(t, ts, tenantA, validBody)
	if s.Creates() != 6 || s.Requests() != 7 {
		t.Errorf("Creates=%d Requests=%d, want 6/7", s.Creates(), s.Requests())
	}

	// Without After, the same fault creates nothing.
	s.SetFault(Fault{Status: 500, Times: 1})
	resp, m = doAs(t, ts, tenantA, "POST", "/v1/batches", validBody)
	wantError(t, resp, m, 500, nil, "server had an error")
	if s.Creates() != 6 {
		t.Errorf("Creates = %d, want 6", s.Creates())
	}
}

// rawCreateBytes sends a valid create over a fresh connection and returns
// how many response bytes arrived before the connection ended, and how it
// ended (nil for a clean EOF).
func rawCreateBytes(t *testing.T, ts *httptest.Server) (int, error) {
	t.Helper()
	conn, err := net.Dial("tcp", ts.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(conn, "POST /v1/batches HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(validBody), validBody)
	b, err := io.ReadAll(conn)
	return len(b), err
}

func TestFaultReset(t *testing.T) {
	s, ts := start(t)

	// Reset without After: the connection drops, nothing is created.
	s.SetFault(Fault{Reset: true, Times: 1})
	resp, err := ts.Client().Post(ts.URL+"/v1/batches", "application/json", strings.NewReader(validBody))
	if err == nil {
		resp.Body.Close()
		t.Fatalf("Reset: got a response %d, want a transport error", resp.StatusCode)
	}
	if s.Creates() != 0 || s.Requests() != 1 || len(s.Batches("")) != 0 {
		t.Fatalf("Reset: Creates=%d Requests=%d Batches=%d, want 0/1/0", s.Creates(), s.Requests(), len(s.Batches("")))
	}

	// After+Reset: the batch is created, then the connection drops.
	s.SetFault(Fault{Reset: true, After: true, Times: 1})
	resp, err = ts.Client().Post(ts.URL+"/v1/batches", "application/json", strings.NewReader(validBody))
	if err == nil {
		resp.Body.Close()
		t.Fatalf("After+Reset: got a response %d, want a transport error", resp.StatusCode)
	}
	if s.Creates() != 1 || len(s.Batches("")) != 1 {
		t.Fatalf("After+Reset: Creates=%d Batches=%d, want 1/1", s.Creates(), len(s.Batches("")))
	}

	// Not a byte of response reaches the client, not even a status line:
	// the connection is reset (or at worst closed), never answered 500.
	for _, f := range []Fault{{Reset: true, Times: 1}, {Reset: true, After: true, Times: 1}, {Reset: true, After: true, Status: 500, Times: 1}} {
		s.SetFault(f)
		n, err := rawCreateBytes(t, ts)
		if n != 0 {
			t.Errorf("%+v: %d response bytes arrived", f, n)
		}
		if err != nil && !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("%+v: connection ended with %v, want a reset or EOF", f, err)
		}
	}
	if s.Creates() != 3 || s.Requests() != 5 {
		t.Errorf("Creates=%d Requests=%d, want 3/5", s.Creates(), s.Requests())
	}
	// The server still answers afterwards.
	create(t, ts)
}

// waitFor polls cond until it holds or the test has waited too long.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestFaultAfterBlock(t *testing.T) {
	s, ts := start(t)
	release := make(chan struct{})
	s.SetFault(Fault{Block: release, After: true, Times: 1})

	type answer struct {
		status int
		m      map[string]any
	}
	done := make(chan answer, 1)
	go func() {
		resp, err := ts.Client().Post(ts.URL+"/v1/batches", "application/json", strings.NewReader(validBody))
		if err != nil {
			done <- answer{}
			return
		}
		defer resp.Body.Close()
		var m map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&m)
		done <- answer{resp.StatusCode, m}
	}()
	// The batch exists while its answer is held back.
	waitFor(t, "the blocked create to create", func() bool { return s.Creates() == 1 })
	id := s.Batches("")[0].ID
	if resp, m := do(t, ts, "GET", "/v1/batches/"+id, ""); resp.StatusCode != 200 {
		t.Fatalf("GET while blocked = %d %v", resp.StatusCode, m)
	}
	if _, l := do(t, ts, "GET", "/v1/batches", ""); fmt.Sprint(listIDs(t, l)) != fmt.Sprint([]string{id}) {
		t.Fatalf("list while blocked = %v", l)
	}
	select {
	case a := <-done:
		t.Fatalf("blocked request answered early: %d %v", a.status, a.m)
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	if a := <-done; a.status != 200 || a.m["id"] != id {
		t.Fatalf("released request = %d %v, want the batch %s", a.status, a.m, id)
	}

	// After+Delay+Status: created at once, answered late with the status.
	s.SetFault(Fault{Delay: 100 * time.Millisecond, Status: 502, After: true, Times: 1})
	t0 := time.Now()
	resp, m := do(t, ts, "POST", "/v1/batches", validBody)
	wantError(t, resp, m, 502, nil, "server had an error")
	if d := time.Since(t0); d < 100*time.Millisecond {
		t.Errorf("delayed fault answered after %v", d)
	}

	// A client that gives up on an After+Block create still made the batch.
	s.SetFault(Fault{Block: make(chan struct{}), After: true})
	giveUpOnBlockedCreate(t, ts)
	s.SetFault(Fault{})
	if s.Creates() != 3 || len(s.Batches("")) != 3 {
		t.Errorf("Creates=%d Batches=%d, want 3/3", s.Creates(), len(s.Batches("")))
	}
}

func TestSeed(t *testing.T) {
	s, ts := start(t)
	now := time.Now().Unix()
	md := map[string]string{"k": "v"}
	old := s.Seed(tenantA, Batch{InputFileID: "file-abc", Endpoint: "/v1/chat/completions", CreatedAt: now - 100, Metadata: md})
	md["k"] = "changed" // Seed keeps its own copy
	created := createAs(t, ts, tenantA, validBody)["id"].(string)
	mid := s.Seed(tenantA, Batch{ID: "batch_seeded_mid", InputFileID: "file-abc", Endpoint: "/v1/chat/completions", CreatedAt: now - 50, Status: "completed"})
	old2 := s.Seed(tenantA, Batch{InputFileID: "file-abc", Endpoint: "/v1/chat/completions", CreatedAt: now - 100})
	s.Seed(tenantB, Batch{InputFileID: "file-abc", Endpoint: "/v1/chat/completions", CreatedAt: now - 75})

	if !batchID.MatchString(old.ID) || old.Object != "batch" || old.Status != "validating" || old.CompletionWindow != "24h" ||
		old.CreatedAt != now-100 || old.ExpiresAt == nil || *old.ExpiresAt != now-100+86400 || old.Metadata["k"] != "v" {
		t.Errorf("seeded batch = %+v", old)
	}
	if mid.ID != "batch_seeded_mid" || mid.Status != "completed" {
		t.Errorf("seeded with fields = %+v", mid)
	}
	if s.Creates() != 1 || s.CreatesFor(tenantA) != 1 || s.CreatesFor(tenantB) != 0 {
		t.Errorf("Creates=%d CreatesFor(A)=%d CreatesFor(B)=%d, want 1/1/0", s.Creates(), s.CreatesFor(tenantA), s.CreatesFor(tenantB))
	}

	// Oldest first by created_at, ties in the order stored.
	oldestFirst := []string{old.ID, old2.ID, mid.ID, created}
	if got := batchIDs(s.Batches(tenantA)); fmt.Sprint(got) != fmt.Sprint(oldestFirst) {
		t.Fatalf("Batches = %v, want %v", got, oldestFirst)
	}
	_, l := doAs(t, ts, tenantA, "GET", "/v1/batches", "")
	if got := listIDs(t, l); fmt.Sprint(got) != fmt.Sprint(reversed(oldestFirst)) {
		t.Fatalf("list = %v, want %v", got, reversed(oldestFirst))
	}
	_, l = doAs(t, ts, tenantA, "GET", "/v1/batches?limit=1&after="+mid.ID, "")
	if got := listIDs(t, l); fmt.Sprint(got) != fmt.Sprint([]string{old2.ID}) || l["has_more"] != true {
		t.Fatalf("page after mid = %v", l)
	}
	_, l = doAs(t, ts, tenantA, "GET", "/v1/batches?after="+old2.ID, "")
	if got := listIDs(t, l); fmt.Sprint(got) != fmt.Sprint([]string{old.ID}) || l["has_more"] != false {
		t.Fatalf("page after old2 = %v", l)
	}

	// Seeded batches are served like created ones, to their tenant only.
	resp, m := doAs(t, ts, tenantA, "GET", "/v1/batches/"+old.ID, "")
	if resp.StatusCode != 200 || m["created_at"] != float64(now-100) || fmt.Sprint(m["metadata"]) != "map[k:v]" {
		t.Errorf("GET seeded = %d %v", resp.StatusCode, m)
	}
	resp, m = doAs(t, ts, tenantB, "GET", "/v1/batches/"+old.ID, "")
	wantError(t, resp, m, 404, nil, "No batch found")

	defer func() {
		if recover() == nil {
			t.Error("Seed with a taken id did not panic")
		}
	}()
	s.Seed(tenantB, Batch{ID: mid.ID})
}

const keyedBody = `{"input_file_id":"file-abc","endpoint":"/v1/chat/completions","completion_window":"24h","metadata":{"k":"v"},"idempotency_key":"key-1"}`

func TestHonourIdempotencyKey(t *testing.T) {
	s, ts := start(t)
	// Off by default: an unknown field.
	resp, m := doAs(t, ts, tenantA, "POST", "/v1/batches", keyedBody)
	wantError(t, resp, m, 400, "idempotency_key", "Unrecognized request argument supplied: idempotency_key")

	s.HonourIdempotencyKey()
	first := createAs(t, ts, tenantA, keyedBody)
	if _, ok := first["idempotency_key"]; ok {
		t.Errorf("batch carries the key: %v", first)
	}
	again := createAs(t, ts, tenantA, keyedBody)
	if again["id"] != first["id"] || s.Creates() != 1 {
		t.Fatalf("same key, same parameters: id %v (first %v), Creates %d", again["id"], first["id"], s.Creates())
	}
	// Key order and whitespace do not matter, only the parameters.
	reordered := `{ "idempotency_key":"key-1", "metadata":{"k":"v"}, "completion_window":"24h", "endpoint":"/v1/chat/completions", "input_file_id":"file-abc" }`
	if got := createAs(t, ts, tenantA, reordered); got["id"] != first["id"] {
		t.Fatalf("reordered body made %v", got["id"])
	}
	// A replay shows the batch as it is now.
	doAs(t, ts, tenantA, "POST", "/v1/batches/"+first["id"].(string)+"/cancel", "")
	if got := createAs(t, ts, tenantA, keyedBody); got["id"] != first["id"] || got["status"] != "cancelled" {
		t.Fatalf("replay after cancel = %v", got)
	}

	// Keys are per tenant.
	other := createAs(t, ts, tenantB, keyedBody)
	if other["id"] == first["id"] || s.Creates() != 2 || s.CreatesFor(tenantB) != 1 {
		t.Fatalf("other tenant, same key: id %v, Creates %d", other["id"], s.Creates())
	}

	// Same key, other parameters: 409 with llama-stack's message.
	want := "Idempotency key 'key-1' was previously used with different parameters. Either use a new idempotency key or ensure all parameters match the original request."
	for _, body := range []string{
		`{"input_file_id":"file-other","endpoint":"/v1/chat/completions","completion_window":"24h","metadata":{"k":"v"},"idempotency_key":"key-1"}`,
		`{"input_file_id":"file-abc","endpoint":"/v1/embeddings","completion_window":"24h","metadata":{"k":"v"},"idempotency_key":"key-1"}`,
		`{"input_file_id":"file-abc","endpoint":"/v1/chat/completions","completion_window":"24h","metadata":{"k":"w"},"idempotency_key":"key-1"}`,
		`{"input_file_id":"file-abc","endpoint":"/v1/chat/completions","completion_window":"24h","idempotency_key":"key-1"}`,
	} {
		resp, m := doAs(t, ts, tenantA, "POST", "/v1/batches", body)
		wantError(t, resp, m, 409, "idempotency_key", want)
		if msg := m["error"].(map[string]any)["message"]; msg != want {
			t.Errorf("message %q\nwant    %q", msg, want)
		}
	}
	// metadata null and {} differ, as they do to llama-stack.
	createAs(t, ts, tenantA, `{"input_file_id":"f","endpoint":"/v1/responses","completion_window":"24h","metadata":null,"idempotency_key":"key-2"}`)
	resp, m = doAs(t, ts, tenantA, "POST", "/v1/batches", `{"input_file_id":"f","endpoint":"/v1/responses","completion_window":"24h","metadata":{},"idempotency_key":"key-2"}`)
	wantError(t, resp, m, 409, "idempotency_key", "key-2")
	if s.Creates() != 3 {
		t.Errorf("Creates = %d, want 3", s.Creates())
	}

	// A null key is no key; a key must be a string.
	nullKey := `{"input_file_id":"f","endpoint":"/v1/responses","completion_window":"24h","idempotency_key":null}`
	if createAs(t, ts, tenantA, nullKey)["id"] == createAs(t, ts, tenantA, nullKey)["id"] {
		t.Error("null keys deduplicated")
	}
	resp, m = doAs(t, ts, tenantA, "POST", "/v1/batches", `{"input_file_id":"f","endpoint":"/v1/responses","completion_window":"24h","idempotency_key":1}`)
	wantError(t, resp, m, 400, "idempotency_key", "Invalid type for 'idempotency_key'")
	// Invalid parameters are 400 before the key is looked at.
	resp, m = doAs(t, ts, tenantA, "POST", "/v1/batches", `{"input_file_id":"f","endpoint":"/v1/moderations","completion_window":"24h","idempotency_key":"key-1"}`)
	wantError(t, resp, m, 400, "endpoint", "Invalid value")
	if s.Creates() != 5 {
		t.Errorf("Creates = %d, want 5", s.Creates())
	}

	// Concurrent creates with one new key make one batch.
	const n = 16
	ids := make(chan any, n)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			req, _ := http.NewRequest("POST", ts.URL+"/v1/batches", strings.NewReader(strings.Replace(keyedBody, "key-1", "key-3", 1)))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Authorization", tenantA)
			resp, err := ts.Client().Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			defer resp.Body.Close()
			var m map[string]any
			_ = json.NewDecoder(resp.Body).Decode(&m)
			ids <- m["id"]
		})
	}
	wg.Wait()
	close(ids)
	distinct := map[any]bool{}
	for id := range ids {
		distinct[id] = true
	}
	if len(distinct) != 1 || s.Creates() != 6 {
		t.Errorf("concurrent same-key creates: ids %v, Creates %d", distinct, s.Creates())
	}
}

func TestHonourIdempotencyKeyWithFaults(t *testing.T) {
	s, ts := start(t)
	s.HonourIdempotencyKey()
	body := func(key string) string { return strings.Replace(keyedBody, "key-1", key, 1) }

	// After+500: created, answer lost; the retry gets that batch.
	s.SetFault(Fault{Status: 500, After: true, Times: 1})
	resp, m := doAs(t, ts, tenantA, "POST", "/v1/batches", body("after-500"))
	wantError(t, resp, m, 500, nil, "server had an error")
	lost := s.Batches(tenantA)
	if len(lost) != 1 {
		t.Fatalf("Batches = %d, want 1", len(lost))
	}
	if got := createAs(t, ts, tenantA, body("after-500")); got["id"] != lost[0].ID || s.Creates() != 1 {
		t.Fatalf("retry = %v, Creates %d; want %s, 1", got["id"], s.Creates(), lost[0].ID)
	}
	// ...and other parameters under that key conflict.
	resp, m = doAs(t, ts, tenantA, "POST", "/v1/batches", strings.Replace(body("after-500"), "file-abc", "file-x", 1))
	wantError(t, resp, m, 409, "idempotency_key", "after-500")

	// After+Reset: the same.
	s.SetFault(Fault{Reset: true, After: true, Times: 1})
	req, _ := http.NewRequest("POST", ts.URL+"/v1/batches", strings.NewReader(body("after-reset")))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", tenantA)
	if resp, err := ts.Client().Do(req); err == nil {
		resp.Body.Close()
		t.Fatalf("After+Reset answered %d", resp.StatusCode)
	}
	if s.Creates() != 2 {
		t.Fatalf("Creates = %d, want 2", s.Creates())
	}
	lost2 := s.Batches(tenantA)[1]
	if got := createAs(t, ts, tenantA, body("after-reset")); got["id"] != lost2.ID || s.Creates() != 2 {
		t.Fatalf("retry after reset = %v, Creates %d; want %s", got["id"], s.Creates(), lost2.ID)
	}

	// An After fault on the retry itself: the replay is what gets lost, and
	// still nothing new is created.
	s.SetFault(Fault{Status: 504, After: true, Times: 1})
	resp, m = doAs(t, ts, tenantA, "POST", "/v1/batches", body("after-reset"))
	wantError(t, resp, m, 504, nil, "server had an error")
	if s.Creates() != 2 {
		t.Fatalf("Creates = %d, want 2", s.Creates())
	}

	// A fault before the create records nothing: the retry creates.
	s.SetFault(Fault{Status: 500, Times: 1})
	resp, m = doAs(t, ts, tenantA, "POST", "/v1/batches", body("before"))
	wantError(t, resp, m, 500, nil, "server had an error")
	if s.Creates() != 2 {
		t.Fatalf("Creates = %d, want 2", s.Creates())
	}
	createAs(t, ts, tenantA, body("before"))
	if s.Creates() != 3 || len(s.Batches(tenantA)) != 3 {
		t.Fatalf("Creates=%d Batches=%d, want 3/3", s.Creates(), len(s.Batches(tenantA)))
	}
}

// giveUpOnBlockedCreate sends a create under a never-released Block fault
// and gives up on it after 100 ms.
func giveUpOnBlockedCreate(t *testing.T, ts *httptest.Server) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", ts.URL+"/v1/batches", strings.NewReader(validBody))
	req.Header.Set("Content-Type", "application/json")
	if resp, err := ts.Client().Do(req); err == nil {
		resp.Body.Close()
		t.Fatal("request under a never-released Block returned")
	}
}
