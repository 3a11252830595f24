package etcd

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// The host budget (etcd.max_requests_per_second, API.md "Budgets"): a token
// bucket over the unary requests this client sends to etcd — a batch of
// reads or writes sent as one transaction is one request — with a queue
// that is fair between peers. A peer is whatever key the caller put on the
// request's context (WithPeerKey; the agent uses uid and unit); requests
// without one (batches, the agent's own work) share the key "". The wait
// counts against the request's deadline: a request that could not be sent
// before it gets a *BudgetError and is never sent. Watches are not counted.

// BudgetError is a request the host budget could not send before its
// deadline. It was never sent.
type BudgetError struct {
	// RetryAfter is the queue's estimate of when a request would be sent.
	RetryAfter time.Duration
}

func (e *BudgetError) Error() string {
	return fmt.Sprintf("etcd: the host's request budget (etcd.max_requests_per_second) cannot send this request before its deadline (queue about %s)",
		e.RetryAfter.Round(time.Millisecond))
}

type peerKeyCtx struct{}

// WithPeerKey marks ctx's requests as the peer key's, for the fair queue
// of the host budget. The agent puts it on each connection's context once.
func WithPeerKey(ctx context.Context, key string) context.Context {
	return context.WithValue(ctx, peerKeyCtx{}, key)
}

func peerKeyOf(ctx context.Context) string {
	k, _ := ctx.Value(peerKeyCtx{}).(string)
	return k
}

// SetRequestBudget sets the host budget to perSecond unary requests a
// second, with a burst of a tenth of a second's worth (at least 1); 0 lifts
// it. It applies to the next request; a raise frees waiting requests, and
// lifting it sends every waiting request at once.
func (c *EtcdClient) SetRequestBudget(perSecond int) {
	c.budget.set(perSecond)
}

// TakeRequestBudget waits for the host budget to let one request of ctx's
// peer go, within ctx's deadline: for requests sent on Conn (the gRPC
// socket forwards calls itself). The client's own calls take it themselves.
func (c *EtcdClient) TakeRequestBudget(ctx context.Context) error { return c.takeBudget(ctx) }

func (c *EtcdClient) takeBudget(ctx context.Context) error {
	return c.budget.take(ctx)
}

// enabled: a host budget is set.
func (b *fairBudget) enabled() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.lim != nil
}

// fairBudget is the bucket and its queue. The dispatcher goroutine hands
// out tokens to waiting requests, one peer after another; it runs only
// while some request waits.
type fairBudget struct {
	now func() time.Time

	mu      sync.Mutex // guards the fields below
	lim     *rate.Limiter
	perSec  int
	queues  map[string]*fairQueue
	active  []*fairQueue // queues with waiters, in round-robin order
	next    int          // the active queue served next
	waiting int
	running bool          // the dispatcher is running
	poke    chan struct{} // wakes the dispatcher on a change of rate
	closed  bool
}

type fairQueue struct {
	key     string
	waiters []*budgetWaiter
}

type budgetWaiter struct {
	granted chan struct{} // closed when the request may go
	done    bool          // granted or abandoned; guarded by fairBudget.mu
}

func (b *fairBudget) set(perSecond int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.now == nil {
		b.now = time.Now
	}
	b.perSec = perSecond
	if perSecond <= 0 {
		b.lim = nil
		b.releaseAll()
		return
	}
	burst := max(1, perSecond/10)
	if b.lim == nil {
		b.lim = rate.NewLimiter(rate.Limit(perSecond), burst)
	} else {
		now := b.now()
		b.lim.SetLimitAt(now, rate.Limit(perSecond))
		b.lim.SetBurstAt(now, burst)
	}
	b.wake()
}

