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

// Health is a snapshot of the connection to etcd, as the health loop last saw
// it. It is a value: callers may keep it.
type Health struct {
	// Connected is true when at least one member answered the latest probe
	// with a leader and no alarm.
	Connected bool `json:"connected"`
	// Probed is false until the first round of probes has finished.
	Probed     bool           `json:"-"`
	ClusterID  string         `json:"cluster_id"`
	Leader     string         `json:"leader"` // the leader's endpoint when it is one of ours, else its member ID in hex
	Reconnects uint64         `json:"reconnects"`
	LastError  string         `json:"last_error"`
	CheckedAt  time.Time      `json:"checked_at"`
	Members    []MemberHealth `json:"members"`
}

// MemberHealth is the latest probe of one endpoint.
type MemberHealth struct {
	Endpoint  string  `json:"endpoint"`
	Healthy   bool    `json:"healthy"`
	LatencyMS float64 `json:"latency_ms"`
	Error     string  `json:"error"`
}

// Health returns the latest connection snapshot.
func (c *EtcdClient) Health() Health {
	if c.health == nil {
		return Health{LastError: fmt.Sprint(c.initErr)}
	}
	h := c.health.snapshot()
	h.Members = slices.Clone(h.Members)
	return h
}

// statePoll is how often a disconnected loop checks whether gRPC has
// reconnected on its own, so that a returning cluster is noticed well before
// the next backoff attempt.
const statePoll = 100 * time.Millisecond

// healthLoop probes the members with the etcd Status RPC. While one answers it
// probes every HealthInterval; while none does, it paces reconnection attempts
// with the backoff policy. One goroutine (run) owns every field below snap;
// snap is written by it and read by anyone.
type healthLoop struct {
	c      *EtcdClient
	kickc  chan struct{} // endpoints changed: probe now
	cancel context.CancelFunc
	done   chan struct{}
	snap   atomic.Pointer[Health]
	// epoch counts endpoint changes. A round of probes started under an older
	// epoch describes endpoints that are gone, and is thrown away.
	epoch atomic.Uint64

	// owned by run
	gen        *generation                 // the client the probe conns were dialled with
	conns      map[string]*grpc.ClientConn // one long-lived conn per endpoint
	b          backoff.Backoff
	up         bool // the last kept round found a member
	everUp     bool
	reconnects uint64
}

func startHealthLoop(c *EtcdClient) *healthLoop {
	ctx, cancel := context.WithCancel(context.Background())
	l := &healthLoop{
		c:      c,
		kickc:  make(chan struct{}, 1),
		cancel: cancel,
		done:   make(chan struct{}),
		conns:  map[string]*grpc.ClientConn{},
		b:      backoff.Backoff{Policy: c.cfg.Backoff},
	}
	l.snap.Store(&Health{})
	go l.run(ctx)
	return l
}

func (l *healthLoop) snapshot() Health {
	if l == nil {
		return Health{}
	}
	return *l.snap.Load()
}

// kick tells the loop the endpoints changed: the snapshot is reset to
// "not probed" (so requests are not refused on the old set's account) and a
// probe starts now. It never blocks; it is a no-op before the loop exists (New
// applies its endpoints first).
func (l *healthLoop) kick() {
	if l == nil {
		return
	}
	l.epoch.Add(1)
	prev := l.snap.Load()
	l.snap.Store(&Health{Reconnects: prev.Reconnects})
	select {
	case l.kickc <- struct{}{}:
	default:
	}
}

func (l *healthLoop) stop() {
	l.cancel()
	<-l.done
}

func (l *healthLoop) run(ctx context.Context) {
	defer close(l.done)
	defer l.closeConns()
	log := l.c.log
	for {
		epoch := l.epoch.Load()
		h := l.probe(ctx)
		if ctx.Err() != nil {
			return
		}
		if l.epoch.Load() != epoch {
			continue // the endpoints changed under the probe; probe the new ones
		}
		switch {
		case h.Connected && !l.up:
			if l.everUp {
				l.reconnects++
			}
			l.everUp = true
			l.b.Reset()
			log.Info("etcd connected", "cluster_id", h.ClusterID, "leader", h.Leader, "reconnects", l.reconnects)
		case !h.Connected && (l.up || !l.everUp && l.b.Attempt() == 0) && len(h.Members) > 0:
			log.Warn("etcd unreachable", "error", h.LastError)
		}
		l.up = h.Connected
		// A kick between the epoch check above and this store leaves one stale
		// round visible; the kick has queued a new round, which replaces it.
		h.Reconnects = l.reconnects
		l.snap.Store(&h)

		wait := l.c.cfg.HealthInterval
		if !h.Connected {
			wait = l.b.Next()
			log.Debug("etcd reconnect scheduled", "attempt", l.b.Attempt(), "in", wait)
		}
		if !l.wait(ctx, wait, !h.Connected) {
			return
		}
		if !h.Connected {
			// A reconnection attempt: cut gRPC's own backoff short on every
			// conn, so the next probe dials afresh.
			l.resetBackoff()
		}
	}
}

