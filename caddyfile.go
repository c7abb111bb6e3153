package caddyidempotency

import (
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dustin/go-humanize"

	"github.com/caddy-idempotency/caddy-idempotency/idempotency"
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
//		key_field       <name> {
//			forward
//		}
//		require_key
//		scope           <template>
//		require_scope
//		namespace       <name>
//		methods         <method...>
//		ttl             <duration>
//		lock_timeout    <duration>
//		wait            <duration>
//		max_body        <size>
//		spool_dir       <path>
//		max_response    <size>
//		conflict_status 409|422
//		fail_open
//		store           badger [<dir>] | memory | redis [<url>] { ... }
//		reconcile       batches {
//			tag        [<metadata_key>]
//			window     <duration>
//			page_size  <n>
//			pages      <n>
//			max_doubts <n>
//		}
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
			err = h.unmarshalKeyField(d)
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
		case "spool_dir":
			err = oneArg(d, &h.SpoolDir)
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
		case "reconcile":
			h.Reconcile, err = unmarshalReconcile(d)
		default:
			return d.Errf("unrecognized idempotency subdirective %q", sub)
		}
		return err
	})
}

// eachSubdirective calls fn with the name of every line of the block that
// opens on the current line, after refusing a name given twice (what names
// the lines in the error).
func eachSubdirective(d *caddyfile.Dispenser, what string, fn func(name string) error) error {
	seen := make(map[string]int)
	for nesting := d.Nesting(); d.NextBlock(nesting); {
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

// unmarshalKeyField reads `key_field <name>|off`, or `key_field <name> {
// forward }`.
func (h *HandlerModule) unmarshalKeyField(d *caddyfile.Dispenser) error {
	if err := oneArg(d, &h.KeyField); err != nil {
		return err
	}
	return eachSubdirective(d, "key_field subdirective", func(sub string) error {
		switch sub {
		case "forward":
			if h.KeyField == idempotency.KeyFieldOff {
				return d.Err("key_field off cannot forward: there is no field")
			}
			return flagArg(d, &h.ForwardKeyField)
		}
		return d.Errf("unrecognized key_field subdirective %q", sub)
	})
}

// unmarshalReconcile reads `reconcile <kind> [{ ... }]`.
func unmarshalReconcile(d *caddyfile.Dispenser) (*ReconcileConfig, error) {
	r := new(ReconcileConfig)
	if err := oneArg(d, &r.Kind); err != nil {
		return nil, err
	}
	if !slices.Contains(reconcileKinds, r.Kind) {
		return nil, d.Errf("unknown reconcile kind %q (known kinds: %s)", r.Kind, strings.Join(reconcileKinds, ", "))
	}
	err := eachSubdirective(d, "reconcile subdirective", func(sub string) (err error) {
		switch sub {
		case "tag":
			r.Tag = true
			switch args := d.RemainingArgs(); len(args) {
			case 0:
			case 1:
				r.TagKey = args[0]
			default:
				return d.ArgErr()
			}
		case "window":
			if err = durationArg(d, &r.Window); err == nil && r.Window == 0 {
				return d.Err("window must be more than 0")
			}
		case "page_size":
			err = intRangeArg(d, &r.PageSize, 1, idempotency.DefaultBatchesPageSize)
		case "pages":
			err = intRangeArg(d, &r.Pages, 1, 0)
		case "max_doubts":
			err = intRangeArg(d, &r.MaxDoubts, 1, 0)
		default:
			return d.Errf("unrecognized reconcile subdirective %q", sub)
		}
		return err
	})
	return r, err
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

// intRangeArg reads a whole number of at least lo and, unless hi is 0, at
// most hi.
func intRangeArg(d *caddyfile.Dispenser, dst *int, lo, hi int) error {
	name := d.Val()
	var s string
	if err := oneArg(d, &s); err != nil {
		return err
	}
	v, err := strconv.Atoi(s)
	switch {
	case hi == 0 && (err != nil || v < lo):
		return d.Errf("%s must be a whole number, at least %d, not %q", name, lo, s)
	case hi != 0 && (err != nil || v < lo || v > hi):
		return d.Errf("%s must be a whole number from %d to %d, not %q", name, lo, hi, s)
	}
	*dst = v
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
