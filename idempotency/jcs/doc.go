// Package jcs writes the canonical forms of request bodies that an
// idempotency fingerprint hashes: two bodies share a canonical form when the
// application behind a proxy cannot tell them apart, and only then. Each
// function appends to a caller's buffer (a pooled one, say) and returns it,
// as strconv.AppendInt does.
//
// JSON ([AppendJSONWithout]) is written in the JSON Canonicalization Scheme,
// RFC 8785. The input must be I-JSON (RFC 8785 §3.1, RFC 7493): RFC 8259
// syntax, UTF-8 without lone surrogates, unique member names, numbers within
// the range of an IEEE 754 double. The output has no whitespace (§3.2.1),
// literals as they are (§3.2.2.1), strings with the fewest escapes
// (§3.2.2.2), numbers as ECMAScript prints them (§3.2.2.3) and object members
// sorted by the UTF-16 code units of their names (§3.2.3). Two rules are not
// RFC 8785's: one named top-level member (an idempotency key field) is
// removed and its value returned, and top-level members whose value is null
// are left out, so an optional parameter sent as null equals one not sent.
//
// multipart/form-data ([AppendMultipart], RFC 7578) keeps what the upstream
// acts on: the parts in order, each part's Content-Disposition (type, name,
// filename), Content-Type, Content-Transfer-Encoding and other headers, and a
// SHA-256 of its content bytes as sent. It drops the framing, which clients
// choose at random or write in several ways: the boundary (RFC 2046 §5.1.1),
// preamble and epilogue, header-name case, white space, parameter quoting and
// order.
//
// application/x-www-form-urlencoded ([AppendForm], [IsForm],
// [AppendFormDecoded]) is read as the WHATWG URL Standard's parser reads it
// (§5.1, application/x-www-form-urlencoded parsing): decoded name/value
// pairs, ordered by name, the pairs of one name in their order. Where servers
// disagree (a segment without '=', an invalid percent-escape) the pairs are
// kept apart rather than merged.
//
// The multipart and form encodings are binary, start with a version tag and
// length-prefix every variable field, so no two inputs share an encoding;
// they are meant to be hashed, not read back.
package jcs
