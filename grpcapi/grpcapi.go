// Package grpcapi serves etcd's own v3 gRPC API on a unix socket
// (API.md "etcd's gRPC API on a unix socket"), so that stock etcd clients —
// etcdctl, clientv3 and the others — reach the cluster through the agent:
// its endpoints, credentials, health and shared watches, under the same
// peer checks and access rules as the HTTP API.
//
// What is etcd's and what is ours: the service definitions and messages are
// etcd's (etcdserverpb, v3lockpb, v3electionpb), and every request that
// passes the checks is sent on to the cluster as it came, on the live
// client's connection, and its answer (or etcd's own error) returned as it
// is. The agent adds who the peer is (read from the socket at accept, like
// the HTTP socket), the access decision on every key range of every request
// (a Txn operation by operation, nested ones included), lease ownership,
// the refusal of everything that would change or expose the cluster beyond
// keys, fail-fast Unavailable, and watches served from the agent's shared
// upstream watches (the HTTP API's), so that N local watchers of a prefix
// cost etcd one watch.
package grpcapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/prometheus/client_golang/prometheus"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3election/v3electionpb"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3lock/v3lockpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"udp_iaasd/access"
	"udp_iaasd/cache"
	"udp_iaasd/etcd"
)

// Options configure New.
type Options struct {
	Etcd *etcd.EtcdClient
	// Cache, when set, answers serializable ranges under cache.prefixes, as
	// it does for the HTTP API, and is told of writes through this socket.
	Cache *cache.Cache
	// Gate is the agent's access decision, shared with the HTTP socket so
	// that both answer alike; nil admits every peer to every key.
	Gate   *access.Gate
	Logger *slog.Logger
	// Registry receives the socket's metrics: the ecosystem's gRPC server
	// metrics (grpc_server_started_total, grpc_server_handled_total, …) and
	// endpointd_grpc_watchers. nil: not exported.
	Registry prometheus.Registerer
	// ShutdownTimeout bounds GracefulStop; open streams are cut after it.
	ShutdownTimeout time.Duration
}

// Server is the gRPC socket. Build it with New, run it with Serve.
type Server struct {
	ec    *etcd.EtcdClient
	cache *cache.Cache
	gate  *access.Gate
	log   *slog.Logger
	opts  Options

	leases   leaseOwners
	watches  atomic.Int64 // watches open on the socket
	grpcProm *grpcprom.ServerMetrics
	// self is the socket's address as a client URL (unix:///path), set by
	// Serve before it serves.
	self atomic.Pointer[string]
}

// New builds the server.
func New(o Options) *Server {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.ShutdownTimeout <= 0 {
		o.ShutdownTimeout = 10 * time.Second
	}
	if o.Gate == nil {
		o.Gate = access.NewGate(access.Settings{}, nil, o.Logger)
	}
	s := &Server{ec: o.Etcd, cache: o.Cache, gate: o.Gate, log: o.Logger, opts: o, grpcProm: grpcprom.NewServerMetrics()}
	if o.Registry != nil {
		o.Registry.MustRegister(s.grpcProm, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "endpointd_grpc_watchers",
			Help: "Watches open on the gRPC socket (each Watch stream may carry several).",
		}, func() float64 { return float64(s.watches.Load()) }))
	}
	return s
}

// allowed lists every method served; anything else — Auth, membership
// changes, compaction, defragmentation, snapshots, alarms, unknown
// services — is PermissionDenied.
var allowed = map[string]bool{
	"/etcdserverpb.KV/Range":              true,
	"/etcdserverpb.KV/Put":                true,
	"/etcdserverpb.KV/DeleteRange":        true,
	"/etcdserverpb.KV/Txn":                true,
	"/etcdserverpb.Watch/Watch":           true,
	"/etcdserverpb.Lease/LeaseGrant":      true,
	"/etcdserverpb.Lease/LeaseRevoke":     true,
	"/etcdserverpb.Lease/LeaseKeepAlive":  true,
	"/etcdserverpb.Lease/LeaseTimeToLive": true,
	"/etcdserverpb.Lease/LeaseLeases":     true,
	"/etcdserverpb.Cluster/MemberList":    true,
	"/etcdserverpb.Maintenance/Status":    true,
	"/etcdserverpb.Maintenance/Alarm":     true, // listing only (services.go)
	"/etcdserverpb.Auth/AuthStatus":       true,
	"/v3lockpb.Lock/Lock":                 true,
	"/v3lockpb.Lock/Unlock":               true,
	"/v3electionpb.Election/Campaign":     true,
	"/v3electionpb.Election/Proclaim":     true,
	"/v3electionpb.Election/Leader":       true,
	"/v3electionpb.Election/Observe":      true,
	"/v3electionpb.Election/Resign":       true,
}

