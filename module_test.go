package caddyidempotency

import (
	"encoding/json"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
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
		var h Handler
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
		"module.go":       {"Handler"},
		"stores.go":       {"BadgerStore", "MemoryStore"},
		"stores_redis.go": {"RedisStore"},
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
