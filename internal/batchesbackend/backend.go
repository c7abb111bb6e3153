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
type Server struct {
	creates  atomic.Int64
	requests atomic.Int64

	mu      sync.Mutex
	batches map[string]*Batch
	order   []string // creation order, oldest first
	last    Received
	fault   Fault
}

// New returns an empty Server.
func New() *Server { return &Server{batches: map[string]*Batch{}} }

// Creates reports how many batches POST /v1/batches has created.
func (s *Server) Creates() int64 { return s.creates.Load() }

// Requests reports how many POST /v1/batches requests arrived at all.
func (s *Server) Requests() int64 { return s.requests.Load() }

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
		s.list(w)
	case sub && r.Method == http.MethodGet && rest != "" && !strings.Contains(rest, "/"):
		s.get(w, rest)
	case sub && r.Method == http.MethodPost && strings.HasSuffix(rest, "/cancel") &&
		strings.Count(rest, "/") == 1 && rest != "/cancel":
		s.cancel(w, strings.TrimSuffix(rest, "/cancel"))
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

	f := s.takeFault()
	if !wait(r.Context(), f) {
		return // client went away; nothing useful to answer
	}
	if f.Status != 0 {
		writeFault(w, f.Status)
		return
	}

	b, status, msg, param := validate(r.Header.Get("Content-Type"), body)
	if status != 0 {
		writeError(w, status, msg, "invalid_request_error", param, "")
		return
	}
	b.ID = "batch_" + randHex(12)
	b.Object = "batch"
	b.Status = "validating"
	b.CreatedAt = time.Now().Unix()
	b.ExpiresAt = ptr(b.CreatedAt + 24*60*60)

	s.mu.Lock()
	s.batches[b.ID] = b
	s.order = append(s.order, b.ID)
	out := *b
	s.mu.Unlock()
	s.creates.Add(1)
	writeJSON(w, http.StatusOK, &out)
}

// validate parses a create body the way OpenAI does: unknown top-level fields,
// missing or mistyped required fields and bad values are all 400s.
func validate(contentType string, body []byte) (b *Batch, status int, msg, param string) {
	if mt, _, err := mime.ParseMediaType(contentType); err != nil || mt != "application/json" {
		return nil, http.StatusBadRequest, "Invalid Content-Type header (" + contentType + "), expected application/json.", ""
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(body, &fields); err != nil || fields == nil {
		return nil, http.StatusBadRequest, "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)", ""
	}
	names := make([]string, 0, len(fields))
	for name := range fields {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		switch name {
		case "input_file_id", "endpoint", "completion_window", "metadata":
		default:
			return nil, http.StatusBadRequest, "Unrecognized request argument supplied: " + name, name
		}
	}
	b = &Batch{}
	for _, f := range []struct {
		name string
		dst  *string
	}{{"input_file_id", &b.InputFileID}, {"endpoint", &b.Endpoint}, {"completion_window", &b.CompletionWindow}} {
		raw, ok := fields[f.name]
		if !ok || string(raw) == "null" {
			return nil, http.StatusBadRequest, fmt.Sprintf("Missing required parameter: '%s'.", f.name), f.name
		}
		if err := json.Unmarshal(raw, f.dst); err != nil {
			return nil, http.StatusBadRequest, fmt.Sprintf("Invalid type for '%s': expected a string.", f.name), f.name
		}
	}
	if b.InputFileID == "" {
		return nil, http.StatusBadRequest, "Invalid 'input_file_id': empty string.", "input_file_id"
	}
	if !slices.Contains(endpoints, b.Endpoint) {
		return nil, http.StatusBadRequest, fmt.Sprintf("Invalid value: '%s'. Supported values are: '%s'.", b.Endpoint, strings.Join(endpoints, "', '")), "endpoint"
	}
	if b.CompletionWindow != "24h" {
		return nil, http.StatusBadRequest, fmt.Sprintf("Invalid value: '%s'. Supported values are: '24h'.", b.CompletionWindow), "completion_window"
	}
	if raw, ok := fields["metadata"]; ok && string(raw) != "null" {
		if err := json.Unmarshal(raw, &b.Metadata); err != nil || b.Metadata == nil {
			return nil, http.StatusBadRequest, "Invalid type for 'metadata': expected an object with string values.", "metadata"
		}
		if len(b.Metadata) > 16 {
			return nil, http.StatusBadRequest, fmt.Sprintf("Invalid 'metadata': too many properties. Expected an object with at most 16 properties, but got an object with %d properties instead.", len(b.Metadata)), "metadata"
		}
		for k, v := range b.Metadata {
			if len(k) > 64 || len(v) > 512 {
				return nil, http.StatusBadRequest, "Invalid 'metadata': keys are limited to 64 characters and values to 512 characters.", "metadata"
			}
		}
	}
	return b, 0, "", ""
}

func (s *Server) get(w http.ResponseWriter, id string) {
	s.mu.Lock()
	b, ok := s.batches[id]
	var out Batch
	if ok {
		settle(b)
		out = *b
	}
	s.mu.Unlock()
	if !ok {
		writeNoBatch(w, id)
		return
	}
	writeJSON(w, http.StatusOK, &out)
}

func (s *Server) list(w http.ResponseWriter) {
	l := batchList{Object: "list", Data: []*Batch{}}
	s.mu.Lock()
	for i := len(s.order) - 1; i >= 0; i-- {
		b := s.batches[s.order[i]]
		settle(b)
		c := *b
		l.Data = append(l.Data, &c)
	}
	s.mu.Unlock()
	if n := len(l.Data); n > 0 {
		l.FirstID, l.LastID = &l.Data[0].ID, &l.Data[n-1].ID
	}
	writeJSON(w, http.StatusOK, &l)
}

// cancel moves a batch to "cancelling"; the next read of it finds it "cancelled".
func (s *Server) cancel(w http.ResponseWriter, id string) {
	s.mu.Lock()
	b, ok := s.batches[id]
	var out Batch
	if ok {
		if b.Status != "cancelling" && b.Status != "cancelled" {
			b.Status, b.CancellingAt = "cancelling", ptr(time.Now().Unix())
		}
		out = *b
	}
	s.mu.Unlock()
	if !ok {
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
	e := apiError{Message: msg, Type: typ}
	if param != "" {
		e.Param = &param
	}
	if code != "" {
		e.Code = &code
	}
	writeJSON(w, status, map[string]apiError{"error": e})
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
