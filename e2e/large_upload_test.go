package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A keyed multipart upload far above the spool threshold goes upstream
// once, whole and with its Content-Length; a retry under a new boundary
// (sent chunked, as an SDK streaming a file does) replays, another file
// under the key is a conflict; the spool directory is empty after each.
func TestLargeUploadReplaysAndConflicts(t *testing.T) {
	for _, size := range []int64{32 << 20, 200e6} {
		t.Run(fmt.Sprintf("%dMB", size/1e6), func(t *testing.T) {
			up := startUploadUpstream(t)
			dir := spoolDir(t)
			loadSites(t, siteBlock(localSite(), uploadRoute("/v1/files", dir, "300MiB", up.addr())))
			c := siteClient(t, "")
			key := uniqueKey("large-upload")

			u := newUpload(t, "first-boundary", size, 1)
			first := sendUpload(t, c, siteURL("/v1/files"), key, u, false)
			mustFresh(t, first)
			got := first.received(t)
			if want, sent := u.Length(), uploadSHA256(u); got.Bytes != want || got.ContentLength != want || got.SHA256 != sent {
				t.Fatalf("upstream received %d bytes (Content-Length %d, sha256 %s), want the %d bytes sent (sha256 %s)",
					got.Bytes, got.ContentLength, got.SHA256, want, sent)
			}
			mustEmptySpool(t, dir, "a stored upload")

			retry := sendUpload(t, c, siteURL("/v1/files"), key, newUpload(t, "retry-boundary-from-a-new-form", size, 1), true)
			mustReplay(t, retry, first)
			mustEmptySpool(t, dir, "a replay")

			other := sendUpload(t, c, siteURL("/v1/files"), key, newUpload(t, "first-boundary", size, 2), false)
			mustConflict(t, other)
			mustEmptySpool(t, dir, "a conflict")
			if n := up.requests.Load(); n != 1 {
				t.Fatalf("upstream saw %d uploads, want 1", n)
			}
		})
	}
}

// Every way a spooled upload ends leaves the spool directory empty: an
// upstream that refuses it, an upstream that drops the connection after
// reading it (an ambiguous outcome, released), a panic below the handler,
// a client that goes away mid-upload, and a chunked body over max_body,
// which is cut off at the limit with 413. None of them consumes the key.
func TestLargeUploadLeavesNoSpoolFile(t *testing.T) {
	const size = 24 << 20
	up := startUploadUpstream(t)
	dir := spoolDir(t)
	loadSites(t, siteBlock(localSite(),
		uploadRoute("/v1/files", dir, "64MiB", up.addr()),
		uploadRoute("/panics/v1/files", dir, "64MiB", up.addr(), "test_panic {\n\t\t\tpanics 1\n\t\t}"),
		uploadRoute("/small/v1/files", dir, "8MiB", up.addr()),
	))
	c := siteClient(t, "")
	// then is the same upload again, which must go upstream: the key is free.
	then := func(t *testing.T, path, key string) {
		t.Helper()
		up.mode.Store(upstreamStores)
		r := sendUpload(t, c, siteURL(path), key, newUpload(t, "b", size, 1), false)
		mustFresh(t, r)
		mustEmptySpool(t, dir, "the retry")
	}

	t.Run("upstream refuses", func(t *testing.T) {
		key := uniqueKey("refused")
		up.mode.Store(upstreamRefuses)
		r := sendUpload(t, c, siteURL("/v1/files"), key, newUpload(t, "b", size, 1), false)
		if r.Status != http.StatusBadRequest {
			t.Fatalf("status %d, want the upstream's 400; %s", r.Status, r.Body)
		}
		mustEmptySpool(t, dir, "an upstream refusal")
		then(t, "/v1/files", key)
	})

	t.Run("upstream drops the connection", func(t *testing.T) {
		key := uniqueKey("dropped")
		up.mode.Store(upstreamDrops)
		r := sendUpload(t, c, siteURL("/v1/files"), key, newUpload(t, "b", size, 1), false)
		if r.Status != http.StatusBadGateway {
			t.Fatalf("status %d, want 502; %s", r.Status, r.Body)
		}
		mustEmptySpool(t, dir, "an upstream error")
		then(t, "/v1/files", key)
	})

	t.Run("panic downstream", func(t *testing.T) {
		key := uniqueKey("panic")
		fresh := &http.Client{Timeout: requestTimeout, Transport: &http.Transport{DisableKeepAlives: true}}
		req := uploadRequest(t, context.Background(), siteURL("/panics/v1/files"), key, newUpload(t, "b", size, 1), false)
		if r, err := do(fresh, req); err == nil {
			t.Fatalf("the panicking request was answered %d %s, want the connection dropped", r.Status, r.Body)
		}
		mustEmptySpool(t, dir, "a panic")
		then(t, "/panics/v1/files", key)
	})

	t.Run("client gone mid-upload", func(t *testing.T) {
		key := uniqueKey("gone")
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		u := newUpload(t, "b", size, 1)
		u.Size, u.Suffix = 8<<20, nil // 8 MB of the file, then nothing until the client leaves
		req := uploadRequest(t, ctx, siteURL("/v1/files"), key, u, true, blockUntil{ctx})
		before := up.requests.Load()
		done := make(chan error, 1)
		go func() {
			_, err := do(c, req)
			done <- err
		}()
		waitFor(t, "the upload spooled", func() bool { return spoolSize(dir) >= 4<<20 })
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Fatalf("the abandoned upload ended with %v, want context.Canceled", err)
		}
		mustEmptySpool(t, dir, "a client that left")
		if n := up.requests.Load() - before; n != 0 {
			t.Fatalf("upstream saw %d requests of the abandoned upload", n)
		}
		then(t, "/v1/files", key)
	})

	t.Run("chunked over max_body", func(t *testing.T) {
		key := uniqueKey("too-large")
		before := up.requests.Load()
		r := sendUpload(t, c, siteURL("/small/v1/files"), key, newUpload(t, "b", size, 1), true)
		msg := r.apiError(t, http.StatusRequestEntityTooLarge, "request_too_large")
		if !strings.Contains(msg, fmt.Sprint(8<<20)) {
			t.Errorf("message %q does not give the limit", msg)
		}
		mustEmptySpool(t, dir, "a body over max_body")
		if n := up.requests.Load() - before; n != 0 {
			t.Fatalf("upstream saw %d requests of a body over max_body", n)
		}
	})
}

