package doccheck

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-idempotency/caddy-idempotency/idempotency"
)

// The addresses the documents use for the demo; the test rewrites them to
// free ports of its own.
const (
	docSite  = "127.0.0.1:8080"
	docAdmin = "127.0.0.1:2019"
	// The demo's namespace (host@listen) for a request to docSite, and the
	// scope and key of the README's first create.
	docNamespace = "127.0.0.1@" + docSite
	docScope     = "Bearer sk-demo"
	docKey       = "demo-1"
)

// The demo block of the README, then the metrics and admin blocks of
// docs/operating.md, run as written against a real demo: each command's
// output is what its comment says. The demo then stops on SIGINT, exit 0.
func TestDemoCommands(t *testing.T) {
	bash := lookPath(t, "bash")
	lookPath(t, "curl")
	root := moduleRoot(t)
	readme := readFile(t, filepath.Join(root, "README.md"))
	demoBlock := markedBlock(t, readme, "README.md", "doccheck:demo")
	operating := readFile(t, filepath.Join(root, "docs", "operating.md"))
	metricsBlock := markedBlock(t, operating, "docs/operating.md", "doccheck:metrics")
	adminBlock := markedBlock(t, operating, "docs/operating.md", "doccheck:admin")
	if !strings.Contains(readme, "```sh\ngo run ./cmd/demo\n```") {
		t.Error("README.md: no ```sh block with `go run ./cmd/demo` alone")
	}

	bin := buildDemo(t)
	checkDocumentedFlags(t, bin, readme)

	// Free ports, picked again if another process takes one first.
	var site, admin, upstream string
	var d *demo
	for attempt := 1; d == nil; attempt++ {
		site, admin, upstream = freeAddr(t), freeAddr(t), freeAddr(t)
		var err error
		d, err = startDemo(t, bin, "-port", portOf(t, site), "-admin", admin, "-upstream", upstream, "-data", t.TempDir())
		if err != nil && (attempt == 3 || !strings.Contains(err.Error(), "address already in use")) {
			t.Fatal(err)
		}
	}
	rewrite := strings.NewReplacer(
		docSite, site, "localhost:"+portOf(t, docSite), site,
		docAdmin, admin, "localhost:"+portOf(t, docAdmin), admin,
	)

	// The README's demo block.
	cmds := runBlock(t, bash, rewrite.Replace(demoBlock))
	wantCommands(t, "README.md demo block", cmds, 6)
	wantNoOutput(t, cmds[0])
	created := wantResponse(t, cmds[1], "200", http.StatusOK)
	if created.header.Get("Idempotent-Replayed") != "" {
		t.Errorf("%s: the first create is a replay:\n%s", cmds[1].text, cmds[1].out)
	}
	createdID, _ := created.json["id"].(string)
	if !strings.HasPrefix(createdID, "batch_") {
		t.Errorf("%s: no new batch:\n%s", cmds[1].text, cmds[1].out)
	}
	replayed := wantResponse(t, cmds[2], "Idempotent-Replayed: true", http.StatusOK)
	wantComment(t, cmds[2], "same id and created_at")
	if replayed.header.Get("Idempotent-Replayed") != "true" || replayed.json["id"] != createdID ||
		replayed.json["created_at"] != created.json["created_at"] {
		t.Errorf("%s: not a replay of %s:\n%s", cmds[2].text, createdID, cmds[2].out)
	}
	conflict := wantResponse(t, cmds[3], "409 idempotency_key_reused", http.StatusConflict)
	if code := errorCode(conflict.json); code != "idempotency_key_reused" {
		t.Errorf("%s: code %q, want idempotency_key_reused:\n%s", cmds[3].text, code, cmds[3].out)
	}
	field := wantResponse(t, cmds[4], "200 with another batch", http.StatusOK)
	if id, _ := field.json["id"].(string); !strings.HasPrefix(id, "batch_") || id == createdID ||
		field.header.Get("Idempotent-Replayed") != "" {
		t.Errorf("%s: want a new batch, other than %s:\n%s", cmds[4].text, createdID, cmds[4].out)
	}
	wantComment(t, cmds[5], `"completed": 2`)
	if stats := wantJSON[map[string]any](t, cmds[5]); stats["completed"] != 2.0 || stats["in_flight"] != 0.0 {
		t.Errorf("%s: want 2 completed records, none in flight:\n%s", cmds[5].text, cmds[5].out)
	}

	// The metrics block of docs/operating.md: the outcomes of the README's
	// block.
	cmds = runBlock(t, bash, rewrite.Replace(metricsBlock))
	wantCommands(t, "docs/operating.md metrics block", cmds, 1)
	wantComment(t, cmds[0], "stored 2, replayed 1, conflict 1, and 0 for every other outcome")
	outcomes := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(cmds[0].out), "\n") {
		if m := regexp.MustCompile(`^caddy_http_idempotency_requests_total\{outcome="(\w+)"\} (\S+)$`).FindStringSubmatch(line); m != nil {
			outcomes[m[1]] = m[2]
		} else {
			t.Errorf("%s: unexpected line %q", cmds[0].text, line)
		}
	}
	for _, o := range idempotency.Outcomes {
		want := map[idempotency.Outcome]string{idempotency.OutcomeStored: "2", idempotency.OutcomeReplayed: "1", idempotency.OutcomeConflict: "1"}[o]
		if want == "" {
			want = "0"
		}
		if outcomes[string(o)] != want {
			t.Errorf("%s: outcome %s is %q, want %s:\n%s", cmds[0].text, o, outcomes[string(o)], want, cmds[0].out)
		}
	}

	// The admin block of docs/operating.md, on the records the README's
	// block made. Its key hash is the demo's first create's on docSite.
	docHash := idempotency.NewRecordKey(docNamespace, docScope, docKey).String()
	if !strings.Contains(adminBlock, docHash) {
		t.Errorf("docs/operating.md admin block: no key hash %s (namespace %s, scope %q, key %s)", docHash, docNamespace, docScope, docKey)
	}
	hash := idempotency.NewRecordKey(rewrite.Replace(docNamespace), docScope, docKey).String()
	cmds = runBlock(t, bash, strings.ReplaceAll(rewrite.Replace(adminBlock), docHash, hash))
	wantCommands(t, "docs/operating.md admin block", cmds, 9)
	wantNoOutput(t, cmds[0])
	if stores := wantJSON[[]map[string]any](t, cmds[1]); len(stores) != 1 || stores[0]["backend"] != "badger" {
		t.Errorf("%s: want the demo's Badger store:\n%s", cmds[1].text, cmds[1].out)
	}
	if stats := wantJSON[map[string]any](t, cmds[2]); stats["completed"] != 2.0 {
		t.Errorf("%s: want 2 completed records:\n%s", cmds[2].text, cmds[2].out)
	}
	if e := wantJSON[map[string]any](t, cmds[3]); !strings.HasPrefix(fmt.Sprint(e["error"]), "no store") {
		t.Errorf("%s: the demo has no such store; want the 404 that says so:\n%s", cmds[3].text, cmds[3].out)
	}
	docRecord := recordExample(t, operating)
	for _, c := range cmds[4:6] {
		rec := wantJSON[map[string]any](t, c)
		if rec["state"] != "completed" || rec["key_hash"] != hash || rec["status"] != 200.0 ||
			rec["fingerprint"] != docRecord["fingerprint"] || rec["body_bytes"] != docRecord["body_bytes"] {
			t.Errorf("%s: want the record of the README's first create, as docs/operating.md shows it:\n%s", c.text, c.out)
		}
	}
	withBody := wantJSON[map[string]any](t, cmds[6])
	var batch map[string]any
	if s, _ := withBody["body"].(string); json.Unmarshal([]byte(s), &batch) != nil || batch["id"] != createdID || withBody["headers"] == nil {
		t.Errorf("%s: want the stored response of %s, with its headers:\n%s", cmds[6].text, createdID, cmds[6].out)
	}
	if purged := wantJSON[map[string]any](t, cmds[7]); purged["purged"] != true || purged["key_hash"] != hash {
		t.Errorf("%s: want the record purged:\n%s", cmds[7].text, cmds[7].out)
	}
	if e := wantJSON[map[string]any](t, cmds[8]); !strings.HasPrefix(fmt.Sprint(e["error"]), "no live record") {
		t.Errorf("%s: the record is already purged; want the 404 that says so:\n%s", cmds[8].text, cmds[8].out)
	}

	d.stop(t)
}

