package idempotency

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"
	"sync"

	"go.uber.org/zap"

	"github.com/caddy-idempotency/caddy-idempotency/idempotency/jcs"
)

// spooledBody is what admitSpooled made of a body too large for memory:
// the file it went to and its fingerprint, computed as it was written.
type spooledBody struct {
	file *spoolFile
	fp   Fingerprint
}

// bodyShape is how admit reads a keyed body it spools: its media type and
// multipart boundary, and its content codings.
type bodyShape struct {
	multipart bool
	boundary  string   // multipart only: the Content-Type's one boundary, or ""
	codings   []string // Content-Encoding, in the order applied
}

var readBuffers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 64<<10) }}

var copyBuffers = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// admitSpooled reads a keyed body that outgrew SpoolThreshold (head, its
// first bytes, then rest) into a spool file, and computes its fingerprint
// in the same pass: the same fingerprint the body would have in memory
// (multipart part by part, other bodies as their decoded bytes). A body of
// unknown length (chunked, or content-coded and decoded) is hashed by a
// second sequential read of the file, since the fingerprint's layout puts
// the body's length before it. The file is removed on a refusal; else the
// caller owns it.
func (h *Handler) admitSpooled(r *http.Request, shape bodyShape, head []byte, rest io.Reader) (spooledBody, *refusal) {
	file, err := createSpool(h.cfg.SpoolDir)
	if err != nil {
		return spooledBody{}, h.spoolRefusal(err)
	}
	fp, ref := h.spool(r, file, shape, head, rest)
	if ref != nil {
		file.remove()
		return spooledBody{}, ref
	}
	return spooledBody{file: file, fp: fp}, nil
}

// spool writes the body to file as its fingerprint is computed.
func (h *Handler) spool(r *http.Request, file *spoolFile, shape bodyShape, head []byte, rest io.Reader) (Fingerprint, *refusal) {
	var fail firstFailure
	src := io.Reader(bytes.NewReader(head))
	if rest != nil {
		src = io.MultiReader(src, rest)
	}
	tee := &spoolTee{src: io.LimitReader(src, h.cfg.MaxBody+1), w: file, limit: h.cfg.MaxBody, fail: &fail}

	unknownCoding := len(shape.codings) > 0 && !decodable(shape.codings)
	content := io.Reader(tee) // the body as the upstream's application reads it
	if len(shape.codings) > 0 && !unknownCoding {
		dec, closeDecoder := streamDecoder(shape.codings, tee, h.cfg.MaxBody, &fail)
		defer closeDecoder()
		content = dec
	}
	bufp := copyBuffers.Get().(*[]byte)
	defer copyBuffers.Put(bufp)

	var (
		fp     Fingerprint
		fpw    *fingerprintWriter // a raw body of known length, hashed as it is read
		kind   = BodyRaw
		prefix []byte // BodyEncoded: the codings, before the raw bytes
	)
	switch {
	case unknownCoding:
		kind, prefix = BodyEncoded, appendEncoded(nil, shape.codings, nil)
	case shape.multipart:
		kind = BodyMultipart
	}
	if kind == BodyMultipart {
		canonp := canonicalPool.Get().(*[]byte)
		defer canonicalPool.Put(canonp)
		// multipart.Reader reads 4 KiB at a time: a larger buffer under it
		// reads the client's body in fewer, larger reads.
		br := readBuffers.Get().(*bufio.Reader)
		br.Reset(content)
		defer func() { br.Reset(nil); readBuffers.Put(br) }()
		c, err := jcs.AppendMultipartFrom((*canonp)[:0], br, shape.boundary)
		content = br // what the multipart reader left buffered is the rest of the body
		*canonp = c[:0]
		if err != nil && fail.err == nil {
			// Not multipart: the rest is not read, as the client is refused.
			return Fingerprint{}, &refusal{http.StatusBadRequest, CodeInvalidMultipart, "The request body could not be read as multipart/form-data: " + err.Error(), &retryNo}
		}
		fp = NewFingerprint(r.Method, r.URL.EscapedPath(), r.URL.RawQuery, kind, c)
	} else if r.ContentLength > 0 && (len(shape.codings) == 0 || unknownCoding) {
		fpw = newFingerprintWriter(r.Method, r.URL.EscapedPath(), r.URL.RawQuery, kind, int64(len(prefix))+r.ContentLength)
		fpw.Write(prefix)
	}
	// The rest of the body: all of it for a raw body, the epilogue after a
	// multipart body's close delimiter. Every byte goes to the spool.
	var sink io.Writer = io.Discard
	if fpw != nil {
		sink = fpw
	}
	decodedLen, _ := io.CopyBuffer(sink, content, *bufp)
	if fail.err == nil && content != io.Reader(tee) {
		_, _ = io.CopyBuffer(io.Discard, tee, *bufp) // after the codings' end, as decodeContent ignores it
	}

	if fail.err == nil {
		fail.set(file.finish(tee.n))
	}
	if fail.err != nil {
		if fpw != nil {
			fpw.Sum() // back to its pool
		}
		return Fingerprint{}, h.spoolBodyRefusal(fail.err)
	}
	switch {
	case kind == BodyMultipart:
		return fp, nil
	case fpw != nil:
		fp, err := fpw.Sum()
		if err != nil { // a body that was not its Content-Length (net/http's never is)
			return Fingerprint{}, h.bodyRefusal(err)
		}
		return fp, nil
	}
	// The length is known now: hash the file again, decoded again.
	if unknownCoding {
		decodedLen = tee.n
	}
	fp, err := h.hashSpooled(r, file, shape.codings, unknownCoding, kind, prefix, decodedLen, *bufp)
	if err != nil {
		return Fingerprint{}, h.spoolBodyRefusal(err)
	}
	return fp, nil
}

