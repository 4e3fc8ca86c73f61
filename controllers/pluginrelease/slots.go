package pluginrelease

import (
	"context"
	"sync"
)

// slots bounds the actions running at once (--max-concurrent-helm-actions). Helm actions
// (install, upgrade, uninstall) go before drift checks: a rollout's next clusters never wait behind
// checks of the clusters it has just finished. Within a class, waiters are served in order.
type slots struct {
	mu   sync.Mutex
	free int
	high []chan struct{}
	low  []chan struct{}
}

func newSlots(n int) *slots { return &slots{free: n} }

// acquire waits for a slot; it reports false when ctx ends first (then no slot is held).
func (s *slots) acquire(ctx context.Context, high bool) bool {
	s.mu.Lock()
	if s.free > 0 && len(s.high) == 0 && (high || len(s.low) == 0) {
		s.free--
		s.mu.Unlock()
		return true
	}
	ch := make(chan struct{})
	if high {
		s.high = append(s.high, ch)
	} else {
		s.low = append(s.low, ch)
	}
	s.mu.Unlock()
	select {
	case <-ch:
		return true
	case <-ctx.Done():
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.remove(ch) {
			return false
		}
		// Handed a slot just as ctx ended: give it on.
		s.releaseLocked()
		return false
	}
}

// release returns a slot, handing it to the first waiting Helm action, else the first drift check.
func (s *slots) release() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.releaseLocked()
}

func (s *slots) releaseLocked() {
	for _, q := range []*[]chan struct{}{&s.high, &s.low} {
		if len(*q) > 0 {
			ch := (*q)[0]
			*q = (*q)[1:]
			close(ch)
			return
		}
	}
	s.free++
}

// remove drops a waiter that gave up; false when it was already handed a slot.
func (s *slots) remove(ch chan struct{}) bool {
	for _, q := range []*[]chan struct{}{&s.high, &s.low} {
		for i, c := range *q {
			if c == ch {
				*q = append((*q)[:i:i], (*q)[i+1:]...)
				return true
			}
		}
	}
	return false
}
