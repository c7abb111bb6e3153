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
	// Covered requests with a larger body get 413. Default: 1 MiB.
	MaxBody int64 `json:"max_body,omitempty"`
	// The largest 2xx body kept, in bytes. A larger one reaches its client
	// whole and completes the record without it: retries get 409
	// idempotency_response_not_stored. Default: 1 MiB.
	MaxResponse int64 `json:"max_response,omitempty"`
	// The status of a key reused with other parameters: 409 or 422. Default: 409.
	ConflictStatus int `json:"conflict_status,omitempty"`
	// Forward a keyed request unprotected, logging a warning, when the store
	// fails. Default: answer 503 idempotency_store_unavailable and forward nothing.
	FailOpen bool `json:"fail_open,omitempty"`
	// Where records are kept: a module of namespace
	// http.handlers.idempotency.stores. Default: badger in Caddy's data directory.
	StoreRaw json.RawMessage `json:"store,omitempty" caddy:"namespace=http.handlers.idempotency.stores inline_key=backend"`

	config  idempotency.Config   // built by Provision
	engine  *idempotency.Handler // built by Validate from config
	metrics *handlerMetrics
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
		RequireScope:   h.RequireScope,
		Methods:        h.Methods,
		TTL:            time.Duration(h.TTL),
		Lease:          time.Duration(h.LockTimeout),
		Wait:           h.wait(),
		Namespace:      h.Namespace,
		Listener:       serverListener,
		MaxBody:        h.MaxBody,
		MaxResponse:    h.MaxResponse,
		ConflictStatus: h.ConflictStatus,
		FailOpen:       h.FailOpen,
		Logger:         log,
		RequestID:      requestID,
		Observe:        h.observe,
		ObserveStore:   h.metrics.observeStore,
	}
}

// Validate checks the configuration and builds the engine from it. Caddy
// calls it right after Provision, before the handler serves a request. An
// error names the field as the config spells it.
func (h *HandlerModule) Validate() error {
	engine, err := idempotency.New(h.config)
	if ce, ok := errors.AsType[*idempotency.ConfigError](err); ok {
		return fmt.Errorf("idempotency: %s %s", cmp.Or(configFieldNames[ce.Field], ce.Field), ce.Msg)
	}
	if err != nil {
		return err
	}
	h.engine = engine
	return nil
}

// configFieldNames are the engine's Config fields by their names in the
// JSON config and the Caddyfile.
var configFieldNames = map[string]string{
	"TTL":            "ttl",
	"Lease":          "lock_timeout",
	"MaxBody":        "max_body",
	"MaxResponse":    "max_response",
	"ConflictStatus": "conflict_status",
	"Methods":        "methods",
	"Store":          "store",
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
