package etcd

import (
	"context"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"

	"udp_iaasd/backoff"
)

// Follow delivers every event on key (every key under it, with prefix)
// from revision rev on, exactly once and in revision order, until ctx ends
// or rev's history is compacted (a last response with CompactRevision).
// It rides a shared watch (Subscribe) when one can take it from where it
// is, and a watch of its own otherwise, and resumes after the revision it
// last delivered whenever either ends — detached for falling behind, a
// member lost, an endpoint reload — on a backoff while they keep failing.
// Progress responses are passed on: every event up to their Revision has
// been delivered. The channel closes when Follow ends.
func (c *EtcdClient) Follow(ctx context.Context, key string, prefix bool, rev int64) <-chan WatchResponse {
	return c.follow(ctx, rev, func(next int64) (<-chan WatchResponse, func(), error) {
		if sub := c.Subscribe(key, prefix, next); sub != nil {
			return sub.C(), sub.Close, nil
		}
		wctx, cancel := context.WithCancel(ctx)
		wch, err := c.WatchKV(wctx, key, WatchOptions{Prefix: prefix, Rev: next})
		if err != nil {
			cancel()
			return nil, nil, err
		}
		return wch, cancel, nil
	})
}

// FollowRange is Follow for any of etcd's ranges ([key, end); end "" the
// key alone, "\x00" every key from key on), optionally with each event's
// previous key-value, on an upstream watch of its own.
func (c *EtcdClient) FollowRange(ctx context.Context, key, end string, prevKV bool, rev int64) <-chan WatchResponse {
	return c.follow(ctx, rev, func(next int64) (<-chan WatchResponse, func(), error) {
		opts := []clientv3.OpOption{clientv3.WithRev(next)}
		if end != "" {
			opts = append(opts, clientv3.WithRange(end))
		}
		if prevKV {
			opts = append(opts, clientv3.WithPrevKV())
		}
		wctx, cancel := context.WithCancel(ctx)
		wch, err := c.Watch(watchContext(wctx, "", c.streams.current().epoch), key, opts...)
		if err != nil {
			cancel()
			return nil, nil, err
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
		return out, cancel, nil
	})
}

// follow is Follow's loop over watches that open opens from a revision.
func (c *EtcdClient) follow(ctx context.Context, rev int64, open func(next int64) (<-chan WatchResponse, func(), error)) <-chan WatchResponse {
	out := make(chan WatchResponse, 16)
	go func() {
		defer close(out)
		next := rev // every event below next has been delivered
		bo := backoff.Backoff{Policy: backoff.DefaultPolicy().WithMax(2 * time.Second)}
		for ctx.Err() == nil {
			in, stop, err := open(next)
			if err != nil {
				if bo.Wait(ctx, bo.Next()) != nil {
					return
				}
				continue
			}
			ended := false
			for !ended {
				select {
				case <-ctx.Done():
					stop()
					return
				case wr, ok := <-in:
					if !ok || wr.Err != nil {
						ended = true
						break
					}
					if wr.CompactRevision != 0 {
						stop()
						select {
						case out <- wr:
						case <-ctx.Done():
						}
						return
					}
					bo.Reset()
					if !deliverFrom(&wr, &next) {
						continue
					}
					select {
					case out <- wr:
					case <-ctx.Done():
						stop()
						return
					}
				}
			}
			stop()
			if bo.Wait(ctx, bo.Next()) != nil {
				return
			}
		}
	}()
	return out
}

// deliverFrom trims events below next (a resumed watch may repeat what was
// delivered) and advances next past what is left; false: nothing to pass on.
func deliverFrom(wr *WatchResponse, next *int64) bool {
	i := 0
	for i < len(wr.Events) && wr.Events[i].Kv.ModRevision < *next {
		i++
	}
	wr.Events = wr.Events[i:]
	switch {
	case len(wr.Events) > 0:
		*next = wr.Events[len(wr.Events)-1].Kv.ModRevision + 1
		return true
	case wr.Progress:
		*next = max(*next, wr.Revision+1)
		return true
	}
	return false
}

// Conn is the live client's gRPC connection, for serving etcd's own API
// through the agent (grpcapi): calls on it go to the members the client
// follows. It does not pin the client: a client replaced by UpdateEndpoints
// (plain ↔ TLS, new credentials) closes, and calls on its connection fail;
// take Conn again for each call or stream. ErrUnavailable while no member
// is reachable.
func (c *EtcdClient) Conn() (*grpc.ClientConn, error) {
	g, err := c.acquire()
	if err != nil {
		return nil, err
	}
	defer g.inflight.Done()
	if !c.reachable(g) {
		return nil, ErrUnavailable
	}
	return g.cli.ActiveConnection(), nil
}
