package badgerstore

import (
	"bytes"
	"io/fs"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddy-idempotency/caddy-idempotency/idempotency"
)

// Expired records leave the disk even when no new writes come to push
// compactions through: the GC tick flattens once half the records are dead.
func TestBadgerGCReclaimsExpiredRecords(t *testing.T) {
	dir := t.TempDir()
	ctx := t.Context()
	resp := idempotency.Response{Status: 200, Header: http.Header{"Content-Type": {"application/json"}}}
	fill := func(s *Store, first, n int, expires time.Time) {
		t.Helper()
		for i := first; i < first+n; i++ {
			key, owner := idempotency.RecordKey{byte(i), byte(i >> 8), byte(i >> 16), 0x5c}, idempotency.NewOwnerToken()
			if _, owned, err := s.Begin(ctx, key, idempotency.Fingerprint{1}, owner, time.Minute); err != nil || !owned {
				t.Fatalf("Begin %d: owned %v, err %v", i, owned, err)
			}
			// Batch-sized and unique, so it stays in the LSM tree and compresses as real records do.
			resp.Body = append(bytes.Repeat([]byte{'b'}, 400), []byte(strings.Repeat(string(rune('a'+i%26)), 80))...)
			if err := s.Complete(ctx, key, owner, resp, time.Until(expires)); err != nil {
				t.Fatalf("Complete %d: %v", i, err)
			}
		}
	}
	open := func() *Store {
		t.Helper()
		s, err := Open(Options{Dir: dir, memTableSize: 1 << 20})
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		return s
	}
	reopen := func(s *Store) *Store { // Close flushes the memtable into a table
		t.Helper()
		if err := s.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		return open()
	}

	// The short-lived records go to the bottom level, the long-lived ones
	// above them, so the tree has two levels as a store in use does.
	// The short-lived ones expire together, after the Flatten that puts them
	// at the bottom (a compaction drops what has expired by then). Small
	// memtables make them span several tables, as a store in use does.
	s := open()
	const short, long = 6000, 600
	shortExpiry := time.Now().Add(8 * time.Second)
	fill(s, 0, short, shortExpiry)
	s = reopen(s)
	if err := s.db.Flatten(1); err != nil {
		t.Fatalf("Flatten: %v", err)
	}
	fill(s, short, long, time.Now().Add(time.Hour))
	s = reopen(s)
	defer s.Close()
	if time.Now().After(shortExpiry) {
		t.Fatal("setting up took longer than the short records live; the test needs a faster machine or a later shortExpiry")
	}

	time.Sleep(time.Until(shortExpiry) + 2*badgerTTLSlack)
	dead, total, err := s.countDead()
	if err != nil || dead != short || total != short+long {
		t.Fatalf("before GC: %d dead of %d, err %v; want %d of %d", dead, total, err, short, short+long)
	}
	before := tableBytes(t, dir)
	s.compactExpired()
	dead, total, err = s.countDead()
	if err != nil || dead != 0 || total != long {
		t.Fatalf("after GC: %d dead of %d, err %v; want 0 of %d", dead, total, err, long)
	}
	after := tableBytes(t, dir)
	t.Logf("tables: %d bytes before GC, %d after", before, after)
	if after*3 > before {
		t.Errorf("tables shrank from %d to %d bytes, want at least 3x smaller", before, after)
	}
	for i := short; i < short+long; i++ {
		if _, ok, err := s.Get(ctx, idempotency.RecordKey{byte(i), byte(i >> 8), byte(i >> 16), 0x5c}); err != nil || !ok {
			t.Fatalf("live record %d lost by GC: ok %v, err %v", i, ok, err)
		}
	}

	// Below half dead, nothing is rewritten.
	s.compactExpired()
	if got := tableBytes(t, dir); got != after {
		t.Errorf("a store with no dead records was rewritten: %d bytes, was %d", got, after)
	}
}

func tableBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var n int64
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || filepath.Ext(path) != ".sst" {
			return err
		}
		info, err := d.Info()
		if err == nil {
			n += info.Size()
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}
