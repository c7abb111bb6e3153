package idempotency_test

import (
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"

	"github.com/caddy-idempotency/caddy-idempotency/idempotency"
)

// The engine as plain net/http middleware, in front of a reverse proxy to a
// batches backend: a retried create is replayed, not run twice.
func Example() {
	var creates atomic.Int64
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"id":"batch_%d","object":"batch"}`, creates.Add(1))
	}))
	defer backend.Close()

	store := idempotency.NewMemoryStore() // badgerstore.Open persists records, redisstore.New shares them
	defer store.Close()
	h, err := idempotency.New(idempotency.Config{Store: store})
	if err != nil {
		log.Fatal(err)
	}
	target, _ := url.Parse(backend.URL)
	gateway := httptest.NewServer(h.Middleware(httputil.NewSingleHostReverseProxy(target)))
	defer gateway.Close()

	create := func(key, body string) {
		req, _ := http.NewRequest(http.MethodPost, gateway.URL+"/v1/batches", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Idempotency-Key", key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			log.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode >= 300 {
			var e struct{ Error struct{ Code string } }
			_ = json.Unmarshal(b, &e)
			fmt.Println(resp.StatusCode, e.Error.Code)
			return
		}
		fmt.Printf("%d %s replayed=%s\n", resp.StatusCode, b, resp.Header.Get("Idempotent-Replayed"))
	}

	body := `{"input_file_id":"file-abc","endpoint":"/v1/chat/completions","completion_window":"24h"}`
	create("retry-1", body)
	create("retry-1", body) // the client retries: same response, no second batch
	create("retry-1", strings.Replace(body, "file-abc", "file-xyz", 1))
	fmt.Println("batches created:", creates.Load())

	// Output:
	// 200 {"id":"batch_1","object":"batch"} replayed=
	// 200 {"id":"batch_1","object":"batch"} replayed=true
	// 409 idempotency_key_reused
	// batches created: 1
}
