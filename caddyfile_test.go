package caddyidempotency

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddytest"

	"github.com/caddy-idempotency/caddy-idempotency/idempotency"
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

// adaptHandler adapts a site whose idempotency block holds block (its lines
// start at line 3 of the Caddyfile) and returns the idempotency handler of the
// JSON it adapts to.
func adaptHandler(t *testing.T, block string) (*HandlerModule, error) {
	t.Helper()
	caddyfile := ":8080 {\n\tidempotency {\n" + block + "\t}\n\treverse_proxy localhost:9001\n}\n"
	out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), nil)
	if err != nil {
		return nil, err
	}
	var cfg struct {
		Apps struct {
			HTTP struct {
				Servers map[string]struct {
					Routes []struct {
						Handle []json.RawMessage `json:"handle"`
					} `json:"routes"`
				} `json:"servers"`
			} `json:"http"`
		} `json:"apps"`
	}
	if err := json.Unmarshal(out, &cfg); err != nil {
		t.Fatal(err)
	}
	for _, srv := range cfg.Apps.HTTP.Servers {
		for _, route := range srv.Routes {
			for _, raw := range route.Handle {
				var h struct {
					Handler string `json:"handler"`
				}
				if json.Unmarshal(raw, &h) == nil && h.Handler == "idempotency" {
					mod := new(HandlerModule)
					if err := json.Unmarshal(raw, mod); err != nil {
						t.Fatalf("%s: %v", raw, err)
					}
					return mod, nil
				}
			}
		}
	}
	t.Fatalf("no idempotency handler in %s", out)
	return nil, nil
}

// reconcile and key_field's forward, and the JSON they adapt to.
func TestCaddyfileReconcile(t *testing.T) {
	for name, c := range map[string]struct {
		block     string
		reconcile *ReconcileConfig
		keyField  string
		forward   bool
	}{
		"none": {block: "\t\tkey_field idempotency_key\n", keyField: "idempotency_key"},
		"bare": {block: "\t\treconcile batches\n", reconcile: &ReconcileConfig{Kind: "batches"}},
		"empty block": {
			block:     "\t\treconcile batches {\n\t\t}\n",
			reconcile: &ReconcileConfig{Kind: "batches"},
		},
		"tag": {
			block:     "\t\treconcile batches {\n\t\t\ttag\n\t\t}\n",
			reconcile: &ReconcileConfig{Kind: "batches", Tag: true},
		},
		"every option": {
			block: "\t\treconcile batches {\n\t\t\ttag my_tag\n\t\t\twindow 2s\n\t\t\tpage_size 50\n\t\t\tpages 3\n\t\t\tmax_doubts 7\n\t\t}\n" +
				"\t\tttl 1h\n",
			reconcile: &ReconcileConfig{Kind: "batches", Tag: true, TagKey: "my_tag",
				Window: caddy.Duration(2 * time.Second), PageSize: 50, Pages: 3, MaxDoubts: 7},
		},
		"forward": {
			block:    "\t\tkey_field idempotency_key {\n\t\t\tforward\n\t\t}\n\t\trequire_key\n",
			keyField: "idempotency_key", forward: true,
		},
		"forward and reconcile": {
			block:     "\t\tkey_field ik {\n\t\t\tforward\n\t\t}\n\t\treconcile batches {\n\t\t\tpage_size 1\n\t\t}\n",
			keyField:  "ik",
			forward:   true,
			reconcile: &ReconcileConfig{Kind: "batches", PageSize: 1},
		},
		"key_field without a block": {block: "\t\tkey_field off\n", keyField: "off"},
	} {
		t.Run(name, func(t *testing.T) {
			h, err := adaptHandler(t, c.block)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(h.Reconcile, c.reconcile) {
				t.Errorf("reconcile %+v, want %+v", h.Reconcile, c.reconcile)
			}
			if h.KeyField != c.keyField || h.ForwardKeyField != c.forward {
				t.Errorf("key_field %q forward %v, want %q %v", h.KeyField, h.ForwardKeyField, c.keyField, c.forward)
			}
			if h.RequireKey != strings.Contains(c.block, "require_key") || (h.TTL != 0) != strings.Contains(c.block, "ttl") {
				t.Errorf("the lines after the block were lost: %+v", h)
			}
		})
	}
}

