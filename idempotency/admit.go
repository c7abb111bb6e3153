package idempotency

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"

	"github.com/caddy-idempotency/caddy-idempotency/idempotency/jcs"
)

// admission is what the admission step makes of a covered request: either
// keyed, with everything the claim needs, or a pass (no key: forward as is).
type admission struct {
	keyed bool
	key   string
	rk    RecordKey
	fp    Fingerprint
	// upstream is the body to forward: the bytes as sent, or, when the key
	// field had to be removed from an encoded body, the decoded body (decoded
	// is then true and Content-Encoding must go).
	upstream []byte
	decoded  bool
	// spool, when set, holds the body instead of upstream: one larger than
	// the spool threshold, sent as read. Handle removes it.
	spool *spoolFile
	// attempt is set when Config.Reconcile covers the request: what it
	// needs to find the result of an ambiguous attempt (its Since is set
	// by the claim).
	attempt *Attempt
}

// refusal is a 4xx answer to bad input; nothing was claimed or forwarded.
type refusal struct {
	status  int
	code    string
	message string
	retry   *bool
}

// admit reads what identifies the request: its key (header or body field),
// its body (decoded from its Content-Encoding) and its fingerprint. A body
// it read is restored on r for a pass; a keyed request's body is set by the
// claim, since only its owner goes upstream.
func (h *Handler) admit(r *http.Request) (admission, *refusal) {
	key, hasKey, err := parseKeyHeader(r.Header.Values(h.cfg.KeyHeader))
	if err != nil {
		return admission{}, &refusal{http.StatusBadRequest, CodeInvalidKey, err.Error(), &retryNo}
	}
	contentType := r.Header.Get("Content-Type")
	media := mediaType(contentType)
	jsonType := media == "application/json" || strings.HasSuffix(media, "+json")
	field := h.cfg.KeyField
	if field == KeyFieldOff {
		field = ""
	}
	if !hasKey && (!jsonType || field == "") {
		return h.keyless() // nothing can carry a key: the body stays unread
	}

	// JSON and forms are parsed in memory, up to MaxParsedBody; another
	// keyed body larger than the spool threshold is spooled to disk.
	parsed := jsonType || media == formMedia
	spoolable := hasKey && !parsed && h.cfg.MaxBody > h.spoolAbove
	limit := h.cfg.MaxBody
	switch {
	case parsed:
		limit = min(limit, MaxParsedBody)
	case spoolable:
		limit = h.spoolAbove
	}
	raw, more, err := readHead(r, limit, h.cfg.MaxBody)
	switch {
	case err != nil:
		return admission{}, h.bodyRefusal(err)
	case more && spoolable:
		return h.admitLarge(r, key, contentType, media, raw, r.Body)
	case more:
		return admission{}, h.bodyRefusal(&http.MaxBytesError{Limit: limit})
	}
	// content is the body as the upstream's application reads it.
	content, kind, wasEncoded := raw, BodyRaw, false // kind is of the canonical form
	if codings := contentCodings(r.Header); len(codings) > 0 && len(raw) > 0 {
		decoded, err := decodeContent(codings, raw, limit)
		var (
			bad      *contentCodingError
			tooLarge *http.MaxBytesError
		)
		switch {
		case spoolable && errors.As(err, &tooLarge):
			return h.admitLarge(r, key, contentType, media, raw, nil) // decodes past the threshold
		case err == nil:
			content, wasEncoded = decoded, true
		case errors.Is(err, errUnknownCoding):
			// Nothing in it can be read: the raw bytes are hashed, with the
			// codings that give them their meaning.
			if !hasKey {
				return h.pass(r, raw, false)
			}
			jsonType, media, kind = false, "", BodyEncoded
			content = appendEncoded(make([]byte, 0, len(raw)+32), codings, raw)
		case errors.As(err, &bad) && !hasKey:
			return h.pass(r, raw, false) // not ours to judge without a key
		case errors.As(err, &bad):
			return admission{}, &refusal{http.StatusBadRequest, CodeInvalidEncoding, "The request body could not be decoded: " + bad.Error(), &retryNo}
		default:
			return admission{}, h.bodyRefusal(err)
		}
	}

	upstream, decoded := raw, false
	canonical := content
	sentContent := content // the body the upstream's application reads, decoded
	bufp := canonicalPool.Get().(*[]byte)
	defer canonicalPool.Put(bufp)
	switch {
	// An empty body has no JSON to check (a keyed cancel, say): it hashes as raw.
	case jsonType && len(content) > 0:
		if !hasKey && !h.cfg.RequireKey && !mayNameField(content, field) {
			return h.pass(r, raw, false) // keyless: what a parse would find too, without one
		}
		canon, removed, perr := jcs.AppendJSONWithout((*bufp)[:0], content, field)
		switch {
		case perr != nil && !hasKey && !h.cfg.RequireKey && !mentionsField(content, field):
			return h.pass(r, raw, false) // not ours to judge: without a key the request passes as sent
		case errors.Is(perr, jcs.ErrMemberNotString):
			return admission{}, &refusal{http.StatusBadRequest, CodeInvalidKey, "The " + h.cfg.KeyField + " field must be a string or null.", &retryNo}
		case perr != nil:
			return admission{}, &refusal{http.StatusBadRequest, CodeInvalidJSON, "The request body is not valid JSON: " + perr.Error(), nil}
		}
		*bufp = canon[:0]
		kind, canonical = BodyJSON, canon
		if len(removed.Stripped) != len(content) && !h.cfg.ForwardKeyField { // the key field is removed before the request goes upstream
			upstream, decoded, sentContent = removed.Stripped, wasEncoded, removed.Stripped
		}
		if removed.Found {
			if err := ValidateKey(removed.Value); err != nil {
				return admission{}, &refusal{http.StatusBadRequest, CodeInvalidKey, err.Error(), &retryNo}
			}
			if hasKey && removed.Value != key {
				return admission{}, &refusal{http.StatusBadRequest, CodeInvalidKey, ErrKeyMismatch.Error(), &retryNo}
			}
			key, hasKey = removed.Value, true
		}
		if !hasKey {
			if h.cfg.RequireKey {
				return admission{}, h.missingKey()
			}
			return h.pass(r, upstream, decoded)
		}
	case media == "multipart/form-data":
		c, err := jcs.AppendMultipart((*bufp)[:0], content, multipartBoundary(contentType))
		if err != nil {
			return admission{}, &refusal{http.StatusBadRequest, CodeInvalidMultipart, "The request body could not be read as multipart/form-data: " + err.Error(), &retryNo}
		}
		*bufp = c[:0]
		kind, canonical = BodyMultipart, c
	case media == formMedia && jcs.IsForm(content):
		// Any other body is not a form to the client that wrote it: it is hashed raw.
		c := jcs.AppendForm((*bufp)[:0], content)
		*bufp = c[:0]
		kind, canonical = BodyForm, c
	}
	if !hasKey {
		if h.cfg.RequireKey {
			return admission{}, h.missingKey()
		}
		return h.pass(r, raw, false)
	}

	scope, ref := h.scope(r)
	if ref != nil {
		return admission{}, ref
	}
	a := h.keyed(r, key, scope, NewFingerprint(r.Method, r.URL.EscapedPath(), r.URL.RawQuery, kind, canonical))
	a.upstream, a.decoded = upstream, decoded
	if rc := h.cfg.Reconcile; rc != nil && rc.Covers(r) {
		// Before the claim, so a request the reconciler cannot prepare
		// consumes no key.
		a.attempt = &Attempt{Request: r, Body: bytes.Clone(sentContent), Key: a.rk}
		prepared, err := rc.Prepare(a.attempt, a.attempt.Body)
		if err != nil {
			return admission{}, &refusal{http.StatusBadRequest, CodeReconcileRefused, err.Error(), &retryNo}
		}
		if !bytes.Equal(prepared, a.attempt.Body) {
			a.upstream, a.decoded = prepared, wasEncoded
		}
	}
	return a, nil
}

