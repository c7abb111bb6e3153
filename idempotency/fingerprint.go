package idempotency

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"hash"
	"net/http"
	"slices"
	"strings"
	"sync"

	"github.com/caddy-idempotency/caddy-idempotency/idempotency/jcs"
)

// Versions of the hashed tuples: bump one when its layout changes, so old
// records can never match a new fingerprint by accident.
const (
	fingerprintVersion = "caddy-idempotency/fingerprint/v2"
	recordKeyVersion   = "caddy-idempotency/record-key/v2"
)

// BodyKind says which canonical form a body passed to NewFingerprint is in.
// It is hashed with the body (one byte, the constant's value), so the same
// bytes in two forms never share a fingerprint.
type BodyKind byte

// The kinds of body, with the media types the handler gives each (see
// Handler.Handle). Each value is part of the fingerprint layout: changing one
// needs a new fingerprint version.
const (
	// BodyRaw: the bytes as the upstream's application reads them, decoded
	// from their Content-Encoding. Every body not listed below: other media
	// types, an empty JSON body, a urlencoded body that jcs.IsForm rejects.
	BodyRaw BodyKind = 'r'
	// BodyJSON: jcs.AppendJSONWithout's output, without the key field.
	// A non-empty application/json or +json body.
	BodyJSON BodyKind = 'j'
	// BodyMultipart: jcs.AppendMultipart's output. multipart/form-data.
	BodyMultipart BodyKind = 'm'
	// BodyForm: jcs.AppendForm's output. application/x-www-form-urlencoded.
	BodyForm BodyKind = 'f'
	// BodyEncoded: a body in content codings the handler cannot decode, as
	// the uvarint count of codings, each coding (lower-cased, in the order
	// applied) as a uvarint length and its bytes, then the raw body.
	BodyEncoded BodyKind = 'e'
)

// NewFingerprint hashes the request as the upstream receives it: method, the
// escaped path (see appendCanonicalPath), the raw query with its pairs in a
// canonical order (see queryFields), and the body in the canonical form that
// kind names. Every field is length-prefixed, so no two tuples share an
// encoding.
func NewFingerprint(method, escapedPath, rawQuery string, kind BodyKind, body []byte) Fingerprint {
	d := hashPool.Get().(*tupleHash)
	defer hashPool.Put(d)
	d.fingerprintHead(method, escapedPath, rawQuery, kind)
	d.fieldBytes(body)
	return Fingerprint(d.sum())
}

// fingerprintHead resets d and writes every field of a fingerprint but the body.
func (d *tupleHash) fingerprintHead(method, escapedPath, rawQuery string, kind BodyKind) {
	d.reset()
	d.field(fingerprintVersion)
	d.field(method)
	d.path = appendCanonicalPath(d.path[:0], escapedPath)
	d.fieldBytes(d.path)
	if cap(d.path) > 4096 {
		d.path = make([]byte, 0, 128) // a long path is not kept pooled
	}
	d.queryFields(rawQuery)
	d.fieldBytes(append(d.buf[:0], byte(kind)))
}

// fingerprintWriter is NewFingerprint for a body written to it in pieces,
// as it streams: the layout puts the body's length first, so it must be
// known before the first byte.
type fingerprintWriter struct {
	d    *tupleHash
	left int64 // bytes of the body still to come
}

// newFingerprintWriter begins the fingerprint of a body of size bytes.
func newFingerprintWriter(method, escapedPath, rawQuery string, kind BodyKind, size int64) *fingerprintWriter {
	d := hashPool.Get().(*tupleHash)
	d.fingerprintHead(method, escapedPath, rawQuery, kind)
	d.h.Write(binary.AppendUvarint(d.length[:0], uint64(size)))
	return &fingerprintWriter{d: d, left: size}
}

// Write hashes the next piece of the body; more than the size it was begun
// with is errBodyLength.
func (w *fingerprintWriter) Write(p []byte) (int, error) {
	if int64(len(p)) > w.left {
		return 0, errBodyLength
	}
	w.left -= int64(len(p))
	return w.d.h.Write(p)
}

// Sum returns the fingerprint once the whole body was written, else
// errBodyLength; the writer is not used again.
func (w *fingerprintWriter) Sum() (Fingerprint, error) {
	defer hashPool.Put(w.d)
	if w.left != 0 {
		return Fingerprint{}, errBodyLength
	}
	return Fingerprint(w.d.sum()), nil
}

// errBodyLength: a streamed body was not the length its fingerprint began with.
var errBodyLength = errors.New("idempotency: body length differs from the length being hashed")

// NewRecordKey derives the store key from the namespace (by default the
// request's site, see DefaultNamespace), the scope (by default the caller's
// credential) and the client's key, so sites and tenants never share a
// record and none of the values is stored in the clear.
func NewRecordKey(namespace, scope, key string) RecordKey {
	d := hashPool.Get().(*tupleHash)
	defer hashPool.Put(d)
	d.reset()
	d.field(recordKeyVersion)
	d.field(namespace)
	d.field(scope)
	d.field(key)
	return RecordKey(d.sum())
}

// recordKey is NewRecordKey(the request's namespace, scope, key), with the
// namespace written into a pooled buffer instead of a new string.
func (h *Handler) recordKey(r *http.Request, scope, key string) RecordKey {
	d := hashPool.Get().(*tupleHash)
	defer hashPool.Put(d)
	d.reset()
	d.field(recordKeyVersion)
	d.path = h.appendNamespace(d.path[:0], r)
	d.fieldBytes(d.path)
	d.field(scope)
	d.field(key)
	return RecordKey(d.sum())
}

