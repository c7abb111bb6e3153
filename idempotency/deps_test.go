package idempotency_test

import (
	"os/exec"
	"strings"
	"testing"
)

// The engine is for any Go gateway: importing it must not bring in a storage
// engine or Caddy. Those live in the store packages and the adapter.
func TestEngineImportsNoStorageEngineOrCaddy(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	forbidden := []string{
		"github.com/dgraph-io/badger",
		"github.com/redis/go-redis",
		"github.com/caddyserver/",
		"go.opentelemetry.io/",
		"google.golang.org/protobuf",
	}
	for _, dep := range strings.Fields(string(out)) {
		for _, f := range forbidden {
			if strings.HasPrefix(dep, f) {
				t.Errorf("the engine imports %s", dep)
			}
		}
	}
}
