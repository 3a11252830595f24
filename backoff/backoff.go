// Package backoff computes exponential backoff delays with jitter and retries
// operations with them.
//
// It owns the arithmetic of a retry schedule and the waiting between tries. It
// does not decide what is worth retrying: an operation marks an error that must
// not be retried with Permanent. Time and randomness come through Clock and
// Rand so that tests never sleep.
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

// Clock is the part of time a backoff needs. RealClock is the default.
type Clock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
}

// RealClock is the wall clock.
type RealClock struct{}

// Now returns time.Now().
func (RealClock) Now() time.Time { return time.Now() }

// After returns time.After(d).
func (RealClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// Backoff walks a Policy's schedule. It is not safe for concurrent use: one
// goroutine owns a Backoff.
type Backoff struct {
	Policy Policy
	Clock  Clock          // nil: RealClock
	Rand   func() float64 // nil: math/rand/v2
	// MaxAttempts stops Retry after this many calls of the operation; 0 means
	// no limit (Retry then ends only on success, a permanent error or ctx).
	MaxAttempts int

	attempt int
}

// New returns a Backoff over p with the real clock and randomness.
func New(p Policy) *Backoff { return &Backoff{Policy: p} }

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

// Wait blocks for d on b's clock or until ctx ends, whichever is first.
func (b *Backoff) Wait(ctx context.Context, d time.Duration) error {
	clk := b.Clock
	if clk == nil {
		clk = RealClock{}
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-clk.After(d):
		return nil
	}
}

// Retry calls op until it returns nil, returns an error marked Permanent, ctx
// ends, or MaxAttempts calls have failed. It waits b.Next() between calls and
// returns the last error of op (unwrapped from Permanent), or ctx's error
// joined with it.
func (b *Backoff) Retry(ctx context.Context, op func(context.Context) error) error {
	b.Reset()
	for calls := 1; ; calls++ {
		err := op(ctx)
		if err == nil {
			return nil
		}
		var perm *permanentError
		if errors.As(err, &perm) {
			return perm.err
		}
		if b.MaxAttempts > 0 && calls >= b.MaxAttempts {
			return err
		}
		if werr := b.Wait(ctx, b.Next()); werr != nil {
			return errors.Join(werr, err)
		}
	}
}

type permanentError struct{ err error }

func (p *permanentError) Error() string { return p.err.Error() }
func (p *permanentError) Unwrap() error { return p.err }

// Permanent marks err as not worth retrying: Retry returns it at once.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err: err}
}
