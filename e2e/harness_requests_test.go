package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddy-idempotency/caddy-idempotency/internal/batchesbackend"
)

// Clients. Every request a test sends has a deadline, so a test that breaks
// fails instead of hanging until go test's timeout.

// requestTimeout bounds every request of the clients below.
const requestTimeout = 20 * time.Second

// newClient is a client with its own connections, closed when t ends, so
// none is a keep-alive left over from a config a reload replaced. It never
// asks for or decodes a Content-Encoding by itself, so tests see the bytes
// sent.
func newClient(t testing.TB) *http.Client {
	tr := &http.Transport{DisableCompression: true, MaxIdleConnsPerHost: 100, ExpectContinueTimeout: time.Second}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Timeout: requestTimeout, Transport: tr}
}

// warmUp opens a keep-alive connection of c to the config just loaded,
// retrying until one is answered with want ("" for any answer): a reload
// can reset a connection queued on Caddy's old socket or kept alive by its
// old server (README, What is not promised), and a test's first request
// must not be it.
func warmUp(t *testing.T, c *http.Client, url, host, want string) {
	t.Helper()
	var last string
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		r, err := request(c, http.MethodGet, url, "", "Host", host)
		if err == nil {
			if want == "" || string(r.Body) == want {
				return
			}
			last = fmt.Sprintf("answer %q", r.Body)
			c.CloseIdleConnections() // a connection to the old server
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			t.Fatalf("Caddy did not answer with the new config after the load: %s", last)
		}
	}
}

// tenantA is the credential requests carry unless they set another, and so
// the scope of their records.
const tenantA = "Bearer sk-tenant-a"

// reply is one response, read whole.
type reply struct {
	Status int
	Header http.Header
	Body   []byte
}

// sendTo sends one request and reads the whole reply. headers are name,
// value pairs; "Host" sets the request's host. It may run on any goroutine:
// a transport error is reported with Errorf and gives a zero reply.
func sendTo[B string | []byte](t testing.TB, c *http.Client, method, url string, body B, headers ...string) reply {
	t.Helper()
	r, err := request(c, method, url, body, headers...)
	if err != nil {
		t.Errorf("%s %s: %v", method, url, err)
	}
	return r
}

// request is sendTo for a request that may fail on purpose: it returns the
// transport error instead of reporting it. Authorization and Content-Type
// default to tenantA's bearer and JSON.
func request[B string | []byte](c *http.Client, method, url string, body B, headers ...string) (reply, error) {
	req, err := http.NewRequest(method, url, bytes.NewReader([]byte(body)))
	if err != nil {
		return reply{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", tenantA)
	setHeaders(req, headers)
	return do(c, req)
}

// setHeaders sets the name, value pairs of headers on req; "Host" sets its host.
func setHeaders(req *http.Request, headers []string) {
	for i := 0; i+1 < len(headers); i += 2 {
		if strings.EqualFold(headers[i], "Host") {
			req.Host = headers[i+1]
			continue
		}
		req.Header.Set(headers[i], headers[i+1])
	}
}

// do sends req with c and reads the whole reply.
func do(c *http.Client, req *http.Request) (reply, error) {
	res, err := c.Do(req)
	if err != nil {
		return reply{}, err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	return reply{Status: res.StatusCode, Header: res.Header, Body: b}, err
}

// createBody is a batch create, with the key as body field when key != "".
func createBody(t *testing.T, fields map[string]any, key string) string {
	t.Helper()
	body := map[string]any{
		"input_file_id":     "file-abc123",
		"endpoint":          "/v1/chat/completions",
		"completion_window": "24h",
	}
	for k, v := range fields {
		body[k] = v
	}
	if key != "" {
		body["idempotency_key"] = key
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	if err := enc.Encode(body); err != nil {
		t.Fatal(err)
	}
	return buf.String()
}

// uniqueKey is a key no earlier run of the process used: the memory store
// and the default Badger directory outlive a test.
func uniqueKey(name string) string {
	return name + "-" + strconv.FormatInt(time.Now().UnixNano(), 36)
}

// What a reply must be.

func (r reply) batch(t *testing.T) batchesbackend.Batch {
	t.Helper()
	var b batchesbackend.Batch
	if r.Status != http.StatusOK {
		t.Fatalf("status %d, want 200; body %s", r.Status, r.Body)
	}
	if err := json.Unmarshal(r.Body, &b); err != nil || b.ID == "" {
		t.Fatalf("not a batch: %v; body %s", err, r.Body)
	}
	return b
}

// apiError decodes OpenAI's error envelope and checks its fixed parts.
func (r reply) apiError(t *testing.T, status int, code string) string {
	t.Helper()
	var env struct {
		Error struct {
			Message string          `json:"message"`
			Type    string          `json:"type"`
			Param   json.RawMessage `json:"param"`
			Code    string          `json:"code"`
		} `json:"error"`
	}
	if r.Status != status {
		t.Fatalf("status %d, want %d; body %s", r.Status, status, r.Body)
	}
	if err := json.Unmarshal(r.Body, &env); err != nil {
		t.Fatalf("error body is not the envelope: %v; %s", err, r.Body)
	}
	if env.Error.Code != code || env.Error.Type != "invalid_request_error" || string(env.Error.Param) != "null" {
		t.Fatalf("error envelope %s, want code %q", r.Body, code)
	}
	return env.Error.Message
}

// mustFresh checks that r is a 200 the upstream just made, not a replay.
func mustFresh(t testing.TB, r reply) {
	t.Helper()
	if r.Status != http.StatusOK || r.Header.Get("Idempotent-Replayed") != "" {
		t.Fatalf("want a fresh 200: got %d (Idempotent-Replayed %q) %s", r.Status, r.Header.Get("Idempotent-Replayed"), r.Body)
	}
}

// mustReplay checks that r replays first: its status and body bytes, marked.
func mustReplay(t testing.TB, r, first reply) {
	t.Helper()
	if r.Status != first.Status || !bytes.Equal(r.Body, first.Body) || r.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("want a replay of %d %s; got %d (Idempotent-Replayed %q) %s",
			first.Status, first.Body, r.Status, r.Header.Get("Idempotent-Replayed"), r.Body)
	}
}

// mustConflict checks that r is the key-reused refusal.
func mustConflict(t *testing.T, r reply) {
	t.Helper()
	r.apiError(t, http.StatusConflict, "idempotency_key_reused")
	if r.Header.Get("x-should-retry") != "false" {
		t.Fatalf("key reused without x-should-retry: false: %v", r.Header)
	}
}

// mustNotStored checks that r is the refusal of a retry whose first request
// succeeded with a response too large to keep.
func mustNotStored(t *testing.T, r reply) {
	t.Helper()
	msg := r.apiError(t, http.StatusConflict, "idempotency_response_not_stored")
	if r.Header.Get("x-should-retry") != "false" || !strings.Contains(msg, "succeeded") {
		t.Fatalf("not stored: x-should-retry %q, message %q", r.Header.Get("x-should-retry"), msg)
	}
}
