package etcd

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"

	"udp_iaasd/backoff"
)

// Health is a snapshot of the connection to etcd. It is a value: callers may
// keep it.
type Health struct {
	// Connected is true while the client holds a ready connection to at
	// least one member and the latest probe round, if any, did not find
	// every member silent.
	Connected  bool
	ClusterID  string
	Leader     string // the leader's endpoint when it is one of ours, else its member ID in hex
	Reconnects uint64
	LastError  string
	CheckedAt  time.Time // when Members were probed; zero before the first round
	Members    []MemberHealth

	answered int // members that answered the round at all (healthy or not)
}

// MemberHealth is the latest probe of one endpoint.
type MemberHealth struct {
	Endpoint  string
	Healthy   bool
	LatencyMS float64
	Error     string
}

// ConnectionChanged is closed when Health().Connected next changes: take
// it, then read Health, and wait on it for the next change.
func (c *EtcdClient) ConnectionChanged() <-chan struct{} {
	if c.health == nil {
		return nil // a broken client never connects
	}
	return *c.health.changed.Load()
}

// Health returns the latest connection snapshot without contacting etcd.
func (c *EtcdClient) Health() Health {
	if c.health == nil {
		return Health{LastError: fmt.Sprint(c.initErr)}
	}
	h := c.health.snapshot()
	h.Members = slices.Clone(h.Members)
	return h
}

// CheckHealth returns a snapshot whose Members were probed at most
// StatusProbeInterval ago, probing them now if the last round is older.
// Concurrent callers share one round, so a monitoring system polling
// /v1/status every second costs etcd one round per StatusProbeInterval.
func (c *EtcdClient) CheckHealth(ctx context.Context) Health {
	if c.health == nil {
		return c.Health()
	}
	done := make(chan struct{})
	select {
	case c.health.probec <- done:
		select {
		case <-done:
		case <-ctx.Done():
		}
	case <-c.health.done:
	case <-ctx.Done():
	}
	return c.Health()
}

// healthLoop keeps the Health snapshot without polling etcd. It follows the
// live client's gRPC connectivity state (gRPC reconnects on its own, with
// our backoff policy and jitter, see newClientv3), and probes the members
// with the Status RPC only when there is a reason to: a state change, an
// endpoint change, a request outcome that points at a member (outcome.go),
// a CheckHealth caller, or — while something is wrong — the backoff
// schedule. A member that does not answer its probe while another does is
// ejected from the live client's endpoint list, so that requests stop
// going to it, and restored when it answers again.
//
// One goroutine (run) owns every field below epoch; snap and down are
// written by it and read by anyone.
type healthLoop struct {
	c        *EtcdClient
	kickc    chan struct{}      // the endpoints or the client changed
	suspectc chan struct{}      // a request outcome points at a member
	probec   chan chan struct{} // CheckHealth: probe if stale, then close
	ctx      context.Context    // run's; cancelled by stop
	cancel   context.CancelFunc
	done     chan struct{}
	snap     atomic.Pointer[Health]
	// changed is closed, and replaced, when Connected changes.
	changed atomic.Pointer[chan struct{}]
	// down is set when a probe round found every member silent while their
	// connections stayed open (a hung cluster), so that requests fail fast
	// instead of each waiting for its timeout.
	down atomic.Bool
	// epoch counts endpoint changes. A round of probes started under an older
	// epoch describes endpoints that are gone, and is thrown away.
	epoch atomic.Uint64

	// owned by run
	gen        *generation             // the client whose state is followed
	statec     chan connectivity.State // state changes of gen's channel
	unwatch    context.CancelFunc
	state      connectivity.State // gen's channel state, as last reported
	leaderless bool               // the last round: members answered, none with a leader and no alarm
	connected  bool
	everUp     bool
	reconnects uint64
	buildDue   bool            // a pending client should be built now
	retry      backoff.Backoff // paces rounds while something is wrong
	// Suspicion rounds that find every member answering back off: a
	// cluster slow everywhere makes every agent of a fleet suspicious at
	// once, and their probes must not add to its load.
	suspectWait backoff.Backoff
	lastSuspect time.Time
	nextSuspect time.Time
}

