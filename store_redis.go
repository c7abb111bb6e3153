package caddyidempotency

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/caddy-idempotency/caddy-idempotency/idempotency"
	"github.com/caddy-idempotency/caddy-idempotency/idempotency/redisstore"
)

func init() {
	caddy.RegisterModule(RedisModule{})
}

// redisPool keeps one client per connection setup across config reloads, so
// requests still in flight on a replaced config finish on an open client.
var redisPool = caddy.NewUsagePool()

// defaultRedisKeyPrefix is the Caddy module's key prefix, which its records
// have always had (the engine's own default is redisstore.DefaultPrefix).
const defaultRedisKeyPrefix = "caddy-idempotency:"

// Defaults of RedisModule: a request waits at most about this long on a
// Redis that does not answer before it gets 503.
const (
	defaultRedisDialTimeout = 2 * time.Second
	defaultRedisIOTimeout   = 2 * time.Second
)

// RedisModule keeps records in Redis or Valkey, shared by every Caddy
// instance that points at the same server and key prefix.
type RedisModule struct {
	// The server as a redis://, rediss:// (TLS) or unix:// URL. Its address,
	// database, username and password are used unless the fields below set
	// them. Placeholders such as {env.REDIS_URL} are replaced. Required
	// unless addresses are given.
	URL string `json:"url,omitempty"`
	// The servers as host:port addresses, instead of a url. Two or more are
	// the seeds of a Redis Cluster; with master_name, they are Sentinels.
	// Required unless url is given.
	Addresses []string `json:"addresses,omitempty"`
	// Treat the addresses as a Redis Cluster even when there is only one (a
	// seed node or a cluster endpoint). Two or more addresses imply it.
	Cluster bool `json:"cluster,omitempty"`
	// The Sentinel master name; set it to find the master through the
	// Sentinels given as addresses. Default: none, no Sentinel.
	MasterName string `json:"master_name,omitempty"`
	// The database number (not with a cluster). Default: the URL's, or 0.
	DB int `json:"db,omitempty"`
	// The username to authenticate with; placeholders such as
	// {env.REDIS_USERNAME} are replaced. Default: the URL's, or none.
	Username string `json:"username,omitempty"`
	// The password to authenticate with; placeholders such as
	// {env.REDIS_PASSWORD} are replaced. Default: the URL's, or none.
	Password string `json:"password,omitempty"`
	// Connect over TLS (implied by a rediss:// URL).
	TLS bool `json:"tls,omitempty"`
	// The name the server's certificate must carry. Default: its host.
	TLSServerName string `json:"tls_server_name,omitempty"`
	// A PEM file of the CAs to trust for the server's certificate.
	// Default: the system's CAs.
	TLSCAFile string `json:"tls_ca_file,omitempty"`
	// The prefix of every key this store writes. Default: caddy-idempotency:
	// (with the colon).
	KeyPrefix string `json:"key_prefix,omitempty"`
	// Connections per node. Default: go-redis's, 10 per CPU.
	PoolSize int `json:"pool_size,omitempty"`
	// How long connecting to a server may take. Default: 2s.
	DialTimeout caddy.Duration `json:"dial_timeout,omitempty"`
	// How long a reply from the server may take. Default: 2s.
	ReadTimeout caddy.Duration `json:"read_timeout,omitempty"`
	// How long sending a command to the server may take. Default: 2s.
	WriteTimeout caddy.Duration `json:"write_timeout,omitempty"`

	poolKey    string // set only once Provision holds a reference
	store      *redisstore.Store
	unregister func() // drops the admin API's reference
}

type pooledRedis struct{ redis.UniversalClient }

// redisLogger sends go-redis's own process-wide log lines (failed dials, say)
// to Caddy's log instead of stderr.
type redisLogger struct{ log *zap.Logger }

func (l redisLogger) Printf(_ context.Context, format string, v ...any) {
	l.log.Warn(fmt.Sprintf(format, v...))
}

var redisLogOnce sync.Once

func (p pooledRedis) Destruct() error { return p.Close() }

// CaddyModule returns the Caddy module information.
func (RedisModule) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.idempotency.stores.redis",
		New: func() caddy.Module { return new(RedisModule) },
	}
}

