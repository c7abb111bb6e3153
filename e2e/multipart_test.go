package e2e

import (
	"bytes"
	"fmt"
	"mime/multipart"
	"net/http"
	"strings"
	"testing"

	"github.com/caddy-idempotency/caddy-idempotency/internal/testupstream"
)

// A form body is fingerprinted by its content, not its framing: a keyed
// upload retried under a new multipart boundary (the OpenAI Node SDK builds
// a new FormData on each attempt) replays, and a form's pairs may come in
// any order. Other content under the key is a conflict, and a multipart
// body that does not parse is refused before anything is claimed.
func TestFidelityMultipart(t *testing.T) {
	up := testupstream.Start(t, filesUpstream)
	loadSites(t, siteBlock(localSite(), "idempotency {\n\t\tstore memory\n\t}", "reverse_proxy "+up.Addr()))
	c := siteClient(t, "")
	upload := func(t *testing.T, contentType string, body []byte, key string) reply {
		t.Helper()
		return sendTo(t, c, http.MethodPost, siteURL("/v1/files"), body, "Content-Type", contentType, "Idempotency-Key", key)
	}
	content := []byte(`{"custom_id":"r1","method":"POST","url":"/v1/chat/completions","body":{}}` + "\n")

	t.Run("new boundary on retry", func(t *testing.T) {
		key := uniqueKey("upload")
		before := up.Count()
		typeA, bodyA := multipartUpload(t, "", content)
		typeB, bodyB := multipartUpload(t, "", content)
		if bytes.Equal(bodyA, bodyB) {
			t.Fatal("the two attempts have the same bytes; want two boundaries")
		}
		first := upload(t, typeA, bodyA, key)
		mustFresh(t, first)
		if !bytes.Equal(up.Last().Body, bodyA) {
			t.Fatal("the upload did not reach the upstream as sent")
		}
		mustReplay(t, upload(t, typeB, bodyB, key), first)
		otherType, other := multipartUpload(t, "", append([]byte(`{"custom_id":"r0"}`+"\n"), content...))
		mustConflict(t, upload(t, otherType, other, key))
		if n := up.Count() - before; n != 1 {
			t.Fatalf("upstream saw %d uploads, want 1", n)
		}
	})

	for _, bad := range []struct{ name, contentType, body string }{
		{"no closing boundary", "multipart/form-data; boundary=xyz",
			"--xyz\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n"},
		{"no boundary parameter", "multipart/form-data",
			"--xyz\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--xyz--\r\n"},
		{"no delimiter line", "multipart/form-data; boundary=xyz", "purpose=batch"},
	} {
		t.Run("malformed: "+bad.name, func(t *testing.T) {
			key := uniqueKey("malformed")
			before := up.Count()
			r := upload(t, bad.contentType, []byte(bad.body), key)
			r.apiError(t, http.StatusBadRequest, "invalid_multipart")
			if r.Header.Get("x-should-retry") != "false" || up.Count() != before {
				t.Fatalf("x-should-retry %q, upstream saw %d requests, want 0", r.Header.Get("x-should-retry"), up.Count()-before)
			}
			// Nothing was claimed: a good upload under the same key runs.
			ct, body := multipartUpload(t, "", content)
			mustFresh(t, upload(t, ct, body, key))
		})
	}

	t.Run("urlencoded pair order", func(t *testing.T) {
		const form = "application/x-www-form-urlencoded"
		key := uniqueKey("form")
		before := up.Count()
		first := upload(t, form, []byte("a=1&b=2"), key)
		mustFresh(t, first)
		mustReplay(t, upload(t, form, []byte("b=2&a=1"), key), first)
		mustConflict(t, upload(t, form, []byte("a=1&b=3"), key))
		if n := up.Count() - before; n != 1 {
			t.Fatalf("upstream saw %d requests, want 1", n)
		}
	})
}

// multipartUpload is an upload form (purpose, file) of content with the
// given boundary ("" for a random one, as curl -F, Go's multipart.Writer and
// an SDK that builds its form anew on each attempt pick).
func multipartUpload(t *testing.T, boundary string, content []byte) (contentType string, body []byte) {
	t.Helper()
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	if boundary != "" {
		if err := mw.SetBoundary(boundary); err != nil {
			t.Fatal(err)
		}
	}
	if err := mw.WriteField("purpose", "batch"); err != nil {
		t.Fatal(err)
	}
	fw, err := mw.CreateFormFile("file", "batch.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fw.Write(content); err != nil {
		t.Fatal(err)
	}
	if err := mw.Close(); err != nil {
		t.Fatal(err)
	}
	return mw.FormDataContentType(), buf.Bytes()
}

// filesUpstream answers a multipart upload in the shape of OpenAI's
// POST /v1/files with a new file object, and any other request by echoing.
func filesUpstream(w http.ResponseWriter, r *http.Request, n int) {
	if !strings.HasPrefix(r.Header.Get("Content-Type"), "multipart/") {
		testupstream.Echo("obj")(w, r, n)
		return
	}
	if err := r.ParseMultipartForm(1 << 20); err != nil || r.FormValue("purpose") == "" {
		http.Error(w, fmt.Sprintf("want a purpose and a file: %v", err), http.StatusBadRequest)
		return
	}
	f, h, err := r.FormFile("file")
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	f.Close()
	testupstream.WriteJSON(w, http.StatusOK, map[string]any{
		"id": fmt.Sprintf("file-%d", n), "object": "file", "bytes": h.Size,
		"filename": h.Filename, "purpose": r.FormValue("purpose"),
	})
}
