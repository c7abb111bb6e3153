package caddyidempotency

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-idempotency/caddy-idempotency/idempotency"
)

func init() {
	caddy.RegisterModule(AdminAPI{})
}

// AdminAPI is the admin module admin.api.idempotency: it serves /idempotency/
// on Caddy's admin endpoint, so it has that endpoint's listener, Host and
// Origin checks and remote-admin access control, and nothing else.
//
//	GET    /idempotency/stores                   the stores in use
//	GET    /idempotency/stats                    counts of live records: total, in_flight, completed, in_doubt
//	GET    /idempotency/records?namespace=&scope=&key=   one record (&body=1: with its response)
//	GET    /idempotency/records/<key hash>       the same, by the key_hash of the logs
//	DELETE /idempotency/records...               purge it
//
// The stores are those of the handlers provisioned now, which register them
// as they are provisioned. With several, ?store=<name> picks one (names from
// /idempotency/stores).
type AdminAPI struct{}

// CaddyModule returns the Caddy module information.
func (AdminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.idempotency",
		New: func() caddy.Module { return new(AdminAPI) },
	}
}

const adminBase = "/idempotency/"

// adminBodyLimit bounds a JSON request body ({"namespace":..., "scope":..., "key":...}).
const adminBodyLimit = 64 << 10

// Routes returns the one route under which the API lives.
func (AdminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{{Pattern: adminBase, Handler: caddy.AdminHandlerFunc(serveAdmin)}}
}

func serveAdmin(w http.ResponseWriter, r *http.Request) error {
	path := strings.TrimPrefix(r.URL.Path, adminBase)
	switch {
	case path == "stores":
		if err := adminCheck(r, []string{http.MethodGet}); err != nil {
			return err
		}
		return writeJSON(w, adminStores.list())
	case path == "stats":
		if err := adminCheck(r, []string{http.MethodGet}, "store"); err != nil {
			return err
		}
		return serveStats(w, r)
	case path == "records" || strings.HasPrefix(path, "records/"):
		params := []string{"store"}
		if path == "records" {
			params = append(params, "namespace", "scope", "key")
		}
		if r.Method == http.MethodGet {
			params = append(params, "body")
		}
		if err := adminCheck(r, []string{http.MethodGet, http.MethodDelete}, params...); err != nil {
			return err
		}
		return serveRecord(w, r, path)
	}
	return adminError(http.StatusNotFound, "no idempotency admin resource at %s: use %[2]sstores, %[2]sstats or %[2]srecords", r.URL.Path, adminBase)
}

// adminCheck refuses other methods, and query parameters other than params
// or given twice, so that a typo is an error rather than ignored.
func adminCheck(r *http.Request, methods []string, params ...string) error {
	if !slices.Contains(methods, r.Method) {
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: fmt.Errorf("method %s not allowed; use %s", r.Method, strings.Join(methods, " or "))}
	}
	query, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return adminError(http.StatusBadRequest, "bad query string: %v", err)
	}
	for name, values := range query {
		switch {
		case !slices.Contains(params, name):
			return adminError(http.StatusBadRequest, "unknown query parameter %q here; this endpoint takes %q", name, params)
		case len(values) > 1:
			return adminError(http.StatusBadRequest, "query parameter %q given %d times", name, len(values))
		}
	}
	return nil
}

func serveStats(w http.ResponseWriter, r *http.Request) error {
	s, admin, err := adminStoreFor(r)
	if err != nil {
		return err
	}
	st, err := admin.Stats(r.Context())
	if err != nil {
		return storeFailed(s, err)
	}
	return writeJSON(w, struct {
		Store     string `json:"store"`
		Total     int64  `json:"total"` // in_flight + completed + in_doubt
		InFlight  int64  `json:"in_flight"`
		Completed int64  `json:"completed"`
		InDoubt   int64  `json:"in_doubt"`
	}{s.Name, st.Total(), st.InFlight, st.Completed, st.InDoubt})
}

