package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

const (
	createBody   = `{"input_file_id":"file-abc123","endpoint":"/v1/chat/completions","completion_window":"24h"}`
	otherBody    = `{"input_file_id":"file-other","endpoint":"/v1/chat/completions","completion_window":"24h"}`
	bodyKeyBody  = `{"input_file_id":"file-abc123","endpoint":"/v1/chat/completions","completion_window":"24h","idempotency_key":"demo-2"}`
	startTimeout = 30 * time.Second
	buildTimeout = 5 * time.Minute
)

func TestFlags(t *testing.T) {
	o, err := parseFlags(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := options{port: 8080, host: "127.0.0.1", admin: "127.0.0.1:2019", upstream: "127.0.0.1:9001"}
	if o != want {
		t.Errorf("defaults %+v, want %+v", o, want)
	}
	o, err = parseFlags([]string{"-admin", "off", "-host", "0.0.0.0", "-port", "9", "-upstream", "127.0.0.1:1", "-config", "c", "-data", "d"}, io.Discard)
	if want := (options{port: 9, host: "0.0.0.0", admin: "off", upstream: "127.0.0.1:1", config: "c", data: "d"}); err != nil || o != want {
		t.Errorf("got %+v, %v; want %+v", o, err, want)
	}
	for _, args := range [][]string{
		{"-port", "0"}, {"-port", "70000"}, {"-host", ""}, {"-host", "a b"}, {"-admin", "2019"},
		{"-admin", "127.0.0.1:2019 {"}, {"-upstream", "9001"}, {"extra"},
	} {
		if _, err := parseFlags(args, io.Discard); err == nil {
			t.Errorf("%q: accepted", args)
		}
	}
	if _, err := parseFlags([]string{"-nope"}, io.Discard); !errors.Is(err, errBadFlags) {
		t.Errorf("-nope: %v", err)
	}
	if got := string(fillPlaceholders([]byte("{$DEMO_PORT} {$DEMO_HOST:127.0.0.1} {$DEMO_OTHER:x} {$HOME}"),
		map[string]string{"DEMO_PORT": "1", "DEMO_HOST": "::"})); got != "1 :: {$DEMO_OTHER:x} {$HOME}" {
		t.Errorf("fillPlaceholders: %q", got)
	}
	var help bytes.Buffer
	if _, err := parseFlags([]string{"-h"}, &help); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("-h: %v", err)
	}
	for _, want := range []string{
		"Usage: ", "-admin address", `(default "127.0.0.1:2019")`, "off to disable", "-host address", `(default "127.0.0.1")`,
		"-port port", "(default 8080)", "-upstream host:port", `(default "127.0.0.1:9001")`, "-config path", "-data directory",
		"removed at exit", "~/.local/share/caddy",
	} {
		if !strings.Contains(help.String(), want) {
			t.Errorf("-h does not say %q:\n%s", want, help.String())
		}
	}
}

// The README's demo flow in process: create, replay, conflict and the
// body-field key, with the admin API moved off a port another process holds,
// the site on loopback only, the records in the data directory and nothing
// in the (fake) home directory.
func TestDemo(t *testing.T) {
	home := fakeHome(t)
	o := options{port: freePort(t), host: "127.0.0.1", admin: listen(t).Addr().String(),
		upstream: fmt.Sprintf("127.0.0.1:%d", freePort(t)), data: t.TempDir()}
	// Another process (a Caddy, say) holds the admin address: the demo
	// fails, and runs with -admin on another one.
	if err := run(context.Background(), o, io.Discard); err == nil || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("with -admin %s taken: %v", o.admin, err)
	}
	o.admin = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	stop := startInProcess(t, o)

	if !strings.HasPrefix(caddy.DefaultStorage.Path, o.data) || !strings.HasPrefix(caddy.ConfigAutosavePath, o.data) {
		t.Errorf("Caddy's storage %s and autosave %s are not under %s", caddy.DefaultStorage.Path, caddy.ConfigAutosavePath, o.data)
	}
	site := fmt.Sprintf("127.0.0.1:%d", o.port)
	flow(t, site)

	// The admin API, on -admin, finds the record; its namespace is the one
	// the README's admin examples use.
	var record map[string]any
	adminGet(t, o.admin, fmt.Sprintf("/idempotency/records?namespace=localhost@%s&scope=Bearer+sk-demo&key=demo-1", site), &record)
	wantStore := "badger:" + filepath.Join(o.data, "caddy", "idempotency")
	if record["state"] != "completed" || record["store"] != wantStore {
		t.Errorf("record %v, want completed in %s", record, wantStore)
	}
	if _, err := os.Stat(filepath.Join(o.data, "caddy", "idempotency", "MANIFEST")); err != nil {
		t.Errorf("no Badger store in the data directory: %v", err)
	}

	// The site listens on loopback only.
	var servers map[string]struct{ Listen []string }
	adminGet(t, o.admin, "/config/apps/http/servers", &servers)
	if len(servers) != 1 || fmt.Sprint(servers["srv0"].Listen) != "["+site+"]" {
		t.Errorf("servers %+v, want one listening on %s", servers, site)
	}
	if ip := nonLoopbackIP(t); ip != nil {
		if c, err := net.DialTimeout("tcp", net.JoinHostPort(ip.String(), fmt.Sprint(o.port)), 2*time.Second); err == nil {
			c.Close()
			t.Errorf("the site answers on %s, a non-loopback address", ip)
		}
	}

	stop()
	checkEmpty(t, home)
	// Stopped, the demo has let go of its addresses.
	for _, addr := range []string{site, o.upstream, o.admin} {
		eventually(t, func() bool { return tryListen(addr) == nil }, "%s still taken after the demo stopped", addr)
	}
}

