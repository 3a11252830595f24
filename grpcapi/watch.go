package grpcapi

import (
	"context"
	"errors"
	"io"
	"slices"
	"sync"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"udp_iaasd/access"
	"udp_iaasd/etcd"
)

// Watch serves etcd's watch protocol through the agent's one follower
// (etcd.Follow), as the HTTP watch does: a single key or a prefix without
// prev_kv rides the shared upstream watches, so watchers of one prefix on
// both sockets cost etcd one watch; other ranges, and prev_kv, get an
// upstream watch of their own. Either way a watch resumes after its last
// event when its upstream breaks — an endpoints reload, a member killed —
// so nothing is missed or repeated, and a compacted start is cancelled with
// its CompactRevision, as etcd does.
//
// What differs from etcd's own server: progress_notify's periodic
// notifications are not sent (a WatchProgressRequest is answered);
// fragment is ignored (responses are whole); the header carries the
// revision only.
type watchServer struct {
	pb.UnimplementedWatchServer
	s *Server
}

// watchStream is one client stream: a receiver (the handler goroutine), one
// sender, and the watches it holds.
type watchStream struct {
	s      *Server
	stream pb.Watch_WatchServer
	ctx    context.Context
	out    chan *pb.WatchResponse // to the sender; never closed

	// requireLeader: the client asked for etcd's "require leader"
	// (clientv3.WithRequireLeader): a lost leader ends the whole stream
	// with "no leader", as etcd ends it; failed carries that error.
	requireLeader bool
	failed        chan error

	mu      sync.Mutex // guards watches and nextID
	watches map[int64]context.CancelFunc
	nextID  int64
}

func (w *watchServer) Watch(stream pb.Watch_WatchServer) error {
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	ws := &watchStream{s: w.s, stream: stream, ctx: ctx, out: make(chan *pb.WatchResponse, 64),
		watches: map[int64]context.CancelFunc{}, failed: make(chan error, 1)}
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		ws.requireLeader = slices.Contains(md.Get(rpctypes.MetadataRequireLeaderKey), rpctypes.MetadataHasLeader)
	}
	senderr := make(chan error, 1)
	go func() { senderr <- ws.send() }()
	recverr := make(chan error, 1)
	go func() { recverr <- ws.recv() }()
	select {
	case err := <-ws.failed:
		return err
	case err := <-senderr:
		return err
	case err := <-recverr:
		if errors.Is(err, io.EOF) {
			return nil
		}
		return err
	}
}

// send is the stream's only sender.
func (ws *watchStream) send() error {
	for {
		select {
		case <-ws.ctx.Done():
			return nil
		case r := <-ws.out:
			if err := ws.stream.Send(r); err != nil {
				return err
			}
		}
	}
}

func (ws *watchStream) emit(r *pb.WatchResponse) bool {
	select {
	case ws.out <- r:
		return true
	case <-ws.ctx.Done():
		return false
	}
}

func (ws *watchStream) recv() error {
	for {
		req, err := ws.stream.Recv()
		if err != nil {
			return err
		}
		switch r := req.RequestUnion.(type) {
		case *pb.WatchRequest_CreateRequest:
			ws.create(r.CreateRequest)
		case *pb.WatchRequest_CancelRequest:
			ws.cancel(r.CancelRequest.WatchId, "")
		case *pb.WatchRequest_ProgressRequest:
			// Every watch answers with its own progress when etcd confirms
			// its upstream; the shared ones ride the default stream.
			ws.s.ec.AskWatchProgress("", 0)
		}
	}
}

// compactedReason is etcd's own cancel reason for a compacted start.
const compactedReason = "etcdserver: mvcc: required revision has been compacted"

