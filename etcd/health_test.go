package etcd

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"udp_iaasd/internal/etcdtest"
)

func TestMain(m *testing.M) {
	etcdtest.RunMemberIfRequested()
	os.Exit(m.Run())
}

func sumRPCs(t *testing.T, eps []string) (total float64, byMethod map[string]float64) {
	t.Helper()
	byMethod = map[string]float64{}
	for _, ep := range eps {
		m, err := etcdtest.UnaryRPCs(ep)
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range m {
			byMethod[k] += v
			total += v
		}
	}
	return total, byMethod
}

func port(t *testing.T, endpoint string) int {
	t.Helper()
	u, err := url.Parse(endpoint)
	if err != nil {
		t.Fatal(err)
	}
	_, p, _ := net.SplitHostPort(u.Host)
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// An idle client asks etcd nothing: no unary RPC while no request is made,
// and one TCP connection per member, counted by the members themselves and
// by the kernel. (The health loop used to send Status to every member every
// second over a second set of connections.)
func TestIdleClientAsksNothing(t *testing.T) {
	cluster := etcdtest.NewProc(t, 3)
	eps := cluster.Endpoints()
	c := newTestClient(t, Config{Endpoints: eps, MinClusterSize: 3})
	ctx := ctxT(t, 10*time.Second)
	if err := c.Put(ctx, "idle/k", "v"); err != nil {
		t.Fatal(err)
	}
	etcdtest.Eventually(t, 5*time.Second, "connected", func() bool { return c.Health().Connected })
	if h := c.CheckHealth(ctx); len(h.Members) != 3 || !h.Members[0].Healthy {
		t.Fatalf("health = %+v", h)
	}
	// Let the last answers land, then count over an idle stretch.
	time.Sleep(300 * time.Millisecond)
	before, _ := sumRPCs(t, eps)
	const idle = 4 * time.Second
	time.Sleep(idle)
	after, methods := sumRPCs(t, eps)
	t.Logf("unary RPCs over %v idle: %v (totals by method: %v)", idle, after-before, methods)
	if after != before {
		t.Fatalf("an idle client sent %v unary RPCs in %v, want 0", after-before, idle)
	}
	conns, err := etcdtest.TCPConns(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	for _, ep := range eps {
		if n := conns[port(t, ep)]; n != 1 {
			t.Errorf("%d TCP connections to %s, want 1", n, ep)
		}
	}
	// A CheckHealth within StatusProbeInterval of the last round is answered
	// from it.
	c2 := newTestClient(t, Config{Endpoints: eps, MinClusterSize: 3, StatusProbeInterval: time.Hour})
	etcdtest.Eventually(t, 5*time.Second, "second client connected", func() bool { return c2.Health().Connected })
	time.Sleep(300 * time.Millisecond) // the connection round's answers
	before, _ = sumRPCs(t, eps)
	for range 20 {
		c2.CheckHealth(ctx)
	}
	if after, _ := sumRPCs(t, eps); after != before {
		t.Fatalf("20 CheckHealth calls within the interval sent %v RPCs, want 0", after-before)
	}
}

// A hung member (SIGSTOP: its connections stay open, nothing answers) is
// found by the outcome of real requests, probed, and left out of use: the
// requests that start after that all succeed through the other members. When
// it answers again it is put back. The window between the stop and the
// ejection is logged, not asserted (SuspectAfter + ProbeTimeout bound it).
func TestHungMemberIsEjected(t *testing.T) {
	cluster := etcdtest.NewProc(t, 3)
	eps := cluster.Endpoints()
	c := newTestClient(t, Config{Endpoints: eps, MinClusterSize: 3, RequestTimeout: 2 * time.Second,
		SuspectAfter: 300 * time.Millisecond, ProbeTimeout: 500 * time.Millisecond,
		Logger: etcdtest.Logger(t)})
	ctx := ctxT(t, 60*time.Second)
	h := c.CheckHealth(ctx)
	var victim *etcdtest.ProcMember
	for i, m := range cluster.Members {
		if h.Leader != m.Endpoint() && h.Members[i].Healthy {
			victim = m // a follower: a stopped leader is an election, not this
			break
		}
	}
	if victim == nil {
		t.Fatalf("no healthy follower in %+v", h)
	}

	type result struct {
		start, end time.Time
		err        error
	}
	var (
		mu      sync.Mutex
		results []result
		wg      sync.WaitGroup
	)
	stop := make(chan struct{})
	for w := range 8 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				start := time.Now()
				key := fmt.Sprintf("hung/%d", w)
				var err error
				if i%2 == 0 {
					err = c.Put(ctx, key, strconv.Itoa(i))
				} else if _, err = c.Get(ctx, key); errors.Is(err, ErrKeyNotFound) {
					err = nil
				}
				mu.Lock()
				results = append(results, result{start, time.Now(), err})
				mu.Unlock()
			}
		})
	}
	time.Sleep(time.Second)
	paused := time.Now()
	if err := victim.Pause(); err != nil {
		t.Fatal(err)
	}
	etcdtest.Eventually(t, 10*time.Second, "the hung member to be ejected", c.hasEjected)
	ejected := time.Now()
	time.Sleep(2 * time.Second)
	close(stop)
	wg.Wait()

	var before, failedBefore, after, failedAfter int
	for _, r := range results {
		switch {
		case r.start.Before(paused):
		case r.start.Before(ejected):
			before++
			if r.err != nil {
				failedBefore++
			}
		default:
			after++
			if r.err != nil {
				failedAfter++
				t.Errorf("request started %v after the ejection failed: %v", r.start.Sub(ejected), r.err)
			}
		}
	}
	t.Logf("stop → ejection %v; between them %d requests, %d failed; after it %d requests, %d failed",
		ejected.Sub(paused), before, failedBefore, after, failedAfter)
	if after == 0 {
		t.Fatal("no request ran after the ejection")
	}
	hh := c.Health()
	if !hh.Connected {
		t.Fatalf("disconnected with two of three members answering: %+v", hh)
	}
	for _, m := range hh.Members {
		if m.Endpoint == victim.Endpoint() && m.Healthy {
			t.Fatalf("the hung member is reported healthy: %+v", hh)
		}
	}

	if err := victim.Resume(); err != nil {
		t.Fatal(err)
	}
	etcdtest.Eventually(t, 15*time.Second, "the member to be put back", func() bool { return !c.hasEjected() })
	if h := c.CheckHealth(ctx); !h.Members[0].Healthy || !h.Members[1].Healthy || !h.Members[2].Healthy {
		t.Fatalf("after resume: %+v", h)
	}
}

