package client_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"udp_iaasd/client"
	"udp_iaasd/internal/etcdtest"
)

// The Go client's locks and elections against a real agent: a held lock
// excludes, names its holder when a wait runs out, passes on at Release
// with a larger token; a hold whose agent goes away is Lost; elections
// agree between Campaign, Leader and Observe.
func TestLockAndElection(t *testing.T) {
	cluster := etcdtest.New(t, 1)
	sock := filepath.Join(t.TempDir(), "a.sock")
	serveAgent(t, cluster, sock)
	c := client.New(sock, client.Options{})
	ctx := context.Background()

	h, err := c.Lock(ctx, "cl", client.HoldTTL(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Lock(ctx, "cl", client.LockWait(0))
	var e *client.Error
	if !errors.Is(err, client.ErrLocked) || !errors.As(err, &e) || e.HolderKey != h.Key || e.HolderRevision != h.Revision {
		t.Fatalf("try on a held lock: %v", err)
	}
	wctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	_, err = c.Lock(wctx, "cl")
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a wait cut by ctx: %v", err)
	}
	got := make(chan *client.Hold, 1)
	go func() {
		h2, err := c.Lock(ctx, "cl")
		if err != nil {
			t.Error(err)
		}
		got <- h2
	}()
	// The second is waiting once its key is there beside the holder's.
	direct := cluster.Client(t)
	etcdtest.Eventually(t, 10*time.Second, "the second to wait", func() bool {
		resp, err := direct.Get(ctx, "cl/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		return err == nil && resp.Count == 2
	})
	h.Release()
	h2 := <-got
	if h2 == nil || h2.Revision <= h.Revision {
		t.Fatalf("next holder %+v after %d", h2, h.Revision)
	}
	select {
	case <-h.Lost():
		t.Fatal("a released hold reports Lost")
	default:
	}
	h2.Release()

	// Elections.
	obsCtx, stopObs := context.WithCancel(ctx)
	defer stopObs()
	seen := make(chan client.Leader, 8)
	go func() {
		for l, err := range c.Observe(obsCtx, "ce") {
			if err != nil {
				return
			}
			seen <- l
		}
	}()
	a, err := c.Campaign(ctx, "ce", []byte("alpha"))
	if err != nil {
		t.Fatal(err)
	}
	if l, err := c.Leader(ctx, "ce"); err != nil || string(l.Value) != "alpha" || l.Revision != a.Revision {
		t.Fatalf("Leader = %+v, %v", l, err)
	}
	if l := <-seen; string(l.Value) != "alpha" {
		t.Fatalf("observed %+v", l)
	}
	// Release closes the connection; the agent resigns when it sees it go.
	a.Release()
	etcdtest.Eventually(t, 5*time.Second, "no leader after the only candidate left", func() bool {
		_, err := c.Leader(ctx, "ce")
		return errors.Is(err, client.ErrNotFound)
	})
}

// A lock asked for while the agent is not there yet (a restart without
// socket activation) is retried like any request that cannot have taken
// effect, and taken once the agent answers; with retries off it fails at
// once as unavailable.
func TestLockWaitsForAStartingAgent(t *testing.T) {
	cluster := etcdtest.New(t, 1)
	sock := filepath.Join(t.TempDir(), "late.sock")
	if _, err := client.New(sock, client.Options{RetryMax: -1}).Lock(context.Background(), "late"); !errors.Is(err, client.ErrUnavailable) {
		t.Fatalf("no agent, no retries: %v", err)
	}
	go func() {
		time.Sleep(300 * time.Millisecond)
		serveAgent(t, cluster, sock)
	}()
	c := client.New(sock, client.Options{RetryMax: 20, Backoff: fastBackoff})
	h, err := c.Lock(context.Background(), "late", client.HoldTTL(5*time.Second))
	if err != nil {
		t.Fatalf("Lock while the agent starts: %v", err)
	}
	if h.Revision <= 0 {
		t.Fatalf("hold without a fencing token: %+v", h)
	}
	h.Release()
}
