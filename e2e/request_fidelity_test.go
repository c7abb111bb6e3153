package e2e

import (
	"bytes"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/caddy-idempotency/caddy-idempotency/internal/testupstream"
)

// What goes upstream is what the client sent, less the key field, and the
// fingerprint is made of what the upstream receives.

// The fingerprint is the target the upstream receives: two requests that
// reach it differently are two requests under one key (a conflict), and
// two spellings it cannot tell apart are one (a replay).
func TestFidelityQueryAndPath(t *testing.T) {
	up := testupstream.Start(t, nil)
	loadSites(t, siteBlock(localSite(), "idempotency {\n\t\tstore memory\n\t}", "reverse_proxy "+up.Addr()))
	c := siteClient(t, "")
	body := []byte(`{"model":"m","input":"same body"}`)

	for _, tc := range []struct {
		name          string
		first, second string
		replay        bool // else a conflict
	}{
		// A parser that drops ';' pairs would see "x=1" twice.
		{"semicolon query values differ", "/v1/x?to=alice;x=1", "/v1/x?to=mallory;x=1", false},
		{"semicolon is no separator", "/v1/x?a=1;b=2", "/v1/x?b=2;a=1", false},
		{"query pair order", "/v1/x?a=1&b=2", "/v1/x?b=2&a=1", true},
		{"query value differs", "/v1/x?a=1&b=2", "/v1/x?a=1&b=3", false},
		{"empty pair kept", "/v1/x?a=1&", "/v1/x?a=1", false},
		{"encoded slash is not a slash", "/v1/files/a%2Fb", "/v1/files/a/b", false},
		{"escape hex case", "/v1/files/a%2fb", "/v1/files/a%2Fb", true},
		{"unreserved escape", "/v1/%62atches", "/v1/batches", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key := uniqueKey("target")
			before := up.Count()
			first := sendTo(t, c, http.MethodPost, siteURL(tc.first), body, "Idempotency-Key", key)
			mustFresh(t, first)
			if got := up.Last().RequestURI; got != tc.first {
				t.Fatalf("upstream got target %q, want %q as sent", got, tc.first)
			}
			second := sendTo(t, c, http.MethodPost, siteURL(tc.second), body, "Idempotency-Key", key)
			if tc.replay {
				mustReplay(t, second, first)
			} else {
				mustConflict(t, second)
			}
			if n := up.Count() - before; n != 1 {
				t.Fatalf("upstream saw %d requests, want 1", n)
			}
		})
	}
}

// The handler reads a keyed body before it forwards it, so the upstream is
// sent a body with nothing left to ask: no Expect: 100-continue.
func TestFidelityExpect(t *testing.T) {
	up := testupstream.Start(t, nil)
	loadSites(t, siteBlock(localSite(), "idempotency {\n\t\tstore memory\n\t}", "reverse_proxy "+up.Addr()))
	c := siteClient(t, "")
	for _, tc := range []struct {
		name        string
		contentType string
		body        string
		key         bool // an Idempotency-Key header
		wantExpect  bool
	}{
		{"header key, JSON", "application/json", `{"input":"x"}`, true, false},
		{"body field key", "application/json", `{"input":"x","idempotency_key":"` + uniqueKey("expect") + `"}`, false, false},
		{"header key, text", "text/plain", "some text", true, false},
		// The control: a body the handler never reads keeps its Expect, so
		// the upstream would show one that the handler had left.
		{"no key, text", "text/plain", "some text", false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			headers := []string{"Content-Type", tc.contentType, "Expect", "100-continue"}
			if tc.key {
				headers = append(headers, "Idempotency-Key", uniqueKey("expect"))
			}
			mustFresh(t, sendTo(t, c, http.MethodPost, siteURL("/v1/responses"), []byte(tc.body), headers...))
			got := up.Last()
			if has := strings.EqualFold(got.Header.Get("Expect"), "100-continue"); has != tc.wantExpect || string(got.Body) == "" {
				t.Fatalf("upstream Expect %q with body %q; want Expect: %v", got.Header.Get("Expect"), got.Body, tc.wantExpect)
			}
		})
	}
}

// "idempotency_key": null is no key: without a header the request passes
// through unrecorded, and with one it is keyed; the upstream never sees
// the member (the backend rejects unknown fields).
func TestFidelityNullKey(t *testing.T) {
	s := newStack(t, "store badger "+storeDir(t))
	warmUp(t, s.client, s.url+"/v1/warm-up", siteHost(), "")
	body := []byte(createBody(t, map[string]any{"idempotency_key": nil}, ""))
	if !bytes.Contains(body, []byte(`"idempotency_key":null`)) {
		t.Fatalf("the body has no null key member: %s", body)
	}
	for _, tc := range []struct {
		name    string
		headers []string
		keyed   bool
	}{
		{"no header", nil, false},
		{"header key", []string{"Idempotency-Key", "null-field"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := s.backend.Creates()
			first := sendTo(t, s.client, http.MethodPost, s.url+"/v1/batches", body, tc.headers...)
			mustFresh(t, first)
			second := sendTo(t, s.client, http.MethodPost, s.url+"/v1/batches", body, tc.headers...)
			want := int64(2)
			if tc.keyed {
				mustReplay(t, second, first)
				want = 1
			} else {
				mustFresh(t, second)
			}
			if n := s.backend.Creates() - before; n != want {
				t.Fatalf("%d creates, want %d", n, want)
			}
			if got := s.backend.LastCreate().Body; bytes.Contains(got, []byte("idempotency_key")) {
				t.Fatalf("upstream saw the member: %s", got)
			}
		})
	}
}

// The key field is taken out of the body before it goes upstream, and the
// body's length is set for what remains.
func TestBodyFieldIsRemovedBeforeUpstream(t *testing.T) {
	s := newStack(t, "store badger "+storeDir(t))
	body := `{"input_file_id":"file-1","idempotency_key":"k-strip","endpoint":"/v1/chat/completions","completion_window":"24h"}`
	s.send(http.MethodPost, "/v1/batches", body).batch(t) // the backend rejects unknown fields
	got := s.backend.LastCreate()
	if bytes.Contains(got.Body, []byte("idempotency_key")) {
		t.Fatalf("upstream saw the key field: %s", got.Body)
	}
	if got.ContentLength != int64(len(got.Body)) || got.Header.Get("Content-Length") != strconv.Itoa(len(got.Body)) {
		t.Fatalf("upstream Content-Length %d / %q for %d bytes", got.ContentLength, got.Header.Get("Content-Length"), len(got.Body))
	}
}

// A key in the header and another in the body field is refused before
// anything goes upstream.
func TestHeaderAndFieldDisagree(t *testing.T) {
	s := newStack(t, "store badger "+storeDir(t))
	r := s.send(http.MethodPost, "/v1/batches", createBody(t, nil, "in-body"), "Idempotency-Key", "in-header")
	r.apiError(t, http.StatusBadRequest, "invalid_idempotency_key")
	if r.Header.Get("x-should-retry") != "false" || s.backend.Requests() != 0 {
		t.Fatalf("x-should-retry %q, backend requests %d", r.Header.Get("x-should-retry"), s.backend.Requests())
	}
	// The same key in both places is one key.
	s.send(http.MethodPost, "/v1/batches", createBody(t, nil, "same"), "Idempotency-Key", "same").batch(t)
}