// A cluster whose members all hang (connections open, no answers) is
// noticed from the requests that time out: a probe round finds no member
// answering, and requests then fail at once with ErrUnavailable instead of
// each waiting for its timeout. It recovers by itself.
func TestWholeClusterHung(t *testing.T) {
	cluster := etcdtest.NewProc(t, 3)
	eps := cluster.Endpoints()
	c := newTestClient(t, Config{Endpoints: eps, MinClusterSize: 3, RequestTimeout: time.Second,
		ProbeTimeout: 500 * time.Millisecond})
	if err := c.Put(ctxT(t, 10*time.Second), "k", "v"); err != nil {
		t.Fatal(err)
	}
	for _, m := range cluster.Members {
		if err := m.Pause(); err != nil {
			t.Fatal(err)
		}
	}
	var err error
	etcdtest.Eventually(t, 20*time.Second, "requests to fail with ErrUnavailable", func() bool {
		err = c.Put(context.Background(), "k", "during")
		return errors.Is(err, ErrUnavailable)
	})
	start := time.Now()
	err = c.Put(context.Background(), "k", "during")
	t.Logf("once known: %v after %v", err, time.Since(start))
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Put with every member hung = %v, want ErrUnavailable", err)
	}
	if h := c.Health(); h.Connected || h.LastError == "" {
		t.Fatalf("health with every member hung: %+v", h)
	}
	for _, m := range cluster.Members {
		if err := m.Resume(); err != nil {
			t.Fatal(err)
		}
	}
	etcdtest.Eventually(t, 20*time.Second, "a successful Put after the members resume", func() bool {
		return c.Put(ctxT(t, time.Second), "k", "after") == nil
	})
	etcdtest.Eventually(t, 5*time.Second, "connected again", func() bool { return c.Health().Connected })
}