// wait sleeps for d, ending early on a kick, on ctx, or (when disconnected)
// as soon as the client's connection is ready again. It returns false when ctx
// ended.
func (l *healthLoop) wait(ctx context.Context, d time.Duration, disconnected bool) bool {
	timer := time.NewTimer(d)
	defer timer.Stop()
	var poll <-chan time.Time
	if disconnected {
		t := time.NewTicker(statePoll)
		defer t.Stop()
		poll = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return false
		case <-l.kickc:
			return true
		case <-timer.C:
			return true
		case <-poll:
			if l.gen != nil && l.gen.cli.ActiveConnection().GetState() == connectivity.Ready {
				return true
			}
		}
	}
}

func (l *healthLoop) resetBackoff() {
	if l.gen != nil {
		l.gen.cli.ActiveConnection().ResetConnectBackoff()
	}
	for _, conn := range l.conns {
		conn.ResetConnectBackoff()
	}
}

// probe sends Status to every endpoint concurrently and returns the round's
// snapshot (Reconnects not yet set).
func (l *healthLoop) probe(ctx context.Context) Health {
	if err := l.c.buildPending(); err != nil {
		l.closeConns()
		return Health{Probed: true, LastError: err.Error(), CheckedAt: time.Now()}
	}
	eps, err := l.syncConns()
	now := time.Now()
	if err != nil {
		return Health{Probed: true, LastError: err.Error(), CheckedAt: now}
	}
	members := make([]MemberHealth, len(eps))
	resps := make([]*pb.StatusResponse, len(eps))
	var wg sync.WaitGroup
	for i, ep := range eps {
		conn := l.conns[ep]
		wg.Go(func() {
			pctx, cancel := context.WithTimeout(ctx, l.c.cfg.ProbeTimeout)
			defer cancel()
			start := time.Now()
			resp, err := pb.NewMaintenanceClient(conn).Status(pctx, &pb.StatusRequest{})
			m := MemberHealth{Endpoint: ep, LatencyMS: float64(time.Since(start).Microseconds()) / 1000}
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

	h := Health{Probed: true, CheckedAt: now, Members: members}
	var errs []string
	for i, m := range members {
		if !m.Healthy {
			errs = append(errs, m.Endpoint+": "+m.Error)
			continue
		}
		h.Connected = true
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
	if !h.Connected {
		h.LastError = strings.Join(errs, "; ")
	}
	return h
}

// syncConns makes l.conns match the client's current endpoints, redialling all
// of them when the underlying client was replaced.
func (l *healthLoop) syncConns() ([]string, error) {
	// clientv3's Client.Dial reads the endpoint list without the lock that
	// SetEndpoints takes (v3.7.3, client.go dial), so dial under our read lock:
	// SetEndpoints is only called under our write lock.
	c := l.c
	c.mu.RLock()
	defer c.mu.RUnlock()
	switch {
	case c.closed:
		l.closeConns()
		return nil, ErrClosed
	case c.gen == nil:
		l.closeConns()
		return nil, ErrNoEndpoints
	}
	if c.gen != l.gen {
		l.closeConns()
		l.gen = c.gen
	}
	eps := append([]string(nil), c.endpoints...)
	want := make(map[string]bool, len(eps))
	for _, ep := range eps {
		want[ep] = true
		if l.conns[ep] == nil {
			conn, err := c.gen.cli.Dial(ep)
			if err != nil {
				return nil, fmt.Errorf("dial %s for health probes: %w", ep, err)
			}
			l.conns[ep] = conn
		}
	}
	for ep, conn := range l.conns {
		if !want[ep] {
			conn.Close()
			delete(l.conns, ep)
		}
	}
	return eps, nil
}

func (l *healthLoop) closeConns() {
	for ep, conn := range l.conns {
		conn.Close()
		delete(l.conns, ep)
	}
	l.gen = nil
}

func probeError(err error) string {
	if errors.Is(err, context.DeadlineExceeded) || strings.Contains(err.Error(), "DeadlineExceeded") {
		return "no answer within the probe timeout"
	}
	return err.Error()
}