func serveRecord(w http.ResponseWriter, r *http.Request, path string) error {
	var withBody bool
	if v := r.URL.Query().Get("body"); v != "" {
		var err error
		if withBody, err = strconv.ParseBool(v); err != nil {
			return adminError(http.StatusBadRequest, "body=%q: want 1 or 0", v)
		}
	}
	key, err := adminRecordKey(w, r, path)
	if err != nil {
		return err
	}
	s, admin, err := adminStoreFor(r)
	if err != nil {
		return err
	}
	if r.Method == http.MethodDelete {
		found, err := admin.Purge(r.Context(), key)
		if err != nil {
			return storeFailed(s, err)
		}
		if !found {
			return adminError(http.StatusNotFound, "no live record %s in store %s (nothing to purge)", key, s.Name)
		}
		return writeJSON(w, struct {
			Store   string `json:"store"`
			KeyHash string `json:"key_hash"`
			Purged  bool   `json:"purged"`
		}{s.Name, key.String(), true})
	}
	rec, ok, err := s.store.Get(r.Context(), key)
	if err != nil {
		return storeFailed(s, err)
	}
	if !ok {
		return adminError(http.StatusNotFound, "no live record %s in store %s", key, s.Name)
	}
	return writeJSON(w, newAdminRecord(s.Name, key, &rec, withBody))
}

// adminRecordKey is the record key of /records/<hex>, or of the namespace, scope and key
// given in the query or in a JSON body (which Caddy does not log, unlike the
// URI: the scope is usually a credential).
func adminRecordKey(w http.ResponseWriter, r *http.Request, path string) (idempotency.RecordKey, error) {
	var key idempotency.RecordKey
	if hash, ok := strings.CutPrefix(path, "records/"); ok {
		b, err := hex.DecodeString(hash)
		if err != nil || len(b) != len(key) {
			return key, adminError(http.StatusBadRequest, "record key hash %q: want 64 hex digits, the key_hash of the handler's logs", hash)
		}
		return idempotency.RecordKey(b), nil
	}
	var in struct {
		Namespace *string `json:"namespace"`
		Scope     *string `json:"scope"`
		Key       *string `json:"key"`
	}
	query := r.URL.Query()
	if query.Has("namespace") {
		in.Namespace = new(query.Get("namespace"))
	}
	if query.Has("scope") {
		in.Scope = new(query.Get("scope"))
	}
	if query.Has("key") {
		in.Key = new(query.Get("key"))
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, adminBodyLimit))
	if err != nil {
		return key, adminError(http.StatusBadRequest, "reading the request body: %v", err)
	}
	if len(strings.TrimSpace(string(body))) > 0 {
		if in.Namespace != nil || in.Scope != nil || in.Key != nil {
			return key, adminError(http.StatusBadRequest, "give namespace, scope and key in the query or in a JSON body, not both")
		}
		dec := json.NewDecoder(strings.NewReader(string(body)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&in); err != nil {
			return key, adminError(http.StatusBadRequest, `the body must be {"namespace": "...", "scope": "...", "key": "..."}: %v`, err)
		}
	}
	if in.Key == nil {
		return key, adminError(http.StatusBadRequest, "key is required: the client's idempotency key, or use %srecords/<key hash>", adminBase)
	}
	if in.Namespace == nil {
		return key, adminError(http.StatusBadRequest, "namespace is required: the handler's namespace, by default the request's site as host@listen: its host name, lower-cased, and its server's listen address, such as api.example.com@:443")
	}
	if in.Scope == nil {
		return key, adminError(http.StatusBadRequest, "scope is required: what the handler's scope gives for the client (by default its Authorization header value); it may be empty")
	}
	if err := idempotency.ValidateKey(*in.Key); err != nil {
		return key, adminError(http.StatusBadRequest, "key: %v", err)
	}
	return idempotency.NewRecordKey(*in.Namespace, *in.Scope, *in.Key), nil
}

// adminRecord is a record as the API shows it: never its owner token, and
// the stored response only on request.
type adminRecord struct {
	Store       string       `json:"store"`
	KeyHash     string       `json:"key_hash"`
	State       string       `json:"state"`
	Fingerprint string       `json:"fingerprint"`
	Created     time.Time    `json:"created"`
	LeaseUntil  *time.Time   `json:"lease_until,omitempty"`
	Expires     *time.Time   `json:"expires,omitempty"` // completed: replays end; in doubt: the hold ends
	Doubts      int          `json:"doubts,omitempty"`  // owners that could not find out whether the upstream acted
	Status      int          `json:"status,omitempty"`
	BodyBytes   *int         `json:"body_bytes,omitempty"`
	Headers     *http.Header `json:"headers,omitempty"`
	Body        *string      `json:"body,omitempty"`
	BodyBase64  []byte       `json:"body_base64,omitempty"` // a body that is not UTF-8
}