// newHealthLoop builds the loop; start runs it. They are apart so that the
// client holds the loop before the loop's goroutine can look for it.
func newHealthLoop(c *EtcdClient) *healthLoop {
	ctx, cancel := context.WithCancel(context.Background())
	l := &healthLoop{
		ctx:         ctx,
		c:           c,
		kickc:       make(chan struct{}, 1),
		suspectc:    make(chan struct{}, 1),
		probec:      make(chan chan struct{}),
		cancel:      cancel,
		done:        make(chan struct{}),
		retry:       backoff.Backoff{Policy: c.cfg.Backoff},
		suspectWait: backoff.Backoff{Policy: c.cfg.Backoff},
		buildDue:    true,
	}
	l.snap.Store(&Health{})
	first := make(chan struct{})
	l.changed.Store(&first)
	return l
}

func (l *healthLoop) start() { go l.run(l.ctx) }

func (l *healthLoop) snapshot() Health {
	if l == nil {
		return Health{}
	}
	return *l.snap.Load()
}

// kick tells the loop the endpoints or the client changed: the members'
// snapshot is dropped (it described the old set) and the loop re-attaches.
// It never blocks; it is a no-op before the loop exists (New applies its
// endpoints first).
func (l *healthLoop) kick() {
	if l == nil {
		return
	}
	l.epoch.Add(1)
	l.down.Store(false)
	// Compare-and-swap: run may publish a change of Connected meanwhile,
	// and a plain store of the value read before it would undo it
	// without closing the channel.
	for {
		prev := l.snap.Load()
		next := &Health{Connected: prev.Connected, Reconnects: prev.Reconnects}
		if l.snap.CompareAndSwap(prev, next) {
			break
		}
	}
	select {
	case l.kickc <- struct{}{}:
	default:
	}
}

// suspect asks for a probe round; outcomes calls it on the request path, so
// it never blocks.
func (l *healthLoop) suspect() {
	if l == nil {
		return // New's own requests, before the loop starts
	}
	select {
	case l.suspectc <- struct{}{}:
	default:
	}
}

func (l *healthLoop) stop() {
	l.cancel()
	<-l.done
}

func (l *healthLoop) run(ctx context.Context) {
	defer close(l.done)
	defer l.watchState(ctx, nil)
	var retry, joinT *time.Timer
	defer func() {
		if retry != nil {
			retry.Stop()
		}
		if joinT != nil {
			joinT.Stop()
		}
	}()
	for {
		if l.buildDue {
			l.buildDue = false
			if err := l.c.buildPending(); err != nil {
				l.store(Health{LastError: err.Error(), CheckedAt: time.Now()})
			}
		}
		l.watchState(ctx, l.c.liveGen())

		// Something is wrong that only a later round can tell is over: arm
		// the backoff timer. Otherwise no timer runs at all.
		var retryc <-chan time.Time
		if l.troubled() {
			if retry == nil {
				d := l.retry.Next()
				l.c.log.Debug("etcd health: next probe round scheduled", "attempt", l.retry.Attempt(), "in", d)
				retry = time.NewTimer(d)
			}
			retryc = retry.C
		} else if retry != nil {
			retry.Stop()
			retry = nil
			l.retry.Reset()
		}

		// Waiting endpoints join at their time (ConnectSpread).
		var joinc <-chan time.Time
		if joinT != nil {
			joinT.Stop()
			joinT = nil
		}
		if at := l.c.joinAt(); !at.IsZero() {
			joinT = time.NewTimer(time.Until(at))
			joinc = joinT.C
		}

		select {
		case <-ctx.Done():
			return
		case <-joinc:
			l.c.join(false)
		case <-l.kickc:
			// New addresses get subchannels of their own, which dial at
			// once. (gRPC's ResetConnectBackoff is not used: v1.83.2
			// iterates the channel's subchannel map after releasing the lock
			// that guards it, a data race with the balancer.)
			l.buildDue = true
		case st := <-l.statec:
			l.onState(ctx, st)
		case <-l.suspectc:
			l.onSuspicion(ctx)
		case done := <-l.probec:
			if time.Since(l.snap.Load().CheckedAt) >= l.c.cfg.StatusProbeInterval {
				l.round(ctx)
			}
			close(done)
		case <-retryc:
			retry = nil
			l.buildDue = true
			l.round(ctx)
		}
	}
}

