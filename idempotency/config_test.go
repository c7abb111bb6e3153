package idempotency

import (
	"errors"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestNewRejectsBadConfig(t *testing.T) {
	m := NewMemoryStore()
	t.Cleanup(func() { _ = m.Close() })
	for _, tc := range []struct {
		cfg   Config
		field string // the Go field the error names
	}{
		{Config{}, "Config.Store"},
		{Config{Store: m, TTL: time.Millisecond}, "Config.TTL"},
		{Config{Store: m, Lease: 10 * time.Millisecond}, "Config.Lease"},
		{Config{Store: m, MaxBody: -1}, "Config.MaxBody"},
		{Config{Store: m, MaxResponse: -1}, "Config.MaxResponse"},
		{Config{Store: m, ConflictStatus: http.StatusBadRequest}, "Config.ConflictStatus must be 409 or 422, not 400"},
		{Config{Store: m, Methods: []string{"post"}}, "Config.Methods"},
	} {
		_, err := New(tc.cfg)
		if err == nil {
			t.Errorf("%s: New accepted %+v", tc.field, tc.cfg)
		} else if !strings.Contains(err.Error(), tc.field) {
			t.Errorf("New(%+v) = %q, want an error naming %s", tc.cfg, err, tc.field)
		} else if ce, ok := errors.AsType[*ConfigError](err); !ok || !strings.HasPrefix(tc.field, "Config."+ce.Field) {
			t.Errorf("New(%+v) = %#v, want a *ConfigError for %s", tc.cfg, err, tc.field)
		}
	}
	h, err := New(Config{Store: m})
	if err != nil {
		t.Fatal(err)
	}
	c := h.Config()
	if c.KeyHeader != DefaultKeyHeader || c.KeyField != DefaultKeyField || c.TTL != DefaultTTL ||
		c.Lease != DefaultLease || c.MaxBody != DefaultMaxBody || c.MaxResponse != DefaultMaxResponse ||
		c.ConflictStatus != http.StatusConflict || !slices.Equal(c.Methods, []string{http.MethodPost}) {
		t.Fatalf("defaults not filled: %+v", c)
	}
}
