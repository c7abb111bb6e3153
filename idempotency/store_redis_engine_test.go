package idempotency

import (
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/caddy-idempotency/caddy-idempotency/internal/redistest"
)

// The engine on a RedisStore: 50 concurrent duplicates, one upstream call,
// every client the same body.
func TestRedisConcurrentDuplicates(t *testing.T) {
	opts, err := redis.ParseURL(redistest.URL(t))
	if err != nil {
		t.Fatal(err)
	}
	client := redis.NewClient(opts)
	t.Cleanup(func() { _ = client.Close() })
	testConcurrentDuplicatesWait(t, NewRedisStore(client, RedisOptions{Prefix: "test:" + randomHex() + ":"}))
}
