package idempotency

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// DefaultRedisPrefix namespaces the store's keys when RedisOptions.Prefix is empty.
const DefaultRedisPrefix = "caddy-idempotency:"

// redisRecordLayout: each record is one Redis string under
// prefix + "r:" + hex(RecordKey), expiring with the record (PX): a completed
// record at its ExpiresAt, an in-flight one inFlightRetention past its lease.
// Its value, times as big-endian int64 Unix ms of the Redis server's clock:
//
//	offset  size
//	0       1    format, 1
//	1       1    state: 1 in flight, 2 completed
//	2       32   fingerprint
//	34      8    createdAt
//	42      8    in flight: leaseUntil; completed: expiresAt
//	50      16   in flight: owner token (the value ends here, 66 bytes)
//	50      ...  completed: response, encoded as in record_codec.go
//	             (status varint, headers, body), then one byte
//	             redisResponseNotStored when its body was not kept
const (
	redisFormat      = 1
	redisHeaderLen   = 50
	redisInFlightLen = redisHeaderLen + len(Token{})
)

// RedisOptions configure NewRedisStore.
type RedisOptions struct {
	Prefix string      // key prefix; "" → DefaultRedisPrefix
	Logger *zap.Logger // nil → zap.NewNop()
}

// RedisStore is a Store in Redis (or Valkey), shared by every Caddy instance
// that uses the same server and prefix. Each operation is one Lua script on
// one key, atomic in Redis and routable in a cluster; leases and expiry use
// the Redis server's clock. Any Redis or network error is returned wrapped.
type RedisStore struct {
	client redis.UniversalClient
	prefix string
	log    *zap.Logger
}

var _ Store = (*RedisStore)(nil)

// NewRedisStore returns a store using client, which it does not own: the
// caller closes the client when done; the store itself needs no Close.
// Give the client ContextTimeoutEnabled, or go-redis bounds each call by its
// own ReadTimeout/WriteTimeout only and ignores the context's deadline.
func NewRedisStore(client redis.UniversalClient, opts RedisOptions) *RedisStore {
	prefix := opts.Prefix
	if prefix == "" {
		prefix = DefaultRedisPrefix
	}
	log := opts.Logger
	if log == nil {
		log = zap.NewNop()
	}
	return &RedisStore{client: client, prefix: prefix, log: log}
}

// redisKey is the Redis key holding key's record.
func (s *RedisStore) redisKey(key RecordKey) string { return s.prefix + "r:" + key.String() }

func (s *RedisStore) Begin(ctx context.Context, key RecordKey, fp Fingerprint, owner Token, lease time.Duration) (Record, bool, error) {
	res, err := s.run(ctx, redisBegin, "begin", key, fp[:], owner[:], millis(lease), millis(inFlightRetention))
	if err != nil {
		return Record{}, false, err
	}
	arr, ok := res.([]any)
	if !ok || len(arr) != 2 {
		return Record{}, false, s.badReply("begin", key, res)
	}
	owned, ok1 := arr[0].(int64)
	value, ok2 := arr[1].(string)
	if !ok1 || !ok2 {
		return Record{}, false, s.badReply("begin", key, res)
	}
	rec, err := s.decode(key, value)
	if err != nil {
		return Record{}, false, err
	}
	return rec, owned == 1, nil
}

func (s *RedisStore) Renew(ctx context.Context, key RecordKey, owner Token, lease time.Duration) error {
	return s.runOwned(ctx, redisRenew, "renew", key, owner[:], millis(lease), millis(inFlightRetention))
}

func (s *RedisStore) Complete(ctx context.Context, key RecordKey, owner Token, resp Response, ttl time.Duration) error {
	encoded, err := appendRedisResponse(nil, &resp)
	if err != nil {
		return err
	}
	return s.runOwned(ctx, redisComplete, "complete", key, owner[:], millis(ttl), millis(inFlightRetention), encoded)
}

func (s *RedisStore) Release(ctx context.Context, key RecordKey, owner Token) error {
	return s.runOwned(ctx, redisRelease, "release", key, owner[:], millis(inFlightRetention))
}

