// Package etcdtest is the test kit: real etcd clusters for tests, in-process
// (internal/devcluster, with test hooks) or as member processes that a test
// can kill -9 or pause, plus the clients, counters and helpers tests use
// around them.
//
// It owns what tests need beyond a running cluster: a gate that keeps unary
// RPCs off a stopping member (etcd-io/etcd#22189), counts of what members
// were asked, plain clientv3 clients to check answers against,
// authentication, TLS material, connection counts. Nothing about etcd's
// behaviour is simulated. Production code never imports it.
package etcdtest

import (
	"context"
	"maps"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"udp_iaasd/internal/devcluster"
)

// Options shape a cluster (devcluster's; the hooks are the kit's own).
type Options = devcluster.Options

// Cluster is a running in-process cluster with the kit's hooks installed.
type Cluster struct {
	*devcluster.Cluster
	Members []*Member
}

// Member is one member of a Cluster.
type Member struct {
	*devcluster.Member
	gate rpcGate  // closed while the member stops (etcd-io/etcd#22189)
	rpcs rpcCount // what clients asked of this member, across restarts
}

// Start starts a cluster (devcluster.Start) whose members count the RPCs
// they receive and refuse unary RPCs while they stop.
func Start(opts Options) (*Cluster, error) {
	n := opts.Members
	if n <= 0 {
		n = 3
	}
	members := make([]*Member, n)
	for i := range members {
		members[i] = &Member{}
	}
	opts.GRPCServerOptions = func(i int) []grpc.ServerOption {
		m := members[i]
		m.gate.closed.Store(false)
		return []grpc.ServerOption{
			grpc.ChainUnaryInterceptor(m.rpcs.countUnary, m.gate.interceptor),
			grpc.ChainStreamInterceptor(m.rpcs.countStream),
		}
	}
	// Unary RPCs are done before the backend can close; a call still
	// running after 5s (a read waiting for a lost quorum) is left to chance.
	opts.BeforeStop = func(i int) { members[i].gate.close(5 * time.Second) }
	dc, err := devcluster.Start(opts)
	if err != nil {
		return nil, err
	}
	for i, m := range dc.Members {
		members[i].Member = m
	}
	return &Cluster{Cluster: dc, Members: members}, nil
}

// rpcGate keeps unary client RPCs away from a member while it stops. A stop
// here closes etcd's backend (HardStop) while its gRPC server still serves,
// and etcd v3.7.3 answers a Maintenance Status RPC in that window by reading
// the closed backend: a nil-pointer panic that kills the whole test binary
// (etcd-io/etcd#22189, open). Our health loop sends Status every few hundred
// milliseconds, so tests that stop members hit it now and then.
type rpcGate struct {
	closed   atomic.Bool
	inflight atomic.Int64
}

// interceptor counts each unary RPC in before checking the gate, so that a
// closer who finds none in flight knows no later one will get through.
func (g *rpcGate) interceptor(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	g.inflight.Add(1)
	defer g.inflight.Add(-1)
	if g.closed.Load() {
		return nil, status.Error(codes.Unavailable, "etcdtest: member stopping")
	}
	return handler(ctx, req)
}

// rpcCount counts the client requests a member receives: unary RPCs by
// method, and progress requests sent on watch streams (messages, not RPCs).
// Tests use it to check what an idle agent asks of etcd.
type rpcCount struct {
	mu       sync.Mutex
	unary    map[string]int64 // full method name → calls
	progress int64
}

func (r *rpcCount) countUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	r.mu.Lock()
	if r.unary == nil {
		r.unary = map[string]int64{}
	}
	r.unary[info.FullMethod]++
	r.mu.Unlock()
	return handler(ctx, req)
}

func (r *rpcCount) countStream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	return handler(srv, &progressCounter{ServerStream: ss, r: r})
}

// progressCounter sees each message a client sends on a stream.
type progressCounter struct {
	grpc.ServerStream
	r *rpcCount
}

func (s *progressCounter) RecvMsg(m any) error {
	err := s.ServerStream.RecvMsg(m)
	if wr, ok := m.(*pb.WatchRequest); ok && err == nil && wr.GetProgressRequest() != nil {
		s.r.mu.Lock()
		s.r.progress++
		s.r.mu.Unlock()
	}
	return err
}

// UnaryRPCs returns how many unary RPCs of each method the member has
// received since it was first started.
func (m *Member) UnaryRPCs() map[string]int64 {
	m.rpcs.mu.Lock()
	defer m.rpcs.mu.Unlock()
	return maps.Clone(m.rpcs.unary)
}

// ProgressRequests returns how many watch progress requests the member has
// received since it was first started.
func (m *Member) ProgressRequests() int64 {
	m.rpcs.mu.Lock()
	defer m.rpcs.mu.Unlock()
	return m.rpcs.progress
}

// close refuses new RPCs and waits up to d for those in flight to end.
func (g *rpcGate) close(d time.Duration) {
	g.closed.Store(true)
	for deadline := time.Now().Add(d); g.inflight.Load() > 0 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
}

// New starts a cluster of n members for a test and stops it in t.Cleanup.
func New(t testing.TB, n int) *Cluster {
	t.Helper()
	c, err := Start(Options{Members: n, Dir: t.TempDir()})
	if err != nil {
		t.Fatalf("start etcd cluster: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

// Client returns a plain clientv3 client of the whole cluster, closed in
// t.Cleanup: the baseline that tests check endpointd's answers against.
func (c *Cluster) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	return DirectClient(t, c.Endpoints())
}

// DirectClient returns a plain clientv3 client of endpoints, closed in
// t.Cleanup.
func DirectClient(t testing.TB, endpoints []string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		t.Fatalf("etcd client: %v", err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// RootPassword is the password of user "root" after EnableAuth.
const RootPassword = "rootpw"

// EnableAuth turns on etcd's authentication: user "root" (RootPassword)
// with the root role, and user with password, which may read and write only
// keys under prefix. Clients without credentials are refused from then on;
// RootClient is one with them.
func (c *Cluster) EnableAuth(t testing.TB, user, password, prefix string) {
	t.Helper()
	cli := c.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	role := user + "-role"
	steps := []func() error{
		func() error { _, err := cli.UserAdd(ctx, "root", RootPassword); return err },
		func() error { _, err := cli.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := cli.UserAdd(ctx, user, password); return err },
		func() error { _, err := cli.RoleAdd(ctx, role); return err },
		func() error {
			_, err := cli.RoleGrantPermission(ctx, role, prefix, clientv3.GetPrefixRangeEnd(prefix), clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		},
		func() error { _, err := cli.UserGrantRole(ctx, user, role); return err },
		func() error { _, err := cli.AuthEnable(ctx); return err },
	}
	for i, step := range steps {
		if err := step(); err != nil {
			t.Fatalf("etcdtest: enabling auth, step %d: %v", i, err)
		}
	}
}

// RootClient is a client authenticated as root, for a cluster after
// EnableAuth; it is closed when the test ends.
func (c *Cluster) RootClient(t testing.TB) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), Username: "root", Password: RootPassword,
		DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatalf("etcdtest: root client: %v", err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}
