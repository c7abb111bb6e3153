package idempotency

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Defaults of Batches, fitted to OpenAI's list API (GET /v1/batches takes a
// limit of 1 to 100 and lists newest first).
const (
	DefaultBatchesTagKey   = "idempotency_tag"
	DefaultBatchesWindow   = time.Second
	DefaultBatchesPageSize = 100
	DefaultBatchesPages    = 10
)

// Limits of OpenAI's batches API that Batches follows.
const (
	// batchesMaxPageSize is the largest limit of a list request (OpenAI API
	// reference: List batches, "limit ... can range between 1 and 100").
	batchesMaxPageSize = 100
	// batchesMaxMetadata is how many entries metadata may have (OpenAI API
	// reference: metadata, "up to 16 key-value pairs").
	batchesMaxMetadata = 16
	// batchesMaxTagKey is the longest metadata key, in bytes (OpenAI API
	// reference: metadata, "keys are strings with a maximum length of 64
	// characters").
	batchesMaxTagKey = 64
)

// batchesTagPrefix separates the tag's hash from every other hash of a
// record key.
const batchesTagPrefix = "caddy-idempotency batches tag\x00"

// Batches is the Reconciler for the OpenAI-compatible batches API: on an
// ambiguous POST .../batches it lists the caller's batches (GET on the same
// path, with limit and after, newest first as OpenAI lists them) back to the
// attempt's start, and adopts the one batch that is the attempt's.
//
// The attempt's start is placed on the backend's clock with the Date header
// of the first listing response: the backend stamped Date (whole seconds,
// rounded down) before the response was received, so its clock read at
// least Date when the listing was Received, and at least
// Date - (Received - Since) when the attempt began at Since. A batch is the
// attempt's only if its created_at (Unix seconds) is at least that bound,
// less Window, rounded down to a whole second. Without a Date header the
// bound is Since less Window on this process's clock.
//
// Find reports FindOne only when the listing reached back past the bound
// (an older batch, or has_more false) and exactly one batch since the bound
// matches; FindNone when it reached back and none matches; FindUnsure
// otherwise.
type Batches struct {
	// Tag adds one metadata entry, TagKey, to the create sent upstream: a
	// hash of the record key (never the client's key), and matches on it
	// alone. Without Tag, a batch matches when its input_file_id, endpoint,
	// completion_window and metadata equal the request's.
	Tag    bool
	TagKey string // default DefaultBatchesTagKey; at most 64 bytes (OpenAI's metadata key limit)
	// Window is how much earlier than the attempt's start, placed on the
	// backend's clock by its Date header, a batch's created_at may be and
	// still be the attempt's: created_at and Date have whole seconds.
	// Default DefaultBatchesWindow.
	Window   time.Duration
	PageSize int // batches per listing request, 1 to 100 (OpenAI's limit); default DefaultBatchesPageSize
	Pages    int // listing requests per search; default DefaultBatchesPages
}

var _ Reconciler = (*Batches)(nil)

// Check reports an option out of range: PageSize must be 0 (the default) or
// 1 to 100, Pages and Window must not be negative, and TagKey must be at
// most 64 bytes.
func (b *Batches) Check() error {
	var errs []error
	if b.PageSize < 0 || b.PageSize > batchesMaxPageSize {
		errs = append(errs, fmt.Errorf("reconcile batches: page size %d is out of range: OpenAI lists 1 to %d batches per request", b.PageSize, batchesMaxPageSize))
	}
	if b.Pages < 0 {
		errs = append(errs, fmt.Errorf("reconcile batches: pages %d is negative", b.Pages))
	}
	if b.Window < 0 {
		errs = append(errs, fmt.Errorf("reconcile batches: window %v is negative", b.Window))
	}
	if len(b.TagKey) > batchesMaxTagKey {
		errs = append(errs, fmt.Errorf("reconcile batches: tag key is %d bytes: OpenAI's metadata keys have at most %d", len(b.TagKey), batchesMaxTagKey))
	}
	return errors.Join(errs...)
}