func (s *RedisStore) Get(ctx context.Context, key RecordKey) (Record, bool, error) {
	res, err := s.run(ctx, redisGet, "get", key)
	if err != nil {
		return Record{}, false, err
	}
	arr, ok := res.([]any)
	if !ok || len(arr) > 1 {
		return Record{}, false, s.badReply("get", key, res)
	}
	if len(arr) == 0 {
		return Record{}, false, nil
	}
	value, ok := arr[0].(string)
	if !ok {
		return Record{}, false, s.badReply("get", key, res)
	}
	rec, err := s.decode(key, value)
	if err != nil {
		return Record{}, false, err
	}
	return rec, true, nil
}

// run runs script on key's Redis key (EVALSHA, falling back to EVAL when
// the server does not have it cached).
func (s *RedisStore) run(ctx context.Context, script *redis.Script, op string, key RecordKey, args ...any) (any, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	res, err := script.Run(ctx, s.client, []string{s.redisKey(key)}, args...).Result()
	if err != nil {
		// A deadline reached while reading surfaces as a network timeout;
		// name the context's reason too, for errors.Is.
		if cerr := ctx.Err(); cerr != nil && !errors.Is(err, cerr) {
			return nil, fmt.Errorf("idempotency: redis %s of record %s: %w: %w", op, key, cerr, err)
		}
		return nil, fmt.Errorf("idempotency: redis %s of record %s: %w", op, key, err)
	}
	return res, nil
}

// runOwned runs a script that answers 1 when owner held the record, 0 when not.
func (s *RedisStore) runOwned(ctx context.Context, script *redis.Script, op string, key RecordKey, args ...any) error {
	res, err := s.run(ctx, script, op, key, args...)
	if err != nil {
		return err
	}
	switch res {
	case int64(1):
		return nil
	case int64(0):
		return ErrNotOwner
	}
	return s.badReply(op, key, res)
}

func (s *RedisStore) badReply(op string, key RecordKey, res any) error {
	return fmt.Errorf("idempotency: redis %s of record %s: unexpected reply %T %v", op, key, res, res)
}

func (s *RedisStore) decode(key RecordKey, value string) (Record, error) {
	rec, err := decodeRedisRecord([]byte(value))
	if err != nil {
		s.log.Warn("idempotency: undecodable record in redis", zap.String("key", s.redisKey(key)), zap.Error(err))
		return Record{}, fmt.Errorf("idempotency: decode redis record %s: %w", key, err)
	}
	return rec, nil
}

func decodeRedisRecord(v []byte) (Record, error) {
	if len(v) < redisHeaderLen {
		return Record{}, errRecordTruncated
	}
	if v[0] != redisFormat {
		return Record{}, fmt.Errorf("idempotency: unknown redis record format %d", v[0])
	}
	rec := Record{State: State(v[1])}
	copy(rec.Fingerprint[:], v[2:34])
	rec.CreatedAt = time.UnixMilli(int64(binary.BigEndian.Uint64(v[34:42])))
	at := time.UnixMilli(int64(binary.BigEndian.Uint64(v[42:50])))
	switch rec.State {
	case StateInFlight:
		if len(v) != redisInFlightLen {
			return Record{}, fmt.Errorf("idempotency: in-flight redis record of %d bytes, want %d", len(v), redisInFlightLen)
		}
		rec.LeaseUntil = at
		copy(rec.Owner[:], v[redisHeaderLen:])
	case StateCompleted:
		rec.ExpiresAt = at
		d := decoder{buf: v[redisHeaderLen:]}
		rec.Response = d.response()
		if d.err == nil && len(d.buf) == 1 { // the optional flags byte
			if d.byte() != redisResponseNotStored {
				return Record{}, fmt.Errorf("idempotency: unknown response flags %#x in redis record", v[len(v)-1])
			}
			rec.Response.NotStored = true
		}
		if d.err != nil {
			return Record{}, d.err
		}
		if len(d.buf) != 0 {
			return Record{}, fmt.Errorf("idempotency: %d trailing bytes after redis record", len(d.buf))
		}
	default:
		return Record{}, fmt.Errorf("idempotency: redis record in unknown state %d", v[1])
	}
	return rec, nil
}