// -host 0.0.0.0 exposes the site: the address TestDemo cannot connect to
// answers.
func TestDemoHostExposed(t *testing.T) {
	ip := nonLoopbackIP(t)
	if ip == nil {
		t.Skip("this machine has no non-loopback address")
	}
	o := options{port: freePort(t), host: "0.0.0.0", admin: "off",
		upstream: fmt.Sprintf("127.0.0.1:%d", freePort(t)), data: t.TempDir()}
	stop := startInProcess(t, o)
	defer stop()
	flow(t, net.JoinHostPort(ip.String(), fmt.Sprint(o.port)))
}

// The built binary, run outside the repository: fatal errors are one plain
// line on stderr with exit status 1; by default everything goes to a
// temporary directory that is gone at exit, nothing to the home directory;
// -data keeps the records across runs.
func TestDemoBinary(t *testing.T) {
	bin := buildDemo(t)

	t.Run("port in use", func(t *testing.T) {
		busy, tmp := listen(t), t.TempDir()
		port := busy.Addr().(*net.TCPAddr).Port
		stderr := runFails(t, bin, []string{"TMPDIR=" + tmp}, "-port", fmt.Sprint(port),
			"-admin", fmt.Sprintf("127.0.0.1:%d", freePort(t)), "-upstream", fmt.Sprintf("127.0.0.1:%d", freePort(t)))
		want := fmt.Sprintf("demo: listen tcp 127.0.0.1:%d: bind: address already in use (Caddy's site; choose another address with -port or -host)\n", port)
		if stderr != want {
			t.Errorf("stderr %q, want %q", stderr, want)
		}
		checkEmpty(t, tmp) // the temporary data directory is gone
	})
	t.Run("admin in use", func(t *testing.T) {
		busy := listen(t)
		stderr := runFails(t, bin, nil, "-port", fmt.Sprint(freePort(t)), "-admin", busy.Addr().String(),
			"-upstream", fmt.Sprintf("127.0.0.1:%d", freePort(t)), "-data", t.TempDir())
		if !regexp.MustCompile(`^demo: listen tcp ` + regexp.QuoteMeta(busy.Addr().String()) + `: bind: address already in use \(Caddy's admin API; .*-admin.*\)\n$`).MatchString(stderr) {
			t.Errorf("stderr %q", stderr)
		}
	})
	t.Run("bad flag", func(t *testing.T) {
		cmd := exec.Command(bin, "-port", "0")
		out, err := cmd.CombinedOutput()
		if cmd.ProcessState == nil || cmd.ProcessState.ExitCode() != 2 || string(out) != "demo: -port 0: not a TCP port\n" {
			t.Errorf("exit %v, output %q", err, out)
		}
	})

	t.Run("temporary data directory", func(t *testing.T) {
		home, tmp := fakeHome(t), t.TempDir()
		d := startBinary(t, bin, []string{"HOME=" + home, "XDG_DATA_HOME=" + filepath.Join(home, ".local/share"),
			"XDG_CONFIG_HOME=" + filepath.Join(home, ".config"), "TMPDIR=" + tmp},
			"-port", fmt.Sprint(freePort(t)), "-admin", fmt.Sprintf("127.0.0.1:%d", freePort(t)),
			"-upstream", fmt.Sprintf("127.0.0.1:%d", freePort(t)))
		if !strings.HasPrefix(d.data, tmp+string(filepath.Separator)) || !d.temporary {
			t.Errorf("data in %s, want a temporary directory in %s", d.data, tmp)
		}
		res, _ := post(t, d.site, "demo-1", createBody)
		if res.StatusCode != 200 {
			t.Fatalf("create: %d", res.StatusCode)
		}
		for _, f := range []string{"caddy/idempotency/MANIFEST", "caddy/instance.uuid"} {
			if _, err := os.Stat(filepath.Join(d.data, f)); err != nil {
				t.Errorf("not in the data directory: %v", err)
			}
		}
		d.stop(t)
		checkEmpty(t, home)
		checkEmpty(t, tmp)
	})

	t.Run("-data keeps the records", func(t *testing.T) {
		data, port := t.TempDir(), freePort(t)
		args := []string{"-port", fmt.Sprint(port), "-admin", "off", "-upstream", fmt.Sprintf("127.0.0.1:%d", freePort(t)), "-data", data}
		d := startBinary(t, bin, nil, args...)
		_, created := post(t, d.site, "demo-1", createBody)
		d.stop(t)
		d = startBinary(t, bin, nil, args...)
		res, replayed := post(t, d.site, "demo-1", createBody)
		d.stop(t)
		if res.Header.Get("Idempotent-Replayed") != "true" || replayed["id"] != created["id"] {
			t.Errorf("after a restart: %v %v, want the replay of %v", res.Header, replayed, created)
		}
	})
}