// The test command the README shows is the one .ci/run runs.
func TestTestCommandIsCIs(t *testing.T) {
	root := moduleRoot(t)
	ci := strings.TrimSpace(readFile(t, filepath.Join(root, ".ci", "run")))
	command := ci[strings.LastIndexByte(ci, '\n')+1:]
	if !strings.HasPrefix(command, "go test ") {
		t.Fatalf(".ci/run: its last line is not the test command: %q", command)
	}
	for _, doc := range []string{"README.md", "docs/development.md"} {
		if !strings.Contains(readFile(t, filepath.Join(root, doc)), "\n"+command+"\n") {
			t.Errorf("%s: no line %q, the test command .ci/run runs", doc, command)
		}
	}
}

// Every relative link of README.md and docs/*.md names a file or directory
// that exists, and a heading that the target has.
func TestLinks(t *testing.T) {
	root := moduleRoot(t)
	docs, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	docs = append(docs, filepath.Join(root, "README.md"))
	anchors := map[string]map[string]bool{}
	for _, doc := range docs {
		rel, _ := filepath.Rel(root, doc)
		for _, l := range links(readFile(t, doc)) {
			if regexp.MustCompile(`^[a-z]+:`).MatchString(l) {
				continue
			}
			file, anchor, _ := strings.Cut(l, "#")
			target := doc
			if file != "" {
				target = filepath.Join(filepath.Dir(doc), file)
				if _, err := os.Stat(target); err != nil {
					t.Errorf("%s: link %s: %v", rel, l, err)
					continue
				}
			}
			if anchor == "" {
				continue
			}
			if anchors[target] == nil {
				anchors[target] = headingAnchors(readFile(t, target))
			}
			if !anchors[target][anchor] {
				t.Errorf("%s: link %s: no such heading", rel, l)
			}
		}
	}
}

