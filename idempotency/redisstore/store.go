package redisstore

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

	"github.com/caddy-idempotency/caddy-idempotency/idempotency"
)

// DefaultPrefix namespaces the store's keys when Options.Prefix is empty.
// Processes share records only when they use the same server and prefix.
// The Caddy module's default is "caddy-idempotency:", which the engine's
// Redis store also used before it became this package: set Prefix to it to
// share records with those.
const DefaultPrefix = "idempotency:"

// redisRecordLayout: each record is one Redis string under
// prefix + "r:" + hex(RecordKey), expiring with the record (PX): a completed
// or in-doubt record at its ExpiresAt, an in-flight one InFlightRetention
// past its lease. Its value, times as big-endian int64 Unix ms of the Redis
// server's clock:
//
//	offset  size
//	0       1    format, 1
//	1       1    state: 1 in flight, 2 completed, 3 in doubt
//	2       32   fingerprint
//	34      8    createdAt
//	42      8    in flight: leaseUntil; completed, in doubt: expiresAt
//	50      16   in flight: owner token
//	66      1    in flight: doubts, 0..255            } only when either is
//	67      1    in flight: prior state, 0, 1 or 3    } nonzero: 68 bytes,
//	             else the value ends at the owner token (66 bytes, as
//	             records written before these fields were)
//	50      1    in doubt: doubts, 1..255 (the value ends here, 51 bytes)
//	50      ...  completed: response, encoded by idempotency.AppendResponse
//	             (status varint, headers, body), then one byte
//	             redisResponseNotStored when its body was not kept
//
// Doubts saturates at 255 (Record.Doubts). The prior state is what the Begin
// that wrote an in-flight record took over (Record.Prior), kept so that the
// same owner's repeated Begin reports it again; Get does not return it.
const (
	redisFormat      = 1
	redisHeaderLen   = 50
	redisInFlightLen = redisHeaderLen + len(idempotency.OwnerToken{})
	redisInDoubtLen  = redisHeaderLen + 1
)

// Options configure New.
type Options struct {
	Prefix string      // key prefix; "" → DefaultPrefix
	Logger *zap.Logger // nil → zap.NewNop()
}

// Store is an idempotency.Store in Redis (or Valkey), shared by every
// process that uses the same server and prefix. Each operation is one Lua script on
// one key, atomic in Redis and routable in a cluster; leases and expiry use
// the Redis server's clock. Any Redis or network error is returned wrapped.
type Store struct {
	client redis.UniversalClient
	prefix string
	log    *zap.Logger
}

var _ idempotency.Store = (*Store)(nil)

// New returns a store using client, which it does not own: the
// caller closes the client when done; the store itself needs no Close.
// Give the client ContextTimeoutEnabled, or go-redis bounds each call by its
// own ReadTimeout/WriteTimeout only and ignores the context's deadline.
func New(client redis.UniversalClient, opts Options) *Store {
	prefix := opts.Prefix
	if prefix == "" {
		prefix = DefaultPrefix
	}
	log := opts.Logger
	if log == nil {
		log = zap.NewNop()
	}
	return &Store{client: client, prefix: prefix, log: log}
}

// redisKey is the Redis key holding key's record.
func (s *Store) redisKey(key idempotency.RecordKey) string { return s.prefix + "r:" + key.String() }

func (s *Store) Begin(ctx context.Context, key idempotency.RecordKey, fp idempotency.Fingerprint, owner idempotency.OwnerToken, lease time.Duration) (idempotency.Record, bool, error) {
	res, err := s.run(ctx, redisBegin, "begin", key, fp[:], owner[:], millis(lease), millis(idempotency.InFlightRetention))
	if err != nil {
		return idempotency.Record{}, false, err
	}
	arr, ok := res.([]any)
	if !ok || len(arr) != 3 {
		return idempotency.Record{}, false, s.badReply("begin", key, res)
	}
	owned, ok1 := arr[0].(int64)
	value, ok2 := arr[1].(string)
	prior, ok3 := arr[2].(int64)
	if !ok1 || !ok2 || !ok3 || !validPrior(prior) {
		return idempotency.Record{}, false, s.badReply("begin", key, res)
	}
	rec, err := s.decode(key, value)
	if err != nil {
		return idempotency.Record{}, false, err
	}
	if owned != 1 {
		return rec, false, nil
	}
	rec.Prior = idempotency.State(prior)
	return rec, true, nil
}

