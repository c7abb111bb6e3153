package idempotency

import "sync"

// waitList lets duplicates waiting on an in-flight key in this process wake
// as soon as its owner finishes, instead of at their next poll.
type waitList struct {
	mu sync.Mutex
	m  map[RecordKey]*waitEntry
}

type waitEntry struct {
	done    chan struct{}
	waiters int
}

// subscribe returns a channel closed by the next wake of k; unsubscribe must
// be called, so entries of keys nobody wakes do not pile up.
func (l *waitList) subscribe(k RecordKey) (done <-chan struct{}, unsubscribe func()) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.m == nil {
		l.m = make(map[RecordKey]*waitEntry)
	}
	e := l.m[k]
	if e == nil {
		e = &waitEntry{done: make(chan struct{})}
		l.m[k] = e
	}
	e.waiters++
	return e.done, func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		e.waiters--
		if e.waiters == 0 && l.m[k] == e {
			delete(l.m, k)
		}
	}
}

// wake releases every current waiter of k.
func (l *waitList) wake(k RecordKey) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if e := l.m[k]; e != nil {
		close(e.done)
		delete(l.m, k)
	}
}