// flow runs the README's curl lines against the demo's site at addr, with
// the Host header curl sends to localhost.
func flow(t *testing.T, addr string) {
	t.Helper()
	res1, created := post(t, addr, "demo-1", createBody)
	res2, replayed := post(t, addr, "demo-1", createBody)
	if res1.StatusCode != 200 || res2.StatusCode != 200 || created["id"] != replayed["id"] ||
		created["created_at"] != replayed["created_at"] || res2.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("create %d %v\nreplay %d %v %v", res1.StatusCode, created, res2.StatusCode, replayed, res2.Header)
	}
	res3, conflict := post(t, addr, "demo-1", otherBody)
	if e, _ := conflict["error"].(map[string]any); res3.StatusCode != http.StatusConflict || e["code"] != "idempotency_key_reused" {
		t.Fatalf("conflict: %d %v", res3.StatusCode, conflict)
	}
	res4, first := post(t, addr, "", bodyKeyBody)
	res5, again := post(t, addr, "", bodyKeyBody)
	if res4.StatusCode != 200 || res5.Header.Get("Idempotent-Replayed") != "true" || first["id"] != again["id"] || first["id"] == created["id"] {
		t.Fatalf("body-field key: %d %v\nthen %d %v %v", res4.StatusCode, first, res5.StatusCode, again, res5.Header)
	}
}

// post is one of the README's curl lines: a create with the demo's
// credentials and, unless key is empty, an Idempotency-Key header.
func post(t *testing.T, addr, key, body string) (*http.Response, map[string]any) {
	t.Helper()
	_, port, _ := net.SplitHostPort(addr)
	req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/v1/batches", strings.NewReader(body))
	req.Host = "localhost:" + port
	req.Header.Set("Authorization", "Bearer sk-demo")
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("Idempotency-Key", key)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body)
	var v map[string]any
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatalf("%d %s", res.StatusCode, raw)
	}
	return res, v
}

func adminGet(t *testing.T, admin, path string, v any) {
	t.Helper()
	res, err := http.Get("http://" + admin + path)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body)
	if res.StatusCode != 200 {
		t.Fatalf("GET %s: %d %s", path, res.StatusCode, raw)
	}
	if err := json.Unmarshal(raw, v); err != nil {
		t.Fatalf("GET %s: %v: %s", path, err, raw)
	}
}