func (s *Store) Renew(ctx context.Context, key idempotency.RecordKey, owner idempotency.OwnerToken, lease time.Duration) error {
	return s.runOwned(ctx, redisRenew, "renew", key, owner[:], millis(lease), millis(idempotency.InFlightRetention))
}

func (s *Store) Complete(ctx context.Context, key idempotency.RecordKey, owner idempotency.OwnerToken, resp idempotency.Response, ttl time.Duration) error {
	encoded, err := appendResponse(nil, &resp)
	if err != nil {
		return err
	}
	return s.runOwned(ctx, redisComplete, "complete", key, owner[:], millis(ttl), millis(idempotency.InFlightRetention), encoded)
}

func (s *Store) Hold(ctx context.Context, key idempotency.RecordKey, owner idempotency.OwnerToken, hold time.Duration) error {
	return s.runOwned(ctx, redisHold, "hold", key, owner[:], millis(hold), millis(idempotency.InFlightRetention))
}

func (s *Store) Release(ctx context.Context, key idempotency.RecordKey, owner idempotency.OwnerToken) error {
	return s.runOwned(ctx, redisRelease, "release", key, owner[:], millis(idempotency.InFlightRetention))
}

func (s *Store) Get(ctx context.Context, key idempotency.RecordKey) (idempotency.Record, bool, error) {
	res, err := s.run(ctx, redisGet, "get", key)
	if err != nil {
		return idempotency.Record{}, false, err
	}
	arr, ok := res.([]any)
	if !ok || len(arr) > 1 {
		return idempotency.Record{}, false, s.badReply("get", key, res)
	}
	if len(arr) == 0 {
		return idempotency.Record{}, false, nil
	}
	value, ok := arr[0].(string)
	if !ok {
		return idempotency.Record{}, false, s.badReply("get", key, res)
	}
	rec, err := s.decode(key, value)
	if err != nil {
		return idempotency.Record{}, false, err
	}
	return rec, true, nil
}

// run runs script on key's Redis key (EVALSHA, falling back to EVAL when
// the server does not have it cached).
func (s *Store) run(ctx context.Context, script *redis.Script, op string, key idempotency.RecordKey, args ...any) (any, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	res, err := script.Run(ctx, s.client, []string{s.redisKey(key)}, args...).Result()
	if err != nil {
		// A deadline reached while reading surfaces as a network timeout;
		// name the context's reason too, for errors.Is.
		if cerr := ctx.Err(); cerr != nil && !errors.Is(err, cerr) {
			return nil, fmt.Errorf("redisstore: %s of record %s: %w: %w", op, key, cerr, err)
		}
		return nil, fmt.Errorf("redisstore: %s of record %s: %w", op, key, err)
	}
	return res, nil
}

// runOwned runs a script that answers 1 when owner held the record, 0 when not.
func (s *Store) runOwned(ctx context.Context, script *redis.Script, op string, key idempotency.RecordKey, args ...any) error {
	res, err := s.run(ctx, script, op, key, args...)
	if err != nil {
		return err
	}
	switch res {
	case int64(1):
		return nil
	case int64(0):
		return idempotency.ErrNotOwner
	}
	return s.badReply(op, key, res)
}

func (s *Store) badReply(op string, key idempotency.RecordKey, res any) error {
	return fmt.Errorf("redisstore: %s of record %s: unexpected reply %T %v", op, key, res, res)
}

func (s *Store) decode(key idempotency.RecordKey, value string) (idempotency.Record, error) {
	rec, err := decodeRedisRecord([]byte(value))
	if err != nil {
		s.log.Warn("redisstore: undecodable record", zap.String("key", s.redisKey(key)), zap.Error(err))
		return idempotency.Record{}, fmt.Errorf("redisstore: decode record %s: %w", key, err)
	}
	return rec, nil
}

var errTruncated = errors.New("redisstore: record is truncated")