// A probe round that no member answers in time while the live client's
// requests are being answered is the agent's own host starving its probes
// (a busy machine, the agent on one P), not a hung cluster: it must neither
// fail requests fast nor report the client disconnected. With no request
// answered meanwhile, the same round still means a hung cluster.
func TestStarvedProbesAreDisregarded(t *testing.T) {
	var starved atomic.Bool
	probeRound = func(ctx context.Context, eps []string, conns []*grpc.ClientConn, timeout time.Duration) Health {
		if starved.Load() {
			time.Sleep(300 * time.Millisecond) // requests are answered meanwhile...
			timeout = time.Nanosecond          // ...and no probe is
		}
		return probeMembers(ctx, eps, conns, timeout)
	}
	t.Cleanup(func() { probeRound = probeMembers }) // after the client's Close: cleanups run last first
	cluster := etcdtest.New(t, 3)
	c := newTestClient(t, Config{Endpoints: cluster.Endpoints(), MinClusterSize: 3, RequestTimeout: 2 * time.Second,
		StatusProbeInterval: time.Nanosecond, // every CheckHealth is a round of its own
		Logger:              etcdtest.Logger(t)})
	ctx := ctxT(t, 60*time.Second)
	if err := c.Put(ctx, "starved/0", "v"); err != nil {
		t.Fatal(err)
	}
	if h := c.CheckHealth(ctx); !h.Connected {
		t.Fatalf("before the probes starve: %+v", h)
	}

	starved.Store(true)
	var (
		wg       sync.WaitGroup
		stop     = make(chan struct{})
		requests atomic.Int64
		failures atomic.Int64
		firstErr atomic.Pointer[error]
	)
	for w := range 4 {
		wg.Go(func() {
			key := fmt.Sprintf("starved/%d", w)
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				if err := c.Put(ctx, key, strconv.Itoa(i)); err != nil && failures.Add(1) == 1 {
					firstErr.Store(&err)
				}
				requests.Add(1)
			}
		})
	}
	for range 3 {
		if h := c.CheckHealth(ctx); !h.Connected {
			t.Errorf("a starved round while requests were answered left Connected=false: %+v", h)
		}
	}
	close(stop)
	wg.Wait()
	t.Logf("%d requests while three starved rounds ran, %d failed", requests.Load(), failures.Load())
	if failures.Load() > 0 {
		t.Errorf("Puts failed while only the probes starved; the first: %v", *firstErr.Load())
	}

	// Nothing in flight: the same round is all the evidence there is.
	if h := c.CheckHealth(ctx); h.Connected {
		t.Fatalf("a round no member answered, with no request answered meanwhile, left the client connected: %+v", h)
	}
	if err := c.Put(ctx, "starved/idle", "v"); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Put after a silent round with nothing else answered = %v, want ErrUnavailable", err)
	}
	starved.Store(false)
	etcdtest.Eventually(t, 10*time.Second, "connected again once probes are answered", func() bool {
		return c.Health().Connected
	})
}

// The outcome tracker's two signs, on a controlled clock: a connection
// with requests in flight that completed none for suspectAfter, and a
// request that ended without an answer. A connection whose requests keep
// completing, an idle one, and a request cancelled by its caller are not
// suspect.
func TestOutcomeSuspicion(t *testing.T) {
	const after = time.Hour // the tracker's real timers never fire during the test
	a := &net.TCPAddr{IP: net.IPv4(10, 0, 0, 1), Port: 2379}
	deadline := status.Error(codes.DeadlineExceeded, "deadline")
	unavailable := status.Error(codes.Unavailable, "closing")
	canceled := status.Error(codes.Canceled, "canceled")
	type step struct {
		at  time.Duration
		op  string // begin, end, check
		err error
	}
	tests := []struct {
		name  string
		steps []step
		want  int
	}{
		{"in flight, nothing completes", []step{{0, "begin", nil}, {after, "check", nil}}, 1},
		{"in flight, not for long yet", []step{{0, "begin", nil}, {after / 2, "check", nil}}, 0},
		{"a slow request beside completing ones", []step{{0, "begin", nil}, {after / 2, "begin", nil},
			{after * 9 / 10, "end", nil}, {after * 6 / 5, "check", nil}}, 0},
		{"idle", []step{{0, "begin", nil}, {after / 10, "end", nil}, {2 * after, "check", nil}}, 0},
		{"still stuck: suspect again", []step{{0, "begin", nil}, {after, "check", nil}, {2 * after, "check", nil}}, 2},
		{"deadline exceeded", []step{{0, "begin", nil}, {0, "end", deadline}}, 1},
		{"unavailable", []step{{0, "begin", nil}, {0, "end", unavailable}}, 1},
		{"cancelled by the caller", []step{{0, "begin", nil}, {0, "end", canceled}}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t0 := time.Unix(1000, 0)
			var now time.Time
			suspicions := 0
			o := newOutcomes(after, func() { suspicions++ })
			defer o.stop()
			o.now = func() time.Time { return now }
			for _, s := range tt.steps {
				now = t0.Add(s.at)
				switch s.op {
				case "begin":
					o.begin(a)
				case "end":
					o.end(a, s.err)
				case "check":
					o.check(a)
				}
			}
			if suspicions != tt.want {
				t.Fatalf("suspicions = %d, want %d", suspicions, tt.want)
			}
		})
	}
}

