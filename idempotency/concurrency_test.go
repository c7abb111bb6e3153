package idempotency

import (
	"fmt"
	"net/http"
	"testing"
	"time"
)

func TestWaitList(t *testing.T) {
	var l waitList
	k1, k2 := RecordKey{1}, RecordKey{2}
	a, unsubA := l.subscribe(k1)
	b, unsubB := l.subscribe(k1)
	c, unsubC := l.subscribe(k2)
	l.wake(k1)
	for name, ch := range map[string]<-chan struct{}{"a": a, "b": b} {
		select {
		case <-ch:
		default:
			t.Fatalf("waiter %s of the woken key is still blocked", name)
		}
	}
	select {
	case <-c:
		t.Fatal("waking one key woke another")
	default:
	}
	// A subscription after the wake waits for the next one.
	d, unsubD := l.subscribe(k1)
	select {
	case <-d:
		t.Fatal("a new waiter saw an old wake")
	default:
	}
	unsubA()
	unsubB()
	unsubC()
	unsubD()
	if len(l.m) != 0 {
		t.Fatalf("%d entries left after every waiter unsubscribed", len(l.m))
	}
	l.wake(k2) // nobody waiting: a no-op
}

// Duplicates that waited for an in-flight owner leave no wait entries
// behind, whether they were woken or their pause ran out. The herd's
// answers themselves (one upstream call, every other client a replay, or in
// use without Wait) are storetest.RunHandler's, run on every store: on this
// one by TestMemoryStoreHandler.
func TestWaitingDuplicatesLeaveNoWaitEntries(t *testing.T) {
	const concurrent = 50
	store := spyInFlight(openMemoryStore(t), concurrent-1)
	g := newGate()
	s := newStack(t, Config{Store: store, Wait: testTimeout}, g.respond)
	t.Cleanup(g.open)
	results := make(chan result, concurrent)
	for range concurrent {
		go func() { results <- s.send(t.Context(), createBody, withKey("k-herd")) }()
	}
	waitClosed(t, g.entered, "one request to reach upstream")
	select {
	case <-store.reached:
	case r := <-results: // the gate holds only the first call upstream
		t.Fatalf("a duplicate was answered %d while the owner was upstream: a second owner?", r.status)
	case <-time.After(testTimeout):
		t.Fatalf("timed out waiting for %d duplicates to find the key in flight", concurrent-1)
	}
	g.open()
	for i := range concurrent {
		r := recv(t, results, fmt.Sprintf("answer %d", i+1))
		if r.err != nil {
			t.Fatal(r.err)
		}
		wantStatus(t, r, http.StatusOK)
	}
	s.up.wantCalls(t, 1)
	s.h.waiters.mu.Lock()
	defer s.h.waiters.mu.Unlock()
	if n := len(s.h.waiters.m); n != 0 {
		t.Fatalf("%d wait entries left behind", n)
	}
}