// Serve serves on ln until ctx ends, then stops gracefully within the
// shutdown budget. It closes ln.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	self := "unix://" + ln.Addr().String()
	s.self.Store(&self)
	gs := grpc.NewServer(
		grpc.Creds(peerCreds{}),
		grpc.ChainUnaryInterceptor(s.grpcProm.UnaryServerInterceptor(), s.unaryGate),
		grpc.ChainStreamInterceptor(s.grpcProm.StreamServerInterceptor(), s.streamGate),
		grpc.UnknownServiceHandler(func(any, grpc.ServerStream) error {
			return status.Error(codes.PermissionDenied, "endpointd: this etcd service is not served on the agent's socket")
		}),
	)
	pb.RegisterKVServer(gs, &kvServer{s: s})
	pb.RegisterWatchServer(gs, &watchServer{s: s})
	pb.RegisterLeaseServer(gs, &leaseServer{s: s})
	pb.RegisterClusterServer(gs, &clusterServer{s: s})
	pb.RegisterMaintenanceServer(gs, &maintenanceServer{s: s})
	pb.RegisterAuthServer(gs, &authServer{s: s})
	v3lockpb.RegisterLockServer(gs, &lockServer{s: s})
	v3electionpb.RegisterElectionServer(gs, &electionServer{s: s})
	s.grpcProm.InitializeMetrics(gs) // every served method at 0 from the start

	errc := make(chan error, 1)
	go func() { errc <- gs.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("grpcapi: %w", err)
	case <-ctx.Done():
	}
	done := make(chan struct{})
	go func() { gs.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(s.opts.ShutdownTimeout):
		s.log.Warn("gRPC socket: shutdown budget spent; closing the remaining streams", "budget", s.opts.ShutdownTimeout)
		gs.Stop()
	}
	return nil
}

// selfURL is the socket's client URL (MemberList).
func (s *Server) selfURL() string {
	if u := s.self.Load(); u != nil {
		return *u
	}
	return ""
}

// admit admits a call: a served method, from a peer the sockets admit.
func (s *Server) admit(ctx context.Context, method string) error {
	if !allowed[method] {
		return status.Errorf(codes.PermissionDenied, "endpointd: %s is not served on the agent's socket (only KV, Watch, Lease, Lock, Election, Cluster.MemberList, Maintenance.Status, listing alarms and Auth.AuthStatus)", method)
	}
	p, err := peerOf(ctx)
	if err != nil {
		return err
	}
	if err := s.gate.Admit(p); err != nil {
		return status.Error(codes.PermissionDenied, err.Error())
	}
	return nil
}

func (s *Server) unaryGate(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	if err := s.admit(ctx, info.FullMethod); err != nil {
		return nil, err
	}
	p, _ := peerOf(ctx)
	if err := s.gate.Spend(p); err != nil {
		return nil, exhausted(err)
	}
	return h(etcd.WithPeerKey(ctx, peerKey(p)), req)
}

// streamGate admits a stream, spends one request of the peer's rate on it
// and takes one of its max_streams until it ends (API.md "Budgets").
func (s *Server) streamGate(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	if err := s.admit(ss.Context(), info.FullMethod); err != nil {
		return err
	}
	p, _ := peerOf(ss.Context())
	if err := s.gate.Spend(p); err != nil {
		return exhausted(err)
	}
	release, err := s.gate.OpenStream(p)
	if err != nil {
		return exhausted(err)
	}
	defer release()
	return h(srv, ss)
}

// peerKey is the peer in the host budget's fair queue, as over HTTP.
func peerKey(p access.Peer) string { return strconv.FormatUint(uint64(p.UID), 10) + "/" + p.Unit }

// exhausted is a refusal by a budget as ResourceExhausted, where HTTP says
// 429; the message says when to retry.
func exhausted(err error) error {
	return status.Error(codes.ResourceExhausted, "endpointd: "+err.Error())
}

// takeBudget spends the host budget on a call forwarded to etcd; a request
// it cannot send before its deadline is ResourceExhausted, counted under the
// peer's rule.
func (s *Server) takeBudget(ctx context.Context) error {
	if _, ok := ctx.Deadline(); !ok {
		// The wait counts against etcd.request_timeout, as over HTTP.
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.ec.RequestTimeout())
		defer cancel()
	}
	err := s.ec.TakeRequestBudget(ctx)
	var be *etcd.BudgetError
	if errors.As(err, &be) {
		p, _ := peerOf(ctx)
		return exhausted(s.gate.RefusedByEtcdBudget(p, be.RetryAfter))
	}
	return toStatus(err)
}

// check asks the one access decision for [key, end) and turns a refusal
// into PermissionDenied with the HTTP 403's message.
func (s *Server) check(ctx context.Context, op access.Op, key, end []byte, method string) error {
	p, err := peerOf(ctx)
	if err != nil {
		return err
	}
	return denied(s.gate.Authorize(p, op, string(key), string(end), method))
}

