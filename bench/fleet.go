package main

// Fleet mode: what N agents cost one etcd cluster, measured next to N bare
// etcd clients in the same run, then the fleet events of docs/scale.md.
//
//	go run ./bench -fleet 100                 # about four minutes
//	go run ./bench -fleet 30 -window 10s      # quicker
//
// Every process is its own: three etcd members, N agents (this binary,
// -role agent, each with its own config, endpoints file and socket, default
// settings), and N bare watchers (-role watcher: clientv3 with one watch,
// which is what `etcdctl watch` is). What etcd is asked comes from the
// members' own /metrics (grpc_server_started_total, unary calls by method;
// etcd_debugging_mvcc_watch_stream_total), CPU from /proc/PID/stat,
// connections from the kernel's TCP table.

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"udp_iaasd/config"
	"udp_iaasd/internal/etcdtest"
)

type fleetOptions struct {
	n      int
	window time.Duration
	events bool
}

type fleet struct {
	dir     string
	cluster *etcdtest.ProcCluster
	eps     []string
	ports   []int
	agents  []*agentProc
	bare    []*exec.Cmd
}

// runWatcher is a bare etcd client: one watch, as `etcdctl watch` keeps.
func runWatcher(endpoints string) int {
	cli, err := clientv3.New(clientv3.Config{Endpoints: splitComma(endpoints), Logger: zap.NewNop()})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer cli.Close()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	for range cli.Watch(clientv3.WithRequireLeader(ctx), "fleet/anchor") {
	}
	return 0
}

func runFleet(o fleetOptions) int {
	f, err := newFleet()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	defer f.close()
	fmt.Printf("# endpointd fleet bench: %d agents and %d bare clientv3 watchers, one 3-member cluster, %d CPUs\n\n",
		o.n, o.n, runtimeCPUs())

	fmt.Fprintf(os.Stderr, "measuring the idle cluster for %v\n", o.window)
	base := f.measure(nil, o.window)

	type column struct {
		name string
		u    usage
	}
	var cols []column
	measureAgents := func(name, extra string) error {
		fmt.Fprintf(os.Stderr, "starting %d agents (%s)\n", o.n, name)
		if err := f.startAgents(o.n, extra); err != nil {
			return err
		}
		time.Sleep(3 * time.Second) // the connection rounds' answers land
		fmt.Fprintf(os.Stderr, "measuring for %v\n", o.window)
		cols = append(cols, column{name, f.measure(f.agentPIDs(), o.window)})
		return nil
	}
	if err := measureAgents("endpointd, defaults", ""); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	var events []string
	if o.events {
		events = f.events()
	}
	f.stopAgents()
	if err := measureAgents("endpointd, cache.prefixes [fleet/]", "cache: {prefixes: [fleet/], dir: \"\"}\n"); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	f.stopAgents()
	fmt.Fprintf(os.Stderr, "starting %d bare watchers\n", o.n)
	if err := f.startBare(o.n); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	time.Sleep(3 * time.Second)
	fmt.Fprintf(os.Stderr, "measuring for %v\n", o.window)
	cols = append(cols, column{"bare clientv3 watch", f.measure(f.barePIDs(), o.window)})
	f.stopBare()

	fmt.Printf("## Idle cost per process (%d of each, %v windows; the idle cluster alone: etcd CPU %.2f ms/s)\n\n",
		o.n, o.window, base.perSecond(base.etcdCPU))
	fmt.Print("| per process |")
	for _, c := range cols {
		fmt.Printf(" %s |", c.name)
	}
	fmt.Print("\n|---|")
	for range cols {
		fmt.Print("---|")
	}
	fmt.Println()
	row := func(label string, v func(u usage) string) {
		fmt.Printf("| %s |", label)
		for _, c := range cols {
			fmt.Printf(" %s |", v(c.u))
		}
		fmt.Println()
	}
	n := float64(o.n)
	row("unary RPC/s to etcd", func(u usage) string { return fmt.Sprintf("%.3f", (u.rpcTotal()-base.rpcTotal())/u.window.Seconds()/n) })
	row("  by method", func(u usage) string { return u.byMethod(base, n) })
	row("TCP connections to members", func(u usage) string { return fmt.Sprintf("%.2f", u.conns) })
	row("etcd CPU added, ms/s", func(u usage) string {
		return fmt.Sprintf("%.3f", (u.perSecond(u.etcdCPU)-base.perSecond(base.etcdCPU))/n)
	})
	row("etcd RSS added, KiB (3 members together)", func(u usage) string {
		return fmt.Sprintf("%.0f", (u.etcdRSS-base.etcdRSS)*1024/n)
	})
	row("own CPU, ms/s", func(u usage) string { return fmt.Sprintf("%.3f", u.perSecond(u.ownCPU)/n) })
	row("own RSS, MiB", func(u usage) string { return fmt.Sprintf("%.1f", u.rss) })
	fmt.Println()
	for _, e := range events {
		fmt.Println(e)
	}
	return 0
}

