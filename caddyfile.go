package caddyidempotency

import (
	"net/http"
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dustin/go-humanize"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("idempotency", parseCaddyfile)
	// After encode, so the stored response is the uncompressed one; before
	// reverse_proxy, which it wraps. Auth and request_body run first.
	httpcaddyfile.RegisterDirectiveOrder("idempotency", httpcaddyfile.After, "encode")
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	handler := new(HandlerModule)
	err := handler.UnmarshalCaddyfile(h.Dispenser)
	return handler, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens:
//
//	idempotency [<matcher>] {
//		key_header      <name>
//		key_field       <name>|off
//		require_key
//		scope           <template>
//		require_scope
//		namespace       <name>
//		methods         <method...>
//		ttl             <duration>
//		lock_timeout    <duration>
//		wait            <duration>
//		max_body        <size>
//		max_response    <size>
//		conflict_status 409|422
//		fail_open
//		store           badger [<dir>] | memory | redis [<url>] { ... }
//	}
func (h *HandlerModule) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	return eachSubdirective(d, "subdirective", func(sub string) (err error) {
		switch sub {
		case "key_header":
			err = oneArg(d, &h.KeyHeader)
		case "key_field":
			err = oneArg(d, &h.KeyField)
		case "require_key":
			err = flagArg(d, &h.RequireKey)
		case "require_scope":
			err = flagArg(d, &h.RequireScope)
		case "fail_open":
			err = flagArg(d, &h.FailOpen)
		case "scope":
			err = oneArg(d, &h.Scope)
		case "methods":
			h.Methods = d.RemainingArgs()
			if len(h.Methods) == 0 {
				return d.ArgErr()
			}
		case "ttl":
			err = durationArg(d, &h.TTL)
		case "lock_timeout":
			err = durationArg(d, &h.LockTimeout)
		case "wait":
			var wait caddy.Duration
			if err = durationArg(d, &wait); err == nil {
				h.Wait = &wait
			}
		case "namespace":
			err = oneArg(d, &h.Namespace)
		case "max_body":
			err = sizeArg(d, &h.MaxBody)
		case "max_response":
			err = sizeArg(d, &h.MaxResponse)
		case "conflict_status":
			var s string
			if err = oneArg(d, &s); err == nil {
				h.ConflictStatus, err = strconv.Atoi(s)
				if err != nil || (h.ConflictStatus != http.StatusConflict && h.ConflictStatus != http.StatusUnprocessableEntity) {
					return d.Errf("conflict_status must be 409 or 422, not %q", s)
				}
			}
		case "store":
			err = h.unmarshalStore(d)
		default:
			return d.Errf("unrecognized idempotency subdirective %q", sub)
		}
		return err
	})
}

// eachSubdirective calls fn with the name of every line of the block, after
// refusing a name given twice (what names the lines in the error).
func eachSubdirective(d *caddyfile.Dispenser, what string, fn func(name string) error) error {
	seen := make(map[string]int)
	for d.NextBlock(0) {
		name := d.Val()
		if line, dup := seen[name]; dup {
			return d.Errf("%s %q is repeated (first given on line %d)", what, name, line)
		}
		seen[name] = d.Line()
		if err := fn(name); err != nil {
			return err
		}
	}
	return nil
}

// unmarshalStore reads `store <backend> [args]` into the backend's module,
// http.handlers.idempotency.stores.<backend>.
func (h *HandlerModule) unmarshalStore(d *caddyfile.Dispenser) error {
	if !d.NextArg() {
		return d.ArgErr()
	}
	name := d.Val()
	unm, err := caddyfile.UnmarshalModule(d, "http.handlers.idempotency.stores."+name)
	if err != nil {
		return err
	}
	h.StoreRaw = caddyconfig.JSONModuleObject(unm, "backend", name, nil)
	return nil
}

func oneArg(d *caddyfile.Dispenser, dst *string) error {
	if !d.AllArgs(dst) {
		return d.ArgErr()
	}
	return nil
}

func flagArg(d *caddyfile.Dispenser, dst *bool) error {
	if d.NextArg() {
		return d.ArgErr()
	}
	*dst = true
	return nil
}

func durationArg(d *caddyfile.Dispenser, dst *caddy.Duration) error {
	var s string
	if err := oneArg(d, &s); err != nil {
		return err
	}
	v, err := caddy.ParseDuration(s)
	if err != nil || v < 0 {
		return d.Errf("invalid duration %q", s)
	}
	*dst = caddy.Duration(v)
	return nil
}

func sizeArg(d *caddyfile.Dispenser, dst *int64) error {
	var s string
	if err := oneArg(d, &s); err != nil {
		return err
	}
	v, err := humanize.ParseBytes(s)
	if err != nil || v == 0 || v > 1<<40 {
		return d.Errf("invalid size %q", s)
	}
	*dst = int64(v)
	return nil
}

// Interface guard
var _ caddyfile.Unmarshaler = (*HandlerModule)(nil)
