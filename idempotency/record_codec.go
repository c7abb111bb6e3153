package idempotency

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"time"
)

// recordFormatV1 is the first byte of every encoded Record. Layout after it:
//
//	state        1 byte
//	fingerprint  32 bytes
//	owner        16 bytes
//	flags        1 byte (which of the optional parts below are present)
//	leaseUntil   varint Unix ms   (flagLeaseUntil)
//	createdAt    varint Unix ms   (flagCreatedAt)
//	expiresAt    varint Unix ms   (flagExpiresAt)
//	doubts       uvarint          (flagDoubts)
//	response     (flagResponse):
//	  status     varint
//	  headers    uvarint count, then per name: uvarint len + name,
//	             uvarint value count, per value: uvarint len + value
//	  body       uvarint len + bytes
//
// flagResponseNotStored marks a response whose body was not kept
// (Response.NotStored); its header and body are then empty.
const recordFormatV1 byte = 1

const (
	flagLeaseUntil byte = 1 << iota
	flagCreatedAt
	flagExpiresAt
	flagResponse
	flagResponseNotStored
	flagDoubts
	knownFlags = flagLeaseUntil | flagCreatedAt | flagExpiresAt | flagResponse | flagResponseNotStored | flagDoubts
)

var errRecordTruncated = errors.New("idempotency: encoded record is truncated")

// MarshalBinary encodes rec in the versioned store format. Times keep
// millisecond precision; a zero time stays zero.
func (rec *Record) MarshalBinary() ([]byte, error) {
	if rec.Response != nil && !validStatus(int64(rec.Response.Status)) {
		return nil, fmt.Errorf("idempotency: cannot encode response status %d", rec.Response.Status)
	}
	size := 1 + 1 + len(rec.Fingerprint) + len(rec.Owner) + 1 + 4*binary.MaxVarintLen64
	if rec.Response != nil {
		size += binary.MaxVarintLen64 + len(rec.Response.Body) + 2*binary.MaxVarintLen64
		for name, values := range rec.Response.Header {
			size += len(name) + 2*binary.MaxVarintLen64
			for _, v := range values {
				size += len(v) + binary.MaxVarintLen64
			}
		}
	}
	buf := make([]byte, 0, size)

	var flags byte
	if !rec.LeaseUntil.IsZero() {
		flags |= flagLeaseUntil
	}
	if !rec.CreatedAt.IsZero() {
		flags |= flagCreatedAt
	}
	if !rec.ExpiresAt.IsZero() {
		flags |= flagExpiresAt
	}
	if rec.Doubts > 0 {
		flags |= flagDoubts
	}
	if rec.Response != nil {
		flags |= flagResponse
		if rec.Response.NotStored {
			flags |= flagResponseNotStored
		}
	}

	buf = append(buf, recordFormatV1, byte(rec.State))
	buf = append(buf, rec.Fingerprint[:]...)
	buf = append(buf, rec.Owner[:]...)
	buf = append(buf, flags)
	if flags&flagLeaseUntil != 0 {
		buf = binary.AppendVarint(buf, rec.LeaseUntil.UnixMilli())
	}
	if flags&flagCreatedAt != 0 {
		buf = binary.AppendVarint(buf, rec.CreatedAt.UnixMilli())
	}
	if flags&flagExpiresAt != 0 {
		buf = binary.AppendVarint(buf, rec.ExpiresAt.UnixMilli())
	}
	if flags&flagDoubts != 0 {
		buf = binary.AppendUvarint(buf, uint64(rec.Doubts))
	}
	if rec.Response != nil {
		buf = appendResponse(buf, rec.Response)
	}
	return buf, nil
}

