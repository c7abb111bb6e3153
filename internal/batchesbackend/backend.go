// Package batchesbackend is an in-memory, OpenAI-compatible Batches API
// server. It is deliberately strict (unknown request fields are rejected the
// way OpenAI rejects them) so that tests and demos can put a real HTTP backend
// behind the idempotency proxy and check exactly what reached it.
package batchesbackend

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"mime"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

const maxBodyBytes = 1 << 20

// Received is a POST /v1/batches request as the backend received it.
type Received struct {
	Body             []byte
	Header           http.Header
	ContentLength    int64 // -1 when the request carried no Content-Length
	TransferEncoding []string
}

// Batch is the OpenAI batch object, fields in OpenAI's order.
type Batch struct {
	ID               string            `json:"id"`
	Object           string            `json:"object"`
	Endpoint         string            `json:"endpoint"`
	Errors           any               `json:"errors"`
	InputFileID      string            `json:"input_file_id"`
	CompletionWindow string            `json:"completion_window"`
	Status           string            `json:"status"`
	OutputFileID     *string           `json:"output_file_id"`
	ErrorFileID      *string           `json:"error_file_id"`
	CreatedAt        int64             `json:"created_at"`
	InProgressAt     *int64            `json:"in_progress_at"`
	ExpiresAt        *int64            `json:"expires_at"`
	FinalizingAt     *int64            `json:"finalizing_at"`
	CompletedAt      *int64            `json:"completed_at"`
	FailedAt         *int64            `json:"failed_at"`
	ExpiredAt        *int64            `json:"expired_at"`
	CancellingAt     *int64            `json:"cancelling_at"`
	CancelledAt      *int64            `json:"cancelled_at"`
	RequestCounts    RequestCounts     `json:"request_counts"`
	Metadata         map[string]string `json:"metadata"`
}

// RequestCounts is the request_counts member of a batch.
type RequestCounts struct {
	Total     int `json:"total"`
	Completed int `json:"completed"`
	Failed    int `json:"failed"`
}

type batchList struct {
	Object  string   `json:"object"`
	Data    []*Batch `json:"data"`
	FirstID *string  `json:"first_id"`
	LastID  *string  `json:"last_id"`
	HasMore bool     `json:"has_more"`
}

type apiError struct {
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    *string `json:"code"`
}

// Server is the in-memory Batches API. It is safe for concurrent use.
//
// Every batch belongs to a tenant: the value of the Authorization header of
// the request that created it (a request without one is the tenant ""). GET,
// list and cancel only see the caller's own batches; another tenant's batch
// id is answered 404 exactly like a missing one.
type Server struct {
	creates   atomic.Int64
	requests  atomic.Int64
	lists     atomic.Int64
	honourKey atomic.Bool

	mu      sync.Mutex
	batches map[string]*entry  // by batch id, all tenants
	tenants map[string]*tenant // by Authorization header value
	seq     uint64             // insertion counter, ties created_at
	last    Received
	fault   Fault
}

// New returns an empty Server.
func New() *Server { return &Server{batches: map[string]*entry{}, tenants: map[string]*tenant{}} }

// Creates reports how many batches POST /v1/batches has created, over all
// tenants. Seeded batches and idempotency-key replays are not counted.
func (s *Server) Creates() int64 { return s.creates.Load() }

// CreatesFor reports how many batches POST /v1/batches has created for tenant
// (an Authorization header value).
func (s *Server) CreatesFor(tenant string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t := s.tenants[tenant]; t != nil {
		return t.creates
	}
	return 0
}

// Requests reports how many POST /v1/batches requests arrived at all.
func (s *Server) Requests() int64 { return s.requests.Load() }

// Lists reports how many GET /v1/batches (list) requests arrived at all,
// including rejected ones.
func (s *Server) Lists() int64 { return s.lists.Load() }

// HonourIdempotencyKey makes POST /v1/batches accept a string body field
// idempotency_key the way OGX (llama-stack) does: a later create by the same
// tenant with the same key and the same parameters (input_file_id, endpoint,
// completion_window, metadata) answers the batch the key first created (200,
// nothing new created); the same key with other parameters is a 409. The key
// is recorded when the batch is created, so it holds even when a Fault with
// After lost that first answer. Without this, idempotency_key is an unknown
// field (400), as on OpenAI.
func (s *Server) HonourIdempotencyKey() { s.honourKey.Store(true) }

// LastCreate returns a copy of the last POST /v1/batches request received.
func (s *Server) LastCreate() Received {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.last
	r.Body = append([]byte(nil), r.Body...)
	r.Header = r.Header.Clone()
	r.TransferEncoding = append([]string(nil), r.TransferEncoding...)
	return r
}

