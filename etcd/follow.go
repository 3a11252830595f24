package etcd

import (
	"context"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"udp_iaasd/backoff"
)

// FollowOptions say which keys Follow follows.
type FollowOptions struct {
	// Prefix: every key under the key.
	Prefix bool
	// End, when set, is etcd's range end instead: the keys in [key, End),
	// "\x00" every key from key on.
	End string
	// PrevKV: each event carries the key's previous value.
	PrevKV bool
	// RequireLeader ends the follower, with a last response whose Err is
	// etcd's "no leader", when the members it reaches have lost their
	// leader — what etcd does to a watch whose client asked for it
	// (clientv3.WithRequireLeader). Without it the follower waits for a
	// leader and resumes.
	RequireLeader bool
}

// shared: the keys are a key or a prefix, without previous values — what a
// shared watch (Subscribe) and WatchKV follow.
func (o FollowOptions) shared() bool { return o.End == "" && !o.PrevKV }

// Follow is the one watch follower every surface uses — the HTTP watch,
// the gRPC socket's Watch, the renderer through them. It delivers every
// event on key (as o says) from revision rev on, exactly once and in
// revision order, until ctx ends or rev's history is compacted (a last
// response with CompactRevision). It rides a shared watch (Subscribe) when
// one can take it from where it is, and a watch of its own otherwise, and
// resumes after the revision it last delivered whenever either ends —
// detached for falling behind, a member lost, an endpoint reload — on a
// backoff while they keep failing. Progress responses are passed on: every
// event up to their Revision has been delivered. The channel closes when
// Follow ends.
func (c *EtcdClient) Follow(ctx context.Context, key string, rev int64, o FollowOptions) <-chan WatchResponse {
	return c.follow(ctx, key, rev, o, nil)
}

// Followed is a follower that StartFollow has set up.
type Followed struct {
	// C delivers as Follow's channel does.
	C <-chan WatchResponse
	// Current is the store's revision read through a quorum when the
	// follower started; Start the first revision it follows (Current+1
	// for a follower from now).
	Current, Start int64
	stop           context.CancelFunc
}

// Stop ends the follower (its channel closes).
func (f *Followed) Stop() { f.stop() }

// StartFollow is Follow for a request that must fail before it streams
// anything, within RequestTimeout:
//   - the start is fixed first: rev 0 is after the current revision, read
//     through a quorum, so that "now" is never behind a write the client
//     has seen (and an unreachable etcd answers at once);
//   - a past rev whose history is compacted is a KindCompacted error, not a
//     stream that ends at once (etcd confirms a compacted watch first and
//     cancels it only afterwards);
//   - it returns once the first watch is set up: a shared watch took it,
//     or etcd confirmed its own.
func (c *EtcdClient) StartFollow(ctx context.Context, key string, rev int64, o FollowOptions) (*Followed, error) {
	tctx, cancel := context.WithTimeout(ctx, c.requestTimeout())
	defer cancel()
	now, err := c.Read(tctx, key, ReadOptions{CountOnly: true})
	if err == nil && rev > 0 && rev <= now.Revision {
		_, err = c.Read(tctx, key, ReadOptions{CountOnly: true, Revision: rev})
	}
	if err != nil {
		return nil, err
	}
	if rev == 0 {
		rev = now.Revision + 1
	}
	fctx, stop := context.WithCancel(ctx)
	started := make(chan struct{})
	f := &Followed{C: c.follow(fctx, key, rev, o, started), Current: now.Revision, Start: rev, stop: stop}
	select {
	case <-started:
		return f, nil
	case <-tctx.Done():
		stop()
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		return nil, context.DeadlineExceeded
	}
}

// follow is Follow; started, when not nil, is closed once the first watch
// is set up.
func (c *EtcdClient) follow(ctx context.Context, key string, rev int64, o FollowOptions, started chan struct{}) <-chan WatchResponse {
	// Unbuffered: a reader that stops reading must let its shared watch's
	// buffer (Config.WatchBuffer) fill, so that the hub detaches it rather
	// than the follower buffering on its behalf.
	out := make(chan WatchResponse)
	f := &follower{c: c, key: key, o: o, next: rev, bo: backoff.Backoff{Policy: followBackoff}, out: out, started: started}
	go f.run(ctx)
	return out
}

// followBackoff paces re-opening a watch that keeps failing.
var followBackoff = backoff.DefaultPolicy().WithMax(2 * time.Second)

// follower is one Follow; its run goroutine owns every field.
type follower struct {
	c    *EtcdClient
	key  string
	o    FollowOptions
	next int64 // every event below next has been delivered
	bo   backoff.Backoff
	out  chan<- WatchResponse
	// started is closed once the first watch is set up, then nil.
	started chan struct{}
	// exact: open the next own watch at next itself, not one revision
	// early (its revision next-1 turned out to be compacted).
	exact bool
}

