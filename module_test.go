package caddyidempotency

import (
	"encoding/json"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"
	"unicode"

	"github.com/caddy-idempotency/caddy-idempotency/idempotency"
)

// "wait": 0 is no wait, while a missing wait is the engine's default.
func TestJSONWait(t *testing.T) {
	for in, want := range map[string]time.Duration{
		`{}`:                   0, // the engine's DefaultWait
		`{"wait": 0}`:          idempotency.NoWait,
		`{"wait": "0s"}`:       idempotency.NoWait,
		`{"wait": "5s"}`:       5 * time.Second,
		`{"wait": 1000000000}`: time.Second,
		`{"wait": "30s"}`:      idempotency.DefaultWait,
	} {
		var h HandlerModule
		if err := json.Unmarshal([]byte(in), &h); err != nil {
			t.Fatalf("%s: %v", in, err)
		}
		if got := h.wait(); got != want {
			t.Errorf("%s: engine wait %v, want %v", in, got, want)
		}
	}
}

// The fields a module's JSON docs show: each has its own doc comment (Caddy's
// docs render a field's doc comment and nothing else), written as sentences,
// and one whose empty value means a default names it.
func TestConventionFieldDocs(t *testing.T) {
	modules := map[string][]string{
		"module.go":       {"HandlerModule", "ReconcileConfig"},
		"store_badger.go": {"BadgerModule"},
		"store_memory.go": {"MemoryModule"},
		"store_redis.go":  {"RedisModule"},
	}
	// A default, or what happens without the field, in so many words.
	statesDefault := regexp.MustCompile(`(?i)\bdefault\b|\brequired\b`)
	fset := token.NewFileSet()
	for file, types := range modules {
		f, err := parser.ParseFile(fset, file, nil, parser.ParseComments)
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range types {
			spec := findStruct(f, name)
			if spec == nil {
				t.Errorf("%s: no struct %s", file, name)
				continue
			}
			for _, field := range spec.Fields.List {
				tag := ""
				if field.Tag != nil {
					tag = reflect.StructTag(strings.Trim(field.Tag.Value, "`")).Get("json")
				}
				if tag == "" || tag == "-" {
					continue
				}
				jsonName, _, _ := strings.Cut(tag, ",")
				where := fmt.Sprintf("%s: %s.%s (%q)", file, name, field.Names[0].Name, jsonName)
				if len(field.Names) != 1 {
					t.Errorf("%s: %d names share one doc comment", where, len(field.Names))
				}
				doc := strings.TrimSpace(field.Doc.Text())
				switch {
				case doc == "":
					t.Errorf("%s: no doc comment", where)
				case !unicode.IsUpper([]rune(doc)[0]) || !strings.HasSuffix(doc, "."):
					t.Errorf("%s: doc comment is not a sentence: %q", where, doc)
				case !isBool(field.Type) && !statesDefault.MatchString(doc):
					t.Errorf("%s: doc comment does not state the default: %q", where, doc)
				}
			}
		}
	}
}

func findStruct(f *ast.File, name string) *ast.StructType {
	for _, decl := range f.Decls {
		gen, ok := decl.(*ast.GenDecl)
		if !ok {
			continue
		}
		for _, spec := range gen.Specs {
			if ts, ok := spec.(*ast.TypeSpec); ok && ts.Name.Name == name {
				st, _ := ts.Type.(*ast.StructType)
				return st
			}
		}
	}
	return nil
}

func isBool(expr ast.Expr) bool {
	id, ok := expr.(*ast.Ident)
	return ok && id.Name == "bool"
}

