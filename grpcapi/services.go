package grpcapi

import (
	"context"
	"errors"
	"io"
	"math"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3election/v3electionpb"
	"go.etcd.io/etcd/server/v3/etcdserver/api/v3lock/v3lockpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"udp_iaasd/access"
	"udp_iaasd/cache"
)

// KV: every key range of a request is checked, then the request goes to
// the cluster as it came.
type kvServer struct {
	pb.UnimplementedKVServer
	s *Server
}

func (k *kvServer) Range(ctx context.Context, r *pb.RangeRequest) (*pb.RangeResponse, error) {
	if err := k.s.check(ctx, access.Read, r.Key, r.RangeEnd, "Range"); err != nil {
		return nil, err
	}
	if resp := k.s.fromCache(r); resp != nil {
		return resp, nil
	}
	return forward(ctx, k.s, func(conn *grpc.ClientConn, uctx context.Context) (*pb.RangeResponse, error) {
		return pb.NewKVClient(conn).Range(uctx, r, callOpts...)
	})
}

// fromCache answers a serializable range of the current revision from the
// read cache when the cache covers it and the request asks for nothing the
// cache does not keep (a revision, sorting other than by key, revision
// filters, count only); nil otherwise. The cache is fresh to
// cache.max_staleness and has this agent's own writes, as for HTTP reads.
func (s *Server) fromCache(r *pb.RangeRequest) *pb.RangeResponse {
	if s.cache == nil || !r.Serializable || r.Revision != 0 || r.CountOnly ||
		r.MinModRevision != 0 || r.MaxModRevision != 0 || r.MinCreateRevision != 0 || r.MaxCreateRevision != 0 ||
		(r.SortOrder != pb.RangeRequest_NONE && !(r.SortTarget == pb.RangeRequest_KEY && r.SortOrder == pb.RangeRequest_ASCEND)) {
		return nil
	}
	key := string(r.Key)
	resp := &pb.RangeResponse{Header: &pb.ResponseHeader{}}
	switch {
	case len(r.RangeEnd) == 0:
		kv, info, ok := s.cache.Get(key, cache.Fresh)
		if !ok {
			return nil
		}
		resp.Header.Revision = info.Rev
		if kv != nil {
			resp.Kvs, resp.Count = []*mvccpb.KeyValue{kv}, 1
		}
	case key != "" && string(r.RangeEnd) == access.PrefixEnd(key):
		kvs, count, more, info, ok := s.cache.List(key, r.Limit, cache.Fresh)
		if !ok {
			return nil
		}
		resp.Header.Revision, resp.Kvs, resp.Count, resp.More = info.Rev, kvs, count, more
	default:
		return nil
	}
	if r.KeysOnly {
		stripped := make([]*mvccpb.KeyValue, len(resp.Kvs))
		for i, kv := range resp.Kvs {
			stripped[i] = &mvccpb.KeyValue{Key: kv.Key, CreateRevision: kv.CreateRevision, ModRevision: kv.ModRevision,
				Version: kv.Version, Lease: kv.Lease}
		}
		resp.Kvs = stripped
	}
	return resp
}

// wrote tells the read cache of a write through this socket, so that reads
// through the agent wait for it (read-your-writes).
func (s *Server) wrote(key []byte, h *pb.ResponseHeader) {
	if s.cache != nil && h != nil {
		s.cache.Wrote(string(key), h.Revision)
	}
}

func (k *kvServer) Put(ctx context.Context, r *pb.PutRequest) (*pb.PutResponse, error) {
	if err := k.s.checkPut(ctx, r); err != nil {
		return nil, err
	}
	resp, err := forward(ctx, k.s, func(conn *grpc.ClientConn, uctx context.Context) (*pb.PutResponse, error) {
		return pb.NewKVClient(conn).Put(uctx, r, callOpts...)
	})
	if err == nil {
		k.s.wrote(r.Key, resp.Header)
	}
	return resp, err
}

func (k *kvServer) DeleteRange(ctx context.Context, r *pb.DeleteRangeRequest) (*pb.DeleteRangeResponse, error) {
	if err := k.s.checkDelete(ctx, r); err != nil {
		return nil, err
	}
	resp, err := forward(ctx, k.s, func(conn *grpc.ClientConn, uctx context.Context) (*pb.DeleteRangeResponse, error) {
		return pb.NewKVClient(conn).DeleteRange(uctx, r, callOpts...)
	})
	if err == nil {
		k.s.wrote(r.Key, resp.Header)
	}
	return resp, err
}