var endpoints = []string{"/v1/responses", "/v1/chat/completions", "/v1/embeddings", "/v1/completions"}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-Request-Id", "req_"+randHex(16))
	path := r.URL.Path
	rest, sub := strings.CutPrefix(path, "/v1/batches/")
	switch {
	case path == "/v1/batches" && r.Method == http.MethodPost:
		s.create(w, r)
	case path == "/v1/batches" && r.Method == http.MethodGet:
		s.list(w, r)
	case sub && r.Method == http.MethodGet && rest != "" && !strings.Contains(rest, "/"):
		s.get(w, r.Header.Get("Authorization"), rest)
	case sub && r.Method == http.MethodPost && strings.HasSuffix(rest, "/cancel") &&
		strings.Count(rest, "/") == 1 && rest != "/cancel":
		s.cancel(w, r.Header.Get("Authorization"), strings.TrimSuffix(rest, "/cancel"))
	default:
		writeError(w, http.StatusNotFound, fmt.Sprintf("Invalid URL (%s %s)", r.Method, path), "invalid_request_error", "", "")
	}
}

func (s *Server) create(w http.ResponseWriter, r *http.Request) {
	s.requests.Add(1)
	http.SetCookie(w, &http.Cookie{Name: "backend_session", Value: randHex(16), Path: "/", HttpOnly: true})

	body, readErr := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	s.mu.Lock()
	s.last = Received{
		Body:             append([]byte(nil), body...),
		Header:           r.Header.Clone(),
		ContentLength:    r.ContentLength,
		TransferEncoding: append([]string(nil), r.TransferEncoding...),
	}
	s.mu.Unlock()

	var tooBig *http.MaxBytesError
	switch {
	case errors.As(readErr, &tooBig):
		writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("Request body exceeds %d bytes.", maxBodyBytes), "invalid_request_error", "", "")
		return
	case readErr != nil && r.ContentLength >= 0:
		writeError(w, http.StatusBadRequest, fmt.Sprintf("Request body length (%d bytes) does not match Content-Length header (%d): %v", len(body), r.ContentLength, readErr), "invalid_request_error", "", "")
		return
	case readErr != nil:
		writeError(w, http.StatusBadRequest, fmt.Sprintf("Could not read request body: %v", readErr), "invalid_request_error", "", "")
		return
	case r.ContentLength >= 0 && int64(len(body)) != r.ContentLength:
		writeError(w, http.StatusBadRequest, fmt.Sprintf("Request body length (%d bytes) does not match Content-Length header (%d).", len(body), r.ContentLength), "invalid_request_error", "", "")
		return
	}

	// A fault strikes before the create (nothing made) or, with After, once
	// the batch exists, so that its answer is lost.
	f := s.takeFault()
	if !f.After && !strike(w, r, f) {
		return
	}
	status, reply := s.createBatch(r.Header.Get("Authorization"), r.Header.Get("Content-Type"), body)
	if f.After && !strike(w, r, f) {
		return
	}
	writeJSON(w, status, reply)
}

