//go:build !no_redis

package main

import (
	"context"
	"fmt"
	"net/url"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/caddy-idempotency/caddy-idempotency/idempotency"
	"github.com/caddy-idempotency/caddy-idempotency/idempotency/redisstore"
)

// The Redis store is shared by every instance that uses the same server and
// prefix: the one to use for a fleet. Give every instance the same
// -namespace too, since the default one names each instance's own port.
func init() {
	openers["redis"] = func(o storeOptions, log *zap.Logger) (idempotency.Store, func() error, error) {
		opts, err := redis.ParseURL(o.redisURL)
		if err != nil {
			if ue, ok := err.(*url.Error); ok {
				err = ue.Err // url.Error repeats the URL, password and all
			}
			return nil, nil, fmt.Errorf("-redis-url: %w", err)
		}
		// Without it go-redis bounds a call by its own read and write
		// timeouts only, and ignores the request's deadline.
		opts.ContextTimeoutEnabled = true
		// Any redis.UniversalClient will do: a cluster or sentinel client too.
		client := redis.NewClient(opts)
		redis.SetLogger(redisLogger{log.Named("redis")}) // go-redis logs through the standard log package otherwise

		// Fail at start, not on the first keyed request. Without this check
		// the gateway starts while Redis is down, and keyed requests get 503
		// idempotency_store_unavailable until it is back.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := client.Ping(ctx).Err(); err != nil {
			_ = client.Close()
			return nil, nil, fmt.Errorf("redis at %s: %w", opts.Addr, err)
		}
		// The store does not own the client: closing it is ours to do.
		return redisstore.New(client, redisstore.Options{Prefix: o.redisPrefix, Logger: log}), client.Close, nil
	}
}

// redisLogger takes go-redis's own messages (failed dials, say) into zap.
type redisLogger struct{ log *zap.Logger }

func (l redisLogger) Printf(_ context.Context, format string, v ...any) {
	l.log.Warn(fmt.Sprintf(format, v...))
}