// onSuspicion runs a probe round for a request outcome that points at a
// member: at most one per ProbeTimeout while rounds find silent members,
// and on a backoff schedule while they find none.
func (l *healthLoop) onSuspicion(ctx context.Context) {
	now := time.Now()
	if now.Before(l.nextSuspect) {
		return
	}
	if now.Sub(l.lastSuspect) > l.c.cfg.Backoff.Max {
		l.suspectWait.Reset() // a new episode
	}
	l.lastSuspect = now
	l.c.log.Debug("etcd health: a request outcome points at a member; probing")
	if l.round(ctx) > 0 {
		l.suspectWait.Reset()
		l.nextSuspect = now.Add(l.c.cfg.ProbeTimeout)
	} else {
		l.nextSuspect = now.Add(l.suspectWait.Next())
	}
}

// troubled: a client waits to be built, a member is ejected, every member
// was found silent, or none had a leader. Each needs a later round to end
// it.
func (l *healthLoop) troubled() bool {
	return l.c.hasPending() || l.c.hasEjected() || l.down.Load() || l.leaderless
}

// watchState makes the loop watch g's channel state (nil: none).
func (l *healthLoop) watchState(ctx context.Context, g *generation) {
	if g == l.gen {
		return
	}
	if l.unwatch != nil {
		l.unwatch()
		l.unwatch = nil
	}
	l.gen, l.statec, l.state = g, nil, connectivity.Idle
	if g == nil {
		return
	}
	fctx, cancel := context.WithCancel(ctx)
	l.unwatch = cancel
	statec := make(chan connectivity.State, 1)
	l.statec = statec
	conn := g.cli.ActiveConnection()
	first := conn.GetState()
	statec <- first
	// The follower only reports; run decides. It ends with fctx, when the
	// loop follows another client or stops.
	go func() {
		for st := first; conn.WaitForStateChange(fctx, st); {
			st = conn.GetState()
			select {
			case <-statec: // drop an unread older state: only the latest matters
			default:
			}
			statec <- st
		}
	}()
}

// onState handles a change of the followed channel's state.
func (l *healthLoop) onState(ctx context.Context, st connectivity.State) {
	prev := l.state
	l.state = st
	switch {
	case st == connectivity.Ready && prev != connectivity.Ready:
		l.down.Store(false)
		// A round on (re)connection names the cluster and its leader; it
		// is one round per change, not per interval.
		l.round(ctx)
	case st == connectivity.TransientFailure && prev != connectivity.TransientFailure:
		// Every member's connection failed: requests get ErrUnavailable at
		// once (reachable), and a round says why, member by member.
		// Addresses waiting to join (ConnectSpread) are tried now: the
		// ones in use are gone, and the spread only protects members
		// from a fleet's reconnections while something else serves.
		l.c.join(true)
		l.round(ctx)
	default:
		l.store(Health{})
	}
}

