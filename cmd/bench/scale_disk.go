package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/caddy-idempotency/caddy-idempotency/idempotency/badgerstore"
)

// collect measures what reclaims the disk of the large store once its bulk
// records expired. Each candidate starts from a copy of the same expired
// store: the product as it is (badgerstore.Open: its GC tick and Badger's
// compactors) open for gcWindow; db.Flatten; deleting the expired keys, open
// for gcWindow, then db.Flatten.
func (sr scaleRun) collect(s *scaleStore, rep *scaleReport) error {
	flattenDir, sweepDir := s.dir+"-flatten", s.dir+"-sweep"
	for _, d := range []string{flattenDir, sweepDir} {
		if err := copyDir(s.dir, d); err != nil {
			return err
		}
	}
	var t0 time.Time
	// Only the product's own step runs its GC tick (every sr.gcInterval); the
	// others open the store with the tick an hour away, so it cannot act.
	steps := []struct {
		dir, step string
		do        func(db *badger.DB) (time.Duration, error)
		product   bool
	}{
		{s.dir, "expired, before GC: a scan for dead keys", func(db *badger.DB) (time.Duration, error) {
			t0 = time.Now()
			_, err := countDead(db)
			return time.Since(t0), err
		}, false},
		{s.dir, fmt.Sprintf("product as is: open %s, its GC tick every %s", sr.gcWindow, sr.gcInterval), func(db *badger.DB) (time.Duration, error) {
			time.Sleep(sr.gcWindow)
			return sr.gcWindow, nil
		}, true},
		{flattenDir, "db.Flatten(2)", flatten, false},
		{sweepDir, "delete the expired keys (sweep), then open " + sr.gcWindow.String(), func(db *badger.DB) (time.Duration, error) {
			t0 = time.Now()
			n, err := deleteExpired(db)
			took := time.Since(t0)
			rep.swept = n
			time.Sleep(sr.gcWindow)
			return took, err
		}, false},
		{sweepDir, "then reopen, db.Flatten(2)", flatten, false},
	}
	for _, step := range steps {
		gcInterval := time.Hour
		if step.product {
			gcInterval = sr.gcInterval
		}
		row, err := sr.gcStep(step.dir, step.step, step.product, gcInterval, step.do)
		if err != nil {
			return fmt.Errorf("%s: %w", step.step, err)
		}
		rep.gc = append(rep.gc, row)
	}
	rep.expired = rep.gc[0].dead
	return nil
}

func flatten(db *badger.DB) (time.Duration, error) {
	t0 := time.Now()
	err := db.Flatten(2)
	return time.Since(t0), err
}

// gcStep opens the store in dir as the product does (with a GC period of
// gcInterval) for the product step, and as a plain Badger database for the
// others, runs do (given nil for the product), measures the disk while open
// and after closing, and reopens it to count the dead keys still stored.
func (sr scaleRun) gcStep(dir, step string, product bool, gcInterval time.Duration, do func(db *badger.DB) (time.Duration, error)) (gcRow, error) {
	row := gcRow{step: step}
	var (
		db      *badger.DB // nil for the product, whose store keeps its database to itself
		closeDB func() error
	)
	if product {
		// The product as it is: its own store, GC tick and compactors.
		st, err := badgerstore.Open(badgerstore.Options{Dir: dir, GCInterval: gcInterval})
		if err != nil {
			return row, err
		}
		closeDB = st.Close
	} else {
		raw, err := openRawBadger(dir)
		if err != nil {
			return row, err
		}
		db, closeDB = raw, raw.Close
	}
	var err error
	row.took, err = do(db)
	if err == nil {
		row.open, err = du(dir)
	}
	if cerr := closeDB(); err == nil {
		err = cerr
	}
	if err != nil {
		return row, err
	}
	if row.disk, err = du(dir); err != nil {
		return row, err
	}
	if db, err = openRawBadger(dir); err != nil {
		return row, err
	}
	defer db.Close()
	row.levels = levels(db)
	row.dead, err = countDead(db)
	return row, err
}

// countDead counts the keys whose newest version is expired or deleted but
// still stored: an iterator over all versions shows them, Get does not.
func countDead(db *badger.DB) (int, error) {
	n := 0
	err := eachNewest(db, func(item *badger.Item) {
		if item.IsDeletedOrExpired() {
			n++
		}
	})
	return n, err
}

