package idempotency

import (
	"fmt"
	"net/http"
	"strconv"
	"time"
)

// Error codes written in OpenAI's error envelope.
const (
	CodeKeyReused        = "idempotency_key_reused"
	CodeKeyInUse         = "idempotency_key_in_use"
	CodeInvalidKey       = "invalid_idempotency_key"
	CodeKeyRequired      = "idempotency_key_required"
	CodeScopeRequired    = "idempotency_scope_required"
	CodeInvalidJSON      = "invalid_json"
	CodeRequestTooLarge  = "request_too_large"
	CodeBodyUnreadable   = "request_body_unreadable"
	CodeStoreUnavailable = "idempotency_store_unavailable"

	CodeInvalidEncoding   = "invalid_content_encoding"        // the body does not decode from its Content-Encoding
	CodeInvalidMultipart  = "invalid_multipart"               // a keyed multipart/form-data body that does not parse
	CodeResponseNotStored = "idempotency_response_not_stored" // the first request succeeded; its response was not kept
	CodeOutcomeUnknown    = "idempotency_outcome_unknown"     // the first attempt's outcome is not known yet: retry
	CodeReconcileRefused  = "idempotency_reconcile_refused"   // the Reconciler cannot prepare the request (Prepare's error)
	CodeSpoolUnavailable  = "idempotency_spool_unavailable"   // a large body could not be written to the spool directory: 503, retry
)

const (
	unknownMessage = "The upstream may have acted on an earlier request with this idempotency key, and its result " +
		"could not be found yet. Retry with the same key: the retry looks again, and is never run twice."
	inUseMessage            = "A request with this idempotency key is still being processed. Retry after it completes."
	unavailableMessage      = "The idempotency store is unavailable. Retry later."
	spoolUnavailableMessage = "The request body could not be stored for forwarding; nothing was sent upstream. Retry later."
)

// reuseMessage is llama-stack's ConflictError text, word for word, so clients
// written against llama-stack see the same message.
func reuseMessage(key string) string {
	return fmt.Sprintf("Idempotency key '%s' was previously used with different parameters. "+
		"Either use a new idempotency key or ensure all parameters match the original request.", key)
}

// notStoredMessage tells a retry that the first request succeeded, so running
// it again is not what the key is for.
func notStoredMessage(status int) string {
	return "The request with this idempotency key already succeeded (status " + strconv.Itoa(status) +
		"), but its response was too large or could not be kept, so it cannot be replayed. " +
		"Look up the result instead of retrying, or use a new idempotency key to run the request again."
}

// writeError answers with OpenAI's error envelope. shouldRetry sets
// x-should-retry, which OpenAI's SDKs obey over their own status rules.
func writeError(w http.ResponseWriter, status int, code, message string, shouldRetry *bool) {
	body := make([]byte, 0, 128+len(message))
	body = append(body, `{"error":{"message":`...)
	body = strconv.AppendQuote(body, message) // messages here are ASCII, where Go and JSON quoting agree
	body = append(body, `,"type":"invalid_request_error","param":null,"code":`...)
	body = strconv.AppendQuote(body, code)
	body = append(body, "}}\n"...)

	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	h.Set("Cache-Control", "no-store")
	if shouldRetry != nil {
		h.Set("x-should-retry", strconv.FormatBool(*shouldRetry))
	}
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

var (
	retryYes = true
	retryNo  = false
)

// setRetryAfter tells the client when to ask again: Retry-After in whole
// seconds, rounded up, and retry-after-ms, which OpenAI's SDKs prefer.
func setRetryAfter(h http.Header, after time.Duration) {
	h.Set("Retry-After", strconv.Itoa(int((after+time.Second-1)/time.Second)))
	h.Set("retry-after-ms", strconv.FormatInt(after.Milliseconds(), 10))
}