// A spool directory that cannot be written answers 503
// idempotency_spool_unavailable in the envelope: nothing goes upstream, and
// the key stays free.
func TestLargeUploadSpoolUnavailable(t *testing.T) {
	up := startUploadUpstream(t)
	blocked := filepath.Join(spoolDir(t), "a-file-not-a-directory")
	if err := os.WriteFile(blocked, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	good := spoolDir(t)
	loadSites(t, siteBlock(localSite(),
		uploadRoute("/blocked/v1/files", blocked, "64MiB", up.addr()),
		uploadRoute("/v1/files", good, "64MiB", up.addr()),
	))
	c := siteClient(t, "")
	key := uniqueKey("unspoolable")
	r := sendUpload(t, c, siteURL("/blocked/v1/files"), key, newUpload(t, "b", 4<<20, 1), false)
	r.apiError(t, http.StatusServiceUnavailable, "idempotency_spool_unavailable")
	if r.Header.Get("x-should-retry") != "true" || up.requests.Load() != 0 {
		t.Fatalf("x-should-retry %q, upstream requests %d; want true, 0", r.Header.Get("x-should-retry"), up.requests.Load())
	}
	// The same handler's store (memory, one per process) did not claim it.
	r = sendUpload(t, c, siteURL("/v1/files"), key, newUpload(t, "b", 4<<20, 1), false)
	mustFresh(t, r)
}

// Caddy's memory stays bounded while uploads far larger than it are in
// flight: with three concurrent 64 MB keyed uploads, the memory it
// allocates (RssAnon, sampled every 5 ms) grows by at most 2 MiB per upload
// plus 4 MiB of garbage collector headroom, where bodies held in memory
// would add 192 MiB. The bound is not on VmHWM: that counts the pages of
// the executable mapped in, which differ by 10 MiB between runs of the same
// binary (48 to 59 MiB at start) whatever the handler does; cmd/bench
// -upload reports VmHWM. A Caddy killed mid-upload leaves its spool file,
// which the next start sweeps.
func TestLargeUploadPeakRSS(t *testing.T) {
	const (
		concurrent = 3
		size       = 64 << 20
		bound      = concurrent*2<<20 + 4<<20
	)
	up := startUploadUpstream(t)
	dir := spoolDir(t)
	port := freePort()
	caddyfile := fmt.Sprintf(`{
	admin off
	http_port %d
	persist_config off
}
http://127.0.0.1:%d {
	respond /healthz 200
	%s
}
`, port, port, uploadRoute("/v1/files", dir, "100MiB", up.addr()))
	p := startCaddy(t, caddyfile, port)
	pid := p.cmd.Process.Pid
	c := newClient(t)
	start := procStatus(t, pid, "RssAnon")
	peak := start
	sampled := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				peak = max(peak, procStatus(t, pid, "RssAnon"))
			}
		}
	}()
	parallel(concurrent, func(i int) {
		u := newUpload(t, "b", size, uint64(i))
		r := sendUpload(t, c, p.url+"/v1/files", uniqueKey(fmt.Sprint("rss-", i)), u, i%2 == 1)
		if got := r.received(t); got.SHA256 != uploadSHA256(u) {
			t.Errorf("upload %d reached the upstream altered", i)
		}
	})
	close(done)
	<-sampled
	t.Logf("Caddy with %d concurrent %d MiB uploads: RssAnon %.1f MiB at start, %.1f MiB at most; VmHWM %.1f MiB",
		concurrent, size>>20, mib(start), mib(peak), mib(procStatus(t, pid, "VmHWM")))
	if grown := peak - start; grown > bound {
		t.Fatalf("Caddy's anonymous memory grew by %.1f MiB, want at most %d MiB", mib(grown), bound>>20)
	}
	mustEmptySpool(t, dir, "the uploads")

	// Killed mid-upload, Caddy leaves the file; started again, it sweeps it.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	u := newUpload(t, "b", 4<<20, 9)
	u.Suffix = nil
	req := uploadRequest(t, ctx, p.url+"/v1/files", uniqueKey("killed"), u, true, blockUntil{ctx})
	go func() { _, _ = do(c, req) }()
	waitFor(t, "the upload spooled", func() bool { return spoolSize(dir) >= 2<<20 })
	p.kill()
	cancel()
	if left := spoolFiles(t, dir); len(left) != 1 {
		t.Fatalf("after kill -9 the spool holds %v, want the one file", left)
	}
	startCaddy(t, caddyfile, port)
	if left := spoolFiles(t, dir); len(left) != 0 {
		t.Fatalf("a new Caddy left %v in the spool directory", left)
	}
}

