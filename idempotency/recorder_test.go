package idempotency

import (
	"bytes"
	"fmt"
	"net/http"
	"reflect"
	"strings"
	"testing"
)

// clientWriter stands for the client's connection: it logs, in order, every
// header, write and flush that reaches it.
type clientWriter struct {
	header http.Header
	events []string
	body   bytes.Buffer
}

func newClientWriter() *clientWriter { return &clientWriter{header: http.Header{}} }

func (c *clientWriter) Header() http.Header { return c.header }
func (c *clientWriter) WriteHeader(status int) {
	c.events = append(c.events, fmt.Sprintf("header %d", status))
}
func (c *clientWriter) Write(p []byte) (int, error) {
	c.events = append(c.events, "write "+string(p))
	return c.body.Write(p)
}
func (c *clientWriter) Flush() { c.events = append(c.events, "flush") }

func wantEvents(t *testing.T, c *clientWriter, want ...string) {
	t.Helper()
	if len(want) == 0 && len(c.events) == 0 {
		return
	}
	if !reflect.DeepEqual(c.events, want) {
		t.Fatalf("the client saw %q, want %q", c.events, want)
	}
}

func TestRecorderHoldsStorable2xx(t *testing.T) {
	for _, status := range []int{http.StatusOK, http.StatusCreated, http.StatusAccepted, 299} {
		t.Run(fmt.Sprint(status), func(t *testing.T) {
			client, buf := newClientWriter(), new(bytes.Buffer)
			rw := newRecorder(client, 10, buf)
			rw.Header().Set("Content-Type", "application/json")
			rw.WriteHeader(status)
			_, _ = rw.Write([]byte("01234"))
			_, _ = rw.Write([]byte("56789")) // exactly the limit

			wantEvents(t, client)
			if !kept(rw) || rw.sending {
				t.Fatal("a 2xx within the limit is not storable")
			}
			if rw.status != status || buf.String() != "0123456789" {
				t.Fatalf("held status %d body %q, want %d %q", rw.status, buf, status, "0123456789")
			}
			if client.header.Get("Content-Type") != "application/json" {
				t.Fatal("headers set through the recorder are not the client's headers")
			}
		})
	}
}

func TestRecorderImplicit200(t *testing.T) {
	client, buf := newClientWriter(), new(bytes.Buffer)
	rw := newRecorder(client, 100, buf)
	_, _ = rw.Write([]byte("hi"))
	wantEvents(t, client)
	if !kept(rw) || rw.status != http.StatusOK || buf.String() != "hi" {
		t.Fatalf("kept=%v status=%d body=%q, want true 200 \"hi\"", kept(rw), rw.status, buf)
	}
	rw.WriteHeader(http.StatusInternalServerError) // superfluous: ignored
	if rw.status != http.StatusOK || !kept(rw) {
		t.Fatalf("a second WriteHeader changed the response: status %d", rw.status)
	}
}

func TestRecorderNothingWritten(t *testing.T) {
	rw := newRecorder(newClientWriter(), 100, new(bytes.Buffer))
	if kept(rw) {
		t.Fatal("a response that was never written is storable")
	}
}

func TestRecorderOverLimitPassesThrough(t *testing.T) {
	client, buf := newClientWriter(), new(bytes.Buffer)
	rw := newRecorder(client, 8, buf)
	sends := 0
	rw.onSend = func() {
		sends++
		if !rw.overflow {
			t.Error("onSend of an outgrown 2xx ran before overflow was set")
		}
		wantEvents(t, client) // decided before the header goes out
	}
	rw.onOverflow = func() { t.Error("onOverflow ran for a held response") }
	rw.WriteHeader(http.StatusOK)
	_, _ = rw.Write([]byte("abc"))
	_, _ = rw.Write([]byte("defg"))
	wantEvents(t, client) // 7 bytes: still held
	_, _ = rw.Write([]byte("hij"))
	wantEvents(t, client, "header 200", "write abcdefg", "write hij")
	if sends != 1 || buf.Len() != 0 {
		t.Fatalf("onSend ran %d times, copy holds %q; want once, dropped", sends, buf)
	}
	rw.Flush()
	_, _ = rw.Write([]byte("klm"))
	wantEvents(t, client, "header 200", "write abcdefg", "write hij", "flush", "write klm")
	if kept(rw) {
		t.Fatal("a response over the limit is storable")
	}
	if client.body.String() != "abcdefghijklm" {
		t.Fatalf("the client got %q, want every byte in order", client.body.String())
	}
}

func TestRecorderFirstWriteOverLimit(t *testing.T) {
	client := newClientWriter()
	rw := newRecorder(client, 4, new(bytes.Buffer))
	_, _ = rw.Write([]byte("12345"))
	wantEvents(t, client, "header 200", "write 12345")
	if kept(rw) {
		t.Fatal("a response over the limit is storable")
	}
}

func TestRecorderNon2xxPassesThroughAtOnce(t *testing.T) {
	for _, status := range []int{http.StatusMovedPermanently, http.StatusBadRequest, http.StatusConflict, http.StatusInternalServerError} {
		t.Run(fmt.Sprint(status), func(t *testing.T) {
			client, buf := newClientWriter(), new(bytes.Buffer)
			rw := newRecorder(client, 1<<20, buf)
			rw.WriteHeader(status)
			wantEvents(t, client, fmt.Sprintf("header %d", status))
			_, _ = rw.Write([]byte("oops"))
			rw.Flush()
			wantEvents(t, client, fmt.Sprintf("header %d", status), "write oops", "flush")
			if kept(rw) || buf.Len() != 0 {
				t.Fatalf("a %d is storable (%v) or held (%q)", status, kept(rw), buf)
			}
		})
	}
}

