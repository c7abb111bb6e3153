// Package doccheck holds the docs test: the commands that README.md and
// docs/*.md show are run as written, against the demo (cmd/demo), and what
// their comments say they show is checked; the links between the documents
// are checked too. It has no code of its own, only tests:
//
//	go test -count=1 -v ./internal/doccheck
//
// They need bash and curl, and fail (never skip) without them.
package doccheck
