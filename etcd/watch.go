package etcd

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/metadata"
)

// WatchResponse is one delivery of a watch: events in revision order, a
// progress notification, the confirmation that the watch was created, or
// its end.
type WatchResponse struct {
	Events []*mvccpb.Event
	// Revision is the store revision of the response's header.
	Revision int64
	// Progress: no events, and every event up to Revision has been sent.
	Progress bool
	// Created confirms a watch opened with WatchOptions.CreatedNotify.
	Created bool
	// CompactRevision, when set, says the watch's start was compacted: the
	// watch has ended, and events before CompactRevision are gone.
	CompactRevision int64
	// Err, when set, says the watch has ended (cancelled, its member lost
	// its leader or went away): resume from the last revision delivered.
	Err error
	// MemberID is the member that sent the response.
	MemberID uint64
}

// errWatchCanceled ends a watch etcd cancelled without saying why.
var errWatchCanceled = errors.New("etcd: watch cancelled")

func toWatchResponse(r clientv3.WatchResponse) WatchResponse {
	wr := WatchResponse{Events: r.Events, Revision: r.Header.Revision, Progress: r.IsProgressNotify(),
		Created: r.Created, CompactRevision: r.CompactRevision, Err: r.Err(), MemberID: r.Header.MemberId}
	if wr.Err == nil && r.Canceled && r.CompactRevision == 0 {
		wr.Err = errWatchCanceled
	}
	return wr
}

// ended: nothing follows this response.
func (r WatchResponse) ended() bool { return r.Err != nil || r.CompactRevision != 0 }

// WatchOptions shape a watch. Every watch carries etcd's "require leader",
// so a member cut off from its cluster ends it rather than going quiet.
type WatchOptions struct {
	Prefix bool  // every key under the key
	Rev    int64 // start at this revision; 0: after the current one
	// CreatedNotify asks for a Created response once etcd has set the watch
	// up (or a CompactRevision one when its start is compacted).
	CreatedNotify bool
	// Stream names the gRPC stream the watch shares ("" the default one).
	// etcd answers a progress request only when every watch of its stream
	// is synced (watchableStore.progressIfSync), so a watcher that relies
	// on progress (the read cache) keeps a stream of its own.
	Stream string
}

// watchContext gives ctx the metadata that picks the watch's gRPC stream:
// clientv3 keys streams by a context's outgoing metadata. The placement
// epoch is part of the name, so that a move (rebalance.go) opens fresh
// streams, which clientv3 places afresh.
func watchContext(ctx context.Context, stream string, epoch uint64) context.Context {
	if epoch > 0 {
		stream += "#" + strconv.FormatUint(epoch, 10)
	}
	if stream != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "endpointd-watch-stream", stream)
	}
	return clientv3.WithRequireLeader(ctx)
}

// WatchKV watches key as o says. The channel closes after a response that
// ends the watch (Err or CompactRevision), or once ctx ends. Like Watch it
// does not pin the client: a client replaced by UpdateEndpoints ends its
// watches, and the caller resumes. A rebalance (rebalance.go) moves it to a
// fresh stream without the caller seeing anything but MemberID change.
func (c *EtcdClient) WatchKV(ctx context.Context, key string, o WatchOptions) (<-chan WatchResponse, error) {
	if c.initErr != nil {
		return nil, c.initErr
	}
	w := &kvWatch{c: c, key: key, o: o, next: o.Rev, at: c.streams.current()}
	from := o.Rev
	if from > 1 {
		// One revision early (see kvWatch.early): a watch from the next
		// revision on a quiet key would keep etcd from answering progress
		// requests for its whole stream.
		from, w.early = from-1, true
	}
	wch, cancel, err := w.open(ctx, from)
	if err != nil {
		return nil, err
	}
	out := make(chan WatchResponse, 1)
	go w.run(ctx, wch, cancel, out)
	return out, nil
}

// kvWatch is one WatchKV watch; its run goroutine owns every field.
type kvWatch struct {
	c   *EtcdClient
	key string
	o   WatchOptions
	// next: every event below it has been delivered, none at or above it;
	// 0 until the first response says where the watch started.
	next int64
	at   *placement // the epoch whose stream the watch is on
	// early: the etcd watch was opened at next-1, not next, and repeats
	// that revision (deliverable drops it). etcd answers a progress request
	// only when every watch of the stream starts at or below the store's
	// revision (watchableStore.progressIfSync), which a watch from the next
	// revision on a quiet key does not; and a compaction of that one
	// revision alone is no compaction for the caller: reopen at next.
	early bool
	moved bool // reopened by a move: its Created is not news
}