func newFleet() (*fleet, error) {
	dir, err := os.MkdirTemp("", "endpointd-fleet-")
	if err != nil {
		return nil, err
	}
	f := &fleet{dir: dir}
	if f.cluster, err = etcdtest.StartProc(filepath.Join(dir, "etcd"), 3); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	f.eps = f.cluster.Endpoints()
	for _, ep := range f.eps {
		u, _ := url.Parse(ep)
		p, _ := strconv.Atoi(u.Port())
		f.ports = append(f.ports, p)
	}
	return f, nil
}

func (f *fleet) close() {
	f.stopAgents()
	f.stopBare()
	f.cluster.KillAll()
	os.RemoveAll(f.dir)
}

// startAgents starts n agents with default settings plus extra (YAML lines
// for config.yaml) and waits until every one is ready.
func (f *fleet) startAgents(n int, extra string) error {
	for i := range n {
		dir := filepath.Join(f.dir, fmt.Sprintf("agent-%03d-%d", i, time.Now().UnixNano()))
		a, err := newAgentProc(dir, f.eps, "", extra, nil)
		if err != nil {
			return err
		}
		f.agents = append(f.agents, a)
	}
	// Started together, each ready when it says so (agentproc).
	errs := make([]error, len(f.agents))
	var wg sync.WaitGroup
	for i, a := range f.agents {
		wg.Go(func() { errs[i] = a.start(2 * time.Minute) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (f *fleet) stopAgents() {
	for _, a := range f.agents {
		a.signal(syscall.SIGTERM)
	}
	for _, a := range f.agents {
		a.wait()
	}
	f.agents = nil
}

func (f *fleet) agentPIDs() []int {
	var pids []int
	for _, a := range f.agents {
		pids = append(pids, a.cmd.Process.Pid)
	}
	return pids
}

func (f *fleet) startBare(n int) error {
	for range n {
		cmd := exec.Command(os.Args[0], "-role", "watcher", "-endpoints", strings.Join(f.eps, ","))
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			return err
		}
		f.bare = append(f.bare, cmd)
	}
	return nil
}

func (f *fleet) stopBare() {
	for _, c := range f.bare {
		c.Process.Signal(syscall.SIGTERM)
	}
	for _, c := range f.bare {
		c.Wait()
	}
	f.bare = nil
}

func (f *fleet) barePIDs() []int {
	var pids []int
	for _, c := range f.bare {
		pids = append(pids, c.Process.Pid)
	}
	return pids
}

func (f *fleet) memberPIDs() []int {
	var pids []int
	for _, m := range f.cluster.Members {
		pids = append(pids, m.PID())
	}
	return pids
}

// usage is what one window cost: totals over the window, averages per
// process for conns and rss.
type usage struct {
	window  time.Duration
	rpcs    map[string]float64 // unary RPCs received by the members, by method
	etcdCPU time.Duration      // the members' CPU
	ownCPU  time.Duration      // the measured processes' CPU
	conns   float64            // TCP connections to members, per process
	rss     float64            // MiB per process
	etcdRSS float64            // MiB, the members' together, at the end of the window
}

func (u usage) perSecond(d time.Duration) float64 {
	return float64(d.Microseconds()) / 1000 / u.window.Seconds()
}

func (u usage) rpcTotal() float64 {
	var t float64
	for _, v := range u.rpcs {
		t += v
	}
	return t
}

func (u usage) byMethod(base usage, n float64) string {
	var parts []string
	for _, m := range slices.Sorted(maps.Keys(u.rpcs)) {
		if d := u.rpcs[m] - base.rpcs[m]; d > 0 {
			parts = append(parts, fmt.Sprintf("%s %.3f", m, d/u.window.Seconds()/n))
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

// measure counts what the processes pids and the members do over window.
func (f *fleet) measure(pids []int, window time.Duration) usage {
	sumCPU := func(pids []int) time.Duration {
		var t time.Duration
		for _, p := range pids {
			t += cpuTime(p)
		}
		return t
	}
	members := f.memberPIDs()
	rpc0 := f.rpcs()
	m0, p0 := sumCPU(members), sumCPU(pids)
	start := time.Now()
	time.Sleep(window)
	u := usage{window: time.Since(start)}
	m1, p1 := sumCPU(members), sumCPU(pids)
	rpc1 := f.rpcs()
	u.rpcs = map[string]float64{}
	for k, v := range rpc1 {
		u.rpcs[k] = v - rpc0[k]
	}
	u.etcdCPU, u.ownCPU = m1-m0, p1-p0
	for _, p := range members {
		u.etcdRSS += memory(p).rss
	}
	if len(pids) > 0 {
		var conns, rss float64
		for _, p := range pids {
			c, _ := etcdtest.TCPConns(p)
			for _, port := range f.ports {
				conns += float64(c[port])
			}
			rss += memory(p).rss
		}
		u.conns, u.rss = conns/float64(len(pids)), rss/float64(len(pids))
	}
	return u
}

func (f *fleet) rpcs() map[string]float64 {
	total := map[string]float64{}
	for _, ep := range f.eps {
		m, err := etcdtest.UnaryRPCs(ep)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			continue
		}
		for k, v := range m {
			total[k] += v
		}
	}
	return total
}

// load is light local traffic through a sample of agents during an event:
// linearizable gets, as local services would make, each failure counted.
type load struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	errs       map[string]int
	stop       chan struct{}
	wg         sync.WaitGroup
}

func (f *fleet) startLoad(k int) *load {
	l := &load{errs: map[string]int{}, stop: make(chan struct{})}
	for i := range min(k, len(f.agents)) {
		a := f.agents[i*len(f.agents)/min(k, len(f.agents))]
		l.wg.Go(func() {
			for {
				select {
				case <-l.stop:
					return
				case <-time.After(20 * time.Millisecond):
				}
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				err := a.http.get(ctx, "fleet/k", false)
				cancel()
				if err == nil || strings.Contains(err.Error(), "404") {
					l.ok.Add(1)
					continue
				}
				l.failed.Add(1)
				l.mu.Lock()
				l.errs[err.Error()]++
				l.mu.Unlock()
			}
		})
	}
	return l
}

func (l *load) end() string {
	close(l.stop)
	l.wg.Wait()
	s := fmt.Sprintf("%d requests, %d failed", l.ok.Load()+l.failed.Load(), l.failed.Load())
	for e, n := range l.errs {
		s += fmt.Sprintf("; %d× %s", n, e)
	}
	return s
}

// connLog samples the members' accepted connections every 20ms and
// remembers when each was first seen.
type connLog struct {
	mu    sync.Mutex
	first map[string]time.Time // connection → first seen
	port  map[string]int
	stop  chan struct{}
	done  chan struct{}
}

func (f *fleet) startConnLog() *connLog {
	c := &connLog{first: map[string]time.Time{}, port: map[string]int{}, stop: make(chan struct{}), done: make(chan struct{})}
	seen, _ := etcdtest.ServedConns(f.ports)
	for k, p := range seen {
		c.first[k], c.port[k] = time.Time{}, p // there before: not new
	}
	go func() {
		defer close(c.done)
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-c.stop:
				return
			case now := <-t.C:
				cur, _ := etcdtest.ServedConns(f.ports)
				c.mu.Lock()
				for k, p := range cur {
					if _, ok := c.first[k]; !ok {
						c.first[k], c.port[k] = now, p
					}
				}
				c.mu.Unlock()
			}
		}
	}()
	return c
}

// newSince summarizes the connections first seen after t0 (to port, or to
// any member when port is 0): how many, the spread of their arrival, and
// the busiest 100ms.
func (c *connLog) newSince(t0 time.Time, port int) string {
	close(c.stop)
	<-c.done
	var at []time.Duration
	for k, t := range c.first {
		if !t.IsZero() && t.After(t0) && (port == 0 || c.port[k] == port) {
			at = append(at, t.Sub(t0))
		}
	}
	if len(at) == 0 {
		return "no new connections"
	}
	sort.Slice(at, func(i, j int) bool { return at[i] < at[j] })
	buckets := map[int64]int{}
	peak := 0
	for _, d := range at {
		b := int64(d / (100 * time.Millisecond))
		buckets[b]++
		peak = max(peak, buckets[b])
	}
	q := func(p float64) time.Duration { return at[int(p*float64(len(at)-1))].Round(time.Millisecond) }
	return fmt.Sprintf("%d new connections, first %v, p50 %v, p90 %v, last %v after; busiest 100ms: %d",
		len(at), q(0), q(0.5), q(0.9), q(1), peak)
}

// events runs the fleet events against the running agents and returns a
// paragraph for each.
func (f *fleet) events() []string {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := f.agents[0].http.put(ctx, "fleet/k", []byte("v")); err != nil {
		return []string{"events skipped: " + err.Error()}
	}
	var out []string
	out = append(out, f.eventPush())
	out = append(out, f.eventRestart())
	out = append(out, f.eventRolling())
	return out
}

// eventPush is configuration management writing a new endpoints.yaml on
// every host at once. The new file names the members by another host name
// (localhost for 127.0.0.1), so every agent must connect anew to every
// member: the worst case for the burst on etcd.
func (f *fleet) eventPush() string {
	fmt.Fprintln(os.Stderr, "event: endpoints.yaml pushed to every agent at once")
	var eps []string
	for _, ep := range f.eps {
		eps = append(eps, strings.Replace(ep, "127.0.0.1", "localhost", 1))
	}
	l := f.startLoad(10)
	time.Sleep(time.Second)
	conns := f.startConnLog()
	pushed := time.Now()
	for _, a := range f.agents {
		if err := writeEndpoints(a.epsPath, eps); err != nil {
			return "push: " + err.Error()
		}
	}
	wrote := time.Since(pushed)
	var applied []time.Duration
	deadline := time.Now().Add(time.Minute)
	for _, a := range f.agents {
		for {
			ts := a.lastReload()
			if ts.After(pushed) {
				applied = append(applied, ts.Sub(pushed))
				break
			}
			if time.Now().After(deadline) {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	time.Sleep(3 * time.Second)
	traffic := l.end()
	sort.Slice(applied, func(i, j int) bool { return applied[i] < applied[j] })
	appliedS := "none applied"
	if len(applied) > 0 {
		appliedS = fmt.Sprintf("%d of %d applied, p50 %v, last %v after the push began",
			len(applied), len(f.agents), applied[len(applied)/2].Round(time.Millisecond), applied[len(applied)-1].Round(time.Millisecond))
	}
	return fmt.Sprintf("### Event: a new endpoints.yaml on every host at once\n"+
		"Every file written within %v, naming each member by a new host name (every agent reconnects to every member). "+
		"%s. On the members: %s. Local traffic through 10 agents meanwhile: %s.\n",
		wrote.Round(time.Millisecond), appliedS, conns.newSince(pushed, 0), traffic)
}

func (a *agentProc) lastReload() time.Time {
	b, err := a.http.do(context.Background(), "GET", "/metrics", nil, nil)
	if err != nil {
		return time.Time{}
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "endpointd_config_last_reload_success_timestamp_seconds "); ok {
			s, _ := strconv.ParseFloat(v, 64)
			return time.Unix(0, int64(s*1e9))
		}
	}
	return time.Time{}
}

// eventRestart is one member killed (kill -9) and restarted 5s later: how
// the agents come back to it.
func (f *fleet) eventRestart() string {
	fmt.Fprintln(os.Stderr, "event: a member killed and restarted")
	m := f.cluster.Members[0]
	l := f.startLoad(10)
	time.Sleep(time.Second)
	m.Kill()
	time.Sleep(5 * time.Second)
	conns := f.startConnLog()
	restarted := time.Now()
	if err := m.Restart(); err != nil {
		l.end()
		return "restart: " + err.Error()
	}
	// Wait until every agent holds a connection to it again.
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		cur, _ := etcdtest.ServedConns([]int{f.ports[0]})
		if len(cur) >= len(f.agents) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(time.Second)
	traffic := l.end()
	return fmt.Sprintf("### Event: a member killed (kill -9) and restarted 5s later\n"+
		"Reconnections to it after the restart began: %s. Local traffic through 10 agents meanwhile: %s.\n",
		conns.newSince(restarted, f.ports[0]), traffic)
}

// eventRolling restarts the members one by one (kill -9, restart, 3s) while
// every agent has a local watch open, then reports where the agents' watch
// streams and requests ended up, and whether every watch saw a last write
// exactly once.
func (f *fleet) eventRolling() string {
	fmt.Fprintln(os.Stderr, "event: rolling restart with a watch open on every agent")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make([]atomic.Int64, len(f.agents))
	var ready sync.WaitGroup
	for i, a := range f.agents {
		ready.Add(1)
		go a.watchFinal(ctx, &ready, &got[i])
	}
	ready.Wait()
	streams := func() []float64 {
		var s []float64
		for _, ep := range f.eps {
			v, err := etcdtest.Gauge(ep, "etcd_debugging_mvcc_watch_stream_total")
			if err != nil {
				v = -1
			}
			s = append(s, v)
		}
		return s
	}
	before := streams()
	l := f.startLoad(10)
	for _, m := range f.cluster.Members {
		m.Kill()
		time.Sleep(2 * time.Second)
		if err := m.Restart(); err != nil {
			l.end()
			return "rolling restart: " + err.Error()
		}
		time.Sleep(3 * time.Second)
	}
	traffic := l.end()
	time.Sleep(2 * time.Second)
	soon := streams()
	// The agents move their streams within etcd.rebalance_spread (10s by
	// default) of the last member's return.
	time.Sleep(config.Default().Etcd.RebalanceSpread)
	after := streams()
	// Requests: where a burst of linearizable gets through every agent goes.
	r0 := f.rangesByMember()
	var wg sync.WaitGroup
	for _, a := range f.agents {
		wg.Go(func() {
			for range 20 {
				a.http.get(context.Background(), "fleet/k", false)
			}
		})
	}
	wg.Wait()
	r1 := f.rangesByMember()
	var reqs []float64
	for i := range r1 {
		reqs = append(reqs, r1[i]-r0[i])
	}
	// A last write, which every watch must deliver exactly once.
	if _, err := f.agents[0].http.put(context.Background(), "fleet/w", []byte("final")); err != nil {
		return "rolling restart: final write: " + err.Error()
	}
	deadline := time.Now().Add(30 * time.Second)
	var once, missing, twice int
	for {
		once, missing, twice = 0, 0, 0
		for i := range got {
			switch n := got[i].Load(); {
			case n == 1:
				once++
			case n == 0:
				missing++
			default:
				twice++
			}
		}
		if missing == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Sprintf("### Event: rolling restart of all three members (kill -9, restart, 3s each)\n"+
		"Watch streams on the members (etcd's gauge, the agents' one each plus the members' own): before %v, 2s after the last restart %v, "+
		"after etcd.rebalance_spread more %v. "+
		"Linearizable gets through every agent afterwards, by member (Range+Txn calls): %v. "+
		"A write after the restarts reached %d watches once, %d not at all, %d more than once. "+
		"Local traffic through 10 agents during the restarts: %s.\n",
		before, soon, after, reqs, once, missing, twice, traffic)
}

// rangesByMember counts the read calls (Range, and Txn for batched reads)
// each member has received.
func (f *fleet) rangesByMember() []float64 {
	var out []float64
	for _, ep := range f.eps {
		m, _ := etcdtest.UnaryRPCs(ep)
		out = append(out, m["Range"]+m["Txn"])
	}
	return out
}

// watchFinal watches fleet/w through the agent (resuming as a careful client
// does) and counts the events whose value is "final".
func (a *agentProc) watchFinal(ctx context.Context, ready *sync.WaitGroup, n *atomic.Int64) {
	var once sync.Once
	signal := func() { once.Do(ready.Done) }
	defer signal()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://localhost/v1/watch/fleet/w?heartbeat=1s", nil)
	if err != nil {
		return
	}
	resp, err := a.http.hc.Do(req)
	if err != nil {
		return
	}
	defer resp.Body.Close()
	buf := make([]byte, 64<<10)
	var line []byte
	for {
		k, err := resp.Body.Read(buf)
		signal() // the stream is open once the first bytes (a heartbeat) arrive
		for _, b := range buf[:k] {
			if b != '\n' {
				line = append(line, b)
				continue
			}
			if strings.Contains(string(line), `"value":"final"`) {
				n.Add(1)
			}
			line = line[:0]
		}
		if err != nil {
			return // cancelled at the end of the event, or the stream ended
		}
	}
}
