package grpcapi_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3lock/v3lockpb"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"udp_iaasd/access"
	"udp_iaasd/etcd"
	"udp_iaasd/internal/etcdtest"
	"udp_iaasd/internal/sockettest"
)

func TestMain(m *testing.M) {
	etcdtest.RunMemberIfRequested()
	os.Exit(m.Run())
}

// agent is the gRPC socket, with its access gate, in front of a real
// cluster.
type agent struct {
	ec   *etcd.EtcdClient
	gate *access.Gate
	sock string
}

func startAgent(t *testing.T, endpoints []string, policy *access.Policy) *agent {
	t.Helper()
	return startAgentWith(t, endpoints, policy, nil)
}

// startAgentWith also serves serializable ranges under cachePrefixes from
// the agent's read cache.
func startAgentWith(t *testing.T, endpoints []string, policy *access.Policy, cachePrefixes []string) *agent {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "etcd.sock")
	s := sockettest.Serve(t, sockettest.Options{Endpoints: endpoints, GRPC: sock, Policy: policy, CachePrefixes: cachePrefixes,
		Logger: slog.New(slog.NewTextHandler(etcdtest.LogWriter(t), nil))})
	return &agent{ec: s.Etcd, gate: s.Gate, sock: sock}
}

// stock is an unmodified clientv3 client of the socket.
func (a *agent) stock(t *testing.T) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{"unix://" + a.sock}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// A stock clientv3 client does its whole KV, lease, lock, election and
// cluster-reading repertoire through the socket.
func TestStockClient(t *testing.T) {
	cl := etcdtest.New(t, 3)
	a := startAgent(t, cl.Endpoints(), nil)
	cli := a.stock(t)
	ctx := ctxT(t, 30*time.Second)

	if _, err := cli.Put(ctx, "g/a", "1"); err != nil {
		t.Fatal(err)
	}
	if r, err := cli.Get(ctx, "g/", clientv3.WithPrefix()); err != nil || len(r.Kvs) != 1 || string(r.Kvs[0].Value) != "1" {
		t.Fatalf("get: %v %v", r, err)
	}
	tr, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.Value("g/a"), "=", "1")).
		Then(clientv3.OpPut("g/b", "2"), clientv3.OpGet("g/", clientv3.WithPrefix())).Commit()
	if err != nil || !tr.Succeeded || tr.Responses[1].GetResponseRange().Count != 2 {
		t.Fatalf("txn: %v %v", tr, err)
	}
	if r, err := cli.Delete(ctx, "g/", clientv3.WithPrefix()); err != nil || r.Deleted != 2 {
		t.Fatalf("delete: %v %v", r, err)
	}

	lease, err := cli.Grant(ctx, 30)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, "g/leased", "x", clientv3.WithLease(lease.ID)); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.KeepAliveOnce(ctx, lease.ID); err != nil {
		t.Fatalf("keepalive: %v", err)
	}
	if ttl, err := cli.TimeToLive(ctx, lease.ID); err != nil || ttl.TTL <= 0 {
		t.Fatalf("ttl: %v %v", ttl, err)
	}
	if ls, err := cli.Leases(ctx); err != nil || len(ls.Leases) != 1 {
		t.Fatalf("leases: %v %v", ls, err)
	}
	if _, err := cli.Revoke(ctx, lease.ID); err != nil {
		t.Fatal(err)
	}
	if r, _ := cli.Get(ctx, "g/leased"); len(r.Kvs) != 0 {
		t.Fatal("the revoked lease's key is still there")
	}

	// concurrency.Mutex (what etcdctl lock uses) and etcd's lock service.
	s, err := concurrency.NewSession(cli, concurrency.WithTTL(10))
	if err != nil {
		t.Fatal(err)
	}
	m := concurrency.NewMutex(s, "g/lock")
	if err := m.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	m.Unlock(ctx)
	lr, err := v3lockpb.NewLockClient(cli.ActiveConnection()).Lock(ctx, &v3lockpb.LockRequest{Name: []byte("g/svc"), Lease: int64(s.Lease())})
	if err != nil {
		t.Fatalf("lock service: %v", err)
	}
	if _, err := v3lockpb.NewLockClient(cli.ActiveConnection()).Unlock(ctx, &v3lockpb.UnlockRequest{Key: lr.Key}); err != nil {
		t.Fatal(err)
	}
	e := concurrency.NewElection(s, "g/elect")
	if err := e.Campaign(ctx, "me"); err != nil {
		t.Fatal(err)
	}
	if l, err := e.Leader(ctx); err != nil || string(l.Kvs[0].Value) != "me" {
		t.Fatalf("leader: %v %v", l, err)
	}
	e.Resign(ctx)
	s.Close()

	if ml, err := cli.MemberList(ctx); err != nil || len(ml.Members) != 3 {
		t.Fatalf("member list: %v %v", ml, err)
	}
	if st, err := cli.Status(ctx, "unix://"+a.sock); err != nil || st.Header.ClusterId == 0 {
		t.Fatalf("status: %v %v", st, err)
	}

	// What changes or exposes the cluster beyond keys is refused.
	denied := func(what string, err error) {
		t.Helper()
		if status.Code(err) != codes.PermissionDenied && !errors.Is(err, rpctypes.ErrPermissionDenied) {
			t.Errorf("%s: %v, want PermissionDenied", what, err)
		}
	}
	_, err = cli.Compact(ctx, 1)
	denied("compact", err)
	_, err = cli.MemberAdd(ctx, []string{"http://127.0.0.1:1"})
	denied("member add", err)
	_, err = cli.Defragment(ctx, "unix://"+a.sock)
	denied("defragment", err)
	_, err = cli.AlarmDisarm(ctx, &clientv3.AlarmMember{Alarm: pb.AlarmType_NOSPACE})
	denied("alarm disarm", err)
	// Harmless, and asked by stock tools (etcdctl endpoint health): served.
	if as, err := cli.AuthStatus(ctx); err != nil || as.Enabled {
		t.Errorf("auth status: %+v, %v", as, err)
	}
	if al, err := cli.AlarmList(ctx); err != nil || len(al.Alarms) != 0 {
		t.Errorf("alarm list: %+v, %v", al, err)
	}
}

