package grpcapi_test

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"udp_iaasd/access"
	"udp_iaasd/internal/etcdtest"
)

// The compatibility suite: the same client operations through the socket
// and directly against the members, and their outcomes compared. Each case
// is a way the socket once differed from etcd for a stock client.

// Replies over gRPC's default 4 MiB receive limit come back whole, as
// clientv3 gets them from the members (it sets no limit).
func TestCompatLargeReply(t *testing.T) {
	cl := etcdtest.New(t, 1)
	a := startAgent(t, cl.Endpoints(), nil)
	direct, sock := etcdtest.DirectClient(t, cl.Endpoints()), a.stock(t)
	ctx := ctxT(t, 30*time.Second)
	big := strings.Repeat("x", 1200<<10)
	for _, k := range []string{"big/1", "big/2", "big/3", "big/4"} {
		if _, err := direct.Put(ctx, k, big); err != nil {
			t.Fatal(err)
		}
	}
	want, err := direct.Get(ctx, "big/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	got, err := sock.Get(ctx, "big/", clientv3.WithPrefix())
	if err != nil || len(got.Kvs) != len(want.Kvs) || len(want.Kvs) != 4 {
		t.Fatalf("a 4.8 MB reply through the socket: %v (%d keys; directly %d)", err, len(got.Kvs), len(want.Kvs))
	}
	// A transaction's reply, too.
	if _, err := sock.Txn(ctx).Then(clientv3.OpGet("big/", clientv3.WithPrefix())).Commit(); err != nil {
		t.Fatalf("a 4.8 MB transaction reply through the socket: %v", err)
	}
}

// Keepalives answer lease by lease, as etcd answers them: a lease that is
// gone is answered TTL 0, and the stream — which carries the client's other
// leases — goes on.
func TestCompatKeepAliveOfAGoneLease(t *testing.T) {
	cl := etcdtest.New(t, 1)
	a := startAgent(t, cl.Endpoints(), nil)
	for _, tc := range []struct {
		name string
		cli  *clientv3.Client
	}{{"direct", etcdtest.DirectClient(t, cl.Endpoints())}, {"socket", a.stock(t)}} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := ctxT(t, 30*time.Second)
			l1, err := tc.cli.Grant(ctx, 3)
			if err != nil {
				t.Fatal(err)
			}
			l2, err := tc.cli.Grant(ctx, 3)
			if err != nil {
				t.Fatal(err)
			}
			ka1, err := tc.cli.KeepAlive(ctx, l1.ID)
			if err != nil {
				t.Fatal(err)
			}
			ka2, err := tc.cli.KeepAlive(ctx, l2.ID)
			if err != nil {
				t.Fatal(err)
			}
			<-ka1
			<-ka2
			// Another client of the same socket revokes L1.
			other := tc.cli
			if tc.name == "socket" {
				other = a.stock(t)
			}
			if _, err := other.Revoke(ctx, l1.ID); err != nil {
				t.Fatal(err)
			}
			// clientv3 closes a keepalive channel once its lease is answered
			// TTL 0 (gone); L2 is still renewed well past its TTL.
			etcdtest.Eventually(t, 10*time.Second, "L1's keepalive to end", func() bool {
				select {
				case _, ok := <-ka1:
					return !ok
				default:
					return false
				}
			})
			deadline := time.After(6 * time.Second) // two TTLs
			for done := false; !done; {
				select {
				case r, ok := <-ka2:
					if !ok || r.TTL <= 0 {
						t.Fatalf("L2's keepalive ended after L1 was revoked: %v %v", r, ok)
					}
				case <-deadline:
					done = true
				}
			}
			// Still there (-1 is gone; the remaining seconds round down,
			// so a renewal a moment late reads 0 on a loaded machine).
			ttl, err := tc.cli.TimeToLive(ctx, l2.ID)
			if err != nil {
				t.Fatal(err)
			}
			if ttl.TTL < 0 {
				t.Fatalf("L2 after 6s of keepalives: TTL %d, gone", ttl.TTL)
			}
		})
	}
}

// A lease that does not exist is "lease not found" (revoke, a put with it)
// or TTL -1 (time-to-live), as the members say; one that exists but was
// granted by another uid is refused; time-to-live's keys are those the peer
// may read.
func TestCompatLeaseErrors(t *testing.T) {
	cl := etcdtest.New(t, 1)
	uid := uint32(os.Getuid())
	policy, err := access.NewPolicy([]access.Rule{{Name: "app", UIDs: []uint32{uid}, Prefixes: []string{"app/"}, Read: true, Write: true}})
	if err != nil {
		t.Fatal(err)
	}
	a := startAgent(t, cl.Endpoints(), policy)
	direct, sock := etcdtest.DirectClient(t, cl.Endpoints()), a.stock(t)
	ctx := ctxT(t, 30*time.Second)

	const gone = clientv3.LeaseID(0x1234567)
	for name, cli := range map[string]*clientv3.Client{"direct": direct, "socket": sock} {
		if _, err := cli.Revoke(ctx, gone); !errors.Is(err, rpctypes.ErrLeaseNotFound) {
			t.Errorf("%s: revoke of a lease nobody has: %v, want lease not found", name, err)
		}
		if ttl, err := cli.TimeToLive(ctx, gone); err != nil || ttl.TTL != -1 {
			t.Errorf("%s: time-to-live of a lease nobody has: %+v, %v; want TTL -1", name, ttl, err)
		}
	}
	if _, err := sock.Put(ctx, "app/x", "1", clientv3.WithLease(gone)); !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		t.Errorf("put with a lease nobody has: %v, want lease not found", err)
	}
	foreign, err := direct.Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sock.Revoke(ctx, foreign.ID); status.Code(err) != codes.PermissionDenied && !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Errorf("revoke of another client's lease: %v, want PermissionDenied", err)
	}

	// The peer's own lease, on a key it may read and one it may not (put
	// there directly, by the test).
	own, err := sock.Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sock.Put(ctx, "app/leased", "1", clientv3.WithLease(own.ID)); err != nil {
		t.Fatal(err)
	}
	if _, err := direct.Put(ctx, "secret/leased", "1", clientv3.WithLease(own.ID)); err != nil {
		t.Fatal(err)
	}
	ttl, err := sock.TimeToLive(ctx, own.ID, clientv3.WithAttachedKeys())
	if err != nil || len(ttl.Keys) != 1 || string(ttl.Keys[0]) != "app/leased" {
		t.Fatalf("time-to-live --keys: %v, %q; want [app/leased]", err, ttl.Keys)
	}
}