func (b *Batches) tagKey() string {
	if b.TagKey == "" {
		return DefaultBatchesTagKey
	}
	return b.TagKey
}

func (b *Batches) window() time.Duration {
	if b.Window == 0 {
		return DefaultBatchesWindow
	}
	return b.Window
}

func (b *Batches) pageSize() int {
	if b.PageSize == 0 {
		return DefaultBatchesPageSize
	}
	return b.PageSize
}

func (b *Batches) pages() int {
	if b.Pages == 0 {
		return DefaultBatchesPages
	}
	return b.Pages
}

// Covers reports whether r is a POST to a path ending in /batches (one
// trailing slash ignored): /v1/batches, /openai/v1/batches, but not
// /v1/batches/{id}/cancel.
func (b *Batches) Covers(r *http.Request) bool {
	if r == nil || r.URL == nil || r.Method != http.MethodPost {
		return false
	}
	p := strings.TrimSuffix(r.URL.Path, "/")
	return strings.HasSuffix(p, "/batches")
}

// TagValue is the metadata value Prepare adds under TagKey for the record
// key rk: the first 32 hex digits of SHA-256 over a fixed prefix and rk. It
// names the record, never the client's key.
func (b *Batches) TagValue(rk RecordKey) string {
	h := sha256.New()
	h.Write([]byte(batchesTagPrefix))
	h.Write(rk[:])
	return hex.EncodeToString(h.Sum(nil))[:32]
}

// Prepare returns body unchanged without Tag. With Tag, it adds the entry
// TagKey: TagValue(a.Key) to the body's metadata, keeping the rest of the
// body's bytes; body must be a JSON object whose metadata is absent, null,
// or an object with fewer than 16 entries (OpenAI API reference: metadata,
// up to 16 key-value pairs) that does not give TagKey another value.
func (b *Batches) Prepare(a *Attempt, body []byte) ([]byte, error) {
	if !b.Tag {
		return body, nil
	}
	if a == nil {
		return nil, errors.New("reconcile batches tag needs an attempt")
	}
	return spliceMetadataEntry(body, b.tagKey(), b.TagValue(a.Key))
}

