package e2e

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The README's way to build Caddy with the handler from a checkout, before
// the module is published: xcaddy with a local replacement. The version
// (@v0.0.0) lets the go command resolve the replaced module without asking
// a module proxy, which knows nothing of an unpublished module.
func TestXcaddyBuildFromCheckout(t *testing.T) {
	checkout, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "caddy")
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "run", "github.com/caddyserver/xcaddy/cmd/xcaddy@v0.4.5",
		"build", "v2.11.9", "--with", "github.com/caddy-idempotency/caddy-idempotency@v0.0.0="+checkout, "--output", out)
	cmd.Dir = t.TempDir() // as a user would, from anywhere
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("xcaddy build: %v\n%s", err, b)
	}
	b, err := exec.CommandContext(ctx, out, "list-modules").CombinedOutput()
	if err != nil {
		t.Fatalf("caddy list-modules: %v\n%s", err, b)
	}
	for _, m := range []string{"http.handlers.idempotency", "http.handlers.idempotency.stores.badger",
		"http.handlers.idempotency.stores.redis", "admin.api.idempotency"} {
		if !strings.Contains(string(b), m+"\n") {
			t.Errorf("the built Caddy lacks module %s:\n%s", m, b)
		}
	}
}
