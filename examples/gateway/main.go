// Command gateway is a small OpenAI-compatible API gateway built on the
// idempotency engine: a reverse proxy to one upstream, with the engine in
// front, so a retried POST /v1/batches (or any keyed POST) is answered from
// the store instead of running twice.
//
//	go run ./examples/gateway -upstream http://127.0.0.1:8000 -store memory
//	go run ./examples/gateway -upstream http://127.0.0.1:8000 -store badger -badger-dir /var/lib/gateway
//	REDIS_URL=redis://127.0.0.1:6379/0 go run ./examples/gateway -upstream http://127.0.0.1:8000 -store redis
//
// Each store lives in its own file behind a build tag, so a binary that does
// not need Badger or go-redis does not link them:
//
//	go build -tags no_badger,no_redis ./examples/gateway
//
// The files: main.go (flags, the server, shutdown), engine.go (the
// idempotency.Config), observe.go (decision logs and counters), stores.go
// (the store registry and the memory store), store_badger.go and
// store_redis.go.
package main

import (
	"context"
	"errors"
	"expvar"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/signal"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/caddy-idempotency/caddy-idempotency/idempotency"
)

// options are the command line's settings.
type options struct {
	listen          string
	metricsListen   string
	upstream        *url.URL
	upstreamTimeout time.Duration
	shutdownTimeout time.Duration
	logLevel        zapcore.Level
	engine          engineOptions
	store           storeOptions
}

func main() {
	// SIGINT or SIGTERM starts a graceful shutdown (see serve).
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, "gateway:", err)
		os.Exit(1)
	}
}

func parseFlags(args []string) (options, error) {
	var o options
	fs := flag.NewFlagSet("gateway", flag.ContinueOnError)
	fs.StringVar(&o.listen, "listen", "127.0.0.1:8080", "address the gateway listens on (port 0: any free port, logged at start)")
	fs.StringVar(&o.metricsListen, "metrics-listen", "", "address serving /debug/vars (expvar counters); empty: off")
	upstream := fs.String("upstream", "", "URL of the OpenAI-compatible API to proxy to (required)")
	fs.DurationVar(&o.upstreamTimeout, "upstream-timeout", 2*time.Minute, "how long to wait for the upstream's response header")
	// Longer than -wait, so duplicates waiting on a create get its replay.
	fs.DurationVar(&o.shutdownTimeout, "shutdown-timeout", 40*time.Second, "how long a shutdown waits for requests in progress")
	fs.TextVar(&o.logLevel, "log-level", zapcore.InfoLevel, "log `level`: debug, info, warn or error (debug adds the engine's own line per request)")
	fs.DurationVar(&o.engine.wait, "wait", idempotency.DefaultWait, "how long a duplicate of a request in flight waits for its result; 0: answer 409 idempotency_key_in_use at once")
	fs.DurationVar(&o.engine.ttl, "ttl", 24*time.Hour, "how long a completed response replays")
	fs.Int64Var(&o.engine.maxBody, "max-body", idempotency.DefaultMaxBody, "largest POST body the engine reads, in bytes: a keyed one, or a JSON one without a key header (it may carry idempotency_key); larger ones get 413")
	fs.StringVar(&o.engine.namespace, "namespace", "", "records shared under this name; empty: the site (host@:port). Give every instance of a fleet the same one")
	fs.BoolVar(&o.engine.requireScope, "require-scope", false, "answer 400 idempotency_scope_required to a keyed request without an Authorization header")
	fs.StringVar(&o.store.kind, "store", "memory", "where records live: "+storeNames())
	fs.StringVar(&o.store.badgerDir, "badger-dir", "", "directory of the Badger store (-store badger)")
	// A password belongs in REDIS_URL rather than on the command line, which
	// ps shows (and /debug/vars too, as "cmdline").
	fs.StringVar(&o.store.redisURL, "redis-url", "", "Redis URL (-store redis); default $REDIS_URL, else redis://127.0.0.1:6379/0")
	fs.StringVar(&o.store.redisPrefix, "redis-prefix", "gateway:", "prefix of the store's Redis keys (-store redis)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if *upstream == "" {
		return o, errors.New("-upstream is required")
	}
	u, err := url.Parse(*upstream)
	if err != nil || u.Scheme == "" || u.Host == "" {
		return o, fmt.Errorf("-upstream %q is not an absolute URL", *upstream)
	}
	o.upstream = u
	if o.store.redisURL == "" {
		o.store.redisURL = envOr("REDIS_URL", "redis://127.0.0.1:6379/0")
	}
	return o, nil
}

