package caddyidempotency

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"

	"github.com/caddy-idempotency/caddy-idempotency/idempotency"
	"github.com/caddy-idempotency/caddy-idempotency/idempotency/badgerstore"
)

func init() {
	caddy.RegisterModule(BadgerModule{})
	caddy.RegisterModule(App{})
}

// badgerPool keeps one open database per directory across config reloads:
// Caddy provisions the new config before it cleans up the old one, and
// Badger locks its directory, so the two configs must share the handle.
var badgerPool = caddy.NewUsagePool()

// BadgerModule keeps records in an embedded Badger database.
type BadgerModule struct {
	// The database directory. Default: {caddy data dir}/idempotency.
	Path string `json:"path,omitempty"`

	poolKey    string // set only once this config holds a reference
	store      *badgerstore.Store
	deferred   *deferredBadger // set when the open waits for the config's start
	unregister func()          // drops the admin API's reference; nil until open
}

type pooledBadger struct{ *badgerstore.Store }

// closeTimeout bounds how long a reload waits for Badger to close. Badger
// retries a failing memtable flush forever (its directory deleted, the disk
// gone), and Caddy holds its config lock during Cleanup.
const closeTimeout = 10 * time.Second

func (p pooledBadger) Destruct() error {
	done := make(chan error, 1)
	go func() { done <- p.Close() }()
	select {
	case err := <-done:
		return err
	case <-time.After(closeTimeout):
		return fmt.Errorf("badger store did not close within %s; its directory stays locked", closeTimeout)
	}
}

// CaddyModule returns the Caddy module information.
func (BadgerModule) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.idempotency.stores.badger",
		New: func() caddy.Module { return new(BadgerModule) },
	}
}

// Provision opens the database, or takes another reference to it. When
// another process holds the directory, the open waits for the config's start
// instead (see App).
func (b *BadgerModule) Provision(ctx caddy.Context) error {
	dir := b.Path
	if dir == "" {
		dir = filepath.Join(caddy.AppDataDir(), "idempotency")
	}
	dir, err := badgerDirectory(caddy.NewReplacer().ReplaceKnown(dir, ""))
	if err != nil {
		return fmt.Errorf("opening badger store at %s: %w", dir, err)
	}
	store, err := openPooledBadger(dir)
	switch {
	case err == nil:
		b.opened(dir, store)
		return nil
	case badgerLocked(err):
		return b.deferOpen(ctx, dir)
	default:
		return fmt.Errorf("opening badger store at %s: %w", dir, err)
	}
}

// badgerDirectory creates dir if need be and returns its absolute path with
// no symbolic link in it: the one name of the directory, which the pool
// keys its database by, so that a config naming it through a link shares
// the database instead of finding it locked by this very process.
func badgerDirectory(dir string) (string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return dir, err
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return abs, err
	}
	return filepath.EvalSymlinks(abs)
}

// openPooledBadger opens dir, or takes another reference to its open
// database.
func openPooledBadger(dir string) (*badgerstore.Store, error) {
	val, _, err := badgerPool.LoadOrNew(dir, func() (caddy.Destructor, error) {
		// The pooled database outlives this config, so it logs to Caddy's
		// process logger rather than one that a reload may close.
		s, err := badgerstore.Open(badgerstore.Options{
			Dir:    dir,
			Logger: caddy.Log().Named("idempotency.badger"),
		})
		if err != nil {
			return nil, err
		}
		return pooledBadger{s}, nil
	})
	if err != nil {
		return nil, err
	}
	return val.(pooledBadger).Store, nil
}

// badgerLocked reports whether Badger refused a directory because another
// process holds its lock. Badger's error has no type to test; this sentence
// of it, the same on every platform, is what Badger's own tests check.
func badgerLocked(err error) bool {
	return strings.Contains(err.Error(), "Another process is using this Badger database")
}

// deferOpen leaves the open of dir, which another process holds, to the
// config's start. That process is most often the running Caddy that
// `caddy validate` checks a config for: validate provisions but never starts,
// so it passes without the database. A config that starts opens it then, or
// fails to start with an error that says who holds it.
func (b *BadgerModule) deferOpen(ctx caddy.Context, dir string) error {
	app, err := ctx.App(appID)
	if err != nil {
		return err
	}
	b.deferred = &deferredBadger{dir: dir, ready: make(chan struct{})}
	app.(*App).pending = append(app.(*App).pending, b)
	ctx.Logger().Warn("badger store directory is in use by another process; it is opened when the config starts, not before",
		zap.String("dir", dir))
	return nil
}

// Store returns the open store, or the one the config's start will open.
func (b *BadgerModule) Store() idempotency.Store {
	if b.deferred != nil {
		return b.deferred
	}
	return b.store
}

// opened records that this config holds a reference to dir's store, and
// shows the store on the admin API.
func (b *BadgerModule) opened(dir string, store *badgerstore.Store) {
	b.poolKey, b.store = dir, store
	b.unregister = adminStores.register("badger:"+dir, "badger", store)
}