// startInProcess runs the demo in this process until the returned stop,
// which the test's cleanup also calls.
func startInProcess(t *testing.T, o options) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var out lockedBuffer
	done := make(chan error, 1)
	go func() { done <- run(ctx, o, &out) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("demo: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	deadline := time.Now().Add(startTimeout)
	for !strings.Contains(out.String(), "press Ctrl-C") {
		select {
		case err := <-done:
			done <- err
			t.Fatalf("the demo stopped: %v\n%s", err, out.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("the demo did not start:\n%s", out.String())
		}
	}
	return stop
}

// demoProcess is the built demo, running.
type demoProcess struct {
	cmd       *exec.Cmd
	site      string // its site's host:port
	data      string // its data directory
	temporary bool
	stderr    *lockedBuffer
	done      chan error
}

// startBinary starts bin with args, its environment plus env, in a
// directory outside the repository, and waits for it to serve.
func startBinary(t *testing.T, bin string, env []string, args ...string) *demoProcess {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Dir = t.TempDir()
	cmd.Env = append(os.Environ(), env...)
	d := &demoProcess{cmd: cmd, stderr: &lockedBuffer{}, done: make(chan error, 1)}
	cmd.Stderr = d.stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			<-d.done
		}
	})
	lines := make(chan string)
	go func() {
		s := bufio.NewScanner(stdout)
		for s.Scan() {
			lines <- s.Text()
		}
		close(lines)
		d.done <- cmd.Wait()
	}()
	site := regexp.MustCompile(`^demo: Caddy with the idempotency handler on http://(\S+),`)
	data := regexp.MustCompile(`^demo: data in (.+?)(, removed at exit)?; press Ctrl-C to stop$`)
	timeout := time.After(startTimeout)
	for {
		select {
		case line, ok := <-lines:
			if !ok {
				t.Fatalf("the demo exited: %v\n%s", <-d.done, d.stderr.String())
			}
			if m := site.FindStringSubmatch(line); m != nil {
				d.site = m[1]
			}
			if m := data.FindStringSubmatch(line); m != nil {
				d.data, d.temporary = m[1], m[2] != ""
				go func() {
					for range lines {
					}
				}()
				return d
			}
		case <-timeout:
			t.Fatalf("the demo did not start:\n%s", d.stderr.String())
		}
	}
}

// stop interrupts the demo, as Ctrl-C does, and waits for a clean exit.
func (d *demoProcess) stop(t *testing.T) {
	t.Helper()
	if err := d.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-d.done:
		if err != nil {
			t.Fatalf("the demo exited with %v:\n%s", err, d.stderr.String())
		}
	case <-time.After(startTimeout):
		t.Fatalf("the demo did not stop:\n%s", d.stderr.String())
	}
}

// runFails runs bin with args, its environment plus env, and returns its
// stderr, failing the test unless it exits with status 1 having printed
// nothing on stdout.
func runFails(t *testing.T, bin string, env []string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir = t.TempDir()
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if cmd.ProcessState == nil || cmd.ProcessState.ExitCode() != 1 || stdout.Len() > 0 {
		t.Errorf("exit %v, stdout %q, stderr %q; want status 1 and nothing on stdout", err, stdout.String(), stderr.String())
	}
	return stderr.String()
}

// buildDemo builds this package into the test's temporary directory, the go
// command's own temporary files included.
func buildDemo(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "demo")
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, ".")
	cmd.Env = append(os.Environ(), "GOTMPDIR="+t.TempDir())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// fakeHome points HOME and the XDG directories at a new empty directory.
func fakeHome(t *testing.T) string {
	home := t.TempDir()
	t.Setenv("HOME", home)
	for _, v := range []string{"XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_STATE_HOME"} {
		t.Setenv(v, filepath.Join(home, strings.ToLower(v)))
	}
	return home
}

func checkEmpty(t *testing.T, dir string) {
	t.Helper()
	filepath.WalkDir(dir, func(path string, _ os.DirEntry, err error) error {
		if path != dir {
			t.Errorf("the demo left %s", path)
		}
		return err
	})
}

// nonLoopbackIP is an address of this machine's other than loopback, or nil.
func nonLoopbackIP(t *testing.T) net.IP {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && !n.IP.IsLoopback() && n.IP.To4() != nil {
			return n.IP
		}
	}
	return nil
}

func listen(t *testing.T) net.Listener {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func eventually(t *testing.T, ok func() bool, format string, args ...any) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !ok(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Errorf(format, args...)
			return
		}
	}
}

// lockedBuffer is a bytes.Buffer safe for one writer and concurrent readers.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
