package idempotency

import (
	"bytes"
	"io"
	"net/http"
	"strconv"
	"sync"
)

// The request body as admission reads it, and as the request goes on.

var canonicalPool = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

// readHead reads the body up to limit bytes. more reports a body that goes
// on past limit: head is then what was read of it (nothing, when the
// Content-Length said so), and the rest is still in r.Body. A body whose
// Content-Length exceeds max is an *http.MaxBytesError, unread. A body of
// known length is read into an exact buffer in one Read when it has arrived
// (each Read through Caddy re-arms the connection's deadline).
func readHead(r *http.Request, limit, max int64) (head []byte, more bool, err error) {
	if r.ContentLength > max {
		return nil, false, &http.MaxBytesError{Limit: max}
	}
	if r.Body == nil || r.Body == http.NoBody {
		return nil, false, nil
	}
	if r.ContentLength > limit {
		return nil, true, nil
	}
	if r.ContentLength > 0 {
		buf := make([]byte, r.ContentLength)
		if _, err := io.ReadFull(r.Body, buf); err != nil {
			return nil, false, err
		}
		return buf, false, nil // net/http ends a Content-Length body there
	}
	buf := bytes.NewBuffer(make([]byte, 0, 512))
	if _, err := buf.ReadFrom(io.LimitReader(r.Body, limit+1)); err != nil {
		return nil, false, err
	}
	return buf.Bytes(), int64(buf.Len()) > limit, nil
}

// setUpstreamBody gives r the admitted body: the spool file's, streamed
// with its length, or the bytes in memory (setBody).
func (a *admission) setUpstreamBody(r *http.Request) {
	if a.spool == nil {
		setBody(r, a.upstream, a.decoded)
		return
	}
	spool := a.spool // not a, which every request's claim would then put on the heap
	r.Body = spool.reader()
	r.GetBody = func() (io.ReadCloser, error) { return spool.reader(), nil }
	r.ContentLength = spool.size
	r.TransferEncoding = nil
	r.Header.Set("Content-Length", strconv.FormatInt(spool.size, 10))
	r.Header.Del("Expect")
}

// setBody gives r a fully buffered body with consistent framing, which
// reverse_proxy needs to send it (and resend it on a retry). The body is
// here, so Expect: 100-continue has nothing left to ask; a decoded body loses
// its Content-Encoding.
func setBody(r *http.Request, body []byte, decoded bool) {
	r.Body = io.NopCloser(bytes.NewReader(body))
	r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	r.ContentLength = int64(len(body))
	r.TransferEncoding = nil
	r.Header.Set("Content-Length", strconv.Itoa(len(body)))
	r.Header.Del("Expect")
	if decoded {
		r.Header.Del("Content-Encoding")
	}
	if len(body) == 0 {
		r.Body = http.NoBody
	}
}

// mayNameField reports whether body could hold field as a member name: it
// spells the name, or it has an escape, which could spell it another way.
func mayNameField(body []byte, field string) bool {
	return field != "" && (bytes.Contains(body, []byte(field)) || bytes.IndexByte(body, '\\') >= 0)
}

// mentionsField reports whether a body that failed to parse names the key
// field: then the client meant it to be keyed, and it gets invalid_json
// rather than going upstream unprotected.
func mentionsField(body []byte, field string) bool {
	return field != "" && bytes.Contains(body, []byte(`"`+field+`"`))
}
