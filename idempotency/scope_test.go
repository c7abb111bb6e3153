package idempotency

import (
	"bytes"
	"net/http"
	"strings"
	"testing"
)

func TestScopesAreIndependent(t *testing.T) {
	s := newStack(t, Config{}, nil)
	a := s.post(t, createBody, withKey("shared"), withAuth("Bearer sk-tenant-a"))
	wantForwarded(t, a, http.StatusOK)
	other := strings.Replace(createBody, "file-abc", "file-b", 1)
	b := s.post(t, other, withKey("shared"), withAuth("Bearer sk-tenant-b"))
	wantForwarded(t, b, http.StatusOK)
	anon := s.post(t, createBody, withKey("shared"))
	wantForwarded(t, anon, http.StatusOK)
	s.up.wantCalls(t, 3)
	if bytes.Equal(a.body, b.body) || bytes.Equal(a.body, anon.body) {
		t.Fatal("different tenants got the same response")
	}
	wantReplayOf(t, s.post(t, createBody, withKey("shared"), withAuth("Bearer sk-tenant-a")), a)
	wantReplayOf(t, s.post(t, other, withKey("shared"), withAuth("Bearer sk-tenant-b")), b)
	wantReplayOf(t, s.post(t, createBody, withKey("shared")), anon)
	wantError(t, s.post(t, createBody, withKey("shared"), withAuth("Bearer sk-tenant-b")), http.StatusConflict, CodeKeyReused)
	s.up.wantCalls(t, 3)
}

func TestCustomScope(t *testing.T) {
	s := newStack(t, Config{Scope: func(r *http.Request) string { return r.Header.Get("X-Tenant") }}, nil)
	tenant := func(v string) reqOpt { return func(r *http.Request) { r.Header.Set("X-Tenant", v) } }
	first := s.post(t, createBody, withKey("k"), tenant("t1"), withAuth("Bearer one"))
	wantForwarded(t, first, http.StatusOK)
	// Same tenant, other credential: the scope is the tenant, so this replays.
	wantReplayOf(t, s.post(t, createBody, withKey("k"), tenant("t1"), withAuth("Bearer two")), first)
	wantForwarded(t, s.post(t, createBody, withKey("k"), tenant("t2")), http.StatusOK)
	s.up.wantCalls(t, 2)
}

func TestRequireScope(t *testing.T) {
	s := newStack(t, Config{RequireScope: true}, nil)
	r := s.post(t, createBody, withKey("k-anon"))
	wantError(t, r, http.StatusBadRequest, CodeScopeRequired)
	wantHeader(t, r, "x-should-retry", "false")
	wantError(t, s.post(t, keyedBody("k-anon")), http.StatusBadRequest, CodeScopeRequired)
	s.up.wantCalls(t, 0)
	// Keyless requests need no record, so no scope.
	wantForwarded(t, s.post(t, createBody), http.StatusOK)
	first := s.post(t, createBody, withKey("k-anon"), withAuth("Bearer sk-1"))
	wantForwarded(t, first, http.StatusOK)
	wantReplayOf(t, s.post(t, createBody, withKey("k-anon"), withAuth("Bearer sk-1")), first)
	s.up.wantCalls(t, 2)
}