// tupleHash hashes length-prefixed fields. Pooled: sha256.New allocates, and
// every keyed request hashes twice.
type tupleHash struct {
	h     hash.Hash
	buf   []byte // staging for short fields, so each is one Write without a conversion
	path  []byte // the canonical path
	pairs []string
	// sortByDecodedName's scratch
	names  [][2]int
	order  []int
	sorted []string
	length [binary.MaxVarintLen64]byte
}

var hashPool = sync.Pool{New: func() any {
	return &tupleHash{h: sha256.New(), buf: make([]byte, 0, 256), path: make([]byte, 0, 128)}
}}

func (d *tupleHash) reset() { d.h.Reset() }

// sum is the digest, through d.buf: a local array passed to Sum would escape.
func (d *tupleHash) sum() [sha256.Size]byte {
	d.buf = d.h.Sum(d.buf[:0])
	return [sha256.Size]byte(d.buf)
}

func (d *tupleHash) field(s string) {
	d.buf = binary.AppendUvarint(d.buf[:0], uint64(len(s)))
	d.buf = append(d.buf, s...)
	d.h.Write(d.buf)
	if cap(d.buf) > 4096 {
		d.buf = make([]byte, 0, 256) // a long path or query is not kept pooled
	}
}

// queryFields writes the query's pair count, then its pairs: split on '&'
// only, none dropped or decoded, since a proxy forwards the raw query and a
// parser such as url.ParseQuery drops pairs it cannot parse (';', a bad
// escape), which would let two requests that reach the upstream differently
// share a fingerprint. The pairs are ordered by their names, decoded as
// servers decode them (?a=1&%61=2 is a repeated name), and pairs of one name
// keep their order (?model=a&model=b is not ?model=b&model=a to a server
// that reads the first): requests that differ only in the order of
// different names share a fingerprint. The pairs are substrings of
// rawQuery: nothing is copied.
func (d *tupleHash) queryFields(rawQuery string) {
	pairs := d.pairs[:0]
	for rest, more := rawQuery, rawQuery != ""; more; {
		var pair string
		pair, rest, more = strings.Cut(rest, "&")
		pairs = append(pairs, pair) // empty pairs too: "a&" reaches the upstream as sent
	}
	if strings.ContainsAny(rawQuery, "%+") {
		d.sortByDecodedName(pairs)
	} else {
		slices.SortStableFunc(pairs, func(a, b string) int { return strings.Compare(pairName(a), pairName(b)) })
	}
	d.h.Write(binary.AppendUvarint(d.length[:0], uint64(len(pairs))))
	for _, p := range pairs {
		d.field(p)
	}
	clear(pairs)
	if cap(pairs) > 256 {
		pairs = nil // a huge query is not kept pooled
	}
	d.pairs = pairs[:0]
}

// sortByDecodedName sorts pairs stably by their names decoded as servers
// decode them (see jcs.AppendFormDecoded), written once each into d.buf.
func (d *tupleHash) sortByDecodedName(pairs []string) {
	names := d.names[:0]
	d.buf = d.buf[:0]
	for _, p := range pairs {
		start := len(d.buf)
		d.buf = jcs.AppendFormDecoded(d.buf, []byte(pairName(p)))
		names = append(names, [2]int{start, len(d.buf)})
	}
	order := d.order[:0]
	for i := range pairs {
		order = append(order, i)
	}
	slices.SortStableFunc(order, func(a, b int) int {
		return bytes.Compare(d.buf[names[a][0]:names[a][1]], d.buf[names[b][0]:names[b][1]])
	})
	sorted := d.sorted[:0]
	for _, i := range order {
		sorted = append(sorted, pairs[i])
	}
	copy(pairs, sorted)
	clear(sorted)
	d.names, d.order, d.sorted = names[:0], order[:0], sorted[:0]
}

// pairName is the raw name of a query pair: what comes before its first '='.
func pairName(pair string) string {
	name, _, _ := strings.Cut(pair, "=")
	return name
}

func (d *tupleHash) fieldBytes(b []byte) {
	d.h.Write(binary.AppendUvarint(d.length[:0], uint64(len(b))))
	d.h.Write(b)
}

// appendCanonicalPath appends the escaped path in the normal form of RFC 3986
// §6.2.2: percent-encodings of unreserved characters decoded (%61 is a,
// §6.2.2.2) and the hex digits of the others upper-cased (%2f is %2F,
// §6.2.2.1). Every other byte stays as sent, so a%2Fb and a/b, which are
// different resources to the upstream, stay different.
func appendCanonicalPath(dst []byte, escaped string) []byte {
	for i := 0; i < len(escaped); i++ {
		c := escaped[i]
		if c != '%' || i+2 >= len(escaped) || !isHex(escaped[i+1]) || !isHex(escaped[i+2]) {
			dst = append(dst, c)
			continue
		}
		v := unhex(escaped[i+1])<<4 | unhex(escaped[i+2])
		if isUnreserved(v) {
			dst = append(dst, v)
		} else {
			dst = append(dst, '%', upperHex(escaped[i+1]), upperHex(escaped[i+2]))
		}
		i += 2
	}
	return dst
}

// isUnreserved: RFC 3986 §2.3, ALPHA / DIGIT / "-" / "." / "_" / "~".
func isUnreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '-' || c == '.' || c == '_' || c == '~'
}

func isHex(c byte) bool { return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F' }

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c <= 'F':
		return c - 'A' + 10
	}
	return c - 'a' + 10
}

func upperHex(c byte) byte {
	if 'a' <= c && c <= 'f' {
		return c - 'a' + 'A'
	}
	return c
}