// create starts a watch, or answers why it cannot (created and canceled at
// once, as etcd does).
func (ws *watchStream) create(cr *pb.WatchCreateRequest) {
	ws.mu.Lock()
	id := cr.WatchId
	if id == 0 {
		for ws.watches[ws.nextID] != nil {
			ws.nextID++
		}
		id = ws.nextID
		ws.nextID++
	} else if ws.watches[id] != nil {
		ws.mu.Unlock()
		ws.emit(&pb.WatchResponse{WatchId: id, Created: true, Canceled: true, CancelReason: "endpointd: watch id already in use"})
		return
	}
	ctx, cancel := context.WithCancel(ws.ctx)
	ws.watches[id] = cancel
	ws.mu.Unlock()

	pm, err := ws.s.permit(ws.ctx, access.Read, cr.Key, cr.RangeEnd, "Watch")
	if err != nil {
		ws.drop(id)
		ws.emit(&pb.WatchResponse{WatchId: id, Created: true, Canceled: true, CancelReason: status.Convert(err).Message()})
		return
	}
	ws.s.watches.Add(1)
	go func() {
		defer ws.s.watches.Add(-1)
		ws.run(ctx, id, cr, pm)
	}()
}

func (ws *watchStream) drop(id int64) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	if c := ws.watches[id]; c != nil {
		c()
		delete(ws.watches, id)
	}
}

// cancel ends a watch at the client's request (or with reason).
func (ws *watchStream) cancel(id int64, reason string) {
	ws.mu.Lock()
	c := ws.watches[id]
	delete(ws.watches, id)
	ws.mu.Unlock()
	if c != nil {
		c()
		ws.emit(&pb.WatchResponse{WatchId: id, Canceled: true, CancelReason: reason})
	}
}

// run follows one watch until it is cancelled, its start is compacted, or
// the rules stop allowing it.
func (ws *watchStream) run(ctx context.Context, id int64, cr *pb.WatchCreateRequest, pm *access.Permit) {
	key, end := string(cr.Key), string(cr.RangeEnd)
	o := etcd.FollowOptions{PrevKV: cr.PrevKv, RequireLeader: ws.requireLeader}
	if end != "" && end == access.PrefixEnd(key) {
		o.Prefix = true // a shared watch can take it
	} else {
		o.End = end
	}
	f, err := ws.s.ec.StartFollow(ctx, key, cr.StartRevision, o)
	if err != nil {
		if etcd.KindOf(err) == etcd.KindCompacted {
			// As etcd answers a watch from a compacted revision: created,
			// then cancelled with the compaction's revision.
			compacted := &pb.WatchResponse{WatchId: id, Canceled: true, CancelReason: compactedReason,
				CompactRevision: ws.s.ec.CompactRevision(ctx, cr.StartRevision)}
			ws.drop(id)
			if ws.emit(&pb.WatchResponse{WatchId: id, Created: true}) {
				ws.emit(compacted)
			}
			return
		}
		ws.drop(id)
		ws.emit(&pb.WatchResponse{WatchId: id, Created: true, Canceled: true, CancelReason: "endpointd: " + toStatus(err).Error()})
		return
	}
	defer f.Stop()
	in := f.C
	noPut, noDelete := false, false
	for _, f := range cr.Filters {
		switch f {
		case pb.WatchCreateRequest_NOPUT:
			noPut = true
		case pb.WatchCreateRequest_NODELETE:
			noDelete = true
		}
	}
	if !ws.emit(&pb.WatchResponse{Header: &pb.ResponseHeader{Revision: f.Current}, WatchId: id, Created: true}) {
		return
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-pm.Changed():
			if err := pm.Recheck(); err != nil {
				ws.cancel(id, err.Error())
				return
			}
		case wr, ok := <-in:
			if !ok {
				return
			}
			if wr.Err != nil { // the leader is lost (RequireLeader)
				select {
				case ws.failed <- rpctypes.ErrGRPCNoLeader:
				default:
				}
				return
			}
			if wr.CompactRevision != 0 {
				ws.drop(id)
				ws.emit(&pb.WatchResponse{Header: &pb.ResponseHeader{Revision: wr.Revision}, WatchId: id, Canceled: true,
					CompactRevision: wr.CompactRevision, CancelReason: compactedReason})
				return
			}
			evs := make([]*mvccpb.Event, 0, len(wr.Events))
			for _, ev := range wr.Events {
				if (ev.Type == mvccpb.PUT && noPut) || (ev.Type == mvccpb.DELETE && noDelete) {
					continue
				}
				evs = append(evs, ev)
			}
			if len(evs) == 0 && !wr.Progress {
				continue
			}
			if !ws.emit(&pb.WatchResponse{Header: &pb.ResponseHeader{Revision: wr.Revision, MemberId: wr.MemberID}, WatchId: id, Events: evs}) {
				return
			}
		}
	}
}