// permit is check for a stream: its Permit re-checks after a reload.
func (s *Server) permit(ctx context.Context, op access.Op, key, end []byte, method string) (*access.Permit, error) {
	p, err := peerOf(ctx)
	if err != nil {
		return nil, err
	}
	pm, err := s.gate.Permit(p, op, string(key), string(end), method)
	return pm, denied(err)
}

// denied is a refusal of the gate as PermissionDenied, with the HTTP 403's
// message.
func denied(err error) error {
	if err == nil {
		return nil
	}
	return status.Error(codes.PermissionDenied, err.Error())
}

// upstream returns the live connection and ctx carrying the metadata the
// cluster must see: etcd's "require leader" only. The caller's other
// metadata (an auth token among them) is not passed on: the agent talks to
// etcd with its own identity.
func (s *Server) upstream(ctx context.Context) (*grpc.ClientConn, context.Context, error) {
	conn, err := s.ec.Conn(ctx)
	if err != nil {
		return nil, nil, toStatus(err)
	}
	out := metadata.MD{}
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if v := md.Get("hasleader"); len(v) > 0 {
			out.Set("hasleader", v...)
		}
	}
	return conn, metadata.NewOutgoingContext(ctx, out), nil
}

// toStatus maps the agent's own errors to gRPC codes; errors from etcd keep
// theirs.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	switch etcd.KindOf(err) {
	case etcd.KindNoEndpoints, etcd.KindClosed, etcd.KindUnavailable, etcd.KindConnectionLost:
		return status.Error(codes.Unavailable, "endpointd: "+err.Error())
	case etcd.KindTimeout:
		return status.Error(codes.DeadlineExceeded, "endpointd: "+err.Error())
	}
	if errors.Is(err, context.Canceled) {
		return status.Error(codes.Canceled, err.Error())
	}
	return status.Error(codes.Internal, "endpointd: "+err.Error())
}

// peerCreds identifies the peer of every connection at accept, from the
// kernel (access.IdentifyConn), and hands it to the calls as AuthInfo.
type peerCreds struct{}

type peerInfo struct {
	credentials.CommonAuthInfo
	peer access.Peer
}

func (peerInfo) AuthType() string { return "endpointd-peer" }

func (peerCreds) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	p, err := access.IdentifyConn(c)
	if err != nil {
		p = access.Peer{} // matches no rule and no allowed_uids entry
	}
	return c, peerInfo{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}, peer: p}, nil
}

func (peerCreds) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("grpcapi: server-side credentials only")
}

func (peerCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "endpointd-peer"}
}

func (peerCreds) Clone() credentials.TransportCredentials { return peerCreds{} }

func (peerCreds) OverrideServerName(string) error { return nil }

func peerOf(ctx context.Context) (access.Peer, error) {
	if p, ok := peer.FromContext(ctx); ok {
		if pi, ok := p.AuthInfo.(peerInfo); ok {
			return pi.peer, nil
		}
	}
	return access.Peer{}, status.Error(codes.PermissionDenied, "endpointd: the peer's credentials could not be read")
}

// leaseOwners remembers which uid granted each lease through the agent.
type leaseOwners struct {
	mu    sync.Mutex // guards owner
	owner map[int64]uint32
}

func (l *leaseOwners) set(id int64, uid uint32) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.owner == nil {
		l.owner = map[int64]uint32{}
	}
	l.owner[id] = uid
}

func (l *leaseOwners) forget(id int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.owner, id)
}

// owns: the lease was granted through the agent by this uid.
func (l *leaseOwners) owns(id int64, uid uint32) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	u, ok := l.owner[id]
	return ok && u == uid
}

// checkLease refuses a lease the peer did not grant through the agent (0:
// none, always allowed).
func (s *Server) checkLease(ctx context.Context, id int64) error {
	if id == 0 {
		return nil
	}
	p, err := peerOf(ctx)
	if err != nil {
		return err
	}
	if p.Known && s.leases.owns(id, p.UID) {
		return nil
	}
	if !s.leaseExists(ctx, id) {
		return rpctypes.ErrGRPCLeaseNotFound // as etcd answers a lease it does not have
	}
	return status.Errorf(codes.PermissionDenied, "endpointd: %s may not use lease %x: it was not granted through this agent by that uid", p, id)
}

// leaseExists asks etcd whether lease id exists — on a refusal's path only,
// so that a lease nobody has is "not found", as etcd says, and only someone
// else's is refused. An unanswered question counts as existing.
func (s *Server) leaseExists(ctx context.Context, id int64) bool {
	resp, err := forward(ctx, s, func(conn *grpc.ClientConn, uctx context.Context) (*pb.LeaseTimeToLiveResponse, error) {
		return pb.NewLeaseClient(conn).LeaseTimeToLive(uctx, &pb.LeaseTimeToLiveRequest{ID: id}, callOpts...)
	})
	return err != nil || resp.TTL != -1
}
