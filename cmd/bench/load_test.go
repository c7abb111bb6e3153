package main

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// A server that answers nothing for longer than the warm-up lasts (a first
// dial to a store on a loaded machine) is warmed up, not failed; one that
// answers an error is failed, with the error.
func TestLoaderWarm(t *testing.T) {
	var requests atomic.Int64
	ready := time.Now().Add(200 * time.Millisecond)
	slowFirst := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		time.Sleep(time.Until(ready))
		w.Write([]byte("{}"))
	}))
	defer slowFirst.Close()
	l := &loader{client: newClient(2), url: slowFirst.URL, body: []byte("{}"), concurrency: 2}
	if err := l.warm(20 * time.Millisecond); err != nil {
		t.Fatalf("warm with a slow first answer: %v", err)
	}
	if requests.Load() < 2 {
		t.Fatalf("%d requests: the first only, no load after it", requests.Load())
	}
	if time.Now().Before(ready) {
		t.Fatal("warm returned before the server answered")
	}

	failing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "no", http.StatusServiceUnavailable)
	}))
	defer failing.Close()
	l = &loader{client: newClient(2), url: failing.URL, body: []byte("{}"), concurrency: 2}
	if err := l.warm(20 * time.Millisecond); err == nil || !strings.Contains(err.Error(), "status 503") {
		t.Fatalf("warm against a failing server: %v, want status 503", err)
	}
}

// A measured slice in which no request ended says so apart from one in
// which requests failed.
func TestLoaderRunNoneFinished(t *testing.T) {
	stalled := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(300 * time.Millisecond)
	}))
	defer stalled.Close()
	l := &loader{client: newClient(2), url: stalled.URL, body: []byte("{}"), concurrency: 2}
	if err := l.run(30*time.Millisecond, &result{}); !errors.Is(err, errNoneFinished) {
		t.Fatalf("run against a stalled server: %v, want errNoneFinished", err)
	}
}
