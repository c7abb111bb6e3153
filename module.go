// Package caddyidempotency is the Caddy module http.handlers.idempotency: it
// makes POST requests (OpenAI-compatible batch creates above all) safe to
// retry. The engine lives in package idempotency; this is its Caddy adapter.
package caddyidempotency

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/caddy-idempotency/caddy-idempotency/idempotency"
)

func init() {
	caddy.RegisterModule(HandlerModule{})
}

// DefaultScope keys records by the caller's credential, so two API keys
// never share a record.
const DefaultScope = "{http.request.header.Authorization}"

// HandlerModule is the http.handlers.idempotency module. It makes covered
// requests idempotent: the first request with a key goes upstream and its 2xx
// response is stored; a retry with the same key and parameters gets the
// stored response, one with other parameters a conflict.
type HandlerModule struct {
	// The request header carrying the key. Default: Idempotency-Key.
	KeyHeader string `json:"key_header,omitempty"`
	// The top-level JSON body field carrying the key (llama-stack's
	// transport), removed before the request goes upstream. "off" disables
	// it. Default: idempotency_key.
	KeyField string `json:"key_field,omitempty"`
	// Answer 400 to a covered request that has no key.
	RequireKey bool `json:"require_key,omitempty"`
	// The tenant a request belongs to, with placeholders; records of different
	// scopes never meet. Default: {http.request.header.Authorization}.
	Scope string `json:"scope,omitempty"`
	// Answer 400 idempotency_scope_required to a keyed request whose scope is
	// empty, instead of giving all such requests one shared scope.
	RequireScope bool `json:"require_scope,omitempty"`
	// The records of the handlers with the same namespace may meet, whatever
	// host a request names. Default: the request's site, "host@listen": its
	// host name, lower-cased, and its server's listen address (":443"), so
	// two sites on one store never share a record.
	Namespace string `json:"namespace,omitempty"`
	// The covered methods. Default: POST.
	Methods []string `json:"methods,omitempty"`
	// How long a completed record replays. Default: 24h.
	TTL caddy.Duration `json:"ttl,omitempty"`
	// The lease of an in-flight record; a live owner renews it every third of
	// this, so it only runs out when the owner died. Default: 60s.
	LockTimeout caddy.Duration `json:"lock_timeout,omitempty"`
	// How long a duplicate of an in-flight request waits for its result,
	// which it then replays, before it is answered 409
	// idempotency_key_in_use; 0 answers at once. Default: 30s, so the OpenAI
	// SDKs' own retries of a duplicate end in a replay.
	Wait *caddy.Duration `json:"wait,omitempty"`
	// Covered requests with a larger body get 413. Default: 1 MiB. A keyed
	// body over 1 MiB that is not JSON or a form (an upload) is written to
	// spool_dir while it is hashed and sent upstream; JSON and form bodies
	// are parsed in memory, up to 32 MiB whatever this says.
	MaxBody int64 `json:"max_body,omitempty"`
	// The directory where a keyed body over 1 MiB is written while it is
	// hashed and sent upstream, one file per request, removed when the
	// request ends; files a stopped Caddy left are removed at start. It
	// needs room for the uploads in flight at once (at worst their number
	// times max_body); one it cannot write answers them 503
	// idempotency_spool_unavailable. Placeholders such as {env.X} are
	// replaced at start. Default: idempotency-spool in Caddy's data
	// directory, beside the default Badger store: on disk, and the user's
	// own.
	SpoolDir string `json:"spool_dir,omitempty"`
	// The largest 2xx body kept, in bytes. A larger one reaches its client
	// whole and completes the record without it: retries get 409
	// idempotency_response_not_stored. Default: 1 MiB.
	MaxResponse int64 `json:"max_response,omitempty"`
	// The status of a key reused with other parameters: 409 or 422. Default: 409.
	ConflictStatus int `json:"conflict_status,omitempty"`
	// Keep the key field in the JSON body sent upstream, for a backend that
	// deduplicates on it itself (OGX/llama-stack); it is still left out of
	// the fingerprint. Needs a key_field other than "off". Default: the field
	// is removed.
	ForwardKeyField bool `json:"forward_key_field,omitempty"`
	// Forward a keyed request unprotected, logging a warning, when the store
	// fails. Default: answer 503 idempotency_store_unavailable and forward nothing.
	FailOpen bool `json:"fail_open,omitempty"`
	// Find the result of a create whose outcome is ambiguous (the upstream
	// answered 500, 502 or 504, an error came after the request was sent, or
	// its owner died) by listing what the caller made, instead of letting the
	// key run again: the one result found is stored and answered
	// (reconciled); none found frees the key; unsure holds the record, and
	// retries get 409 idempotency_outcome_unknown until a search is sure.
	// Default: none; such a record is released, and its request reported
	// in_doubt with a warning.
	Reconcile *ReconcileConfig `json:"reconcile,omitempty"`
	// Where records are kept: a module of namespace
	// http.handlers.idempotency.stores. Default: badger in Caddy's data directory.
	StoreRaw json.RawMessage `json:"store,omitempty" caddy:"namespace=http.handlers.idempotency.stores inline_key=backend"`

	config  idempotency.Config   // built by Provision
	engine  *idempotency.Handler // built by Validate from config
	metrics *handlerMetrics
}

