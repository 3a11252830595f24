package etcd

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"udp_iaasd/backoff"
	"udp_iaasd/endpoint"
	"udp_iaasd/internal/etcdtest"
)

// fastBackoff keeps recovery tests short; the schedule itself is tested in
// package backoff.
var fastBackoff = backoff.Policy{Initial: 50 * time.Millisecond, Max: 500 * time.Millisecond, Multiplier: 2, Jitter: 0.2}

func newTestClient(t *testing.T, cfg Config) *EtcdClient {
	t.Helper()
	if cfg.Backoff == (backoff.Policy{}) {
		cfg.Backoff = fastBackoff
	}
	if cfg.StatusProbeInterval == 0 {
		cfg.StatusProbeInterval = time.Millisecond // every CheckHealth probes
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestSeedOperations(t *testing.T) {
	cluster := etcdtest.New(t, 3)
	c := newTestClient(t, Config{Endpoints: cluster.Endpoints(), MinClusterSize: 3})
	ctx := ctxT(t, 10*time.Second)

	if err := c.Put(ctx, "foo", "bar"); err != nil {
		t.Fatalf("Put: %v", err)
	}
	// What clientv3 sees directly is what we wrote.
	resp, err := cluster.Client(t).Get(ctx, "foo")
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "bar" {
		t.Fatalf("direct read = %v, %v; want bar", resp, err)
	}
	if v, err := c.Get(ctx, "foo"); err != nil || v != "bar" {
		t.Fatalf("Get = %q, %v; want bar", v, err)
	}
	if err := c.Delete(ctx, "foo"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if _, err := c.Get(ctx, "foo"); !errors.Is(err, ErrKeyNotFound) {
		t.Fatalf("Get after Delete = %v, want ErrKeyNotFound", err)
	}
	if err := c.Delete(ctx, "never-there"); err != nil {
		t.Fatalf("Delete of an absent key: %v", err)
	}
}

func TestUpdateEndpoints(t *testing.T) {
	cluster := etcdtest.New(t, 3)
	eps := cluster.Endpoints()
	c := newTestClient(t, Config{Endpoints: eps, MinClusterSize: 2})
	ctx := ctxT(t, 20*time.Second)

	reordered := []string{eps[2], eps[0], eps[1]}
	if err := c.UpdateEndpoints(reordered); err != nil {
		t.Fatalf("reorder: %v", err)
	}
	if got := c.Endpoints(); !slices.Equal(got, reordered) {
		t.Fatalf("Endpoints = %v, want %v", got, reordered)
	}
	if err := c.Put(ctx, "k", "after-reorder"); err != nil {
		t.Fatalf("Put after reorder: %v", err)
	}

	// Shrink to two members, in bare host:port form: normalized on the way in.
	shrunk := []string{eps[1][len("http://"):], eps[2][len("http://"):]}
	if err := c.UpdateEndpoints(shrunk); err != nil {
		t.Fatalf("shrink: %v", err)
	}
	if got := c.Endpoints(); !slices.Equal(got, eps[1:]) {
		t.Fatalf("Endpoints = %v, want %v", got, eps[1:])
	}
	// The client now talks to members 1 and 2 only: stop member 0 and it
	// must not notice.
	cluster.Members[0].Stop()
	if err := c.Put(ctx, "k", "after-shrink"); err != nil {
		t.Fatalf("Put after shrink: %v", err)
	}

	rejected := []struct {
		name string
		list []string
		kind error
	}{
		{"too few", []string{eps[1]}, endpoint.ErrTooFew},
		{"duplicate", []string{eps[1], eps[1]}, endpoint.ErrDuplicate},
		{"bad form", []string{eps[1], "10.0.0.1:99999"}, endpoint.ErrInvalid},
		{"mixed", []string{eps[1], "https://10.0.0.2:2379"}, endpoint.ErrMixedTLS},
		{"empty", nil, endpoint.ErrTooFew},
	}
	for _, tt := range rejected {
		t.Run(tt.name, func(t *testing.T) {
			err := c.UpdateEndpoints(tt.list)
			if !errors.Is(err, tt.kind) {
				t.Fatalf("UpdateEndpoints(%v) = %v, want %v", tt.list, err, tt.kind)
			}
			if got := c.Endpoints(); !slices.Equal(got, eps[1:]) {
				t.Fatalf("a rejected list changed the endpoints to %v", got)
			}
			if v, err := c.Get(ctx, "k"); err != nil || v != "after-shrink" {
				t.Fatalf("Get after rejection = %q, %v", v, err)
			}
		})
	}
}

func TestRemoveEndpoint(t *testing.T) {
	cluster := etcdtest.New(t, 3)
	eps := cluster.Endpoints()
	c := newTestClient(t, Config{Endpoints: eps, MinClusterSize: 2})

	if err := c.RemoveEndpoint("http://127.0.0.1:1"); !errors.Is(err, ErrEndpointNotFound) {
		t.Fatalf("remove unknown = %v, want ErrEndpointNotFound", err)
	}
	// Any form that normalizes to a listed endpoint names it.
	if err := c.RemoveEndpoint(eps[2][len("http://"):]); err != nil {
		t.Fatalf("remove: %v", err)
	}
	if got := c.Endpoints(); !slices.Equal(got, eps[:2]) {
		t.Fatalf("Endpoints = %v, want %v", got, eps[:2])
	}
	if err := c.RemoveEndpoint(eps[1]); !errors.Is(err, endpoint.ErrTooFew) {
		t.Fatalf("remove below minimum = %v, want ErrTooFew", err)
	}
	if got := c.Endpoints(); !slices.Equal(got, eps[:2]) {
		t.Fatalf("refused removal changed endpoints to %v", got)
	}
	if err := c.Put(ctxT(t, 10*time.Second), "k", "v"); err != nil {
		t.Fatalf("Put after removals: %v", err)
	}
}

func TestOneMemberDown(t *testing.T) {
	cluster := etcdtest.New(t, 3)
	c := newTestClient(t, Config{Endpoints: cluster.Endpoints(), MinClusterSize: 3})
	ctx := ctxT(t, 30*time.Second)
	if err := c.Put(ctx, "k", "v0"); err != nil {
		t.Fatalf("Put: %v", err)
	}
	for i, m := range cluster.Members {
		m.Stop()
		for j := range 20 {
			want := fmt.Sprintf("v%d-%d", i, j)
			if err := c.Put(ctxT(t, 5*time.Second), "k", want); err != nil {
				t.Fatalf("Put with %s stopped: %v", m.Name, err)
			}
			if v, err := c.Get(ctxT(t, 5*time.Second), "k"); err != nil || v != want {
				t.Fatalf("Get with %s stopped = %q, %v; want %q", m.Name, v, err, want)
			}
		}
		etcdtest.Eventually(t, 10*time.Second, "the probe to mark the member unhealthy", func() bool {
			for _, mh := range c.CheckHealth(ctxT(t, 5*time.Second)).Members {
				if mh.Endpoint == m.Endpoint() {
					return !mh.Healthy && mh.Error != ""
				}
			}
			return false
		})
		if !c.Health().Connected {
			t.Fatalf("client reports disconnected with two of three members up")
		}
		if err := m.Restart(); err != nil {
			t.Fatalf("restart %s: %v", m.Name, err)
		}
	}
}

// A client built while every member refuses connections answers its first
// request with ErrUnavailable once gRPC's first attempt fails, not with a
// timeout: clientv3 would hold a request sent while that attempt is under
// way until its deadline.
func TestFirstRequestToRefusingCluster(t *testing.T) {
	cluster := etcdtest.New(t, 3)
	eps := cluster.Endpoints()
	cluster.StopAll()
	for i := range 3 {
		c := newTestClient(t, Config{Endpoints: eps, MinClusterSize: 3, RequestTimeout: 30 * time.Second})
		_, err := c.Get(ctxT(t, 30*time.Second), "k")
		if !errors.Is(err, ErrUnavailable) {
			t.Fatalf("client %d: first Get with every member refusing = %v, want ErrUnavailable", i, err)
		}
		c.Close()
	}
}

func TestWholeClusterOutage(t *testing.T) {
	cluster := etcdtest.New(t, 3)
	c := newTestClient(t, Config{Endpoints: cluster.Endpoints(), MinClusterSize: 3, RequestTimeout: 2 * time.Second})
	if err := c.Put(ctxT(t, 10*time.Second), "k", "before"); err != nil {
		t.Fatalf("Put: %v", err)
	}
	etcdtest.Eventually(t, 5*time.Second, "connected", func() bool { return c.Health().Connected })
	follower := followConnection(t, c)
	etcdtest.Eventually(t, 5*time.Second, "a follower of ConnectionChanged to see connected", func() bool { return follower() })

	cluster.StopAll()

	// Before and after the health loop notices, a Put with a 1s context ends
	// within 1.5s: first by its deadline, then at once with ErrUnavailable.
	for i := range 3 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		start := time.Now()
		err := c.Put(ctx, "k", "during")
		took := time.Since(start)
		cancel()
		if err == nil {
			t.Fatalf("Put %d succeeded with every member stopped", i)
		}
		if took > 1500*time.Millisecond {
			t.Fatalf("Put %d took %v, want at most 1.5s", i, took)
		}
	}
	// A call with no deadline is bounded by RequestTimeout (2s) or fails fast.
	start := time.Now()
	if _, err := c.Get(context.Background(), "k"); err == nil || time.Since(start) > 2500*time.Millisecond {
		t.Fatalf("Get without deadline = %v after %v", err, time.Since(start))
	}
	etcdtest.Eventually(t, 5*time.Second, "disconnected", func() bool { return !c.Health().Connected })
	etcdtest.Eventually(t, 5*time.Second, "the follower to see disconnected", func() bool { return !follower() })
	if err := c.Put(ctxT(t, time.Second), "k", "during"); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Put while disconnected = %v, want ErrUnavailable", err)
	}
	h := c.Health()
	if h.LastError == "" || len(h.Members) != 3 || h.Members[0].Healthy {
		t.Fatalf("health during outage = %+v", h)
	}

	if err := cluster.RestartAll(); err != nil {
		t.Fatalf("restart: %v", err)
	}
	// The same client recovers by itself, within the backoff maximum plus the
	// time to elect a leader.
	etcdtest.Eventually(t, 15*time.Second, "a successful Put after the outage", func() bool {
		return c.Put(ctxT(t, time.Second), "k", "after") == nil
	})
	etcdtest.Eventually(t, 5*time.Second, "connected again", func() bool { return c.Health().Connected })
	etcdtest.Eventually(t, 5*time.Second, "the follower to see connected again", func() bool { return follower() })
	if h := c.Health(); h.Reconnects < 1 {
		t.Fatalf("reconnects = %d after an outage, want >= 1", h.Reconnects)
	}
	if v, err := c.Get(ctxT(t, 5*time.Second), "k"); err != nil || v != "after" {
		t.Fatalf("Get after recovery = %q, %v", v, err)
	}
}

func TestHealthSnapshot(t *testing.T) {
	cluster := etcdtest.New(t, 3)
	c := newTestClient(t, Config{Endpoints: cluster.Endpoints()})
	etcdtest.Eventually(t, 10*time.Second, "connected", func() bool { return c.Health().Connected })
	h := c.CheckHealth(ctxT(t, 5*time.Second))
	if h.ClusterID == "" || len(h.Members) != 3 {
		t.Fatalf("health = %+v", h)
	}
	if !slices.Contains(cluster.Endpoints(), h.Leader) {
		t.Fatalf("leader %q is not named by one of our endpoints %v", h.Leader, cluster.Endpoints())
	}
	for i, m := range h.Members {
		if !m.Healthy || m.Endpoint != cluster.Endpoints()[i] || m.LatencyMS <= 0 {
			t.Fatalf("member %d = %+v", i, m)
		}
	}
	// Health returns a copy.
	h.Members[0].Healthy = false
	if !c.Health().Members[0].Healthy {
		t.Fatal("mutating a snapshot changed the client's")
	}
}

func TestConcurrentUpdatesAndOperations(t *testing.T) {
	cluster := etcdtest.New(t, 3)
	eps := cluster.Endpoints()
	c := newTestClient(t, Config{Endpoints: eps, MinClusterSize: 2})
	lists := [][]string{eps, {eps[2], eps[1], eps[0]}, eps[:2], eps[1:], {eps[0], eps[2]}}

	ctx := ctxT(t, 60*time.Second)
	var wg sync.WaitGroup
	errc := make(chan error, 100)
	for w := range 4 {
		wg.Go(func() {
			for i := range 50 {
				key := fmt.Sprintf("w%d", w)
				val := fmt.Sprint(i)
				if err := c.Put(ctx, key, val); err != nil {
					errc <- err
					return
				}
				if got, err := c.Get(ctx, key); err != nil || got != val {
					errc <- fmt.Errorf("Get %s = %q, %v; want %q", key, got, err, val)
					return
				}
			}
		})
	}
	wg.Go(func() {
		for i := range 100 {
			if err := c.UpdateEndpoints(lists[i%len(lists)]); err != nil {
				errc <- err
				return
			}
			_ = c.Endpoints()
			_ = c.Health()
		}
	})
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
	// Endpoint churn is not a reconnection.
	etcdtest.Eventually(t, 5*time.Second, "connected", func() bool { return c.Health().Connected })
	if n := c.Health().Reconnects; n != 0 {
		t.Fatalf("reconnects = %d after endpoint updates alone, want 0", n)
	}
}

func TestDoAndWatch(t *testing.T) {
	cluster := etcdtest.New(t, 3)
	c := newTestClient(t, Config{Endpoints: cluster.Endpoints()})
	ctx := ctxT(t, 10*time.Second)
	wch, err := c.watch(ctx, "w/", clientv3.WithPrefix())
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	var rev int64
	err = c.do(ctx, func(ctx context.Context, cli *clientv3.Client) error {
		resp, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision("w/a"), "=", 0)).
			Then(clientv3.OpPut("w/a", "1")).Commit()
		if err != nil {
			return err
		}
		if !resp.Succeeded {
			return errors.New("txn did not succeed")
		}
		rev = resp.Header.Revision
		return nil
	})
	if err != nil {
		t.Fatalf("Do: %v", err)
	}
	select {
	case wr := <-wch:
		if len(wr.Events) != 1 || string(wr.Events[0].Kv.Key) != "w/a" || wr.Events[0].Kv.ModRevision != rev {
			t.Fatalf("watch got %+v, want the put at revision %d", wr.Events, rev)
		}
	case <-ctx.Done():
		t.Fatal("no watch event")
	}
	// Do bounds a deadline-less context with RequestTimeout.
	_ = c.do(context.Background(), func(ctx context.Context, _ *clientv3.Client) error {
		if _, ok := ctx.Deadline(); !ok {
			t.Error("Do passed a context without a deadline")
		}
		return nil
	})
}

