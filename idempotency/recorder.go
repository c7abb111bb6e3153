package idempotency

import (
	"bytes"
	"net/http"
	"slices"
)

// recorder sits between the upstream handler and the client. It holds a 2xx
// response in memory (up to limit bytes) so it can be stored before the
// client sees a byte; any other response, or one that outgrows limit, it
// passes straight through and marks as not storable.
type recorder struct {
	w           http.ResponseWriter
	limit       int64
	status      int
	wroteHeader bool
	passthrough bool
	body        *bytes.Buffer
	// onPassthrough, when set, runs once before a response that will not be
	// stored starts on its way to the client.
	onPassthrough func()
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
	if status < 200 || status > 299 {
		rec.startPassthrough()
	}
}

func (rec *recorder) Write(p []byte) (int, error) {
	if !rec.wroteHeader {
		rec.WriteHeader(http.StatusOK)
	}
	if rec.passthrough {
		return rec.w.Write(p)
	}
	if int64(rec.body.Len()+len(p)) > rec.limit {
		rec.startPassthrough()
		return rec.w.Write(p)
	}
	return rec.body.Write(p)
}

// Flush reaches the client only once the response is known not to be stored;
// until then the bytes must stay here.
func (rec *recorder) Flush() {
	if rec.passthrough {
		_ = http.NewResponseController(rec.w).Flush()
	}
}

// Unwrap lets http.ResponseController reach the connection for deadlines.
func (rec *recorder) Unwrap() http.ResponseWriter { return rec.w }

// startPassthrough sends what is held so far and lets the rest through.
func (rec *recorder) startPassthrough() {
	if rec.passthrough {
		return
	}
	rec.passthrough = true
	if rec.onPassthrough != nil {
		rec.onPassthrough()
	}
	rec.w.WriteHeader(rec.status)
	if rec.body.Len() > 0 {
		_, _ = rec.w.Write(rec.body.Bytes())
		rec.body.Reset()
	}
}

// storable reports whether the response is a complete 2xx held in memory.
func (rec *recorder) storable() bool {
	return rec.wroteHeader && !rec.passthrough
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
