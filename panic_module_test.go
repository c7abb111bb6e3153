package caddyidempotency

import (
	"net/http"
	"strconv"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// panicHandler is a test-only middleware, http.handlers.test_panic: its first
// Panics requests panic (with http.ErrAbortHandler when Abort is set), later
// ones go on down the chain.
//
//	test_panic {
//		panics <n>
//		abort
//	}
type panicHandler struct {
	Panics int  `json:"panics,omitempty"`
	Abort  bool `json:"abort,omitempty"`

	left atomic.Int64
}

func init() {
	caddy.RegisterModule(new(panicHandler))
	httpcaddyfile.RegisterHandlerDirective("test_panic", func(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
		p := new(panicHandler)
		return p, p.UnmarshalCaddyfile(h.Dispenser)
	})
}

func (*panicHandler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "http.handlers.test_panic", New: func() caddy.Module { return new(panicHandler) }}
}

func (p *panicHandler) Provision(caddy.Context) error {
	p.left.Store(int64(p.Panics))
	return nil
}

func (p *panicHandler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if p.left.Add(-1) >= 0 {
		if p.Abort {
			panic(http.ErrAbortHandler)
		}
		panic("test_panic: injected panic")
	}
	return next.ServeHTTP(w, r)
}

func (p *panicHandler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next()
	for d.NextBlock(0) {
		switch d.Val() {
		case "panics":
			if !d.NextArg() {
				return d.ArgErr()
			}
			n, err := strconv.Atoi(d.Val())
			if err != nil {
				return d.Errf("panics: %v", err)
			}
			p.Panics = n
		case "abort":
			p.Abort = true
		default:
			return d.Errf("unknown test_panic option %q", d.Val())
		}
	}
	return nil
}

var (
	_ caddy.Provisioner           = (*panicHandler)(nil)
	_ caddyhttp.MiddlewareHandler = (*panicHandler)(nil)
)
