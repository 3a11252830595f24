package etcd

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/client/v3/concurrency"

	"udp_iaasd/internal/etcdtest"
)

// interval is one hold of a lock, by the test's clock.
type interval struct {
	who        string
	start, end time.Time
	token      int64
}

// Many contenders on three clients (three agents) and a Go program using
// concurrency.NewMutex directly: never two holders at once, and the fencing
// token grows from each holder to the next.
func TestLockMutualExclusion(t *testing.T) {
	cl := etcdtest.New(t, 3)
	var clients []*EtcdClient
	for range 3 {
		clients = append(clients, newTestClient(t, Config{Endpoints: cl.Endpoints()}))
	}
	ctx := ctxT(t, 90*time.Second)
	var (
		mu    sync.Mutex
		holds []interval
	)
	record := func(iv interval) {
		mu.Lock()
		holds = append(holds, iv)
		mu.Unlock()
	}
	var wg sync.WaitGroup
	for ci, c := range clients {
		for w := range 3 {
			wg.Go(func() {
				for i := range 4 {
					h, err := c.Lock(ctx, "mx", 10, "")
					if err != nil {
						t.Errorf("client %d worker %d: %v", ci, w, err)
						return
					}
					iv := interval{who: fmt.Sprintf("c%d/w%d/%d", ci, w, i), start: time.Now(), token: h.Revision}
					time.Sleep(5 * time.Millisecond)
					iv.end = time.Now()
					record(iv)
					if err := h.Release(ctx); err != nil {
						t.Errorf("release: %v", err)
					}
				}
			})
		}
	}
	// The stock client, as etcdctl lock does it.
	direct := cl.Client(t)
	wg.Go(func() {
		for i := range 4 {
			s, err := concurrency.NewSession(direct, concurrency.WithTTL(10))
			if err != nil {
				t.Error(err)
				return
			}
			m := concurrency.NewMutex(s, "mx")
			if err := m.Lock(ctx); err != nil {
				t.Error(err)
				return
			}
			resp, _ := direct.Get(ctx, m.Key())
			iv := interval{who: fmt.Sprintf("concurrency/%d", i), start: time.Now(), token: resp.Kvs[0].CreateRevision}
			time.Sleep(5 * time.Millisecond)
			iv.end = time.Now()
			record(iv)
			m.Unlock(ctx)
			s.Close()
		}
	})
	wg.Wait()
	if len(holds) != 3*3*4+4 {
		t.Fatalf("%d holds recorded", len(holds))
	}
	sort.Slice(holds, func(i, j int) bool { return holds[i].start.Before(holds[j].start) })
	for i := 1; i < len(holds); i++ {
		a, b := holds[i-1], holds[i]
		if b.start.Before(a.end) {
			t.Fatalf("%s held [%v, %v] while %s held from %v", a.who, a.start, a.end, b.who, b.start)
		}
		if b.token <= a.token {
			t.Fatalf("fencing token %d of %s after %d of %s", b.token, b.who, a.token, a.who)
		}
	}
	for _, c := range clients {
		etcdtest.Eventually(t, 10*time.Second, "sessions closed", func() bool { return c.Sessions() == 0 })
	}
}

// TryLock on a held lock names the holder; a wait that runs out gives up
// its place and names the holder too.
func TestLockTryAndWait(t *testing.T) {
	cl := etcdtest.New(t, 1)
	c := newTestClient(t, Config{Endpoints: cl.Endpoints()})
	ctx := ctxT(t, 30*time.Second)
	h, err := c.Lock(ctx, "tw", 10, "uid 7 pid 1 on test")
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.TryLock(ctx, "tw", 10, "")
	var le *LockedError
	if !errors.As(err, &le) || le.Key != h.Key || le.Revision != h.Revision || !errors.Is(err, ErrLocked) ||
		le.Holder != "uid 7 pid 1 on test" {
		t.Fatalf("try on a held lock: %v, want the holder %s/%d, uid 7 pid 1 on test", err, h.Key, h.Revision)
	}
	wctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	_, err = c.Lock(wctx, "tw", 10, "")
	cancel()
	if !errors.As(err, &le) || le.Key != h.Key {
		t.Fatalf("a wait that ran out: %v", err)
	}
	// Nobody is left waiting: only the holder's key exists.
	if r, err := c.Read(ctx, "tw/", ReadOptions{Prefix: true}); err != nil || len(r.KVs) != 1 {
		t.Fatalf("keys under tw/: %v %v", r.KVs, err)
	}
	h.Release(ctx)
	h2, err := c.TryLock(ctx, "tw", 10, "")
	if err != nil || h2.Revision <= h.Revision {
		t.Fatalf("after release: %v %v", h2, err)
	}
	h2.Release(ctx)
}

