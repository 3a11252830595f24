package etcdtest

import (
	"context"
	"sync"
	"testing"
	"time"
)

// The harness itself: a three-member cluster serves, survives one member
// stopping, and a restarted member catches up from its data directory.
func TestClusterStopRestart(t *testing.T) {
	c := New(t, 3)
	cli := c.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, "k", "v1"); err != nil {
		t.Fatalf("put: %v", err)
	}
	c.Members[0].Stop()
	if c.Members[0].Running() {
		t.Fatal("stopped member reports running")
	}
	if _, err := cli.Put(ctx, "k", "v2"); err != nil {
		t.Fatalf("put with one member stopped: %v", err)
	}
	if err := c.Members[0].Restart(); err != nil {
		t.Fatalf("restart: %v", err)
	}
	// Read from the restarted member alone, serializably, until it has caught up.
	solo := DirectClient(t, []string{c.Members[0].Endpoint()})
	for {
		resp, err := solo.Get(ctx, "k")
		if err == nil && len(resp.Kvs) == 1 && string(resp.Kvs[0].Value) == "v2" {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("restarted member never caught up: %v %v", resp, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Stopping members while clients send Status RPCs must not crash the
// process: etcd v3.7.3 answers a Status in the window where its backend is
// closed with a nil-pointer panic (etcd-io/etcd#22189), which rpcGate keeps
// closed. Without the gate this panicked within 40 rounds here.
func TestStopUnderStatusLoad(t *testing.T) {
	for range 40 {
		c, err := Start(Options{Members: 1, Dir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		cli := DirectClient(t, c.Endpoints())
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		for range 8 {
			wg.Go(func() {
				for ctx.Err() == nil {
					cli.Status(ctx, c.Members[0].Endpoint())
				}
			})
		}
		c.Close()
		cancel()
		wg.Wait()
	}
}