func (k *kvServer) Txn(ctx context.Context, r *pb.TxnRequest) (*pb.TxnResponse, error) {
	if err := k.s.checkTxn(ctx, r); err != nil {
		return nil, err
	}
	resp, err := forward(ctx, k.s, func(conn *grpc.ClientConn, uctx context.Context) (*pb.TxnResponse, error) {
		return pb.NewKVClient(conn).Txn(uctx, r, callOpts...)
	})
	if err == nil {
		k.s.wroteTxn(r, resp.Header)
	}
	return resp, err
}

// wroteTxn tells the cache of every key a transaction may have written
// (both branches: which ran does not matter for a lower bound).
func (s *Server) wroteTxn(r *pb.TxnRequest, h *pb.ResponseHeader) {
	for _, branch := range [][]*pb.RequestOp{r.Success, r.Failure} {
		for _, op := range branch {
			switch o := op.Request.(type) {
			case *pb.RequestOp_RequestPut:
				s.wrote(o.RequestPut.Key, h)
			case *pb.RequestOp_RequestDeleteRange:
				s.wrote(o.RequestDeleteRange.Key, h)
			case *pb.RequestOp_RequestTxn:
				s.wroteTxn(o.RequestTxn, h)
			}
		}
	}
}

// callOpts are every forwarded call's: no limit on the answer's size, as
// clientv3 sets none (gRPC's default would refuse an answer over 4 MiB that
// the members send a direct client whole).
var callOpts = []grpc.CallOption{grpc.MaxCallRecvMsgSize(math.MaxInt32)}

// forward sends a checked request to the cluster on the live connection
// and returns etcd's answer as it is.
func forward[Resp any](ctx context.Context, s *Server, call func(*grpc.ClientConn, context.Context) (Resp, error)) (Resp, error) {
	if err := s.takeBudget(ctx); err != nil {
		var zero Resp
		return zero, err
	}
	conn, uctx, err := s.upstream(ctx)
	if err != nil {
		var zero Resp
		return zero, err
	}
	return call(conn, uctx)
}

// A put writes its key; returning the previous value reads it; attaching a
// lease uses it.
func (s *Server) checkPut(ctx context.Context, r *pb.PutRequest) error {
	if err := s.check(ctx, access.Write, r.Key, nil, "Put"); err != nil {
		return err
	}
	if r.PrevKv {
		if err := s.check(ctx, access.Read, r.Key, nil, "Put"); err != nil {
			return err
		}
	}
	return s.checkLease(ctx, r.Lease)
}

func (s *Server) checkDelete(ctx context.Context, r *pb.DeleteRangeRequest) error {
	if err := s.check(ctx, access.Write, r.Key, r.RangeEnd, "DeleteRange"); err != nil {
		return err
	}
	if r.PrevKv {
		return s.check(ctx, access.Read, r.Key, r.RangeEnd, "DeleteRange")
	}
	return nil
}

// checkTxn checks every compare (a read) and every operation of both
// branches, whichever runs, nested transactions included.
func (s *Server) checkTxn(ctx context.Context, r *pb.TxnRequest) error {
	for _, c := range r.Compare {
		if err := s.check(ctx, access.Read, c.Key, c.RangeEnd, "Txn"); err != nil {
			return err
		}
	}
	for _, branch := range [][]*pb.RequestOp{r.Success, r.Failure} {
		for _, op := range branch {
			var err error
			switch o := op.Request.(type) {
			case *pb.RequestOp_RequestRange:
				err = s.check(ctx, access.Read, o.RequestRange.Key, o.RequestRange.RangeEnd, "Txn")
			case *pb.RequestOp_RequestPut:
				err = s.checkPut(ctx, o.RequestPut)
			case *pb.RequestOp_RequestDeleteRange:
				err = s.checkDelete(ctx, o.RequestDeleteRange)
			case *pb.RequestOp_RequestTxn:
				err = s.checkTxn(ctx, o.RequestTxn)
			default:
				err = status.Error(codes.InvalidArgument, "endpointd: unknown transaction operation")
			}
			if err != nil {
				return err
			}
		}
	}
	return nil
}

// Lease: a lease may be kept alive, revoked or inspected only by the uid
// that granted it through the agent; listing shows that uid's leases.
type leaseServer struct {
	pb.UnimplementedLeaseServer
	s *Server
}

