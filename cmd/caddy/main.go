// Command caddy is Caddy with its standard modules and the idempotency handler.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/caddy-idempotency/caddy-idempotency"
)

func main() {
	caddycmd.Main()
}
