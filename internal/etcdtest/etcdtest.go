// Package etcdtest runs real etcd clusters in-process, on loopback ports and
// in temporary directories, for tests and for `endpointd dev`.
//
// It owns the members' lifecycles (start, stop, restart with their data) and
// nothing else: it does not build clients beyond a convenience for tests.
// Members are go.etcd.io/etcd/server/v3/embed servers, the same code as the
// etcd binary; nothing about etcd's behaviour is simulated.
package etcdtest

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Options shape a cluster. The zero value is a three-member cluster under a
// new temporary directory, tuned for quick elections.
type Options struct {
	Members int    // default 3
	Dir     string // default: a new directory under os.TempDir(), removed by Close
	// Fsync keeps etcd's fsyncs; tests turn them off for speed, which loses
	// nothing in-process (a member stopped here is closed, never torn).
	Fsync bool
	// StartTimeout bounds waiting for the cluster to elect a leader.
	StartTimeout time.Duration // default 30s
	// TLS, when set, makes every member also serve clients over TLS on a
	// second port (Member.TLSClientURL), with these files.
	TLS *TLSFiles
	// MaxTxnOps is etcd's --max-txn-ops; default etcd's (128).
	MaxTxnOps uint
	// UnixSockets makes every member also serve clients on a unix socket
	// in its data directory's parent (Member.UnixClientURL).
	UnixSockets bool
}

// Cluster is a running set of members.
type Cluster struct {
	Members []*Member

	dir     string
	ownsDir bool
	token   string
}

