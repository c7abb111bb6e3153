// Package uploadbody makes large multipart/form-data uploads for tests and
// benchmarks, generated as they are read, so that a gigabyte upload takes
// 64 KiB of the sender's memory.
package uploadbody

import (
	"bytes"
	"io"
	"math/rand/v2"
	"mime/multipart"
)

// Form is an upload as OpenAI's POST /v1/files takes it: a purpose field,
// then one file of Size bytes whose content depends on Seed alone. Prefix
// and Suffix frame the file; a test may cut them to send a broken upload.
type Form struct {
	ContentType string // multipart/form-data with the form's boundary
	Prefix      []byte // the purpose field and the file part's header
	Suffix      []byte // the close delimiter
	Size        int64  // of the file, in bytes
	Seed        uint64
}

// NewForm is a form under boundary ("" picks a random one) with a file of
// size bytes named filename.
func NewForm(boundary, filename string, size int64, seed uint64) (Form, error) {
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	if boundary != "" {
		if err := mw.SetBoundary(boundary); err != nil {
			return Form{}, err
		}
	}
	if err := mw.WriteField("purpose", "batch"); err != nil {
		return Form{}, err
	}
	if _, err := mw.CreateFormFile("file", filename); err != nil {
		return Form{}, err
	}
	prefix := bytes.Clone(buf.Bytes())
	buf.Reset()
	if err := mw.Close(); err != nil {
		return Form{}, err
	}
	return Form{ContentType: mw.FormDataContentType(), Prefix: prefix, Suffix: bytes.Clone(buf.Bytes()), Size: size, Seed: seed}, nil
}

// Length is the whole body's length in bytes.
func (f Form) Length() int64 { return int64(len(f.Prefix)) + f.Size + int64(len(f.Suffix)) }

// Body reads the form's bytes, generated as they are read.
func (f Form) Body() io.Reader {
	return io.MultiReader(bytes.NewReader(f.Prefix), io.LimitReader(newPattern(f.Seed), f.Size), bytes.NewReader(f.Suffix))
}

// pattern repeats a 64 KiB block of pseudo-random bytes drawn from its
// seed: a file that does not compress, made as it is read.
type pattern struct {
	block []byte
	off   int
}

func newPattern(seed uint64) *pattern {
	block := make([]byte, 64<<10)
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	for i := range block {
		block[i] = byte(r.Uint32())
	}
	return &pattern{block: block}
}

func (p *pattern) Read(b []byte) (int, error) {
	n := 0
	for n < len(b) {
		c := copy(b[n:], p.block[p.off:])
		n += c
		p.off = (p.off + c) % len(p.block)
	}
	return n, nil
}
