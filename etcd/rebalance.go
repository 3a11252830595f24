package etcd

import (
	"sync"
	"time"
)

// Watch stream rebalancing.
//
// clientv3 places each gRPC watch stream on a member once, round robin, and
// keeps it there for as long as the stream lives. After a rolling restart
// a fleet's streams have piled onto the members that restarted first (each
// restart moves the streams of the member going down onto the others) and
// the member restarted last serves none: measured 68/32/0 percent over 100
// agents. Nothing in clientv3 re-places a stream.
//
// So the client re-places its own. When a member returns — an address
// whose connections had all closed is dialled again, or an address is
// dialled for the first time well after the client first connected (a
// member added) — the client schedules one move at a random time in
// [RebalanceSpread/2, RebalanceSpread): the half-window lets the returning
// member's subchannel become ready (the round-robin picker skips it until
// then), the random half spreads a fleet's moves. A move starts a new
// placement epoch: every WatchKV watch reopens on a stream named for the new
// epoch (watchContext), which clientv3 places afresh, from the revision
// after the last one it delivered, so nothing is missed or repeated (see
// kvWatch). Its old stream closes once its last watch has left.
//
// Each agent moves all of its streams, not only those on a crowded member:
// an agent cannot see the fleet's distribution, and round-robin placement
// of every stream again is what spreads the fleet evenly. The cost is one
// watch re-creation per stream per agent per returning member, spread over
// RebalanceSpread.

// placement is one epoch of watch stream placement. moved is closed when
// the streams of this epoch are to move to the next.
type placement struct {
	epoch uint64
	moved chan struct{}
}

type rebalancer struct {
	spread time.Duration
	rand   func() float64
	onMove func(epoch uint64) // logs; called from the timer's goroutine

	mu      sync.Mutex // guards the fields below
	cur     *placement
	pending *time.Timer // a scheduled move
	closed  bool
}

func newRebalancer(spread time.Duration, rand func() float64, onMove func(uint64)) *rebalancer {
	return &rebalancer{spread: spread, rand: rand, onMove: onMove, cur: &placement{moved: make(chan struct{})}}
}

// current is the placement new watches join.
func (r *rebalancer) current() *placement {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cur
}

// schedule arranges one move, unless one is already pending (it will see
// this member too: it runs later than the member's subchannel is ready, or
// the next return schedules another). It never blocks.
func (r *rebalancer) schedule() {
	if r.spread <= 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed || r.pending != nil {
		return
	}
	d := r.spread/2 + time.Duration(r.rand()*float64(r.spread/2))
	r.pending = time.AfterFunc(d, r.move)
}

// move starts the next epoch, telling every watch of the current one.
func (r *rebalancer) move() {
	r.mu.Lock()
	r.pending = nil
	if r.closed {
		r.mu.Unlock()
		return
	}
	old := r.cur
	r.cur = &placement{epoch: old.epoch + 1, moved: make(chan struct{})}
	r.mu.Unlock()
	close(old.moved)
	if r.onMove != nil {
		r.onMove(old.epoch + 1)
	}
}

// stop cancels a pending move; watches stay where they are.
func (r *rebalancer) stop() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = true
	if r.pending != nil {
		r.pending.Stop()
		r.pending = nil
	}
}
