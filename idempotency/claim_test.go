package idempotency

import (
	"net/http"
	"strings"
	"testing"
)

func TestKeyReusedWithOtherParameters(t *testing.T) {
	s := newStack(t, Config{}, nil)
	wantForwarded(t, s.post(t, createBody, withKey("k-reuse")), http.StatusOK)

	other := strings.Replace(createBody, "file-abc", "file-xyz", 1)
	for name, r := range map[string]result{
		"body":  s.post(t, other, withKey("k-reuse")),
		"path":  s.post(t, createBody, withKey("k-reuse"), withPath("/v1/files")),
		"query": s.post(t, createBody, withKey("k-reuse"), withPath(batchesPath+"?x=1")),
		"field": s.post(t, strings.Replace(other, "{", `{"idempotency_key":"k-reuse",`, 1)),
	} {
		t.Run(name, func(t *testing.T) {
			msg := wantError(t, r, http.StatusConflict, CodeKeyReused)
			if msg != reuseText("k-reuse") {
				t.Fatalf("message %q\nwant    %q", msg, reuseText("k-reuse"))
			}
			wantHeader(t, r, "x-should-retry", "false")
		})
	}
	s.up.wantCalls(t, 1)
}

func TestConflictStatus422(t *testing.T) {
	s := newStack(t, Config{ConflictStatus: http.StatusUnprocessableEntity}, nil)
	wantForwarded(t, s.post(t, `{"a":"1"}`, withKey("k")), http.StatusOK)
	r := s.post(t, `{"a":"2"}`, withKey("k"))
	if msg := wantError(t, r, http.StatusUnprocessableEntity, CodeKeyReused); msg != reuseText("k") {
		t.Fatalf("message %q, want %q", msg, reuseText("k"))
	}
	wantHeader(t, r, "x-should-retry", "false")
	s.up.wantCalls(t, 1)
}

func TestInUseWhileOwnerUpstream(t *testing.T) {
	g := newGate()
	s := newStack(t, Config{Wait: NoWait}, g.respond)
	t.Cleanup(g.open)
	owner := make(chan result, 1)
	go func() { owner <- s.send(t.Context(), createBody, withKey("k-busy")) }()
	waitClosed(t, g.entered, "the owner to reach upstream")
	woken, unsubscribe := s.h.waiters.subscribe(NewRecordKey(s.ns(), "", "k-busy"))
	defer unsubscribe()

	dup := s.post(t, createBody, withKey("k-busy"))
	wantError(t, dup, http.StatusConflict, CodeKeyInUse)
	wantHeader(t, dup, "Retry-After", "1")
	wantHeader(t, dup, "retry-after-ms", "1000")
	wantHeader(t, dup, "x-should-retry", "true")
	// Other parameters under an in-flight key: reuse, not in use.
	reuse := s.post(t, `{"other":true}`, withKey("k-busy"))
	wantError(t, reuse, http.StatusConflict, CodeKeyReused)
	wantHeader(t, reuse, "x-should-retry", "false")

	g.open()
	first := recv(t, owner, "the owner's response")
	if first.err != nil {
		t.Fatal(first.err)
	}
	wantForwarded(t, first, http.StatusOK)
	// Local waiters are woken when the owner finishes, not at their next poll.
	waitClosed(t, woken, "the owner to wake local waiters")
	wantReplayOf(t, s.post(t, createBody, withKey("k-busy")), first)
	s.up.wantCalls(t, 1)
}