// ReconcileConfig is the handler's reconcile field: how it finds the result
// of an attempt whose outcome is ambiguous.
type ReconcileConfig struct {
	// What is reconciled, and how. "batches" (the only kind): a POST to a
	// path ending in /batches, the OpenAI-compatible batches API, whose
	// result is found by listing the caller's batches (GET on the same path,
	// newest first) back to the attempt's start. Other requests are not
	// reconciled. Required.
	Kind string `json:"kind"`
	// Add one metadata entry, tag_key, to each create sent upstream (a hash
	// of the record key, never the client's key), and find the attempt's
	// batch by that entry alone: exact, for a backend that keeps metadata.
	// Default: off; a batch matches when its input_file_id, endpoint,
	// completion_window and metadata equal the request's.
	Tag bool `json:"tag,omitempty"`
	// The metadata key of the tag; only with tag. Default: idempotency_tag.
	TagKey string `json:"tag_key,omitempty"`
	// How much earlier than the attempt's start (placed on the backend's
	// clock by its Date header) a batch's created_at may be and still be the
	// attempt's, since both have whole seconds; a duration. Default: 1s.
	Window caddy.Duration `json:"window,omitempty"`
	// Batches asked for per listing request (the list API's limit), 1 to
	// 100. Default: 100.
	PageSize int `json:"page_size,omitempty"`
	// The most listing requests one search sends; a search that does not
	// reach back to the attempt's start is unsure. Default: 10.
	Pages int `json:"pages,omitempty"`
	// How many searches of one record may end unsure (each holding it, its
	// retries answered 409 idempotency_outcome_unknown) before the record is
	// released with an error log, reported in_doubt with reason "gave up"
	// and counted by caddy_http_idempotency_reconcile_gave_up_total: a retry
	// may then run the create again. Default: 5.
	MaxDoubts int `json:"max_doubts,omitempty"`
}

// Kinds of reconcile.
const reconcileBatches = "batches"

// reconcileKinds lists the known kinds, for errors.
var reconcileKinds = []string{reconcileBatches}

// reconciler is the engine's Reconciler for r: nil without a reconcile
// field, and for a kind Validate refuses.
func (r *ReconcileConfig) reconciler() idempotency.Reconciler {
	if r == nil || r.Kind != reconcileBatches {
		return nil
	}
	return &idempotency.Batches{
		Tag:      r.Tag,
		TagKey:   r.TagKey,
		Window:   time.Duration(r.Window),
		PageSize: r.PageSize,
		Pages:    r.Pages,
	}
}

// maxDoubts is the engine's MaxDoubts: 0 (its default) without reconcile.
func (r *ReconcileConfig) maxDoubts() int {
	if r == nil {
		return 0
	}
	return r.MaxDoubts
}