func (l *leaseServer) LeaseGrant(ctx context.Context, r *pb.LeaseGrantRequest) (*pb.LeaseGrantResponse, error) {
	p, err := peerOf(ctx)
	if err != nil {
		return nil, err
	}
	if err := denied(l.s.gate.AuthorizeLease(p, "LeaseGrant")); err != nil {
		return nil, err
	}
	resp, err := forward(ctx, l.s, func(conn *grpc.ClientConn, uctx context.Context) (*pb.LeaseGrantResponse, error) {
		return pb.NewLeaseClient(conn).LeaseGrant(uctx, r, callOpts...)
	})
	if err == nil && resp.Error == "" {
		l.s.leases.set(resp.ID, p.UID)
	}
	return resp, err
}

func (l *leaseServer) LeaseRevoke(ctx context.Context, r *pb.LeaseRevokeRequest) (*pb.LeaseRevokeResponse, error) {
	if err := l.s.checkLease(ctx, r.ID); err != nil {
		return nil, err
	}
	resp, err := forward(ctx, l.s, func(conn *grpc.ClientConn, uctx context.Context) (*pb.LeaseRevokeResponse, error) {
		return pb.NewLeaseClient(conn).LeaseRevoke(uctx, r, callOpts...)
	})
	if err == nil {
		l.s.leases.forget(r.ID)
	}
	return resp, err
}

func (l *leaseServer) LeaseTimeToLive(ctx context.Context, r *pb.LeaseTimeToLiveRequest) (*pb.LeaseTimeToLiveResponse, error) {
	p, err := peerOf(ctx)
	if err != nil {
		return nil, err
	}
	if err := l.s.checkLease(ctx, r.ID); errors.Is(err, rpctypes.ErrGRPCLeaseNotFound) {
		// etcd answers a lease it does not have with TTL -1, not an error.
		return &pb.LeaseTimeToLiveResponse{Header: &pb.ResponseHeader{}, ID: r.ID, TTL: -1}, nil
	} else if err != nil {
		return nil, err
	}
	resp, err := forward(ctx, l.s, func(conn *grpc.ClientConn, uctx context.Context) (*pb.LeaseTimeToLiveResponse, error) {
		return pb.NewLeaseClient(conn).LeaseTimeToLive(uctx, r, callOpts...)
	})
	if err != nil || !r.Keys {
		return resp, err
	}
	// The keys attached are the lease owner's; the rules may since have
	// taken some of them from it: it is shown those it may read.
	keys := resp.Keys[:0]
	for _, k := range resp.Keys {
		if l.s.gate.Allows(p, access.Read, string(k), "") {
			keys = append(keys, k)
		}
	}
	resp.Keys = keys
	return resp, nil
}

func (l *leaseServer) LeaseLeases(ctx context.Context, r *pb.LeaseLeasesRequest) (*pb.LeaseLeasesResponse, error) {
	p, err := peerOf(ctx)
	if err != nil {
		return nil, err
	}
	resp, err := forward(ctx, l.s, func(conn *grpc.ClientConn, uctx context.Context) (*pb.LeaseLeasesResponse, error) {
		return pb.NewLeaseClient(conn).LeaseLeases(uctx, r, callOpts...)
	})
	if err != nil {
		return nil, err
	}
	own := resp.Leases[:0]
	for _, ls := range resp.Leases {
		if l.s.leases.owns(ls.ID, p.UID) {
			own = append(own, ls)
		}
	}
	resp.Leases = own
	return resp, nil
}

// LeaseKeepAlive passes a stream of keepalives through, each checked. A
// keepalive the peer may not send — a lease it did not grant through the
// agent, or one that is gone — is answered TTL 0, as etcd answers a lease it
// does not have; the stream, which carries the peer's other leases, goes on.
func (l *leaseServer) LeaseKeepAlive(stream pb.Lease_LeaseKeepAliveServer) error {
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	conn, uctx, err := l.s.upstream(ctx)
	if err != nil {
		return err
	}
	up, err := pb.NewLeaseClient(conn).LeaseKeepAlive(uctx, callOpts...)
	if err != nil {
		return err
	}
	// One sender on the client's stream: the upstream's answers and the
	// refusals both go through answers.
	answers := make(chan *pb.LeaseKeepAliveResponse)
	errc := make(chan error, 3)
	go func() { // the client's only sender
		for {
			select {
			case resp := <-answers:
				if err := stream.Send(resp); err != nil {
					errc <- err
					return
				}
			case <-ctx.Done():
				return
			}
		}
	}()
	answer := func(resp *pb.LeaseKeepAliveResponse) bool {
		select {
		case answers <- resp:
			return true
		case <-ctx.Done():
			return false
		}
	}
	go func() { // upstream answers → client
		for {
			resp, err := up.Recv()
			if err != nil {
				errc <- err
				return
			}
			if !answer(resp) {
				return
			}
		}
	}()
	go func() { // client requests → upstream, checked
		for {
			req, err := stream.Recv()
			if err != nil {
				errc <- err
				return
			}
			if err := l.s.checkLease(ctx, req.ID); err != nil {
				if status.Code(err) == codes.PermissionDenied || errors.Is(err, rpctypes.ErrGRPCLeaseNotFound) {
					if !answer(&pb.LeaseKeepAliveResponse{Header: &pb.ResponseHeader{}, ID: req.ID, TTL: 0}) {
						return
					}
					continue
				}
				errc <- err
				return
			}
			if err := up.Send(req); err != nil {
				errc <- err
				return
			}
		}
	}()
	err = <-errc
	if errors.Is(err, io.EOF) {
		return nil
	}
	return err
}

