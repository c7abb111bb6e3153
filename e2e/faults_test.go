package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/caddy-idempotency/caddy-idempotency/idempotency"
	"github.com/caddy-idempotency/caddy-idempotency/idempotency/badgerstore"
	"github.com/caddy-idempotency/caddy-idempotency/internal/batchesbackend"
)

// Faults around the request in flight: the upstream fails or hangs, a
// handler below panics, the process dies.

func TestRetryAfterUpstreamErrorReachesBackend(t *testing.T) {
	for _, status := range []int{http.StatusInternalServerError, http.StatusBadRequest, http.StatusTooManyRequests} {
		t.Run(http.StatusText(status), func(t *testing.T) {
			s := newStack(t, "store badger "+storeDir(t))
			s.backend.SetFault(batchesbackend.Fault{Status: status, Times: 1})
			body := createBody(t, nil, "")
			if r := s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", "k-retry"); r.Status != status {
				t.Fatalf("first status %d, want %d", r.Status, status)
			}
			b := s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", "k-retry").batch(t)
			if s.backend.Requests() != 2 || s.backend.Creates() != 1 {
				t.Fatalf("backend requests %d creates %d, want 2 and 1", s.backend.Requests(), s.backend.Creates())
			}
			if again := s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", "k-retry").batch(t); again.ID != b.ID {
				t.Fatalf("success was not stored: %s then %s", b.ID, again.ID)
			}
		})
	}
}

// A kill -9 loses no completed record: the restarted process replays it.
func TestReplayAfterProcessKillAndRestart(t *testing.T) {
	backend := batchesbackend.New()
	upstream := serveBackend(t, backend)
	port := freePort()
	config := processCaddyfile(port, "store badger "+t.TempDir(), upstream)
	client := &http.Client{Timeout: 10 * time.Second}
	body := createBody(t, nil, "")

	first := startCaddy(t, config, port)
	created := sendTo(t, client, http.MethodPost, first.url+"/v1/batches", body, "Idempotency-Key", "k-kill").batch(t)
	first.kill()

	second := startCaddy(t, config, port)
	r := sendTo(t, client, http.MethodPost, second.url+"/v1/batches", body, "Idempotency-Key", "k-kill")
	if b := r.batch(t); b.ID != created.ID || b.CreatedAt != created.CreatedAt || r.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("after kill -9 and restart got %s, want replay of %s", b.ID, created.ID)
	}
	if n := backend.Creates(); n != 1 {
		t.Fatalf("backend creates = %d, want 1", n)
	}
}

// A kill -9 with a create upstream leaves Badger openable, every completed
// record replays, and the dead owner's key is in use until its lease runs out
// (never for ttl), then runs again.
func TestKillWithRequestInFlight(t *testing.T) {
	const lockTimeout = 4 * time.Second
	backend := batchesbackend.New()
	watched, taken := watchFaults(backend)
	upstream := serveBackend(t, watched)

	dir := t.TempDir()
	port := freePort()
	config := processCaddyfile(port, fmt.Sprintf("store badger %s\n\t\tlock_timeout %s\n\t\tttl 24h\n\t\twait 0", dir, lockTimeout), upstream)
	client := &http.Client{Timeout: 10 * time.Second}
	bodyOf := func(i int) string {
		return createBody(t, map[string]any{"metadata": map[string]string{"n": fmt.Sprint(i)}}, "")
	}

	first := startCaddy(t, config, port)
	const done = 20
	created := make([]reply, done)
	for i := range created {
		created[i] = sendTo(t, client, http.MethodPost, first.url+"/v1/batches", bodyOf(i), "Idempotency-Key", fmt.Sprint("k-done-", i))
		created[i].batch(t)
	}

	holdNextCreate(t, backend)
	inFlight := bodyOf(done)
	lost := make(chan error, 1)
	go func() {
		r, err := request(&http.Client{Timeout: 20 * time.Second}, http.MethodPost, first.url+"/v1/batches", inFlight, "Idempotency-Key", "k-in-flight")
		if err == nil {
			err = fmt.Errorf("answered %d %s", r.Status, r.Body)
		}
		lost <- err
	}()
	waitTaken(t, taken)
	killedAt := time.Now()
	first.kill()
	if err := <-lost; err == nil || strings.HasPrefix(err.Error(), "answered") {
		t.Fatalf("the in-flight client of the killed process: %v, want a transport error", err)
	}

	restartAt := time.Now()
	second := startCaddy(t, config, port) // Badger opened the killed process's directory
	restart := time.Since(restartAt)
	checkAt := time.Since(killedAt)
	r := sendTo(t, client, http.MethodPost, second.url+"/v1/batches", inFlight, "Idempotency-Key", "k-in-flight")
	// The dead owner last renewed at most lock_timeout/3 before the kill.
	if checkAt < lockTimeout/2 || r.Status == http.StatusConflict {
		r.apiError(t, http.StatusConflict, "idempotency_key_in_use")
		if r.Header.Get("Retry-After") == "" {
			t.Fatalf("in_use without Retry-After: %v", r.Header)
		}
	}
	for i, want := range created {
		mustReplay(t, sendTo(t, client, http.MethodPost, second.url+"/v1/batches", bodyOf(i), "Idempotency-Key", fmt.Sprint("k-done-", i)), want)
	}
	if c := backend.Creates(); c != done {
		t.Fatalf("backend creates = %d after the replays, want %d", c, done)
	}

	// Poll until the dead owner's lease runs out and the key runs again.
	for r.Status == http.StatusConflict {
		r.apiError(t, http.StatusConflict, "idempotency_key_in_use")
		if since := time.Since(killedAt); since > lockTimeout+time.Second {
			t.Fatalf("key still in use %s after the kill, lock_timeout %s", since, lockTimeout)
		}
		time.Sleep(50 * time.Millisecond)
		r = sendTo(t, client, http.MethodPost, second.url+"/v1/batches", inFlight, "Idempotency-Key", "k-in-flight")
	}
	freedAfter := time.Since(killedAt)
	r.batch(t)
	if r.Header.Get("Idempotent-Replayed") != "" || backend.Creates() != done+1 || backend.Requests() != done+2 {
		t.Fatalf("take-over: replayed %q, creates %d, requests %d; want a new create", r.Header.Get("Idempotent-Replayed"), backend.Creates(), backend.Requests())
	}
	mustReplay(t, sendTo(t, client, http.MethodPost, second.url+"/v1/batches", inFlight, "Idempotency-Key", "k-in-flight"), r)
	t.Logf("restart %s; first check %s after the kill; key free after %s (lock_timeout %s)",
		restart.Round(time.Millisecond), checkAt.Round(time.Millisecond), freedAfter.Round(time.Millisecond), lockTimeout)

	second.kill()
	store, err := badgerstore.Open(badgerstore.Options{Dir: dir})
	if err != nil {
		t.Fatalf("opening the store after kill -9: %v", err)
	}
	defer store.Close()
	for key, want := range map[string][]byte{"k-done-7": created[7].Body, "k-in-flight": r.Body} {
		rec, ok, err := store.Get(context.Background(), idempotency.NewRecordKey(fmt.Sprintf("127.0.0.1@:%d", port), "Bearer sk-tenant-a", key))
		if err != nil || !ok || rec.State != idempotency.StateCompleted || !bytes.Equal(rec.Response.Body, want) {
			t.Fatalf("record %s after the second kill: ok %v, err %v, state %v", key, ok, err, rec.State)
		}
	}
}

