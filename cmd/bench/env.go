package main

import (
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"sync/atomic"

	"github.com/caddy-idempotency/caddy-idempotency/internal/batchesbackend"
)

// batchBody is the create every mode sends.
var batchBody = []byte(`{"input_file_id":"file-abc123","endpoint":"/v1/chat/completions","completion_window":"24h"}`)

// env is what every mode runs in: a scratch directory, a cmd/caddy binary
// and the batches upstream on loopback.
type env struct {
	dir, bin  string
	upstream  string // host:port
	batchSize int    // bytes of the upstream's answer to batchBody
	close     func()
	backend   atomic.Pointer[batchesbackend.Server]
}

// resetUpstream gives the upstream an empty store. It keeps every batch it
// creates; a run creates hundreds of thousands, and a fresh store per slice
// keeps its memory and garbage collection (on the same cores) the same in
// every slice, whichever scenarios ran before.
func (e *env) resetUpstream() { e.backend.Store(batchesbackend.New()) }

func (e *env) ServeHTTP(w http.ResponseWriter, r *http.Request) { e.backend.Load().ServeHTTP(w, r) }

// newEnv makes the directory (named after prefix), builds cmd/caddy into it
// unless caddyBin names one, and starts the upstream. The caller must call
// close.
func newEnv(prefix, caddyBin string) (_ *env, err error) {
	e := &env{bin: caddyBin}
	if e.dir, err = os.MkdirTemp("", prefix); err != nil {
		return nil, err
	}
	closers := []func(){func() { os.RemoveAll(e.dir) }}
	e.close = func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}
	defer func() {
		if err != nil {
			e.close()
		}
	}()
	if e.bin == "" {
		if e.bin, err = buildCaddy(e.dir); err != nil {
			return nil, err
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	e.resetUpstream()
	upstream := &http.Server{Handler: e}
	go func() {
		if err := upstream.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			log.Printf("batches upstream: %v", err)
		}
	}()
	closers = append(closers, func() { upstream.Close() })
	e.upstream = ln.Addr().String()
	if e.batchSize, err = responseSize("http://"+e.upstream+"/v1/batches", batchBody); err != nil {
		return nil, fmt.Errorf("batches upstream: %w", err)
	}
	return e, nil
}