// hashSpooled is the fingerprint of a spooled body of size bytes (decoded,
// or with prefix, for BodyEncoded), from a second read of its file.
func (h *Handler) hashSpooled(r *http.Request, file *spoolFile, codings []string, unknownCoding bool, kind BodyKind, prefix []byte, size int64, buf []byte) (Fingerprint, error) {
	var fail firstFailure
	content := io.Reader(file.reader())
	if len(codings) > 0 && !unknownCoding {
		dec, closeDecoder := streamDecoder(codings, content, h.cfg.MaxBody, &fail)
		defer closeDecoder()
		content = dec
	}
	fpw := newFingerprintWriter(r.Method, r.URL.EscapedPath(), r.URL.RawQuery, kind, int64(len(prefix))+size)
	fpw.Write(prefix)
	_, err := io.CopyBuffer(fpw, content, buf)
	fp, serr := fpw.Sum()
	if err = errors.Join(fail.err, err, serr); err != nil {
		return Fingerprint{}, &spoolError{err} // the file does not read back as it was written
	}
	return fp, nil
}

// spoolTee reads the client's body into the spool file as it is read, up to
// limit bytes. Its failures (the client's, the limit's, the file's) are
// recorded in fail, first one kept.
type spoolTee struct {
	src   io.Reader // the body, limited to limit+1 bytes
	w     *spoolFile
	limit int64
	n     int64 // bytes read and written
	fail  *firstFailure
}

func (t *spoolTee) Read(p []byte) (int, error) {
	if t.fail.err != nil {
		return 0, t.fail.err
	}
	n, err := t.src.Read(p)
	if t.n+int64(n) > t.limit {
		return 0, t.fail.set(&http.MaxBytesError{Limit: t.limit})
	}
	t.n += int64(n)
	if n > 0 {
		if _, werr := t.w.w.Write(p[:n]); werr != nil {
			return 0, t.fail.set(&spoolError{werr})
		}
	}
	if err != nil && err != io.EOF {
		err = t.fail.set(err) // cut short, or timed out
	}
	return n, err
}

// spoolBodyRefusal answers a spooled body that failed: the spool's failure
// (503, retry), else the body's (bodyRefusal: 413, or cut short), else its
// coding's.
func (h *Handler) spoolBodyRefusal(err error) *refusal {
	var (
		se  *spoolError
		bad *contentCodingError
	)
	switch {
	case errors.As(err, &se):
		return h.spoolRefusal(err)
	case errors.As(err, &bad):
		return &refusal{http.StatusBadRequest, CodeInvalidEncoding, "The request body could not be decoded: " + bad.Error(), &retryNo}
	}
	return h.bodyRefusal(err)
}

// spoolRefusal answers 503 idempotency_spool_unavailable: the body could
// not be written to disk, so nothing was claimed or sent upstream.
func (h *Handler) spoolRefusal(err error) *refusal {
	h.cfg.Logger.Error("idempotency spool failed; request refused", zap.String("spool_dir", h.cfg.SpoolDir), zap.Error(err))
	return &refusal{http.StatusServiceUnavailable, CodeSpoolUnavailable, spoolUnavailableMessage, &retryYes}
}
