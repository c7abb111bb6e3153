package redisstore_test

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-idempotency/caddy-idempotency/idempotency"
	"github.com/caddy-idempotency/caddy-idempotency/idempotency/redisstore"
	"github.com/caddy-idempotency/caddy-idempotency/internal/redistest"
)

// batchResponse is a created batch as OpenAI returns it, with typical headers.
func batchResponse(i int) idempotency.Response {
	body := fmt.Sprintf(`{
  "id": "batch_%024d",
  "object": "batch",
  "endpoint": "/v1/chat/completions",
  "errors": null,
  "input_file_id": "file-%022d",
  "completion_window": "24h",
  "status": "validating",
  "output_file_id": null,
  "error_file_id": null,
  "created_at": 1714508499,
  "in_progress_at": null,
  "expires_at": 1714594899,
  "finalizing_at": null,
  "completed_at": null,
  "failed_at": null,
  "expired_at": null,
  "cancelling_at": null,
  "cancelled_at": null,
  "request_counts": {
    "total": 0,
    "completed": 0,
    "failed": 0
  },
  "metadata": {
    "customer_id": "user_123456789",
    "batch_description": "Nightly eval job for the summarisation model, run %d"
  },
  "model": "gpt-4o-mini-2024-07-18",
  "usage": null,
  "output_expires_after": null
}
`, i, i, i)
	for len(body) < 1200 { // pad the description to the size the brief measures
		body = strings.Replace(body, `run `, `run  `, 1)
	}
	return idempotency.Response{
		Status: http.StatusOK,
		Header: http.Header{
			"Content-Type":              {"application/json"},
			"Openai-Organization":       {"org-abcdefghijklmnopqrstuvwx"},
			"Openai-Processing-Ms":      {strconv.Itoa(100 + i%300)},
			"Openai-Version":            {"2020-10-01"},
			"X-Request-Id":              {fmt.Sprintf("req_%032x", i)},
			"Strict-Transport-Security": {"max-age=31536000; includeSubDomains; preload"},
			"Cf-Cache-Status":           {"DYNAMIC"},
			"Cf-Ray":                    {fmt.Sprintf("%016x-SJC", i)},
			"X-Content-Type-Options":    {"nosniff"},
			"Server":                    {"cloudflare"},
			"Alt-Svc":                   {`h3=":443"; ma=86400`},
		},
		Body: []byte(body),
	}
}

// TestRedisBytesPerRecord measures what a completed batch-create record
// costs in Redis: MEMORY USAGE per key and the used_memory growth per record.
func TestRedisBytesPerRecord(t *testing.T) {
	const n = 1000
	srv := redistest.Start(t) // a private server, so nothing else moves used_memory
	c := srv.Client(t)
	s := testRedisStore{redisstore.New(c, redisstore.Options{}), redisstore.DefaultPrefix}
	ctx := t.Context()
	usedMemory := func() int64 {
		info, err := c.Info(ctx, "memory").Result()
		if err != nil {
			t.Fatalf("INFO memory: %v", err)
		}
		for line := range strings.SplitSeq(info, "\r\n") {
			if v, ok := strings.CutPrefix(line, "used_memory:"); ok {
				n, err := strconv.ParseInt(v, 10, 64)
				if err != nil {
					t.Fatalf("used_memory %q: %v", v, err)
				}
				return n
			}
		}
		t.Fatalf("no used_memory in INFO memory:\n%s", info)
		return 0
	}

	// Warm the scripts and the connection pool so they do not count.
	k0, o0 := randomRecordKey(), idempotency.NewOwnerToken()
	mustRedisBegin(t, s, k0, idempotency.Fingerprint{}, o0, time.Minute)
	if err := s.Release(ctx, k0, o0); err != nil {
		t.Fatal(err)
	}
	base := usedMemory()

	keys := make([]idempotency.RecordKey, n)
	var valueBytes, respBody int
	var wg sync.WaitGroup
	errs := make(chan error, n)
	sem := make(chan struct{}, 8)
	for i := range keys {
		keys[i] = randomRecordKey()
		resp := batchResponse(i)
		respBody += len(resp.Body)
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			owner := idempotency.NewOwnerToken()
			if _, owned, err := s.Begin(ctx, keys[i], idempotency.Fingerprint{byte(i)}, owner, time.Minute); err != nil || !owned {
				errs <- fmt.Errorf("Begin %d: owned %v, err %v", i, owned, err)
				return
			}
			if err := s.Complete(ctx, keys[i], owner, resp, 24*time.Hour); err != nil {
				errs <- fmt.Errorf("Complete %d: %v", i, err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	grown := usedMemory() - base

	var usage int64
	for _, k := range keys {
		u, err := c.MemoryUsage(ctx, s.redisKey(k), 0).Result()
		if err != nil {
			t.Fatalf("MEMORY USAGE: %v", err)
		}
		usage += u
		v, err := c.StrLen(ctx, s.redisKey(k)).Result()
		if err != nil {
			t.Fatal(err)
		}
		valueBytes += int(v)
	}
	t.Logf("%d completed records, response body %d B avg, key %d B, stored value %d B avg",
		n, respBody/n, len(s.redisKey(keys[0])), valueBytes/n)
	t.Logf("MEMORY USAGE avg %d B/record; INFO used_memory grew %d B = %d B/record",
		usage/n, grown, grown/n)
	if usage/n < int64(respBody/n) || grown/n < int64(respBody/n) || grown/n > 8*int64(respBody/n) {
		t.Fatalf("implausible measurement: %d / %d B per record for %d B bodies", usage/n, grown/n, respBody/n)
	}
}