// appendResponse encodes resp as the response part of the format, which
// decoder.response reads back. The caller checks the status.
func appendResponse(buf []byte, resp *Response) []byte {
	buf = binary.AppendVarint(buf, int64(resp.Status))
	names := make([]string, 0, len(resp.Header))
	for name := range resp.Header {
		names = append(names, name)
	}
	sort.Strings(names) // deterministic bytes for equal records
	buf = binary.AppendUvarint(buf, uint64(len(names)))
	for _, name := range names {
		buf = appendBytes(buf, name)
		values := resp.Header[name]
		buf = binary.AppendUvarint(buf, uint64(len(values)))
		for _, v := range values {
			buf = appendBytes(buf, v)
		}
	}
	return appendBytes(buf, resp.Body)
}

// UnmarshalBinary decodes data written by MarshalBinary. It never keeps a
// reference to data. Unknown versions, truncated or trailing bytes are errors.
func (rec *Record) UnmarshalBinary(data []byte) error {
	d := decoder{buf: data}
	out, flags, err := decodeHeader(&d)
	if err != nil {
		return err
	}
	if flags&flagResponse != 0 {
		out.Response = d.response()
		if out.Response != nil {
			out.Response.NotStored = flags&flagResponseNotStored != 0
		}
	} else if flags&flagResponseNotStored != 0 {
		return errors.New("idempotency: encoded record marks a response it does not have")
	}
	if d.err != nil {
		return d.err
	}
	if len(d.buf) != 0 {
		return fmt.Errorf("idempotency: %d trailing bytes after encoded record", len(d.buf))
	}
	*rec = out
	return nil
}

// decodeHeader reads a record up to its response, which it leaves in d:
// flags tells whether there is one.
func decodeHeader(d *decoder) (rec Record, flags byte, err error) {
	version := d.byte()
	if d.err != nil {
		return Record{}, 0, d.err
	}
	if version != recordFormatV1 {
		return Record{}, 0, fmt.Errorf("idempotency: unknown record format version %d", version)
	}
	rec.State = State(d.byte())
	copy(rec.Fingerprint[:], d.take(len(rec.Fingerprint)))
	copy(rec.Owner[:], d.take(len(rec.Owner)))
	flags = d.byte()
	if d.err == nil && flags&^knownFlags != 0 {
		return Record{}, 0, fmt.Errorf("idempotency: unknown record flags %#x", flags)
	}
	if flags&flagLeaseUntil != 0 {
		rec.LeaseUntil = d.time()
	}
	if flags&flagCreatedAt != 0 {
		rec.CreatedAt = d.time()
	}
	if flags&flagExpiresAt != 0 {
		rec.ExpiresAt = d.time()
	}
	if flags&flagDoubts != 0 {
		rec.Doubts = int(min(d.uvarint(), 255))
	}
	return rec, flags, d.err
}

func validStatus(status int64) bool { return status >= 0 && status <= 999 }

func appendBytes[T string | []byte](buf []byte, b T) []byte {
	buf = binary.AppendUvarint(buf, uint64(len(b)))
	return append(buf, b...)
}

// decoder reads from buf; after the first error every read is a no-op
// returning zero values, so callers check err once at the end.
type decoder struct {
	buf []byte
	err error
}

func (d *decoder) fail(err error) {
	if d.err == nil {
		d.err = err
	}
	d.buf = nil
}

func (d *decoder) byte() byte {
	b := d.take(1)
	if b == nil {
		return 0
	}
	return b[0]
}

func (d *decoder) take(n int) []byte {
	if d.err != nil {
		return nil
	}
	if n < 0 || n > len(d.buf) {
		d.fail(errRecordTruncated)
		return nil
	}
	b := d.buf[:n:n]
	d.buf = d.buf[n:]
	return b
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.buf)
	if n <= 0 {
		d.fail(errRecordTruncated)
		return 0
	}
	d.buf = d.buf[n:]
	return v
}

func (d *decoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.buf)
	if n <= 0 {
		d.fail(errRecordTruncated)
		return 0
	}
	d.buf = d.buf[n:]
	return v
}

