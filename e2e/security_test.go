package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/caddy-idempotency/caddy-idempotency/internal/batchesbackend"
)

// Another tenant's record is independent: other parameters under the same
// key are no conflict, and each tenant replays its own.
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

// Tenant B, using the key tenant A has in flight, neither waits for A, nor
// is told the key is in use, nor sees A's response: B's request runs as if A
// did not exist, so nothing about A (not even timing) shows through.
func TestTenantCannotSeeOrBlockAnotherTenantsKey(t *testing.T) {
	s := newStack(t, "store badger "+storeDir(t)+"\n\t\twait 5s")
	body := createBody(t, nil, "")
	const key = "shared-key"
	asA := []string{"Idempotency-Key", key, "Authorization", "Bearer sk-tenant-a"}
	asB := []string{"Idempotency-Key", key, "Authorization", "Bearer sk-tenant-b"}

	open := holdNextCreate(t, s.backend)
	aDone := make(chan reply, 1)
	go func() { aDone <- sendTo(t, s.client, http.MethodPost, s.url+"/v1/batches", body, asA...) }()
	waitFor(t, "tenant A's create upstream", func() bool { return s.backend.Requests() == 1 })

	// B's deadline is shorter than the wait: a B made to wait behind A fails
	// here, and does not wait on until A's end.
	start := time.Now()
	b, err := request(&http.Client{Timeout: 4 * time.Second, Transport: s.client.Transport}, http.MethodPost, s.url+"/v1/batches", body, asB...)
	took := time.Since(start)
	if err != nil {
		t.Fatalf("tenant B was held behind A: no answer after %s: %v", took, err)
	}
	bBatch := b.batch(t) // not 409 in_use, and not a wait for A
	if b.Header.Get("Idempotent-Replayed") != "" || took > 2*time.Second {
		t.Fatalf("tenant B was held or answered from A's record (replayed %q, took %s)", b.Header.Get("Idempotent-Replayed"), took)
	}
	// B's conflicts are against B's own record only.
	s.send(http.MethodPost, "/v1/batches", createBody(t, map[string]any{"input_file_id": "file-b"}, ""), asB...).
		apiError(t, http.StatusConflict, "idempotency_key_reused")

	open()
	aBatch := (<-aDone).batch(t)
	if aBatch.ID == bBatch.ID || s.backend.Creates() != 2 {
		t.Fatalf("tenants share a batch: A %s, B %s, creates %d", aBatch.ID, bBatch.ID, s.backend.Creates())
	}
	for _, c := range []struct {
		headers []string
		want    string
	}{{asA, aBatch.ID}, {asB, bBatch.ID}} {
		if got := s.send(http.MethodPost, "/v1/batches", body, c.headers...).batch(t); got.ID != c.want {
			t.Fatalf("replay got %s, want %s", got.ID, c.want)
		}
	}
}

// With Caddy at DEBUG, neither the handler's own log lines nor the access log
// (with the README's filter for the key header) carry a raw key or a
// credential, on every path: stored, replayed, reused, in flight, rejected,
// released, store down.
func TestLogsCarryNoKeyThroughCaddy(t *testing.T) {
	dir := t.TempDir()
	mainLog, accessLog := filepath.Join(dir, "caddy.log"), filepath.Join(dir, "access.log")
	globals := fmt.Sprintf("log {\n\t\toutput file %s\n\t\tlevel DEBUG\n\t}", mainLog)
	accessLogWithFilter := fmt.Sprintf(`	log {
		output file %s
		format filter {
			request>headers>Idempotency-Key hash
		}
	}
`, accessLog)
	s := newSiteStack(t, globals, func(upstream string) string {
		return accessLogWithFilter + idempotencySite("\t\tstore test_failing", upstream)
	})
	t.Cleanup(func() { storeDown.Store(false) })
	backend := s.backend

	const key, credential = "log-key-5e2f81", "sk-log-credential-77aa"
	auth := []string{"Authorization", "Bearer " + credential}
	body := createBody(t, nil, "")
	with := func(extra ...string) []string { return append(append([]string(nil), auth...), extra...) }
	s.send(http.MethodPost, "/v1/batches", body, with("Idempotency-Key", key)...).batch(t)                     // stored
	s.send(http.MethodPost, "/v1/batches", body, with("Idempotency-Key", key)...).batch(t)                     // replayed
	s.send(http.MethodPost, "/v1/batches", createBody(t, nil, key), auth...).batch(t)                          // replayed, key in the body
	s.send(http.MethodPost, "/v1/batches", createBody(t, map[string]any{"input_file_id": "f2"}, key), auth...) // reused
	s.send(http.MethodPost, "/v1/batches", `{"input_file_id":`, with("Idempotency-Key", key)...)               // invalid JSON
	s.send(http.MethodPost, "/v1/batches", body, with("Idempotency-Key", key+strings.Repeat("x", 300))...)     // bad key
	backend.SetFault(batchesbackend.Fault{Status: http.StatusInternalServerError, Times: 1})
	s.send(http.MethodPost, "/v1/batches", body, with("Idempotency-Key", key+"-released")...) // released
	storeDown.Store(true)
	s.send(http.MethodPost, "/v1/batches", body, with("Idempotency-Key", key+"-down")...) // store down
	storeDown.Store(false)

	// Reload to a config without the log files, so Caddy flushes and lets go of them.
	newStack(t, "store memory")

	handlerLines, accessLines, decisions := 0, 0, 0
	for _, file := range []string{mainLog, accessLog} {
		f, err := os.Open(file)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var entry struct {
				Logger    string `json:"logger"`
				Msg       string `json:"msg"`
				RequestID string `json:"request_id"`
			}
			if err := json.Unmarshal(sc.Bytes(), &entry); err != nil {
				t.Fatalf("%s: not a JSON log line: %s", file, sc.Text())
			}
			ours := strings.HasPrefix(entry.Logger, "http.handlers.idempotency")
			access := strings.HasPrefix(entry.Logger, "http.log.access")
			if ours {
				handlerLines++
			}
			// Each decision names its request by Caddy's request UUID.
			if ours && entry.Msg == "idempotency decision" {
				decisions++
				if len(entry.RequestID) != 36 {
					t.Errorf("decision line without Caddy's request UUID: %s", sc.Text())
				}
			}
			if access {
				accessLines++
			}
			if (ours || access) && (strings.Contains(sc.Text(), key) || strings.Contains(sc.Text(), credential)) {
				t.Errorf("log line leaks the key or the credential: %s", sc.Text())
			}
		}
		f.Close()
	}
	// The control: both logs really recorded these requests.
	if handlerLines < 7 || accessLines < 8 || decisions < 8 {
		t.Fatalf("only %d handler lines (%d decisions) and %d access log lines: the paths were not logged", handlerLines, decisions, accessLines)
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