// Cleanup drops this config's reference; the last one closes the database.
func (b *BadgerModule) Cleanup() error {
	if b.unregister != nil {
		b.unregister()
	}
	if b.deferred != nil {
		b.deferred.finish(nil, errors.New("idempotency: the config ended before its badger store was opened"))
	}
	if b.poolKey == "" {
		return nil // Provision failed, or the config never opened it
	}
	_, err := badgerPool.Delete(b.poolKey)
	b.poolKey, b.store = "", nil
	return err
}

// UnmarshalCaddyfile sets up the store from `store badger [<dir>]`.
func (b *BadgerModule) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the store name
	if d.NextArg() {
		b.Path = d.Val()
	}
	if d.NextArg() {
		return d.ArgErr()
	}
	if d.NextBlock(0) {
		return d.Errf("store badger takes no block")
	}
	return nil
}

// appID names App: `idempotency app module: start: ...` leads its errors.
const appID = "idempotency"

// App is the idempotency app. It has nothing to configure, and a config
// gets one only when a Badger store's directory was held by another process
// while the config was provisioned. Caddy binds listeners when it starts a
// config, not when it provisions one, so `caddy validate` works next to a
// running Caddy; App does the same for those directories' locks.
type App struct {
	pending []*BadgerModule
}

// CaddyModule returns the Caddy module information.
func (App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  appID,
		New: func() caddy.Module { return new(App) },
	}
}

// Start opens the stores whose directories were held at provisioning. One
// still held fails the start, so the config does not run.
func (a *App) Start() error {
	for _, b := range a.pending {
		dir := b.deferred.dir
		store, err := openPooledBadger(dir)
		if err != nil {
			if badgerLocked(err) {
				err = fmt.Errorf("badger store directory %s is in use by another process, usually another Caddy: change that Caddy's config with `caddy reload`, or stop it first: %w", dir, err)
			} else {
				err = fmt.Errorf("opening badger store at %s: %w", dir, err)
			}
			b.deferred.finish(nil, err)
			return err
		}
		b.opened(dir, store)
		b.deferred.finish(store, nil)
	}
	return nil
}

// Stop does nothing: each store's Cleanup releases its database.
func (a *App) Stop() error { return nil }

// deferredBadger is the store of a BadgerModule whose open waits for the
// config's start. Caddy starts its apps in no set order, so a request that
// the HTTP app takes first waits here for the open.
type deferredBadger struct {
	dir   string
	ready chan struct{} // closed once store or err is set
	once  sync.Once
	store *badgerstore.Store
	err   error
}

func (d *deferredBadger) finish(store *badgerstore.Store, err error) {
	d.once.Do(func() {
		d.store, d.err = store, err
		close(d.ready)
	})
}

func (d *deferredBadger) open(ctx context.Context) (*badgerstore.Store, error) {
	select {
	case <-d.ready:
		return d.store, d.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (d *deferredBadger) Begin(ctx context.Context, key idempotency.RecordKey, fp idempotency.Fingerprint, owner idempotency.OwnerToken, lease time.Duration) (idempotency.Record, bool, error) {
	s, err := d.open(ctx)
	if err != nil {
		return idempotency.Record{}, false, err
	}
	return s.Begin(ctx, key, fp, owner, lease)
}

func (d *deferredBadger) Renew(ctx context.Context, key idempotency.RecordKey, owner idempotency.OwnerToken, lease time.Duration) error {
	s, err := d.open(ctx)
	if err != nil {
		return err
	}
	return s.Renew(ctx, key, owner, lease)
}

func (d *deferredBadger) Complete(ctx context.Context, key idempotency.RecordKey, owner idempotency.OwnerToken, resp idempotency.Response, ttl time.Duration) error {
	s, err := d.open(ctx)
	if err != nil {
		return err
	}
	return s.Complete(ctx, key, owner, resp, ttl)
}

func (d *deferredBadger) Release(ctx context.Context, key idempotency.RecordKey, owner idempotency.OwnerToken) error {
	s, err := d.open(ctx)
	if err != nil {
		return err
	}
	return s.Release(ctx, key, owner)
}

func (d *deferredBadger) Hold(ctx context.Context, key idempotency.RecordKey, owner idempotency.OwnerToken, hold time.Duration) error {
	store, err := d.open(ctx)
	if err != nil {
		return err
	}
	return store.Hold(ctx, key, owner, hold)
}

func (d *deferredBadger) Get(ctx context.Context, key idempotency.RecordKey) (idempotency.Record, bool, error) {
	s, err := d.open(ctx)
	if err != nil {
		return idempotency.Record{}, false, err
	}
	return s.Get(ctx, key)
}

// Interface guards
var (
	_ caddy.App             = (*App)(nil)
	_ idempotency.Store     = (*deferredBadger)(nil)
	_ caddy.Provisioner     = (*BadgerModule)(nil)
	_ caddy.CleanerUpper    = (*BadgerModule)(nil)
	_ caddyfile.Unmarshaler = (*BadgerModule)(nil)
	_ StoreProvider         = (*BadgerModule)(nil)
)