// Member is one etcd server of a Cluster.
type Member struct {
	Name      string
	Dir       string
	ClientURL url.URL
	PeerURL   url.URL
	// TLSClientURL is the member's https client URL when Options.TLS is set.
	TLSClientURL url.URL
	tls          *TLSFiles
	// UnixClientURL is the member's unix:///path client URL when
	// Options.UnixSockets is set.
	UnixClientURL url.URL

	cluster   *Cluster
	fsync     bool
	maxTxnOps uint

	gate rpcGate  // closed while the member stops (etcd-io/etcd#22189)
	rpcs rpcCount // what clients asked of this member, across restarts

	mu   sync.Mutex // guards etcd
	etcd *embed.Etcd
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

// Start starts a cluster and waits until it has a leader.
func Start(opts Options) (*Cluster, error) {
	if opts.Members <= 0 {
		opts.Members = 3
	}
	if opts.StartTimeout <= 0 {
		opts.StartTimeout = 30 * time.Second
	}
	c := &Cluster{dir: opts.Dir, token: fmt.Sprintf("etcdtest-%d", time.Now().UnixNano())}
	if c.dir == "" {
		d, err := os.MkdirTemp("", "etcdtest-")
		if err != nil {
			return nil, fmt.Errorf("etcdtest: %w", err)
		}
		c.dir, c.ownsDir = d, true
	}
	// A port picked here can be taken by another process before etcd binds
	// it; such a start fails fast with "address already in use" and is tried
	// again on fresh ports.
	var err error
	for try := 0; try < 5; try++ {
		if err = c.start(opts); err == nil {
			return c, nil
		}
		c.stopAll()
		if !strings.Contains(err.Error(), "address already in use") {
			break
		}
	}
	c.Close()
	return nil, err
}

func (c *Cluster) start(opts Options) error {
	ports, err := freePorts(3 * opts.Members)
	if err != nil {
		return err
	}
	c.Members = make([]*Member, opts.Members)
	var initial []string
	for i := range c.Members {
		name := fmt.Sprintf("m%d", i)
		m := &Member{
			Name:         name,
			Dir:          filepath.Join(c.dir, fmt.Sprintf("%s-%d", name, ports[3*i])),
			ClientURL:    url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", ports[3*i])},
			PeerURL:      url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", ports[3*i+1])},
			TLSClientURL: url.URL{Scheme: "https", Host: fmt.Sprintf("127.0.0.1:%d", ports[3*i+2])},
			cluster:      c,
			fsync:        opts.Fsync,
			maxTxnOps:    opts.MaxTxnOps,
			tls:          opts.TLS,
		}
		if opts.UnixSockets {
			// A socket path is limited to 107 bytes: keep it short.
			m.UnixClientURL = url.URL{Scheme: "unix", Path: filepath.Join(c.dir, fmt.Sprintf("%s-%d.sock", name, ports[3*i]))}
		}
		c.Members[i] = m
		initial = append(initial, name+"="+m.PeerURL.String())
	}
	errc := make(chan error, len(c.Members))
	for _, m := range c.Members {
		go func() { errc <- m.start(strings.Join(initial, ","), embed.ClusterStateFlagNew) }()
	}
	var errs []error
	for range c.Members {
		errs = append(errs, <-errc)
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return c.waitReady(opts.StartTimeout)
}

func (c *Cluster) waitReady(timeout time.Duration) error {
	deadline := time.After(timeout)
	for _, m := range c.Members {
		e := m.server()
		select {
		case <-e.Server.ReadyNotify():
		case err := <-e.Err():
			return fmt.Errorf("etcdtest: member %s: %w", m.Name, err)
		case <-deadline:
			return fmt.Errorf("etcdtest: cluster not ready after %v", timeout)
		}
	}
	return nil
}

func (m *Member) start(initialCluster, state string) error {
	spec := memberSpec{Name: m.Name, Dir: m.Dir, ClientURL: m.ClientURL.String(),
		PeerURL: m.PeerURL.String(), InitialCluster: initialCluster, State: state, Token: m.cluster.token, Fsync: m.fsync,
		MaxTxnOps: m.maxTxnOps, UnixClientURL: m.UnixClientURL.String()}
	if m.UnixClientURL.Path == "" {
		spec.UnixClientURL = ""
	}
	if m.tls != nil {
		spec.TLSClientURL, spec.TLS = m.TLSClientURL.String(), *m.tls
	}
	cfg := memberConfig(spec)
	m.gate.closed.Store(false)
	cfg.GRPCAdditionalServerOptions = append(cfg.GRPCAdditionalServerOptions,
		grpc.ChainUnaryInterceptor(m.rpcs.countUnary, m.gate.interceptor),
		grpc.ChainStreamInterceptor(m.rpcs.countStream))
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return fmt.Errorf("etcdtest: start member %s: %w", m.Name, err)
	}
	m.mu.Lock()
	m.etcd = e
	m.mu.Unlock()
	return nil
}

// memberSpec is everything a member needs to start, in-process or in a
// process of its own (where it travels as JSON).
type memberSpec struct {
	Name, Dir          string
	ClientURL, PeerURL string
	InitialCluster     string
	State              string // embed.ClusterStateFlagNew or Existing
	Token              string
	Fsync              bool
	MaxTxnOps          uint     // etcd's --max-txn-ops; 0: etcd's default
	UnixClientURL      string   // also serve clients on this unix:///path, when set
	TLSClientURL       string   // also serve clients over TLS here, when set
	TLS                TLSFiles // the server certificate for TLSClientURL
}

func memberConfig(s memberSpec) *embed.Config {
	curl, _ := url.Parse(s.ClientURL)
	purl, _ := url.Parse(s.PeerURL)
	cfg := embed.NewConfig()
	cfg.Name = s.Name
	cfg.Dir = s.Dir
	cfg.ListenClientUrls = []url.URL{*curl}
	cfg.AdvertiseClientUrls = []url.URL{*curl}
	if s.TLSClientURL != "" {
		turl, _ := url.Parse(s.TLSClientURL)
		cfg.ListenClientUrls = append(cfg.ListenClientUrls, *turl)
		cfg.AdvertiseClientUrls = append(cfg.AdvertiseClientUrls, *turl)
		cfg.ClientTLSInfo.CertFile, cfg.ClientTLSInfo.KeyFile = s.TLS.CertFile, s.TLS.KeyFile
	}
	if s.UnixClientURL != "" {
		uurl, _ := url.Parse(s.UnixClientURL)
		cfg.ListenClientUrls = append(cfg.ListenClientUrls, *uurl)
		cfg.AdvertiseClientUrls = append(cfg.AdvertiseClientUrls, *uurl)
	}
	cfg.ListenPeerUrls = []url.URL{*purl}
	cfg.AdvertisePeerUrls = []url.URL{*purl}
	cfg.InitialCluster = s.InitialCluster
	cfg.InitialClusterToken = s.Token
	cfg.ClusterState = s.State
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	cfg.UnsafeNoFsync = !s.Fsync
	// Elections in a few hundred milliseconds keep member-loss tests short;
	// still 5 heartbeats per election timeout, as etcd recommends.
	cfg.TickMs = 50
	cfg.ElectionMs = 500
	cfg.EnableGRPCGateway = false
	cfg.SnapshotCount = 10000
	// bcrypt's lowest cost: at etcd's default each Authenticate costs tens of
	// milliseconds of CPU, and seconds under the race detector.
	cfg.BcryptCost = 4
	if s.MaxTxnOps > 0 {
		cfg.MaxTxnOps = s.MaxTxnOps
	}
	return cfg
}

func (m *Member) server() *embed.Etcd {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.etcd
}

// Endpoint returns the member's client URL, e.g. http://127.0.0.1:41234.
func (m *Member) Endpoint() string { return m.ClientURL.String() }

// Running reports whether the member is started.
func (m *Member) Running() bool { return m.server() != nil }

// Stop closes the member gracefully (a leader hands over leadership first),
// keeping its data directory. A kill -9 needs a member in another process.
func (m *Member) Stop() { m.stop(false) }

// stop closes the member; hard skips the leadership transfer, which only costs
// time when every member is going away.
func (m *Member) stop(hard bool) {
	m.mu.Lock()
	e := m.etcd
	m.etcd = nil
	m.mu.Unlock()
	if e == nil {
		return
	}
	// Unary RPCs are done before the backend can close; a call still
	// running after 5s (a read waiting for a lost quorum) is left to chance.
	m.gate.close(5 * time.Second)
	if hard {
		e.Server.HardStop()
	}
	e.Close()
}

// Restart starts a stopped member again from its data directory, on the same
// ports, and waits until it serves.
func (m *Member) Restart() error {
	if m.Running() {
		return fmt.Errorf("etcdtest: member %s is running", m.Name)
	}
	var initial []string
	for _, o := range m.cluster.Members {
		initial = append(initial, o.Name+"="+o.PeerURL.String())
	}
	var err error
	// The ports were ours a moment ago; a socket in TIME_WAIT or a probe
	// racing us can hold them briefly.
	for try := 0; try < 50; try++ {
		if err = m.start(strings.Join(initial, ","), embed.ClusterStateFlagExisting); err == nil {
			break
		}
		if !strings.Contains(err.Error(), "address already in use") {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return err
	}
	e := m.server()
	select {
	case <-e.Server.ReadyNotify():
		return nil
	case err := <-e.Err():
		return fmt.Errorf("etcdtest: member %s: %w", m.Name, err)
	case <-time.After(30 * time.Second):
		return fmt.Errorf("etcdtest: member %s not ready after restart", m.Name)
	}
}

// Endpoints returns every member's client URL, in member order.
func (c *Cluster) Endpoints() []string {
	eps := make([]string, len(c.Members))
	for i, m := range c.Members {
		eps[i] = m.Endpoint()
	}
	return eps
}

// StopAll stops every member at once, keeping their data: a whole-cluster
// outage.
func (c *Cluster) StopAll() { c.stopAll() }

// RestartAll restarts every stopped member concurrently: a lone member of a
// three-member cluster cannot become ready without a quorum.
func (c *Cluster) RestartAll() error {
	errc := make(chan error, len(c.Members))
	n := 0
	for _, m := range c.Members {
		if m.Running() {
			continue
		}
		n++
		go func() { errc <- m.Restart() }()
	}
	var errs []error
	for range n {
		errs = append(errs, <-errc)
	}
	return errors.Join(errs...)
}

func (c *Cluster) stopAll() {
	var wg sync.WaitGroup
	for _, m := range c.Members {
		wg.Go(func() { m.stop(true) })
	}
	wg.Wait()
}

// Close stops every member and removes the data directory if Start made it.
func (c *Cluster) Close() {
	c.stopAll()
	if c.ownsDir {
		os.RemoveAll(c.dir)
	}
}

// Dir is the directory holding the members' data.
func (c *Cluster) Dir() string { return c.dir }

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

func freePorts(n int) ([]int, error) {
	ls := make([]net.Listener, 0, n)
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("etcdtest: pick a free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
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
