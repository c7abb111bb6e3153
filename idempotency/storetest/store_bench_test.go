package storetest_test

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/caddy-idempotency/caddy-idempotency/idempotency"
	"github.com/caddy-idempotency/caddy-idempotency/idempotency/badgerstore"
	"github.com/caddy-idempotency/caddy-idempotency/idempotency/redisstore"
	"github.com/caddy-idempotency/caddy-idempotency/internal/redistest"
)

// BenchmarkStore measures each store's Begin, Complete and Get as the
// handler calls them: Begin of a new key and Complete with a batch-sized
// response (a first request), Get and Begin of a completed record (a replay
// calls Begin, which finds the record). Parallel variants share one store;
// the *CompletedParallel ones hit one hot key, as a retried request does.
func BenchmarkStore(b *testing.B) {
	stores := []struct {
		name string
		open func(b *testing.B) idempotency.Store
		// rotate: swap in an empty store every rotateEvery new keys, so the
		// memory store's map stays at a realistic size instead of growing
		// with b.N (it only sweeps every 30s).
		rotate bool
	}{
		{"memory", func(b *testing.B) idempotency.Store { return idempotency.NewMemoryStore() }, true},
		{"badger", openBenchBadger, false},
		{"redis", openBenchRedis, false},
	}
	ops := []struct {
		name string
		fn   func(b *testing.B, ref *storeRef)
	}{
		{"Begin", benchBegin},
		{"BeginParallel", benchBeginParallel},
		{"Complete", benchComplete},
		{"BeginComplete", benchBeginComplete},
		{"BeginCompleteParallel", benchBeginCompleteParallel},
		{"GetCompleted", benchGetCompleted},
		{"GetCompletedParallel", benchGetCompletedParallel},
		{"BeginCompleted", benchBeginCompleted},
		{"BeginCompletedParallel", benchBeginCompletedParallel},
	}
	for _, st := range stores {
		b.Run(st.name, func(b *testing.B) {
			ref := &storeRef{open: st.open, tb: b, rotate: st.rotate}
			ref.cur.Store(&storeHolder{s: st.open(b)})
			for _, op := range ops {
				b.Run(op.name, func(b *testing.B) { op.fn(b, ref) })
			}
		})
	}
}

const (
	benchLease     = time.Minute
	benchTTL       = time.Hour
	rotateEvery    = 1 << 16
	completeChunk  = 1024
	benchRedisPool = 16
)

// benchResponse is about the size of a batch object the upstream returns.
var benchResponse = idempotency.Response{
	Status: http.StatusOK,
	Header: http.Header{"Content-Type": {"application/json"}, "X-Request-Id": {"req_5f0c2a9e8b7d4c3a"}},
	Body: []byte(`{"id":"batch_abc123def456ghi789jkl012","object":"batch","endpoint":"/v1/chat/completions",` +
		`"errors":null,"input_file_id":"file-abc123def456ghi789jkl012","completion_window":"24h",` +
		`"status":"validating","output_file_id":null,"error_file_id":null,"created_at":1764072000,` +
		`"in_progress_at":null,"expires_at":1764158400,"finalizing_at":null,"completed_at":null,` +
		`"failed_at":null,"expired_at":null,"cancelling_at":null,"cancelled_at":null,` +
		`"request_counts":{"total":0,"completed":0,"failed":0},` +
		`"metadata":{"customer_id":"cus_0123456789","description":"nightly eval job","team":"platform",` +
		`"trace":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}}`),
}

type storeHolder struct{ s idempotency.Store }

// storeRef is the store under test; for the memory store, keys() swaps in a
// fresh one every rotateEvery keys (the old one is dropped to the GC).
type storeRef struct {
	open   func(b *testing.B) idempotency.Store
	tb     *testing.B
	rotate bool
	cur    atomic.Pointer[storeHolder]
	n      atomic.Uint64
	once   sync.Once
	base   [24]byte
}

func (r *storeRef) store() idempotency.Store { return r.cur.Load().s }

// newKey returns a key no earlier call returned (random base, counter) and
// the store to use it with.
func (r *storeRef) newKey() (idempotency.Store, idempotency.RecordKey) {
	r.once.Do(func() { _, _ = rand.Read(r.base[:]) })
	n := r.n.Add(1)
	if r.rotate && n%rotateEvery == 0 {
		r.cur.Store(&storeHolder{s: r.open(r.tb)})
	}
	var k idempotency.RecordKey
	copy(k[:], r.base[:])
	binary.BigEndian.PutUint64(k[24:], n)
	return r.store(), k
}

func openBenchBadger(b *testing.B) idempotency.Store {
	s, err := badgerstore.Open(badgerstore.Options{Dir: b.TempDir()})
	if err != nil {
		b.Fatalf("badgerstore.Open: %v", err)
	}
	b.Cleanup(func() { _ = s.Close() })
	return s
}

func openBenchRedis(b *testing.B) idempotency.Store {
	opts, err := redis.ParseURL(redistest.URL(b))
	if err != nil {
		b.Fatalf("parse redis URL: %v", err)
	}
	opts.ContextTimeoutEnabled = true
	opts.PoolSize = benchRedisPool
	c := redis.NewClient(opts)
	b.Cleanup(func() { _ = c.Close() })
	return redisstore.New(c, redisstore.Options{Prefix: "bench:" + rand.Text() + ":"})
}

