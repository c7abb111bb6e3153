package idempotency

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"testing/iotest"
)

func TestInvalidKeys(t *testing.T) {
	s := newStack(t, Config{}, nil)
	cases := []struct {
		name string
		body string
		opts []reqOpt
	}{
		{"header and field differ", `{"idempotency_key":"k-body","endpoint":"/v1/embeddings"}`, []reqOpt{withKey("k-header")}},
		{"field not a string", `{"idempotency_key":42,"endpoint":"/v1/embeddings"}`, []reqOpt{withKey("k")}},
		{"field empty", `{"idempotency_key":"","endpoint":"/v1/embeddings"}`, nil},
		{"field not printable ASCII", `{"idempotency_key":"cl\u00e9","endpoint":"/v1/embeddings"}`, nil},
		{"header bad sf-string", createBody, []reqOpt{withKey(`"abc`)}},
		{"header too long", createBody, []reqOpt{withKey(strings.Repeat("x", 256))}},
		{"header twice", createBody, []reqOpt{func(r *http.Request) {
			r.Header.Add("Idempotency-Key", "a")
			r.Header.Add("Idempotency-Key", "b")
		}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := s.post(t, tc.body, tc.opts...)
			wantError(t, r, http.StatusBadRequest, CodeInvalidKey)
			wantHeader(t, r, "x-should-retry", "false")
		})
	}
	s.up.wantCalls(t, 0)
}

func TestInvalidJSONWithKey(t *testing.T) {
	s := newStack(t, Config{}, nil)
	for _, body := range []string{
		`{"input_file_id":`,
		`{"a":1,"a":2}`,
		`{"a":1} trailing`,
		"{\"a\":\"\xff\"}",
		`{"a":NaN}`,
	} {
		r := s.post(t, body, withKey("k-json"))
		wantError(t, r, http.StatusBadRequest, CodeInvalidJSON)
	}
	s.up.wantCalls(t, 0)

	// Nothing was begun: the key is still free.
	first := s.post(t, createBody, withKey("k-json"))
	wantForwarded(t, first, http.StatusOK)
	wantReplayOf(t, s.post(t, createBody, withKey("k-json")), first)
	s.up.wantCalls(t, 1)
}

func TestBodyTooLarge(t *testing.T) {
	const limit = 64
	s := newStack(t, Config{MaxBody: limit}, nil)
	big := `{"a":"` + strings.Repeat("x", limit) + `"}`
	atLimit := `{"a":"` + strings.Repeat("x", limit-8) + `"}`
	if len(atLimit) != limit {
		t.Fatalf("test body is %d bytes, want %d", len(atLimit), limit)
	}

	t.Run("content-length", func(t *testing.T) {
		wantError(t, s.post(t, big, withKey("k-big")), http.StatusRequestEntityTooLarge, CodeRequestTooLarge)
	})
	t.Run("chunked", func(t *testing.T) {
		wantError(t, s.post(t, chunked{strings.NewReader(big)}, withKey("k-big")), http.StatusRequestEntityTooLarge, CodeRequestTooLarge)
		wantError(t, s.post(t, chunked{strings.NewReader(`{"idempotency_key":"k-big","a":"` + strings.Repeat("x", limit) + `"}`)}),
			http.StatusRequestEntityTooLarge, CodeRequestTooLarge)
	})
	s.up.wantCalls(t, 0)

	t.Run("at the limit, chunked", func(t *testing.T) {
		first := s.post(t, chunked{strings.NewReader(atLimit)}, withKey("k-big"))
		wantForwarded(t, first, http.StatusOK)
		seen := s.up.requests()
		if string(seen[0].Body) != atLimit || seen[0].ContentLength != limit {
			t.Fatalf("upstream got %q with ContentLength %d, want the %d-byte body with its length", seen[0].Body, seen[0].ContentLength, limit)
		}
		wantReplayOf(t, s.post(t, atLimit, withKey("k-big")), first)
	})
	s.up.wantCalls(t, 1)
}

// A body cut short (a client gone mid-upload, a read timeout) is answered
// in the envelope, claims nothing, and leaves the key usable.
func TestBodyReadFailure(t *testing.T) {
	h, store := newHandler(t, Config{})
	req := jsonRequest(t, "k-cut", "")
	req.Body = io.NopCloser(io.MultiReader(strings.NewReader(`{"input_file_id":`), iotest.ErrReader(io.ErrUnexpectedEOF)))
	res := answerAlone(t, h, req, "a body that could not be read")
	wantError(t, res, http.StatusBadRequest, CodeBodyUnreadable)
	wantHeader(t, res, "x-should-retry", "true")
	if _, ok := getRecord(t, store, newRequestNS, "", "k-cut"); ok {
		t.Fatal("a request whose body could not be read claimed its key")
	}
}

// A declared length over the limit is refused before a byte is read.
func TestBodyTooLargeDeclaredNotRead(t *testing.T) {
	h, _ := newHandler(t, Config{MaxBody: 64})
	body := &readSpy{Reader: strings.NewReader(strings.Repeat("x", 65))}
	req := jsonRequest(t, "k-big", "")
	req.Body, req.ContentLength = body, 65
	wantError(t, answerAlone(t, h, req, "a body over MaxBody"), http.StatusRequestEntityTooLarge, CodeRequestTooLarge)
	if body.read.Load() {
		t.Fatal("the body was read although its declared length is over MaxBody")
	}
}

func TestRequireKey(t *testing.T) {
	s := newStack(t, Config{RequireKey: true}, nil)
	wantError(t, s.post(t, createBody), http.StatusBadRequest, CodeKeyRequired)
	wantError(t, s.post(t, "plain", withType("text/plain")), http.StatusBadRequest, CodeKeyRequired)
	// A body the strict parser rejects cannot smuggle a keyless request past
	// require_key (a lenient upstream would accept duplicate members).
	wantError(t, s.post(t, `{"input_file_id":"a","input_file_id":"a"}`), http.StatusBadRequest, CodeInvalidJSON)
	wantError(t, s.post(t, `{"idempotency_key":5}`), http.StatusBadRequest, CodeInvalidKey)
	s.up.wantCalls(t, 0)
	wantForwarded(t, s.post(t, createBody, withKey("k")), http.StatusOK)
	wantForwarded(t, s.post(t, `{"idempotency_key":"k2"}`), http.StatusOK)
	s.up.wantCalls(t, 2)
}
