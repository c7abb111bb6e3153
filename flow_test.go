package caddyidempotency

import (
	"bytes"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/caddy-idempotency/caddy-idempotency/internal/batchesbackend"
)

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

// Fifty clients send the same create at once while the backend is slow:
// with wait, all of them get the one batch.
func TestConcurrentDuplicatesWait(t *testing.T) {
	s := newStack(t, "store badger "+storeDir(t)+"\n\t\twait 10s")
	release := make(chan struct{})
	s.backend.SetFault(batchesbackend.Fault{Block: release, Times: 1})
	replies := s.sendConcurrently(50, createBody(t, nil, ""), "Idempotency-Key", "dup-wait")
	waitFor(t, func() bool { return s.backend.Requests() == 1 }) // one owner upstream, the rest waiting
	time.Sleep(200 * time.Millisecond)                           // let the duplicates arrive and begin waiting
	close(release)
	first := <-replies
	first.batch(t)
	for i := 1; i < 50; i++ {
		if r := <-replies; r.Status != first.Status || !bytes.Equal(r.Body, first.Body) {
			t.Fatalf("client got %d %s, another got %d %s", r.Status, r.Body, first.Status, first.Body)
		}
	}
	if n := s.backend.Creates(); n != 1 {
		t.Fatalf("backend creates = %d, want 1", n)
	}
}

// Without wait, the duplicates are told to retry, and their retries replay.
func TestConcurrentDuplicatesNoWait(t *testing.T) {
	s := newStack(t, "wait 0\n\t\tstore badger "+storeDir(t))
	release := make(chan struct{})
	s.backend.SetFault(batchesbackend.Fault{Block: release, Times: 1})
	body := createBody(t, nil, "")

	owner := make(chan reply, 1)
	go func() { owner <- s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", "dup-nowait") }()
	waitFor(t, func() bool { return s.backend.Requests() == 1 }) // the owner is upstream now

	replies := s.sendConcurrently(49, body, "Idempotency-Key", "dup-nowait")
	for i := 0; i < 49; i++ {
		r := <-replies
		r.apiError(t, http.StatusConflict, "idempotency_key_in_use")
		if r.Header.Get("Retry-After") == "" || r.Header.Get("retry-after-ms") == "" || r.Header.Get("x-should-retry") != "true" {
			t.Fatalf("in-use headers missing: %v", r.Header)
		}
	}
	close(release)
	created := (<-owner).batch(t)
	replays := s.sendConcurrently(49, body, "Idempotency-Key", "dup-nowait")
	for i := 0; i < 49; i++ {
		r := <-replays
		if b := r.batch(t); b.ID != created.ID || r.Header.Get("Idempotent-Replayed") != "true" {
			t.Fatalf("retry got %s (replayed %q), want replay of %s", b.ID, r.Header.Get("Idempotent-Replayed"), created.ID)
		}
	}
	if n := s.backend.Creates(); n != 1 {
		t.Fatalf("backend creates = %d, want 1", n)
	}
}

func TestTenantsAreIndependent(t *testing.T) {
	s := newStack(t, "store badger "+storeDir(t))
	body := createBody(t, nil, "")
	a := s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", "shared", "Authorization", "Bearer sk-a").batch(t)
	// Other parameters under the same key: no conflict, since it is B's own record.
	b := s.send(http.MethodPost, "/v1/batches", createBody(t, map[string]any{"input_file_id": "file-b"}, ""),
		"Idempotency-Key", "shared", "Authorization", "Bearer sk-b").batch(t)
	if a.ID == b.ID || s.backend.Creates() != 2 {
		t.Fatalf("tenants share a record: %s %s, creates %d", a.ID, b.ID, s.backend.Creates())
	}
	if again := s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", "shared", "Authorization", "Bearer sk-a").batch(t); again.ID != a.ID {
		t.Fatalf("tenant A replayed %s, want %s", again.ID, a.ID)
	}
}

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

func TestReplayDropsPerClientHeaders(t *testing.T) {
	s := newStack(t, "store badger "+storeDir(t))
	body := createBody(t, nil, "")
	first := s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", "k-headers")
	first.batch(t)
	replay := s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", "k-headers")
	if first.Header.Get("Set-Cookie") == "" || replay.Header.Get("Set-Cookie") != "" {
		t.Fatalf("Set-Cookie: first %q, replay %q", first.Header.Get("Set-Cookie"), replay.Header.Get("Set-Cookie"))
	}
	if replay.Header.Get("X-Request-Id") != first.Header.Get("X-Request-Id") || replay.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("stored headers not replayed: %v", replay.Header)
	}
	if !bytes.Equal(first.Body, replay.Body) {
		t.Fatalf("bodies differ")
	}
}

// A reload builds a new handler on the same Badger directory; records stay.
func TestReplayAfterConfigReload(t *testing.T) {
	dir := storeDir(t)
	s := newStack(t, "store badger "+dir)
	body := createBody(t, nil, "")
	created := s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", "k-reload").batch(t)

	s.load("store badger "+dir+"\n\t\tttl 48h", s.upstream) // another setting, so it is a real reload
	r := s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", "k-reload")
	if b := r.batch(t); b.ID != created.ID || r.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("after reload got %s, want replay of %s", b.ID, created.ID)
	}
}

// sendConcurrently sends n identical requests at once; replies arrive on the channel.
func (s *stack) sendConcurrently(n int, body string, headers ...string) <-chan reply {
	out := make(chan reply, n)
	var start sync.WaitGroup
	start.Add(1)
	for i := 0; i < n; i++ {
		go func() {
			start.Wait()
			out <- sendTo(s.t, s.client, http.MethodPost, s.url+"/v1/batches", body, headers...)
		}()
	}
	start.Done()
	return out
}

// waitFor polls cond until it holds, failing after 10s.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Neither the client's key nor its credential may reach the store.
func TestSecretsNeverStored(t *testing.T) {
	dir := storeDir(t)
	s := newStack(t, "store badger "+dir)
	const key, credential = "key-3f9a7c1e-visible", "sk-secret-credential-8d2b"
	body := createBody(t, nil, "")
	created := s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", key, "Authorization", "Bearer "+credential).batch(t)
	s.send(http.MethodPost, "/v1/batches", createBody(t, nil, key+"-field"), "Authorization", "Bearer "+credential).batch(t)

	// Every key and value in the database, once a reload has released it.
	s.load("store memory", s.upstream)
	db, err := badger.Open(badger.DefaultOptions(dir).WithLogger(nil))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var entries int
	sawRecord := false // the control: the stored response is in here
	err = db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.DefaultIteratorOptions)
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			v, err := it.Item().ValueCopy(nil)
			if err != nil {
				return err
			}
			entries++
			entry := append(it.Item().KeyCopy(nil), v...)
			sawRecord = sawRecord || bytes.Contains(entry, []byte(created.ID))
			for _, secret := range []string{key, credential, "backend_session"} {
				if bytes.Contains(entry, []byte(secret)) {
					t.Errorf("a stored entry holds %q", secret)
				}
			}
		}
		return nil
	})
	if err != nil || entries != 2 || !sawRecord {
		t.Fatalf("scanning the store: %d entries (want 2), stored batch found %v, %v", entries, sawRecord, err)
	}
}