// Leases are shared: 1,000 locks on distinct names with one TTL use one
// lease; two holders of one name need two.
func TestLockSessionsShared(t *testing.T) {
	cl := etcdtest.New(t, 1)
	c := newTestClient(t, Config{Endpoints: cl.Endpoints()})
	ctx := ctxT(t, 120*time.Second)
	var held []*Hold
	for i := range 1000 {
		h, err := c.Lock(ctx, fmt.Sprintf("many/%d", i), 10, "")
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, h)
	}
	if n := c.Sessions(); n != 1 {
		t.Fatalf("1,000 locks on distinct names hold %d leases, want 1", n)
	}
	// A second contender for a held name gets a lease of its own (on the
	// same lease it would be the holder itself).
	wctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	_, err := c.Lock(wctx, "many/0", 10, "")
	cancel()
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("second contender: %v", err)
	}
	for _, h := range held {
		h.Release(ctx)
	}
	etcdtest.Eventually(t, 10*time.Second, "the lease revoked", func() bool { return c.Sessions() == 0 })
}

// A hold whose lease is gone (revoked behind its back, as an expiry would)
// is Lost, and the next contender gets the lock.
func TestLockLost(t *testing.T) {
	cl := etcdtest.New(t, 1)
	c := newTestClient(t, Config{Endpoints: cl.Endpoints()})
	ctx := ctxT(t, 30*time.Second)
	h, err := c.Lock(ctx, "lost", 5, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Client(t).Revoke(ctx, h.s.cs.Lease()); err != nil {
		t.Fatal(err)
	}
	select {
	case <-h.Lost():
	case <-time.After(10 * time.Second):
		t.Fatal("a hold whose lease was revoked is not Lost")
	}
	h2, err := c.TryLock(ctx, "lost", 5, "")
	if err != nil {
		t.Fatalf("after the loss: %v", err)
	}
	h2.Release(ctx)
	h.Release(ctx)
}

// Elections: one leader at a time, Observe sees each, and the stock
// concurrency.Election agrees on who leads.
func TestElection(t *testing.T) {
	cl := etcdtest.New(t, 1)
	c := newTestClient(t, Config{Endpoints: cl.Endpoints()})
	ctx := ctxT(t, 30*time.Second)
	if _, err := c.ElectionLeader(ctx, "el"); !errors.Is(err, ErrNoLeader) {
		t.Fatalf("leader of an empty election: %v", err)
	}
	obs, err := c.ObserveLeader(ctx, "el")
	if err != nil {
		t.Fatal(err)
	}
	if l := <-obs; l.Key != "" {
		t.Fatalf("first observation %+v, want none", l)
	}
	a, err := c.Campaign(ctx, "el", "a", 10)
	if err != nil {
		t.Fatal(err)
	}
	if l := <-obs; l.Key != a.Key || string(l.Value) != "a" || l.Revision != a.Revision {
		t.Fatalf("observed %+v, want a (%s)", l, a.Key)
	}
	bc := make(chan *Hold, 1)
	go func() {
		b, err := c.Campaign(ctx, "el", "b", 10)
		if err != nil {
			t.Error(err)
		}
		bc <- b
	}()
	// The stock election sees a as leader.
	s, err := concurrency.NewSession(cl.Client(t))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if resp, err := concurrency.NewElection(s, "el").Leader(ctx); err != nil || string(resp.Kvs[0].Value) != "a" {
		t.Fatalf("concurrency.Election's leader: %v %v", resp, err)
	}
	a.Release(ctx)
	b := <-bc
	if l := <-obs; l.Key != b.Key || string(l.Value) != "b" {
		t.Fatalf("observed %+v after a resigned, want b", l)
	}
	if b.Revision <= a.Revision {
		t.Fatalf("b's revision %d not after a's %d", b.Revision, a.Revision)
	}
	b.Release(ctx)
}
