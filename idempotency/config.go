package idempotency

import (
	"fmt"
	"net/http"
	"time"

	"go.uber.org/zap"
)

// Defaults of Config, as documented in the README.
const (
	DefaultKeyHeader = "Idempotency-Key"
	DefaultKeyField  = "idempotency_key"
	DefaultTTL       = 24 * time.Hour
	DefaultLease     = 60 * time.Second
	// DefaultWait holds a duplicate of an in-flight request long enough for a
	// create of up to 30s to finish: the OpenAI SDKs retry an in-use answer
	// only twice, about a second apart, so waiting here is what ends their
	// duplicates in a replay.
	DefaultWait           = 30 * time.Second
	DefaultMaxBody        = 1 << 20 // bytes
	DefaultMaxResponse    = 1 << 20 // bytes
	DefaultConflictStatus = http.StatusConflict

	// KeyFieldOff as Config.KeyField turns the body field off.
	KeyFieldOff = "off"
	// NoWait as Config.Wait answers a duplicate of an in-flight request with
	// 409 idempotency_key_in_use at once.
	NoWait time.Duration = -1
)

// Config configures a Handler. Zero values take the defaults above.
type Config struct {
	Store Store // required; the Handler does not close it

	KeyHeader  string // header carrying the key; default DefaultKeyHeader
	KeyField   string // top-level JSON body field carrying the key; default DefaultKeyField; KeyFieldOff disables it
	RequireKey bool   // answer 400 to a covered request without a key
	// Scope returns the tenant a request belongs to; records of different
	// scopes never meet. Default: the Authorization header.
	Scope func(*http.Request) string
	// RequireScope answers 400 to a keyed request whose scope is empty
	// (by default: no Authorization header) instead of giving all such
	// requests one shared scope.
	RequireScope bool
	// Namespace is shared by the requests whose records may meet. Default
	// (""): the request's site, its host and listener (see
	// DefaultNamespace), so two sites on one store never replay each
	// other's responses. With a store that outlives the process or serves
	// a fleet, set it (or Listener) to a fixed name: a listener on another
	// port, after a restart or on another instance, would be another site.
	Namespace string
	// Listener names the listener a request arrived on, for the default
	// namespace: the Caddy adapter gives the server's listen addresses.
	// Default (nil, or ""): ":" and the port of the request's local address.
	Listener func(*http.Request) string
	Methods  []string // covered methods, upper case; default POST

	// TTL is how long a completed record replays: at least a second;
	// default DefaultTTL.
	TTL time.Duration
	// Lease is the length of an in-flight record's lease (the Caddyfile's
	// lock_timeout): at least 100ms; default DefaultLease. A live owner
	// renews it every third of this, so it only runs out when the owner died.
	Lease time.Duration
	// Wait is how long a duplicate of an in-flight request waits for its
	// result, which it then replays. 0 takes DefaultWait; NoWait (or any
	// negative value) answers 409 idempotency_key_in_use at once.
	Wait time.Duration

	// MaxBody is the largest covered request body read, in bytes, before
	// and after its Content-Encoding is decoded; a larger one gets 413.
	// Default DefaultMaxBody. A JSON or urlencoded form body is parsed in
	// memory and limited to MaxParsedBody (32 MiB) as well; another body
	// larger than SpoolThreshold (1 MiB) is spooled to SpoolDir.
	MaxBody int64
	// SpoolDir is where a covered body larger than SpoolThreshold (1 MiB)
	// is written while it is admitted and sent upstream, one file per
	// request, removed when the request ends; files left by a process that
	// died are removed when a Handler starts. It needs room for the
	// largest bodies of the uploads in flight at once (concurrent uploads
	// times MaxBody at worst). A directory that cannot be created or
	// written answers such uploads 503 idempotency_spool_unavailable.
	// Default: DefaultSpoolDir(). Unused when MaxBody is at most
	// SpoolThreshold.
	SpoolDir string
	// MaxResponse is the largest 2xx body kept, in bytes (identity-coded);
	// default DefaultMaxResponse. A larger one still reaches its client
	// whole, and completes the record without it: retries get 409
	// idempotency_response_not_stored.
	MaxResponse int64
	// ConflictStatus answers a key reused with other parameters: 409
	// (the default) or 422.
	ConflictStatus int

	// Reconcile, when set, finds the result of an attempt whose outcome is
	// ambiguous (a 500, 502 or 504, an error after the request was sent, a
	// dead owner's record taken over) instead of letting the key run again:
	// exactly one result found completes the record with it; none found
	// releases the key; unsure holds the record (409
	// idempotency_outcome_unknown) for the next retry to look again. Nil:
	// such a record is released, reported in_doubt with a warning.
	Reconcile Reconciler
	// MaxDoubts is how many times one record may end unsure before it is
	// released with an error log (reported in_doubt, reason "gave up"): 1
	// to MaxDoubtsLimit; default DefaultMaxDoubts.
	MaxDoubts int
	// ForwardKeyField keeps the key field in the JSON body sent upstream,
	// for a backend that deduplicates on it itself (OGX/llama-stack). It is
	// still left out of the fingerprint.
	ForwardKeyField bool

	// FailOpen forwards a keyed request unprotected, with a warning, when the
	// store cannot begin it. The default answers 503 and forwards nothing: a
	// create that went upstream without a record could be duplicated by a retry.
	FailOpen bool

	// Logger receives the warnings and errors of the store and the lease,
	// and one debug line per decision. Default (nil): no logs at all
	// (zap.NewNop).
	Logger *zap.Logger
	// RequestID names a request in log lines (request_id); nil leaves it out.
	// Called only when a line is written.
	RequestID func(*http.Request) string
	// Observe, when set, is told each request's Decision once, before the
	// answer is written (for a response passed through, before its header).
	Observe func(*http.Request, Decision)
	// ObserveStore, when set, is told of every call to Store as it returns,
	// for timing the store and counting the requests upstream.
	ObserveStore func(StoreCall)
}

