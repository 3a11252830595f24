package cache

import (
	"context"
	"fmt"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"udp_iaasd/etcd"
	"udp_iaasd/internal/etcdtest"
)

// testStaleness is the caches' max staleness in these tests.
const testStaleness = 300 * time.Millisecond

func start(t *testing.T, cluster *etcdtest.Cluster, prefixes ...string) (*Cache, *clientv3.Client) {
	t.Helper()
	ec, err := etcd.New(etcd.Config{Endpoints: cluster.Endpoints(), StatusProbeInterval: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	c := New(ec, Options{Prefixes: prefixes, MaxStaleness: testStaleness, Logger: etcdtest.Logger(t)})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done; ec.Close() })
	return c, cluster.Client(t)
}

// The cache follows writers elsewhere: every change made directly in etcd
// shows, at a revision that includes it, and a read never sees a revision
// older than one it saw before.
func TestFollowsWritersElsewhere(t *testing.T) {
	cluster := etcdtest.New(t, 3)
	ctx := context.Background()
	direct := cluster.Client(t)
	for i := range 5 {
		direct.Put(ctx, fmt.Sprintf("app/%d", i), "initial")
	}
	c, _ := start(t, cluster, "app/", "app/nested/")
	etcdtest.Eventually(t, 10*time.Second, "synced", c.Synced)

	kvs, count, more, _, ok := c.List("app/", 3, Fresh)
	if !ok || len(kvs) != 3 || count != 5 || !more || string(kvs[0].Key) != "app/0" {
		t.Fatalf("List = %d kvs, count %d, more %v, ok %v", len(kvs), count, more, ok)
	}
	var lastRev int64
	for i := range 30 {
		resp, err := direct.Put(ctx, fmt.Sprintf("app/%d", i%7), fmt.Sprint(i))
		if err != nil {
			t.Fatal(err)
		}
		want := resp.Header.Revision
		etcdtest.Eventually(t, 10*time.Second, "the write to show", func() bool {
			kv, info, ok := c.Get(fmt.Sprintf("app/%d", i%7), Fresh)
			if ok && info.Rev < lastRev {
				t.Fatalf("revision went back from %d to %d", lastRev, info.Rev)
			}
			if ok {
				lastRev = info.Rev
			}
			return ok && kv != nil && string(kv.Value) == fmt.Sprint(i) && kv.ModRevision == want && info.Rev >= want
		})
	}
	resp, _ := direct.Delete(ctx, "app/3")
	etcdtest.Eventually(t, 10*time.Second, "the delete to show", func() bool {
		kv, info, ok := c.Get("app/3", Fresh)
		return ok && kv == nil && info.Rev >= resp.Header.Revision
	})
	// Keys outside every prefix are not answered.
	if _, _, ok := c.Get("other/x", Fresh); ok {
		t.Fatal("a key outside the cached prefixes was answered")
	}
	// Writes outside the prefix still advance its revision (progress).
	resp2, _ := direct.Put(ctx, "elsewhere", "x")
	etcdtest.Eventually(t, 10*time.Second, "progress past an unrelated write", func() bool {
		_, info, ok := c.Get("app/0", Fresh)
		return ok && info.Rev >= resp2.Header.Revision
	})
	// Every cached value equals etcd's at the cache's revision.
	_, info, _ := c.Get("app/0", Fresh)
	got, _, _, _, _ := c.List("app/", 0, Fresh)
	want, err := direct.Get(ctx, "app/", clientv3.WithPrefix(), clientv3.WithRev(info.Rev))
	if err != nil || len(want.Kvs) != len(got) {
		t.Fatalf("etcd at %d has %d keys, cache %d (%v)", info.Rev, len(want.Kvs), len(got), err)
	}
	for i := range got {
		if string(got[i].Key) != string(want.Kvs[i].Key) || string(got[i].Value) != string(want.Kvs[i].Value) ||
			got[i].ModRevision != want.Kvs[i].ModRevision {
			t.Fatalf("entry %d: cache %s=%s@%d, etcd %s=%s@%d", i, got[i].Key, got[i].Value, got[i].ModRevision,
				want.Kvs[i].Key, want.Kvs[i].Value, want.Kvs[i].ModRevision)
		}
	}
}