func (c *EtcdClient) liveEndpoints() []string {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.liveEndpointsLocked()
}

// With ConnectSpread, an endpoint change that adds members reports the new
// list at once but dials the new addresses after a random delay; dropped
// members go at once; and a change that keeps none of the old addresses (a
// rename) keeps the old connections serving until the new ones join.
func TestConnectSpread(t *testing.T) {
	cluster := etcdtest.New(t, 3)
	eps := cluster.Endpoints()
	c := newTestClient(t, Config{Endpoints: eps[:2], MinClusterSize: 2, ConnectSpread: time.Hour})
	c.rand = func() float64 { return 0.999 } // a delay no test waits for
	etcdtest.Eventually(t, 10*time.Second, "connected", func() bool { return c.Health().Connected })
	ctx := ctxT(t, 30*time.Second)

	if err := c.UpdateEndpoints(eps); err != nil {
		t.Fatal(err)
	}
	if got := c.Endpoints(); !slices.Equal(got, eps) {
		t.Fatalf("Endpoints = %v, want the new list %v at once", got, eps)
	}
	if got := c.liveEndpoints(); !slices.Equal(got, eps[:2]) {
		t.Fatalf("in use = %v, want the old %v until the delay ends", got, eps[:2])
	}
	// Dropping is not delayed: eps[0] goes now, eps[2] still waits.
	if err := c.UpdateEndpoints(eps[1:]); err != nil {
		t.Fatal(err)
	}
	if got := c.liveEndpoints(); !slices.Equal(got, eps[1:2]) {
		t.Fatalf("in use = %v, want %v", got, eps[1:2])
	}
	if err := c.Put(ctx, "spread/k", "1"); err != nil {
		t.Fatal(err)
	}

	// A rename: no old address stays, so the old ones serve until the join.
	var renamed []string
	for _, ep := range eps {
		renamed = append(renamed, strings.Replace(ep, "127.0.0.1", "localhost", 1))
	}
	c.rand = func() float64 { return 0.0001 } // 360ms of the hour
	if err := c.UpdateEndpoints(renamed); err != nil {
		t.Fatal(err)
	}
	if got := c.liveEndpoints(); !slices.Equal(got, eps[1:2]) {
		t.Fatalf("in use right after a rename = %v, want the old %v", got, eps[1:2])
	}
	if err := c.Put(ctx, "spread/k", "2"); err != nil {
		t.Fatal(err)
	}
	etcdtest.Eventually(t, 10*time.Second, "the renamed endpoints to join", func() bool {
		return slices.Equal(c.liveEndpoints(), renamed)
	})
	if v, err := c.Get(ctx, "spread/k"); err != nil || v != "2" {
		t.Fatalf("Get after the join = %q, %v", v, err)
	}
}