// check refuses an unknown kind, a tag_key without tag, and the options
// Batches.Check refuses, each by its name in the config.
func (r *ReconcileConfig) check() error {
	switch {
	case r == nil:
		return nil
	case r.Kind == "":
		return fmt.Errorf("idempotency: reconcile.kind is required (known kinds: %s)", strings.Join(reconcileKinds, ", "))
	case !slices.Contains(reconcileKinds, r.Kind):
		return fmt.Errorf("idempotency: reconcile.kind %q is unknown (known kinds: %s)", r.Kind, strings.Join(reconcileKinds, ", "))
	case r.TagKey != "" && !r.Tag:
		return fmt.Errorf("idempotency: reconcile.tag_key %q is set without reconcile.tag", r.TagKey)
	}
	// One option at a time, so that the error names it.
	for _, opt := range []struct {
		name string
		b    idempotency.Batches
	}{
		{"tag_key", idempotency.Batches{TagKey: r.TagKey}},
		{"window", idempotency.Batches{Window: time.Duration(r.Window)}},
		{"page_size", idempotency.Batches{PageSize: r.PageSize}},
		{"pages", idempotency.Batches{Pages: r.Pages}},
	} {
		if err := opt.b.Check(); err != nil {
			return fmt.Errorf("idempotency: reconcile.%s: %s", opt.name, strings.TrimPrefix(err.Error(), "reconcile batches: "))
		}
	}
	if err := r.reconciler().(*idempotency.Batches).Check(); err != nil {
		return fmt.Errorf("idempotency: reconcile: %w", err)
	}
	return nil
}

// StoreProvider is what a store module (namespace
// http.handlers.idempotency.stores) gives the handler; the module's own
// Provision and Cleanup open and close what it provides. A store module from
// another plugin implements it to bring its own idempotency.Store.
type StoreProvider interface {
	Store() idempotency.Store
}

// CaddyModule returns the Caddy module information.
func (HandlerModule) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.idempotency",
		New: func() caddy.Module { return new(HandlerModule) },
	}
}

// Provision loads the store and sets up the engine's configuration.
func (h *HandlerModule) Provision(ctx caddy.Context) error {
	if h.StoreRaw == nil {
		h.StoreRaw = json.RawMessage(`{"backend":"badger"}`)
	}
	mod, err := ctx.LoadModule(h, "StoreRaw")
	if err != nil {
		return fmt.Errorf("loading idempotency store: %w", err)
	}
	provider, ok := mod.(StoreProvider)
	if !ok {
		return fmt.Errorf("module %T is not an idempotency store", mod)
	}
	if h.metrics, err = newHandlerMetrics(ctx.GetMetricsRegistry()); err != nil {
		return fmt.Errorf("registering idempotency metrics: %w", err)
	}
	h.config = h.engineConfig(provider.Store(), ctx.Logger())
	return nil
}

// engineConfig is the engine's Config for this module's fields, on store.
func (h *HandlerModule) engineConfig(store idempotency.Store, log *zap.Logger) idempotency.Config {
	scope := cmp.Or(h.Scope, DefaultScope)
	return idempotency.Config{
		Store:      store,
		KeyHeader:  h.KeyHeader,
		KeyField:   h.KeyField,
		RequireKey: h.RequireKey,
		Scope: func(r *http.Request) string {
			repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
			return repl.ReplaceAll(scope, "")
		},
		RequireScope:    h.RequireScope,
		Methods:         h.Methods,
		TTL:             time.Duration(h.TTL),
		Lease:           time.Duration(h.LockTimeout),
		Wait:            h.wait(),
		Namespace:       h.Namespace,
		Listener:        serverListener,
		MaxBody:         h.MaxBody,
		SpoolDir:        h.spoolDir(),
		MaxResponse:     h.MaxResponse,
		ConflictStatus:  h.ConflictStatus,
		Reconcile:       h.Reconcile.reconciler(),
		MaxDoubts:       h.Reconcile.maxDoubts(),
		ForwardKeyField: h.ForwardKeyField,
		FailOpen:        h.FailOpen,
		Logger:          log,
		RequestID:       requestID,
		Observe:         h.observe,
		ObserveStore:    h.metrics.observeStore,
	}
}