// Validate names a field the engine refuses as the config spells it, so a
// Caddy user reads lock_timeout, not the engine's Config.Lease.
func TestValidateNamesConfigFields(t *testing.T) {
	cases := map[string]string{
		`{"lock_timeout": "10ms"}`:    "idempotency: lock_timeout must be at least 100ms, not 10ms",
		`{"ttl": "10ms"}`:             "idempotency: ttl must be at least 1s, not 10ms",
		`{"max_body": -1}`:            "idempotency: max_body must be 0",
		`{"max_response": -1}`:        "idempotency: max_response must be 0",
		`{"conflict_status": 400}`:    "idempotency: conflict_status must be 409 or 422, not 400",
		`{"methods": ["post"]}`:       `idempotency: methods holds "post"`,
		`{"lock_timeout": "1s"}`:      "",
		`{"ttl": "1h", "wait": "0s"}`: "",

		`{"reconcile": {}}`:                                     "idempotency: reconcile.kind is required (known kinds: batches)",
		`{"reconcile": {"kind": "files"}}`:                      `idempotency: reconcile.kind "files" is unknown (known kinds: batches)`,
		`{"reconcile": {"kind": "batches", "max_doubts": -1}}`:  "idempotency: reconcile.max_doubts must be 0 (the default) to 255, not -1",
		`{"reconcile": {"kind": "batches", "max_doubts": 256}}`: "idempotency: reconcile.max_doubts must be 0 (the default) to 255, not 256",
		`{"reconcile": {"kind": "batches", "tag_key": "t"}}`:    `idempotency: reconcile.tag_key "t" is set without reconcile.tag`,
		`{"key_field": "off", "forward_key_field": true}`:       "idempotency: forward_key_field needs a key_field, not off",
		`{"reconcile": {"kind": "batches"}}`:                    "",
		`{"reconcile": {"kind": "batches", "max_doubts": 1}}`:   "",
		`{"forward_key_field": true}`:                           "",
		`{"key_field": "ik", "forward_key_field": true}`:        "",
		`{"reconcile": {"kind": "batches", "tag": true, "tag_key": "t", "window": "2s", "page_size": 100, "pages": 1}}`: "",
	}
	// The options Batches.Check refuses.
	for in, want := range map[string]string{
		`"page_size": 101`: "idempotency: reconcile.page_size: page size 101 is out of range",
		`"page_size": -1`:  "idempotency: reconcile.page_size: ",
		`"pages": -1`:      "idempotency: reconcile.pages: ",
		`"window": "-1s"`:  "idempotency: reconcile.window: ",
		`"window": -1`:     "idempotency: reconcile.window: ",
		`"tag": true, "tag_key": "` + strings.Repeat("k", 65) + `"`: "idempotency: reconcile.tag_key: ",
		`"tag": true, "tag_key": "` + strings.Repeat("k", 64) + `"`: "",
	} {
		cases[`{"reconcile": {"kind": "batches", `+in+`}}`] = want
	}
	for in, want := range cases {
		var h HandlerModule
		if err := json.Unmarshal([]byte(in), &h); err != nil {
			t.Fatalf("%s: %v", in, err)
		}
		h.config = h.engineConfig(idempotency.NewMemoryStore(), nil)
		err := h.Validate()
		switch {
		case want == "" && err != nil:
			t.Errorf("%s: Validate = %v, want nil", in, err)
		case want == "" && h.engine == nil:
			t.Errorf("%s: Validate built no engine", in)
		case want != "" && (err == nil || !strings.HasPrefix(err.Error(), want)):
			t.Errorf("%s: Validate = %v, want an error starting %q", in, err, want)
		}
	}
}

// spool_dir takes placeholders; unset, it is idempotency-spool in Caddy's
// data directory, the user's own and on disk (not a shared /tmp).
func TestSpoolDir(t *testing.T) {
	t.Setenv("IDEMPOTENCY_TEST_SPOOL", "/srv/spool")
	if got := (&HandlerModule{SpoolDir: "{env.IDEMPOTENCY_TEST_SPOOL}/uploads"}).spoolDir(); got != "/srv/spool/uploads" {
		t.Errorf("spool_dir {env.IDEMPOTENCY_TEST_SPOOL}/uploads = %q, want /srv/spool/uploads", got)
	}
	data := t.TempDir()
	t.Setenv("XDG_DATA_HOME", data)
	if got, want := (&HandlerModule{}).spoolDir(), filepath.Join(data, "caddy", "idempotency-spool"); got != want {
		t.Errorf("default spool_dir = %q, want %q", got, want)
	}
}