func newAdminRecord(store string, key idempotency.RecordKey, rec *idempotency.Record, withBody bool) adminRecord {
	out := adminRecord{
		Store:       store,
		KeyHash:     key.String(),
		State:       rec.State.String(),
		Fingerprint: hex.EncodeToString(rec.Fingerprint[:]),
		Created:     rec.CreatedAt.UTC(),
	}
	if rec.State == idempotency.StateInFlight {
		out.LeaseUntil = new(rec.LeaseUntil.UTC())
	}
	if rec.State == idempotency.StateCompleted || rec.State == idempotency.StateInDoubt {
		out.Expires = new(rec.ExpiresAt.UTC())
	}
	out.Doubts = rec.Doubts
	if resp := rec.Response; resp != nil {
		out.Status, out.BodyBytes = resp.Status, new(len(resp.Body))
		if withBody {
			header := resp.Header
			if header == nil {
				header = http.Header{}
			}
			out.Headers = &header
			if utf8.Valid(resp.Body) {
				out.Body = new(string(resp.Body))
			} else {
				out.BodyBase64 = resp.Body
			}
		}
	}
	return out
}

// namedStore is a store in use, as /stores lists it.
type namedStore struct {
	Name    string `json:"name"`
	Backend string `json:"backend"`
	store   idempotency.Store
}

// adminStores holds the stores of the provisioned handlers, by name: a store
// module registers its store once it has one, and Cleanup unregisters it.
// Configs that share a store across a reload each hold a registration.
var adminStores storeRegistry

type storeRegistry struct {
	mu sync.Mutex
	// stores are the live registrations of each name, oldest first. Stores of
	// one name hold the same records, but not always one client: a reload
	// that changes a Redis pool size opens a new one and closes the old, so
	// the newest registration is the one to use.
	stores map[string][]*namedStore
}

// register adds store under name and returns the func that removes that
// registration, which may be called more than once.
func (r *storeRegistry) register(name, backend string, store idempotency.Store) (unregister func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stores == nil {
		r.stores = make(map[string][]*namedStore)
	}
	e := &namedStore{Name: name, Backend: backend, store: store}
	r.stores[name] = append(r.stores[name], e)
	var once sync.Once
	return func() {
		once.Do(func() {
			r.mu.Lock()
			defer r.mu.Unlock()
			live := slices.DeleteFunc(r.stores[name], func(x *namedStore) bool { return x == e })
			if len(live) == 0 {
				delete(r.stores, name)
			} else {
				r.stores[name] = live
			}
		})
	}
}

// list returns the newest registration of each name, sorted by name.
func (r *storeRegistry) list() []namedStore {
	r.mu.Lock()
	defer r.mu.Unlock()
	stores := make([]namedStore, 0, len(r.stores))
	for _, live := range r.stores {
		stores = append(stores, *live[len(live)-1])
	}
	slices.SortFunc(stores, func(a, b namedStore) int { return strings.Compare(a.Name, b.Name) })
	return stores
}

// adminStoreFor is the store ?store= names, or the only one in use.
func adminStoreFor(r *http.Request) (namedStore, idempotency.AdminStore, error) {
	stores := adminStores.list()
	var s namedStore
	switch name := r.URL.Query().Get("store"); {
	case name != "":
		i := slices.IndexFunc(stores, func(s namedStore) bool { return s.Name == name })
		if i < 0 {
			return s, nil, adminError(http.StatusNotFound, "no store %q is in use; GET %sstores lists them", name, adminBase)
		}
		s = stores[i]
	case len(stores) == 1:
		s = stores[0]
	case len(stores) == 0:
		return s, nil, adminError(http.StatusNotFound, "no idempotency store is in use: no idempotency handler is provisioned")
	default:
		return s, nil, adminError(http.StatusBadRequest, "%d stores are in use; name one with ?store= (GET %sstores lists them)", len(stores), adminBase)
	}
	admin, ok := s.store.(idempotency.AdminStore)
	if !ok {
		return s, nil, adminError(http.StatusNotImplemented, "store %s cannot purge or count records", s.Name)
	}
	return s, admin, nil
}

func storeFailed(s namedStore, err error) error {
	return adminError(http.StatusServiceUnavailable, "store %s failed: %v", s.Name, err)
}

func adminError(status int, format string, args ...any) error {
	return caddy.APIError{HTTPStatus: status, Err: fmt.Errorf(format, args...)}
}

func writeJSON(w http.ResponseWriter, v any) error {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// Interface guards
var _ caddy.AdminRouter = AdminAPI{}
