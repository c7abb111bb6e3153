package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/caddy-idempotency/caddy-idempotency/internal/uploadbody"
)

// Large uploads: bodies generated as they are sent, an upstream that hashes
// what it receives as it streams, and the spool directory they pass through.

// upload is a multipart/form-data upload of a file, generated as it is read
// (never held whole); its content depends on its seed alone.
type upload = uploadbody.Form

func newUpload(t testing.TB, boundary string, size int64, seed uint64) upload {
	t.Helper()
	u, err := uploadbody.NewForm(boundary, "input.jsonl", size, seed)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// uploadSHA256 is the hex SHA-256 of the upload's bytes, generated anew.
func uploadSHA256(u upload) string {
	d := sha256.New()
	_, _ = io.Copy(d, u.Body())
	return hex.EncodeToString(d.Sum(nil))
}

// uploadRequest is a keyed POST of u (then extra) to url: with its
// Content-Length, or chunked.
func uploadRequest(t testing.TB, ctx context.Context, url, key string, u upload, chunked bool, extra ...io.Reader) *http.Request {
	t.Helper()
	body := io.MultiReader(append([]io.Reader{u.Body()}, extra...)...)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, body)
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = u.Length()
	if chunked {
		req.ContentLength = -1
	}
	req.Header.Set("Content-Type", u.ContentType)
	req.Header.Set("Authorization", tenantA)
	req.Header.Set("Idempotency-Key", key)
	return req
}

// sendUpload sends u with c and reads the reply.
func sendUpload(t testing.TB, c *http.Client, url, key string, u upload, chunked bool) reply {
	t.Helper()
	r, err := do(c, uploadRequest(t, context.Background(), url, key, u, chunked))
	if err != nil {
		t.Fatalf("upload of %d bytes: %v", u.Length(), err)
	}
	return r
}

// uploadReceived is the upstream's answer to an upload: what it received.
type uploadReceived struct {
	ID            string `json:"id"`
	Bytes         int64  `json:"bytes"`
	SHA256        string `json:"sha256"`
	ContentLength int64  `json:"content_length"`
}

// Modes of uploadUpstream.
const (
	upstreamStores  = iota // 200 with what it received
	upstreamRefuses        // 400, after reading the body
	upstreamDrops          // reads the body, then drops the connection: an ambiguous outcome
)

// uploadUpstream is a files backend that hashes each body as it streams,
// never holding it, and answers by its mode.
type uploadUpstream struct {
	srv      *httptest.Server
	mode     atomic.Int32
	requests atomic.Int64
}

func startUploadUpstream(t testing.TB) *uploadUpstream {
	u := &uploadUpstream{}
	u.srv = httptest.NewServer(http.HandlerFunc(u.serve))
	t.Cleanup(u.srv.Close)
	return u
}

func (u *uploadUpstream) addr() string { return u.srv.Listener.Addr().String() }

func (u *uploadUpstream) serve(w http.ResponseWriter, r *http.Request) {
	n := u.requests.Add(1)
	d := sha256.New()
	size, err := io.Copy(d, r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	switch u.mode.Load() {
	case upstreamRefuses:
		http.Error(w, `{"error":{"message":"refused"}}`, http.StatusBadRequest)
		return
	case upstreamDrops:
		conn, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			conn.Close()
		}
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(uploadReceived{
		ID: fmt.Sprintf("file-%d", n), Bytes: size, SHA256: hex.EncodeToString(d.Sum(nil)), ContentLength: r.ContentLength,
	})
}

// received decodes a 200 from uploadUpstream.
func (r reply) received(t testing.TB) uploadReceived {
	t.Helper()
	var got uploadReceived
	if r.Status != http.StatusOK {
		t.Fatalf("status %d, want 200; body %s", r.Status, r.Body)
	}
	if err := json.Unmarshal(r.Body, &got); err != nil {
		t.Fatalf("not an upload answer: %v; %s", err, r.Body)
	}
	return got
}

// spoolDir is a spool directory for t that stays until the run ends: a
// config keeps its handler, and so may sweep the directory, after t's own
// TempDir is gone.
func spoolDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp(testRoot, "spool-")
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// spoolFiles lists what is in dir.
func spoolFiles(t testing.TB, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// spoolSize is the size of the one file being spooled in dir, or -1.
func spoolSize(dir string) int64 {
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		return -1
	}
	info, err := os.Stat(filepath.Join(dir, entries[0].Name()))
	if err != nil {
		return -1
	}
	return info.Size()
}

// mustEmptySpool waits for dir to be empty: a request's spool file goes as
// its handler returns, which may be just after its client has the answer.
func mustEmptySpool(t *testing.T, dir, after string) {
	t.Helper()
	waitFor(t, "spool directory empty after "+after, func() bool { return len(spoolFiles(t, dir)) == 0 })
}

// uploadRoute is a route of the handler on path, spooling to dir, before
// the lines given (test_panic, say) and reverse_proxy to upstream.
func uploadRoute(path, dir, maxBody, upstream string, lines ...string) string {
	return fmt.Sprintf("route %s {\n\t\tidempotency {\n\t\t\tmax_body %s\n\t\t\tspool_dir %s\n\t\t\tstore memory\n\t\t}\n\t\t%s\n\t\treverse_proxy %s\n\t}",
		path, maxBody, dir, strings.Join(lines, "\n\t\t"), upstream)
}

// blockUntil is a reader that blocks until ctx ends, then fails: a client
// that stalls mid-upload and goes away.
type blockUntil struct{ ctx context.Context }

func (b blockUntil) Read([]byte) (int, error) {
	<-b.ctx.Done()
	return 0, b.ctx.Err()
}

// procStatus is a memory line of /proc/<pid>/status (VmHWM, RssAnon, ...)
// in bytes.
func procStatus(t testing.TB, pid int, field string) int64 {
	t.Helper()
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("reading the memory of process %d: %v", pid, err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			var kb int64
			if _, err := fmt.Sscanf(strings.TrimSpace(rest), "%d kB", &kb); err != nil {
				t.Fatalf("%s line %q: %v", field, line, err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

// parallel runs fn(i) for i in [0, n) at once and waits for them all.
func parallel(n int, fn func(i int)) {
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { fn(i) })
	}
	wg.Wait()
}
