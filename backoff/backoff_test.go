package backoff

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// stepClock fires every After at once and records what was asked, so tests see
// the schedule without sleeping.
type stepClock struct {
	mu    sync.Mutex
	now   time.Time
	waits []time.Duration
}

func (c *stepClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *stepClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.waits = append(c.waits, d)
	c.now = c.now.Add(d)
	ch := make(chan time.Time, 1)
	ch <- c.now
	return ch
}

func TestDelay(t *testing.T) {
	p := Policy{Initial: 100 * time.Millisecond, Max: time.Second, Multiplier: 2, Jitter: 0.2}
	tests := []struct {
		attempt int
		r       float64
		want    time.Duration
	}{
		{0, 0.5, 100 * time.Millisecond},
		{1, 0.5, 200 * time.Millisecond},
		{3, 0.5, 800 * time.Millisecond},
		{4, 0.5, time.Second}, // capped
		{100, 0.5, time.Second},
		{0, 0, 80 * time.Millisecond},  // -20%
		{0, 1, 120 * time.Millisecond}, // +20%
		{10, 0, 800 * time.Millisecond},
		{10, 0.999, time.Second}, // jitter never exceeds Max
		{-1, 0.5, 100 * time.Millisecond},
	}
	for _, tt := range tests {
		if got := p.Delay(tt.attempt, tt.r); got != tt.want {
			t.Errorf("Delay(%d, %v) = %v, want %v", tt.attempt, tt.r, got, tt.want)
		}
	}
}

func TestValidate(t *testing.T) {
	if err := DefaultPolicy().Validate(); err != nil {
		t.Fatalf("default policy invalid: %v", err)
	}
	bad := []Policy{
		{Initial: 0, Max: time.Second, Multiplier: 2},
		{Initial: time.Second, Max: time.Millisecond, Multiplier: 2},
		{Initial: time.Millisecond, Max: time.Second, Multiplier: 0.5},
		{Initial: time.Millisecond, Max: time.Second, Multiplier: 2, Jitter: 1.5},
		{Initial: time.Millisecond, Max: time.Second, Multiplier: 2, Jitter: -0.1},
	}
	for _, p := range bad {
		if err := p.Validate(); !errors.Is(err, ErrInvalidPolicy) {
			t.Errorf("Validate(%+v) = %v, want ErrInvalidPolicy", p, err)
		}
	}
}

func TestRetrySchedule(t *testing.T) {
	clk := &stepClock{}
	b := &Backoff{Policy: Policy{Initial: 10 * time.Millisecond, Max: 50 * time.Millisecond, Multiplier: 2},
		Clock: clk, Rand: func() float64 { return 0.5 }}
	calls := 0
	err := b.Retry(context.Background(), func(context.Context) error {
		calls++
		if calls < 5 {
			return errors.New("not yet")
		}
		return nil
	})
	if err != nil || calls != 5 {
		t.Fatalf("Retry = %v after %d calls, want nil after 5", err, calls)
	}
	want := []time.Duration{10, 20, 40, 50}
	if len(clk.waits) != len(want) {
		t.Fatalf("waits %v, want %v ms", clk.waits, want)
	}
	for i, w := range want {
		if clk.waits[i] != w*time.Millisecond {
			t.Fatalf("wait %d = %v, want %v", i, clk.waits[i], w*time.Millisecond)
		}
	}
}

func TestRetryStops(t *testing.T) {
	sentinel := errors.New("broken for good")
	t.Run("permanent", func(t *testing.T) {
		b := &Backoff{Policy: DefaultPolicy(), Clock: &stepClock{}}
		calls := 0
		err := b.Retry(context.Background(), func(context.Context) error { calls++; return Permanent(sentinel) })
		if err != sentinel || calls != 1 {
			t.Fatalf("Retry = %v after %d calls, want the bare sentinel after 1", err, calls)
		}
	})
	t.Run("max attempts", func(t *testing.T) {
		b := &Backoff{Policy: DefaultPolicy(), Clock: &stepClock{}, MaxAttempts: 3}
		calls := 0
		err := b.Retry(context.Background(), func(context.Context) error { calls++; return sentinel })
		if !errors.Is(err, sentinel) || calls != 3 {
			t.Fatalf("Retry = %v after %d calls, want sentinel after 3", err, calls)
		}
	})
	t.Run("context", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		// A clock that never fires: only the context can end the wait.
		b := &Backoff{Policy: DefaultPolicy(), Clock: neverClock{}}
		calls := 0
		err := b.Retry(ctx, func(context.Context) error { calls++; cancel(); return sentinel })
		if !errors.Is(err, context.Canceled) || !errors.Is(err, sentinel) || calls != 1 {
			t.Fatalf("Retry = %v after %d calls, want Canceled joined with sentinel after 1", err, calls)
		}
	})
}

type neverClock struct{}

func (neverClock) Now() time.Time                       { return time.Time{} }
func (neverClock) After(time.Duration) <-chan time.Time { return nil }

func TestNextResets(t *testing.T) {
	b := &Backoff{Policy: Policy{Initial: time.Millisecond, Max: time.Hour, Multiplier: 3}, Rand: func() float64 { return 0.5 }}
	for range 3 {
		b.Next()
	}
	if b.Attempt() != 3 {
		t.Fatalf("Attempt = %d, want 3", b.Attempt())
	}
	b.Reset()
	if d := b.Next(); d != time.Millisecond {
		t.Fatalf("after Reset Next = %v, want 1ms", d)
	}
	for range 200 { // never overflows into a negative or zero delay
		if d := b.Next(); d <= 0 || d > time.Hour {
			t.Fatalf("Next = %v out of (0, 1h]", d)
		}
	}
}
