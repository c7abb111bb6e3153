package idempotency

import (
	"crypto/sha256"
	"encoding/binary"
	"hash"
	"net/url"
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
	h := sha256.New()
	writeField(h, []byte(fingerprintVersion))
	writeField(h, []byte(method))
	writeField(h, []byte(path))
	writeField(h, []byte(query.Encode())) // Encode sorts by name
	writeField(h, []byte{byte(kind)})
	writeField(h, body)
	var fp Fingerprint
	h.Sum(fp[:0])
	return fp
}

// NewRecordKey derives the store key from the scope (by default the caller's
// credential) and the client's key, so tenants never share a record and
// neither value is stored in the clear.
func NewRecordKey(scope, key string) RecordKey {
	h := sha256.New()
	writeField(h, []byte(recordKeyVersion))
	writeField(h, []byte(scope))
	writeField(h, []byte(key))
	var k RecordKey
	h.Sum(k[:0])
	return k
}

func writeField(h hash.Hash, b []byte) {
	var n [binary.MaxVarintLen64]byte
	h.Write(n[:binary.PutUvarint(n[:], uint64(len(b)))])
	h.Write(b)
}
