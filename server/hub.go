package server

import (
	"context"
	"sync"
	"sync/atomic"

	clientv3 "go.etcd.io/etcd/client/v3"

	"udp_iaasd/etcd"
)

// Watch coalescing: local watch streams on the same key or prefix share one
// etcd watch, held by a hub.
//
// Exactly-once delivery is kept by construction rather than by bookkeeping:
// a stream joins a hub only if the hub has not yet dispatched anything at or
// after the stream's start revision (so from the moment it joins it sees
// every later event, and it drops anything earlier); otherwise it watches on
// its own. The hub never waits for a subscriber: one that falls behind, and
// every subscriber when the hub's etcd watch fails, is detached by closing
// its channel, and the stream resumes on a watch of its own from its last
// delivered revision — the same path as any broken etcd watch.

// subBuffer is how many watch responses a subscriber may lag behind before
// it is detached to a watch of its own (a variable for tests).
var subBuffer = 256

type hubKey struct {
	key    string
	prefix bool
}

// hubs is the set of live hubs.
type hubs struct {
	ec       *etcd.EtcdClient
	detached atomic.Int64 // subscribers detached for falling behind

	mu sync.Mutex // guards m
	m  map[hubKey]*hub
}

type hub struct {
	hs     *hubs
	key    hubKey
	cancel context.CancelFunc

	mu     sync.Mutex // guards the fields below
	next   int64      // every event with a lower revision has been dispatched
	subs   map[*subscription]struct{}
	closed bool
}

// subscription is one stream's share of a hub.
type subscription struct {
	h  *hub
	ch chan clientv3.WatchResponse // closed by the hub when it detaches this subscriber
}

func newHubs(ec *etcd.EtcdClient) *hubs { return &hubs{ec: ec, m: map[hubKey]*hub{}} }

// subscribe returns a subscription that will see every event from start on,
// or nil when the stream must watch on its own.
func (hs *hubs) subscribe(key string, prefix bool, start int64) *subscription {
	k := hubKey{key, prefix}
	hs.mu.Lock()
	h := hs.m[k]
	hs.mu.Unlock()
	if h == nil {
		// Open the etcd watch without holding hs.mu: it may block.
		fresh, err := hs.start(k, start)
		if err != nil {
			return nil
		}
		hs.mu.Lock()
		if h = hs.m[k]; h == nil {
			h = fresh
			hs.m[k] = h
		}
		hs.mu.Unlock()
		if h != fresh {
			fresh.cancel() // another stream made one first; its run ends
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed || start < h.next {
		return nil
	}
	s := &subscription{h: h, ch: make(chan clientv3.WatchResponse, subBuffer)}
	h.subs[s] = struct{}{}
	return s
}

// start opens a hub's etcd watch from rev.
func (hs *hubs) start(k hubKey, rev int64) (*hub, error) {
	// "Require leader" like every stream, which also puts the hub's watch on
	// the same gRPC stream as the streams' progress requests.
	ctx, cancel := context.WithCancel(clientv3.WithRequireLeader(context.Background()))
	opts := []clientv3.OpOption{clientv3.WithRev(rev)}
	if k.prefix {
		opts = append(opts, clientv3.WithPrefix())
	}
	wch, err := hs.ec.Watch(ctx, k.key, opts...)
	if err != nil {
		cancel()
		return nil, err
	}
	h := &hub{hs: hs, key: k, cancel: cancel, next: rev, subs: map[*subscription]struct{}{}}
	go h.run(wch)
	return h, nil
}

// unsubscribe removes s; the last subscriber to leave stops the hub.
func (s *subscription) unsubscribe() {
	h := s.h
	h.hs.mu.Lock()
	defer h.hs.mu.Unlock()
	h.mu.Lock()
	delete(h.subs, s)
	last := len(h.subs) == 0 && !h.closed
	if last {
		h.closed = true
	}
	h.mu.Unlock()
	if last {
		h.cancel()
		if h.hs.m[h.key] == h {
			delete(h.hs.m, h.key)
		}
	}
}

// run fans the etcd watch out. It is the only sender on, and the only closer
// of, the subscribers' channels.
func (h *hub) run(wch clientv3.WatchChan) {
	defer h.detachAll()
	for resp := range wch {
		if resp.Err() != nil || resp.Canceled || resp.CompactRevision != 0 {
			return
		}
		h.mu.Lock()
		for s := range h.subs {
			select {
			case s.ch <- resp:
			default: // fallen behind: on its own from its last revision
				delete(h.subs, s)
				close(s.ch)
				h.hs.detached.Add(1)
			}
		}
		if n := len(resp.Events); n > 0 {
			h.next = max(h.next, resp.Events[n-1].Kv.ModRevision+1)
		} else if resp.IsProgressNotify() {
			h.next = max(h.next, resp.Header.Revision+1)
		}
		h.mu.Unlock()
	}
}

// detachAll ends the hub: every subscriber resumes on its own.
func (h *hub) detachAll() {
	h.hs.mu.Lock()
	if h.hs.m[h.key] == h {
		delete(h.hs.m, h.key)
	}
	h.hs.mu.Unlock()
	h.mu.Lock()
	h.closed = true
	for s := range h.subs {
		delete(h.subs, s)
		close(s.ch)
	}
	h.mu.Unlock()
	h.cancel()
}

// count is the number of live hubs (tests, metrics).
func (hs *hubs) count() int {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	return len(hs.m)
}