// Cluster: MemberList only.
type clusterServer struct {
	pb.UnimplementedClusterServer
	s *Server
}

// MemberList answers with the socket as every member's client URL, as
// grpc-proxy answers with its own address: a client that syncs its
// endpoints from the member list (clientv3's AutoSyncInterval, etcdctl's
// --cluster) stays on the socket, under its rules, instead of leaving for
// the members.
func (c *clusterServer) MemberList(ctx context.Context, r *pb.MemberListRequest) (*pb.MemberListResponse, error) {
	resp, err := forward(ctx, c.s, func(conn *grpc.ClientConn, uctx context.Context) (*pb.MemberListResponse, error) {
		return pb.NewClusterClient(conn).MemberList(uctx, r, callOpts...)
	})
	if err != nil {
		return nil, err
	}
	for _, m := range resp.Members {
		if len(m.ClientURLs) > 0 { // a learner not started yet has none
			m.ClientURLs = []string{c.s.selfURL()}
		}
	}
	return resp, nil
}

// Maintenance: Status only.
type maintenanceServer struct {
	pb.UnimplementedMaintenanceServer
	s *Server
}

// Alarm lists alarms (etcdctl endpoint health asks); raising or clearing
// one changes the cluster, and is refused.
func (m *maintenanceServer) Alarm(ctx context.Context, r *pb.AlarmRequest) (*pb.AlarmResponse, error) {
	if r.Action != pb.AlarmRequest_GET {
		return nil, status.Error(codes.PermissionDenied, "endpointd: only listing alarms is served on the agent's socket")
	}
	return forward(ctx, m.s, func(conn *grpc.ClientConn, uctx context.Context) (*pb.AlarmResponse, error) {
		return pb.NewMaintenanceClient(conn).Alarm(uctx, r, callOpts...)
	})
}

// Auth: AuthStatus only (whether etcd's own auth is on), which changes and
// exposes nothing; the agent talks to etcd with its own identity.
type authServer struct {
	pb.UnimplementedAuthServer
	s *Server
}

func (a *authServer) AuthStatus(ctx context.Context, r *pb.AuthStatusRequest) (*pb.AuthStatusResponse, error) {
	return forward(ctx, a.s, func(conn *grpc.ClientConn, uctx context.Context) (*pb.AuthStatusResponse, error) {
		return pb.NewAuthClient(conn).AuthStatus(uctx, r, callOpts...)
	})
}

func (m *maintenanceServer) Status(ctx context.Context, r *pb.StatusRequest) (*pb.StatusResponse, error) {
	return forward(ctx, m.s, func(conn *grpc.ClientConn, uctx context.Context) (*pb.StatusResponse, error) {
		return pb.NewMaintenanceClient(conn).Status(uctx, r, callOpts...)
	})
}

// Lock: etcd's own lock service, by name; the lease must be the peer's.
type lockServer struct {
	v3lockpb.UnimplementedLockServer
	s *Server
}

func (l *lockServer) Lock(ctx context.Context, r *v3lockpb.LockRequest) (*v3lockpb.LockResponse, error) {
	if err := l.s.checkName(ctx, r.Name, "Lock"); err != nil {
		return nil, err
	}
	if err := l.s.checkLease(ctx, r.Lease); err != nil {
		return nil, err
	}
	return forward(ctx, l.s, func(conn *grpc.ClientConn, uctx context.Context) (*v3lockpb.LockResponse, error) {
		return v3lockpb.NewLockClient(conn).Lock(uctx, r, callOpts...)
	})
}

