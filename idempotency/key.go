package idempotency

import (
	"errors"
	"strings"
)

// MaxKeyLength is the longest key accepted, in bytes (keys are ASCII).
const MaxKeyLength = 255

// Key errors, all answered with 400 invalid_idempotency_key.
var (
	ErrKeyDuplicated = errors.New("the Idempotency-Key header was sent more than once")
	ErrKeyEmpty      = errors.New("the idempotency key is empty")
	ErrKeyTooLong    = errors.New("the idempotency key is longer than 255 characters")
	ErrKeyCharacters = errors.New("the idempotency key must be printable ASCII")
	ErrKeySyntax     = errors.New("the idempotency key is not a valid structured-field string")
	ErrKeyMismatch   = errors.New("the Idempotency-Key header and the idempotency key in the body differ")
)

// parseKeyHeader reads the key from the values of the key header field. The
// value is an RFC 8941 sf-string ("...") or a bare token of printable ASCII;
// bare values may not contain a comma, since a proxy that merges two header
// fields joins them with one. ok is false when the header is absent.
func parseKeyHeader(values []string) (key string, ok bool, err error) {
	switch len(values) {
	case 0:
		return "", false, nil
	case 1:
	default:
		return "", true, ErrKeyDuplicated
	}
	v := strings.Trim(values[0], " \t")
	if strings.HasPrefix(v, `"`) {
		key, err = parseSFString(v)
		if err != nil {
			return "", true, err
		}
	} else {
		if strings.IndexByte(v, ',') >= 0 {
			return "", true, ErrKeyDuplicated
		}
		key = v
	}
	if err := ValidateKey(key); err != nil {
		return "", true, err
	}
	return key, true, nil
}

// ValidateKey checks a decoded key: 1 to MaxKeyLength printable ASCII characters.
func ValidateKey(key string) error {
	if key == "" {
		return ErrKeyEmpty
	}
	if len(key) > MaxKeyLength {
		return ErrKeyTooLong
	}
	for i := 0; i < len(key); i++ {
		if c := key[i]; c < 0x20 || c > 0x7e {
			return ErrKeyCharacters
		}
	}
	return nil
}

// parseSFString decodes an RFC 8941 section 3.3.3 string: quoted, with only
// \" and \\ escapes, and nothing after the closing quote.
func parseSFString(v string) (string, error) {
	var b strings.Builder
	for i := 1; i < len(v); i++ {
		c := v[i]
		switch {
		case c == '\\':
			i++
			if i == len(v) || (v[i] != '"' && v[i] != '\\') {
				return "", ErrKeySyntax
			}
			b.WriteByte(v[i])
		case c == '"':
			if i != len(v)-1 {
				return "", ErrKeySyntax
			}
			return b.String(), nil
		case c < 0x20 || c > 0x7e:
			return "", ErrKeyCharacters
		default:
			b.WriteByte(c)
		}
	}
	return "", ErrKeySyntax // no closing quote
}