// Find lists the caller's batches, PageSize at a time for at most Pages
// requests, newest first (OpenAI API reference: List batches), until it
// reaches a batch created before the attempt's start (see Batches for the
// bound) or the end of the list, and adopts the one batch since then that
// matches the request.
func (b *Batches) Find(ctx context.Context, a *Attempt, list Lister) Finding {
	if a == nil || list == nil {
		return unsure("no attempt or lister")
	}
	req, err := parseBatchRequest(a.Body)
	if err != nil {
		return unsure("request body: " + err.Error())
	}
	tag := ""
	if b.Tag {
		tag = b.TagValue(a.Key)
	}
	var (
		bound   int64 // Unix seconds; a batch since the attempt has created_at >= bound
		matches []batchItem
		near    []batchItem // since the attempt, its input file and endpoint, not a match
		seen    = map[string]bool{}
		after   string
		prev    = 0.0
		first   = true
		pages   = b.pages()
		limit   = strconv.Itoa(b.pageSize())
	)
	for page := 0; page < pages; page++ {
		if err := ctx.Err(); err != nil {
			return unsure("listing canceled: " + err.Error())
		}
		q := url.Values{"limit": {limit}}
		if after != "" {
			q.Set("after", after)
		}
		l, err := list(ctx, q)
		if err != nil {
			if cerr := ctx.Err(); cerr != nil {
				return unsure("listing canceled: " + cerr.Error())
			}
			return unsure("listing failed: " + err.Error())
		}
		if l == nil {
			return unsure("listing failed: no response")
		}
		if l.Status != http.StatusOK {
			return unsure(fmt.Sprintf("listing answered %d", l.Status))
		}
		if page == 0 {
			bound = b.since(a, l).Unix() // Unix rounds down
		}
		lp, err := parseBatchList(l.Body)
		if err != nil {
			return unsure("listing is not a list: " + err.Error())
		}
		reached := false
		for i, raw := range lp.Data {
			it, err := parseBatchItem(raw)
			if err != nil {
				return unsure(fmt.Sprintf("listing page %d item %d: %v", page+1, i, err))
			}
			if seen[it.ID] {
				return unsure(fmt.Sprintf("listing repeats batch %s", it.ID))
			}
			seen[it.ID] = true
			// Newest first, or an older batch could hide a newer one
			// behind it; batches of one second may come in any order.
			if !first && it.CreatedAt > prev {
				return unsure(fmt.Sprintf("listing is not newest first at batch %s", it.ID))
			}
			first, prev = false, it.CreatedAt
			if it.CreatedAt < float64(bound) {
				// Before the attempt's start: it and the rest of the page
				// (older still, by the check above) are not the attempt's.
				reached = true
				continue
			}
			switch {
			case it.matches(req, b.tagKey(), tag):
				matches = append(matches, it)
			case it.near(req, b.tagKey(), tag):
				near = append(near, it)
			}
		}
		if len(matches) > 1 {
			return unsure(fmt.Sprintf("%d batches match since %s: %s", len(matches), sinceText(bound), batchIDs(matches)))
		}
		if reached || !lp.HasMore {
			if len(matches) == 0 && len(near) > 0 {
				// A backend that rewrites metadata (drops the tag, adds an
				// entry of its own) makes the attempt's batch look like
				// another: nothing proves it was not made.
				return unsure(fmt.Sprintf("no batch matches since %s, but %d with its input file and endpoint differ in other fields: %s",
					sinceText(bound), len(near), batchIDs(near)))
			}
			return found(matches, bound)
		}
		next := lp.cursor()
		if next == "" {
			return unsure("listing has more but names no last_id to continue after")
		}
		if next == after {
			return unsure("listing does not advance after " + after)
		}
		after = next
	}
	return unsure(fmt.Sprintf("listing did not reach back to the attempt's start in %d pages", pages))
}

// since is the earliest the attempt may have begun on the backend's clock,
// less Window. The backend stamped the first listing's Date (whole seconds,
// rounded down) before the response arrived at Received, so its clock read
// at least Date at Received, and at least Date - (Received - a.Since) at
// a.Since. A negative Received - a.Since (a.Since kept by another process
// whose clock is ahead) counts as 0, which only lowers the bound. Without a
// Date, a.Since is taken as is.
func (b *Batches) since(a *Attempt, l *Listing) time.Time {
	start := a.Since
	if d, err := http.ParseTime(l.Header.Get("Date")); err == nil && !l.Received.IsZero() {
		elapsed := max(l.Received.Sub(a.Since), 0)
		start = d.Add(-elapsed)
	}
	return start.Add(-b.window())
}

func found(matches []batchItem, bound int64) Finding {
	if len(matches) == 0 {
		return Finding{Result: FindNone, Reason: "no batch since " + sinceText(bound)}
	}
	m := matches[0]
	return Finding{
		Result: FindOne,
		Response: Response{
			Status: http.StatusOK,
			Header: http.Header{
				"Content-Type":   {"application/json"},
				ReconciledHeader: {"true"},
			},
			Body: m.Raw,
		},
		Reason: "batch " + m.ID + " matches",
	}
}

func unsure(reason string) Finding { return Finding{Result: FindUnsure, Reason: reason} }

func sinceText(bound int64) string {
	return fmt.Sprintf("%s (created_at >= %d)", time.Unix(bound, 0).UTC().Format(time.RFC3339), bound)
}

func batchIDs(items []batchItem) string {
	ids := make([]string, len(items))
	for i, it := range items {
		ids[i] = it.ID
	}
	return strings.Join(ids, ", ")
}

// jsonString is s as a JSON string.
func jsonString(s string) []byte {
	out, _ := json.Marshal(s) // a string always marshals
	return out
}
