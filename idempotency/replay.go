package idempotency

import (
	"net/http"
	"strconv"
)

// replay answers from a completed record. A record completed without its
// response (too large, or in a coding that could not be kept) tells the
// client the first request succeeded, so it is not run again.
func replay(resp *Response) answer {
	v := verdict{outcome: OutcomeReplayed, status: resp.Status}
	if resp.NotStored {
		v.status, v.reason, v.coded = http.StatusConflict, CodeResponseNotStored, true
	}
	return answer{verdict: v, how: answerReplay, replay: resp}
}

// writeReplay answers with resp, which is the caller's own copy (every Store
// returns one), so its header values are handed over, not copied.
func writeReplay(w http.ResponseWriter, resp *Response) {
	if resp.NotStored {
		w.Header().Set("Idempotent-Replayed", "true")
		writeError(w, http.StatusConflict, CodeResponseNotStored, notStoredMessage(resp.Status), &retryNo)
		return
	}
	h := w.Header()
	for name, values := range resp.Header {
		h[name] = values
	}
	h.Set("Idempotent-Replayed", "true")
	h.Set("Content-Length", strconv.Itoa(len(resp.Body)))
	w.WriteHeader(resp.Status)
	_, _ = w.Write(resp.Body)
}
