package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"udp_iaasd/agent"
	"udp_iaasd/config"
	"udp_iaasd/internal/etcdtest"
)

type options struct {
	cell       time.Duration
	rounds     int
	keys       int
	reloads    int
	watchers   int
	only       string
	proxyProcs int // grpc-proxy's GOMAXPROCS; 0 for Go's default
}

// target is one way to reach etcd.
type target interface {
	name() string
	get(ctx context.Context, key string, serializable bool) error
	put(ctx context.Context, key string, value []byte) (int64, error)
	list(ctx context.Context, prefix string) error
	cas(ctx context.Context, key string, value []byte, rev int64) (int64, error)
	pid() int // the process whose CPU is charged to this target, 0 for none
}

// env is everything one bench run starts.
type env struct {
	dir      string
	cluster  *etcdtest.ProcCluster
	agent    *agentProc
	proxy    *exec.Cmd
	proxyURL string
	direct   *grpcTarget
	viaProxy *grpcTarget
	viaAgent *httpTarget
	viaGRPC  *grpcTarget // clientv3 on the agent's gRPC socket
	grpcSock string
	floor    *exec.Cmd // package floor's handler: what net/http alone costs
	viaFloor *httpTarget
}

func run(o options) int {
	e, err := setup(o.proxyProcs)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	defer e.close()
	fmt.Printf("endpointd bench: %s, %d CPUs; 3 etcd members, the agent and grpc-proxy each in its own process\n",
		time.Now().UTC().Format(time.RFC3339), runtimeCPUs())
	fmt.Printf("cells of %v, %d rounds of A/B/C alternation, %d keys, 100-key listings\n", o.cell, o.rounds, o.keys)
	// The proxy child inherits this process's environment and, like it,
	// does not tune its runtime: what this process runs with, it does.
	proxyProcs, proxyGOGC := agent.RuntimeSettings()
	if o.proxyProcs > 0 {
		proxyProcs = o.proxyProcs
	}
	fmt.Printf("runtime: agent and floor %s; grpc-proxy GOMAXPROCS=%d GOGC=%d\n\n", e.agentRuntime(), proxyProcs, proxyGOGC)

	if err := e.preload(o.keys); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	idle := memory(e.agent.pid())
	proxyIdle := memory(e.proxy.Process.Pid)

	ops := []struct {
		name  string
		fn    func(t target, ctx context.Context, w, i int, st *workerState) error
		floor bool // measure the floor beside it
	}{
		{"get (linearizable)", func(t target, ctx context.Context, w, i int, _ *workerState) error {
			return t.get(ctx, keyName(i%o.keys), false)
		}, true},
		{"get (serializable)", func(t target, ctx context.Context, w, i int, _ *workerState) error {
			return t.get(ctx, keyName(i%o.keys), true)
		}, true},
		{"put", func(t target, ctx context.Context, w, i int, _ *workerState) error {
			_, err := t.put(ctx, keyName(i%o.keys), value)
			return err
		}, false},
		{"list 100 keys", func(t target, ctx context.Context, w, i int, _ *workerState) error {
			return t.list(ctx, "bench/list/")
		}, false},
		{"compare-and-swap", func(t target, ctx context.Context, w, i int, st *workerState) error {
			key := fmt.Sprintf("bench/cas/%d", w)
			if st.casRev[t.name()] == 0 {
				rev, err := t.put(ctx, key, value)
				if err != nil {
					return err
				}
				st.casRev[t.name()] = rev
			}
			rev, err := t.cas(ctx, key, value, st.casRev[t.name()])
			if err != nil {
				st.casRev[t.name()] = 0
				return err
			}
			st.casRev[t.name()] = rev
			return nil
		}, false},
	}
	targets := []target{e.direct, e.viaAgent, e.viaGRPC, e.viaProxy}
	var loaded memInfo
	fmt.Printf("%-20s %7s  %-14s %10s %7s %9s %9s %13s\n", "operation", "clients", "path", "ops/s", "×direct", "p50", "p99", "CPU µs/op")
	for _, op := range ops {
		if o.only != "" && !strings.Contains(op.name, o.only) {
			continue
		}
		targets := targets
		if op.floor {
			targets = append(targets[:len(targets):len(targets)], e.viaFloor)
		}
		for _, clients := range []int{1, 16} {
			res := map[string]*cellResult{}
			for round := range o.rounds {
				for k := range targets {
					t := targets[(k+round)%len(targets)] // rotate who goes first
					r := measure(t, clients, o.cell, op.fn)
					if res[t.name()] == nil {
						res[t.name()] = &cellResult{}
					}
					res[t.name()].add(r)
					if t == e.viaAgent && clients == 16 && op.name == "get (linearizable)" {
						loaded = memory(e.agent.pid())
					}
				}
			}
			base := res["direct"].throughput()
			for _, t := range targets {
				r := res[t.name()]
				cpu := "-"
				if t.pid() != 0 {
					cpu = fmt.Sprintf("%.0f", r.cpuPerOp())
				}
				fmt.Printf("%-20s %7d  %-14s %10.0f %7.2f %9s %9s %13s\n", op.name, clients, t.name(), r.throughput(),
					r.throughput()/base, r.pct(0.50), r.pct(0.99), cpu)
			}
		}
	}
	fmt.Println()
	fmt.Printf("memory, agent:      idle RSS %.1f MiB (private %.1f MiB); under 16-client load RSS %.1f MiB (private %.1f MiB)\n",
		idle.rss, idle.private, loaded.rss, loaded.private)
	fmt.Printf("memory, grpc-proxy: idle RSS %.1f MiB (private %.1f MiB)\n", proxyIdle.rss, proxyIdle.private)

	if o.only == "" || strings.Contains("reload", o.only) {
		e.reloadLatency(o.reloads)
	}
	if o.only == "" || strings.Contains("watch", o.only) {
		e.watchFanOut(o.watchers)
	}
	if o.only == "" || strings.Contains("failover", o.only) {
		e.failover()
	}
	return 0
}