// Provision sets up the client, or shares the one an identical setup has.
// It does not connect: Caddy starts while Redis is down, and requests that
// need the store get 503 until it is back.
func (r *RedisModule) Provision(ctx caddy.Context) error {
	redisLogOnce.Do(func() { redis.SetLogger(redisLogger{caddy.Log().Named("idempotency.redis")}) })
	opts, err := r.clientOptions(caddy.NewReplacer())
	if err != nil {
		return err
	}
	// Identical setups share a client; placeholders resolve the same way for
	// the life of the process.
	key, err := json.Marshal(r)
	if err != nil {
		return err
	}
	val, _, err := redisPool.LoadOrNew(string(key), func() (caddy.Destructor, error) {
		return pooledRedis{redis.NewUniversalClient(opts)}, nil
	})
	if err != nil {
		return err
	}
	r.poolKey = string(key)
	prefix := cmp.Or(r.KeyPrefix, defaultRedisKeyPrefix)
	r.store = redisstore.New(val.(pooledRedis).UniversalClient, redisstore.Options{
		Prefix: prefix,
		Logger: ctx.Logger(),
	})
	r.unregister = adminStores.register(redisStoreName(opts, prefix), "redis", r.store)
	return nil
}

// redisStoreName names a Redis store by what decides where its records are:
// redis:<addresses>/<db>/<prefix>, or redis:<master>@<sentinels>/<db>/<prefix>.
// It never holds a credential.
func redisStoreName(opts *redis.UniversalOptions, prefix string) string {
	target := strings.Join(opts.Addrs, ",")
	if opts.MasterName != "" {
		target = opts.MasterName + "@" + target
	}
	return fmt.Sprintf("redis:%s/%d/%s", target, opts.DB, prefix)
}

// clientOptions resolves placeholders and builds go-redis's options.
func (r *RedisModule) clientOptions(repl *caddy.Replacer) (*redis.UniversalOptions, error) {
	opts := &redis.UniversalOptions{
		DialTimeout:  defaultRedisDialTimeout,
		ReadTimeout:  defaultRedisIOTimeout,
		WriteTimeout: defaultRedisIOTimeout,
		// Without it go-redis ignores a request's deadline.
		ContextTimeoutEnabled: true,
		// Fewer than go-redis's 3 retries of 5 dials each, so a request on a
		// stopped Redis gets its 503 in about half a second, not two.
		MaxRetries:    1,
		DialerRetries: 2,
	}
	if u := repl.ReplaceKnown(r.URL, ""); u != "" {
		parsed, err := redis.ParseURL(u)
		if err != nil {
			return nil, fmt.Errorf("redis store: url: %w", err)
		}
		opts.Addrs = []string{parsed.Addr}
		opts.DB, opts.Username, opts.Password, opts.TLSConfig = parsed.DB, parsed.Username, parsed.Password, parsed.TLSConfig
	}
	for _, a := range r.Addresses {
		if a = repl.ReplaceKnown(a, ""); a != "" {
			opts.Addrs = append(opts.Addrs, a)
		}
	}
	if len(opts.Addrs) == 0 {
		return nil, errors.New("redis store: a url or at least one address is required")
	}
	if r.URL != "" && len(r.Addresses) > 0 {
		return nil, errors.New("redis store: give a url or addresses, not both")
	}
	opts.MasterName = repl.ReplaceKnown(r.MasterName, "")
	opts.IsClusterMode = r.Cluster
	if r.Cluster && opts.MasterName != "" {
		return nil, errors.New("redis store: cluster and master_name exclude each other")
	}
	if r.DB != 0 {
		opts.DB = r.DB
	}
	if u := repl.ReplaceKnown(r.Username, ""); u != "" {
		opts.Username = u
	}
	if p := repl.ReplaceKnown(r.Password, ""); p != "" {
		opts.Password = p
	}
	if r.TLS || r.TLSServerName != "" || r.TLSCAFile != "" {
		if opts.TLSConfig == nil {
			opts.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12}
		}
		if r.TLSServerName != "" {
			opts.TLSConfig.ServerName = r.TLSServerName
		}
		if r.TLSCAFile != "" {
			pem, err := os.ReadFile(r.TLSCAFile)
			if err != nil {
				return nil, fmt.Errorf("redis store: tls_ca_file: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("redis store: tls_ca_file %s holds no PEM certificate", r.TLSCAFile)
			}
			opts.TLSConfig.RootCAs = pool
		}
	}
	if r.PoolSize < 0 {
		return nil, fmt.Errorf("redis store: pool_size %d is negative", r.PoolSize)
	}
	opts.PoolSize = r.PoolSize
	for _, t := range []struct {
		set caddy.Duration
		dst *time.Duration
	}{{r.DialTimeout, &opts.DialTimeout}, {r.ReadTimeout, &opts.ReadTimeout}, {r.WriteTimeout, &opts.WriteTimeout}} {
		if t.set < 0 {
			return nil, errors.New("redis store: timeouts must not be negative")
		}
		if t.set > 0 {
			*t.dst = time.Duration(t.set)
		}
	}
	return opts, nil
}

