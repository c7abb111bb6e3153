package batchesbackend

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"time"
)

// entry is one stored batch.
type entry struct {
	tenant string
	seq    uint64 // insertion order over all tenants
	b      *Batch
}

// tenant is what one Authorization header value owns.
type tenant struct {
	batches []*entry          // oldest first: by created_at, then insertion order
	keys    map[string]*entry // idempotency_key → the batch it created
	creates int               // batches POST /v1/batches created
}

// older orders entries by created_at, then by insertion order.
func older(a, b *entry) int {
	if c := cmp.Compare(a.b.CreatedAt, b.b.CreatedAt); c != 0 {
		return c
	}
	return cmp.Compare(a.seq, b.seq)
}

// tenant returns name's state, making it on first use. Callers hold s.mu.
func (s *Server) tenant(name string) *tenant {
	if s.tenants == nil {
		s.tenants = map[string]*tenant{}
	}
	t := s.tenants[name]
	if t == nil {
		t = &tenant{keys: map[string]*entry{}}
		s.tenants[name] = t
	}
	return t
}

// insert stores b for tenant in created order. Callers hold s.mu.
func (s *Server) insert(tenant string, b *Batch) *entry {
	if s.batches == nil {
		s.batches = map[string]*entry{}
	}
	s.seq++
	e := &entry{tenant: tenant, seq: s.seq, b: b}
	t := s.tenant(tenant)
	i, _ := slices.BinarySearchFunc(t.batches, e, older)
	t.batches = slices.Insert(t.batches, i, e)
	s.batches[b.ID] = e
	return e
}

// lookup finds tenant's batch id; another tenant's batch is not found.
// Callers hold s.mu.
func (s *Server) lookup(tenant, id string) *entry {
	if e := s.batches[id]; e != nil && e.tenant == tenant {
		return e
	}
	return nil
}

// Seed stores b for tenant as if it had been created earlier (or at any
// time): it is for tests that need batches the current attempt did not make,
// such as an identical batch created before it. Zero fields get defaults: ID
// a fresh batch id, Object "batch", Status "validating", CompletionWindow
// "24h", CreatedAt now, ExpiresAt CreatedAt+24h; Endpoint, InputFileID and the
// rest are stored as given. Lists order batches by CreatedAt, then by the
// order they were stored, so a seeded batch takes its place by CreatedAt.
// Seed does not count in Creates or CreatesFor. It panics if b.ID is taken.
// It returns the stored batch.
func (s *Server) Seed(tenant string, b Batch) Batch {
	c := b.clone()
	if c.ID == "" {
		c.ID = "batch_" + randHex(12)
	}
	if c.Object == "" {
		c.Object = "batch"
	}
	if c.Status == "" {
		c.Status = "validating"
	}
	if c.CompletionWindow == "" {
		c.CompletionWindow = "24h"
	}
	if c.CreatedAt == 0 {
		c.CreatedAt = time.Now().Unix()
	}
	if c.ExpiresAt == nil {
		c.ExpiresAt = ptr(c.CreatedAt + 24*60*60)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, taken := s.batches[c.ID]; taken {
		panic(fmt.Sprintf("batchesbackend: Seed: batch id %q already exists", c.ID))
	}
	s.insert(tenant, &c)
	return c.clone()
}

// Batches returns copies of tenant's batches, oldest first (by CreatedAt,
// then the order they were stored). It reports them as stored: a batch
// cancelled but not read since is still "cancelling".
func (s *Server) Batches(tenant string) []Batch {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.tenants[tenant]
	if t == nil {
		return []Batch{}
	}
	out := make([]Batch, len(t.batches))
	for i, e := range t.batches {
		out[i] = e.b.clone()
	}
	return out
}

// clone copies b deeply enough that the copy shares nothing mutable with b.
func (b *Batch) clone() Batch {
	c := *b
	c.Metadata = maps.Clone(b.Metadata)
	for _, p := range []**string{&c.OutputFileID, &c.ErrorFileID} {
		if *p != nil {
			*p = ptr(**p)
		}
	}
	for _, p := range []**int64{&c.InProgressAt, &c.ExpiresAt, &c.FinalizingAt, &c.CompletedAt, &c.FailedAt, &c.ExpiredAt, &c.CancellingAt, &c.CancelledAt} {
		if *p != nil {
			*p = ptr(**p)
		}
	}
	return c
}
