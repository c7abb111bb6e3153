package batchesbackend

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
)

// Limits of GET /v1/batches?limit=, as OpenAI documents them.
const (
	defaultListLimit = 20
	maxListLimit     = 100
)

// list answers GET /v1/batches as OpenAI does: the caller's batches newest
// first, limit (1..100, default 20) of them, older than the batch after names
// when it is given. An after that is not one of the caller's batches yields
// an empty page.
func (s *Server) list(w http.ResponseWriter, r *http.Request) {
	s.lists.Add(1)
	q := r.URL.Query()
	limit := defaultListLimit
	if q.Has("limit") {
		n, msg, code := parseLimit(q.Get("limit"))
		if msg != "" {
			writeError(w, http.StatusBadRequest, msg, "invalid_request_error", "limit", code)
			return
		}
		limit = n
	}
	after := q.Get("after")
	tenant := r.Header.Get("Authorization")

	l := batchList{Object: "list", Data: []*Batch{}}
	s.mu.Lock()
	if t := s.tenants[tenant]; t != nil {
		end := len(t.batches) // the page is t.batches[:end], newest first
		if after != "" {
			end = 0
			if e := s.lookup(tenant, after); e != nil {
				end, _ = slices.BinarySearchFunc(t.batches, e, older)
			}
		}
		for i := end - 1; i >= 0 && len(l.Data) < limit; i-- {
			settle(t.batches[i].b)
			c := t.batches[i].b.clone()
			l.Data = append(l.Data, &c)
		}
		l.HasMore = end-len(l.Data) > 0
	}
	s.mu.Unlock()
	if n := len(l.Data); n > 0 {
		l.FirstID, l.LastID = &l.Data[0].ID, &l.Data[n-1].ID
	}
	writeJSON(w, http.StatusOK, &l)
}

// parseLimit parses a limit query value; for a bad one it returns the 400's
// message and error code.
func parseLimit(v string) (n int, msg, code string) {
	i, err := strconv.ParseInt(v, 10, 64)
	switch {
	case errors.Is(err, strconv.ErrRange) && strings.HasPrefix(v, "-"), err == nil && i < 1:
		return 0, fmt.Sprintf("Invalid 'limit': integer below minimum value. Expected a value >= 1, but got %s instead.", v), "integer_below_min_value"
	case errors.Is(err, strconv.ErrRange), err == nil && i > maxListLimit:
		return 0, fmt.Sprintf("Invalid 'limit': integer above maximum value. Expected a value <= %d, but got %s instead.", maxListLimit, v), "integer_above_max_value"
	case err != nil:
		return 0, fmt.Sprintf("Invalid type for 'limit': expected an integer, but got a string instead (%q).", v), "invalid_type"
	}
	return int(i), "", ""
}