func (c *Config) setDefaults() error {
	if c.Store == nil {
		return configError("Store", "is required")
	}
	if c.KeyHeader == "" {
		c.KeyHeader = DefaultKeyHeader
	}
	if c.KeyField == "" {
		c.KeyField = DefaultKeyField
	}
	if c.Scope == nil {
		c.Scope = func(r *http.Request) string { return r.Header.Get("Authorization") }
	}
	if len(c.Methods) == 0 {
		c.Methods = []string{http.MethodPost}
	}
	if c.TTL == 0 {
		c.TTL = DefaultTTL
	}
	if c.Wait == 0 {
		c.Wait = DefaultWait
	}
	if c.Lease == 0 {
		c.Lease = DefaultLease
	}
	if c.MaxBody == 0 {
		c.MaxBody = DefaultMaxBody
	}
	if c.SpoolDir == "" {
		c.SpoolDir = DefaultSpoolDir()
	}
	if c.MaxResponse == 0 {
		c.MaxResponse = DefaultMaxResponse
	}
	if c.ConflictStatus == 0 {
		c.ConflictStatus = DefaultConflictStatus
	}
	if c.MaxDoubts == 0 {
		c.MaxDoubts = DefaultMaxDoubts
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	return c.validate()
}

// ConfigError is a Config that New refuses. Field names the field at fault
// as Go spells it ("Lease", "ConflictStatus"), so an adapter can name it in
// its own configuration's words (the Caddyfile's lock_timeout is Lease).
type ConfigError struct {
	Field string // the Config field
	Msg   string // what is wrong with it, e.g. "must be at least 100ms, not 10ms"
}

func (e *ConfigError) Error() string { return "idempotency: Config." + e.Field + " " + e.Msg }

func configError(field, format string, args ...any) error {
	return &ConfigError{Field: field, Msg: fmt.Sprintf(format, args...)}
}

// validate checks the fields that have rules beyond their type.
func (c *Config) validate() error {
	switch {
	case c.TTL < time.Second:
		return configError("TTL", "must be at least 1s, not %s", c.TTL)
	case c.Lease < 100*time.Millisecond:
		return configError("Lease", "must be at least 100ms, not %s", c.Lease)
	case c.MaxBody < 0:
		return configError("MaxBody", "must be 0 (the default) or more bytes, not %d", c.MaxBody)
	case c.MaxResponse < 0:
		return configError("MaxResponse", "must be 0 (the default) or more bytes, not %d", c.MaxResponse)
	case c.ConflictStatus != http.StatusConflict && c.ConflictStatus != http.StatusUnprocessableEntity:
		return configError("ConflictStatus", "must be 409 or 422, not %d", c.ConflictStatus)
	case c.MaxDoubts < 0 || c.MaxDoubts > MaxDoubtsLimit:
		return configError("MaxDoubts", "must be 0 (the default) to %d, not %d", MaxDoubtsLimit, c.MaxDoubts)
	}
	for _, m := range c.Methods {
		if !isUpperMethod(m) {
			return configError("Methods", "holds %q, which is not an upper-case HTTP method", m)
		}
	}
	return nil
}

func isUpperMethod(m string) bool {
	for i := 0; i < len(m); i++ {
		if c := m[i]; c < 'A' || c > 'Z' {
			return false
		}
	}
	return m != ""
}