// command is one command of a block, with the comment lines above it.
type command struct {
	comment, text, out string
}

// endMarker follows each command's output.
const endMarker = "@@doccheck: end of command@@"

// runBlock runs a shell block with bash -euo pipefail, as a reader pasting
// it would, and returns its commands with the output of each.
func runBlock(t *testing.T, bash, block string) []command {
	t.Helper()
	var cmds []command
	var comment []string
	lines := strings.Split(strings.TrimSpace(block), "\n")
	for i := 0; i < len(lines); i++ {
		line := lines[i]
		switch {
		case strings.TrimSpace(line) == "":
			comment = nil
			continue
		case strings.HasPrefix(strings.TrimSpace(line), "#"):
			comment = append(comment, line)
			continue
		}
		text := line
		for strings.HasSuffix(lines[i], `\`) && i+1 < len(lines) {
			i++
			text += "\n" + lines[i]
		}
		cmds = append(cmds, command{comment: strings.Join(comment, "\n"), text: text})
		comment = nil
	}
	var script strings.Builder
	for _, c := range cmds {
		fmt.Fprintf(&script, "%s\nprintf '\\n%%s\\n' '%s'\n", c.text, endMarker)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bash, "-euo", "pipefail", "-c", script.String())
	cmd.Env = append(os.Environ(), "NO_PROXY=127.0.0.1,localhost", "no_proxy=127.0.0.1,localhost")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("bash -euo pipefail: %v\nscript:\n%s\nstdout:\n%s\nstderr:\n%s", err, script.String(), stdout.String(), stderr.String())
	}
	outs := strings.Split(stdout.String(), "\n"+endMarker+"\n")
	if len(outs) != len(cmds)+1 {
		t.Fatalf("%d commands, %d outputs:\n%s", len(cmds), len(outs)-1, stdout.String())
	}
	for i := range cmds {
		cmds[i].out = outs[i]
	}
	return cmds
}

func wantCommands(t *testing.T, block string, cmds []command, n int) {
	t.Helper()
	if len(cmds) != n {
		var texts []string
		for _, c := range cmds {
			texts = append(texts, c.text)
		}
		t.Fatalf("%s: %d commands, this test checks %d; update one or the other:\n%s", block, len(cmds), n, strings.Join(texts, "\n"))
	}
}

func wantNoOutput(t *testing.T, c command) {
	t.Helper()
	if c.out != "" {
		t.Errorf("%s: printed %q", c.text, c.out)
	}
}

// wantComment checks that the command's comment says what the test checks.
func wantComment(t *testing.T, c command, says string) {
	t.Helper()
	if !strings.Contains(c.comment, says) {
		t.Errorf("%s: its comment %q does not say %q, which is what it shows", c.text, c.comment, says)
	}
}

// response is a curl -si output.
type response struct {
	status int
	header http.Header
	json   map[string]any
}

// wantResponse parses the output of curl -si, and checks its status and
// that the comment says what the test checks.
func wantResponse(t *testing.T, c command, says string, status int) response {
	t.Helper()
	wantComment(t, c, says)
	res, err := http.ReadResponse(bufio.NewReader(strings.NewReader(c.out)), nil)
	if err != nil {
		t.Fatalf("%s: not an HTTP response (%v):\n%s", c.text, err, c.out)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("%s: %v", c.text, err)
	}
	r := response{status: res.StatusCode, header: res.Header}
	if err := json.Unmarshal(body, &r.json); err != nil {
		t.Errorf("%s: the body is not a JSON object (%v):\n%s", c.text, err, c.out)
	}
	if r.status != status {
		t.Errorf("%s: status %d, want %d:\n%s", c.text, r.status, status, c.out)
	}
	return r
}

func wantJSON[T any](t *testing.T, c command) T {
	t.Helper()
	var v T
	if err := json.Unmarshal([]byte(c.out), &v); err != nil {
		t.Errorf("%s: not the JSON expected (%v):\n%s", c.text, err, c.out)
	}
	return v
}

func errorCode(body map[string]any) string {
	e, _ := body["error"].(map[string]any)
	code, _ := e["code"].(string)
	return code
}

// recordExample is the record docs/operating.md shows: the ```json block
// after "A record looks like this".
func recordExample(t *testing.T, doc string) map[string]any {
	t.Helper()
	_, after, ok := strings.Cut(doc, "A record looks like this")
	_, after, ok2 := strings.Cut(after, "```json\n")
	block, _, ok3 := strings.Cut(after, "```")
	var rec map[string]any
	if !ok || !ok2 || !ok3 || json.Unmarshal([]byte(block), &rec) != nil {
		t.Fatal("docs/operating.md: no ```json record after \"A record looks like this\"")
	}
	return rec
}

// markedBlock is the ```sh block right after the line holding marker.
func markedBlock(t *testing.T, doc, name, marker string) string {
	t.Helper()
	lines := strings.Split(doc, "\n")
	for i, line := range lines {
		if !strings.Contains(line, "<!-- "+marker) {
			continue
		}
		if i+1 >= len(lines) || lines[i+1] != "```sh" {
			t.Fatalf("%s: the line after %q is not ```sh", name, marker)
		}
		for j := i + 2; j < len(lines); j++ {
			if lines[j] == "```" {
				return strings.Join(lines[i+2:j], "\n")
			}
		}
		t.Fatalf("%s: the block after %q does not end", name, marker)
	}
	t.Fatalf("%s: no <!-- %s --> marker", name, marker)
	return ""
}

// checkDocumentedFlags checks that every flag of the README's flag table is
// one the demo has.
func checkDocumentedFlags(t *testing.T, bin, readme string) {
	t.Helper()
	out, _ := exec.Command(bin, "-h").CombinedOutput() // -h exits 0 or 2, depending on the flag package's use
	documented := regexp.MustCompile("(?m)^\\| `(-[a-z]+)").FindAllStringSubmatch(readme, -1)
	if len(documented) == 0 {
		t.Error("README.md: no flag table (| `-flag` | ...)")
	}
	for _, m := range documented {
		if !regexp.MustCompile(`(?m)^\s+` + regexp.QuoteMeta(m[1]) + `\b`).Match(out) {
			t.Errorf("README.md documents the demo flag %s, which demo -h does not list:\n%s", m[1], out)
		}
	}
}

// demo is a running cmd/demo process.
type demo struct {
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{} // closed when cmd has been waited for
	err  error
}

// buildDemo builds cmd/demo into a temporary directory.
func buildDemo(t *testing.T) string {
	t.Helper()
	goBin := lookPath(t, "go")
	bin := filepath.Join(t.TempDir(), "demo")
	cmd := exec.Command(goBin, "build", "-o", bin, "github.com/caddy-idempotency/caddy-idempotency/cmd/demo")
	cmd.Dir = moduleRoot(t)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build cmd/demo: %v\n%s", err, out)
	}
	return bin
}

// startDemo runs the demo with args and waits until its site and its admin
// endpoint answer. Its error holds the demo's output.
func startDemo(t *testing.T, bin string, args ...string) (*demo, error) {
	t.Helper()
	d := &demo{cmd: exec.Command(bin, args...), out: &syncBuffer{}, done: make(chan struct{})}
	d.cmd.Stdout, d.cmd.Stderr = d.out, d.out
	d.cmd.Env = append(os.Environ(), "NO_PROXY=127.0.0.1,localhost", "no_proxy=127.0.0.1,localhost")
	if err := d.cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		d.err = d.cmd.Wait()
		close(d.done)
	}()
	t.Cleanup(func() {
		select {
		case <-d.done:
		default:
			_ = d.cmd.Process.Kill()
			<-d.done
		}
	})
	var site, admin string
	for i, a := range args {
		switch {
		case a == "-port" && i+1 < len(args):
			site = "127.0.0.1:" + args[i+1]
		case a == "-admin" && i+1 < len(args):
			admin = args[i+1]
		}
	}
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{Proxy: nil}}
	deadline := time.Now().Add(2 * time.Minute)
	for _, url := range []string{"http://" + site + "/", "http://" + admin + "/idempotency/stores"} {
		for {
			res, err := client.Get(url)
			if err == nil {
				res.Body.Close()
				break
			}
			select {
			case <-d.done:
				return nil, fmt.Errorf("demo %s exited before it answered: %v\n%s", strings.Join(args, " "), d.err, d.out.String())
			default:
			}
			if time.Now().After(deadline) {
				return nil, fmt.Errorf("demo %s: %s does not answer: %v\n%s", strings.Join(args, " "), url, err, d.out.String())
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return d, nil
}

// stop sends the demo SIGINT (Ctrl-C) and checks it exits 0.
func (d *demo) stop(t *testing.T) {
	t.Helper()
	if err := d.cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatalf("SIGINT: %v\n%s", err, d.out.String())
	}
	select {
	case <-d.done:
	case <-time.After(time.Minute):
		t.Fatalf("demo still running a minute after SIGINT:\n%s", d.out.String())
	}
	var exit *exec.ExitError
	switch {
	case errors.As(d.err, &exit):
		t.Errorf("demo after SIGINT: exit status %d, want 0:\n%s", exit.ExitCode(), d.out.String())
	case d.err != nil:
		t.Errorf("demo after SIGINT: %v\n%s", d.err, d.out.String())
	}
}

// syncBuffer is a bytes.Buffer for a process's output, read while it runs.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// links are the targets of the Markdown links of doc, outside code.
func links(doc string) []string {
	var out []string
	inFence := false
	for _, line := range strings.Split(doc, "\n") {
		if strings.HasPrefix(line, "```") {
			inFence = !inFence
			continue
		}
		if inFence {
			continue
		}
		line = regexp.MustCompile("`[^`]*`").ReplaceAllString(line, "")
		for _, m := range regexp.MustCompile(`\]\(([^)\s]+)\)`).FindAllStringSubmatch(line, -1) {
			out = append(out, m[1])
		}
	}
	return out
}

// headingAnchors are the anchors GitHub gives the headings of doc.
func headingAnchors(doc string) map[string]bool {
	anchors := map[string]bool{}
	seen := map[string]int{}
	inFence := false
	for _, line := range strings.Split(doc, "\n") {
		if strings.HasPrefix(line, "```") {
			inFence = !inFence
			continue
		}
		if inFence || !strings.HasPrefix(line, "#") {
			continue
		}
		text := strings.TrimSpace(strings.TrimLeft(line, "#"))
		var b strings.Builder
		for _, r := range strings.ToLower(text) {
			switch {
			case r == ' ':
				b.WriteByte('-')
			case r == '-' || r == '_' || (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') || r > 0x7f:
				b.WriteRune(r)
			}
		}
		anchor := b.String()
		if n := seen[anchor]; n > 0 {
			anchors[anchor+"-"+strconv.Itoa(n)] = true
		} else {
			anchors[anchor] = true
		}
		seen[anchor]++
	}
	return anchors
}

func lookPath(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is needed for the docs test (it never skips): %v", name, err)
	}
	return p
}

func moduleRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("module root: %v", err)
	}
	return root
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// freeAddr is a free 127.0.0.1 port, as host:port.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func portOf(t *testing.T, addr string) string {
	t.Helper()
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return port
}
