package jcs

import "encoding/binary"

// canonField appends s length-prefixed: its length as a uvarint, then its
// bytes. Every variable field of the multipart and form encodings is written
// so, which makes each encoding prefix-free: no two inputs share one.
func canonField(dst []byte, s string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

// canonFieldBytes is canonField for a byte slice, with no string copy.
func canonFieldBytes(dst, b []byte) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(b)))
	return append(dst, b...)
}
