package idempotency

import (
	"bytes"
	"compress/flate"
	"compress/gzip"
	"compress/zlib"
	"errors"
	"io"
	"net/http"
	"strings"

	"github.com/klauspost/compress/zstd"
)

// errUnknownCoding: a Content-Encoding this handler cannot decode. A request
// body in such a coding hashes as the raw bytes; a response in one is not stored.
var errUnknownCoding = errors.New("idempotency: unknown content coding")

// ContentCodingError reports a body that does not decode from the coding its
// Content-Encoding names.
type ContentCodingError struct {
	Coding string
	Err    error
}

func (e *ContentCodingError) Error() string {
	return "the body is not valid " + e.Coding + ": " + e.Err.Error()
}

func (e *ContentCodingError) Unwrap() error { return e.Err }

// contentCodings returns the codings of a Content-Encoding header in the order
// they were applied (RFC 9110 §8.4), without identity; nil when there are none.
func contentCodings(h http.Header) []string {
	var codings []string
	for _, v := range h.Values("Content-Encoding") {
		for _, c := range strings.Split(v, ",") {
			c = strings.ToLower(strings.TrimSpace(c))
			if c != "" && c != "identity" {
				codings = append(codings, c)
			}
		}
	}
	return codings
}

// maxCodings bounds the codings undone for one body: each pass costs CPU,
// and no client stacks more (a deeper stack is taken as unknown).
const maxCodings = 3

// zstdMaxWindow is the largest window a zstd body may ask for: RFC 9659 §3
// caps it at 8 MiB for the zstd content coding.
const zstdMaxWindow = 8 << 20

// decodeContent undoes codings (gzip, x-gzip, deflate, zstd; the last applied
// is undone first) and returns at most limit decoded bytes. A larger result is
// an *http.MaxBytesError, so a small compressed body cannot expand past the
// limit; a body that does not decode is a *ContentCodingError, and a coding
// not in the list, or more than maxCodings, is errUnknownCoding.
func decodeContent(codings []string, body []byte, limit int64) ([]byte, error) {
	if len(codings) > maxCodings {
		return nil, errUnknownCoding
	}
	for _, c := range codings {
		if !knownCoding(c) {
			return nil, errUnknownCoding
		}
	}
	for i := len(codings) - 1; i >= 0; i-- {
		var err error
		if body, err = decodeOne(codings[i], body, limit); err != nil {
			return nil, err
		}
	}
	return body, nil
}

func knownCoding(c string) bool {
	return c == "gzip" || c == "x-gzip" || c == "deflate" || c == "zstd"
}

func decodeOne(coding string, body []byte, limit int64) ([]byte, error) {
	var (
		r   io.ReadCloser
		err error
	)
	switch coding {
	case "gzip", "x-gzip":
		r, err = gzip.NewReader(bytes.NewReader(body))
	case "deflate":
		// RFC 9110 §8.4.1.2: the zlib format. Some clients send raw DEFLATE
		// under this name; a body without a zlib header is read as that.
		r, err = zlib.NewReader(bytes.NewReader(body))
		if errors.Is(err, zlib.ErrHeader) {
			r, err = flate.NewReader(bytes.NewReader(body)), nil
		}
	case "zstd":
		var d *zstd.Decoder
		d, err = zstd.NewReader(bytes.NewReader(body), zstd.WithDecoderConcurrency(1),
			zstd.WithDecoderLowmem(true), zstd.WithDecoderMaxWindow(zstdMaxWindow))
		if err == nil {
			r = d.IOReadCloser()
		}
	}
	if err != nil {
		return nil, &ContentCodingError{Coding: coding, Err: err}
	}
	defer r.Close()
	out := bytes.NewBuffer(make([]byte, 0, min(int64(4*len(body))+512, limit+1)))
	if _, err := out.ReadFrom(io.LimitReader(r, limit+1)); err != nil {
		return nil, &ContentCodingError{Coding: coding, Err: err}
	}
	if int64(out.Len()) > limit {
		return nil, &http.MaxBytesError{Limit: limit}
	}
	return out.Bytes(), nil
}

// identityBody is a 2xx response's body as the record keeps it: in the
// identity coding, whatever coding the upstream chose, since a replay goes
// to clients that may accept no other. A body it decodes (decoded), or an
// empty one, loses the header's Content-Encoding. ok is false when the body
// cannot be kept: an unknown coding, a broken one, or more than limit bytes
// decoded.
func identityBody(header http.Header, body []byte, limit int64) (_ []byte, decoded, ok bool) {
	codings := contentCodings(header)
	switch {
	case len(codings) == 0:
		return body, false, true
	case len(body) == 0: // a 204, say: nothing to decode
		header.Del("Content-Encoding")
		return body, true, true
	}
	out, err := decodeContent(codings, body, limit)
	if err != nil {
		return nil, false, false
	}
	header.Del("Content-Encoding")
	return out, true, true
}