// open starts the etcd watch from rev (0: now) on the stream of w.at.
// etcd is always asked to confirm creation, since the confirmation's
// revision is where a watch from "now" starts, which a move needs.
func (w *kvWatch) open(ctx context.Context, rev int64) (clientv3.WatchChan, context.CancelFunc, error) {
	opts := []clientv3.OpOption{clientv3.WithCreatedNotify()}
	if rev > 0 {
		opts = append(opts, clientv3.WithRev(rev))
	}
	if w.o.Prefix {
		opts = append(opts, clientv3.WithPrefix())
	}
	wctx, cancel := context.WithCancel(ctx)
	wch, err := w.c.watch(watchContext(wctx, w.o.Stream, w.at.epoch), w.key, opts...)
	if err != nil {
		cancel()
		return nil, nil, err
	}
	return wch, cancel, nil
}

// run delivers the watch until it ends; it closes out.
func (w *kvWatch) run(ctx context.Context, wch clientv3.WatchChan, cancel context.CancelFunc, out chan<- WatchResponse) {
	defer close(out)
	defer func() { cancel() }()
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.at.moved:
			w.at = w.c.streams.current()
			if w.next == 0 {
				continue // not started yet: it moves with the next epoch
			}
			cancel()
			// Resume one revision early (see early).
			var err error
			w.moved, w.early = true, w.next > 1
			if wch, cancel, err = w.open(ctx, max(1, w.next-1)); err != nil {
				cancel = func() {}
				w.send(ctx, out, WatchResponse{Err: err})
				return
			}
		case r, ok := <-wch:
			if !ok {
				return
			}
			wr := toWatchResponse(r)
			if w.early && wr.CompactRevision != 0 && wr.CompactRevision <= w.next {
				// Only the repeated revision is compacted: resume at next.
				w.early = false
				cancel()
				var err error
				if wch, cancel, err = w.open(ctx, w.next); err != nil {
					cancel = func() {}
					w.send(ctx, out, WatchResponse{Err: err})
					return
				}
				continue
			}
			if !w.deliverable(&wr) {
				continue
			}
			if !w.send(ctx, out, wr) || wr.ended() {
				return
			}
		}
	}
}

// deliverable advances next past wr and trims what the caller has already
// had; false: nothing is left to deliver.
func (w *kvWatch) deliverable(wr *WatchResponse) bool {
	if wr.ended() {
		return true
	}
	if wr.Created {
		if w.next == 0 {
			w.next = wr.Revision + 1 // a watch from now starts after it
		}
		return !w.moved && w.o.CreatedNotify
	}
	return deliverFrom(wr, &w.next)
}

func (w *kvWatch) send(ctx context.Context, out chan<- WatchResponse, wr WatchResponse) bool {
	select {
	case out <- wr:
		return true
	case <-ctx.Done():
		return false
	}
}

// RequestWatchProgress asks etcd for a progress notification on the watches
// of a stream (WatchOptions.Stream).
func (c *EtcdClient) RequestWatchProgress(ctx context.Context, stream string) error {
	if c.initErr != nil {
		return c.initErr
	}
	return c.requestProgress(watchContext(ctx, stream, c.streams.current().epoch))
}

// AskWatchProgress asks etcd, without waiting, for a progress notification
// on the watches of a stream (WatchOptions.Stream). It is the one throttled
// progress requester: a notification answers every watch of its stream, so
// while a request for the stream is in flight further asks fold into one
// more request sent after it (every asker hears a notification newer than
// its ask), and, with every > 0, no request follows the last within every
// (an ask then is dropped: the caller asks again when it needs to).
func (c *EtcdClient) AskWatchProgress(stream string, every time.Duration) {
	if c.initErr != nil {
		return
	}
	now := time.Now()
	p := &c.progress
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.m == nil {
		p.m = map[string]*progressAsk{}
	}
	a := p.m[stream]
	if a == nil {
		a = &progressAsk{}
		p.m[stream] = a
	}
	a.every = every
	switch {
	case a.inflight:
		a.again = true
	case every > 0 && now.Sub(a.last) < every:
	default:
		a.inflight, a.last = true, now
		go c.sendProgress(stream, a)
	}
}

// progressAsks is AskWatchProgress's state per stream.
type progressAsks struct {
	mu sync.Mutex // guards m and every progressAsk in it
	m  map[string]*progressAsk
}