// scope is the caller a keyed request belongs to, or the refusal of a
// request without one under RequireScope.
func (h *Handler) scope(r *http.Request) (string, *refusal) {
	scope := h.cfg.Scope(r)
	if scope == "" && h.cfg.RequireScope {
		return "", &refusal{http.StatusBadRequest, CodeScopeRequired,
			"A request with an idempotency key must identify its caller (for example with an Authorization header).", &retryNo}
	}
	return scope, nil
}

// keyed is the admission of a keyed request of scope with fingerprint fp,
// once its body is read.
func (h *Handler) keyed(r *http.Request, key, scope string, fp Fingerprint) admission {
	return admission{keyed: true, key: key, rk: h.recordKey(r, scope, key), fp: fp}
}

// admitLarge admits a keyed body larger than the spool threshold (head,
// its first bytes, then rest): spooled to disk as its fingerprint is
// computed (admit_spool.go), and sent upstream from there.
func (h *Handler) admitLarge(r *http.Request, key, contentType, media string, head []byte, rest io.Reader) (admission, *refusal) {
	shape := bodyShape{codings: contentCodings(r.Header)}
	if media == "multipart/form-data" {
		shape.multipart, shape.boundary = true, multipartBoundary(contentType)
	}
	if rc := h.cfg.Reconcile; rc != nil && rc.Covers(r) {
		// A reconciler prepares the body it is given in memory.
		return admission{}, &refusal{http.StatusRequestEntityTooLarge, CodeRequestTooLarge,
			"A request that is reconciled may have a body of at most " + strconv.Itoa(int(h.spoolAbove)) + " bytes.", &retryNo}
	}
	// Before the body is read: a caller refused is not worth a file.
	scope, ref := h.scope(r)
	if ref != nil {
		return admission{}, ref
	}
	body, ref := h.admitSpooled(r, shape, head, rest)
	if ref != nil {
		return admission{}, ref
	}
	a := h.keyed(r, key, scope, body.fp)
	a.spool = body.file
	return a, nil
}

