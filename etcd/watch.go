package etcd

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"

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
}

// errWatchCanceled ends a watch etcd cancelled without saying why.
var errWatchCanceled = errors.New("etcd: watch cancelled")

func toWatchResponse(r clientv3.WatchResponse) WatchResponse {
	wr := WatchResponse{Events: r.Events, Revision: r.Header.Revision, Progress: r.IsProgressNotify(),
		Created: r.Created, CompactRevision: r.CompactRevision, Err: r.Err()}
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
// clientv3 keys streams by a context's outgoing metadata.
func watchContext(ctx context.Context, stream string) context.Context {
	if stream != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "endpointd-watch-stream", stream)
	}
	return clientv3.WithRequireLeader(ctx)
}

// WatchKV watches key as o says. The channel closes after a response that
// ends the watch (Err or CompactRevision), or once ctx ends. Like Watch it
// does not pin the client: a client replaced by UpdateEndpoints ends its
// watches, and the caller resumes.
func (c *EtcdClient) WatchKV(ctx context.Context, key string, o WatchOptions) (<-chan WatchResponse, error) {
	opts := []clientv3.OpOption{}
	if o.Rev > 0 {
		opts = append(opts, clientv3.WithRev(o.Rev))
	}
	if o.Prefix {
		opts = append(opts, clientv3.WithPrefix())
	}
	if o.CreatedNotify {
		opts = append(opts, clientv3.WithCreatedNotify())
	}
	wch, err := c.Watch(watchContext(ctx, o.Stream), key, opts...)
	if err != nil {
		return nil, err
	}
	out := make(chan WatchResponse, 1)
	go func() { // ends with the clientv3 watch, which ends with ctx
		defer close(out)
		for r := range wch {
			wr := toWatchResponse(r)
			select {
			case out <- wr:
			case <-ctx.Done():
				return
			}
			if wr.ended() {
				return
			}
		}
	}()
	return out, nil
}

// RequestWatchProgress asks etcd for a progress notification on the watches
// of a stream (WatchOptions.Stream).
func (c *EtcdClient) RequestWatchProgress(ctx context.Context, stream string) error {
	return c.RequestProgress(watchContext(ctx, stream))
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
		} else if resp.Progress {
			h.next = max(h.next, resp.Revision+1)
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

// WatchHubs is the number of shared etcd watches open (metrics, tests).
func (c *EtcdClient) WatchHubs() int {
	c.hubs.mu.Lock()
	defer c.hubs.mu.Unlock()
	return len(c.hubs.m)
}

// DetachedSubscribers counts subscriptions detached for falling more than
// WatchBuffer responses behind (metrics, tests).
func (c *EtcdClient) DetachedSubscribers() int64 { return c.hubs.detached.Load() }