func (f *follower) run(ctx context.Context) {
	defer close(f.out)
	for ctx.Err() == nil {
		in, stop, confirmed, early, err := f.c.openFollow(ctx, f.key, f.next, f.exact, f.o)
		if err != nil {
			if f.bo.Wait(ctx, f.bo.Next()) != nil {
				return
			}
			continue
		}
		if confirmed {
			f.setUp()
		}
		resume := f.deliver(ctx, in, early)
		stop()
		if !resume || f.bo.Wait(ctx, f.bo.Next()) != nil {
			return
		}
	}
}

func (f *follower) setUp() {
	if f.started != nil {
		close(f.started)
		f.started = nil
	}
}

// deliver passes one watch on until it breaks (true: resume) or the
// follower is done (false: ctx ended, the start was compacted, or the
// leader is lost under RequireLeader). early: the watch was opened at
// next-1.
func (f *follower) deliver(ctx context.Context, in <-chan WatchResponse, early bool) bool {
	for {
		var wr WatchResponse
		var ok bool
		select {
		case <-ctx.Done():
			return false
		case wr, ok = <-in:
		}
		switch {
		case ok && wr.CompactRevision != 0 && early && wr.CompactRevision <= f.next:
			// Only the revision before next is compacted: resume at next.
			f.exact = true
			return true
		case ok && wr.CompactRevision != 0:
			// Before Err: clientv3 reports a compaction as an error too,
			// and it ends the follower; it is not a broken watch.
			f.send(ctx, wr)
			return false
		case ok && wr.Err != nil && f.o.RequireLeader && isAny(wr.Err, rpctypes.ErrNoLeader, rpctypes.ErrGRPCNoLeader):
			f.send(ctx, wr)
			return false
		case !ok || wr.Err != nil:
			return true
		case wr.Created:
			f.setUp()
			continue
		}
		f.bo.Reset()
		if deliverFrom(&wr, &f.next) && !f.send(ctx, wr) {
			return false
		}
	}
}

func (f *follower) send(ctx context.Context, wr WatchResponse) bool {
	select {
	case f.out <- wr:
		return true
	case <-ctx.Done():
		return false
	}
}

// openFollow opens what follows the keys from next: a share of a shared
// watch when one can take them from there (confirmed: it is set up), else a
// watch of its own, which etcd confirms with a Created response. A range
// watch of its own is opened one revision early unless exact (early), for
// the reason kvWatch.early gives; WatchKV does the same by itself.
func (c *EtcdClient) openFollow(ctx context.Context, key string, next int64, exact bool, o FollowOptions) (in <-chan WatchResponse, stop func(), confirmed, early bool, err error) {
	if o.shared() {
		// A shared watch that loses its leader detaches its subscribers;
		// their own watches then meet the "no leader" RequireLeader ends on.
		if sub := c.Subscribe(key, o.Prefix, next); sub != nil {
			return sub.C(), sub.Close, true, false, nil
		}
		wctx, cancel := context.WithCancel(ctx)
		wch, err := c.WatchKV(wctx, key, WatchOptions{Prefix: o.Prefix, Rev: next, CreatedNotify: true})
		if err != nil {
			cancel()
			return nil, nil, false, false, err
		}
		return wch, cancel, false, false, nil
	}
	from := next
	if !exact && from > 1 {
		from, early = from-1, true
	}
	opts := []clientv3.OpOption{clientv3.WithRev(from), clientv3.WithCreatedNotify()}
	switch {
	case o.End != "":
		opts = append(opts, clientv3.WithRange(o.End))
	case o.Prefix:
		opts = append(opts, clientv3.WithPrefix())
	}
	if o.PrevKV {
		opts = append(opts, clientv3.WithPrevKV())
	}
	wctx, cancel := context.WithCancel(ctx)
	wch, err := c.watch(watchContext(wctx, "", c.streams.current().epoch), key, opts...)
	if err != nil {
		cancel()
		return nil, nil, false, false, err
	}
	out := make(chan WatchResponse, 1)
	go func() {
		defer close(out)
		for r := range wch {
			wr := toWatchResponse(r)
			select {
			case out <- wr:
			case <-wctx.Done():
				return
			}
			if wr.ended() {
				return
			}
		}
	}()
	return out, cancel, false, early, nil
}

// deliverFrom trims events below next (a resumed watch may repeat what was
// delivered) and advances next past what is left; false: nothing to pass
// on. It is the one trimming rule of every watch here.
func deliverFrom(wr *WatchResponse, next *int64) bool {
	i := 0
	for i < len(wr.Events) && wr.Events[i].Kv.ModRevision < *next {
		i++
	}
	wr.Events = wr.Events[i:]
	return advance(wr, next)
}

// advance moves next past wr: after its last event, or after its revision
// for a progress notification; false when wr carries neither.
func advance(wr *WatchResponse, next *int64) bool {
	switch {
	case len(wr.Events) > 0:
		*next = max(*next, wr.Events[len(wr.Events)-1].Kv.ModRevision+1)
		return true
	case wr.Progress:
		*next = max(*next, wr.Revision+1)
		return true
	}
	return false
}