// formMedia is the media type of a urlencoded form.
const formMedia = "application/x-www-form-urlencoded"

// multipartBoundary is the boundary of a multipart Content-Type, "" when it
// has none, or more than one plain boundary parameter: boundary* (RFC 2231)
// is read by Go and not by others, and a parser that looks for "boundary="
// may find it in xboundary=. Two framings of one body would be two requests
// under one fingerprint.
func multipartBoundary(contentType string) string {
	if _, params, err := mime.ParseMediaType(contentType); err == nil && oneBoundaryParam(contentType) {
		return params["boundary"]
	}
	return ""
}

// appendEncoded appends the codings, length-prefixed, and then body.
func appendEncoded(dst []byte, codings []string, body []byte) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(codings)))
	for _, c := range codings {
		dst = binary.AppendUvarint(dst, uint64(len(c)))
		dst = append(dst, c...)
	}
	return append(dst, body...)
}

// oneBoundaryParam reports whether the only parameter of a multipart
// Content-Type whose name speaks of a boundary is the plain "boundary".
func oneBoundaryParam(contentType string) bool {
	n := 0
	for _, param := range strings.Split(contentType, ";")[1:] {
		name, _, _ := strings.Cut(param, "=")
		name = strings.ToLower(strings.TrimSpace(name))
		if strings.Contains(name, "boundary") {
			if name != "boundary" {
				return false
			}
			n++
		}
	}
	return n == 1
}

// keyless is the answer to a request that has no key, unread.
func (h *Handler) keyless() (admission, *refusal) {
	if h.cfg.RequireKey {
		return admission{}, h.missingKey()
	}
	return admission{}, nil
}

// pass restores the body that admit read (decoded: without its
// Content-Encoding) and lets the request through.
func (h *Handler) pass(r *http.Request, body []byte, decoded bool) (admission, *refusal) {
	setBody(r, body, decoded)
	return admission{}, nil
}

func (h *Handler) bodyRefusal(err error) *refusal {
	var tooLarge *http.MaxBytesError
	if errors.As(err, &tooLarge) {
		return &refusal{http.StatusRequestEntityTooLarge, CodeRequestTooLarge,
			"The request body is larger than " + strconv.FormatInt(tooLarge.Limit, 10) + " bytes.", &retryNo}
	}
	// Cut short or timed out: nothing was claimed, so the retry is safe.
	return &refusal{http.StatusBadRequest, CodeBodyUnreadable, "The request body could not be read: " + err.Error(), &retryYes}
}

func (h *Handler) missingKey() *refusal {
	where := "the " + h.cfg.KeyHeader + " header"
	if h.cfg.KeyField != KeyFieldOff {
		where += " or the " + h.cfg.KeyField + " field of a JSON body"
	}
	return &refusal{http.StatusBadRequest, CodeKeyRequired, "An idempotency key is required for this request. Send it in " + where + ".", nil}
}

// mediaType is the lower-cased media type of a Content-Type, without its
// parameters.
func mediaType(contentType string) string {
	media, _, _ := strings.Cut(contentType, ";")
	return strings.ToLower(strings.TrimSpace(media))
}
