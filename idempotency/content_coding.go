package idempotency

import (
	"bufio"
	"bytes"
	"compress/flate"
	"compress/gzip"
	"compress/zlib"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// errUnknownCoding: a Content-Encoding this handler cannot decode. A request
// body in such a coding hashes as the raw bytes; a response in one is not stored.
var errUnknownCoding = errors.New("idempotency: unknown content coding")

// contentCodingError reports a body that does not decode from the coding its
// Content-Encoding names.
type contentCodingError struct {
	Coding string
	Err    error
}

func (e *contentCodingError) Error() string {
	return "the body is not valid " + e.Coding + ": " + e.Err.Error()
}

func (e *contentCodingError) Unwrap() error { return e.Err }

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
// caps it at 8 MiB for the zstd content coding, and encoders that stream
// (the zstd CLI, Go's zstd.Writer) declare such windows for small bodies.
const zstdMaxWindow = 8 << 20

// zstd decoders keep their window between bodies, so they are pooled, and at
// most zstdDecodes run at once: a flood of tiny bodies that declare 8 MiB
// windows then costs a few windows of memory, not one per request.
var (
	zstdDecoders = sync.Pool{New: func() any {
		d, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1),
			zstd.WithDecoderLowmem(true), zstd.WithDecoderMaxWindow(zstdMaxWindow))
		if err != nil {
			panic(err) // only options can fail, and these are fixed
		}
		return d
	}}
	zstdDecodes = make(chan struct{}, 4)
)

// decodeZstd returns at most limit+1 bytes of body decoded.
func decodeZstd(body []byte, limit int64) ([]byte, error) {
	zstdDecodes <- struct{}{}
	defer func() { <-zstdDecodes }()
	d := zstdDecoders.Get().(*zstd.Decoder)
	defer zstdDecoders.Put(d)
	if err := d.Reset(bytes.NewReader(body)); err != nil {
		return nil, err
	}
	defer d.Reset(nil)
	return readLimited(d, len(body), limit)
}

// readLimited reads r up to limit+1 bytes (so the caller sees it went past).
func readLimited(r io.Reader, inLen int, limit int64) ([]byte, error) {
	out := bytes.NewBuffer(make([]byte, 0, min(int64(4*inLen)+512, limit+1)))
	_, err := out.ReadFrom(io.LimitReader(r, limit+1))
	return out.Bytes(), err
}

// decodeContent undoes codings (gzip, x-gzip, deflate, zstd; the last applied
// is undone first) and returns at most limit decoded bytes. A larger result is
// an *http.MaxBytesError, so a small compressed body cannot expand past the
// limit; a body that does not decode is a *contentCodingError, and a coding
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
		out []byte
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
		out, err = decodeZstd(body, limit)
	}
	if err == nil && r != nil {
		out, err = readLimited(r, len(body), limit)
		r.Close()
	}
	if err != nil {
		return nil, &contentCodingError{Coding: coding, Err: err}
	}
	if int64(len(out)) > limit {
		return nil, &http.MaxBytesError{Limit: limit}
	}
	return out, nil
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

// decodable reports whether decodeContent can undo codings.
func decodable(codings []string) bool {
	if len(codings) > maxCodings {
		return false
	}
	for _, c := range codings {
		if !knownCoding(c) {
			return false
		}
	}
	return true
}

// streamDecoder is decodeContent for a body read as it streams: it undoes
// codings (which decodable accepts), the last applied first, as it is read,
// and, as decodeContent, ends any layer that decodes to more than limit
// bytes with an *http.MaxBytesError, so a small body of stacked codings
// cannot expand without bound. A coding that fails records a
// *contentCodingError in fail, unless a failure beneath it (src's, recorded
// there first) caused it. close releases the decoders. A zstd layer gets a
// decoder of its own (at most zstdMaxWindow of memory) rather than one of
// the pool, which a slow upload would hold; at most zstdStreams run at
// once, and one more fails with errZstdBusy.
func streamDecoder(codings []string, src io.Reader, limit int64, fail *firstFailure) (r io.Reader, close func()) {
	layers := make([]*codingReader, 0, len(codings))
	r = src
	for i := len(codings) - 1; i >= 0; i-- {
		l := &codingReader{coding: codings[i], src: r, limit: limit, fail: fail}
		layers = append(layers, l)
		r = l
	}
	return r, func() {
		for _, l := range layers {
			l.close()
		}
	}
}

