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

// readBody reads at most limit bytes; a larger body is an *http.MaxBytesError.
// A body of known length is read into an exact buffer in one Read when it has
// arrived (each Read through Caddy re-arms the connection's deadline).
func readBody(r *http.Request, limit int64) ([]byte, error) {
	if r.ContentLength > limit {
		return nil, &http.MaxBytesError{Limit: limit}
	}
	if r.Body == nil || r.Body == http.NoBody {
		return nil, nil
	}
	if r.ContentLength > 0 {
		buf := make([]byte, r.ContentLength)
		if _, err := io.ReadFull(r.Body, buf); err != nil {
			return nil, err
		}
		return buf, nil // net/http ends a Content-Length body there
	}
	buf := bytes.NewBuffer(make([]byte, 0, 512))
	_, err := buf.ReadFrom(io.LimitReader(r.Body, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(buf.Len()) > limit {
		return nil, &http.MaxBytesError{Limit: limit}
	}
	return buf.Bytes(), nil
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
