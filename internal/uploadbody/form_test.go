package uploadbody

import (
	"bytes"
	"io"
	"mime"
	"mime/multipart"
	"testing"
)

// A form reads back as multipart/form-data with its field and a file of its
// size, as long as Length says; the file depends on the seed alone.
func TestForm(t *testing.T) {
	f, err := NewForm("b0undary", "input.jsonl", 200<<10+7, 1)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(f.Body())
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(body)) != f.Length() {
		t.Fatalf("body is %d bytes, Length says %d", len(body), f.Length())
	}
	_, params, err := mime.ParseMediaType(f.ContentType)
	if err != nil || params["boundary"] != "b0undary" {
		t.Fatalf("Content-Type %q: %v", f.ContentType, err)
	}
	form, err := multipart.NewReader(bytes.NewReader(body), params["boundary"]).ReadForm(1 << 20)
	if err != nil {
		t.Fatal(err)
	}
	if got := form.Value["purpose"]; len(got) != 1 || got[0] != "batch" {
		t.Errorf("purpose = %q", got)
	}
	fh := form.File["file"]
	if len(fh) != 1 || fh[0].Filename != "input.jsonl" || fh[0].Size != f.Size {
		t.Fatalf("file = %+v, want input.jsonl of %d bytes", fh, f.Size)
	}
	again, _ := NewForm("", "input.jsonl", f.Size, 1)
	other, _ := NewForm("", "input.jsonl", f.Size, 2)
	file := func(f Form) []byte { b, _ := io.ReadAll(io.LimitReader(newPattern(f.Seed), f.Size)); return b }
	if !bytes.Equal(file(f), file(again)) || bytes.Equal(file(f), file(other)) {
		t.Error("the file does not depend on the seed alone")
	}
	if again.ContentType == f.ContentType {
		t.Error("no boundary given, and the form did not pick its own")
	}
}