var value = bytes.Repeat([]byte("v"), 128)

func keyName(i int) string { return fmt.Sprintf("bench/k%03d", i) }

type workerState struct{ casRev map[string]int64 }

type sample struct {
	ops    int
	errors int
	lats   []time.Duration
	wall   time.Duration
	cpu    time.Duration
}

// measure runs clients workers of fn against t for d.
func measure(t target, clients int, d time.Duration, fn func(target, context.Context, int, int, *workerState) error) sample {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	cpu0 := cpuTime(t.pid())
	start := time.Now()
	var mu sync.Mutex
	var s sample
	var wg sync.WaitGroup
	for w := range clients {
		wg.Go(func() {
			st := &workerState{casRev: map[string]int64{}}
			var lats []time.Duration
			errs := 0
			for i := w; ctx.Err() == nil; i += clients {
				t0 := time.Now()
				err := fn(t, ctx, w, i, st)
				if ctx.Err() != nil {
					break
				}
				if err != nil {
					errs++
					continue
				}
				lats = append(lats, time.Since(t0))
			}
			mu.Lock()
			s.lats = append(s.lats, lats...)
			s.errors += errs
			mu.Unlock()
		})
	}
	wg.Wait()
	s.wall = time.Since(start)
	s.cpu = cpuTime(t.pid()) - cpu0
	s.ops = len(s.lats)
	return s
}

type cellResult struct{ samples []sample }

func (c *cellResult) add(s sample) { c.samples = append(c.samples, s) }

func (c *cellResult) throughput() float64 {
	ops, wall := 0, time.Duration(0)
	for _, s := range c.samples {
		ops += s.ops
		wall += s.wall
	}
	return float64(ops) / wall.Seconds()
}

func (c *cellResult) pct(p float64) string {
	var all []time.Duration
	for _, s := range c.samples {
		all = append(all, s.lats...)
	}
	if len(all) == 0 {
		return "-"
	}
	slices.Sort(all)
	d := all[min(len(all)-1, int(float64(len(all))*p))]
	return fmt.Sprintf("%.0fµs", float64(d.Microseconds()))
}

func (c *cellResult) cpuPerOp() float64 {
	ops, cpu := 0, time.Duration(0)
	for _, s := range c.samples {
		ops += s.ops
		cpu += s.cpu
	}
	if ops == 0 {
		return 0
	}
	return float64(cpu.Microseconds()) / float64(ops)
}

// cpuTime is the user+system CPU a process has used (/proc/PID/stat).
func cpuTime(pid int) time.Duration {
	if pid == 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name, which is in parentheses and may hold
	// spaces: utime is the 14th field overall, stime the 15th.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ is 100 on Linux
}

type memInfo struct{ rss, private float64 }

// memory reads RSS and private RSS (Private_Clean+Private_Dirty) in MiB.
func memory(pid int) memInfo {
	var m memInfo
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	for line := range strings.SplitSeq(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		kb, _ := strconv.ParseFloat(f[1], 64)
		switch f[0] {
		case "Rss:":
			m.rss = kb / 1024
		case "Private_Clean:", "Private_Dirty:":
			m.private += kb / 1024
		}
	}
	return m
}

