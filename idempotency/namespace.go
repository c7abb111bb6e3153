package idempotency

import (
	"net"
	"net/http"
	"strconv"
	"strings"
)

// DefaultNamespace is the namespace of a request's records when
// Config.Namespace is empty: the site it was sent to, "host@listener". The
// host is the Host header's host name, read as Caddy's host matcher reads it
// (MatchHost: lower-cased, brackets of an IPv6 literal removed, a trailing
// dot kept, since Caddy routes "a.test." apart from "a.test"). The listener
// is what Config.Listener names, or else ":port" with the port of the local
// address the request arrived on, never the Host header's, which a client
// sets to anything: two sites on two listeners stay apart whatever Host they
// are sent. Without a local address (a request made in a test) it is the
// Host header's port, else :80, or :443 over TLS.
func DefaultNamespace(r *http.Request, listener string) string {
	return string(appendDefaultNamespace(nil, r, listener))
}

// appendNamespace appends r's namespace to dst, allocating nothing when dst
// has room: it runs for every keyed request.
func (h *Handler) appendNamespace(dst []byte, r *http.Request) []byte {
	if h.cfg.Namespace != "" {
		return append(dst, h.cfg.Namespace...)
	}
	var listener string
	if h.cfg.Listener != nil {
		listener = h.cfg.Listener(r)
	}
	return appendDefaultNamespace(dst, r, listener)
}

func appendDefaultNamespace(dst []byte, r *http.Request, listener string) []byte {
	hostname, port := splitHost(r.Host)
	for i := 0; i < len(hostname); i++ {
		c := hostname[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		dst = append(dst, c)
	}
	dst = append(dst, '@')
	if listener != "" {
		return append(dst, listener...)
	}
	dst = append(dst, ':')
	switch addr := r.Context().Value(http.LocalAddrContextKey).(type) {
	case *net.TCPAddr:
		return strconv.AppendInt(dst, int64(addr.Port), 10)
	case *net.UDPAddr: // HTTP/3
		return strconv.AppendInt(dst, int64(addr.Port), 10)
	case net.Addr:
		if _, p, err := net.SplitHostPort(addr.String()); err == nil {
			return append(dst, p...)
		}
		return append(dst, addr.String()...) // a unix socket: its path
	}
	switch {
	case port != "":
		return append(dst, port...)
	case r.TLS != nil:
		return append(dst, "443"...)
	}
	return append(dst, "80"...)
}

// splitHost reads a Host header value as Caddy's host matcher does: what
// net.SplitHostPort gives, or, when that fails, the whole value without
// IPv6 brackets (port ""). A value without a colon cannot have a port, and
// is read without the error net.SplitHostPort would allocate.
func splitHost(host string) (hostname, port string) {
	if strings.IndexByte(host, ':') >= 0 {
		if h, p, err := net.SplitHostPort(host); err == nil {
			return h, p
		}
	}
	return strings.TrimSuffix(strings.TrimPrefix(host, "["), "]"), ""
}
