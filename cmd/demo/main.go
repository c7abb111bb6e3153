// Command demo runs the README's demo in one process: a batches API on
// -upstream and, in front of it, an in-process Caddy with the idempotency
// handler on -host:-port, its admin API on -admin. The Caddyfile is built in
// (demo.Caddyfile, next to this file); -config runs another one. Everything
// Caddy writes, the handler's default Badger store included, goes under the
// -data directory, by default a new temporary one removed at exit.
package main

import (
	"context"
	_ "embed"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/caddy-idempotency/caddy-idempotency"
	"github.com/caddy-idempotency/caddy-idempotency/internal/batchesbackend"
)

// demoCaddyfile is the demo's Caddyfile, with {$DEMO_*} placeholders that
// run fills from the flags.
//
//go:embed demo.Caddyfile
var demoCaddyfile []byte

// options are the demo's flags.
type options struct {
	port     int
	host     string // the address Caddy's site binds to
	admin    string // Caddy's admin API address, or "off"
	upstream string // the demo batches API's host:port
	config   string // a Caddyfile to run instead of demoCaddyfile
	data     string // "" for a new temporary directory
}

const usageText = `Usage: go run ./cmd/demo [flags]

Runs the README's demo in one process: a test batches API on -upstream and, in
front of it, Caddy with the idempotency handler on http://<-host>:<-port>,
which keeps its records in the handler's default embedded Badger store.
Everything Caddy writes (its storage, its config and the Badger store) goes
under the -data directory, by default a new temporary one that is removed at
exit; nothing goes to ~/.local/share/caddy or ~/.config/caddy. Caddy's admin
API, which can look records up and purge them, listens on -admin: if another
Caddy already uses 127.0.0.1:2019, pass -admin another address, or -admin off.
The site listens on loopback only unless -host says otherwise. Stop the demo
with Ctrl-C.

Flags:
`

// errBadFlags is a command line the flag package rejected, and has said why.
var errBadFlags = errors.New("bad flags")

// parseFlags parses the command line; flag.ErrHelp for -h.
func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usageText)
		fs.PrintDefaults()
	}
	fs.IntVar(&o.port, "port", 8080, "the `port` Caddy's site listens on")
	fs.StringVar(&o.host, "host", "127.0.0.1", "the `address` Caddy's site binds to; 0.0.0.0 (or ::) exposes the demo to the network")
	fs.StringVar(&o.admin, "admin", "127.0.0.1:2019", "Caddy's admin API `address` (host:port), or off to disable it")
	fs.StringVar(&o.upstream, "upstream", "127.0.0.1:9001", "the `host:port` the demo batches API listens on, and Caddy proxies to")
	fs.StringVar(&o.config, "config", "", "the `path` of a Caddyfile to run instead of the built-in one (cmd/demo/demo.Caddyfile); its\n{$DEMO_ADMIN}, {$DEMO_HOST}, {$DEMO_PORT} and {$DEMO_UPSTREAM} take the flags' values")
	fs.StringVar(&o.data, "data", "", "the `directory` for Caddy's storage, config and Badger store, kept at exit so\nthe records survive a restart (default: a new temporary directory, removed at exit)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return o, err
		}
		return o, errBadFlags
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q (see -help)", fs.Arg(0))
	}
	return o, o.check()
}

// check rejects values that are not addresses, before any of them goes into
// the Caddyfile.
func (o options) check() error {
	if o.port < 1 || o.port > 65535 {
		return fmt.Errorf("-port %d: not a TCP port", o.port)
	}
	if o.host == "" || strings.ContainsAny(o.host, " \t\r\n{}\"#/") {
		return fmt.Errorf("-host %q: not a host name or IP address", o.host)
	}
	if _, _, err := net.SplitHostPort(o.upstream); err != nil {
		return fmt.Errorf("-upstream %q: want host:port: %v", o.upstream, err)
	}
	if o.admin != "off" {
		if _, _, err := net.SplitHostPort(o.admin); err != nil {
			return fmt.Errorf("-admin %q: want host:port or off: %v", o.admin, err)
		}
	}
	for flag, v := range map[string]string{"-upstream": o.upstream, "-admin": o.admin} {
		if strings.ContainsAny(v, " \t\r\n{}\"#") {
			return fmt.Errorf("%s %q: not an address", flag, v)
		}
	}
	return nil
}

