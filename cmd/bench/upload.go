package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddy-idempotency/caddy-idempotency/internal/uploadbody"
	"github.com/dustin/go-humanize"
)

// The upload scenario (-upload): keyed multipart/form-data uploads of one
// size, -upload-concurrency at a time, through Caddy with the idempotency
// handler and through Caddy with plain reverse_proxy, each Caddy a process
// of its own so that its peak RSS (VmHWM, from /proc) is its own. The two
// take turns, round after round, against one upstream that hashes each
// body as it streams and never holds it. It reports each Caddy's peak RSS
// and the upload throughput, and the targets: a peak under 64 MiB
// plus 2 MiB per concurrent upload, and throughput within 10% of plain.

// uploadOptions configure the upload scenario.
type uploadOptions struct {
	size        int64 // bytes of each file
	concurrency int   // uploads at once
	rounds      int   // turns of each Caddy
	rate        int64 // each client's upload rate in bytes/s, as over a network; 0: as fast as loopback goes
	caddy       string
}

// uploadSide is one Caddy of the scenario.
type uploadSide struct {
	name    string
	cmd     *exec.Cmd
	url     string
	startKB int64 // VmRSS once started

	bytes    int64         // uploaded, in the measured rounds
	wall     time.Duration // of the measured rounds
	uploads  int
	latency  time.Duration // summed over uploads
	peakKB   int64         // VmHWM at the end
	spoolDir string
}

// runUpload runs the upload scenario and writes its report to w.
func runUpload(o uploadOptions, w io.Writer) error {
	if o.size <= 0 || o.concurrency < 1 || o.rounds < 1 {
		return fmt.Errorf("-upload needs a size, -upload-concurrency and -upload-rounds of at least 1")
	}
	e, err := newEnv("caddy-idempotency-upload-", o.caddy)
	if err != nil {
		return err
	}
	defer e.close()
	up, err := startFilesUpstream()
	if err != nil {
		return err
	}
	defer up.Close()
	ports, err := freePorts(2)
	if err != nil {
		return err
	}
	maxBody := o.size + 1<<20 // the file and its form
	sides := []*uploadSide{
		{name: "idempotency + reverse_proxy", url: fmt.Sprintf("http://127.0.0.1:%d", ports[0])},
		{name: "reverse_proxy", url: fmt.Sprintf("http://127.0.0.1:%d", ports[1])},
	}
	for i, s := range sides {
		handler := ""
		if i == 0 {
			// The memory store: what is measured is the body's way, not a store's.
			handler = fmt.Sprintf("\tidempotency /v1/files {\n\t\tmax_body %d\n\t\tstore memory\n\t}\n", maxBody)
		}
		config := fmt.Sprintf("{\n\tadmin off\n\tpersist_config off\n\tauto_https off\n\tlog {\n\t\tlevel ERROR\n\t}\n}\n"+
			"http://127.0.0.1:%d {\n\trespond /healthz 200\n%s\treverse_proxy %s\n}\n", ports[i], handler, up.addr)
		dir := filepath.Join(e.dir, fmt.Sprintf("caddy-%d", i))
		// The default spool directory is in the Caddy's own data directory
		// (XDG_DATA_HOME, which startCaddy sets), and so removed with the
		// run; the Caddyfile needs no spool_dir, which a build from before
		// spooling would not know.
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
		s.spoolDir = filepath.Join(dir, "data", "caddy", "idempotency-spool")
		if s.cmd, err = startCaddy(e.bin, dir, config, []int{ports[i]}); err != nil {
			return err
		}
		defer stopCaddy(s.cmd)
		if s.startKB, err = procStatusKB(s.cmd.Process.Pid, "VmRSS"); err != nil {
			return err
		}
	}

	form, err := uploadbody.NewForm("", "batch.jsonl", o.size, 1)
	if err != nil {
		return err
	}
	want := formSHA256(form)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: o.concurrency, DisableCompression: true}}
	defer client.CloseIdleConnections()
	for round := range o.rounds {
		for _, s := range sides {
			if err := s.round(client, form, want, o.concurrency, round, o.rate); err != nil {
				return fmt.Errorf("%s: %w", s.name, err)
			}
		}
	}
	for _, s := range sides {
		if s.peakKB, err = procStatusKB(s.cmd.Process.Pid, "VmHWM"); err != nil {
			return err
		}
	}
	writeUploadReport(w, o, sides)
	return nil
}

// round sends concurrency uploads at once, each with a new key, and adds
// their bytes and times.
func (s *uploadSide) round(client *http.Client, form uploadbody.Form, want string, concurrency, round int, rate int64) error {
	errs := make([]error, concurrency)
	lat := make([]time.Duration, concurrency)
	start := time.Now()
	var wg sync.WaitGroup
	for i := range concurrency {
		wg.Go(func() {
			key := fmt.Sprintf("bench-upload-%d-%d-%d", time.Now().UnixNano(), round, i)
			t0 := time.Now()
			errs[i] = sendForm(form, client, s.url+"/v1/files", key, want, rate)
			lat[i] = time.Since(t0)
		})
	}
	wg.Wait()
	s.wall += time.Since(start)
	if err := errors.Join(errs...); err != nil {
		return err
	}
	for _, l := range lat {
		s.latency += l
	}
	s.uploads += concurrency
	s.bytes += int64(concurrency) * form.Length()
	if left, _ := filepath.Glob(filepath.Join(s.spoolDir, "*")); len(left) > 0 {
		return fmt.Errorf("spool files left after a round: %v", left)
	}
	return nil
}

