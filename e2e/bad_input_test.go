package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// Hostile input over real HTTP through the in-process Caddy. Hostile requests
// go out as hand-written HTTP/1.1 on a raw TCP connection, because Go's client
// refuses or rewrites several of them (control characters, repeated header
// fields, chosen framing); the follow-up checks use the ordinary client.

// hostileBlock: max_body is above the 200 KB of the 100,000-deep body, so that
// body meets the JSON checks and not the size limit.
const hostileBlock = "max_body 256KiB\n\t\twait 0\n\t\tstore badger "

// createMembers are the members of a valid create, without braces.
const createMembers = `"input_file_id":"file-abc123","endpoint":"/v1/chat/completions","completion_window":"24h"`

// keyIn says how a row's key travels; header and field rows use the
// placeholders {field} (the key field member with its comma, or nothing)
// and {key}; asGiven rows spell the key out themselves.
type keyIn int

const (
	inHeader keyIn = 1 << iota
	inField
	asGiven
	inBoth = inHeader | inField
)

// byNetHTTP is the code of a row that Go's HTTP server refuses itself, with a
// plain-text 400, before Caddy or the handler sees the request.
const byNetHTTP = "(net/http)"

type hostileCase struct {
	name    string
	in      keyIn
	headers []string // raw header lines, {key} substituted
	ctype   string   // Content-Type; "" means application/json
	body    string   // {field} and {key} substituted
	chunked bool     // Transfer-Encoding: chunked instead of Content-Length
	status  int
	code    string // our error code; "" when the backend answers (upstream)
	// upstream: the request reaches the backend, which rejects it; its error
	// envelope (code null) comes back and the handler releases the key.
	upstream bool
}