// take is the request path: at once when nobody waits and a token is
// there (no allocation); else in the peer's queue until the dispatcher
// grants a token or the deadline passes.
func (b *fairBudget) take(ctx context.Context) error {
	b.mu.Lock()
	if b.lim == nil || b.closed {
		b.mu.Unlock()
		return nil
	}
	now := b.now()
	if b.waiting == 0 && b.lim.AllowN(now, 1) {
		b.mu.Unlock()
		return nil
	}
	key := peerKeyOf(ctx)
	q := b.queues[key]
	if q == nil {
		if b.queues == nil {
			b.queues = map[string]*fairQueue{}
		}
		q = &fairQueue{key: key}
		b.queues[key] = q
	}
	// Each peer with waiters gets an equal share: this request goes after
	// the peer's own waiters, each round serving every active peer once.
	rounds := len(q.waiters) + 1
	peers := len(b.active)
	if len(q.waiters) == 0 {
		peers++
	}
	wait := time.Duration(float64(rounds*peers) / float64(b.perSec) * float64(time.Second))
	if deadline, ok := ctx.Deadline(); ok && now.Add(wait).After(deadline) {
		b.mu.Unlock()
		return &BudgetError{RetryAfter: wait}
	}
	w := &budgetWaiter{granted: make(chan struct{})}
	if len(q.waiters) == 0 {
		b.active = append(b.active, q)
	}
	q.waiters = append(q.waiters, w)
	b.waiting++
	if !b.running {
		b.running = true
		go b.dispatch()
	}
	b.mu.Unlock()

	select {
	case <-w.granted:
		return nil
	case <-ctx.Done():
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if w.done { // granted as the deadline passed: the token goes unused
		return ctx.Err()
	}
	w.done = true
	b.remove(q, w)
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return &BudgetError{RetryAfter: wait}
	}
	return ctx.Err() // the caller went away: its request is not sent
}

// dispatch grants one waiter per token, round-robin over the peers with
// waiters, until none waits.
func (b *fairBudget) dispatch() {
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		b.mu.Lock()
		if b.waiting == 0 || b.lim == nil {
			b.running = false
			b.mu.Unlock()
			return
		}
		now := b.now()
		r := b.lim.ReserveN(now, 1)
		delay := r.DelayFrom(now)
		poke := b.poke
		if poke == nil {
			poke = make(chan struct{})
			b.poke = poke
		}
		b.mu.Unlock()
		if delay > 0 {
			timer.Reset(delay)
			select {
			case <-timer.C:
			case <-poke:
				// The rate changed: give the token back and ask again.
				b.mu.Lock()
				if b.lim != nil {
					r.CancelAt(b.now())
				}
				b.mu.Unlock()
				if !timer.Stop() {
					select {
					case <-timer.C:
					default:
					}
				}
				continue
			}
		}
		b.mu.Lock()
		if !b.grantNext() && b.lim != nil {
			r.CancelAt(b.now()) // everyone left meanwhile
		}
		b.mu.Unlock()
	}
}

// grantNext lets the next active peer's first waiter go. b.mu held.
func (b *fairBudget) grantNext() bool {
	for len(b.active) > 0 {
		if b.next >= len(b.active) {
			b.next = 0
		}
		q := b.active[b.next]
		w := q.waiters[0]
		b.remove(q, w)
		if w.done {
			continue
		}
		w.done = true
		close(w.granted)
		// remove dropped q from active when it emptied; otherwise move on.
		if len(q.waiters) > 0 {
			b.next++
		}
		return true
	}
	return false
}

// remove takes w out of q, and q out of the active ring when it empties.
// b.mu held.
func (b *fairBudget) remove(q *fairQueue, w *budgetWaiter) {
	for i, x := range q.waiters {
		if x == w {
			q.waiters = append(q.waiters[:i], q.waiters[i+1:]...)
			b.waiting--
			break
		}
	}
	if len(q.waiters) > 0 {
		return
	}
	for i, x := range b.active {
		if x == q {
			b.active = append(b.active[:i], b.active[i+1:]...)
			if i < b.next {
				b.next--
			}
			break
		}
	}
	delete(b.queues, q.key)
}

// releaseAll lets every waiter go (the budget was lifted or the client
// closed). b.mu held.
func (b *fairBudget) releaseAll() {
	for _, q := range b.active {
		for _, w := range q.waiters {
			if !w.done {
				w.done = true
				close(w.granted)
			}
		}
		q.waiters = nil
		delete(b.queues, q.key)
	}
	b.active, b.next, b.waiting = nil, 0, 0
	b.wake()
}

// wake tells a sleeping dispatcher that the rate changed. b.mu held.
func (b *fairBudget) wake() {
	if b.poke != nil {
		close(b.poke)
		b.poke = nil
	}
}

// close ends the budget: waiters go (and fail on the closed client).
func (b *fairBudget) close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = true
	b.releaseAll()
}
