package idempotency

import (
	"bytes"
	"compress/flate"
	"compress/gzip"
	"errors"
	"io"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"net/textproto"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"testing/iotest"
)

// spoolTestAbove is the spool threshold of these tests: small, so bodies of
// a few hundred KiB take both paths.
const spoolTestAbove = 4 << 10

// uploadBody is a multipart upload, as the OpenAI SDKs send a file, under
// boundary: a purpose field and file content.
func uploadBody(t testing.TB, boundary string, content []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := multipart.NewWriter(&buf)
	if err := w.SetBoundary(boundary); err != nil {
		t.Fatal(err)
	}
	if err := w.WriteField("purpose", "batch"); err != nil {
		t.Fatal(err)
	}
	h := textproto.MIMEHeader{}
	h.Set("Content-Disposition", `form-data; name="file"; filename="input.jsonl"`)
	h.Set("Content-Type", "application/jsonl")
	p, err := w.CreatePart(h)
	if err != nil {
		t.Fatal(err)
	}
	p.Write(content)
	w.Close()
	return buf.Bytes()
}

// fileContent is n bytes of JSONL that differ by seed.
func fileContent(n int, seed string) []byte {
	line := `{"custom_id":"` + seed + `","method":"POST","url":"/v1/chat/completions"}` + "\n"
	return []byte(strings.Repeat(line, n/len(line)+1)[:n])
}

func gzipped(t testing.TB, b []byte) []byte {
	var buf bytes.Buffer
	z := gzip.NewWriter(&buf)
	z.Write(b)
	z.Close()
	return buf.Bytes()
}

// spoolFiles lists the spool files left in dir.
func spoolFiles(t *testing.T, dir string) []string {
	t.Helper()
	names, err := filepath.Glob(filepath.Join(dir, spoolPrefix+"*"+spoolSuffix))
	if err != nil {
		t.Fatal(err)
	}
	return names
}

func wantNoSpoolFiles(t *testing.T, dir string) {
	t.Helper()
	if left := spoolFiles(t, dir); len(left) > 0 {
		t.Fatalf("spool files left behind: %v", left)
	}
}

// admitUpload admits one request built by req and returns its admission,
// with the body the upstream would read, and removes its spool file.
func admitUpload(t *testing.T, h *Handler, req *http.Request) (admission, []byte) {
	t.Helper()
	a, ref := h.admit(req)
	if ref != nil {
		t.Fatalf("refused: %d %s %s", ref.status, ref.code, ref.message)
	}
	defer a.spool.remove()
	up := upstreamRequest(req, &a)
	body, err := io.ReadAll(up.Body)
	if err != nil {
		t.Fatal(err)
	}
	if up.ContentLength != int64(len(body)) || up.Header.Get("Content-Length") != strconv.Itoa(len(body)) {
		t.Fatalf("upstream ContentLength %d, header %q, for %d bytes", up.ContentLength, up.Header.Get("Content-Length"), len(body))
	}
	return a, body
}

// A body spooled to disk has the fingerprint it has in memory, whatever its
// framing (Content-Length or chunked), coding and canonical form, and goes
// upstream as it came; a multipart upload under a new boundary keeps it.
func TestSpoolFingerprintAcrossThreshold(t *testing.T) {
	content := fileContent(300<<10, "a")
	upload := uploadBody(t, "first-boundary", content)
	cases := []struct {
		name, contentType, coding string
		body                      []byte
		chunked                   bool
	}{
		{"raw", "application/octet-stream", "", content, false},
		{"raw chunked", "application/octet-stream", "", content, true},
		{"raw gzip", "application/octet-stream", "gzip", gzipped(t, content), false},
		{"raw gzip chunked", "application/octet-stream", "gzip", gzipped(t, content), true},
		{"unknown coding", "application/octet-stream", "br", content, false},
		{"unknown coding chunked", "application/octet-stream", "br", content, true},
		{"multipart", "multipart/form-data; boundary=first-boundary", "", upload, false},
		{"multipart chunked", "multipart/form-data; boundary=first-boundary", "", upload, true},
		{"multipart gzip chunked", "multipart/form-data; boundary=first-boundary", "gzip", gzipped(t, upload), true},
		{"multipart deflate as raw DEFLATE", "multipart/form-data; boundary=first-boundary", "deflate", rawDeflate(t, upload), false},
	}
	dir := t.TempDir()
	h, _ := newHandler(t, Config{MaxBody: 8 << 20, SpoolDir: dir})
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			build := func() *http.Request {
				var body io.Reader = bytes.NewReader(c.body)
				if c.chunked {
					body = iotest.HalfReader(bytes.NewReader(c.body)) // not a known length: sent chunked
				}
				req := newRequest(t, http.MethodPost, "/v1/files", body)
				req.Header.Set("Content-Type", c.contentType)
				req.Header.Set("Idempotency-Key", "k")
				if c.coding != "" {
					req.Header.Set("Content-Encoding", c.coding)
				}
				if c.chunked {
					req.ContentLength = -1
				}
				return req
			}
			h.spoolAbove = int64(len(c.body)) + 1<<20
			inMemory, memBody := admitUpload(t, h, build())
			if inMemory.spool != nil {
				t.Fatal("a body under the threshold was spooled")
			}
			h.spoolAbove = spoolTestAbove
			spooled, spoolBody := admitUpload(t, h, build())
			if spooled.spool == nil {
				t.Fatal("a body over the threshold was not spooled")
			}
			if spooled.fp != inMemory.fp {
				t.Errorf("spooled fingerprint %x, in memory %x", spooled.fp, inMemory.fp)
			}
			if !bytes.Equal(spoolBody, c.body) || !bytes.Equal(memBody, c.body) {
				t.Errorf("upstream body differs from the body sent (spooled %d bytes, in memory %d, sent %d)", len(spoolBody), len(memBody), len(c.body))
			}
			wantNoSpoolFiles(t, dir)
		})
	}

	t.Run("new boundary", func(t *testing.T) {
		h.spoolAbove = spoolTestAbove
		fp := func(boundary string) Fingerprint {
			req := newRequest(t, http.MethodPost, "/v1/files", bytes.NewReader(uploadBody(t, boundary, content)))
			req.Header.Set("Content-Type", "multipart/form-data; boundary="+boundary)
			req.Header.Set("Idempotency-Key", "k")
			a, _ := admitUpload(t, h, req)
			return a.fp
		}
		if fp("first-boundary") != fp("a-new-boundary-chosen-for-the-retry") {
			t.Error("a spooled upload's fingerprint changed with its boundary")
		}
		h.spoolAbove = SpoolThreshold
		if fp("x") != fp("y") {
			t.Error("an upload in memory changed fingerprint with its boundary")
		}
	})
}