// createBatch validates a create body and, if it is valid, creates the batch
// for tenant (or finds the one its idempotency key made). It answers the
// status and the JSON value to reply with.
func (s *Server) createBatch(tenant, contentType string, body []byte) (int, any) {
	b, key, bad := validate(contentType, body, s.honourKey.Load())
	if bad != nil {
		return http.StatusBadRequest, errorBody(bad.msg, "invalid_request_error", bad.param, "")
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.tenant(tenant)
	if key != nil {
		if e := t.keys[*key]; e != nil {
			if !sameParams(e.b, b) {
				return http.StatusConflict, errorBody(fmt.Sprintf("Idempotency key '%s' was previously used with different parameters. Either use a new idempotency key or ensure all parameters match the original request.", *key), "invalid_request_error", "idempotency_key", "idempotency_key_reused")
			}
			settle(e.b)
			return http.StatusOK, ptr(e.b.clone())
		}
	}
	b.ID = "batch_" + randHex(12)
	b.Object = "batch"
	b.Status = "validating"
	b.CreatedAt = time.Now().Unix()
	b.ExpiresAt = ptr(b.CreatedAt + 24*60*60)
	e := s.insert(tenant, b)
	if key != nil {
		t.keys[*key] = e
	}
	t.creates++
	s.creates.Add(1)
	return http.StatusOK, ptr(b.clone())
}

// sameParams reports whether a create with parameters b matches the batch
// stored as a (the parameters llama-stack compares for idempotency keys).
func sameParams(a, b *Batch) bool {
	return a.InputFileID == b.InputFileID && a.Endpoint == b.Endpoint &&
		a.CompletionWindow == b.CompletionWindow &&
		(a.Metadata == nil) == (b.Metadata == nil) && maps.Equal(a.Metadata, b.Metadata)
}

// invalid is a 400 answer to a create: its message and param ("" for none).
type invalid struct{ msg, param string }

// validate parses a create body the way OpenAI does: unknown top-level fields,
// missing or mistyped required fields and bad values are all 400s. With
// honourKey, a string idempotency_key is accepted and returned (null is as if
// absent); without it, idempotency_key is an unknown field like any other.
func validate(contentType string, body []byte, honourKey bool) (*Batch, *string, *invalid) {
	if mt, _, err := mime.ParseMediaType(contentType); err != nil || mt != "application/json" {
		return nil, nil, &invalid{"Invalid Content-Type header (" + contentType + "), expected application/json.", ""}
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(body, &fields); err != nil || fields == nil {
		return nil, nil, &invalid{"We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)", ""}
	}
	names := make([]string, 0, len(fields))
	for name := range fields {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		switch name {
		case "input_file_id", "endpoint", "completion_window", "metadata":
		case "idempotency_key":
			if !honourKey {
				return nil, nil, &invalid{"Unrecognized request argument supplied: " + name, name}
			}
		default:
			return nil, nil, &invalid{"Unrecognized request argument supplied: " + name, name}
		}
	}
	b := &Batch{}
	for _, f := range []struct {
		name string
		dst  *string
	}{{"input_file_id", &b.InputFileID}, {"endpoint", &b.Endpoint}, {"completion_window", &b.CompletionWindow}} {
		raw, ok := fields[f.name]
		if !ok || string(raw) == "null" {
			return nil, nil, &invalid{fmt.Sprintf("Missing required parameter: '%s'.", f.name), f.name}
		}
		if err := json.Unmarshal(raw, f.dst); err != nil {
			return nil, nil, &invalid{fmt.Sprintf("Invalid type for '%s': expected a string.", f.name), f.name}
		}
	}
	if b.InputFileID == "" {
		return nil, nil, &invalid{"Invalid 'input_file_id': empty string.", "input_file_id"}
	}
	if !slices.Contains(endpoints, b.Endpoint) {
		return nil, nil, &invalid{fmt.Sprintf("Invalid value: '%s'. Supported values are: '%s'.", b.Endpoint, strings.Join(endpoints, "', '")), "endpoint"}
	}
	if b.CompletionWindow != "24h" {
		return nil, nil, &invalid{fmt.Sprintf("Invalid value: '%s'. Supported values are: '24h'.", b.CompletionWindow), "completion_window"}
	}
	if raw, ok := fields["metadata"]; ok && string(raw) != "null" {
		if err := json.Unmarshal(raw, &b.Metadata); err != nil || b.Metadata == nil {
			return nil, nil, &invalid{"Invalid type for 'metadata': expected an object with string values.", "metadata"}
		}
		if len(b.Metadata) > 16 {
			return nil, nil, &invalid{fmt.Sprintf("Invalid 'metadata': too many properties. Expected an object with at most 16 properties, but got an object with %d properties instead.", len(b.Metadata)), "metadata"}
		}
		for k, v := range b.Metadata {
			if len(k) > 64 || len(v) > 512 {
				return nil, nil, &invalid{"Invalid 'metadata': keys are limited to 64 characters and values to 512 characters.", "metadata"}
			}
		}
	}
	var key *string
	if raw, ok := fields["idempotency_key"]; ok && string(raw) != "null" {
		key = new(string)
		if err := json.Unmarshal(raw, key); err != nil {
			return nil, nil, &invalid{"Invalid type for 'idempotency_key': expected a string.", "idempotency_key"}
		}
	}
	return b, key, nil
}

func (s *Server) get(w http.ResponseWriter, tenant, id string) {
	s.mu.Lock()
	e := s.lookup(tenant, id)
	var out Batch
	if e != nil {
		settle(e.b)
		out = e.b.clone()
	}
	s.mu.Unlock()
	if e == nil {
		writeNoBatch(w, id)
		return
	}
	writeJSON(w, http.StatusOK, &out)
}

// cancel moves a batch to "cancelling"; the next read of it finds it "cancelled".
func (s *Server) cancel(w http.ResponseWriter, tenant, id string) {
	s.mu.Lock()
	e := s.lookup(tenant, id)
	var out Batch
	if e != nil {
		if b := e.b; b.Status != "cancelling" && b.Status != "cancelled" {
			b.Status, b.CancellingAt = "cancelling", ptr(time.Now().Unix())
		}
		out = e.b.clone()
	}
	s.mu.Unlock()
	if e == nil {
		writeNoBatch(w, id)
		return
	}
	writeJSON(w, http.StatusOK, &out)
}

// settle completes a pending cancellation. Callers hold s.mu.
func settle(b *Batch) {
	if b.Status == "cancelling" {
		b.Status, b.CancelledAt = "cancelled", ptr(time.Now().Unix())
	}
}

func writeNoBatch(w http.ResponseWriter, id string) {
	writeError(w, http.StatusNotFound, fmt.Sprintf("No batch found with id '%s'.", id), "invalid_request_error", "", "")
}

func writeError(w http.ResponseWriter, status int, msg, typ, param, code string) {
	writeJSON(w, status, errorBody(msg, typ, param, code))
}

// errorBody is OpenAI's error envelope; empty param and code are null.
func errorBody(msg, typ, param, code string) map[string]apiError {
	e := apiError{Message: msg, Type: typ}
	if param != "" {
		e.Param = &param
	}
	if code != "" {
		e.Code = &code
	}
	return map[string]apiError{"error": e}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails on supported platforms
	return hex.EncodeToString(b)
}

func ptr[T any](v T) *T { return &v }