// Ejecting every address still in use while new ones wait to join (a
// round found the kept members silent and a new one answering) lets the new
// ones join at once: the live client is never left without an endpoint
// (clientv3 panics dialling with none) nor held on silent ones for the
// spread.
func TestEjectingEveryKeptEndpointJoinsTheNewOnes(t *testing.T) {
	cluster := etcdtest.New(t, 3)
	eps := cluster.Endpoints()
	c := newTestClient(t, Config{Endpoints: eps[:2], MinClusterSize: 2, ConnectSpread: time.Hour})
	c.rand = func() float64 { return 0.999 } // a delay no test waits for
	etcdtest.Eventually(t, 10*time.Second, "connected", func() bool { return c.Health().Connected })
	if err := c.UpdateEndpoints(eps); err != nil {
		t.Fatal(err)
	}
	if got := c.liveEndpoints(); !slices.Equal(got, eps[:2]) {
		t.Fatalf("in use = %v, want the kept %v while eps[2] waits", got, eps[:2])
	}
	// What round does when the kept two are silent and the third answers.
	c.setEjected(c.health.epoch.Load(), map[string]bool{eps[0]: true, eps[1]: true})
	if got := c.liveEndpoints(); !slices.Equal(got, eps[2:]) {
		t.Fatalf("in use after ejecting both kept endpoints = %v, want %v (joined now)", got, eps[2:])
	}
	ctx := ctxT(t, 30*time.Second)
	if err := c.Put(ctx, "spread/eject", "1"); err != nil {
		t.Fatalf("Put through the joined endpoint: %v", err)
	}
	if h := c.CheckHealth(ctx); len(h.Members) != 3 {
		t.Fatalf("a probe round after the join: %+v", h)
	}
}

// Waiting addresses join at once when every connection in use fails: a
// changed list whose only kept address dies before the spread ends is
// served by the new ones, not refused for the rest of the spread.
func TestSpreadEndsWhenTheAddressesInUseFail(t *testing.T) {
	cluster := etcdtest.New(t, 3)
	eps := cluster.Endpoints()
	c := newTestClient(t, Config{Endpoints: eps[:1], MinClusterSize: 1, ConnectSpread: time.Hour})
	c.rand = func() float64 { return 0.999 } // a delay no test waits for
	etcdtest.Eventually(t, 10*time.Second, "connected", func() bool { return c.Health().Connected })
	// Nothing stays: the old address serves until the join.
	if err := c.UpdateEndpoints(eps[1:]); err != nil {
		t.Fatal(err)
	}
	if got := c.liveEndpoints(); !slices.Equal(got, eps[:1]) {
		t.Fatalf("in use = %v, want the old %v until the join", got, eps[:1])
	}
	cluster.Members[0].Stop()
	etcdtest.Eventually(t, 10*time.Second, "the new addresses in use", func() bool {
		return slices.Equal(c.liveEndpoints(), eps[1:])
	})
	etcdtest.Eventually(t, 15*time.Second, "a put through them", func() bool {
		return c.Put(ctxT(t, 2*time.Second), "spread/failed", "1") == nil
	})
}

// A member that answers without a leader (its cluster lost quorum) is not a
// hung cluster: the client reports not connected (so /readyz says so), but
// requests still go to etcd, which decides, rather than being refused with
// ErrUnavailable. When quorum returns, the client says connected again by
// itself.
func TestQuorumLostIsNotHung(t *testing.T) {
	cluster := etcdtest.New(t, 3)
	c := newTestClient(t, Config{Endpoints: cluster.Endpoints(), MinClusterSize: 1, ProbeTimeout: 500 * time.Millisecond})
	if err := c.Put(ctxT(t, 10*time.Second), "k", "v"); err != nil {
		t.Fatal(err)
	}
	cluster.Members[1].Stop()
	cluster.Members[2].Stop()
	// A write cannot commit; its timeout is the outcome that prompts a probe.
	etcdtest.Eventually(t, 20*time.Second, "the client to report no leader", func() bool {
		c.Put(ctxT(t, 300*time.Millisecond), "k", "lost")
		return !c.Health().Connected
	})
	err := c.Put(ctxT(t, 300*time.Millisecond), "k", "lost")
	if err == nil || errors.Is(err, ErrUnavailable) {
		t.Fatalf("Put without quorum = %v: want it sent to etcd and failing there, not refused", err)
	}
	if err := cluster.RestartAll(); err != nil {
		t.Fatal(err)
	}
	etcdtest.Eventually(t, 20*time.Second, "connected again", func() bool { return c.Health().Connected })
}