// round probes every endpoint once, ejects the silent ones when another
// answered, and stores the snapshot. It returns how many were silent.
func (l *healthLoop) round(ctx context.Context) int {
	epoch := l.epoch.Load()
	eps := l.c.Endpoints()
	start := l.c.outcomes.now()
	conns, err := l.c.dialProbes(eps)
	if err != nil {
		l.store(Health{LastError: err.Error(), CheckedAt: time.Now()})
		return 0
	}
	h := probeRound(ctx, eps, conns, l.c.cfg.ProbeTimeout)
	if ctx.Err() != nil || l.epoch.Load() != epoch {
		return 0 // stopping, or the endpoints changed under the probe
	}
	if h.answered == 0 && len(h.Members) > 0 && l.c.outcomes.answeredSince(start) {
		// No probe was answered in time, yet the live client's requests
		// were answered while the probes waited: the probes were starved
		// (a host too busy to run them in time, the agent on one P), not
		// the cluster hung. Such a round says nothing about the members,
		// so it changes nothing — no member is restored or ejected on its
		// word, and requests are not failed fast. It counts as a round that
		// found no one silent, so suspicion backs off instead of adding
		// probes to a busy host.
		l.c.log.Warn("etcd health: no member answered its probe in time while requests were answered; round disregarded",
			"probe_timeout", l.c.cfg.ProbeTimeout, "error", h.LastError)
		return 0
	}
	silent := map[string]bool{}
	for _, m := range h.Members {
		if !m.Healthy {
			silent[m.Endpoint] = true
		}
	}
	anyHealthy := len(silent) < len(h.Members)
	if anyHealthy {
		l.c.setEjected(epoch, silent)
	} else {
		l.c.setEjected(epoch, nil) // never eject every member
	}
	// No member answering at all while gRPC still holds connections: a
	// hung cluster, so requests fail fast instead of each waiting for its
	// timeout. Members that answer without a leader (an election) are not
	// hung: requests keep going, and etcd decides. (With no connection at
	// all the channel's state already says so.)
	l.down.Store(h.answered == 0 && len(h.Members) > 0)
	// Members answering without a leader (quorum lost, or an election) are
	// not connected for /readyz, and a later round must tell when that
	// ends; requests still go to them.
	l.leaderless = h.answered > 0 && !anyHealthy
	l.store(h)
	return len(silent)
}

// store publishes h with the loop's view of the connection, logging a change.
// Connected needs a ready connection to begin with, and ends only when every
// member's connection has failed (or a round found them all silent): gRPC
// passes through Connecting and Idle while endpoints change, which is no
// disconnection.
func (l *healthLoop) store(h Health) {
	var connected bool
	switch l.state {
	case connectivity.Ready:
		connected = true
	case connectivity.TransientFailure, connectivity.Shutdown:
		connected = false
	default:
		connected = l.connected
	}
	// No client (none built yet, or being rebuilt with new credentials):
	// whatever the last channel said, nothing is connected.
	connected = connected && !l.down.Load() && !l.leaderless && l.c.liveGen() != nil
	log := l.c.log
	switch {
	case connected && !l.connected:
		if l.everUp {
			l.reconnects++
		}
		l.everUp = true
		log.Info("etcd connected", "cluster_id", h.ClusterID, "leader", h.Leader, "reconnects", l.reconnects)
	case !connected && l.connected:
		log.Warn("etcd unreachable", "error", h.LastError)
	case !connected && !l.everUp && h.LastError != "" && l.retry.Attempt() <= 1:
		log.Warn("etcd not reachable yet", "error", h.LastError)
	}
	changed := connected != l.connected
	l.connected = connected
	h.Connected = connected
	h.Reconnects = l.reconnects
	if h.CheckedAt.IsZero() {
		// A state change without a round keeps the last round's members.
		prev := l.snap.Load()
		h.ClusterID, h.Leader, h.CheckedAt, h.Members = prev.ClusterID, prev.Leader, prev.CheckedAt, prev.Members
	}
	// Publish, then wake: a waiter takes the channel and then reads Health
	// (see ConnectionChanged). Closing first would let it take the new
	// channel and read the old snapshot, and wait for a change it has
	// already missed.
	l.snap.Store(&h)
	if changed {
		next := make(chan struct{})
		close(*l.changed.Swap(&next))
	}
}