func (l *lockServer) Unlock(ctx context.Context, r *v3lockpb.UnlockRequest) (*v3lockpb.UnlockResponse, error) {
	if err := l.s.check(ctx, access.Write, r.Key, nil, "Unlock"); err != nil {
		return nil, err
	}
	return forward(ctx, l.s, func(conn *grpc.ClientConn, uctx context.Context) (*v3lockpb.UnlockResponse, error) {
		return v3lockpb.NewLockClient(conn).Unlock(uctx, r, callOpts...)
	})
}

// checkName: a lock or election NAME is the keys NAME/…, which the peer
// must be allowed to write.
func (s *Server) checkName(ctx context.Context, name []byte, method string) error {
	pfx := append(append([]byte{}, name...), '/')
	return s.check(ctx, access.Write, pfx, []byte(access.PrefixEnd(string(pfx))), method)
}

// Election: etcd's own election service.
type electionServer struct {
	v3electionpb.UnimplementedElectionServer
	s *Server
}

func (e *electionServer) Campaign(ctx context.Context, r *v3electionpb.CampaignRequest) (*v3electionpb.CampaignResponse, error) {
	if err := e.s.checkName(ctx, r.Name, "Campaign"); err != nil {
		return nil, err
	}
	if err := e.s.checkLease(ctx, r.Lease); err != nil {
		return nil, err
	}
	return forward(ctx, e.s, func(conn *grpc.ClientConn, uctx context.Context) (*v3electionpb.CampaignResponse, error) {
		return v3electionpb.NewElectionClient(conn).Campaign(uctx, r, callOpts...)
	})
}

func (e *electionServer) Proclaim(ctx context.Context, r *v3electionpb.ProclaimRequest) (*v3electionpb.ProclaimResponse, error) {
	if err := e.s.checkLeader(ctx, r.Leader, "Proclaim"); err != nil {
		return nil, err
	}
	return forward(ctx, e.s, func(conn *grpc.ClientConn, uctx context.Context) (*v3electionpb.ProclaimResponse, error) {
		return v3electionpb.NewElectionClient(conn).Proclaim(uctx, r, callOpts...)
	})
}

func (e *electionServer) Resign(ctx context.Context, r *v3electionpb.ResignRequest) (*v3electionpb.ResignResponse, error) {
	if err := e.s.checkLeader(ctx, r.Leader, "Resign"); err != nil {
		return nil, err
	}
	return forward(ctx, e.s, func(conn *grpc.ClientConn, uctx context.Context) (*v3electionpb.ResignResponse, error) {
		return v3electionpb.NewElectionClient(conn).Resign(uctx, r, callOpts...)
	})
}

func (e *electionServer) Leader(ctx context.Context, r *v3electionpb.LeaderRequest) (*v3electionpb.LeaderResponse, error) {
	pfx := append(append([]byte{}, r.Name...), '/')
	if err := e.s.check(ctx, access.Read, pfx, []byte(access.PrefixEnd(string(pfx))), "Leader"); err != nil {
		return nil, err
	}
	return forward(ctx, e.s, func(conn *grpc.ClientConn, uctx context.Context) (*v3electionpb.LeaderResponse, error) {
		return v3electionpb.NewElectionClient(conn).Leader(uctx, r, callOpts...)
	})
}

func (e *electionServer) Observe(r *v3electionpb.LeaderRequest, stream v3electionpb.Election_ObserveServer) error {
	ctx := stream.Context()
	pfx := append(append([]byte{}, r.Name...), '/')
	if err := e.s.check(ctx, access.Read, pfx, []byte(access.PrefixEnd(string(pfx))), "Observe"); err != nil {
		return err
	}
	conn, uctx, err := e.s.upstream(ctx)
	if err != nil {
		return err
	}
	up, err := v3electionpb.NewElectionClient(conn).Observe(uctx, r, callOpts...)
	if err != nil {
		return err
	}
	for {
		resp, err := up.Recv()
		if err != nil {
			return err
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
}

// checkLeader: proclaiming or resigning acts on the leader key, which the
// peer must be allowed to write, with its own lease.
func (s *Server) checkLeader(ctx context.Context, l *v3electionpb.LeaderKey, method string) error {
	if l == nil {
		return status.Error(codes.InvalidArgument, "endpointd: no leader key")
	}
	if err := s.checkName(ctx, l.Name, method); err != nil {
		return err
	}
	if err := s.check(ctx, access.Write, l.Key, nil, method); err != nil {
		return err
	}
	return s.checkLease(ctx, l.Lease)
}