// eachNewest calls fn with the newest stored version of every key, live or
// not, without reading values.
func eachNewest(db *badger.DB, fn func(*badger.Item)) error {
	return db.View(func(txn *badger.Txn) error {
		opt := badger.DefaultIteratorOptions
		opt.AllVersions, opt.PrefetchValues = true, false
		it := txn.NewIterator(opt)
		defer it.Close()
		var last []byte
		for it.Rewind(); it.Valid(); it.Next() {
			item := it.Item()
			if last != nil && bytes.Equal(item.Key(), last) {
				continue // an older version
			}
			last = item.KeyCopy(last)
			fn(item)
		}
		return nil
	})
}

// deleteExpired is a sweep a store could run: it finds the keys whose newest
// version has expired and deletes them, 1,000 to a transaction that reads
// each first, so that a key written again meanwhile (a new request reusing
// it) makes the transaction conflict instead of losing the new record. The
// tombstones let compactions drop the records, which they otherwise keep
// until a compaction happens to rewrite their table.
func deleteExpired(db *badger.DB) (int, error) {
	var keys [][]byte
	err := eachNewest(db, func(item *badger.Item) {
		if item.IsDeletedOrExpired() && item.ExpiresAt() != 0 {
			keys = append(keys, item.KeyCopy(nil))
		}
	})
	if err != nil {
		return 0, err
	}
	deleted := 0
	for len(keys) > 0 {
		batch := keys[:min(1000, len(keys))]
		keys = keys[len(batch):]
		n := 0
		err := db.Update(func(txn *badger.Txn) error {
			n = 0
			for _, k := range batch {
				if _, err := txn.Get(k); !errors.Is(err, badger.ErrKeyNotFound) {
					if err != nil {
						return err
					}
					continue // live again
				}
				if err := txn.Delete(k); err != nil {
					return err
				}
				n++
			}
			return nil
		})
		switch {
		case errors.Is(err, badger.ErrConflict):
			// A key of the batch was written meanwhile: the next sweep retries.
		case err != nil:
			return deleted, err
		default:
			deleted += n
		}
	}
	return deleted, nil
}

// copyDir copies the files of the closed store in src into a new dst.
func copyDir(src, dst string) error {
	if err := os.MkdirAll(dst, 0o700); err != nil {
		return err
	}
	entries, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		if err := copyFile(filepath.Join(src, e.Name()), filepath.Join(dst, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

// copyFile copies src to dst keeping it sparse: Badger preallocates files
// (DISCARD, the memtable logs) as holes, which a plain copy would fill.
func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	var size int64
	buf := make([]byte, 64<<10)
	for {
		n, rerr := io.ReadFull(in, buf)
		if n > 0 {
			if bytes.Count(buf[:n], []byte{0}) == n {
				_, err = out.Seek(int64(n), io.SeekCurrent)
			} else {
				_, err = out.Write(buf[:n])
			}
			size += int64(n)
		}
		if err == nil && rerr != nil && rerr != io.EOF && rerr != io.ErrUnexpectedEOF {
			err = rerr
		}
		if err != nil || rerr != nil {
			break
		}
	}
	if err == nil {
		err = out.Truncate(size)
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return err
}

// levels lists the non-empty LSM levels as L<level>:<tables>/<size>.
func levels(db *badger.DB) string {
	var parts []string
	for _, l := range db.Levels() {
		if l.NumTables > 0 {
			parts = append(parts, fmt.Sprintf("L%d:%d/%s", l.Level, l.NumTables, mib(l.Size)))
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, " ")
}

// diskUsage is a directory's allocated bytes by kind of Badger file.
type diskUsage struct{ sst, vlog, other int64 }

func (d diskUsage) total() int64 { return d.sst + d.vlog + d.other }

// du sums the blocks allocated to the files in dir (their size where the
// platform does not say), so preallocated sparse files count as they use.
func du(dir string) (diskUsage, error) {
	var d diskUsage
	err := filepath.WalkDir(dir, func(path string, e os.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		info, err := e.Info()
		if err != nil {
			return err
		}
		n := info.Size()
		if v := reflect.Indirect(reflect.ValueOf(info.Sys())); v.IsValid() && v.Kind() == reflect.Struct {
			if b := v.FieldByName("Blocks"); b.IsValid() && b.CanInt() {
				n = b.Int() * 512
			}
		}
		switch filepath.Ext(path) {
		case ".sst":
			d.sst += n
		case ".vlog":
			d.vlog += n
		default:
			d.other += n
		}
		return nil
	})
	return d, err
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

func kib(kB int64) string { return mib(kB << 10) }