func TestBrokenAndClosedClients(t *testing.T) {
	ctx := ctxT(t, 5*time.Second)
	broken := NewCustomClient([]string{"10.0.0.1:99999"}, time.Second)
	if broken.Err() == nil || !errors.Is(broken.Err(), endpoint.ErrInvalid) {
		t.Fatalf("Err = %v, want ErrInvalid", broken.Err())
	}
	if err := broken.Put(ctx, "k", "v"); !errors.Is(err, endpoint.ErrInvalid) {
		t.Fatalf("Put on a broken client = %v", err)
	}
	if _, err := broken.Get(ctx, "k"); !errors.Is(err, endpoint.ErrInvalid) {
		t.Fatalf("Get on a broken client = %v", err)
	}
	if err := broken.UpdateEndpoints([]string{"127.0.0.1:2379"}); err == nil {
		t.Fatal("UpdateEndpoints on a broken client succeeded")
	}
	if err := broken.Close(); err != nil {
		t.Fatalf("Close of a broken client: %v", err)
	}

	empty := newTestClient(t, Config{})
	if err := empty.Put(ctx, "k", "v"); !errors.Is(err, ErrNoEndpoints) {
		t.Fatalf("Put with no endpoints = %v, want ErrNoEndpoints", err)
	}

	cluster := etcdtest.New(t, 1)
	c := newTestClient(t, Config{Endpoints: cluster.Endpoints()})
	if err := c.Put(ctx, "k", "v"); err != nil {
		t.Fatalf("Put: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := c.Put(ctx, "k", "v"); !errors.Is(err, ErrClosed) {
		t.Fatalf("Put after Close = %v, want ErrClosed", err)
	}
	if err := c.UpdateEndpoints(cluster.Endpoints()); !errors.Is(err, ErrClosed) {
		t.Fatalf("UpdateEndpoints after Close = %v, want ErrClosed", err)
	}
}

// A switch between plain and TLS endpoints needs a new underlying client: the
// swap is atomic, a request in flight on the old client completes, and the old
// client is closed only after it does.
func TestTLSSwitchReplacesClient(t *testing.T) {
	cluster := etcdtest.New(t, 1)
	c := newTestClient(t, Config{Endpoints: cluster.Endpoints()})
	ctx := ctxT(t, 20*time.Second)

	var old *clientv3.Client
	entered, release := make(chan struct{}), make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- c.do(ctx, func(ctx context.Context, cli *clientv3.Client) error {
			old = cli
			close(entered)
			<-release
			_, err := cli.Put(ctx, "inflight", "kept")
			return err
		})
	}()
	<-entered

	tlsList := []string{"https" + cluster.Endpoints()[0][len("http"):]}
	if err := c.UpdateEndpoints(tlsList); err != nil {
		t.Fatalf("switch to TLS: %v", err)
	}
	if got := c.Endpoints(); !slices.Equal(got, tlsList) {
		t.Fatalf("Endpoints = %v, want %v", got, tlsList)
	}
	if old.Ctx().Err() != nil {
		t.Fatal("the old client was closed while a request was in flight on it")
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatalf("in-flight request across the swap: %v", err)
	}
	etcdtest.Eventually(t, 5*time.Second, "the old client to close", func() bool { return old.Ctx().Err() != nil })

	// Back to plain: a third client, which works against the plain cluster.
	if err := c.UpdateEndpoints(cluster.Endpoints()); err != nil {
		t.Fatalf("switch back: %v", err)
	}
	if v, err := c.Get(ctx, "inflight"); err != nil || v != "kept" {
		t.Fatalf("Get after switching back = %q, %v", v, err)
	}
}