// Watches through the socket see every write exactly once, in order,
// across an endpoints reload and a member killed with SIGKILL; and a gRPC
// watch and an HTTP watch on one prefix share one upstream etcd watch.
func TestWatchAcrossReloadAndKill(t *testing.T) {
	cl := etcdtest.NewProc(t, 3)
	eps := cl.Endpoints()
	a := startAgent(t, eps, nil)
	cli := a.stock(t)
	ctx := ctxT(t, 90*time.Second)

	wch := cli.Watch(clientv3.WithRequireLeader(ctx), "w/", clientv3.WithPrefix())
	etcdtest.Eventually(t, 10*time.Second, "the gRPC watch on a shared upstream watch", func() bool { return a.ec.WatchHubs() == 1 })
	// The same prefix through the agent's shared watches, as an HTTP watch
	// from now on joins them: still one upstream watch.
	now, err := a.ec.Read(ctx, "w/", etcd.ReadOptions{CountOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	sub := a.ec.Subscribe("w/", true, now.Revision+1)
	if sub == nil {
		t.Fatal("the shared watch did not take a second subscriber")
	}
	defer sub.Close()
	if n := a.ec.WatchHubs(); n != 1 {
		t.Fatalf("%d upstream watches for one prefix", n)
	}

	writer := etcdtest.DirectClient(t, eps)
	var (
		mu    sync.Mutex
		acked []int64
	)
	wctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; wctx.Err() == nil; i++ {
			pctx, cancel := context.WithTimeout(wctx, 2*time.Second)
			r, err := writer.Put(pctx, fmt.Sprintf("w/%d", i), "v")
			cancel()
			if err == nil {
				mu.Lock()
				acked = append(acked, r.Header.Revision)
				mu.Unlock()
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
	time.Sleep(500 * time.Millisecond)
	if err := a.ec.UpdateEndpoints([]string{eps[2], eps[0]}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	cl.Members[0].Kill()
	time.Sleep(2 * time.Second)
	if err := cl.Members[0].Restart(); err != nil {
		t.Fatal(err)
	}
	if err := a.ec.UpdateEndpoints(eps); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	stop()
	wg.Wait()
	mu.Lock()
	want := append([]int64(nil), acked...)
	mu.Unlock()
	if len(want) < 50 {
		t.Fatalf("only %d writes acknowledged", len(want))
	}
	last := want[len(want)-1]
	seen := map[int64]bool{}
	var prev int64
	for prev < last {
		select {
		case wr, ok := <-wch:
			if !ok {
				t.Fatalf("the watch ended at revision %d", prev)
			}
			if err := wr.Err(); err != nil {
				t.Fatalf("watch error: %v", err)
			}
			for _, ev := range wr.Events {
				r := ev.Kv.ModRevision
				if r <= prev {
					t.Fatalf("revision %d after %d: repeated or out of order", r, prev)
				}
				prev = r
				seen[r] = true
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("no event for 20s; at %d of %d", prev, last)
		}
	}
	for _, r := range want {
		if !seen[r] {
			t.Fatalf("acknowledged revision %d never arrived", r)
		}
	}
	t.Logf("%d acknowledged writes, each seen once in order", len(want))
}

// The access rules on every key of every request: a uid limited to app/
// may get app/x but not the whole keyspace, may not write elsewhere, not
// even in one operation of a transaction, may not watch outside, and may
// not use a lease it did not grant through the agent.
func TestAccessRules(t *testing.T) {
	cl := etcdtest.New(t, 1)
	policy, err := access.NewPolicy([]access.Rule{{Name: "app", UIDs: []uint32{uint32(os.Getuid())}, Prefixes: []string{"app/"}, Read: true, Write: true}})
	if err != nil {
		t.Fatal(err)
	}
	a := startAgent(t, cl.Endpoints(), policy)
	cli := a.stock(t)
	ctx := ctxT(t, 30*time.Second)
	pd := func(what string, err error) {
		t.Helper()
		if status.Code(err) != codes.PermissionDenied && !errors.Is(err, rpctypes.ErrPermissionDenied) {
			t.Fatalf("%s: %v, want PermissionDenied", what, err)
		}
	}
	if _, err := cli.Put(ctx, "app/x", "1"); err != nil {
		t.Fatal(err)
	}
	if r, err := cli.Get(ctx, "app/x"); err != nil || len(r.Kvs) != 1 {
		t.Fatalf("get app/x: %v %v", r, err)
	}
	_, err = cli.Get(ctx, "", clientv3.WithPrefix())
	pd("get --prefix \"\"", err)
	_, err = cli.Get(ctx, "app/", clientv3.WithFromKey())
	pd("get --from-key app/", err)
	_, err = cli.Get(ctx, "app/a", clientv3.WithRange("app/z"))
	if err != nil {
		t.Fatalf("a range inside app/: %v", err)
	}
	_, err = cli.Put(ctx, "other", "1")
	pd("put other", err)
	_, err = cli.Txn(ctx).Then(clientv3.OpPut("app/y", "1"), clientv3.OpDelete("other")).Commit()
	pd("txn with one op outside", err)
	_, err = cli.Txn(ctx).If(clientv3.Compare(clientv3.Version("other"), "=", 0)).Then(clientv3.OpPut("app/y", "1")).Commit()
	pd("txn comparing outside", err)
	if r, _ := cli.Get(ctx, "app/y"); len(r.Kvs) != 0 {
		t.Fatal("a refused transaction wrote")
	}
	wr := <-cli.Watch(ctx, "other/", clientv3.WithPrefix())
	if wr.Err() == nil || !wr.Canceled {
		t.Fatalf("watch outside: %+v", wr)
	}

	direct := cl.Client(t)
	foreign, err := direct.Grant(ctx, 30)
	if err != nil {
		t.Fatal(err)
	}
	_, err = cli.Revoke(ctx, foreign.ID)
	pd("revoke a lease not granted through the agent", err)
	_, err = cli.Put(ctx, "app/z", "1", clientv3.WithLease(foreign.ID))
	pd("put with a foreign lease", err)

	// A reload that takes the rule away ends an open watch.
	w := cli.Watch(ctx, "app/", clientv3.WithPrefix())
	cli.Put(ctx, "app/w", "1")
	if r := <-w; len(r.Events) != 1 {
		t.Fatalf("watch inside: %+v", r)
	}
	other, _ := access.NewPolicy([]access.Rule{{Name: "x", UIDs: []uint32{uint32(os.Getuid())}, Prefixes: []string{"x/"}, Read: true}})
	a.gate.Set(access.Settings{Policy: other})
	select {
	case r, ok := <-w:
		// clientv3 closes the channel of a watch the server cancelled.
		if ok && !r.Canceled {
			t.Fatalf("after the reload: %+v", r)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the watch outlived its rule")
	}
}

// A known etcd outage answers Unavailable at once, not after a timeout.
func TestUnavailableAtOnce(t *testing.T) {
	cl := etcdtest.New(t, 1)
	a := startAgent(t, cl.Endpoints(), nil)
	cli := a.stock(t)
	cl.Members[0].Stop()
	etcdtest.Eventually(t, 10*time.Second, "the agent knows etcd is down", func() bool { return !a.ec.Health().Connected })
	ctx := ctxT(t, 30*time.Second)
	_, err := cli.Get(ctx, "k")
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("get while etcd is down: %v", err)
	}
}

// Serializable ranges under cache.prefixes are answered from the agent's
// read cache, with this socket's own writes visible at once and writes made
// elsewhere once the cache's watch brings them; keys-only and limit as etcd
// answers them.
func TestSerializableFromCache(t *testing.T) {
	cl := etcdtest.New(t, 1)
	a := startAgentWith(t, cl.Endpoints(), nil, []string{"c/"})
	cli := a.stock(t)
	ctx := ctxT(t, 30*time.Second)
	for i := range 5 {
		if _, err := cli.Put(ctx, fmt.Sprintf("c/%d", i), fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
		r, err := cli.Get(ctx, fmt.Sprintf("c/%d", i), clientv3.WithSerializable())
		if err != nil || len(r.Kvs) != 1 || string(r.Kvs[0].Value) != fmt.Sprint(i) {
			t.Fatalf("read-your-write %d: %v %v", i, r, err)
		}
	}
	r, err := cli.Get(ctx, "c/", clientv3.WithPrefix(), clientv3.WithSerializable(), clientv3.WithLimit(2), clientv3.WithKeysOnly())
	if err != nil || r.Count != 5 || !r.More || len(r.Kvs) != 2 || len(r.Kvs[0].Value) != 0 || string(r.Kvs[1].Key) != "c/1" {
		t.Fatalf("limited keys-only listing: %+v %v", r, err)
	}
	if r, err := cli.Get(ctx, "c/absent", clientv3.WithSerializable()); err != nil || len(r.Kvs) != 0 || r.Count != 0 {
		t.Fatalf("absent key: %+v %v", r, err)
	}
	if _, err := cl.Client(t).Put(ctx, "c/elsewhere", "x"); err != nil {
		t.Fatal(err)
	}
	etcdtest.Eventually(t, 10*time.Second, "a write made elsewhere", func() bool {
		r, err := cli.Get(ctx, "c/elsewhere", clientv3.WithSerializable())
		return err == nil && len(r.Kvs) == 1
	})
}

// Watches the shared upstream watches cannot carry — an arbitrary range,
// prev_kv, a filter — follow on their own and answer as etcd does.
func TestWatchRangePrevKVAndFilter(t *testing.T) {
	cl := etcdtest.New(t, 1)
	a := startAgent(t, cl.Endpoints(), nil)
	cli := a.stock(t)
	ctx := ctxT(t, 30*time.Second)
	now, err := cli.Get(ctx, "r/")
	if err != nil {
		t.Fatal(err)
	}
	from := clientv3.WithRev(now.Header.Revision + 1) // whenever the watches are set up
	rng := cli.Watch(ctx, "r/b", clientv3.WithRange("r/d"), clientv3.WithPrevKV(), from)
	noPut := cli.Watch(ctx, "r/", clientv3.WithPrefix(), clientv3.WithFilterPut(), from)
	for _, k := range []string{"r/a", "r/b", "r/c", "r/d"} {
		if _, err := cli.Put(ctx, k, "1"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cli.Put(ctx, "r/c", "2"); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Delete(ctx, "r/a"); err != nil {
		t.Fatal(err)
	}
	var got []string
	for len(got) < 3 {
		select {
		case wr := <-rng:
			for _, ev := range wr.Events {
				prev := ""
				if ev.PrevKv != nil {
					prev = string(ev.PrevKv.Value)
				}
				got = append(got, fmt.Sprintf("%s=%s(prev %q)", ev.Kv.Key, ev.Kv.Value, prev))
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("range watch: %v", got)
		}
	}
	if want := `[r/b=1(prev "") r/c=1(prev "") r/c=2(prev "1")]`; fmt.Sprint(got) != want {
		t.Fatalf("range watch with prev_kv: %v, want %s", got, want)
	}
	select {
	case wr := <-noPut:
		if len(wr.Events) != 1 || wr.Events[0].Type != clientv3.EventTypeDelete || string(wr.Events[0].Kv.Key) != "r/a" {
			t.Fatalf("NOPUT watch: %+v", wr.Events)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("NOPUT watch: no delete")
	}
}

// A watch from a compacted revision ends at once, as etcd ends it: a
// response with CompactRevision, then the channel closes — for a key, a
// prefix (shared upstream watches) and a range with prev_kv (a watch of its
// own), on the socket as directly on the members.
func TestWatchFromCompactedRevision(t *testing.T) {
	cl := etcdtest.New(t, 1)
	a := startAgent(t, cl.Endpoints(), nil)
	direct := etcdtest.DirectClient(t, cl.Endpoints())
	ctx := ctxT(t, 30*time.Second)
	var last int64
	for i := range 5 {
		r, err := direct.Put(ctx, fmt.Sprintf("c/%d", i), "v")
		if err != nil {
			t.Fatal(err)
		}
		last = r.Header.Revision
	}
	if _, err := direct.Compact(ctx, last); err != nil {
		t.Fatal(err)
	}
	ended := func(cli *clientv3.Client, opts ...clientv3.OpOption) clientv3.WatchResponse {
		t.Helper()
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		var got clientv3.WatchResponse
		for r := range cli.Watch(wctx, "c/0", append(opts, clientv3.WithRev(last-2))...) {
			got = r
		}
		if wctx.Err() != nil {
			t.Fatalf("the watch from compacted revision %d did not end", last-2)
		}
		return got
	}
	for _, tc := range []struct {
		name string
		opts []clientv3.OpOption
	}{
		{"key", nil},
		{"prefix", []clientv3.OpOption{clientv3.WithPrefix()}},
		{"range with prev_kv", []clientv3.OpOption{clientv3.WithRange("c/9"), clientv3.WithPrevKV()}},
	} {
		want, got := ended(direct, tc.opts...), ended(a.stock(t), tc.opts...)
		if got.CompactRevision != want.CompactRevision || got.CompactRevision != last || !got.Canceled ||
			!errors.Is(got.Err(), rpctypes.ErrCompacted) {
			t.Errorf("%s: through the socket %+v (%v), directly %+v (%v)", tc.name, got, got.Err(), want, want.Err())
		}
	}
}
