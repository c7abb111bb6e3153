package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/caddy-idempotency/caddy-idempotency/idempotency"
)

// scrape reads Caddy's /metrics from the admin endpoint and returns the
// value of each idempotency sample, by its name and labels as printed.
func scrape(t *testing.T) map[string]float64 {
	t.Helper()
	r := admin(t, http.MethodGet, "/metrics", "")
	if r.Status != http.StatusOK {
		t.Fatalf("GET /metrics: status %d", r.Status)
	}
	body := r.Body
	samples := map[string]float64{}
	for _, m := range regexp.MustCompile(`(?m)^(caddy_http_idempotency_\S+) (\S+)$`).FindAllStringSubmatch(string(body), -1) {
		v, err := strconv.ParseFloat(m[2], 64)
		if err != nil {
			t.Fatalf("sample %s: %v", m[0], err)
		}
		samples[m[1]] = v
	}
	if len(samples) == 0 {
		t.Fatalf("no caddy_http_idempotency_ samples in /metrics:\n%s", body)
	}
	return samples
}

func outcomes(samples map[string]float64, outcome string) float64 {
	return samples[`caddy_http_idempotency_requests_total{outcome="`+outcome+`"}`]
}

// The handler's counters, store latency and in-flight gauge are on Caddy's
// own /metrics, and a config reload registers them again in the new registry.
func TestMetricsOnCaddysEndpoint(t *testing.T) {
	s := newStack(t, "\t\tstore memory")
	// The memory store outlives configs in this process: keys of this run only.
	run := strconv.FormatInt(time.Now().UnixNano(), 36)
	k1, k2, k3 := "m-1-"+run, "m-2-"+run, "m-3-"+run
	body := createBody(t, nil, "")
	s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", k1).batch(t)
	s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", k1).batch(t)
	s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", k1).batch(t)
	s.send(http.MethodPost, "/v1/batches", createBody(t, map[string]any{"input_file_id": "other"}, ""), "Idempotency-Key", k1).
		apiError(t, http.StatusConflict, "idempotency_key_reused")
	s.send(http.MethodPost, "/v1/batches", body).batch(t)
	s.send(http.MethodPost, "/v1/batches", `{"input_file_id":`, "Idempotency-Key", k2).apiError(t, http.StatusBadRequest, "invalid_json")

	m := scrape(t)
	for outcome, want := range map[string]float64{"stored": 1, "replayed": 2, "conflict": 1, "passthrough": 1, "rejected": 1, "in_flight": 0, "released": 0, "store_error": 0} {
		if got := outcomes(m, outcome); got != want {
			t.Errorf("requests_total{outcome=%q} = %v, want %v", outcome, got, want)
		}
	}
	if got := m[`caddy_http_idempotency_store_operation_duration_seconds_count{operation="begin",result="ok"}`]; got != 4 {
		t.Errorf("begin operations observed = %v, want 4", got)
	}
	if got := m[`caddy_http_idempotency_store_operation_duration_seconds_count{operation="complete",result="ok"}`]; got != 1 {
		t.Errorf("complete operations observed = %v, want 1", got)
	}
	if got := m["caddy_http_idempotency_in_flight"]; got != 0 {
		t.Errorf("in_flight = %v after every request finished, want 0", got)
	}

	// A request upstream is in flight until it finishes.
	open := holdNextCreate(t, s.backend)
	done := make(chan reply, 1)
	go func() { done <- s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", k3) }()
	waitFor(t, "the request in flight", func() bool { return scrape(t)["caddy_http_idempotency_in_flight"] == 1 })
	open()
	<-done
	if got := scrape(t)["caddy_http_idempotency_in_flight"]; got != 0 {
		t.Errorf("in_flight = %v once the request finished, want 0", got)
	}

	// A reload: the new config's registry has the collectors, counting anew.
	s.load("\t\tstore memory\n\t\tttl 1h", s.upstream)
	s.send(http.MethodPost, "/v1/batches", body, "Idempotency-Key", k1).batch(t)
	m = scrape(t)
	if got := outcomes(m, "replayed"); got != 1 {
		t.Errorf("after a reload, requests_total{outcome=replayed} = %v, want 1 (the new registry's)", got)
	}
	if got := outcomes(m, "stored"); got != 0 {
		t.Errorf("after a reload, requests_total{outcome=stored} = %v, want 0", got)
	}
}

// The outcome and key hash are placeholders a deferred header can carry, and
// fields of the access log entry.
func TestOutcomePlaceholdersAndAccessLog(t *testing.T) {
	accessLog := filepath.Join(t.TempDir(), "access.log")
	s := newSiteStack(t, quietLog, func(upstream string) string {
		return fmt.Sprintf("\tlog {\n\t\toutput file %s\n\t}\n"+
			"\theader >X-Idempotency-Outcome {http.idempotency.outcome}\n"+
			"\theader >X-Idempotency-Key-Hash {http.idempotency.key_hash}\n", accessLog) +
			idempotencySite("\t\tstore memory", upstream)
	})

	body := createBody(t, nil, "")
	key := uniqueKey("p-1")
	auth := []string{"Authorization", "Bearer sk-placeholder", "Idempotency-Key", key}
	first := s.send(http.MethodPost, "/v1/batches", body, auth...)
	replay := s.send(http.MethodPost, "/v1/batches", body, auth...)
	wantHash := idempotency.NewRecordKey(siteNamespace(), "Bearer sk-placeholder", key).String()
	for name, r := range map[string]reply{"stored": first, "replayed": replay} {
		if got := r.Header.Get("X-Idempotency-Outcome"); got != name {
			t.Errorf("%s: X-Idempotency-Outcome %q", name, got)
		}
		if got := r.Header.Get("X-Idempotency-Key-Hash"); got != wantHash {
			t.Errorf("%s: X-Idempotency-Key-Hash %q, want %s", name, got, wantHash)
		}
	}

	// Reload to a config without the log file, so Caddy flushes it.
	newStack(t, "store memory")
	f, err := os.Open(accessLog)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var seen []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var entry struct {
			Outcome string `json:"idempotency_outcome"`
			KeyHash string `json:"idempotency_key_hash"`
			Request struct {
				URI string `json:"uri"`
			} `json:"request"`
		}
		if err := json.Unmarshal(sc.Bytes(), &entry); err != nil {
			t.Fatalf("access log line %s: %v", sc.Bytes(), err)
		}
		if entry.Request.URI == warmUpPath {
			continue // the harness's, to reach the new config
		}
		if entry.KeyHash != wantHash {
			t.Errorf("access log entry %s: key hash %q, want %s", sc.Bytes(), entry.KeyHash, wantHash)
		}
		seen = append(seen, entry.Outcome)
	}
	if fmt.Sprint(seen) != "[stored replayed]" {
		t.Errorf("access log outcomes %v, want [stored replayed]", seen)
	}
}
