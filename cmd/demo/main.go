// Command demo runs the README's demo in one process: a batches API on
// -upstream and, in front of it, Caddy with testdata/demo.Caddyfile on -port.
// Records go to the handler's default Badger store, in a fresh data directory
// unless -data names one.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/caddy-idempotency/caddy-idempotency"
	"github.com/caddy-idempotency/caddy-idempotency/internal/batchesbackend"
)

func main() {
	port := flag.Int("port", 8080, "the port Caddy serves the demo on")
	upstream := flag.String("upstream", "127.0.0.1:9001", "the address of the demo batches API")
	config := flag.String("config", "testdata/demo.Caddyfile", "the Caddyfile to run")
	data := flag.String("data", "", "Caddy's data directory, which holds the Badger store (default: a new temporary one)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *port, *upstream, *config, *data); err != nil {
		log.Fatal(err)
	}
}

// run serves the demo until ctx ends.
func run(ctx context.Context, port int, upstream, config, data string) error {
	if data == "" {
		dir, err := os.MkdirTemp("", "caddy-idempotency-demo-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		data = dir
	}
	// Read by the Caddyfile ({$DEMO_*}) and by Caddy's data directory lookup.
	os.Setenv("XDG_DATA_HOME", data)
	os.Setenv("DEMO_PORT", strconv.Itoa(port))
	os.Setenv("DEMO_UPSTREAM", upstream)

	ln, err := net.Listen("tcp", upstream)
	if err != nil {
		return fmt.Errorf("demo batches API: %w", err)
	}
	backend := &http.Server{Handler: batchesbackend.New()}
	go func() {
		if err := backend.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			log.Printf("demo batches API: %v", err)
		}
	}()
	defer backend.Close()

	caddyfile, err := os.ReadFile(config)
	if err != nil {
		return err
	}
	cfgJSON, _, err := caddyconfig.GetAdapter("caddyfile").Adapt(caddyfile, map[string]any{"filename": config})
	if err != nil {
		return err
	}
	if err := caddy.Load(cfgJSON, true); err != nil {
		return err
	}
	defer caddy.Stop()

	fmt.Printf("demo: batches API on http://%s, Caddy with the idempotency handler on http://localhost:%d\n", upstream, port)
	fmt.Printf("demo: records in %s; press Ctrl-C to stop\n", data)
	<-ctx.Done()
	return nil
}
