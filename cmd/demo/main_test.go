package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The README's curl lines against the demo: create, replay, conflict.
func TestDemoCreateReplayConflict(t *testing.T) {
	port, upstream, admin := freePort(t), freePort(t), freePort(t)
	t.Setenv("DEMO_ADMIN_PORT", strconv.Itoa(admin))
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, port, fmt.Sprintf("127.0.0.1:%d", upstream), "../../testdata/demo.Caddyfile", t.TempDir())
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("demo: %v", err)
		}
	}()

	base := fmt.Sprintf("http://127.0.0.1:%d/v1/batches", port)
	body := `{"input_file_id":"file-abc123","endpoint":"/v1/chat/completions","completion_window":"24h"}`
	post := func(body string) (*http.Response, map[string]any) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, base, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer sk-demo")
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Idempotency-Key", "demo-1")
		deadline := time.Now().Add(20 * time.Second)
		for {
			res, err := http.DefaultClient.Do(req)
			if err == nil {
				defer res.Body.Close()
				raw, _ := io.ReadAll(res.Body)
				var v map[string]any
				if err := json.Unmarshal(raw, &v); err != nil {
					t.Fatalf("%d %s", res.StatusCode, raw)
				}
				return res, v
			}
			if time.Now().After(deadline) {
				t.Fatalf("the demo did not answer: %v", err)
			}
			time.Sleep(50 * time.Millisecond)
			req.Body, _ = req.GetBody()
		}
	}

	res1, created := post(body)
	res2, replayed := post(body)
	if res1.StatusCode != 200 || res2.StatusCode != 200 || created["id"] != replayed["id"] ||
		created["created_at"] != replayed["created_at"] || res2.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("create %d %v\nreplay %d %v %v", res1.StatusCode, created, res2.StatusCode, replayed, res2.Header)
	}
	res3, conflict := post(strings.Replace(body, "file-abc123", "file-other", 1))
	if res3.StatusCode != http.StatusConflict || conflict["error"].(map[string]any)["code"] != "idempotency_key_reused" {
		t.Fatalf("conflict: %d %v", res3.StatusCode, conflict)
	}
}

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