func runtimeCPUs() int {
	b, _ := os.ReadFile("/proc/cpuinfo")
	return strings.Count(string(b), "processor\t:")
}

func splitComma(s string) []string {
	var out []string
	for p := range strings.SplitSeq(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func setup(proxyProcs int) (*env, error) {
	dir, err := os.MkdirTemp("", "endpointd-bench-")
	if err != nil {
		return nil, err
	}
	e := &env{dir: dir, grpcSock: filepath.Join(dir, "etcd.sock")}
	if e.cluster, err = etcdtest.StartProc(filepath.Join(dir, "etcd"), 3); err != nil {
		return nil, err
	}
	eps := e.cluster.Endpoints()
	// cache.prefixes covers the keys, as the side-by-side run asks:
	// serializable gets are then answered from the agent's watched copy.
	if e.agent, err = newAgentProc(dir, eps, ", grpc_path: "+e.grpcSock,
		"cache: {prefixes: [bench/], dir: "+filepath.Join(dir, "cache")+"}\n", os.Stderr); err != nil {
		return nil, err
	}
	if err := e.agent.start(time.Minute); err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	e.proxyURL = fmt.Sprintf("127.0.0.1:%d", port)
	e.proxy = exec.Command(os.Args[0], "-role", "proxy", "-endpoints", strings.Join(eps, ","), "-listen", e.proxyURL)
	e.proxy.Stderr = os.Stderr
	if proxyProcs > 0 {
		e.proxy.Env = append(os.Environ(), fmt.Sprintf("GOMAXPROCS=%d", proxyProcs))
	}
	if err := e.proxy.Start(); err != nil {
		return nil, err
	}
	if e.direct, err = newGRPCTarget("direct", eps, 0); err != nil {
		return nil, err
	}
	if e.viaProxy, err = newGRPCTarget("grpc-proxy", []string{"http://" + e.proxyURL}, e.proxy.Process.Pid); err != nil {
		return nil, err
	}
	e.viaAgent = e.agent.http
	floorSock := filepath.Join(dir, "floor.sock")
	e.floor = exec.Command(os.Args[0], "-role", "floor", "-listen", floorSock)
	e.floor.Stderr = os.Stderr
	if err := e.floor.Start(); err != nil {
		return nil, err
	}
	e.viaFloor = newHTTPTarget("floor", floorSock, e.floor.Process.Pid)
	if e.viaGRPC, err = newGRPCTarget("endpointd-grpc", []string{"unix://" + e.grpcSock}, e.agent.pid()); err != nil {
		return nil, err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, err := e.viaAgent.status()
		errP := e.viaProxy.get(context.Background(), "probe", false)
		errG := e.viaGRPC.get(context.Background(), "probe", false)
		errF := e.viaFloor.get(context.Background(), "probe", false)
		if err == nil && st.Ready && errP == nil && errG == nil && errF == nil {
			return e, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("agent, proxy or floor not ready: %v, %v, %v, %v", err, errP, errG, errF)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// agentRuntime is the agent's GOMAXPROCS and GOGC as its /metrics reports
// them (the Go collector's gauges), so the table says what was measured.
func (e *env) agentRuntime() string {
	procs, err := etcdtest.GaugeVia(e.viaAgent.hc, "http://localhost", "go_sched_gomaxprocs_threads")
	if err != nil {
		return "(runtime unknown: " + err.Error() + ")"
	}
	gogc, err := etcdtest.GaugeVia(e.viaAgent.hc, "http://localhost", "go_gc_gogc_percent")
	if err != nil {
		return "(runtime unknown: " + err.Error() + ")"
	}
	return fmt.Sprintf("GOMAXPROCS=%g GOGC=%g", procs, gogc)
}

func (e *env) close() {
	e.agent.stop()
	for _, c := range []*exec.Cmd{e.proxy, e.floor} {
		if c != nil && c.Process != nil {
			c.Process.Signal(syscall.SIGTERM)
			c.Wait()
		}
	}
	if e.cluster != nil {
		e.cluster.KillAll()
	}
	os.RemoveAll(e.dir)
}

func (e *env) preload(n int) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for i := range n {
		if _, err := e.direct.put(ctx, keyName(i), value); err != nil {
			return err
		}
		if _, err := e.direct.put(ctx, fmt.Sprintf("bench/list/%03d", i), value); err != nil {
			return err
		}
	}
	return nil
}

// writeEndpoints replaces the file at path, as configuration management does.
func writeEndpoints(path string, eps []string) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, config.EndpointsYAML(eps), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// grpcTarget is clientv3, straight to etcd or through grpc-proxy.
type grpcTarget struct {
	label string
	cli   *clientv3.Client
	p     int
}

func newGRPCTarget(label string, eps []string, pid int) (*grpcTarget, error) {
	cli, err := clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return nil, err
	}
	return &grpcTarget{label: label, cli: cli, p: pid}, nil
}

func (g *grpcTarget) name() string { return g.label }
func (g *grpcTarget) pid() int     { return g.p }

func (g *grpcTarget) get(ctx context.Context, key string, serializable bool) error {
	var opts []clientv3.OpOption
	if serializable {
		opts = append(opts, clientv3.WithSerializable())
	}
	_, err := g.cli.Get(ctx, key, opts...)
	return err
}

func (g *grpcTarget) put(ctx context.Context, key string, v []byte) (int64, error) {
	r, err := g.cli.Put(ctx, key, string(v))
	if err != nil {
		return 0, err
	}
	return r.Header.Revision, nil
}

func (g *grpcTarget) list(ctx context.Context, prefix string) error {
	_, err := g.cli.Get(ctx, prefix, clientv3.WithPrefix())
	return err
}

func (g *grpcTarget) cas(ctx context.Context, key string, v []byte, rev int64) (int64, error) {
	r, err := g.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", rev)).
		Then(clientv3.OpPut(key, string(v))).Else(clientv3.OpGet(key, clientv3.WithKeysOnly())).Commit()
	if err != nil {
		return 0, err
	}
	if !r.Succeeded {
		return 0, fmt.Errorf("cas lost")
	}
	return r.Header.Revision, nil
}

// httpTarget is the agent's socket through a plain keep-alive HTTP client.
type httpTarget struct {
	n  string
	hc *http.Client
	p  int
}

func newHTTPTarget(name, sock string, pid int) *httpTarget {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
		MaxIdleConnsPerHost: 64,
	}
	return &httpTarget{n: name, hc: &http.Client{Transport: tr}, p: pid}
}

func (h *httpTarget) name() string { return h.n }
func (h *httpTarget) pid() int     { return h.p }

func (h *httpTarget) do(ctx context.Context, method, path string, body []byte, hdr map[string]string) ([]byte, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://localhost"+path, rd)
	if err != nil {
		return nil, err
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := h.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return nil, fmt.Errorf("%s %s: %d %s", method, path, resp.StatusCode, b)
	}
	return b, err
}

func (h *httpTarget) get(ctx context.Context, key string, serializable bool) error {
	p := "/v1/kv/" + key
	if serializable {
		p += "?serializable"
	}
	_, err := h.do(ctx, http.MethodGet, p, nil, nil)
	return err
}

func (h *httpTarget) put(ctx context.Context, key string, v []byte) (int64, error) {
	return h.write(ctx, key, v, nil)
}

func (h *httpTarget) write(ctx context.Context, key string, v []byte, hdr map[string]string) (int64, error) {
	b, err := h.do(ctx, http.MethodPut, "/v1/kv/"+key, v, hdr)
	if err != nil {
		return 0, err
	}
	var r struct {
		Revision int64 `json:"revision"`
	}
	err = json.Unmarshal(b, &r)
	return r.Revision, err
}

func (h *httpTarget) list(ctx context.Context, prefix string) error {
	_, err := h.do(ctx, http.MethodGet, "/v1/kv/"+prefix+"?prefix", nil, nil)
	return err
}

func (h *httpTarget) cas(ctx context.Context, key string, v []byte, rev int64) (int64, error) {
	return h.write(ctx, key, v, map[string]string{"If-Match": fmt.Sprintf(`"%d"`, rev)})
}

type agentStatus struct {
	Ready  bool `json:"ready"`
	Config struct {
		SHA256 string `json:"sha256"`
	} `json:"config"`
	Etcd struct {
		Leader string `json:"leader"`
	} `json:"etcd"`
}

func (h *httpTarget) status() (*agentStatus, error) {
	b, err := h.do(context.Background(), http.MethodGet, "/v1/status", nil, nil)
	if err != nil {
		return nil, err
	}
	var st agentStatus
	return &st, json.Unmarshal(b, &st)
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func writeFile(path, content string) {
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
	}
}

func rename(from, to string) {
	if err := os.Rename(from, to); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
	}
}
