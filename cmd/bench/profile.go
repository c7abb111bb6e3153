package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

// profileAsync fetches a CPU profile of Caddy from its admin pprof endpoint
// while the scenario runs, skipping the first and last half second.
func profileAsync(adminPort int, d time.Duration, out, scenario string) chan error {
	if out == "" {
		out = "bench-" + scenario + ".pprof"
	}
	done := make(chan error, 1)
	go func() {
		secs := int((d - time.Second) / time.Second)
		if secs < 1 {
			secs = 1
		}
		time.Sleep(500 * time.Millisecond)
		url := fmt.Sprintf("http://localhost:%d/debug/pprof/profile?seconds=%d", adminPort, secs)
		res, err := http.Get(url)
		if err != nil {
			done <- err
			return
		}
		defer res.Body.Close()
		if res.StatusCode != http.StatusOK {
			b, _ := io.ReadAll(res.Body)
			done <- fmt.Errorf("%s: status %d: %s", url, res.StatusCode, b)
			return
		}
		f, err := os.Create(out)
		if err != nil {
			done <- err
			return
		}
		_, err = io.Copy(f, res.Body)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			fmt.Fprintf(os.Stderr, "bench: CPU profile of %s in %s (go tool pprof -top %s)\n", scenario, out, out)
		}
		done <- err
	}()
	return done
}