func hostileCases() []hostileCase {
	deep := strings.Repeat("[", 100_000) + strings.Repeat("]", 100_000)
	huge := `{{field}` + createMembers + `,"metadata":{"x":"` + strings.Repeat("a", 256<<10) + `"}}`
	long := strings.Repeat("k", 300)
	const bad = http.StatusBadRequest
	return []hostileCase{
		{name: "invalid JSON", in: inBoth, body: `{{field}"input_file_id":nope}`, status: bad, code: "invalid_json"},
		{name: "truncated JSON", in: inBoth, body: `{{field}` + createMembers[:40], status: bad, code: "invalid_json"},
		{name: "duplicate member", in: inBoth, body: `{{field}` + createMembers + `,"endpoint":"/v1/embeddings"}`, status: bad, code: "invalid_json"},
		{name: "duplicate nested member", in: inBoth, body: `{{field}` + createMembers + `,"metadata":{"x":"1","x":"2"}}`, status: bad, code: "invalid_json"},
		{name: "duplicate key field", in: asGiven, body: `{"idempotency_key":"{key}","idempotency_key":"{key}",` + createMembers + `}`, status: bad, code: "invalid_json"},
		{name: "invalid UTF-8", in: inBoth, body: "{{field}" + createMembers + `,"metadata":{"x":"` + "\xff" + `"}}`, status: bad, code: "invalid_json"},
		{name: "UTF-8 encoded surrogate", in: inBoth, body: "{{field}" + createMembers + `,"metadata":{"x":"` + "\xed\xa0\x80" + `"}}`, status: bad, code: "invalid_json"},
		{name: "lone high surrogate", in: inBoth, body: `{{field}` + createMembers + `,"metadata":{"x":"\ud83d"}}`, status: bad, code: "invalid_json"},
		{name: "lone low surrogate", in: inBoth, body: `{{field}` + createMembers + `,"metadata":{"x":"\ude00"}}`, status: bad, code: "invalid_json"},
		{name: "100000-deep nesting", in: inBoth, body: `{{field}` + createMembers + `,"metadata":` + deep + `}`, status: bad, code: "invalid_json"},
		{name: "number 1e400", in: inBoth, body: `{{field}` + createMembers + `,"metadata":1e400}`, status: bad, code: "invalid_json"},

		{name: "300-character key header", in: asGiven, headers: []string{"Idempotency-Key: {key}" + long}, body: `{` + createMembers + `}`, status: bad, code: "invalid_idempotency_key"},
		{name: "300-character key field", in: asGiven, body: `{"idempotency_key":"{key}` + long + `",` + createMembers + `}`, status: bad, code: "invalid_idempotency_key"},
		{name: "empty key header", in: asGiven, headers: []string{"Idempotency-Key: "}, body: `{` + createMembers + `}`, status: bad, code: "invalid_idempotency_key"},
		{name: "key header with \\x01", in: asGiven, headers: []string{"Idempotency-Key: {key}\x01"}, body: `{` + createMembers + `}`, status: bad, code: byNetHTTP},
		{name: "key header with DEL", in: asGiven, headers: []string{"Idempotency-Key: {key}\x7f"}, body: `{` + createMembers + `}`, status: bad, code: byNetHTTP},
		{name: "key header with tab", in: asGiven, headers: []string{"Idempotency-Key: {key}\tx"}, body: `{` + createMembers + `}`, status: bad, code: "invalid_idempotency_key"},
		{name: "key header with byte 0x80", in: asGiven, headers: []string{"Idempotency-Key: {key}\x80"}, body: `{` + createMembers + `}`, status: bad, code: "invalid_idempotency_key"},
		{name: "quoted key header with a bad escape", in: asGiven, headers: []string{`Idempotency-Key: "{key}\u0001"`}, body: `{` + createMembers + `}`, status: bad, code: "invalid_idempotency_key"},
		{name: "key field with \\u0001", in: asGiven, body: `{"idempotency_key":"{key}\u0001",` + createMembers + `}`, status: bad, code: "invalid_idempotency_key"},
		{name: "key field not a string", in: asGiven, body: `{"idempotency_key":1,` + createMembers + `}`, status: bad, code: "invalid_idempotency_key"},
		{name: "two key header fields, same value", in: asGiven, headers: []string{"Idempotency-Key: {key}", "Idempotency-Key: {key}"}, body: `{` + createMembers + `}`, status: bad, code: "invalid_idempotency_key"},
		{name: "two key header fields, other values", in: asGiven, headers: []string{"Idempotency-Key: {key}", "Idempotency-Key: {key}-2"}, body: `{` + createMembers + `}`, status: bad, code: "invalid_idempotency_key"},
		{name: "two keys joined by a comma", in: asGiven, headers: []string{"Idempotency-Key: {key}, {key}-2"}, body: `{` + createMembers + `}`, status: bad, code: "invalid_idempotency_key"},
		{name: "quoted header differs from field", in: asGiven, headers: []string{`Idempotency-Key: "{key}"`}, body: `{"idempotency_key":"{key}-other",` + createMembers + `}`, status: bad, code: "invalid_idempotency_key"},
		{name: "bare header differs from field", in: asGiven, headers: []string{"Idempotency-Key: {key}"}, body: `{"idempotency_key":"{key}-other",` + createMembers + `}`, status: bad, code: "invalid_idempotency_key"},

		{name: "body over max_body, Content-Length", in: inBoth, body: huge, status: http.StatusRequestEntityTooLarge, code: "request_too_large"},
		{name: "body over max_body, chunked", in: inBoth, body: huge, chunked: true, status: http.StatusRequestEntityTooLarge, code: "request_too_large"},

		// An empty body hashes as raw bytes and goes upstream; the backend's 400
		// releases the key (README: "Anything else ... the record is released").
		{name: "empty body", in: inHeader, body: "", status: bad, upstream: true},
		// A text/plain body is not judged as JSON: it goes upstream as sent.
		{name: "invalid JSON as text/plain", in: inHeader, ctype: "text/plain", body: `{"input_file_id":nope}`, status: bad, upstream: true},
	}
}

// shouldRetry is the x-should-retry header the README's error table gives each code.
var shouldRetry = map[string]string{"invalid_idempotency_key": "false", "request_too_large": "false"}

func TestHostileInput(t *testing.T) {
	s := newHostileStack(t)
	for i, c := range hostileCases() {
		for _, in := range []keyIn{inHeader, inField, asGiven} {
			if c.in&in == 0 {
				continue
			}
			name := c.name
			if c.in == inBoth {
				name += map[keyIn]string{inHeader: "/header", inField: "/field"}[in]
			}
			key := fmt.Sprintf("hostile-%02d-%d", i, in)
			t.Run(name, func(t *testing.T) { runHostile(t, s, c, in, key) })
		}
	}
}

