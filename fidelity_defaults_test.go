package caddyidempotency

import (
	"bytes"
	"net/http"
	"testing"
	"time"

	"github.com/caddy-idempotency/caddy-idempotency/internal/batchesbackend"
)

// With no wait line, duplicates of an in-flight create wait for it (the
// default is 30s) and replay it: one batch for all of them.
func TestFidelityDefaultWait(t *testing.T) {
	s := newStack(t, "store badger "+storeDir(t))
	fidWarmUp(t, s.client, s.url+"/v1/warm-up", siteHost(), "") // the backend's 404, no create
	s.backend.SetFault(batchesbackend.Fault{Delay: 2 * time.Second, Times: 1})
	body := []byte(createBody(t, nil, ""))
	const clients = 8
	replies := make(chan reply, clients)
	for range clients {
		go func() {
			replies <- fidSend(t, s.client, http.MethodPost, s.url+"/v1/batches", body, "Idempotency-Key", "default-wait")
		}()
	}
	var first batchesbackend.Batch
	replayed := 0
	for i := range clients {
		r := <-replies
		b := r.batch(t)
		if i == 0 {
			first = b
		}
		if b.ID != first.ID {
			t.Fatalf("two batches for one key: %s and %s", first.ID, b.ID)
		}
		if r.Header.Get("Idempotent-Replayed") == "true" {
			replayed++
		}
	}
	if replayed != clients-1 || s.backend.Creates() != 1 {
		t.Fatalf("%d replays and %d creates, want %d and 1", replayed, s.backend.Creates(), clients-1)
	}
}

// "idempotency_key": null is no key: without a header the request passes
// through unrecorded, and with one it is keyed; the upstream never sees
// the member (the backend rejects unknown fields).
func TestFidelityNullKey(t *testing.T) {
	s := newStack(t, "store badger "+storeDir(t))
	fidWarmUp(t, s.client, s.url+"/v1/warm-up", siteHost(), "")
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
			first := fidSend(t, s.client, http.MethodPost, s.url+"/v1/batches", body, tc.headers...)
			fidFresh(t, first)
			second := fidSend(t, s.client, http.MethodPost, s.url+"/v1/batches", body, tc.headers...)
			want := int64(2)
			if tc.keyed {
				fidReplay(t, second, first)
				want = 1
			} else {
				fidFresh(t, second)
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

// wait 0 answers a duplicate of an in-flight request at once, 409
// idempotency_key_in_use, instead of the default wait.
func TestFidelityWaitZero(t *testing.T) {
	s := newStack(t, "store badger "+storeDir(t)+"\n\t\twait 0")
	fidWarmUp(t, s.client, s.url+"/v1/warm-up", siteHost(), "")
	release := make(chan struct{})
	open := fidOpener(t, release) // after newStack's backend, so it opens first
	s.backend.SetFault(batchesbackend.Fault{Block: release, Times: 1})
	body := []byte(createBody(t, nil, ""))
	send := func() reply {
		return fidSend(t, s.client, http.MethodPost, s.url+"/v1/batches", body, "Idempotency-Key", "wait-zero")
	}

	owner := make(chan reply, 1)
	go func() { owner <- send() }()
	fidWaitFor(t, "the owner upstream", func() bool { return s.backend.Requests() == 1 })
	start := time.Now()
	dup := send()
	took := time.Since(start)
	dup.apiError(t, http.StatusConflict, "idempotency_key_in_use")
	if took > time.Second || len(owner) != 0 || dup.Header.Get("x-should-retry") != "true" || dup.Header.Get("Retry-After") == "" {
		t.Fatalf("in use after %s (owner done: %v), headers %v: want an answer at once, while the owner runs", took, len(owner) != 0, dup.Header)
	}
	open()
	created := (<-owner).batch(t)
	if again := send(); again.batch(t).ID != created.ID || again.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("retry after the owner: %s, want a replay of %s", again.Body, created.ID)
	}
}
