// Package redisstore is an idempotency.Store in Redis or Valkey, through a
// go-redis client (github.com/redis/go-redis/v9): every process that uses the
// same server and key prefix shares the records, so a fleet of gateways runs
// each idempotency key at most once.
//
//	client := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379", ContextTimeoutEnabled: true})
//	defer client.Close()
//	h, err := idempotency.New(idempotency.Config{Store: redisstore.New(client, redisstore.Options{})})
//
// Each operation is one Lua script on one key, so it is atomic and a Redis
// Cluster routes it; leases and expiry use the Redis server's clock, so
// processes whose clocks disagree still agree on them. The caller owns the
// client; give it ContextTimeoutEnabled so a request's deadline bounds each
// store call.
package redisstore