func runHostile(t *testing.T, s *stack, c hostileCase, in keyIn, key string) {
	requests, creates := s.backend.Requests(), s.backend.Creates()
	field, headers := "", append([]string(nil), c.headers...)
	switch in {
	case inHeader:
		headers = append([]string{"Idempotency-Key: {key}"}, headers...)
	case inField:
		field = `"idempotency_key":"{key}",`
	}
	ctype := c.ctype
	if ctype == "" {
		ctype = "application/json"
	}
	sub := strings.NewReplacer("{field}", field, "{key}", key)
	for i := range headers {
		headers[i] = sub.Replace(headers[i])
	}
	r := rawPost(t, s, append(headers, "Content-Type: "+ctype), sub.Replace(c.body), c.chunked)

	switch {
	case c.code == byNetHTTP:
		if r.Status != c.status || string(r.Body) != "400 Bad Request" {
			t.Fatalf("got %d %q, want net/http's own plain %d", r.Status, r.Body, c.status)
		}
	case c.upstream:
		backendRejected(t, r)
	default:
		r.apiError(t, c.status, c.code)
		if got := r.Header.Get("x-should-retry"); got != shouldRetry[c.code] {
			t.Fatalf("x-should-retry %q, want %q", got, shouldRetry[c.code])
		}
	}
	wantUp := int64(0)
	if c.upstream {
		wantUp = 1
	}
	if got := s.backend.Requests() - requests; got != wantUp {
		t.Fatalf("backend received %d requests, want %d", got, wantUp)
	}
	if got := s.backend.Creates() - creates; got != 0 {
		t.Fatalf("backend created %d batches", got)
	}
	mustCreateOnce(t, s, key)
}

// mustCreateOnce checks that key is free and Caddy serves: a valid create with
// it makes exactly one batch, and its retry replays that batch.
func mustCreateOnce(t *testing.T, s *stack, key string) {
	t.Helper()
	creates := s.backend.Creates()
	body := `{` + createMembers + `}`
	first := sendTo(t, s.client, http.MethodPost, s.url+"/v1/batches", body, "Idempotency-Key", key).batch(t)
	again := sendTo(t, s.client, http.MethodPost, s.url+"/v1/batches", body, "Idempotency-Key", key)
	if again.batch(t).ID != first.ID || again.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("retry got %s (replayed %q), want a replay of %s", again.Body, again.Header.Get("Idempotent-Replayed"), first.ID)
	}
	if got := s.backend.Creates() - creates; got != 1 {
		t.Fatalf("backend created %d batches for one key, want 1", got)
	}
}

// backendRejected checks r is the batches backend's own 400: its envelope has
// a null code, which the handler never writes.
func backendRejected(t *testing.T, r reply) {
	t.Helper()
	var env struct {
		Error struct {
			Message string
			Code    *string
		}
	}
	if err := json.Unmarshal(r.Body, &env); err != nil || r.Status != http.StatusBadRequest ||
		env.Error.Message == "" || env.Error.Code != nil {
		t.Fatalf("got %d %s, want the backend's 400", r.Status, r.Body)
	}
}

// Fingerprint equivalence seen through the in-flight record: while the first
// request is held upstream, a request the handler hashes the same gets
// idempotency_key_in_use and any other gets idempotency_key_reused. The
// backend rejects all these bodies (unknown member, or not JSON), so the key
// is released afterwards.
func TestHostileFingerprints(t *testing.T) {
	s := newHostileStack(t)
	cases := []struct {
		name, ctype        string
		first, same, other string
	}{
		// RFC 8785 writes -0 as 0 (canonical_number.go), so -0 is valid JSON
		// that hashes as 0, not an error.
		{"-0 is 0", "application/json", `{"n":-0,` + createMembers + `}`, `{"n":0,` + createMembers + `}`, `{"n":1,` + createMembers + `}`},
		{"JSON ignores spelling", "application/json", `{"n":1,` + createMembers + `}`, "{ \"completion_window\" : \"24h\",\n\t\"endpoint\":\"/v1/chat/completions\", \"n\":1.0e0, \"input_file_id\":\"file-abc123\" }", `{"n":2,` + createMembers + `}`},
		// Not JSON: raw bytes, so the same JSON spelled otherwise is other parameters.
		{"text/plain is raw bytes", "text/plain", `{` + createMembers + `}`, `{` + createMembers + `}`, `{ ` + createMembers + ` }`},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			key := fmt.Sprintf("fingerprint-%d", i)
			requests := s.backend.Requests()
			owner, ownerDone := make(chan reply, 1), make(chan struct{})
			open := holdNextCreate(t, s.backend)
			// On failure too: the owner must finish before t does.
			defer func() { open(); <-ownerDone }()
			go func() {
				defer close(ownerDone)
				owner <- sendTo(t, s.client, http.MethodPost, s.url+"/v1/batches", c.first, "Idempotency-Key", key, "Content-Type", c.ctype)
			}()
			waitFor(t, "the first request upstream", func() bool { return s.backend.Requests() == requests+1 })

			sendTo(t, s.client, http.MethodPost, s.url+"/v1/batches", c.same, "Idempotency-Key", key, "Content-Type", c.ctype).
				apiError(t, http.StatusConflict, "idempotency_key_in_use")
			sendTo(t, s.client, http.MethodPost, s.url+"/v1/batches", c.other, "Idempotency-Key", key, "Content-Type", c.ctype).
				apiError(t, http.StatusConflict, "idempotency_key_reused")
			open()
			backendRejected(t, <-owner)
			if got := s.backend.Requests() - requests; got != 1 {
				t.Fatalf("backend received %d requests, want 1", got)
			}
			mustCreateOnce(t, s, key)
		})
	}
}