// appendRedisResponse encodes resp as the response part of record_codec.go's
// format, which decoder.response reads back.
func appendRedisResponse(buf []byte, resp *Response) ([]byte, error) {
	if !validStatus(int64(resp.Status)) {
		return nil, fmt.Errorf("idempotency: cannot encode response status %d", resp.Status)
	}
	buf = appendResponse(buf, resp)
	if resp.NotStored {
		buf = append(buf, redisResponseNotStored)
	}
	return buf, nil
}

// redisResponseNotStored, one byte after a completed record's response,
// marks a response whose body was not kept (Response.NotStored). Records
// without it have no such byte.
const redisResponseNotStored byte = 1

// millis is d in whole milliseconds, rounded up and at least 1, as Redis
// expiry (PX) wants a positive integer.
func millis(d time.Duration) int64 {
	ms := (d + time.Millisecond - 1) / time.Millisecond
	return max(int64(ms), 1)
}

var _ AdminStore = (*RedisStore)(nil)

// redisStatsBatch is how many keys Stats asks SCAN for, and reads in one
// pipeline.
const redisStatsBatch = 500

// Purge deletes key's record (one script, atomic); see AdminStore.
func (s *RedisStore) Purge(ctx context.Context, key RecordKey) (bool, error) {
	res, err := s.run(ctx, redisPurge, "purge", key)
	if err != nil {
		return false, err
	}
	switch res {
	case int64(1):
		return true, nil
	case int64(0):
		return false, nil
	}
	return false, s.badReply("purge", key, res)
}

// Stats counts the live records under the store's prefix with SCAN, on every
// master of a cluster, reading only each record's fixed header; see
// AdminStore. SCAN may return a key twice while Redis resizes its table, so
// the counts are approximate while records are written.
func (s *RedisStore) Stats(ctx context.Context) (Stats, error) {
	if err := ctx.Err(); err != nil {
		return Stats{}, err
	}
	var (
		mu    sync.Mutex
		total Stats
	)
	count := func(ctx context.Context, node redis.UniversalClient) error {
		st, err := s.nodeStats(ctx, node)
		mu.Lock()
		total.InFlight += st.InFlight
		total.Completed += st.Completed
		mu.Unlock()
		return err
	}
	var err error
	if cluster, ok := s.client.(*redis.ClusterClient); ok {
		err = cluster.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error { return count(ctx, node) })
	} else {
		err = count(ctx, s.client)
	}
	if err != nil {
		return Stats{}, fmt.Errorf("idempotency: redis stats: %w", err)
	}
	return total, nil
}

// nodeStats counts the live records on one node (or the only one).
func (s *RedisStore) nodeStats(ctx context.Context, node redis.UniversalClient) (Stats, error) {
	var st Stats
	now, err := node.Time(ctx).Result()
	if err != nil {
		return st, err
	}
	match := redisGlobEscape(s.prefix) + "r:*"
	var cursor uint64
	for {
		keys, next, err := node.Scan(ctx, cursor, match, redisStatsBatch).Result()
		if err != nil {
			return st, err
		}
		if len(keys) > 0 {
			pipe := node.Pipeline()
			heads := make([]*redis.StringCmd, len(keys))
			for i, k := range keys {
				heads[i] = pipe.GetRange(ctx, k, 0, redisHeaderLen-1)
			}
			if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
				return st, err
			}
			for _, h := range heads {
				v := h.Val() // "" when the key expired since SCAN saw it
				if len(v) < redisHeaderLen || v[0] != redisFormat {
					continue
				}
				at := time.UnixMilli(int64(binary.BigEndian.Uint64([]byte(v[42:50]))))
				st.add(State(v[1]), now.Before(at))
			}
		}
		if cursor = next; cursor == 0 {
			return st, nil
		}
	}
}

// redisGlobEscape quotes the characters SCAN's MATCH pattern treats specially.
func redisGlobEscape(s string) string {
	var b strings.Builder
	for _, c := range s {
		if strings.ContainsRune(`*?[]\`, c) {
			b.WriteByte('\\')
		}
		b.WriteRune(c)
	}
	return b.String()
}