// formSHA256 is the hex SHA-256 of the form's bytes, generated anew.
func formSHA256(f uploadbody.Form) string {
	d := sha256.New()
	_, _ = io.Copy(d, f.Body())
	return hex.EncodeToString(d.Sum(nil))
}

// sendForm uploads f under key, at most rate bytes/s (0: unpaced), and
// checks the upstream received it whole.
func sendForm(f uploadbody.Form, client *http.Client, url, key, want string, rate int64) error {
	body := f.Body()
	if rate > 0 {
		body = &paced{r: body, rate: rate, start: time.Now()}
	}
	req, err := http.NewRequestWithContext(context.Background(), http.MethodPost, url, body)
	if err != nil {
		return err
	}
	req.ContentLength = f.Length()
	req.Header.Set("Content-Type", f.ContentType)
	req.Header.Set("Authorization", benchAuth)
	req.Header.Set("Idempotency-Key", key)
	res, err := client.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		return err
	}
	var got struct {
		SHA256 string `json:"sha256"`
	}
	if res.StatusCode != http.StatusOK || json.Unmarshal(b, &got) != nil || got.SHA256 != want {
		return fmt.Errorf("upload answered %d %.200s; want 200 with sha256 %s", res.StatusCode, b, want)
	}
	return nil
}

// paced reads r no faster than rate bytes/s on average: a client whose
// network is slower than loopback.
type paced struct {
	r     io.Reader
	rate  int64
	start time.Time
	n     int64
}

func (p *paced) Read(b []byte) (int, error) {
	if due := p.start.Add(time.Duration(float64(p.n) / float64(p.rate) * float64(time.Second))); time.Until(due) > 0 {
		time.Sleep(time.Until(due))
	}
	n, err := p.r.Read(b[:min(len(b), 64<<10)])
	p.n += int64(n)
	return n, err
}

// filesUpstream answers an upload with the SHA-256 of the body it read as
// it streamed.
type filesUpstream struct {
	*http.Server
	addr string
}

func startFilesUpstream() (*filesUpstream, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	buffers := sync.Pool{New: func() any { b := make([]byte, 64<<10); return &b }}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d := sha256.New()
		buf := buffers.Get().(*[]byte)
		defer buffers.Put(buf)
		n, err := io.CopyBuffer(d, r.Body, *buf)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"object":"file","bytes":%d,"sha256":%q}`, n, hex.EncodeToString(d.Sum(nil)))
	})}
	go func() {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			log.Printf("files upstream: %v", err)
		}
	}()
	return &filesUpstream{Server: srv, addr: ln.Addr().String()}, nil
}

// procStatusKB reads a kB field (VmRSS, VmHWM) of /proc/<pid>/status.
func procStatusKB(pid int, field string) (int64, error) {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("peak RSS needs /proc (Linux): %w", err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			return strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", field, pid)
}

// parseSize reads -upload and -upload-rate: bytes, or a number with a unit (kB, MB, GB,
// KiB, MiB, GiB).
func parseSize(s string) (int64, error) {
	n, err := humanize.ParseBytes(s)
	if err != nil || n == 0 || n > 1<<40 {
		return 0, fmt.Errorf("%q is not a size such as 300MB or 64MiB", s)
	}
	return int64(n), nil
}

// writeUploadReport prints the scenario's table and its targets.
func writeUploadReport(w io.Writer, o uploadOptions, sides []*uploadSide) {
	fmt.Fprintf(w, "## Uploads: %s files, %d at a time, %d rounds\n\n", humanize.IBytes(uint64(o.size)), o.concurrency, o.rounds)
	pace := "as fast as loopback goes"
	if o.rate > 0 {
		pace = "each client paced to " + humanize.Bytes(uint64(o.rate)) + "/s, as over a network"
	}
	fmt.Fprintf(w, "%s. Each Caddy is its own process; the uploads are keyed multipart/form-data with Content-Length, a new key each, %s.\n\n", machine(), pace)
	fmt.Fprintln(w, "| Caddy | uploads | throughput | mean upload | RSS at start | peak RSS (VmHWM) |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|")
	for _, s := range sides {
		fmt.Fprintf(w, "| %s | %d | %.0f MB/s | %.2f s | %.1f MiB | %.1f MiB |\n", s.name, s.uploads, s.throughput()/1e6,
			(s.latency / time.Duration(max(s.uploads, 1))).Seconds(), float64(s.startKB)/1024, float64(s.peakKB)/1024)
	}
	h, p := sides[0], sides[1]
	boundKB := int64(64<<10 + o.concurrency*2<<10)
	ratio := h.throughput() / p.throughput()
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| target | value | met |")
	fmt.Fprintln(w, "|---|---|---|")
	fmt.Fprintf(w, "| handler's peak RSS < 64 MiB + 2 MiB x %d = %d MiB | %.1f MiB | %s |\n", o.concurrency, boundKB>>10, float64(h.peakKB)/1024, yesNo(h.peakKB < boundKB))
	fmt.Fprintf(w, "| handler's throughput >= 0.90 x plain | %.2f | %s |\n", ratio, yesNo(ratio >= 0.9))
}

func (s *uploadSide) throughput() float64 {
	if s.wall <= 0 {
		return 0
	}
	return float64(s.bytes) / s.wall.Seconds()
}
