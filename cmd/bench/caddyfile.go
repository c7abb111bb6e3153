package main

import (
	"fmt"
	"path/filepath"
	"strings"
)

// scenarios in the order they run and print.
var scenarios = []string{"plain", "pass", "write", "replay", "static"}

// caddyfile is one config with a site per scenario, each on its own port.
// staticSize is the batch response's length, so `static` answers as much.
func caddyfile(ports map[string]int, upstream, dataDir string, staticSize, adminPort int) string {
	var b strings.Builder
	admin := "admin off"
	if adminPort != 0 {
		admin = fmt.Sprintf("admin localhost:%d", adminPort)
	}
	fmt.Fprintf(&b, "{\n\t%s\n\tpersist_config off\n\tauto_https off\n\tlog {\n\t\tlevel ERROR\n\t}\n}\n", admin)
	for _, name := range scenarios {
		port, ok := ports[name]
		if !ok {
			continue
		}
		fmt.Fprintf(&b, "\nhttp://127.0.0.1:%d {\n\trespond /healthz 200\n", port)
		switch name {
		case "plain":
			fmt.Fprintf(&b, "\treverse_proxy %s\n", upstream)
		case "pass", "write", "replay":
			// Each its own Badger directory: one store per site.
			fmt.Fprintf(&b, "\tidempotency /v1/batches {\n\t\tstore badger %s\n\t}\n\treverse_proxy %s\n",
				filepath.Join(dataDir, "badger-"+name), upstream)
		case "static":
			// Not the batch JSON itself: `{...}` in a respond body is a placeholder.
			fmt.Fprintf(&b, "\theader Content-Type application/json\n\trespond %q 200\n", strings.Repeat("x", staticSize))
		}
		b.WriteString("}\n")
	}
	return b.String()
}
