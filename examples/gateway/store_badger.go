//go:build !no_badger

package main

import (
	"errors"

	"go.uber.org/zap"

	"github.com/caddy-idempotency/caddy-idempotency/idempotency"
	"github.com/caddy-idempotency/caddy-idempotency/idempotency/badgerstore"
)

// The Badger store keeps records on disk: they survive a restart (and a
// kill -9). Badger locks its directory, so one process per directory.
func init() {
	openers["badger"] = func(o storeOptions, log *zap.Logger) (idempotency.Store, func() error, error) {
		if o.badgerDir == "" {
			return nil, nil, errors.New("-store badger needs -badger-dir")
		}
		s, err := badgerstore.Open(badgerstore.Options{Dir: o.badgerDir, Logger: log})
		if err != nil {
			return nil, nil, err
		}
		return s, s.Close, nil // Close stops its GC and flushes the database
	}
}