// Against members that serve TLS: bare host:port entries become https when
// TLS is configured, certificates are really verified, and switching between
// the plain and the TLS URLs of one cluster works both ways.
func TestTLSCluster(t *testing.T) {
	cluster, files := etcdtest.NewTLS(t, 1)
	tlsCfg, err := files.ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	m := cluster.Members[0]
	ctx := ctxT(t, 20*time.Second)

	c := newTestClient(t, Config{Endpoints: []string{m.TLSClientURL.Host}, TLS: tlsCfg})
	if got := c.Endpoints(); len(got) != 1 || got[0] != m.TLSClientURL.String() {
		t.Fatalf("Endpoints = %v, want the https form %s", got, m.TLSClientURL.String())
	}
	if err := c.Put(ctx, "tls/k", "over TLS"); err != nil {
		t.Fatalf("Put over TLS: %v", err)
	}
	etcdtest.Eventually(t, 10*time.Second, "the health loop to connect over TLS", func() bool { return c.Health().Connected })

	// A CA that did not sign the member's certificate: nothing gets through.
	other, err := etcdtest.NewTLSFiles(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	wrongCfg, _ := other.ClientConfig()
	wrong := newTestClient(t, Config{Endpoints: []string{m.TLSClientURL.String()}, TLS: wrongCfg, RequestTimeout: time.Second})
	if err := wrong.Put(ctxT(t, 2*time.Second), "tls/k", "x"); err == nil {
		t.Fatal("a client with the wrong CA wrote over TLS")
	}

	// Plain -> TLS -> plain on one cluster, each step a real round trip.
	for i, ep := range []string{m.ClientURL.String(), m.TLSClientURL.String(), m.ClientURL.String()} {
		if err := c.UpdateEndpoints([]string{ep}); err != nil {
			t.Fatalf("switch %d to %s: %v", i, ep, err)
		}
		want := fmt.Sprintf("step %d", i)
		if err := c.Put(ctx, "tls/k", want); err != nil {
			t.Fatalf("Put after switching to %s: %v", ep, err)
		}
		if v, err := c.Get(ctx, "tls/k"); err != nil || v != want {
			t.Fatalf("Get after switching to %s = %q, %v", ep, v, err)
		}
	}
}

// unix:///path endpoints (endpoint package forms) reach real members: reads,
// writes and the health probes.
func TestUnixSocketEndpoints(t *testing.T) {
	cluster, err := etcdtest.Start(etcdtest.Options{Members: 3, Dir: t.TempDir(), UnixSockets: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cluster.Close)
	var eps []string
	for _, m := range cluster.Members {
		eps = append(eps, m.UnixClientURL.String())
	}
	c := newTestClient(t, Config{Endpoints: eps, MinClusterSize: 3})
	if got := c.Endpoints(); !slices.Equal(got, eps) {
		t.Fatalf("Endpoints = %v, want %v", got, eps)
	}
	ctx := ctxT(t, 10*time.Second)
	if err := c.Put(ctx, "unix/k", "v"); err != nil {
		t.Fatal(err)
	}
	if v, err := c.Get(ctx, "unix/k"); err != nil || v != "v" {
		t.Fatalf("Get = %q, %v", v, err)
	}
	etcdtest.Eventually(t, 10*time.Second, "every member probed healthy over its socket", func() bool {
		h := c.CheckHealth(ctxT(t, 5*time.Second))
		if !h.Connected || len(h.Members) != 3 {
			return false
		}
		for _, m := range h.Members {
			if !m.Healthy {
				return false
			}
		}
		return true
	})
}

// RemoveEndpoint checks the health of what would remain (the seed's "monitor
// cluster health before removing endpoints"). The client knows two members
// of three, one of them stopped (the cluster keeps its quorum): removing the
// live one is refused and changes nothing; removing the stopped one, which
// leaves the live one, goes through.
func TestRemoveEndpointNeedsAHealthyRemainder(t *testing.T) {
	cluster := etcdtest.New(t, 3)
	all := cluster.Endpoints()
	eps := []string{all[0], all[2]}
	c := newTestClient(t, Config{Endpoints: eps, MinClusterSize: 1, RequestTimeout: 2 * time.Second})
	if err := c.Put(ctxT(t, 10*time.Second), "k", "v"); err != nil {
		t.Fatal(err)
	}
	cluster.Members[2].Stop()
	if err := c.RemoveEndpoint(all[0]); !errors.Is(err, ErrNoHealthyEndpoint) {
		t.Fatalf("removing the only live member = %v, want ErrNoHealthyEndpoint", err)
	}
	if got := c.Endpoints(); !slices.Equal(got, eps) {
		t.Fatalf("a refused removal changed the list to %v", got)
	}
	if err := c.RemoveEndpoint(all[2]); err != nil {
		t.Fatalf("removing a stopped member while a live one remains: %v", err)
	}
	if got := c.Endpoints(); !slices.Equal(got, all[:1]) {
		t.Fatalf("Endpoints = %v, want %v", got, all[:1])
	}
	if err := c.Put(ctxT(t, 10*time.Second), "k", "v2"); err != nil {
		t.Fatalf("Put after the removal: %v", err)
	}
}

// A closed client stays closed: every method says ErrClosed (GetClient's
// singleton is such a client; see its doc).
func TestClosedClient(t *testing.T) {
	cluster := etcdtest.New(t, 1)
	c := newTestClient(t, Config{Endpoints: cluster.Endpoints()})
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t, 5*time.Second)
	_, getErr := c.Get(ctx, "k")
	for name, err := range map[string]error{
		"Put":             c.Put(ctx, "k", "v"),
		"Get":             getErr,
		"Delete":          c.Delete(ctx, "k"),
		"UpdateEndpoints": c.UpdateEndpoints(cluster.Endpoints()),
		"RemoveEndpoint":  c.RemoveEndpoint(cluster.Endpoints()[0]),
		"Close again":     errors.Join(c.Close(), ErrClosed),
	} {
		if !errors.Is(err, ErrClosed) {
			t.Errorf("%s after Close = %v, want ErrClosed", name, err)
		}
	}
}

// SetRequestTimeout (etcd.request_timeout on reload) bounds calls from then on.
func TestSetRequestTimeout(t *testing.T) {
	c := newTestClient(t, Config{RequestTimeout: time.Hour})
	c.SetRequestTimeout(250 * time.Millisecond)
	c.SetRequestTimeout(0) // ignored
	ctx, cancel := c.bound(context.Background())
	defer cancel()
	if d, ok := ctx.Deadline(); !ok || time.Until(d) > 250*time.Millisecond {
		t.Fatalf("deadline %v after SetRequestTimeout(250ms)", time.Until(d))
	}
}

// followConnection follows c's connection the way ConnectionChanged says
// to (take the channel, then read Health, then wait on it) and returns
// what the follower last saw. A snapshot published after its channel is
// closed leaves such a follower on the old value for good.
func followConnection(t *testing.T, c *EtcdClient) func() bool {
	t.Helper()
	var seen atomic.Bool
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		for {
			changed := c.ConnectionChanged()
			seen.Store(c.Health().Connected)
			select {
			case <-changed:
			case <-done:
				return
			}
		}
	}()
	t.Cleanup(func() { close(done); <-stopped })
	return seen.Load
}
