package backoff

import (
	"context"
	"errors"
	"testing"
	"time"
)

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

// Wait ends when its delay passes or when the context ends, whichever is
// first.
func TestWait(t *testing.T) {
	b := &Backoff{Policy: DefaultPolicy()}
	if err := b.Wait(context.Background(), time.Millisecond); err != nil {
		t.Fatalf("Wait(1ms) = %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := b.Wait(ctx, time.Hour); !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait(1h) with a cancelled context = %v, want Canceled", err)
	}
}

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
