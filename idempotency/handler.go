package idempotency

import (
	"net/http"
	"time"

	"go.uber.org/zap"
)

// Next is the rest of the handler chain, in Caddy's shape: it may return an
// error instead of writing a response.
type Next func(http.ResponseWriter, *http.Request) error

// Handler is the idempotency engine: safe for concurrent use, one per
// configuration. It does not own its Store.
type Handler struct {
	cfg     Config
	store   Store // cfg.Store, observed when cfg.ObserveStore is set
	methods map[string]bool
	waiters waitList
	// spoolAbove is the largest body admission holds in memory:
	// SpoolThreshold (tests lower it).
	spoolAbove int64
}

// New checks cfg, fills its defaults and returns a Handler.
func New(cfg Config) (*Handler, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	h := &Handler{cfg: cfg, store: cfg.Store, methods: make(map[string]bool, len(cfg.Methods)), spoolAbove: SpoolThreshold}
	if cfg.MaxBody > SpoolThreshold {
		// Unwritable now, the directory may be fixed later: each upload
		// that cannot be spooled gets 503, with the error logged.
		if n, err := prepareSpoolDir(cfg.SpoolDir); err != nil {
			cfg.Logger.Warn("idempotency spool directory not ready; large uploads get 503 until it is",
				zap.String("spool_dir", cfg.SpoolDir), zap.Error(err))
		} else if n > 0 {
			cfg.Logger.Info("idempotency spool directory swept of files left by an earlier run",
				zap.String("spool_dir", cfg.SpoolDir), zap.Int("removed", n))
		}
	}
	if cfg.ObserveStore != nil {
		h.store = observedStore{Store: cfg.Store, observe: cfg.ObserveStore}
	}
	for _, m := range cfg.Methods {
		h.methods[m] = true
	}
	return h, nil
}

// Config returns the configuration in force, defaults filled in.
func (h *Handler) Config() Config { return h.cfg }

// Middleware adapts the Handler to plain net/http.
func (h *Handler) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = h.Handle(w, r, func(w http.ResponseWriter, r *http.Request) error {
			next.ServeHTTP(w, r)
			return nil
		})
	})
}

// Handle runs one request through the flow of the README: admission (key,
// body, fingerprint) or a refusal; then the claim of its record, which
// sends it upstream as the record's owner (forward.go), replays the record
// (replay.go) or refuses it. Its outcome is reported once, to Config.Observe
// and in a debug line, before its answer is written. It answers every
// refusal itself; the error it returns is next's. It is for chains whose
// handlers return errors, as Caddy's do; Middleware wraps it as a plain
// http.Handler.
func (h *Handler) Handle(w http.ResponseWriter, r *http.Request, next Next) error {
	x := h.start(r)
	ans := passing // not covered, or without a key: the request goes on as it came
	if h.methods[r.Method] {
		a, ref := h.admit(r)
		if spool := a.spool; spool != nil {
			// Whatever becomes of the request (stored, released, refused,
			// replayed, its client gone, a panic), its spooled body goes.
			defer spool.remove()
		}
		switch {
		case ref != nil:
			ans = refuse(OutcomeRejected, *ref)
		case a.keyed:
			x.log = x.log.withKey(a.rk)
			ans = h.claim(r, &a, x.log)
		}
	}
	if ans.how == answerForward {
		return h.forward(w, &ans, next, x) // decided as its response starts or its record settles
	}
	x.decide(ans.verdict)
	return ans.give(w, r, next)
}

// answer is what the steps before the upstream made of a request: the
// verdict it is reported as, and how it is answered.
type answer struct {
	verdict
	how        answerKind
	owner      OwnerToken    // answerForward: the record's owner token
	upstream   *http.Request // answerForward: the request as it goes upstream
	claimed    Record        // answerForward: the record as Begin returned it
	attempt    *Attempt      // answerForward: set when Config.Reconcile covers the request
	replay     *Response     // answerReplay: the completed record's response
	refusal    refusal       // answerRefuse: what the error envelope says
	retryAfter time.Duration // answerRefuse: when a key in use may be asked for again; 0: not said
}

type answerKind uint8

const (
	answerPass    answerKind = iota // next, with the request as it is
	answerForward                   // next, as the record's owner
	answerReplay                    // the record's response
	answerRefuse                    // the error envelope
	answerNone                      // nothing: the client has left
)

var (
	passing  = answer{verdict: verdict{outcome: OutcomePassthrough}, how: answerPass}
	canceled = answer{verdict: verdict{outcome: OutcomeCanceled}, how: answerNone}
)

// refuse answers ref in the error envelope, reported as o with its code.
func refuse(o Outcome, ref refusal) answer {
	return answer{verdict: verdict{outcome: o, status: ref.status, reason: ref.code, coded: true}, how: answerRefuse, refusal: ref}
}

// give answers the client as ans says, for every answer but forwarding.
func (ans *answer) give(w http.ResponseWriter, r *http.Request, next Next) error {
	switch ans.how {
	case answerPass:
		return next(w, r)
	case answerReplay:
		writeReplay(w, ans.replay)
	case answerRefuse:
		if ans.retryAfter > 0 {
			setRetryAfter(w.Header(), ans.retryAfter)
		}
		writeError(w, ans.refusal.status, ans.refusal.code, ans.refusal.message, ans.refusal.retry)
	}
	return nil
}