// zstdStreams bounds the zstd decoders of spooled uploads, each up to
// zstdMaxWindow of memory for as long as its upload lasts: 8 of them hold
// at most 64 MiB, however many clients send zstd and stall.
var zstdStreams = make(chan struct{}, 8)

// errZstdBusy: every streaming zstd decoder is in use; the upload is
// refused (503, retry) rather than given memory no bound covers.
var errZstdBusy = errors.New("too many zstd-compressed uploads at once")

// codingReader undoes one coding of src, set up on its first Read; it
// yields at most limit bytes.
type codingReader struct {
	coding string
	src    io.Reader
	limit  int64
	n      int64
	fail   *firstFailure
	dec    io.Reader
	closer func()
	err    error
}

func (c *codingReader) Read(p []byte) (int, error) {
	if c.dec == nil && c.err == nil {
		c.err = c.open()
	}
	if c.err != nil {
		return 0, c.err
	}
	n, err := c.dec.Read(p)
	if c.n += int64(n); c.n > c.limit {
		c.err = c.fail.set(&http.MaxBytesError{Limit: c.limit})
		return 0, c.err
	}
	if err != nil && err != io.EOF {
		c.err = c.fail.set(&contentCodingError{Coding: c.coding, Err: err})
		return n, c.err
	}
	return n, err
}

func (c *codingReader) open() error {
	var err error
	switch c.coding {
	case "gzip", "x-gzip":
		var z *gzip.Reader
		if z, err = gzip.NewReader(c.src); err == nil {
			c.dec, c.closer = z, func() { z.Close() }
		}
	case "deflate":
		// As decodeOne: a body without a zlib header is raw DEFLATE. The
		// header is looked at before it is taken from the stream.
		br := bufio.NewReader(c.src)
		head, _ := br.Peek(2)
		if _, herr := zlib.NewReader(bytes.NewReader(head)); len(head) == 2 && errors.Is(herr, zlib.ErrHeader) {
			f := flate.NewReader(br)
			c.dec, c.closer = f, func() { f.Close() }
			break
		}
		var z io.ReadCloser
		if z, err = zlib.NewReader(br); err == nil {
			c.dec, c.closer = z, func() { z.Close() }
		}
	case "zstd":
		select {
		case zstdStreams <- struct{}{}:
		default:
			return c.fail.set(&spoolError{errZstdBusy})
		}
		var d *zstd.Decoder
		d, err = zstd.NewReader(c.src, zstd.WithDecoderConcurrency(1),
			zstd.WithDecoderLowmem(true), zstd.WithDecoderMaxWindow(zstdMaxWindow))
		if err != nil {
			<-zstdStreams
			break
		}
		c.dec, c.closer = d, func() { d.Close(); <-zstdStreams }
	default:
		err = errUnknownCoding
	}
	if err != nil {
		return c.fail.set(&contentCodingError{Coding: c.coding, Err: err})
	}
	return nil
}

func (c *codingReader) close() {
	if c.closer != nil {
		c.closer()
		c.closer = nil
	}
}

// firstFailure keeps the first failure of a body read through layers
// (spool, decoders, limits): the root cause, which the layers above only
// pass on.
type firstFailure struct{ err error }

// set records err if nothing failed before, and returns the failure kept.
func (f *firstFailure) set(err error) error {
	if f.err == nil {
		f.err = err
	}
	return f.err
}