func begin(ctx context.Context, s idempotency.Store, key idempotency.RecordKey, owner idempotency.OwnerToken, wantOwned bool) error {
	_, owned, err := s.Begin(ctx, key, idempotency.Fingerprint{1}, owner, benchLease)
	if err != nil {
		return fmt.Errorf("Begin: %w", err)
	}
	if owned != wantOwned {
		return fmt.Errorf("Begin owned = %v, want %v", owned, wantOwned)
	}
	return nil
}

func complete(ctx context.Context, s idempotency.Store, key idempotency.RecordKey, owner idempotency.OwnerToken) error {
	if err := s.Complete(ctx, key, owner, benchResponse, benchTTL); err != nil {
		return fmt.Errorf("Complete: %w", err)
	}
	return nil
}

// beginComplete is a first request's store calls.
func beginComplete(ctx context.Context, s idempotency.Store, key idempotency.RecordKey, owner idempotency.OwnerToken) error {
	if err := begin(ctx, s, key, owner, true); err != nil {
		return err
	}
	return complete(ctx, s, key, owner)
}

func benchBegin(b *testing.B, ref *storeRef) {
	ctx, owner := b.Context(), idempotency.NewOwnerToken()
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		s, key := ref.newKey()
		if err := begin(ctx, s, key, owner, true); err != nil {
			b.Fatal(err)
		}
	}
}

func benchBeginParallel(b *testing.B, ref *storeRef) {
	ctx, owner := b.Context(), idempotency.NewOwnerToken()
	runParallel(b, func() error {
		s, key := ref.newKey()
		return begin(ctx, s, key, owner, true)
	})
}

// benchComplete times Complete alone: records are begun in untimed chunks.
func benchComplete(b *testing.B, ref *storeRef) {
	ctx, owner := b.Context(), idempotency.NewOwnerToken()
	keys := make([]idempotency.RecordKey, 0, completeChunk)
	stores := make([]idempotency.Store, 0, completeChunk)
	b.ReportAllocs()
	b.ResetTimer()
	for done := 0; done < b.N; {
		b.StopTimer()
		keys, stores = keys[:0], stores[:0]
		for range min(completeChunk, b.N-done) {
			s, key := ref.newKey()
			if err := begin(ctx, s, key, owner, true); err != nil {
				b.Fatal(err)
			}
			keys, stores = append(keys, key), append(stores, s)
		}
		b.StartTimer()
		for i, key := range keys {
			if err := complete(ctx, stores[i], key, owner); err != nil {
				b.Fatal(err)
			}
		}
		done += len(keys)
	}
}

func benchBeginComplete(b *testing.B, ref *storeRef) {
	ctx, owner := b.Context(), idempotency.NewOwnerToken()
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		s, key := ref.newKey()
		if err := beginComplete(ctx, s, key, owner); err != nil {
			b.Fatal(err)
		}
	}
}

func benchBeginCompleteParallel(b *testing.B, ref *storeRef) {
	ctx, owner := b.Context(), idempotency.NewOwnerToken()
	runParallel(b, func() error {
		s, key := ref.newKey()
		return beginComplete(ctx, s, key, owner)
	})
}

// completedKey stores one completed record and returns its store and key.
func completedKey(b *testing.B, ref *storeRef) (idempotency.Store, idempotency.RecordKey) {
	s, key := ref.newKey()
	if err := beginComplete(b.Context(), s, key, idempotency.NewOwnerToken()); err != nil {
		b.Fatal(err)
	}
	return s, key
}

func benchGetCompleted(b *testing.B, ref *storeRef) {
	s, key := completedKey(b, ref)
	ctx := b.Context()
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if err := getCompleted(ctx, s, key); err != nil {
			b.Fatal(err)
		}
	}
}

func benchGetCompletedParallel(b *testing.B, ref *storeRef) {
	s, key := completedKey(b, ref)
	ctx := b.Context()
	runParallel(b, func() error { return getCompleted(ctx, s, key) })
}

func benchBeginCompleted(b *testing.B, ref *storeRef) {
	s, key := completedKey(b, ref)
	ctx, owner := b.Context(), idempotency.NewOwnerToken()
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if err := begin(ctx, s, key, owner, false); err != nil {
			b.Fatal(err)
		}
	}
}

func benchBeginCompletedParallel(b *testing.B, ref *storeRef) {
	s, key := completedKey(b, ref)
	ctx, owner := b.Context(), idempotency.NewOwnerToken()
	runParallel(b, func() error { return begin(ctx, s, key, owner, false) })
}

// runParallel runs op b.N times over GOMAXPROCS goroutines; the first error
// fails b (Error, not Fatal: these are not the benchmark's goroutine).
func runParallel(b *testing.B, op func() error) {
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := op(); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func getCompleted(ctx context.Context, s idempotency.Store, key idempotency.RecordKey) error {
	rec, ok, err := s.Get(ctx, key)
	if err != nil || !ok || rec.State != idempotency.StateCompleted {
		return fmt.Errorf("Get = %v, %v, %v; want a completed record", rec.State, ok, err)
	}
	return nil
}