func decodeRedisRecord(v []byte) (idempotency.Record, error) {
	if len(v) < redisHeaderLen {
		return idempotency.Record{}, errTruncated
	}
	if v[0] != redisFormat {
		return idempotency.Record{}, fmt.Errorf("redisstore: unknown record format %d", v[0])
	}
	rec := idempotency.Record{State: idempotency.State(v[1])}
	copy(rec.Fingerprint[:], v[2:34])
	rec.CreatedAt = time.UnixMilli(int64(binary.BigEndian.Uint64(v[34:42])))
	at := time.UnixMilli(int64(binary.BigEndian.Uint64(v[42:50])))
	switch rec.State {
	case idempotency.StateInFlight:
		switch len(v) {
		case redisInFlightLen:
		case redisInFlightLen + 2: // doubts, prior
			rec.Doubts = int(v[redisInFlightLen])
			if !validPrior(int64(v[redisInFlightLen+1])) {
				return idempotency.Record{}, fmt.Errorf("redisstore: in-flight record with unknown prior state %d", v[redisInFlightLen+1])
			}
		default:
			return idempotency.Record{}, fmt.Errorf("redisstore: in-flight record of %d bytes, want %d or %d", len(v), redisInFlightLen, redisInFlightLen+2)
		}
		rec.LeaseUntil = at
		copy(rec.Owner[:], v[redisHeaderLen:redisInFlightLen])
	case idempotency.StateInDoubt:
		if len(v) != redisInDoubtLen {
			return idempotency.Record{}, fmt.Errorf("redisstore: in-doubt record of %d bytes, want %d", len(v), redisInDoubtLen)
		}
		rec.ExpiresAt = at
		rec.Doubts = int(v[redisHeaderLen])
	case idempotency.StateCompleted:
		rec.ExpiresAt = at
		resp, rest, err := idempotency.ReadResponse(v[redisHeaderLen:])
		if err != nil {
			return idempotency.Record{}, err
		}
		switch {
		case len(rest) == 1 && rest[0] == redisResponseNotStored: // the optional flags byte
			resp.NotStored = true
		case len(rest) == 1:
			return idempotency.Record{}, fmt.Errorf("redisstore: unknown response flags %#x", rest[0])
		case len(rest) != 0:
			return idempotency.Record{}, fmt.Errorf("redisstore: %d trailing bytes after the record", len(rest))
		}
		rec.Response = resp
	default:
		return idempotency.Record{}, fmt.Errorf("redisstore: record in unknown state %d", v[1])
	}
	return rec, nil
}

// validPrior reports whether p is a state Begin may have taken over:
// none (0), in flight (a dead owner's) or in doubt.
func validPrior(p int64) bool {
	return p == 0 || p == int64(idempotency.StateInFlight) || p == int64(idempotency.StateInDoubt)
}

// appendResponse encodes resp as the completed record's tail: the response
// in the engine's codec (idempotency.AppendResponse), then the flags byte
// when it was not stored.
func appendResponse(buf []byte, resp *idempotency.Response) ([]byte, error) {
	buf, err := idempotency.AppendResponse(buf, resp)
	if err != nil {
		return nil, err
	}
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

var _ idempotency.AdminStore = (*Store)(nil)

// redisStatsBatch is how many keys Stats asks SCAN for, and reads in one
// pipeline.
const redisStatsBatch = 500

// Purge deletes key's record (one script, atomic); see AdminStore.
func (s *Store) Purge(ctx context.Context, key idempotency.RecordKey) (bool, error) {
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
func (s *Store) Stats(ctx context.Context) (idempotency.Stats, error) {
	if err := ctx.Err(); err != nil {
		return idempotency.Stats{}, err
	}
	var (
		mu    sync.Mutex
		total idempotency.Stats
	)
	count := func(ctx context.Context, node redis.UniversalClient) error {
		st, err := s.nodeStats(ctx, node)
		mu.Lock()
		total.InFlight += st.InFlight
		total.Completed += st.Completed
		total.InDoubt += st.InDoubt
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
		return idempotency.Stats{}, fmt.Errorf("redisstore: stats: %w", err)
	}
	return total, nil
}

// nodeStats counts the live records on one node (or the only one).
func (s *Store) nodeStats(ctx context.Context, node redis.UniversalClient) (idempotency.Stats, error) {
	var st idempotency.Stats
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
				st.Add(idempotency.State(v[1]), now.Before(at))
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