// Errors name the line at fault.
func TestCaddyfileReconcileErrors(t *testing.T) {
	for block, want := range map[string]string{
		"\t\treconcile\n":                                                "wrong argument count or unexpected line ending after 'reconcile', at Caddyfile:3",
		"\t\treconcile batches files\n":                                  "wrong argument count or unexpected line ending after 'batches', at Caddyfile:3",
		"\t\treconcile files\n":                                          `unknown reconcile kind "files" (known kinds: batches), at Caddyfile:3`,
		"\t\treconcile batches\n\t\treconcile batches\n":                 `subdirective "reconcile" is repeated (first given on line 3), at Caddyfile:4`,
		"\t\treconcile batches {\n\t\t\ttags\n\t\t}\n":                   `unrecognized reconcile subdirective "tags", at Caddyfile:4`,
		"\t\treconcile batches {\n\t\t\ttag a b\n\t\t}\n":                "wrong argument count or unexpected line ending after 'b', at Caddyfile:4",
		"\t\treconcile batches {\n\t\t\tpages 2\n\t\t\tpages 3\n\t\t}\n": `reconcile subdirective "pages" is repeated (first given on line 4), at Caddyfile:5`,
		"\t\treconcile batches {\n\t\t\twindow soon\n\t\t}\n":            `invalid duration "soon", at Caddyfile:4`,
		"\t\treconcile batches {\n\t\t\twindow 0s\n\t\t}\n":              "window must be more than 0, at Caddyfile:4",
		"\t\treconcile batches {\n\t\t\tpage_size 0\n\t\t}\n":            `page_size must be a whole number from 1 to 100, not "0", at Caddyfile:4`,
		"\t\treconcile batches {\n\t\t\tpage_size 101\n\t\t}\n":          `page_size must be a whole number from 1 to 100, not "101", at Caddyfile:4`,
		"\t\treconcile batches {\n\t\t\tpages many\n\t\t}\n":             `pages must be a whole number, at least 1, not "many", at Caddyfile:4`,
		"\t\treconcile batches {\n\t\t\tpages\n\t\t}\n":                  "wrong argument count or unexpected line ending after 'pages', at Caddyfile:4",
		"\t\treconcile batches {\n\t\t\tmax_doubts 0\n\t\t}\n":           `max_doubts must be a whole number, at least 1, not "0", at Caddyfile:4`,
		"\t\treconcile batches {\n\t\t\tmax_doubts -1\n\t\t}\n":          `max_doubts must be a whole number, at least 1, not "-1", at Caddyfile:4`,
		"\t\tkey_field off {\n\t\t\tforward\n\t\t}\n":                    "key_field off cannot forward: there is no field, at Caddyfile:4",
		"\t\tkey_field ik {\n\t\t\tforward yes\n\t\t}\n":                 "wrong argument count or unexpected line ending after 'yes', at Caddyfile:4",
		"\t\tkey_field ik {\n\t\t\tkeep\n\t\t}\n":                        `unrecognized key_field subdirective "keep", at Caddyfile:4`,
		"\t\tkey_field ik {\n\t\t\tforward\n\t\t\tforward\n\t\t}\n":      `key_field subdirective "forward" is repeated (first given on line 4), at Caddyfile:5`,
		"\t\tkey_field {\n\t\t\tforward\n\t\t}\n":                        "wrong argument count or unexpected line ending after 'key_field', at Caddyfile:3",
	} {
		_, err := adaptHandler(t, block)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: adapt error %v, want one containing %q", block, err, want)
		}
	}
}

// The Caddyfile's reconcile and forward reach the engine's Config through
// the JSON they adapt to and Provision.
func TestCaddyfileReconcileProvision(t *testing.T) {
	h, err := adaptHandler(t, "\t\tstore memory\n\t\tkey_field ik {\n\t\t\tforward\n\t\t}\n"+
		"\t\treconcile batches {\n\t\t\ttag my_tag\n\t\t\twindow 3s\n\t\t\tpage_size 20\n\t\t\tpages 4\n\t\t\tmax_doubts 2\n\t\t}\n")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	if err := h.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	if err := h.Validate(); err != nil {
		t.Fatal(err)
	}
	b, ok := h.config.Reconcile.(*idempotency.Batches)
	if !ok {
		t.Fatalf("Config.Reconcile is %T, want *idempotency.Batches", h.config.Reconcile)
	}
	want := idempotency.Batches{Tag: true, TagKey: "my_tag", Window: 3 * time.Second, PageSize: 20, Pages: 4}
	if *b != want {
		t.Errorf("Config.Reconcile %+v, want %+v", *b, want)
	}
	if h.config.MaxDoubts != 2 || !h.config.ForwardKeyField || h.config.KeyField != "ik" {
		t.Errorf("Config MaxDoubts %d ForwardKeyField %v KeyField %q, want 2 true ik",
			h.config.MaxDoubts, h.config.ForwardKeyField, h.config.KeyField)
	}

	// Without them: no Reconciler, the engine's default MaxDoubts, the field removed.
	h, err = adaptHandler(t, "\t\tstore memory\n")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	if err := h.Validate(); err != nil {
		t.Fatal(err)
	}
	if h.config.Reconcile != nil || h.config.MaxDoubts != 0 || h.config.ForwardKeyField {
		t.Errorf("Config Reconcile %v MaxDoubts %d ForwardKeyField %v, want none", h.config.Reconcile, h.config.MaxDoubts, h.config.ForwardKeyField)
	}
}