// count reads a length or element count and rejects any larger than the bytes
// left (each element takes at least minSize bytes), so garbage cannot make us
// allocate huge slices.
func (d *decoder) count(minSize int) int {
	n := d.uvarint()
	if d.err == nil && n > uint64(len(d.buf)/minSize) {
		d.fail(errRecordTruncated)
		return 0
	}
	return int(n)
}

func (d *decoder) string() string { return string(d.take(d.count(1))) }

func (d *decoder) time() time.Time { return time.UnixMilli(d.varint()) }

// response decodes a response with a fixed number of allocations, however
// many headers it has: the header block becomes one string that every name
// and value is a substring of, and the values share one slice.
func (d *decoder) response() *Response {
	status := d.varint()
	if d.err == nil && !validStatus(status) {
		d.fail(fmt.Errorf("idempotency: encoded record has invalid status %d", status))
	}
	resp := &Response{Status: int(status)}
	block := d.buf
	// A name is at least a length byte plus a value-count byte.
	names := d.count(2)
	values := 0
	for range names { // first pass: check the block and count its values
		d.take(d.count(1))
		n := d.count(1)
		values += n
		for range n {
			d.take(d.count(1))
		}
	}
	if d.err != nil {
		return nil
	}
	text := string(block[:len(block)-len(d.buf)])
	all := make([]string, values)
	resp.Header = make(http.Header, names)
	_, at := uvarintString(text) // second pass, over the block just checked
	for range names {
		var name string
		name, at = substring(text, at)
		n, w := uvarintString(text[at:])
		at += w
		vs := all[:n:n]
		all = all[n:]
		for j := range vs {
			vs[j], at = substring(text, at)
		}
		resp.Header[name] = vs
	}
	if body := d.take(d.count(1)); len(body) > 0 {
		resp.Body = append([]byte(nil), body...)
	}
	return resp
}

// substring reads the length-prefixed string at offset at of text, which
// the caller has checked holds it, and returns it and the offset after it.
func substring(text string, at int) (string, int) {
	n, w := uvarintString(text[at:])
	at += w
	return text[at : at+int(n)], at + int(n)
}

// uvarintString is binary.Uvarint over a string.
func uvarintString(s string) (uint64, int) {
	var x uint64
	var shift uint
	for i := 0; i < len(s); i++ {
		b := s[i]
		if b < 0x80 {
			return x | uint64(b)<<shift, i + 1
		}
		x |= uint64(b&0x7f) << shift
		shift += 7
	}
	return 0, 0
}

// ReadRecordState reads only the part of an encoded record (MarshalBinary's
// format) before its response: its state, and whether it is live at now.
// Admin walks over many records use it to count them without decoding bodies.
func ReadRecordState(data []byte, now time.Time) (state State, live bool, err error) {
	d := decoder{buf: data}
	rec, _, err := decodeHeader(&d)
	if err != nil {
		return 0, false, err
	}
	if rec.State != StateInFlight && rec.State != StateCompleted && rec.State != StateInDoubt {
		return 0, false, fmt.Errorf("idempotency: record in unknown state %d", rec.State)
	}
	return rec.State, rec.Live(now), nil
}

// AppendResponse appends resp in the response part of MarshalBinary's format
// (status, headers, body; not NotStored, which the record's flags carry), for
// stores with a record layout of their own. ReadResponse reads it back.
func AppendResponse(buf []byte, resp *Response) ([]byte, error) {
	if !validStatus(int64(resp.Status)) {
		return nil, fmt.Errorf("idempotency: cannot encode response status %d", resp.Status)
	}
	return appendResponse(buf, resp), nil
}

// ReadResponse decodes a response written by AppendResponse at the start of
// data and returns the bytes after it.
func ReadResponse(data []byte) (resp *Response, rest []byte, err error) {
	d := decoder{buf: data}
	resp = d.response()
	if d.err != nil {
		return nil, nil, d.err
	}
	return resp, d.buf, nil
}
