package etcd

import (
	"context"
	"errors"
	"fmt"
	"sync"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"udp_iaasd/backoff"
)

// Locks and elections for local processes (API.md "Locks", "Elections"),
// on etcd's concurrency package, so that their keys are the ones etcdctl
// lock / etcdctl elect and Go programs using concurrency.NewMutex and
// NewElection use: holders through endpointd and through those exclude one
// another.
//
// Leases are shared. Every lock or candidacy needs a lease that the agent
// keeps alive; one per holder would be one lease (and its keepalives) per
// lock. Instead holders with the same TTL share a session (one lease), and a
// session is shared by at most one holder or waiter per name — the key a
// concurrency.Mutex or Election writes is NAME/LEASE, so two contenders for
// one name on one lease would be the same contender. 1,000 locks on
// distinct names cost one lease; N local contenders for one name cost N.
// (clientv3 sends all of a client's keepalives on one stream whatever the
// number of leases.) A holder is released by deleting its key, at once; the
// lease is revoked when its last user leaves. If the agent dies, the lease
// expires after its TTL and etcd deletes every key on it.

// ErrLocked is TryLock's answer when another holder has the lock; Holder
// names it.
var ErrLocked = errors.New("etcd: locked by another holder")

// LockedError is ErrLocked with the current holder's key and revision, and
// the identity it wrote as its key's value ("" for a holder that wrote none,
// such as etcdctl lock).
type LockedError struct {
	Key      string
	Revision int64
	Holder   string
}

func (e *LockedError) Error() string {
	if e.Holder != "" {
		return fmt.Sprintf("etcd: locked by %s (key %s, revision %d)", e.Holder, e.Key, e.Revision)
	}
	return fmt.Sprintf("etcd: locked by %s (revision %d)", e.Key, e.Revision)
}

func (e *LockedError) Unwrap() error { return ErrLocked }

// ErrNoLeader is Leader's answer for an election without candidates.
var ErrNoLeader = errors.New("etcd: the election has no leader")

// Hold is a held lock or won election.
type Hold struct {
	// Key is the holder's key (NAME/LEASE in hex); Revision its create
	// revision — the fencing token, which grows from each holder to the next.
	Key      string
	Revision int64

	s       *session
	name    string
	release func(ctx context.Context) error
	once    sync.Once
	err     error
}

// Lost is closed when the hold ends without Release: the lease could not
// be kept alive (etcd unreachable for longer than the TTL) or the client
// was closed.
func (h *Hold) Lost() <-chan struct{} { return h.s.cs.Done() }

// Release gives the lock up (or resigns the election) at once. It is
// idempotent; its error says whether the key was deleted (if not, it goes
// with the lease, within the TTL).
func (h *Hold) Release(ctx context.Context) error {
	h.once.Do(func() {
		h.err = h.release(ctx)
		h.s.pool.put(h.s, h.name)
	})
	return h.err
}

// Lock takes the lock name with a lease of ttl seconds, waiting for it
// until ctx ends (then the wait is given up, its key deleted, and a
// *LockedError names the holder when there is one). identity, when set, is
// written as the holder's key's value once the lock is held, so that those
// who find it held can say who holds it; the key's create revision — the
// fencing token, and concurrency.Mutex's order — does not change.
func (c *EtcdClient) Lock(ctx context.Context, name string, ttl int64, identity string) (*Hold, error) {
	return c.lock(ctx, name, ttl, false, identity)
}

// TryLock is Lock without the wait: a held lock is a *LockedError at once.
func (c *EtcdClient) TryLock(ctx context.Context, name string, ttl int64, identity string) (*Hold, error) {
	return c.lock(ctx, name, ttl, true, identity)
}

func (c *EtcdClient) lock(ctx context.Context, name string, ttl int64, try bool, identity string) (*Hold, error) {
	s, err := c.sessions.get(ctx, c, name, ttl)
	if err != nil {
		return nil, err
	}
	m := concurrency.NewMutex(s.cs, name)
	if try {
		err = m.TryLock(ctx)
	} else {
		err = m.Lock(ctx)
	}
	if err != nil {
		s.pool.put(s, name)
		if errors.Is(err, concurrency.ErrLocked) || (ctx.Err() != nil && !try) {
			return nil, c.holder(s.cli, name+"/", err)
		}
		return nil, err
	}
	rev, err := holdKey(ctx, s.cli, m.Key(), identity)
	if err != nil {
		rctx, cancel := c.bound(context.WithoutCancel(ctx))
		m.Unlock(rctx)
		cancel()
		s.pool.put(s, name)
		return nil, err
	}
	return &Hold{Key: m.Key(), Revision: rev, s: s, name: name, release: func(ctx context.Context) error {
		ctx, cancel := c.bound(ctx)
		defer cancel()
		return m.Unlock(ctx)
	}}, nil
}