// The handler reads the whole body before it claims the key, so a client that
// stalls mid-body holds no lease: the same key works meanwhile. The stalled
// request holds only its connection, for as long as Caddy's `timeouts
// read_body` allows (no limit by default; 2s here), and then gets
// 400 request_body_unreadable without reaching the backend.
func TestHostileStalledBody(t *testing.T) {
	s := newHostileStack(t)
	const key = "stalled-body"
	requests := s.backend.Requests()
	conn := dial(t, strings.TrimPrefix(s.url, "http://"))
	sent := time.Now()
	fmt.Fprintf(conn, "POST /v1/batches HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer sk-tenant-a\r\n"+
		"Content-Type: application/json\r\nIdempotency-Key: %s\r\nContent-Length: 200\r\n\r\n%s",
		strings.TrimPrefix(s.url, "http://"), key, `{"input_fi`)

	mustCreateOnce(t, s, key)

	_ = conn.SetReadDeadline(time.Now().Add(15 * time.Second))
	res, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("stalled connection: %v after %v", err, time.Since(sent))
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if took := time.Since(sent); took < 1900*time.Millisecond {
		t.Fatalf("stalled request answered after %v, want after read_body 2s", took)
	}
	reply{Status: res.StatusCode, Header: res.Header, Body: body}.apiError(t, http.StatusBadRequest, "request_body_unreadable")
	again := sendTo(t, s.client, http.MethodPost, s.url+"/v1/batches", `{`+createMembers+`}`, "Idempotency-Key", key)
	if again.batch(t); again.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("after the stalled request ended the key does not replay: %v", again.Header)
	}
	if got := s.backend.Requests() - requests; got != 1 || s.backend.Creates() != 1 {
		t.Fatalf("backend received %d requests and created %d batches, want 1 and 1", got, s.backend.Creates())
	}
}

// newHostileStack is newStack with hostileBlock and Caddy's read_body
// timeout set so a stalled body cannot hold a connection forever.
func newHostileStack(t *testing.T) *stack {
	t.Helper()
	block := hostileBlock + storeDir(t)
	readBodyTimeout := "servers {\n\t\ttimeouts {\n\t\t\tread_body 2s\n\t\t}\n\t}\n\t"
	return newSiteStack(t, readBodyTimeout+quietLog, func(upstream string) string { return idempotencySite(block, upstream) })
}

// rawPost sends POST /v1/batches as written, on its own connection, and reads
// the response. The body is written while the response is read, so an early
// answer (413) is seen even though the server stops reading.
func rawPost(t *testing.T, s *stack, headers []string, body string, chunked bool) reply {
	t.Helper()
	host := strings.TrimPrefix(s.url, "http://")
	conn := dial(t, host)
	var b strings.Builder
	fmt.Fprintf(&b, "POST /v1/batches HTTP/1.1\r\nHost: %s\r\nAuthorization: %s\r\nConnection: close\r\n", host, tenantA)
	for _, h := range headers {
		b.WriteString(h + "\r\n")
	}
	if chunked {
		b.WriteString("Transfer-Encoding: chunked\r\n\r\n")
		for rest := body; rest != ""; {
			n := min(len(rest), 8192)
			fmt.Fprintf(&b, "%x\r\n%s\r\n", n, rest[:n])
			rest = rest[n:]
		}
		b.WriteString("0\r\n\r\n")
	} else {
		fmt.Fprintf(&b, "Content-Length: %d\r\n\r\n%s", len(body), body)
	}
	go func() { _, _ = io.WriteString(conn, b.String()) }() // fails once the server stops reading; the response tells
	res, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("reading the response: %v", err)
	}
	defer res.Body.Close()
	got, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("reading the response body: %v", err)
	}
	return reply{Status: res.StatusCode, Header: res.Header, Body: got}
}

// dial opens a TCP connection to addr for a hand-written request; every
// read and write on it has a deadline, and t's end closes it.
func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if err := conn.SetDeadline(time.Now().Add(requestTimeout)); err != nil {
		t.Fatal(err)
	}
	return conn
}