// The member list names the socket as every member's client URL, so a
// client that syncs its endpoints from it stays on the socket.
func TestCompatMemberListKeepsClientsOnTheSocket(t *testing.T) {
	cl := etcdtest.New(t, 3)
	a := startAgent(t, cl.Endpoints(), nil)
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{"unix://" + a.sock}, DialTimeout: 5 * time.Second,
		AutoSyncInterval: 200 * time.Millisecond, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx := ctxT(t, 30*time.Second)
	ml, err := cli.MemberList(ctx)
	if err != nil || len(ml.Members) != 3 {
		t.Fatalf("member list: %v, %v", ml, err)
	}
	for _, m := range ml.Members {
		if len(m.ClientURLs) != 1 || m.ClientURLs[0] != "unix://"+a.sock {
			t.Fatalf("member %s: client URLs %v, want the socket", m.Name, m.ClientURLs)
		}
	}
	// Several auto-syncs later the client still talks to the socket only.
	etcdtest.Eventually(t, 10*time.Second, "auto-sync to run", func() bool {
		eps := cli.Endpoints()
		return len(eps) == 3 // the synced list: three members, each the socket
	})
	for _, ep := range cli.Endpoints() {
		if ep != "unix://"+a.sock {
			t.Fatalf("after auto-sync the client uses %v, want only the socket", cli.Endpoints())
		}
	}
	if _, err := cli.Put(ctx, "sync/x", "1"); err != nil {
		t.Fatal(err)
	}
}

// A progress request on a quiet cluster is answered, through the socket as
// directly: the socket's upstream watches start at or below the store's
// revision, so etcd confirms progress for their stream.
func TestCompatProgressOnAQuietCluster(t *testing.T) {
	cl := etcdtest.New(t, 1)
	a := startAgent(t, cl.Endpoints(), nil)
	for name, cli := range map[string]*clientv3.Client{"direct": etcdtest.DirectClient(t, cl.Endpoints()), "socket": a.stock(t)} {
		t.Run(name, func(t *testing.T) {
			ctx := ctxT(t, 20*time.Second)
			put, err := cli.Put(ctx, "quiet/"+name, "1")
			if err != nil {
				t.Fatal(err)
			}
			wctx := clientv3.WithRequireLeader(ctx)
			wch := cli.Watch(wctx, "quiet/"+name, clientv3.WithCreatedNotify())
			if r := <-wch; !r.Created {
				t.Fatalf("first response %+v, want created", r)
			}
			// Asked again every half second, as a person would: etcd
			// answers once every watch of the stream has caught up (the
			// agent's starts at a revision, so it joins etcd's synced
			// watches within its sync loop, 100ms), and drops a request
			// made before.
			ask := time.NewTicker(500 * time.Millisecond)
			defer ask.Stop()
			giveUp := time.After(10 * time.Second)
			for asked := false; ; {
				if !asked {
					if err := cli.RequestProgress(wctx); err != nil {
						t.Fatal(err)
					}
					asked = true
				}
				select {
				case r := <-wch:
					if !r.IsProgressNotify() || r.Header.Revision < put.Header.Revision {
						t.Fatalf("after a progress request: %+v, want a progress notification at %d or later", r, put.Header.Revision)
					}
					return
				case <-ask.C:
					asked = false
				case <-giveUp:
					t.Fatal("no progress notification on a quiet cluster")
				}
			}
		})
	}
}

// A watch that asked for a leader (clientv3.WithRequireLeader) ends with
// "no leader" when the members lose theirs, through the socket as directly.
func TestCompatRequireLeaderWatchEndsWithoutLeader(t *testing.T) {
	cl := etcdtest.NewProc(t, 3)
	a := startAgent(t, cl.Endpoints(), nil)
	ctx := ctxT(t, 60*time.Second)
	watches := map[string]clientv3.WatchChan{}
	for name, cli := range map[string]*clientv3.Client{"direct": etcdtest.DirectClient(t, cl.Endpoints()), "socket": a.stock(t)} {
		wch := cli.Watch(clientv3.WithRequireLeader(ctx), "rl/", clientv3.WithPrefix(), clientv3.WithCreatedNotify())
		if r := <-wch; !r.Created {
			t.Fatalf("%s: first response %+v", name, r)
		}
		watches[name] = wch
	}
	cl.Members[1].Kill()
	cl.Members[2].Kill()
	for name, wch := range watches {
		var last clientv3.WatchResponse
		for r := range wch { // ends when the watch is cancelled
			last = r
		}
		if ctx.Err() != nil || !errors.Is(last.Err(), rpctypes.ErrNoLeader) {
			t.Errorf("%s: the watch ended with %v (ctx %v), want no leader", name, last.Err(), ctx.Err())
		}
	}
}
