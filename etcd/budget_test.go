package etcd

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// The queue is fair between peers: a peer that arrives behind another's
// backlog is served every other grant, not after the backlog.
func TestBudgetFairBetweenPeers(t *testing.T) {
	var b fairBudget
	b.set(50) // burst 5
	defer b.close()
	var (
		mu    sync.Mutex
		order []string
		wg    sync.WaitGroup
	)
	take := func(peer string) {
		defer wg.Done()
		ctx, cancel := context.WithTimeout(WithPeerKey(context.Background(), peer), time.Minute)
		defer cancel()
		if err := b.take(ctx); err != nil {
			t.Error(err)
			return
		}
		mu.Lock()
		order = append(order, peer)
		mu.Unlock()
	}
	for range 40 {
		wg.Add(1)
		go take("A")
	}
	// B arrives once A's backlog waits.
	waitFor(t, func() bool { b.mu.Lock(); defer b.mu.Unlock(); return b.waiting >= 30 })
	for range 4 {
		wg.Add(1)
		go take("B")
	}
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	last := 0
	for i, p := range order {
		if p == "B" {
			last = i
		}
	}
	// When B arrived, at most 10 of A's had gone; round-robin then serves
	// B's four within the next eight grants or so.
	if last > 10+10 {
		t.Fatalf("B's last request was granted %dth of %d: %v", last+1, len(order), order)
	}
}

// A request whose turn would come after its deadline is refused at once,
// never sent late; one whose caller leaves is taken out of the queue.
func TestBudgetDeadlineAndCancel(t *testing.T) {
	var b fairBudget
	b.set(2) // burst 1
	defer b.close()
	ctx := WithPeerKey(context.Background(), "A")
	if err := b.take(ctx); err != nil { // the burst
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	var be *BudgetError
	if err := b.take(short); !errors.As(err, &be) || be.RetryAfter < 400*time.Millisecond {
		t.Fatalf("take with a deadline before its turn = %v", err)
	}
	gone, leave := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- b.take(gone) }()
	waitFor(t, func() bool { b.mu.Lock(); defer b.mu.Unlock(); return b.waiting == 1 })
	leave()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("a caller that left got %v", err)
	}
	b.mu.Lock()
	waiting := b.waiting
	b.mu.Unlock()
	if waiting != 0 {
		t.Fatalf("%d waiting after the caller left", waiting)
	}
}

// Lifting the budget lets every waiting request go at once; with no budget
// nothing waits.
func TestBudgetLifted(t *testing.T) {
	var b fairBudget
	b.set(1)
	defer b.close()
	ctx := context.Background()
	b.take(ctx)
	errs := make(chan error, 5)
	for range 5 {
		go func() { errs <- b.take(ctx) }()
	}
	waitFor(t, func() bool { b.mu.Lock(); defer b.mu.Unlock(); return b.waiting == 5 })
	b.set(0)
	for range 5 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if n := testing.AllocsPerRun(100, func() { b.take(ctx) }); n != 0 {
		t.Fatalf("take without a budget allocates %v", n)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("timed out")
		}
		time.Sleep(time.Millisecond)
	}
}
