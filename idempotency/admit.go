package idempotency

import (
	"encoding/binary"
	"errors"
	"mime"
	"net"
	"net/http"
	"strconv"
	"strings"
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
	key, hasKey, err := ParseKeyHeader(r.Header.Values(h.cfg.KeyHeader))
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

	raw, err := readBody(r, h.cfg.MaxBody)
	if err != nil {
		return admission{}, h.bodyRefusal(err)
	}
	// content is the body as the upstream's application reads it.
	content, kind, wasEncoded := raw, bodyRaw, false // kind is of the canonical form
	if codings := contentCodings(r.Header); len(codings) > 0 && len(raw) > 0 {
		decoded, err := decodeContent(codings, raw, h.cfg.MaxBody)
		var bad *ContentCodingError
		switch {
		case err == nil:
			content, wasEncoded = decoded, true
		case errors.Is(err, errUnknownCoding):
			// Nothing in it can be read: the raw bytes are hashed, with the
			// codings that give them their meaning.
			if !hasKey {
				return h.pass(r, raw, false)
			}
			jsonType, media, kind = false, "", bodyEncoded
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
	bufp := canonicalPool.Get().(*[]byte)
	defer canonicalPool.Put(bufp)
	switch {
	// An empty body has no JSON to check (a keyed cancel, say): it hashes as raw.
	case jsonType && len(content) > 0:
		if !hasKey && !h.cfg.RequireKey && !mayNameField(content, field) {
			return h.pass(r, raw, false) // keyless: what a parse would find too, without one
		}
		parsed, perr := ParseJSON(content, field, (*bufp)[:0])
		switch {
		case perr != nil && !hasKey && !h.cfg.RequireKey && !mentionsField(content, field):
			return h.pass(r, raw, false) // not ours to judge: without a key the request passes as sent
		case errors.Is(perr, ErrKeyFieldNotString):
			return admission{}, &refusal{http.StatusBadRequest, CodeInvalidKey, "The " + h.cfg.KeyField + " field must be a string or null.", &retryNo}
		case perr != nil:
			return admission{}, &refusal{http.StatusBadRequest, CodeInvalidJSON, "The request body is not valid JSON: " + perr.Error(), nil}
		}
		*bufp = parsed.Canonical[:0]
		kind, canonical = bodyJSON, parsed.Canonical
		if len(parsed.Stripped) != len(content) { // the key field is removed before the request goes upstream
			upstream, decoded = parsed.Stripped, wasEncoded
		}
		if parsed.HasKey {
			if err := ValidateKey(parsed.Key); err != nil {
				return admission{}, &refusal{http.StatusBadRequest, CodeInvalidKey, err.Error(), &retryNo}
			}
			if hasKey && parsed.Key != key {
				return admission{}, &refusal{http.StatusBadRequest, CodeInvalidKey, ErrKeyMismatch.Error(), &retryNo}
			}
			key, hasKey = parsed.Key, true
		}
		if !hasKey {
			if h.cfg.RequireKey {
				return admission{}, h.missingKey()
			}
			return h.pass(r, upstream, decoded)
		}
	case media == "multipart/form-data":
		var boundary string
		if _, params, err := mime.ParseMediaType(contentType); err == nil && !strings.Contains(strings.ToLower(contentType), "boundary*") {
			// boundary* (RFC 2231) is read by Go and ignored by other parsers:
			// two framings of one body would mean two requests.
			boundary = params["boundary"]
		}
		c, err := canonicalMultipart((*bufp)[:0], content, boundary)
		if err != nil {
			return admission{}, &refusal{http.StatusBadRequest, CodeInvalidMultipart, "The request body could not be read as multipart/form-data: " + err.Error(), &retryNo}
		}
		*bufp = c[:0]
		kind, canonical = bodyMultipart, c
	case media == "application/x-www-form-urlencoded" && isSerializedForm(content):
		c, err := canonicalURLEncoded((*bufp)[:0], content)
		if err != nil {
			return admission{}, &refusal{http.StatusBadRequest, CodeInvalidForm, "The request body could not be read as a form: " + err.Error(), &retryNo}
		}
		*bufp = c[:0]
		kind, canonical = bodyForm, c
	}
	if !hasKey {
		if h.cfg.RequireKey {
			return admission{}, h.missingKey()
		}
		return h.pass(r, raw, false)
	}

	scope := h.cfg.Scope(r)
	if scope == "" && h.cfg.RequireScope {
		return admission{}, &refusal{http.StatusBadRequest, CodeScopeRequired,
			"A request with an idempotency key must identify its caller (for example with an Authorization header).", &retryNo}
	}
	var rk RecordKey
	if h.cfg.Namespace != "" {
		rk = NewRecordKey(h.cfg.Namespace, scope, key)
	} else {
		rk = newRequestRecordKey(r, scope, key)
	}
	return admission{
		keyed:    true,
		key:      key,
		rk:       rk,
		fp:       NewFingerprint(r.Method, r.URL.EscapedPath(), r.URL.RawQuery, kind, canonical),
		upstream: upstream,
		decoded:  decoded,
	}, nil
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
			"The request body is larger than " + strconv.FormatInt(h.cfg.MaxBody, 10) + " bytes.", &retryNo}
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

// RequestHost is the site a request was sent to, the default namespace of
// its records: the host name it names, lower-cased as host matching is
// (a trailing dot is kept: Caddy routes "a.test." apart from "a.test"), and
// the port it arrived on, "host:port". The port is the listener's, not the
// one in the Host header, which a client may set to anything: two sites on
// two ports stay apart whatever Host they are sent. Without a listener (a
// request made in a test), it is the Host header's port, else 80, or 443
// over TLS.
func RequestHost(r *http.Request) string { return string(appendRequestHost(nil, r)) }

// appendRequestHost appends RequestHost(r) to dst, allocating nothing when
// dst has room: it runs for every keyed request.
func appendRequestHost(dst []byte, r *http.Request) []byte {
	hostname, port := splitHostPort(r.Host)
	ipv6 := strings.IndexByte(hostname, ':') >= 0
	if ipv6 {
		dst = append(dst, '[') // as net.JoinHostPort writes it
	}
	for i := 0; i < len(hostname); i++ {
		c := hostname[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		dst = append(dst, c)
	}
	if ipv6 {
		dst = append(dst, ']')
	}
	dst = append(dst, ':')
	switch addr := r.Context().Value(http.LocalAddrContextKey).(type) {
	case *net.TCPAddr:
		return strconv.AppendInt(dst, int64(addr.Port), 10)
	case net.Addr:
		if _, p, err := net.SplitHostPort(addr.String()); err == nil {
			return append(dst, p...)
		}
	}
	switch {
	case port != "":
		return append(dst, port...)
	case r.TLS != nil:
		return append(dst, "443"...)
	}
	return append(dst, "80"...)
}

// splitHostPort splits a Host header value ("host", "host:port", "[v6]",
// "[v6]:port"); port is "" when it has none. Unlike net.SplitHostPort it
// allocates nothing for a value without a port.
func splitHostPort(host string) (hostname, port string) {
	if strings.HasPrefix(host, "[") {
		end := strings.IndexByte(host, ']')
		if end < 0 {
			return host, ""
		}
		hostname, rest := host[1:end], host[end+1:]
		port, _ = strings.CutPrefix(rest, ":")
		return hostname, port
	}
	if i := strings.LastIndexByte(host, ':'); i >= 0 && strings.IndexByte(host, ':') == i {
		return host[:i], host[i+1:]
	}
	return host, ""
}

// mediaType is the lower-cased media type of a Content-Type, without its
// parameters.
func mediaType(contentType string) string {
	media, _, _ := strings.Cut(contentType, ";")
	return strings.ToLower(strings.TrimSpace(media))
}