// Store returns the store.
func (r *RedisModule) Store() idempotency.Store { return r.store }

// Cleanup drops this config's reference; the last one closes the client.
func (r *RedisModule) Cleanup() error {
	if r.poolKey == "" {
		return nil
	}
	r.unregister()
	_, err := redisPool.Delete(r.poolKey)
	r.poolKey, r.store = "", nil
	return err
}

// UnmarshalCaddyfile sets up the store from
//
//	store redis [<url>] {
//		addresses       <host:port...>
//		cluster
//		master_name     <name>
//		db              <n>
//		username        <name>
//		password        <secret>
//		tls
//		tls_server_name <name>
//		tls_ca_file     <file>
//		key_prefix      <prefix>
//		pool_size       <n>
//		dial_timeout    <duration>
//		read_timeout    <duration>
//		write_timeout   <duration>
//	}
func (r *RedisModule) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the store name
	if d.NextArg() {
		r.URL = d.Val()
	}
	if d.NextArg() {
		return d.ArgErr()
	}
	err := eachSubdirective(d, "redis store subdirective", func(sub string) (err error) {
		switch sub {
		case "addresses":
			r.Addresses = d.RemainingArgs()
			if len(r.Addresses) == 0 {
				return d.ArgErr()
			}
		case "cluster":
			err = flagArg(d, &r.Cluster)
		case "master_name":
			err = oneArg(d, &r.MasterName)
		case "db":
			err = intArg(d, &r.DB)
		case "username":
			err = oneArg(d, &r.Username)
		case "password":
			err = oneArg(d, &r.Password)
		case "tls":
			err = flagArg(d, &r.TLS)
		case "tls_server_name":
			err = oneArg(d, &r.TLSServerName)
		case "tls_ca_file":
			err = oneArg(d, &r.TLSCAFile)
		case "key_prefix":
			err = oneArg(d, &r.KeyPrefix)
		case "pool_size":
			err = intArg(d, &r.PoolSize)
		case "dial_timeout":
			err = durationArg(d, &r.DialTimeout)
		case "read_timeout":
			err = durationArg(d, &r.ReadTimeout)
		case "write_timeout":
			err = durationArg(d, &r.WriteTimeout)
		default:
			return d.Errf("unrecognized redis store subdirective %q", sub)
		}
		return err
	})
	if err != nil {
		return err
	}
	if r.URL == "" && len(r.Addresses) == 0 {
		return d.Err("store redis needs a url or an addresses line")
	}
	return nil
}

func intArg(d *caddyfile.Dispenser, dst *int) error {
	var s string
	if err := oneArg(d, &s); err != nil {
		return err
	}
	v, err := strconv.Atoi(s)
	if err != nil || v < 0 {
		return d.Errf("invalid number %q", s)
	}
	*dst = v
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner     = (*RedisModule)(nil)
	_ caddy.CleanerUpper    = (*RedisModule)(nil)
	_ caddyfile.Unmarshaler = (*RedisModule)(nil)
	_ StoreProvider         = (*RedisModule)(nil)
)