// rawDeflate is b as raw DEFLATE, which clients send as deflate too.
func rawDeflate(t testing.TB, b []byte) []byte {
	var buf bytes.Buffer
	z, _ := flate.NewWriter(&buf, flate.DefaultCompression)
	z.Write(b)
	z.Close()
	return buf.Bytes()
}

// An upload over the threshold goes upstream from its spool file, once,
// and replays to a retry under a new boundary; another file under the key
// is a conflict, and nothing is left in the spool directory after any of
// them.
func TestSpoolUploadReplaysAndConflicts(t *testing.T) {
	dir := t.TempDir()
	s := newStack(t, Config{MaxBody: 8 << 20, SpoolDir: dir}, nil)
	s.h.spoolAbove = spoolTestAbove
	content := fileContent(2<<20, "a")
	send := func(boundary string, content []byte, chunked bool) result {
		var body io.Reader = bytes.NewReader(uploadBody(t, boundary, content))
		if chunked {
			body = iotest.HalfReader(body)
		}
		return s.post(t, body, withPath("/v1/files"), withKey("upload-1"), withType("multipart/form-data; boundary="+boundary))
	}
	first := send("b1", content, false)
	wantForwarded(t, first, http.StatusOK)
	wantNoSpoolFiles(t, dir)
	seen := s.up.requests()[0]
	if want := uploadBody(t, "b1", content); !bytes.Equal(seen.Body, want) || seen.ContentLengthHeader != strconv.Itoa(len(want)) || len(seen.TransferEncoding) > 0 {
		t.Fatalf("upstream got %d bytes, Content-Length %q, Transfer-Encoding %v; want the %d bytes sent, with their length",
			len(seen.Body), seen.ContentLengthHeader, seen.TransferEncoding, len(want))
	}

	wantReplayOf(t, send("a-new-boundary", content, true), first)
	wantNoSpoolFiles(t, dir)
	wantError(t, send("b1", fileContent(2<<20, "b"), false), http.StatusConflict, CodeKeyReused)
	wantNoSpoolFiles(t, dir)
	s.up.wantCalls(t, 1)
}

// Every way an owner's trip ends removes its spool file: an upstream
// refusal, an upstream error, a panic downstream.
func TestSpoolRemovedOnEveryPath(t *testing.T) {
	body := uploadBody(t, "b", fileContent(64<<10, "a"))
	request := func(key string) *http.Request {
		req := newRequest(t, http.MethodPost, "/v1/files", bytes.NewReader(body))
		req.Header.Set("Content-Type", "multipart/form-data; boundary=b")
		req.Header.Set("Idempotency-Key", key)
		return req
	}
	cases := []struct {
		name string
		next Next
	}{
		{"upstream 400", func(w http.ResponseWriter, r *http.Request) error {
			io.Copy(io.Discard, r.Body)
			http.Error(w, "no", http.StatusBadRequest)
			return nil
		}},
		{"upstream error", func(w http.ResponseWriter, r *http.Request) error {
			io.Copy(io.Discard, r.Body)
			return errors.New("upstream went away")
		}},
		{"panic", func(w http.ResponseWriter, r *http.Request) error {
			io.CopyN(io.Discard, r.Body, 100)
			panic(http.ErrAbortHandler)
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			h, _ := newHandler(t, Config{MaxBody: 8 << 20, SpoolDir: dir})
			h.spoolAbove = spoolTestAbove
			var sawFile bool
			next := func(w http.ResponseWriter, r *http.Request) error {
				sawFile = len(spoolFiles(t, dir)) == 1
				return c.next(w, r)
			}
			func() {
				defer func() { _ = recover() }()
				_ = h.Handle(httptest.NewRecorder(), request(c.name), next)
			}()
			if !sawFile {
				t.Fatal("the body was not spooled while upstream")
			}
			wantNoSpoolFiles(t, dir)
		})
	}
}