func main() {
	log.SetFlags(0)
	log.SetPrefix("demo: ")
	o, err := parseFlags(os.Args[1:], os.Stderr)
	switch {
	case errors.Is(err, flag.ErrHelp):
		os.Exit(0)
	case errors.Is(err, errBadFlags):
		os.Exit(2)
	case err != nil:
		fmt.Fprintf(os.Stderr, "demo: %v\n", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o, os.Stdout); err != nil {
		stop()
		fmt.Fprintf(os.Stderr, "demo: %v\n", err)
		os.Exit(1)
	}
}

// run serves the demo until ctx ends, then stops Caddy and the batches API
// and removes the temporary data directory. It reports what it serves on out.
func run(ctx context.Context, o options, out io.Writer) error {
	if err := o.check(); err != nil {
		return err
	}
	data, temporary := o.data, o.data == ""
	if temporary {
		dir, err := os.MkdirTemp("", "caddy-idempotency-demo-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		data = dir
	}
	data, err := filepath.Abs(data)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(data, 0o700); err != nil {
		return err
	}
	defer useDataDir(data)()

	siteAddr := net.JoinHostPort(o.host, strconv.Itoa(o.port))
	caddyfile, name := demoCaddyfile, "demo.Caddyfile (built in)"
	if o.config != "" {
		if caddyfile, err = os.ReadFile(o.config); err != nil {
			return err
		}
		name = o.config
	}
	bind := o.host
	if strings.Contains(bind, ":") && !strings.HasPrefix(bind, "[") {
		bind = "[" + bind + "]"
	}
	caddyfile = fillPlaceholders(caddyfile, map[string]string{
		"DEMO_ADMIN":    o.admin,
		"DEMO_HOST":     bind,
		"DEMO_PORT":     strconv.Itoa(o.port),
		"DEMO_UPSTREAM": o.upstream,
	})
	cfgJSON, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt(caddyfile, map[string]any{"filename": name})
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	for _, w := range warnings {
		fmt.Fprintf(os.Stderr, "demo: warning: %s\n", w)
	}

	ln, err := net.Listen("tcp", o.upstream)
	if err != nil {
		return fmt.Errorf("%w (the demo batches API; choose another address with -upstream)", err)
	}
	backend, served := &http.Server{Handler: batchesbackend.New()}, make(chan struct{})
	go func() {
		defer close(served)
		if err := backend.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			log.Printf("batches API: %v", err)
		}
	}()
	defer func() {
		backend.Close()
		<-served // and with it, ln closed
	}()

	// Caddy would fail on a taken address too, but only after logging its
	// start; trying them first makes the error one plain line.
	if o.admin != "off" {
		if err := tryListen(o.admin); err != nil {
			return fmt.Errorf("%w (Caddy's admin API; is another Caddy running? Choose another address with -admin, or -admin off)", err)
		}
	}
	if err := tryListen(siteAddr); err != nil {
		return fmt.Errorf("%w (Caddy's site; choose another address with -port or -host)", err)
	}

	defer stopCaddy()
	if err := caddy.Load(cfgJSON, true); err != nil {
		return err
	}

	fmt.Fprintf(out, "demo: batches API on http://%s\n", o.upstream)
	fmt.Fprintf(out, "demo: Caddy with the idempotency handler on http://%s, config %s\n", siteAddr, name)
	if o.admin != "off" {
		fmt.Fprintf(out, "demo: Caddy's admin API on http://%s\n", o.admin)
	}
	if temporary {
		fmt.Fprintf(out, "demo: data in %s, removed at exit; press Ctrl-C to stop\n", data)
	} else {
		fmt.Fprintf(out, "demo: data in %s; press Ctrl-C to stop\n", data)
	}
	<-ctx.Done()
	return nil
}

// demoPlaceholder is a {$DEMO_NAME} or {$DEMO_NAME:default} placeholder.
var demoPlaceholder = regexp.MustCompile(`\{\$(DEMO_[A-Z_]+)(?::[^}]*)?\}`)

// fillPlaceholders replaces the placeholders named in vals with their
// values, before Caddy's adapter would read them from the environment; it
// leaves the others to it.
func fillPlaceholders(caddyfile []byte, vals map[string]string) []byte {
	return demoPlaceholder.ReplaceAllFunc(caddyfile, func(p []byte) []byte {
		if v, ok := vals[string(demoPlaceholder.FindSubmatch(p)[1])]; ok {
			return []byte(v)
		}
		return p
	})
}

// useDataDir points every directory Caddy writes to at dir, and returns
// what undoes it. Caddy's default storage and config autosave path were set
// from the environment when its package was initialized, so they are set
// here too, not only the environment that its data directory lookups (the
// Badger store's default directory, the instance ID) read.
func useDataDir(dir string) (restore func()) {
	var undo []func()
	for _, name := range []string{"XDG_DATA_HOME", "XDG_CONFIG_HOME"} {
		old, had := os.LookupEnv(name)
		os.Setenv(name, dir)
		undo = append(undo, func() {
			if had {
				os.Setenv(name, old)
			} else {
				os.Unsetenv(name)
			}
		})
	}
	oldStorage, oldAutosave := caddy.DefaultStorage.Path, caddy.ConfigAutosavePath
	caddy.DefaultStorage.Path = caddy.AppDataDir()
	caddy.ConfigAutosavePath = filepath.Join(caddy.AppConfigDir(), "autosave.json")
	undo = append(undo, func() { caddy.DefaultStorage.Path, caddy.ConfigAutosavePath = oldStorage, oldAutosave })
	return func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	}
}

// tryListen fails if addr cannot be listened on.
func tryListen(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	return ln.Close()
}

// stopCaddy stops the in-process Caddy and its admin API, which caddy.Stop
// leaves running, so that it lets go of its ports and the Badger store.
func stopCaddy() {
	if err := caddy.Load([]byte(`{"admin": {"disabled": true, "config": {"persist": false}}}`), true); err != nil {
		log.Printf("stopping Caddy: %v", err)
	}
	caddy.Stop()
}