// Validate checks the configuration and builds the engine from it. Caddy
// calls it right after Provision, before the handler serves a request. An
// error names the field as the config spells it.
func (h *HandlerModule) Validate() error {
	if h.ForwardKeyField && h.KeyField == idempotency.KeyFieldOff {
		return errors.New("idempotency: forward_key_field needs a key_field, not off")
	}
	if err := h.Reconcile.check(); err != nil {
		return err
	}
	engine, err := idempotency.New(h.config)
	if err != nil {
		return namedConfigError(err)
	}
	h.engine = engine
	return nil
}

// namedConfigError names the field of an engine ConfigError as the config
// spells it ("Lease" is lock_timeout, "PageSize" reconcile.page_size); a
// field given as "Type.Field" ("Batches.PageSize") by its last part.
func namedConfigError(err error) error {
	ce, ok := errors.AsType[*idempotency.ConfigError](err)
	if !ok {
		return err
	}
	name := ce.Field
	for _, field := range []string{ce.Field, ce.Field[strings.LastIndexByte(ce.Field, '.')+1:]} {
		if n := cmp.Or(configFieldNames[field], reconcileFieldNames[field]); n != "" {
			name = n
			break
		}
	}
	return fmt.Errorf("idempotency: %s %s", name, ce.Msg)
}

// configFieldNames are the engine's Config fields by their names in the
// JSON config and the Caddyfile (a field of a block as block.field).
var configFieldNames = map[string]string{
	"TTL":             "ttl",
	"Lease":           "lock_timeout",
	"MaxBody":         "max_body",
	"SpoolDir":        "spool_dir",
	"MaxResponse":     "max_response",
	"ConflictStatus":  "conflict_status",
	"Methods":         "methods",
	"Store":           "store",
	"KeyField":        "key_field",
	"ForwardKeyField": "forward_key_field",
	"Reconcile":       "reconcile",
	"MaxDoubts":       "reconcile.max_doubts",
}

// reconcileFieldNames are the fields of the engine's Reconcilers (Batches)
// by their names in the reconcile block.
var reconcileFieldNames = map[string]string{
	"Tag":      "reconcile.tag",
	"TagKey":   "reconcile.tag_key",
	"Window":   "reconcile.window",
	"PageSize": "reconcile.page_size",
	"Pages":    "reconcile.pages",
}

// serverListener names the Caddy server a request arrived on by its listen
// addresses as configured (":443", "127.0.0.2:8480", "unix//run/api.sock"):
// the same across reloads, and different for two servers, whatever their
// connections' local addresses (a PROXY header sets those) say.
func serverListener(r *http.Request) string {
	srv, ok := r.Context().Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server)
	switch {
	case !ok || len(srv.Listen) == 0:
		return ""
	case len(srv.Listen) == 1:
		return srv.Listen[0]
	}
	return strings.Join(srv.Listen, ",")
}

// spoolDir is the engine's SpoolDir: spool_dir with its placeholders
// replaced, else idempotency-spool in Caddy's data directory.
func (h *HandlerModule) spoolDir() string {
	if h.SpoolDir == "" {
		return filepath.Join(caddy.AppDataDir(), "idempotency-spool")
	}
	return caddy.NewReplacer().ReplaceKnown(h.SpoolDir, "")
}

// wait is the engine's Wait: unset takes its default, 0 means none.
func (h *HandlerModule) wait() time.Duration {
	switch {
	case h.Wait == nil:
		return 0
	case *h.Wait == 0:
		return -1
	}
	return time.Duration(*h.Wait)
}

// ServeHTTP adapts the engine to Caddy's middleware chain.
func (h *HandlerModule) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	return h.engine.Handle(w, r, next.ServeHTTP)
}

// Interface guards
var (
	_ caddy.Provisioner           = (*HandlerModule)(nil)
	_ caddy.Validator             = (*HandlerModule)(nil)
	_ caddyhttp.MiddlewareHandler = (*HandlerModule)(nil)
)
