// Package backoff computes exponential backoff delays with jitter.
//
// It owns the arithmetic of a retry schedule (Policy, and Backoff walking
// it) and waiting out one delay. It does not decide what is worth retrying
// or when: its users' loops do (gRPC's reconnects, the health loop's probe
// rounds, the cache's relists, the client's retries and watch resumes), each
// selecting over its own events. Randomness comes through Rand so that tests
// see fixed delays.
package backoff

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"time"
)

// ErrInvalidPolicy is wrapped by Policy.Validate's errors.
var ErrInvalidPolicy = errors.New("backoff: invalid policy")

// Policy is an exponential backoff schedule: the delay before retry n (from 0)
// is Initial·Multiplier^n, capped at Max, then spread by ±Jitter of itself.
type Policy struct {
	Initial    time.Duration
	Max        time.Duration
	Multiplier float64
	Jitter     float64 // fraction of the delay, 0..1
}

// DefaultPolicy is the reconnection policy of CONFIG.md's `backoff:` section.
func DefaultPolicy() Policy {
	return Policy{Initial: 100 * time.Millisecond, Max: 30 * time.Second, Multiplier: 2, Jitter: 0.2}
}

// WithMax is p with a different longest delay: the same schedule, capped
// sooner, for retries that must not wait as long as a reconnection may.
func (p Policy) WithMax(d time.Duration) Policy {
	p.Max = d
	return p
}

// Validate reports a policy that cannot produce a sensible schedule.
func (p Policy) Validate() error {
	switch {
	case p.Initial <= 0:
		return fmt.Errorf("%w: initial %v must be positive", ErrInvalidPolicy, p.Initial)
	case p.Max < p.Initial:
		return fmt.Errorf("%w: max %v is less than initial %v", ErrInvalidPolicy, p.Max, p.Initial)
	case p.Multiplier < 1 || math.IsNaN(p.Multiplier) || math.IsInf(p.Multiplier, 0):
		return fmt.Errorf("%w: multiplier %v must be at least 1", ErrInvalidPolicy, p.Multiplier)
	case p.Jitter < 0 || p.Jitter > 1 || math.IsNaN(p.Jitter):
		return fmt.Errorf("%w: jitter %v must be within 0..1", ErrInvalidPolicy, p.Jitter)
	}
	return nil
}

// Delay returns the delay before retry attempt (0-based). r is a uniform random
// number in [0, 1); 0.5 gives the un-jittered delay. The result never exceeds
// Max, so Max bounds how long a caller can wait for a recovered peer.
func (p Policy) Delay(attempt int, r float64) time.Duration {
	d := float64(p.Initial) * math.Pow(p.Multiplier, float64(max(attempt, 0)))
	d = math.Min(d, float64(p.Max))
	d *= 1 + p.Jitter*(2*r-1)
	d = math.Min(math.Max(d, 0), float64(p.Max))
	return time.Duration(d)
}

// Backoff walks a Policy's schedule. It is not safe for concurrent use: one
// goroutine owns a Backoff.
type Backoff struct {
	Policy Policy
	Rand   func() float64 // nil: math/rand/v2; tests make the jitter fixed

	attempt int
}

// Next returns the next delay and advances the schedule.
func (b *Backoff) Next() time.Duration {
	r := rand.Float64
	if b.Rand != nil {
		r = b.Rand
	}
	d := b.Policy.Delay(b.attempt, r())
	if b.attempt < 64 { // beyond this the cap holds anyway; avoid overflowing Pow's exponent
		b.attempt++
	}
	return d
}

// Attempt returns how many delays Next has handed out since the last Reset.
func (b *Backoff) Attempt() int { return b.attempt }

// Reset starts the schedule again from Initial, after a success.
func (b *Backoff) Reset() { b.attempt = 0 }

// Wait blocks for d or until ctx ends, whichever is first.
func (b *Backoff) Wait(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
