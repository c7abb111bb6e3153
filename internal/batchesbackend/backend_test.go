package batchesbackend

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"sort"
	"strings"
	"sync"
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

// do sends a request and decodes the JSON response into a generic map.
func do(t *testing.T, ts *httptest.Server, method, path, body string) (*http.Response, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(method, ts.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := ts.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
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
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", ts.URL+"/v1/batches", strings.NewReader(validBody))
	req.Header.Set("Content-Type", "application/json")
	if resp, err := ts.Client().Do(req); err == nil {
		resp.Body.Close()
		t.Fatal("request under a never-released Block returned")
	}
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
	_, l := do(t, ts, "GET", "/v1/batches", "")
	if len(l["data"].([]any)) != n-5 {
		t.Errorf("list has %d batches", len(l["data"].([]any)))
	}
}