// holder turns a lock wait that failed into a *LockedError naming the
// current holder (the oldest key under pfx), or returns why not.
func (c *EtcdClient) holder(cli *clientv3.Client, pfx string, cause error) error {
	ctx, cancel := c.bound(context.Background())
	defer cancel()
	resp, err := cli.Get(ctx, pfx, clientv3.WithFirstCreate()...)
	if err != nil || len(resp.Kvs) == 0 {
		if errors.Is(cause, concurrency.ErrLocked) {
			return ErrLocked
		}
		return cause
	}
	return &LockedError{Key: string(resp.Kvs[0].Key), Revision: resp.Kvs[0].CreateRevision, Holder: string(resp.Kvs[0].Value)}
}

// holdKey writes identity into a held lock's key (keeping its lease) and
// returns the key's create revision, in one transaction; without an
// identity it only reads it. A key that is gone means the session expired.
func holdKey(ctx context.Context, cli *clientv3.Client, key, identity string) (int64, error) {
	var ops []clientv3.Op
	if identity != "" {
		ops = append(ops, clientv3.OpPut(key, identity, clientv3.WithIgnoreLease()))
	}
	resp, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), ">", 0)).
		Then(append(ops, clientv3.OpGet(key))...).Commit()
	if err != nil {
		return 0, err
	}
	if !resp.Succeeded {
		return 0, concurrency.ErrSessionExpired
	}
	kvs := resp.Responses[len(resp.Responses)-1].GetResponseRange().Kvs
	if len(kvs) == 0 {
		return 0, concurrency.ErrSessionExpired
	}
	return kvs[0].CreateRevision, nil
}

// Campaign runs for leader of the election name with value, waiting until
// elected or ctx ends.
func (c *EtcdClient) Campaign(ctx context.Context, name, value string, ttl int64) (*Hold, error) {
	s, err := c.sessions.get(ctx, c, name, ttl)
	if err != nil {
		return nil, err
	}
	e := concurrency.NewElection(s.cs, name)
	if err := e.Campaign(ctx, value); err != nil {
		s.pool.put(s, name)
		return nil, err
	}
	return &Hold{Key: e.Key(), Revision: e.Rev(), s: s, name: name, release: func(ctx context.Context) error {
		ctx, cancel := c.bound(ctx)
		defer cancel()
		return e.Resign(ctx)
	}}, nil
}

// Leader is the current leader of the election name.
type Leader struct {
	Key      string
	Value    []byte
	Revision int64 // the leader key's create revision
}

// ElectionLeader returns the current leader of name, or ErrNoLeader.
func (c *EtcdClient) ElectionLeader(ctx context.Context, name string) (Leader, error) {
	l, _, err := c.leaderAt(ctx, name)
	return l, err
}

// leaderAt reads the leader (the oldest key under NAME/, as
// concurrency.Election has it) and the revision it was read at.
func (c *EtcdClient) leaderAt(ctx context.Context, name string) (Leader, int64, error) {
	var (
		l   Leader
		rev int64
	)
	err := c.do(ctx, func(ctx context.Context, cli *clientv3.Client) error {
		resp, err := cli.Get(ctx, name+"/", clientv3.WithFirstCreate()...)
		if err != nil {
			return err
		}
		rev = resp.Header.Revision
		if len(resp.Kvs) == 0 {
			return ErrNoLeader
		}
		kv := resp.Kvs[0]
		l = Leader{Key: string(kv.Key), Value: kv.Value, Revision: kv.CreateRevision}
		return nil
	})
	return l, rev, err
}

