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
// outgrows limit; a stream keeps its copy while that fits. With
// holdAmbiguous, an ambiguous 5xx (ambiguousStatus) is held the same way,
// so a result found by reconciling can answer in its place. Any other
// status passes straight through, uncopied.
type recorder struct {
	w             http.ResponseWriter
	limit         int64
	holdAmbiguous bool
	status        int
	wroteHeader   bool
	sending       bool // the header has gone to the client: what follows goes too
	overflow      bool // a 2xx outgrew limit: its copy is dropped
	clientGone    bool // a write to the client failed while a stream was kept
	hijacked      bool // the connection was taken over (Hijack)
	body          *bytes.Buffer
	// sentHeader is the upstream's header of a 2xx as it was when it went
	// out early: handlers in front (encode) may change the shared map then.
	sentHeader http.Header
	// onSend runs once, before the header of a response that has not ended
	// goes to the client (rw.overflow tells whether its copy survives).
	onSend func()
	// onOverflow runs once when a 2xx already on its way outgrows limit.
	onOverflow func()
}

func newRecorder(w http.ResponseWriter, limit int64, buf *bytes.Buffer) *recorder {
	return &recorder{w: w, limit: limit, body: buf}
}

func (rw *recorder) Header() http.Header { return rw.w.Header() }

func (rw *recorder) WriteHeader(status int) {
	if status >= 100 && status < 200 && status != http.StatusSwitchingProtocols {
		rw.w.WriteHeader(status) // informational (103 Early Hints): not the final response
		return
	}
	if rw.wroteHeader {
		return
	}
	rw.wroteHeader = true
	rw.status = status
	if !rw.holding() || isEventStream(rw.w.Header()) {
		rw.send()
	}
}

func (rw *recorder) Write(p []byte) (int, error) {
	if !rw.wroteHeader {
		rw.WriteHeader(http.StatusOK)
	}
	if !rw.holding() || (rw.sending && !rw.succeeded()) {
		return rw.w.Write(p) // not kept, or a held 5xx already out
	}
	if !rw.overflow && int64(rw.body.Len()+len(p)) > rw.limit {
		rw.overflow = true
		if rw.sending {
			rw.body.Reset()
			if rw.onOverflow != nil {
				rw.onOverflow()
			}
		} else {
			rw.send() // sends what is held, then drops it
		}
	}
	if !rw.sending {
		return rw.body.Write(p)
	}
	if rw.overflow {
		return rw.w.Write(p)
	}
	// A stream being kept: a client that left must not cut it short, so
	// the record still gets the whole response and the retry replays it.
	rw.body.Write(p)
	if !rw.clientGone {
		if _, err := rw.w.Write(p); err != nil {
			rw.clientGone = true
		}
	}
	return len(p), nil
}

// Flush starts a held response on its way: the upstream means the client to
// have what it has so far.
func (rw *recorder) Flush() {
	if rw.wroteHeader && !rw.sending && rw.succeeded() {
		rw.send() // a held 5xx stays held: what reconciling finds may answer in its place
	}
	if rw.sending && !rw.clientGone {
		_ = http.NewResponseController(rw.w).Flush()
	}
}

// Unwrap lets http.ResponseController reach the connection for deadlines.
func (rw *recorder) Unwrap() http.ResponseWriter { return rw.w }

// Hijack hands the connection over, as reverse_proxy does for an upgrade,
// and marks the response as one the recorder never sees: it is not kept.
func (rw *recorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, buf, err := http.NewResponseController(rw.w).Hijack()
	if err == nil {
		rw.hijacked = true
	}
	return conn, buf, err
}

// send writes the header and what is held so far to the client; from then on
// every write goes through. The held copy stays unless it has overflowed.
func (rw *recorder) send() {
	if rw.sending {
		return
	}
	rw.sending = true
	if rw.onSend != nil {
		rw.onSend()
	}
	if rw.succeeded() {
		rw.sentHeader = rw.w.Header().Clone()
	}
	rw.w.WriteHeader(rw.status)
	if rw.body.Len() > 0 {
		_, _ = rw.w.Write(rw.body.Bytes())
	}
	if rw.overflow || !rw.succeeded() {
		rw.body.Reset()
	}
}

// holding reports whether the response is one the recorder holds: a 2xx,
// or an ambiguous 5xx with holdAmbiguous.
func (rw *recorder) holding() bool {
	return rw.succeeded() || (rw.holdAmbiguous && rw.wroteHeader && ambiguousStatus(rw.status))
}

// succeeded reports whether the upstream answered 2xx: it acted, and a retry
// must never make it act again.
func (rw *recorder) succeeded() bool {
	return rw.wroteHeader && rw.status >= 200 && rw.status <= 299
}

// header is the upstream's response header: as it went out, for a response
// already sent.
func (rw *recorder) header() http.Header {
	if rw.sentHeader != nil {
		return rw.sentHeader
	}
	return rw.w.Header()
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
