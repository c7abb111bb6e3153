package main

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"
)

// scenarios in the order they run and print.
var scenarios = []string{"plain", "pass", "write", "replay", "static"}

// stores are the -store values, in the order they print.
var storeNames = []string{"memory", "badger", "redis"}

// storeScenarios go through the handler, so they run once per store.
var storeScenarios = []string{"pass", "write", "replay"}

// The servers measured.
const (
	serverCaddy = "Caddy"
	serverPeer  = "peer"
)

// target is one measured thing: a scenario on a server, with a store for
// those that go through the idempotency handler (pass, write, replay).
type target struct {
	server, scenario, store string
}

func (t target) String() string {
	s := t.server + " " + t.scenario
	if t.store != "" {
		s += " (" + t.store + ")"
	}
	return s
}

// plan lists the targets of a run in the order each round runs them: the
// peer right after Caddy in each scenario and store, so that both meet the
// same moment of the machine.
func plan(only, storeList []string, peer bool) []target {
	var ts []target
	add := func(scenario, store string) {
		if !slices.Contains(only, scenario) {
			return
		}
		ts = append(ts, target{serverCaddy, scenario, store})
		if peer && scenario != "static" && (store == "" || peerHas(store)) {
			ts = append(ts, target{serverPeer, scenario, store})
		}
	}
	add("plain", "")
	for _, st := range storeList {
		for _, s := range storeScenarios {
			add(s, st)
		}
	}
	add("static", "")
	return ts
}

// parseStores reads -store: one store or a comma list, each at most once.
func parseStores(s string) ([]string, error) {
	var list []string
	for _, st := range strings.Split(s, ",") {
		st = strings.TrimSpace(st)
		switch {
		case st == "":
			continue
		case !slices.Contains(storeNames, st):
			return nil, fmt.Errorf("-store: unknown store %q (have %s)", st, strings.Join(storeNames, ", "))
		case slices.Contains(list, st):
			return nil, fmt.Errorf("-store: %s given twice", st)
		}
		list = append(list, st)
	}
	if len(list) == 0 {
		return nil, fmt.Errorf("-store: no store")
	}
	return list, nil
}

// caddyfile is one config with a site per Caddy target, each on its own port.
// staticSize is the batch response's length, so `static` answers as much.
// redisURL is the Redis server of the redis store.
func caddyfile(targets []target, ports map[target]int, upstream, dataDir string, staticSize, adminPort int, redisURL string) string {
	var b strings.Builder
	admin := "admin off"
	if adminPort != 0 {
		admin = fmt.Sprintf("admin localhost:%d", adminPort)
	}
	fmt.Fprintf(&b, "{\n\t%s\n\tpersist_config off\n\tauto_https off\n\tlog {\n\t\tlevel ERROR\n\t}\n}\n", admin)
	for _, t := range targets {
		port, ok := ports[t]
		if !ok || t.server != serverCaddy {
			continue
		}
		fmt.Fprintf(&b, "\nhttp://127.0.0.1:%d {\n\trespond /healthz 200\n", port)
		switch t.scenario {
		case "plain":
			fmt.Fprintf(&b, "\treverse_proxy %s\n", upstream)
		case "pass", "write", "replay":
			var store string
			switch t.store {
			case "memory":
				store = "memory"
			case "badger":
				// Each its own Badger directory: one store per site.
				store = "badger " + filepath.Join(dataDir, "badger-"+t.scenario)
			case "redis":
				store = "redis " + redisURL
			}
			fmt.Fprintf(&b, "\tidempotency /v1/batches {\n\t\tstore %s\n\t}\n\treverse_proxy %s\n", store, upstream)
		case "static":
			// Not the batch JSON itself: `{...}` in a respond body is a placeholder.
			fmt.Fprintf(&b, "\theader Content-Type application/json\n\trespond %q 200\n", strings.Repeat("x", staticSize))
		}
		b.WriteString("}\n")
	}
	return b.String()
}
