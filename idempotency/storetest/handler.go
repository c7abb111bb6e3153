package storetest

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-idempotency/caddy-idempotency/idempotency"
)

// handlerDuplicates is how many identical requests RunHandler sends at once.
const handlerDuplicates = 50

// RunHandler runs the engine on the store with many concurrent duplicates of
// one keyed request: exactly one reaches the upstream, and every other client
// gets its response replayed (with Wait), or is refused as in use (without)
// and gets it replayed when it retries. newStore is as for Run.
func RunHandler(t *testing.T, newStore func(t *testing.T) idempotency.Store) {
	t.Run("DuplicatesWaitAndReplay", func(t *testing.T) { testDuplicatesWait(t, newStore(t)) })
	t.Run("DuplicatesNoWaitInUse", func(t *testing.T) { testDuplicatesNoWait(t, newStore(t)) })
}

// heldUpstream answers 200 with a body naming the call, once open lets its
// calls go (at the latest when the test ends).
type heldUpstream struct {
	calls   atomic.Int64
	entered chan struct{}
	release chan struct{}
	once    sync.Once
}

func newHeldUpstream(t *testing.T) *heldUpstream {
	u := &heldUpstream{entered: make(chan struct{}, handlerDuplicates), release: make(chan struct{})}
	t.Cleanup(u.open)
	return u
}

func (u *heldUpstream) open() { u.once.Do(func() { close(u.release) }) }

func (u *heldUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := u.calls.Add(1)
	select {
	case u.entered <- struct{}{}:
	default: // more calls than the test waits for: it counts them
	}
	<-u.release
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, `{"id":"batch_%d"}`, n)
}

// spyStore reports when want distinct owner tokens have found the key in flight.
type spyStore struct {
	idempotency.Store
	want    int
	mu      sync.Mutex
	seen    map[idempotency.OwnerToken]bool
	reached chan struct{}
}

func (s *spyStore) Begin(ctx context.Context, key idempotency.RecordKey, fp idempotency.Fingerprint, owner idempotency.OwnerToken, lease time.Duration) (idempotency.Record, bool, error) {
	rec, owned, err := s.Store.Begin(ctx, key, fp, owner, lease)
	if err == nil && !owned && rec.State == idempotency.StateInFlight {
		s.mu.Lock()
		if !s.seen[owner] && len(s.seen) < s.want {
			s.seen[owner] = true
			if len(s.seen) == s.want {
				close(s.reached)
			}
		}
		s.mu.Unlock()
	}
	return rec, owned, err
}

// sendDuplicates sends n copies of one request with key, each with a
// deadline, and returns their recorded answers as they come.
func sendDuplicates(t *testing.T, h http.Handler, key string, n int) <-chan *httptest.ResponseRecorder {
	out := make(chan *httptest.ResponseRecorder, n)
	for range n {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
			defer cancel()
			r := httptest.NewRequestWithContext(ctx, http.MethodPost, "/v1/batches", strings.NewReader(`{"input_file_id":"file-1"}`))
			r.Header.Set("Idempotency-Key", key)
			w := httptest.NewRecorder()
			h.ServeHTTP(w, r)
			out <- w
		}()
	}
	return out
}

func receive[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(waitLimit):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

// receiveWhileHeld is receive while the upstream holds its first call: a
// second call there is a second owner of the key, and fails the test at once.
func receiveWhileHeld[T any](t *testing.T, up *heldUpstream, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-up.entered:
		t.Fatalf("a second request reached the upstream while waiting for %s: two owners of one key", what)
	case <-time.After(waitLimit):
		t.Fatalf("timed out waiting for %s", what)
	}
	panic("unreachable")
}