func TestRecorderInformationalForwarded(t *testing.T) {
	client, buf := newClientWriter(), new(bytes.Buffer)
	rw := newRecorder(client, 100, buf)
	rw.Header().Set("Link", "</style.css>; rel=preload")
	rw.WriteHeader(http.StatusEarlyHints)
	wantEvents(t, client, "header 103")
	if rw.wroteHeader {
		t.Fatal("103 was taken as the final response")
	}
	rw.WriteHeader(http.StatusCreated)
	_, _ = rw.Write([]byte("done"))
	wantEvents(t, client, "header 103")
	if !kept(rw) || rw.status != http.StatusCreated || buf.String() != "done" {
		t.Fatalf("after a 103: kept=%v status=%d body=%q, want true 201 \"done\"", kept(rw), rw.status, buf)
	}
}

// A flushed 2xx is a stream: it reaches the client as it comes, and the
// recorder keeps a copy while the copy fits the limit.
func TestRecorderFlushStreams(t *testing.T) {
	client, buf := newClientWriter(), new(bytes.Buffer)
	rw := newRecorder(client, 10, buf)
	sends, overflows := 0, 0
	rw.onSend = func() { sends++ }
	rw.onOverflow = func() { overflows++ }
	rw.WriteHeader(http.StatusOK)
	_, _ = rw.Write([]byte("ab"))
	wantEvents(t, client)
	rw.Flush()
	wantEvents(t, client, "header 200", "write ab", "flush")
	_, _ = rw.Write([]byte("cdefgh"))
	rw.Flush()
	wantEvents(t, client, "header 200", "write ab", "flush", "write cdefgh", "flush")
	if !kept(rw) || buf.String() != "abcdefgh" || sends != 1 || overflows != 0 {
		t.Fatalf("kept=%v copy=%q sends=%d overflows=%d; want the whole stream kept, one send", kept(rw), buf, sends, overflows)
	}
	_, _ = rw.Write([]byte("ijk")) // 11 bytes: the copy is dropped, the stream goes on
	_, _ = rw.Write([]byte("lm"))
	wantEvents(t, client, "header 200", "write ab", "flush", "write cdefgh", "flush", "write ijk", "write lm")
	if kept(rw) || buf.Len() != 0 || overflows != 1 || sends != 1 {
		t.Fatalf("kept=%v copy=%q sends=%d overflows=%d; want the copy dropped once", kept(rw), buf, sends, overflows)
	}
}

// text/event-stream goes out with its header, before any flush.
func TestRecorderEventStreamSentAtOnce(t *testing.T) {
	client, buf := newClientWriter(), new(bytes.Buffer)
	rw := newRecorder(client, 100, buf)
	rw.Header().Set("Content-Type", "Text/Event-Stream; charset=utf-8")
	rw.WriteHeader(http.StatusOK)
	wantEvents(t, client, "header 200")
	_, _ = rw.Write([]byte("data: 1\n\n"))
	wantEvents(t, client, "header 200", "write data: 1\n\n")
	if !kept(rw) || buf.String() != "data: 1\n\n" {
		t.Fatalf("kept=%v copy=%q; want the event kept", kept(rw), buf)
	}
}

// A flush before the header leaks nothing: there is nothing to send yet.
func TestRecorderFlushBeforeHeader(t *testing.T) {
	client := newClientWriter()
	rw := newRecorder(client, 100, new(bytes.Buffer))
	rw.Flush()
	wantEvents(t, client)
	if rw.sending {
		t.Fatal("a flush before any header started sending")
	}
}

func TestRecorderUnwrap(t *testing.T) {
	client := newClientWriter()
	rw := newRecorder(client, 100, new(bytes.Buffer))
	if rw.Unwrap() != http.ResponseWriter(client) {
		t.Fatal("Unwrap does not return the client's writer")
	}
}

func TestStoredHeader(t *testing.T) {
	h := http.Header{}
	h.Set("Content-Type", "application/json")
	h.Set("X-Request-Id", "req_123")
	h.Add("Openai-Processing-Ms", "12")
	h.Add("Vary", "Origin")
	h.Add("Vary", "Accept-Encoding")
	h.Set("X-Hop", "1")
	h.Set("X-Other-Hop", "2")
	h.Add("Connection", "x-hop")
	h.Add("Connection", " keep-alive , X-Other-Hop")
	dropped := []string{
		"Set-Cookie", "Authorization", "WWW-Authenticate", "Proxy-Authenticate", "Proxy-Authorization",
		"Date", "Content-Length", "Keep-Alive", "Proxy-Connection", "TE", "Trailer",
		"Transfer-Encoding", "Upgrade",
	}
	for _, name := range dropped {
		h.Set(name, "v")
	}
	h.Add("Set-Cookie", "session=2")

	// Set in front of the handler: the site's unless the upstream changed it.
	site := http.Header{"X-Site": {"one"}, "Vary": {"Origin"}}
	h.Set("X-Site", "one")

	got := storedHeader(h, site)
	want := http.Header{
		"Content-Type":         {"application/json"},
		"X-Request-Id":         {"req_123"},
		"Openai-Processing-Ms": {"12"},
		"Vary":                 {"Origin", "Accept-Encoding"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("storedHeader kept %v\nwant %v", got, want)
	}

	// A copy: changing the source afterwards does not change what is stored.
	h["Vary"][0] = "changed"
	if got.Get("Vary") != "Origin" {
		t.Fatal("storedHeader shares value slices with its source")
	}
	for name := range got {
		if strings.EqualFold(name, "connection") {
			t.Fatal("Connection itself was stored")
		}
	}
}

// kept reports whether rw holds the whole 2xx response it saw so far.
func kept(rw *recorder) bool { return rw.succeeded() && !rw.overflow }
