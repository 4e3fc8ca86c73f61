package pluginrelease

import (
	"context"
	"testing"
	"time"
)

func TestSlotsServeHelmActionsBeforeDriftChecks(t *testing.T) {
	s := newSlots(1)
	ctx := context.Background()
	if !s.acquire(ctx, true) {
		t.Fatal("the free slot was not taken")
	}
	order := make(chan string, 3)
	wait := func(name string, high bool) {
		go func() {
			if s.acquire(ctx, high) {
				order <- name
				s.release()
			}
		}()
	}
	wait("check-1", false)
	waitQueued(t, s, 0, 1)
	wait("install-1", true)
	waitQueued(t, s, 1, 1)
	wait("install-2", true)
	waitQueued(t, s, 2, 1)
	s.release()
	want := []string{"install-1", "install-2", "check-1"}
	for _, w := range want {
		select {
		case got := <-order:
			if got != w {
				t.Fatalf("served %s, want %s (order %v)", got, w, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s was never served", w)
		}
	}
	s.mu.Lock()
	free := s.free
	s.mu.Unlock()
	if free != 1 {
		t.Fatalf("free slots %d after all released, want 1", free)
	}
}

func TestSlotsCancelledWaiterHoldsNothing(t *testing.T) {
	s := newSlots(1)
	if !s.acquire(context.Background(), true) {
		t.Fatal("the free slot was not taken")
	}
	ctx, cancel := context.WithCancel(context.Background())
	got := make(chan bool)
	go func() { got <- s.acquire(ctx, false) }()
	waitQueued(t, s, 0, 1)
	cancel()
	if <-got {
		t.Fatal("a cancelled waiter reported a slot")
	}
	s.release()
	s.mu.Lock()
	free, low := s.free, len(s.low)
	s.mu.Unlock()
	if free != 1 || low != 0 {
		t.Fatalf("free %d, low waiters %d; want 1 and 0", free, low)
	}
	// A drift check does not overtake a waiting Helm action for a free slot.
	if !s.acquire(context.Background(), false) {
		t.Fatal("the free slot was not taken")
	}
	s.release()
}

func waitQueued(t *testing.T, s *slots, high, low int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		s.mu.Lock()
		h, l := len(s.high), len(s.low)
		s.mu.Unlock()
		if h == high && l == low {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiters high %d low %d, want %d and %d", h, l, high, low)
		}
		time.Sleep(time.Millisecond)
	}
}