type progressAsk struct {
	inflight bool          // a request is being sent
	again    bool          // asked while in flight: send one more after it
	last     time.Time     // when the last request was sent
	every    time.Duration // the latest ask's floor between requests
}

// sendProgress sends the stream's progress requests until no ask is left.
func (c *EtcdClient) sendProgress(stream string, a *progressAsk) {
	p := &c.progress
	for {
		ctx, cancel := context.WithTimeout(context.Background(), c.requestTimeout())
		if err := c.RequestWatchProgress(ctx, stream); err != nil {
			c.log.Debug("etcd: progress request failed", "stream", stream, "error", err)
		}
		cancel()
		p.mu.Lock()
		now := time.Now()
		if !a.again || (a.every > 0 && now.Sub(a.last) < a.every) {
			a.again, a.inflight = false, false
			p.mu.Unlock()
			return
		}
		a.again, a.last = false, now
		p.mu.Unlock()
	}
}

// Watch coalescing: watches on the same key or prefix through Subscribe
// share one etcd watch, held by a hub.
//
// Exactly-once delivery is kept by construction rather than by bookkeeping:
// a subscriber joins a hub only if the hub has not yet dispatched anything
// at or after the subscriber's start revision (so from the moment it joins
// it sees every later event, and it drops anything earlier); otherwise
// Subscribe returns nil and the caller watches on its own. The hub never
// waits for a subscriber: one that falls behind, and every subscriber when
// the hub's etcd watch fails, is detached by closing its channel, and the
// caller resumes on a watch of its own from its last delivered revision —
// the same path as any broken etcd watch.

type hubKey struct {
	key    string
	prefix bool
}

// hubs is the set of live hubs.
type hubs struct {
	c        *EtcdClient
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
	subs   map[*Subscription]struct{}
	closed bool
}

// Subscription is one watcher's share of a hub.
type Subscription struct {
	h  *hub
	ch chan WatchResponse // closed by the hub when it detaches this subscriber
}

// C delivers the hub's responses until the subscription is detached
// (closed): resume on a watch of your own from the last revision delivered.
func (s *Subscription) C() <-chan WatchResponse { return s.ch }

// Subscribe returns a subscription that will see every event on key (or
// under it, with prefix) from start on, or nil when the caller must watch on
// its own (the shared watch is already past start, or cannot be opened).
func (c *EtcdClient) Subscribe(key string, prefix bool, start int64) *Subscription {
	hs := &c.hubs
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
			fresh.cancel() // another subscriber made one first; its run ends
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed || start < h.next {
		return nil
	}
	s := &Subscription{h: h, ch: make(chan WatchResponse, c.cfg.WatchBuffer)}
	h.subs[s] = struct{}{}
	return s
}

// start opens a hub's etcd watch from rev, on the default stream (where
// the subscribers' own watches and progress requests go too).
func (hs *hubs) start(k hubKey, rev int64) (*hub, error) {
	ctx, cancel := context.WithCancel(context.Background())
	wch, err := hs.c.WatchKV(ctx, k.key, WatchOptions{Prefix: k.prefix, Rev: rev})
	if err != nil {
		cancel()
		return nil, err
	}
	h := &hub{hs: hs, key: k, cancel: cancel, next: rev, subs: map[*Subscription]struct{}{}}
	go h.run(wch)
	return h, nil
}

// Close removes s; the last subscriber to leave stops the hub.
func (s *Subscription) Close() {
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
func (h *hub) run(wch <-chan WatchResponse) {
	defer h.detachAll()
	for resp := range wch {
		if resp.ended() {
			if resp.Err != nil && resp.CompactRevision == 0 {
				h.passEnd(resp)
			}
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
		advance(&resp, &h.next)
		h.mu.Unlock()
	}
}

// passEnd tells each subscriber that can take it why the shared watch
// ended (a follower that must end on a lost leader learns it here: a watch
// it opened anew on a leaderless member would only be retried by clientv3).
// A subscriber whose buffer is full just resumes, as from any detach.
func (h *hub) passEnd(resp WatchResponse) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for s := range h.subs {
		select {
		case s.ch <- resp:
		default:
		}
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

// WatchHubs is the number of shared etcd watches open (metrics, tests).
func (c *EtcdClient) WatchHubs() int {
	c.hubs.mu.Lock()
	defer c.hubs.mu.Unlock()
	return len(c.hubs.m)
}

// DetachedSubscribers counts subscriptions detached for falling more than
// WatchBuffer responses behind (metrics, tests).
func (c *EtcdClient) DetachedSubscribers() int64 { return c.hubs.detached.Load() }
