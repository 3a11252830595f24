package etcd

import (
	"context"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"
)

// outcomes watches the live client's unary RPCs (as a gRPC stats handler)
// for the signs of a member that stopped answering while its connection
// stays open — a stopped process, a black-holed network. gRPC notices those
// only through keepalive, and etcd refuses keepalive pings on connections
// without streams (its enforcement policy has PermitWithoutStream off), so a
// connection to a hung member would look healthy for as long as requests
// keep timing out on it. The two signs:
//   - a connection has had requests in flight and completed none for
//     suspectAfter;
//   - a request ended with DeadlineExceeded or Unavailable.
//
// Either one calls suspect, which asks the health loop for a probe round
// (health.go); the loop decides, and backs off when its rounds find nothing
// (a cluster that is slow everywhere is not a hung member). The only timer
// is a connection's while it has requests in flight: an idle client runs
// none.
type outcomes struct {
	suspectAfter time.Duration
	suspect      func()
	now          func() time.Time

	mu    sync.Mutex
	conns map[net.Addr]*connLoad // keyed by the transport's own RemoteAddr value, so per connection
	// lastAnswer is when a request last completed without error: proof
	// that some member was answering then, which a probe round that found
	// every member silent must not contradict (health.go).
	lastAnswer time.Time
}

// connLoad is one connection's unary requests in flight.
type connLoad struct {
	inflight int
	since    time.Time   // the last completion, or when the first of inflight began
	timer    *time.Timer // runs check while the entry exists
}

type rpcStateKey struct{}

// rpcState follows one RPC attempt from its headers to its end.
type rpcState struct {
	stream bool     // watches and keepalives are long-lived by design: not counted
	addr   net.Addr // set when the request left on a connection
}

// probeKey marks the health loop's own probes, whose outcomes are its own
// business: counting them would make every failed probe a new suspicion.
type probeKey struct{}

func newOutcomes(suspectAfter time.Duration, suspect func()) *outcomes {
	return &outcomes{suspectAfter: suspectAfter, suspect: suspect, now: time.Now, conns: map[net.Addr]*connLoad{}}
}

func (o *outcomes) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context {
	if ctx.Value(probeKey{}) != nil {
		return ctx
	}
	return context.WithValue(ctx, rpcStateKey{}, &rpcState{})
}

func (o *outcomes) HandleRPC(ctx context.Context, s stats.RPCStats) {
	st, _ := ctx.Value(rpcStateKey{}).(*rpcState)
	if st == nil {
		return
	}
	switch s := s.(type) {
	case *stats.Begin:
		st.stream = s.IsClientStream || s.IsServerStream
	case *stats.OutHeader:
		if !st.stream && s.RemoteAddr != nil {
			st.addr = s.RemoteAddr
			o.begin(s.RemoteAddr)
		}
	case *stats.End:
		if st.addr != nil {
			o.end(st.addr, s.Error)
			st.addr = nil
		}
	}
}

func (o *outcomes) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }
func (o *outcomes) HandleConn(context.Context, stats.ConnStats)                       {}

// begin counts a request leaving on addr's connection.
func (o *outcomes) begin(addr net.Addr) {
	now := o.now()
	o.mu.Lock()
	defer o.mu.Unlock()
	cl := o.conns[addr]
	if cl == nil {
		cl = &connLoad{since: now}
		cl.timer = time.AfterFunc(o.suspectAfter, func() { o.check(addr) })
		o.conns[addr] = cl
	}
	if cl.inflight == 0 {
		cl.since = now
	}
	cl.inflight++
}

// end counts a request on addr's connection out.
func (o *outcomes) end(addr net.Addr, err error) {
	now := o.now()
	o.mu.Lock()
	if cl := o.conns[addr]; cl != nil {
		cl.inflight--
		cl.since = now
	}
	if err == nil {
		o.lastAnswer = now
	}
	o.mu.Unlock()
	if failedOnMember(err) {
		o.suspect()
	}
}

// answeredSince reports whether a request completed without error at or
// after t.
func (o *outcomes) answeredSince(t time.Time) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return !o.lastAnswer.Before(t)
}

// check runs on a connection's timer: a connection with requests in flight
// that has completed none for suspectAfter is suspect (and is checked again
// after another suspectAfter while it stays so). An idle connection's entry
// and timer go; the next request makes new ones.
func (o *outcomes) check(addr net.Addr) {
	now := o.now()
	o.mu.Lock()
	cl := o.conns[addr]
	if cl == nil {
		o.mu.Unlock()
		return
	}
	if cl.inflight <= 0 {
		delete(o.conns, addr)
		o.mu.Unlock()
		return
	}
	quiet := now.Sub(cl.since)
	stuck := quiet >= o.suspectAfter
	if stuck {
		cl.timer.Reset(o.suspectAfter)
	} else {
		cl.timer.Reset(o.suspectAfter - quiet)
	}
	o.mu.Unlock()
	if stuck {
		o.suspect()
	}
}

// stop ends the timers (Close).
func (o *outcomes) stop() {
	o.mu.Lock()
	defer o.mu.Unlock()
	for addr, cl := range o.conns {
		cl.timer.Stop()
		delete(o.conns, addr)
	}
}

// failedOnMember: the request ended without an answer from its member.
// Cancellation by the caller is not a member's fault.
func failedOnMember(err error) bool {
	if err == nil {
		return false
	}
	switch status.Code(err) {
	case codes.DeadlineExceeded, codes.Unavailable:
		return true
	}
	return false
}