func envOr(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}

func run(ctx context.Context, args []string) error {
	o, err := parseFlags(args)
	if err != nil {
		return err
	}
	log, err := newLogger(o.logLevel)
	if err != nil {
		return err
	}
	defer func() { _ = log.Sync() }()

	store, closeStore, err := openStore(o.store, log)
	if err != nil {
		return err
	}
	// Runs when run returns, after serve has stopped the server: no request
	// uses the store any more.
	defer func() {
		if err := closeStore(); err != nil {
			log.Error("closing the store", zap.Error(err))
			return
		}
		log.Info("store closed", zap.String("store", o.store.kind))
	}()

	h, err := newEngine(o.engine, store, log, newMetrics())
	if err != nil {
		return err
	}
	// The engine goes in front of the proxy; withRequestID in front of both,
	// so the engine's logs and the upstream see the same X-Request-Id.
	handler := withRequestID(h.Middleware(newProxy(o.upstream, o.upstreamTimeout, log)))
	return serve(ctx, o, handler, log)
}

func newLogger(level zapcore.Level) (*zap.Logger, error) {
	cfg := zap.NewProductionConfig() // JSON lines on stderr
	cfg.Level = zap.NewAtomicLevelAt(level)
	cfg.Sampling = nil // one line per decision means one line per request: keep them all
	return cfg.Build()
}

// newProxy forwards every request to upstream. The requests the engine sends
// as a key's owner ask for Accept-Encoding: identity, so what it stores suits
// every client.
func newProxy(upstream *url.URL, headerTimeout time.Duration, log *zap.Logger) *httputil.ReverseProxy {
	transport := http.DefaultTransport.(*http.Transport).Clone()
	// Without it a hung upstream holds its key in flight for ever: the engine
	// renews the lease of a live owner, and duplicates get 409 in_use.
	transport.ResponseHeaderTimeout = headerTimeout
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(upstream)
			pr.SetXForwarded()
		},
		Transport: transport,
		// FlushInterval stays 0: the proxy flushes a server-sent event stream,
		// or a response of unknown length, as it comes, and the engine keeps
		// a copy to store at its end (outcome "streamed"). Flushing every
		// response (-1) would make every one a stream, with its record
		// completed only after the client has it.
		ErrorLog: zap.NewStdLog(log.Named("proxy")),
		// A 502 is not 2xx, so the engine releases the key: a retry runs again.
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			log.Warn("upstream failed", zap.String("request_id", r.Header.Get(requestIDHeader)), zap.Error(err))
			w.WriteHeader(http.StatusBadGateway)
		},
	}
}

// serve runs the gateway (and the metrics listener) until ctx ends, then
// shuts down gracefully: it stops accepting, and waits up to
// o.shutdownTimeout for requests in progress, whose records the engine then
// completes or releases. A request still upstream after that finds the store
// closed: its key stays in flight until its lease ends, then a retry runs it.
func serve(ctx context.Context, o options, handler http.Handler, log *zap.Logger) error {
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 10 * time.Second,
		// No ReadTimeout: it would cut long uploads (POST /v1/files) passing
		// through. A keyed body is read in full before its key is claimed,
		// so a client that stalls its upload holds up only its own request.
		IdleTimeout: 2 * time.Minute,
		ErrorLog:    zap.NewStdLog(log.Named("http")),
	}
	servers := []*http.Server{srv}
	errc := make(chan error, 2)
	go func() { errc <- srv.Serve(ln) }()
	log.Info("listening", zap.String("serves", "gateway"), zap.String("addr", ln.Addr().String()), zap.String("upstream", o.upstream.Redacted()))

	if o.metricsListen != "" {
		mln, err := net.Listen("tcp", o.metricsListen)
		if err != nil {
			_ = srv.Close()
			return err
		}
		mux := http.NewServeMux()
		mux.Handle("/debug/vars", expvar.Handler())
		msrv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		servers = append(servers, msrv)
		go func() { errc <- msrv.Serve(mln) }()
		log.Info("listening", zap.String("serves", "metrics"), zap.String("addr", mln.Addr().String()))
	}

	select {
	case err := <-errc:
		for _, s := range servers {
			_ = s.Close()
		}
		return err
	case <-ctx.Done():
	}
	log.Info("shutting down", zap.Duration("timeout", o.shutdownTimeout))
	sctx, cancel := context.WithTimeout(context.Background(), o.shutdownTimeout)
	defer cancel()
	var errs []error
	for _, s := range servers {
		errs = append(errs, s.Shutdown(sctx))
	}
	return errors.Join(errs...)
}
