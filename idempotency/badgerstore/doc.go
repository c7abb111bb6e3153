// Package badgerstore is an idempotency.Store in an embedded Badger
// database (github.com/dgraph-io/badger/v4): records survive a restart and a
// kill -9 of the process, and one process at a time holds a directory.
//
//	store, err := badgerstore.Open(badgerstore.Options{Dir: "/var/lib/gw/idempotency"})
//	if err != nil { ... }
//	defer store.Close()
//	h, err := idempotency.New(idempotency.Config{Store: store})
//
// The in-flight record is written before the request goes upstream and the
// completed one before the client sees the response; writes are not synced
// to disk, so a process kill loses nothing, an OS crash the last writes.
// A value-log GC runs every Options.GCInterval, and expired records are
// compacted away once they are half the store.
package badgerstore
