package main

import (
	"fmt"
	"slices"
	"strings"

	"go.uber.org/zap"

	"github.com/caddy-idempotency/caddy-idempotency/idempotency"
)

// storeOptions are the flags that choose and open the store.
type storeOptions struct {
	kind        string // a key of openers
	badgerDir   string
	redisURL    string
	redisPrefix string
}

// opener opens a store; closeStore releases it once the server has stopped.
type opener func(o storeOptions, log *zap.Logger) (store idempotency.Store, closeStore func() error, err error)

// openers holds the stores built into this binary. The memory store is
// always there; store_badger.go and store_redis.go add theirs from init,
// unless the build tag below leaves their file, and its imports, out.
var openers = map[string]opener{
	"memory": func(storeOptions, *zap.Logger) (idempotency.Store, func() error, error) {
		// One process only, and every record is lost on restart.
		s := idempotency.NewMemoryStore()
		return s, s.Close, nil
	},
}

// leftOutBy names the build tag that leaves each optional store out.
var leftOutBy = map[string]string{"badger": "no_badger", "redis": "no_redis"}

func openStore(o storeOptions, log *zap.Logger) (idempotency.Store, func() error, error) {
	open, ok := openers[o.kind]
	switch {
	case ok:
		return open(o, log.Named("store"))
	case leftOutBy[o.kind] != "":
		return nil, nil, fmt.Errorf("-store %s: this binary was built with -tags %s, which leaves the %s store out; it has %s",
			o.kind, leftOutBy[o.kind], o.kind, storeNames())
	}
	return nil, nil, fmt.Errorf("-store %q: unknown store; this binary has %s", o.kind, storeNames())
}

// storeNames lists the stores built in, for messages and -help.
func storeNames() string {
	names := make([]string, 0, len(openers))
	for name := range openers {
		names = append(names, name)
	}
	slices.Sort(names)
	return strings.Join(names, ", ")
}