// A write through the agent is not hidden by an older copy: reads wait for
// the cache to catch up with it (they fall through to etcd meanwhile).
func TestReadYourWrites(t *testing.T) {
	cluster := etcdtest.New(t, 1)
	c, direct := start(t, cluster, "app/")
	etcdtest.Eventually(t, 10*time.Second, "synced", c.Synced)
	c.Wrote("app/k", 1<<40) // a revision the store has not reached
	if _, _, ok := c.Get("app/k", Fresh); ok {
		t.Fatal("answered before catching up with this agent's own write")
	}
	resp, _ := direct.Put(context.Background(), "app/k", "v")
	c2, _ := start(t, cluster, "app/")
	etcdtest.Eventually(t, 10*time.Second, "second cache synced", c2.Synced)
	c2.Wrote("app/k", resp.Header.Revision)
	etcdtest.Eventually(t, 10*time.Second, "caught up", func() bool {
		kv, _, ok := c2.Get("app/k", Fresh)
		return ok && kv != nil && string(kv.Value) == "v"
	})
}

// With etcd away the cache stops answering (within maxStaleness) instead of
// serving an ever older copy, and resyncs when etcd returns.
func TestStopsAnsweringWhenEtcdIsAway(t *testing.T) {
	cluster := etcdtest.New(t, 1)
	c, _ := start(t, cluster, "app/")
	etcdtest.Eventually(t, 10*time.Second, "synced", c.Synced)
	etcdtest.Eventually(t, 10*time.Second, "answering", func() bool { _, _, ok := c.Get("app/x", Fresh); return ok })
	cluster.StopAll()
	etcdtest.Eventually(t, 10*time.Second, "no longer answering", func() bool { _, _, ok := c.Get("app/x", Fresh); return !ok })
	if err := cluster.RestartAll(); err != nil {
		t.Fatal(err)
	}
	etcdtest.Eventually(t, 10*time.Second, "answering again", func() bool { _, _, ok := c.Get("app/x", Fresh); return ok })
}

// Freshness is confirmed on demand. A prefix nobody reads costs etcd no
// progress requests at all; a read of a copy that has heard nothing for
// longer than maxStaleness asks for one and goes to etcd meanwhile, and the
// reads after it are answered from the copy; under a steady read load the
// progress requests are bounded by one per maxStaleness. The counts are the
// member's own.
//
// A watch such as the API opens (require-leader, from the current revision
// + 1 on a quiet key) is open meanwhile: etcd answers a progress request
// only when every watcher of its gRPC stream is synced, so the cache must
// not share its stream, and its own watch starts at the listed revision for
// the same reason. Without either, no progress ever arrives here and the
// copy never answers again.
func TestProgressIsDemandDriven(t *testing.T) {
	cluster := etcdtest.New(t, 1)
	member := cluster.Members[0]
	direct := cluster.Client(t)
	put, err := direct.Put(context.Background(), "quiet/k", "v")
	if err != nil {
		t.Fatal(err)
	}
	c, _ := start(t, cluster, "quiet/")
	etcdtest.Eventually(t, 10*time.Second, "synced", c.Synced)
	p := c.prefixes[0]
	wctx, wcancel := context.WithCancel(clientv3.WithRequireLeader(context.Background()))
	defer wcancel()
	if _, err := p.ec.WatchKV(wctx, "elsewhere", etcd.WatchOptions{Rev: put.Header.Revision + 1}); err != nil {
		t.Fatal(err)
	}

	// Nobody reads: nothing is asked, however long the copy sits.
	before := member.ProgressRequests()
	time.Sleep(5 * testStaleness)
	if n := member.ProgressRequests() - before; n != 0 {
		t.Fatalf("%d progress requests with no reads, want 0", n)
	}

	// A read of the stale copy is not answered from it, and asks.
	if _, _, ok := c.Get("quiet/k", Fresh); ok {
		t.Fatal("a copy silent for longer than maxStaleness answered")
	}
	etcdtest.Eventually(t, 10*time.Second, "an answer from the quiet copy after one read asked for progress", func() bool {
		kv, info, ok := c.Get("quiet/k", Fresh)
		return ok && string(kv.Value) == "v" && info.Rev >= put.Header.Revision
	})
	if member.ProgressRequests() == before {
		t.Fatal("the copy answers again, but no progress request reached etcd")
	}

	// A steady read load: at most one progress request per maxStaleness
	// (plus the one in flight at the start), whatever the number of reads.
	before = member.ProgressRequests()
	start := time.Now()
	var reads int
	for time.Since(start) < 6*testStaleness {
		c.Get("quiet/k", Fresh)
		reads++
	}
	elapsed := time.Since(start)
	n := member.ProgressRequests() - before
	t.Logf("%d reads in %v asked for progress %d times", reads, elapsed, n)
	if limit := int64(elapsed/testStaleness) + 2; n > limit || n == 0 {
		t.Fatalf("%d progress requests for %d reads over %v, want 1..%d", n, reads, elapsed, limit)
	}
}