// An upload in flight across a reload finishes on the config it began on:
// the new config's handler sweeps the spool directory as it starts, and
// leaves the open file alone; the file goes when the upload ends.
func TestLargeUploadAcrossReload(t *testing.T) {
	up := startUploadUpstream(t)
	dir := spoolDir(t)
	site := siteBlock(localSite(), uploadRoute("/v1/files", dir, "64MiB", up.addr()))
	loadSites(t, site)
	c := siteClient(t, "")

	u := newUpload(t, "b", 24<<20, 3)
	gate := make(chan struct{})
	release := opener(t, gate)
	b := u.Body()
	req, err := http.NewRequest(http.MethodPost, siteURL("/v1/files"), io.MultiReader(io.LimitReader(b, 8<<20), gateReader(gate), b))
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = u.Length()
	req.Header.Set("Content-Type", u.ContentType)
	req.Header.Set("Authorization", tenantA)
	req.Header.Set("Idempotency-Key", uniqueKey("reload"))
	done := make(chan reply, 1)
	go func() {
		r, err := do(c, req)
		if err != nil {
			t.Errorf("the upload across the reload: %v", err)
		}
		done <- r
	}()
	waitFor(t, "the upload spooled", func() bool { return spoolSize(dir) >= 4<<20 })
	loadSites(t, site) // a new generation: a reload
	if left := spoolFiles(t, dir); len(left) != 1 {
		t.Fatalf("after the reload the spool holds %v, want the upload's file", left)
	}
	release()
	r := <-done
	if got := r.received(t); got.SHA256 != uploadSHA256(u) || got.ContentLength != u.Length() {
		t.Fatalf("the upload reached the upstream altered: %+v", got)
	}
	mustEmptySpool(t, dir, "an upload across a reload")
}

// gateReader blocks until gate is closed, then ends.
type gateReader chan struct{}

func (g gateReader) Read([]byte) (int, error) {
	<-g
	return 0, io.EOF
}