// dialProbes dials one short-lived connection to each of eps for a probe
// round. The live client's own connections cannot be aimed at one member,
// and keeping a second set open would double every agent's connections to
// etcd for the sake of a rare round.
func (c *EtcdClient) dialProbes(eps []string) ([]*grpc.ClientConn, error) {
	// clientv3's Client.Dial reads the endpoint list without the lock that
	// SetEndpoints takes (v3.7.3, client.go dial), so dial under our read lock:
	// SetEndpoints is only called under our write lock.
	c.mu.RLock()
	defer c.mu.RUnlock()
	if err := c.usableLocked(); err != nil {
		return nil, err
	}
	conns := make([]*grpc.ClientConn, len(eps))
	for i, ep := range eps {
		conn, err := c.gen.cli.Dial(ep)
		if err != nil {
			for _, c := range conns[:i] {
				c.Close()
			}
			return nil, fmt.Errorf("dial %s for a health probe: %w", ep, err)
		}
		conns[i] = conn
	}
	return conns, nil
}

// probeRound is probeMembers; the health loop calls it through this
// variable so that tests can hold a round back as a starved host would.
var probeRound = probeMembers

// probeMembers sends Status to every endpoint concurrently, closes the
// connections and returns the round's snapshot (Connected and Reconnects
// not yet set). Latency is the Status call's alone, not the dial's.
func probeMembers(ctx context.Context, eps []string, conns []*grpc.ClientConn, timeout time.Duration) Health {
	members := make([]MemberHealth, len(eps))
	resps := make([]*pb.StatusResponse, len(eps))
	var answered atomic.Int32
	var wg sync.WaitGroup
	for i, ep := range eps {
		conn := conns[i]
		wg.Go(func() {
			defer conn.Close()
			pctx, cancel := context.WithTimeout(context.WithValue(ctx, probeKey{}, true), timeout)
			defer cancel()
			m := MemberHealth{Endpoint: ep}
			// On a failed connection the call fails at once with gRPC's
			// account of why, which is the error worth reporting.
			ready := waitReady(pctx, conn)
			start := time.Now()
			resp, err := pb.NewMaintenanceClient(conn).Status(pctx, &pb.StatusRequest{})
			if ready {
				m.LatencyMS = float64(time.Since(start).Microseconds()) / 1000
			}
			if err == nil {
				answered.Add(1)
			}
			switch {
			case err != nil:
				m.Error = probeError(err)
			case resp.Leader == 0:
				m.Error = "member has no leader"
			case len(resp.Errors) > 0:
				m.Error = "member reports: " + strings.Join(resp.Errors, "; ")
			default:
				m.Healthy = true
				resps[i] = resp
			}
			members[i] = m
		})
	}
	wg.Wait()

	h := Health{CheckedAt: time.Now(), Members: members, answered: int(answered.Load())}
	var errs []string
	for i, m := range members {
		if !m.Healthy {
			errs = append(errs, m.Endpoint+": "+m.Error)
			continue
		}
		if h.ClusterID == "" {
			r := resps[i]
			h.ClusterID = fmt.Sprintf("%x", r.Header.ClusterId)
			h.Leader = fmt.Sprintf("%x", r.Leader)
		}
	}
	// Name the leader by endpoint when it is one of ours.
	for i, r := range resps {
		if r != nil && r.Header.MemberId == r.Leader {
			h.Leader = eps[i]
		}
	}
	if len(errs) == len(members) {
		h.LastError = strings.Join(errs, "; ")
	}
	return h
}

// waitReady connects conn and waits until it is ready (true), has failed,
// or ctx ends.
func waitReady(ctx context.Context, conn *grpc.ClientConn) bool {
	conn.Connect()
	for {
		st := conn.GetState()
		switch st {
		case connectivity.Ready:
			return true
		case connectivity.TransientFailure, connectivity.Shutdown:
			return false
		}
		if !conn.WaitForStateChange(ctx, st) {
			return false
		}
	}
}

func probeError(err error) string {
	if errors.Is(err, context.DeadlineExceeded) || strings.Contains(err.Error(), "DeadlineExceeded") {
		return "no answer within the probe timeout"
	}
	return err.Error()
}

func (c *EtcdClient) hasPending() bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.pending != nil
}

func (c *EtcdClient) liveGen() *generation {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.gen
}