func panicSite(t *testing.T, opts string) func(string) string {
	dir := storeDir(t)
	return func(upstream string) string {
		return fmt.Sprintf(`	route /v1/batches {
		idempotency {
			store badger %s
		}
		test_panic {
			panics 1
			%s
		}
		reverse_proxy %s
	}`, dir, opts, upstream)
	}
}

// A panic below the handler releases the record: Go's server drops the
// connection, and a retry with the same key goes downstream and is stored.
func TestPanicDownstreamReleasesKey(t *testing.T) {
	for _, tc := range []struct{ name, opts string }{{"panic", ""}, {"ErrAbortHandler", "abort"}} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSiteStack(t, quietLog, panicSite(t, tc.opts))
			// A fresh connection each time, so net/http never resends the
			// keyed POST on its own after the server drops the connection.
			fresh := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
			body := createBody(t, nil, "")
			r, err := request(fresh, http.MethodPost, s.url+"/v1/batches", body, "Idempotency-Key", "k-panic")
			if err == nil {
				t.Fatalf("the panicking request was answered %d %s, want the connection dropped", r.Status, r.Body)
			}
			if !errors.Is(err, io.EOF) && !strings.Contains(err.Error(), "EOF") && !strings.Contains(err.Error(), "reset") {
				t.Fatalf("the panicking request failed with %v, want EOF or reset", err)
			}
			if n := s.backend.Requests(); n != 0 {
				t.Fatalf("backend requests = %d after the panic, want 0", n)
			}

			retry := sendTo(t, fresh, http.MethodPost, s.url+"/v1/batches", body, "Idempotency-Key", "k-panic")
			retry.batch(t)
			if retry.Header.Get("Idempotent-Replayed") != "" || s.backend.Creates() != 1 {
				t.Fatalf("retry after the panic: replayed %q, creates %d", retry.Header.Get("Idempotent-Replayed"), s.backend.Creates())
			}
			mustReplay(t, sendTo(t, fresh, http.MethodPost, s.url+"/v1/batches", body, "Idempotency-Key", "k-panic"), retry)
			if n := s.backend.Creates(); n != 1 {
				t.Fatalf("backend creates = %d, want 1", n)
			}
		})
	}
}