func testDuplicatesWait(t *testing.T, s idempotency.Store) {
	spy := &spyStore{Store: s, want: handlerDuplicates - 1, seen: map[idempotency.OwnerToken]bool{}, reached: make(chan struct{})}
	up := newHeldUpstream(t)
	h, err := idempotency.New(idempotency.Config{Store: spy, Wait: waitLimit})
	if err != nil {
		t.Fatal(err)
	}
	answers := sendDuplicates(t, h.Middleware(up), "k-herd-"+newKey().String()[:16], handlerDuplicates)
	receive(t, up.entered, "one request to reach the upstream")
	receiveWhileHeld(t, up, spy.reached, fmt.Sprintf("%d duplicates to find the key in flight", handlerDuplicates-1))
	up.open()

	var first string
	replays := 0
	for i := range handlerDuplicates {
		w := receive(t, answers, fmt.Sprintf("answer %d", i+1))
		if w.Code != http.StatusOK {
			t.Fatalf("answer %d: status %d, body %s", i+1, w.Code, w.Body)
		}
		if w.Header().Get("Idempotent-Replayed") == "true" {
			replays++
		}
		if i == 0 {
			first = w.Body.String()
		} else if w.Body.String() != first {
			t.Fatalf("answer %d is %s, want %s like all others", i+1, w.Body, first)
		}
	}
	if n := up.calls.Load(); n != 1 {
		t.Fatalf("%d upstream calls, want 1", n)
	}
	if replays != handlerDuplicates-1 {
		t.Fatalf("%d replays, want %d", replays, handlerDuplicates-1)
	}
}

func testDuplicatesNoWait(t *testing.T, s idempotency.Store) {
	up := newHeldUpstream(t)
	h, err := idempotency.New(idempotency.Config{Store: s, Wait: idempotency.NoWait})
	if err != nil {
		t.Fatal(err)
	}
	key := "k-herd-" + newKey().String()[:16]
	answers := sendDuplicates(t, h.Middleware(up), key, handlerDuplicates)
	receive(t, up.entered, "one request to reach the upstream")
	// The owner is held upstream, so every other request is answered first.
	for i := range handlerDuplicates - 1 {
		w := receiveWhileHeld(t, up, answers, fmt.Sprintf("in-use answer %d of %d", i+1, handlerDuplicates-1))
		if code := errorCode(w); w.Code != http.StatusConflict || code != idempotency.CodeKeyInUse {
			t.Fatalf("duplicate %d: status %d, code %q, body %s; want 409 %s", i+1, w.Code, code, w.Body, idempotency.CodeKeyInUse)
		}
		if got := w.Header().Get("x-should-retry"); got != "true" {
			t.Fatalf("duplicate %d: x-should-retry %q, want true", i+1, got)
		}
		if w.Header().Get("Retry-After") == "" {
			t.Fatalf("duplicate %d: no Retry-After", i+1)
		}
	}
	up.open()
	owner := receive(t, answers, "the owner's answer")
	if owner.Code != http.StatusOK || owner.Header().Get("Idempotent-Replayed") != "" {
		t.Fatalf("owner: status %d, replayed %q, body %s", owner.Code, owner.Header().Get("Idempotent-Replayed"), owner.Body)
	}

	// The duplicates' retries, once the owner is done, replay its response.
	retries := sendDuplicates(t, h.Middleware(up), key, handlerDuplicates-1)
	for i := range handlerDuplicates - 1 {
		w := receive(t, retries, fmt.Sprintf("retry %d", i+1))
		if w.Code != http.StatusOK || w.Header().Get("Idempotent-Replayed") != "true" || w.Body.String() != owner.Body.String() {
			t.Fatalf("retry %d: status %d, replayed %q, body %s; want a replay of %s",
				i+1, w.Code, w.Header().Get("Idempotent-Replayed"), w.Body, owner.Body)
		}
	}
	if n := up.calls.Load(); n != 1 {
		t.Fatalf("%d upstream calls, want 1", n)
	}
}

// errorCode is the code of an answer in OpenAI's error envelope, or "".
func errorCode(w *httptest.ResponseRecorder) string {
	var env struct {
		Error struct {
			Type string `json:"type"`
			Code string `json:"code"`
		} `json:"error"`
	}
	if w.Header().Get("Content-Type") != "application/json" || json.Unmarshal(w.Body.Bytes(), &env) != nil ||
		env.Error.Type != "invalid_request_error" {
		return ""
	}
	return env.Error.Code
}
