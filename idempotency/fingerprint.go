package idempotency

import (
	"crypto/sha256"
	"encoding/binary"
	"hash"
	"net/url"
	"sync"
)

// Versions of the hashed tuples: bump one when its layout changes, so old
// records can never match a new fingerprint by accident.
const (
	fingerprintVersion = "caddy-idempotency/fingerprint/v1"
	recordKeyVersion   = "caddy-idempotency/record-key/v1"
)

// bodyKind tells a canonical JSON body from raw bytes in the fingerprint, so
// the same bytes sent as JSON and as another media type never collide.
type bodyKind byte

const (
	bodyRaw  bodyKind = 'r'
	bodyJSON bodyKind = 'j'
)

// NewFingerprint hashes method, path, the query with its parameters sorted by
// name, and the body (canonical JSON or raw bytes). Every field is
// length-prefixed, so no two tuples share an encoding.
func NewFingerprint(method, path string, query url.Values, kind bodyKind, body []byte) Fingerprint {
	d := hashPool.Get().(*tupleHash)
	defer hashPool.Put(d)
	d.reset()
	d.field(fingerprintVersion)
	d.field(method)
	d.field(path)
	d.field(query.Encode()) // Encode sorts by name
	d.fieldBytes(append(d.buf[:0], byte(kind)))
	d.fieldBytes(body)
	return Fingerprint(d.sum())
}

// NewRecordKey derives the store key from the scope (by default the caller's
// credential) and the client's key, so tenants never share a record and
// neither value is stored in the clear.
func NewRecordKey(scope, key string) RecordKey {
	d := hashPool.Get().(*tupleHash)
	defer hashPool.Put(d)
	d.reset()
	d.field(recordKeyVersion)
	d.field(scope)
	d.field(key)
	return RecordKey(d.sum())
}

// tupleHash hashes length-prefixed fields. Pooled: sha256.New allocates, and
// every keyed request hashes twice.
type tupleHash struct {
	h      hash.Hash
	buf    []byte // staging for short fields, so each is one Write without a conversion
	length [binary.MaxVarintLen64]byte
}

var hashPool = sync.Pool{New: func() any { return &tupleHash{h: sha256.New(), buf: make([]byte, 0, 256)} }}

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

func (d *tupleHash) fieldBytes(b []byte) {
	d.h.Write(binary.AppendUvarint(d.length[:0], uint64(len(b))))
	d.h.Write(b)
}