// A live owner keeps its key however long the upstream takes: lock_timeout
// only frees the key of a dead owner. Duplicates get in_use, other params
// reused; the late 2xx is stored and replays.
func TestHungUpstreamKeepsKeyInFlight(t *testing.T) {
	const lockTimeout = 300 * time.Millisecond
	s := newSiteStack(t, quietLog, func(upstream string) string {
		return idempotencySite(fmt.Sprintf("\t\tstore badger %s\n\t\tlock_timeout %s\n\t\twait 0", storeDir(t), lockTimeout), upstream)
	})
	unblock := holdNextCreate(t, s.backend)
	body := createBody(t, nil, "")

	owner := make(chan reply, 1)
	start := time.Now()
	go func() {
		owner <- sendTo(t, s.client, http.MethodPost, s.url+"/v1/batches", body, "Idempotency-Key", "k-hang")
	}()
	waitTaken(t, s.taken)
	time.Sleep(4 * lockTimeout)

	for i := 0; i < 3; i++ {
		r := s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", "k-hang")
		r.apiError(t, http.StatusConflict, "idempotency_key_in_use")
		if r.Header.Get("Retry-After") == "" {
			t.Fatalf("in_use without Retry-After: %v", r.Header)
		}
		s.send(http.MethodPost, "/v1/batches", createBody(t, map[string]any{"completion_window": "48h"}, ""),
			"Idempotency-Key", "k-hang").apiError(t, http.StatusConflict, "idempotency_key_reused")
		time.Sleep(lockTimeout)
	}
	if s.backend.Requests() != 1 || s.backend.Creates() != 0 {
		t.Fatalf("backend requests %d creates %d while hung, want 1 and 0", s.backend.Requests(), s.backend.Creates())
	}
	hung := time.Since(start)
	unblock()
	first := <-owner
	first.batch(t)
	mustReplay(t, s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", "k-hang"), first)
	if s.backend.Requests() != 1 || s.backend.Creates() != 1 {
		t.Fatalf("backend requests %d creates %d, want 1 and 1", s.backend.Requests(), s.backend.Creates())
	}
	t.Logf("upstream hung %s (%.1fx lock_timeout %s); the key stayed in flight", hung.Round(time.Millisecond), float64(hung)/float64(lockTimeout), lockTimeout)
}

// With wait, a duplicate of a hung request waits the whole wait, then gets
// in_use: the lease renewal keeps it from taking the key over.
func TestHungUpstreamWaitThenInUse(t *testing.T) {
	const lockTimeout, wait = 200 * time.Millisecond, 800 * time.Millisecond
	s := newSiteStack(t, quietLog, func(upstream string) string {
		return idempotencySite(fmt.Sprintf("\t\tstore badger %s\n\t\tlock_timeout %s\n\t\twait %s", storeDir(t), lockTimeout, wait), upstream)
	})
	unblock := holdNextCreate(t, s.backend)
	body := createBody(t, nil, "")
	owner := make(chan reply, 1)
	go func() {
		owner <- sendTo(t, s.client, http.MethodPost, s.url+"/v1/batches", body, "Idempotency-Key", "k-hang-wait")
	}()
	waitTaken(t, s.taken)

	start := time.Now()
	r := s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", "k-hang-wait")
	waited := time.Since(start)
	r.apiError(t, http.StatusConflict, "idempotency_key_in_use")
	if waited < wait {
		t.Fatalf("duplicate answered after %s, want at least wait %s", waited, wait)
	}
	unblock()
	first := <-owner
	first.batch(t)
	mustReplay(t, s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", "k-hang-wait"), first)
	if s.backend.Requests() != 1 || s.backend.Creates() != 1 {
		t.Fatalf("backend requests %d creates %d, want 1 and 1", s.backend.Requests(), s.backend.Creates())
	}
	t.Logf("duplicate waited %s (wait %s, lock_timeout %s), then in_use", waited.Round(time.Millisecond), wait, lockTimeout)
}

// When reverse_proxy gives up on a hung upstream, Caddy answers 504 and the
// record is released: the retry goes upstream again. (Had the upstream
// created a batch anyway, the retry would create a second: not guaranteed.)
func TestProxyTimeoutReleasesKey(t *testing.T) {
	s := newSiteStack(t, quietLog, func(upstream string) string {
		return fmt.Sprintf(`	idempotency /v1/batches {
		store badger %s
		lock_timeout 300ms
	}
	reverse_proxy %s {
		transport http {
			response_header_timeout 500ms
		}
	}`, storeDir(t), upstream)
	})
	holdNextCreate(t, s.backend)
	body := createBody(t, nil, "")

	start := time.Now()
	r := s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", "k-timeout")
	took := time.Since(start)
	if r.Status != http.StatusGatewayTimeout || r.Header.Get("Idempotent-Replayed") != "" {
		t.Fatalf("hung upstream: %d %s, want Caddy's 504", r.Status, r.Body)
	}
	select {
	case <-s.taken:
	default:
		t.Fatal("the request never reached the blocking fault")
	}

	retry := s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", "k-timeout")
	retry.batch(t)
	if retry.Header.Get("Idempotent-Replayed") != "" || s.backend.Requests() != 2 || s.backend.Creates() != 1 {
		t.Fatalf("retry after 504: replayed %q, requests %d, creates %d; want it upstream",
			retry.Header.Get("Idempotent-Replayed"), s.backend.Requests(), s.backend.Creates())
	}
	mustReplay(t, s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", "k-timeout"), retry)
	t.Logf("504 after %s (response_header_timeout 500ms)", took.Round(time.Millisecond))
}