// ObserveLeader sends the current leader of name and each change (a zero
// Leader while there is none) until ctx ends or the observation fails; the
// channel closes then. Each change is read again after any event under the
// election's prefix since the last read, so none is missed.
func (c *EtcdClient) ObserveLeader(ctx context.Context, name string) (<-chan Leader, error) {
	cur, rev, err := c.leaderAt(ctx, name)
	if err != nil && !errors.Is(err, ErrNoLeader) {
		return nil, err
	}
	out := make(chan Leader)
	go func() {
		defer close(out)
		var last Leader
		sent := false
		bo := backoff.Backoff{Policy: followBackoff}
		for first := true; ctx.Err() == nil; first = false {
			if !first { // the first read is the one that vouched for the observation
				var err error
				if cur, rev, err = c.leaderAt(ctx, name); err != nil && !errors.Is(err, ErrNoLeader) {
					return
				}
			}
			if !sent || cur.Key != last.Key || cur.Revision != last.Revision || string(cur.Value) != string(last.Value) {
				select {
				case out <- cur:
				case <-ctx.Done():
					return
				}
				last, sent = cur, true
			}
			wctx, cancel := context.WithCancel(ctx)
			wch, err := c.WatchKV(wctx, name+"/", WatchOptions{Prefix: true, Rev: rev + 1})
			if err != nil {
				cancel()
				return
			}
			failed := false
			for wr := range wch {
				if wr.ended() || len(wr.Events) > 0 {
					failed = wr.Err != nil
					break
				}
			}
			cancel()
			if !failed {
				bo.Reset()
			} else if bo.Wait(ctx, bo.Next()) != nil { // the member lost its leader: read again shortly
				return
			}
		}
	}()
	return out, nil
}

// sessionPool shares leases between holders (see the top of this file).
type sessionPool struct {
	c       *EtcdClient
	closing sync.WaitGroup // leases of sessions no longer used, being revoked

	mu    sync.Mutex // guards byTTL
	byTTL map[int64][]*session
}

type session struct {
	pool  *sessionPool
	cs    *concurrency.Session
	cli   *clientv3.Client
	ttl   int64
	names map[string]bool // names this session holds or waits for; guarded by pool.mu
}

// get returns a live session of ttl not yet used for name, making one when
// there is none (which grants a lease: one round trip).
func (p *sessionPool) get(ctx context.Context, c *EtcdClient, name string, ttl int64) (*session, error) {
	g, err := c.acquire()
	if err != nil {
		return nil, err
	}
	// Held until the session is made: the client cannot be retired (and
	// closed) under the grant.
	defer g.inflight.Done()
	cli := g.cli
	rctx, cancel := c.bound(ctx)
	ok := c.reachable(rctx, g)
	cancel()
	if !ok {
		return nil, ErrUnavailable
	}
	p.mu.Lock()
	for _, s := range p.byTTL[ttl] {
		if !s.names[name] && s.cli == cli && s.alive() {
			s.names[name] = true
			p.mu.Unlock()
			return s, nil
		}
	}
	p.mu.Unlock()
	gctx, cancel := c.bound(ctx)
	defer cancel()
	lease, err := cli.Grant(gctx, ttl)
	if err != nil {
		return nil, err
	}
	cs, err := concurrency.NewSession(cli, concurrency.WithLease(lease.ID), concurrency.WithTTL(int(ttl)))
	if err != nil {
		return nil, err
	}
	s := &session{pool: p, cs: cs, cli: cli, ttl: ttl, names: map[string]bool{name: true}}
	p.mu.Lock()
	if p.byTTL == nil {
		p.byTTL = map[int64][]*session{}
	}
	p.byTTL[ttl] = append(p.byTTL[ttl], s)
	p.mu.Unlock()
	return s, nil
}

func (s *session) alive() bool {
	select {
	case <-s.cs.Done():
		return false
	default:
		return true
	}
}

// put gives name's use of s back; the last user closes the session, which
// revokes its lease.
func (p *sessionPool) put(s *session, name string) {
	p.mu.Lock()
	delete(s.names, name)
	last := len(s.names) == 0
	if last {
		list := p.byTTL[s.ttl]
		for i, x := range list {
			if x == s {
				p.byTTL[s.ttl] = append(list[:i:i], list[i+1:]...)
				break
			}
		}
	}
	p.mu.Unlock()
	if last {
		// Revoking the lease needs a round trip; the caller does not wait
		// for it, Close does (closing), bounded by the request timeout.
		s.cs.Orphan() // stop keeping it alive
		p.closing.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), p.c.requestTimeout())
			defer cancel()
			s.cli.Revoke(ctx, s.cs.Lease()) // failing, it expires with its TTL
		})
	}
}

// Sessions counts the leases held for locks and elections (metrics, tests).
func (c *EtcdClient) Sessions() int {
	c.sessions.mu.Lock()
	defer c.sessions.mu.Unlock()
	n := 0
	for _, l := range c.sessions.byTTL {
		n += len(l)
	}
	return n
}
