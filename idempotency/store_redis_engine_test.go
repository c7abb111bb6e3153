package idempotency

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
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
	store := observe(NewRedisStore(client, RedisOptions{Prefix: "test:" + randomHex() + ":"}), concurrent-1)
	g := newGate()
	s := newStack(t, Config{Store: store, Wait: testTimeout}, g.respond)
	t.Cleanup(g.open)
	results := make(chan result, concurrent)
	for range concurrent {
		go func() { results <- s.send(context.Background(), createBody, withKey("k-herd")) }()
	}
	waitClosed(t, g.entered, "one request to reach upstream")
	waitClosed(t, store.reached, fmt.Sprintf("%d duplicates to find the key in flight", concurrent-1))
	g.open()
	var first []byte
	for range concurrent {
		r := recv(t, results, "a response")
		if r.err != nil {
			t.Fatal(r.err)
		}
		wantStatus(t, r, http.StatusOK)
		if first == nil {
			first = r.body
		} else if !bytes.Equal(r.body, first) {
			t.Fatalf("body %s, want %s like all others", r.body, first)
		}
	}
	s.up.wantCalls(t, 1)
}
