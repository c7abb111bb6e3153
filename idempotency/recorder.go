package idempotency

import (
	"bufio"
	"bytes"
	"net"
	"net/http"
	"slices"
	"strings"
)

// recorder sits between the upstream handler and the client and keeps a
// copy of a 2xx response, up to limit bytes, for the record.
//
// A 2xx is held until it ends, so it can be stored before the client sees a
// byte. It starts on its way early when the upstream flushes it (a stream:
// text/event-stream, or any response reverse_proxy flushes) or when it
// outgrows limit; a stream keeps its copy while that fits. Any other status
// passes straight through, uncopied.
type recorder struct {
	w           http.ResponseWriter
	limit       int64
	status      int
	wroteHeader bool
	sending     bool // the header has gone to the client: what follows goes too
	overflow    bool // a 2xx outgrew limit: its copy is dropped
	clientGone  bool // a write to the client failed while a stream was kept
	hijacked    bool // the connection was taken over (Hijack)
	body        *bytes.Buffer
	// sentHeader is the upstream's header of a 2xx as it was when it went
	// out early: handlers in front (encode) may change the shared map then.
	sentHeader http.Header
	// onSend runs once, before the header of a response that has not ended
	// goes to the client (rec.overflow tells whether its copy survives).
	onSend func()
	// onOverflow runs once when a 2xx already on its way outgrows limit.
	onOverflow func()
}

func newRecorder(w http.ResponseWriter, limit int64, buf *bytes.Buffer) *recorder {
	return &recorder{w: w, limit: limit, body: buf}
}

func (rec *recorder) Header() http.Header { return rec.w.Header() }

func (rec *recorder) WriteHeader(status int) {
	if status >= 100 && status < 200 && status != http.StatusSwitchingProtocols {
		rec.w.WriteHeader(status) // informational (103 Early Hints): not the final response
		return
	}
	if rec.wroteHeader {
		return
	}
	rec.wroteHeader = true
	rec.status = status
	if !rec.succeeded() || isEventStream(rec.w.Header()) {
		rec.send()
	}
}

func (rec *recorder) Write(p []byte) (int, error) {
	if !rec.wroteHeader {
		rec.WriteHeader(http.StatusOK)
	}
	if !rec.succeeded() {
		return rec.w.Write(p)
	}
	if !rec.overflow && int64(rec.body.Len()+len(p)) > rec.limit {
		rec.overflow = true
		if rec.sending {
			rec.body.Reset()
			if rec.onOverflow != nil {
				rec.onOverflow()
			}
		} else {
			rec.send() // sends what is held, then drops it
		}
	}
	if !rec.sending {
		return rec.body.Write(p)
	}
	if rec.overflow {
		return rec.w.Write(p)
	}
	// A stream being kept: a client that left must not cut it short, so
	// the record still gets the whole response and the retry replays it.
	rec.body.Write(p)
	if !rec.clientGone {
		if _, err := rec.w.Write(p); err != nil {
			rec.clientGone = true
		}
	}
	return len(p), nil
}

// Flush starts a held response on its way: the upstream means the client to
// have what it has so far.
func (rec *recorder) Flush() {
	if rec.wroteHeader && !rec.sending {
		rec.send()
	}
	if rec.sending && !rec.clientGone {
		_ = http.NewResponseController(rec.w).Flush()
	}
}

// Unwrap lets http.ResponseController reach the connection for deadlines.
func (rec *recorder) Unwrap() http.ResponseWriter { return rec.w }

// Hijack hands the connection over, as reverse_proxy does for an upgrade,
// and marks the response as one the recorder never sees: it is not kept.
func (rec *recorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, rw, err := http.NewResponseController(rec.w).Hijack()
	if err == nil {
		rec.hijacked = true
	}
	return conn, rw, err
}

// send writes the header and what is held so far to the client; from then on
// every write goes through. The held copy stays unless it has overflowed.
func (rec *recorder) send() {
	if rec.sending {
		return
	}
	rec.sending = true
	if rec.onSend != nil {
		rec.onSend()
	}
	if rec.succeeded() {
		rec.sentHeader = rec.w.Header().Clone()
	}
	rec.w.WriteHeader(rec.status)
	if rec.body.Len() > 0 {
		_, _ = rec.w.Write(rec.body.Bytes())
	}
	if rec.overflow || !rec.succeeded() {
		rec.body.Reset()
	}
}

// succeeded reports whether the upstream answered 2xx: it acted, and a retry
// must never make it act again.
func (rec *recorder) succeeded() bool {
	return rec.wroteHeader && rec.status >= 200 && rec.status <= 299
}

// header is the upstream's response header: as it went out, for a response
// already sent.
func (rec *recorder) header() http.Header {
	if rec.sentHeader != nil {
		return rec.sentHeader
	}
	return rec.w.Header()
}

func isEventStream(h http.Header) bool {
	media, _, _ := strings.Cut(h.Get("Content-Type"), ";")
	return strings.EqualFold(strings.TrimSpace(media), "text/event-stream")
}

// unstoredHeaders are never stored: they describe one connection, one message's
// framing, or belong to one client (cookies, credentials).
var unstoredHeaders = map[string]bool{
	"Set-Cookie":          true,
	"Authorization":       true,
	"Www-Authenticate":    true,
	"Proxy-Authenticate":  true,
	"Proxy-Authorization": true,
	"Date":                true,
	"Content-Length":      true,
	"Connection":          true,
	"Keep-Alive":          true,
	"Proxy-Connection":    true,
	"Te":                  true,
	"Trailer":             true,
	"Transfer-Encoding":   true,
	"Upgrade":             true,
}

// storedHeader copies the end-to-end headers of h that a replay may repeat.
// Those equal to site's (set before the upstream ran, by handlers in front of
// this one) are the site's, not the response's: a replay gets the site's
// current values from those handlers instead.
func storedHeader(h, site http.Header) http.Header {
	connection := h.Values("Connection")
	out := make(http.Header, len(h))
	for name, values := range h {
		if unstoredHeaders[name] || namedIn(connection, name) || len(values) == 0 {
			continue
		}
		if prior, ok := site[name]; ok && slices.Equal(prior, values) {
			continue
		}
		out[name] = append([]string(nil), values...)
	}
	return out
}

// namedIn reports whether a Connection header lists name as hop-by-hop.
func namedIn(connection []string, name string) bool {
	for _, v := range connection {
		for _, f := range bytes.Split([]byte(v), []byte{','}) {
			if http.CanonicalHeaderKey(string(bytes.TrimSpace(f))) == name {
				return true
			}
		}
	}
	return false
}
