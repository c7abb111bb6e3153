package caddyidempotency

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddytest"
)

var updateAdapt = flag.Bool("update-adapt", false, "rewrite the expected JSON of testdata/caddyfile_adapt")

// Each testdata/caddyfile_adapt/*.caddyfiletest is a Caddyfile, a line of
// dashes, and either the JSON it adapts to or "error: " and a part of the
// error it must give.
func TestCaddyfileAdapt(t *testing.T) {
	files, err := filepath.Glob("testdata/caddyfile_adapt/*.caddyfiletest")
	if err != nil || len(files) == 0 {
		t.Fatalf("no adapt cases: %v", err)
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			caddyfile, expected, ok := strings.Cut(string(data), "----------")
			if !ok {
				t.Fatal("no ---------- separator")
			}
			caddyfile, expected = strings.TrimSpace(caddyfile)+"\n", strings.TrimSpace(expected)

			if want, isErr := strings.CutPrefix(expected, "error: "); isErr {
				_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), nil)
				if err == nil || !strings.Contains(err.Error(), want) {
					t.Fatalf("adapt error %v, want one containing %q", err, want)
				}
				return
			}
			if *updateAdapt {
				out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), nil)
				if err != nil {
					t.Fatal(err)
				}
				var pretty bytes.Buffer
				_ = json.Indent(&pretty, out, "", "\t")
				_ = os.WriteFile(file, []byte(caddyfile+"----------\n"+pretty.String()+"\n"), 0o644)
				return
			}
			if !caddytest.CompareAdapt(t, file, caddyfile, "caddyfile", expected) {
				t.Fatal("adapted JSON differs (see the diff above)")
			}
		})
	}
}