// A body refused while it is read leaves nothing behind and consumes no
// key: one cut short by its client, one larger than MaxBody sent chunked
// (cut off at the limit), one that is not multipart after all.
func TestSpoolRefusedBodies(t *testing.T) {
	upload := uploadBody(t, "b", fileContent(64<<10, "a"))
	cases := []struct {
		name   string
		body   io.Reader
		status int
		code   string
	}{
		{"client gone", io.MultiReader(bytes.NewReader(upload[:20<<10]), iotest.ErrReader(io.ErrUnexpectedEOF)), http.StatusBadRequest, CodeBodyUnreadable},
		{"too large chunked", iotest.HalfReader(bytes.NewReader(uploadBody(t, "b", fileContent(200<<10, "a")))), http.StatusRequestEntityTooLarge, CodeRequestTooLarge},
		{"not multipart", bytes.NewReader(bytes.Repeat([]byte("x"), 20<<10)), http.StatusBadRequest, CodeInvalidMultipart},
		{"broken gzip", bytes.NewReader(brokenGzip(t, upload)), http.StatusBadRequest, CodeInvalidEncoding},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			h, store := newHandler(t, Config{MaxBody: 100 << 10, SpoolDir: dir})
			h.spoolAbove = spoolTestAbove
			req := newRequest(t, http.MethodPost, "/v1/files", c.body)
			req.ContentLength = -1
			req.Header.Set("Content-Type", "multipart/form-data; boundary=b")
			req.Header.Set("Idempotency-Key", "k")
			if c.name == "broken gzip" {
				req.Header.Set("Content-Encoding", "gzip")
			}
			wantError(t, answerAlone(t, h, req, c.name), c.status, c.code)
			wantNoSpoolFiles(t, dir)
			if _, ok := getRecord(t, store, newRequestNS, "", "k"); ok {
				t.Fatal("a refused body consumed its key")
			}
		})
	}
}

// brokenGzip is b gzipped, cut in half, with garbage after.
func brokenGzip(t testing.TB, b []byte) []byte {
	g := gzipped(t, b)
	return append(g[:len(g)/2:len(g)/2], "garbage"...)
}

// A spool directory that cannot be written answers 503
// idempotency_spool_unavailable: nothing goes upstream, and the key is not
// consumed.
func TestSpoolUnavailable(t *testing.T) {
	parent := t.TempDir()
	dir := filepath.Join(parent, "not-a-dir")
	if err := os.WriteFile(dir, nil, 0o600); err != nil { // a file where the directory should be
		t.Fatal(err)
	}
	h, store := newHandler(t, Config{MaxBody: 8 << 20, SpoolDir: dir})
	h.spoolAbove = spoolTestAbove
	req := newRequest(t, http.MethodPost, "/v1/files", bytes.NewReader(uploadBody(t, "b", fileContent(64<<10, "a"))))
	req.Header.Set("Content-Type", "multipart/form-data; boundary=b")
	req.Header.Set("Idempotency-Key", "k")
	r := answerAlone(t, h, req, "an upload that cannot be spooled")
	wantError(t, r, http.StatusServiceUnavailable, CodeSpoolUnavailable)
	if _, ok := getRecord(t, store, newRequestNS, "", "k"); ok {
		t.Fatal("an upload that could not be spooled consumed its key")
	}
}

// A handler starting sweeps its spool directory of the files a process
// left mid-upload, and of nothing else: not other files, not a file another
// handler of this process has open.
func TestSpoolSweep(t *testing.T) {
	dir := t.TempDir()
	orphan := filepath.Join(dir, spoolPrefix+"123"+spoolSuffix)
	other := filepath.Join(dir, "notes.txt")
	for _, p := range []string{orphan, other} {
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	live, err := createSpool(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer live.remove()
	newHandler(t, Config{MaxBody: 8 << 20, SpoolDir: dir})
	if _, err := os.Stat(orphan); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("orphan spool file not swept: %v", err)
	}
	for _, p := range []string{other, live.f.Name()} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("%s removed by the sweep: %v", p, err)
		}
	}
}
