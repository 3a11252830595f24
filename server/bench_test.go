package server

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fasthttp"
	"golang.org/x/sys/unix"

	"udp_iaasd/access"
	"udp_iaasd/api"
	"udp_iaasd/cache"
	"udp_iaasd/config"
	"udp_iaasd/etcd"
	"udp_iaasd/internal/etcdtest"
	"udp_iaasd/internal/floor"
)

// BenchmarkGet is a linearizable single-key GET through a real socket and a
// real one-member cluster, for profiling the agent's share of a request:
//
//	go test -run '^$' -bench BenchmarkGet -cpuprofile cpu.out ./server
func BenchmarkGet(b *testing.B) { benchmarkGet(b, "/v1/kv/bench/k", false, nil) }

// BenchmarkGetCached is a serializable GET answered from cache.prefixes.
func BenchmarkGetCached(b *testing.B) { benchmarkGet(b, "/v1/kv/bench/k?serializable", true, nil) }

// BenchmarkGetCachedWithRules is BenchmarkGetCached under 20 access rules,
// the one that allows the read last: the check on the fastest path, beside
// BenchmarkGetCached in the same run.
func BenchmarkGetCachedWithRules(b *testing.B) {
	benchmarkGet(b, "/v1/kv/bench/k?serializable", true, benchPolicy(b))
}

func benchPolicy(b *testing.B) *access.Policy {
	var rules []access.Rule
	for i := range 19 {
		rules = append(rules, access.Rule{Name: fmt.Sprintf("r%d", i), UIDs: []uint32{uint32(50000 + i)},
			Units: []string{fmt.Sprintf("svc-%d-*.service", i)}, Prefixes: []string{fmt.Sprintf("svc%d/", i)}, Read: true, Write: true})
	}
	rules = append(rules, access.Rule{Name: "bench", UIDs: []uint32{uint32(os.Getuid())}, Prefixes: []string{"other/", "bench/"}, Read: true})
	p, err := access.NewPolicy(rules)
	if err != nil {
		b.Fatal(err)
	}
	return p
}

func benchmarkGet(b *testing.B, path string, cached bool, policy *access.Policy) {
	cl := etcdtest.New(b, 1)
	ec, err := etcd.New(etcd.Config{Endpoints: cl.Endpoints()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ec.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	var c *cache.Cache
	if cached {
		c = cache.New(ec, cache.Options{Prefixes: []string{"bench/"}, MaxStaleness: config.Default().Cache.MaxStaleness})
		go c.Run(ctx)
	}
	srv := New(Options{Etcd: ec, Registry: prometheus.NewRegistry(), Cache: c,
		Limits: Limits{MaxKeyBytes: 4096, MaxValueBytes: 1 << 20, MaxWatches: 16},
		Gate:   access.NewGate(access.Settings{Policy: policy}, nil, nil),
		Status: func() api.Status { return api.Status{Ready: true} }})
	sock := filepath.Join(b.TempDir(), "b.sock")
	ln, err := Listen(sock, 0o600, -1)
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() { srv.Serve(ctx, ln); close(done) }()
	b.Cleanup(func() { cancel(); <-done })
	if err := ec.Put(context.Background(), "bench/k", "value"); err != nil {
		b.Fatal(err)
	}
	for c != nil && !c.Synced() {
		time.Sleep(10 * time.Millisecond)
	}
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}, MaxIdleConnsPerHost: 64}}
	var misses atomic.Int64
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			resp, err := hc.Get("http://localhost" + path)
			if err != nil {
				b.Error(err)
				return
			}
			if cached && resp.Header.Get("X-Endpointd-Cache") != "hit" {
				// The cache stops answering while its watch is silent
				// for over a second, as it may be on a loaded machine.
				misses.Add(1)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	})
	if cached {
		b.ReportMetric(float64(misses.Load())/float64(b.N), "misses/op")
	}
}

// BenchmarkDirectGet is BenchmarkGet's baseline: the same read with
// clientv3, no socket in between.
func BenchmarkDirectGet(b *testing.B) {
	cl := etcdtest.New(b, 1)
	cli := cl.Client(b)
	if _, err := cli.Put(context.Background(), "bench/k", "value"); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := cli.Get(context.Background(), "bench/k"); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkRequest is what one request costs inside the agent's process,
// beside the floor (package floor: the least net/http can do). etcd runs in
// a process of its own and the client is a raw HTTP/1.1 writer that
// allocates nothing per request, so allocs/op is the server's alone:
// net/http, our handler, and for etcd-bound requests clientv3 and gRPC.
// cpu-µs/op is the process's user+system CPU per request (getrusage), the
// raw client's small share included: allocations say what is made, CPU what
// it all costs, scheduler and syscalls too, which is what issue 16 budgets.
//
//	go test -run '^$' -bench BenchmarkRequest -benchtime 20000x ./server
func BenchmarkRequest(b *testing.B) {
	cluster, err := etcdtest.StartProc(filepath.Join(b.TempDir(), "etcd"), 1)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(cluster.KillAll)
	ec, err := etcd.New(etcd.Config{Endpoints: cluster.Endpoints()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ec.Close() })
	// Written before the cache lists, so that its first copy has it.
	if err := ec.Put(context.Background(), "bench/k", "0123456789abcdef"); err != nil {
		b.Fatal(err)
	}
	// A 100-key listing outside the cached prefix: the read that
	// allocates most per request, for the JSON encoder and gRPC alike.
	for i := range 100 {
		if err := ec.Put(context.Background(), fmt.Sprintf("list/%03d", i), "0123456789abcdef"); err != nil {
			b.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := cache.New(ec, cache.Options{Prefixes: []string{"bench/"}, MaxStaleness: config.Default().Cache.MaxStaleness})
	go c.Run(ctx)
	srv := New(Options{Etcd: ec, Registry: prometheus.NewRegistry(), Cache: c,
		Limits: Limits{MaxKeyBytes: 4096, MaxValueBytes: 1 << 20, MaxWatches: 16},
		Status: func() api.Status { return api.Status{Ready: true} }})
	sock := filepath.Join(b.TempDir(), "agent.sock")
	ln, err := Listen(sock, 0o600, -1)
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() { srv.Serve(ctx, ln); close(done) }()
	b.Cleanup(func() { cancel(); <-done })

	// The same server with budgets configured and not exceeded: a rule
	// with a rate for this peer, and a host budget toward etcd on a client
	// of its own (it would otherwise slow the cells above). The cost of
	// budgets is these cells' figures less the plain ones.
	ecB, err := etcd.New(etcd.Config{Endpoints: cluster.Endpoints()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ecB.Close() })
	ecB.SetRequestBudget(1 << 30)
	budgets, err := access.NewPolicy([]access.Rule{{Name: "bench", UIDs: []uint32{uint32(os.Getuid())},
		Prefixes: []string{""}, Read: true, Write: true, Rate: 1 << 30, Burst: 1 << 30, MaxStreams: 100}})
	if err != nil {
		b.Fatal(err)
	}
	srvB := New(Options{Etcd: ecB, Registry: prometheus.NewRegistry(), Cache: c,
		Limits: Limits{MaxKeyBytes: 4096, MaxValueBytes: 1 << 20, MaxWatches: 16},
		Gate:   access.NewGate(access.Settings{Policy: budgets}, nil, nil),
		Status: func() api.Status { return api.Status{Ready: true} }})
	sockB := filepath.Join(b.TempDir(), "budgets.sock")
	lnB, err := Listen(sockB, 0o600, -1)
	if err != nil {
		b.Fatal(err)
	}
	doneB := make(chan struct{})
	go func() { srvB.Serve(ctx, lnB); close(doneB) }()
	b.Cleanup(func() { cancel(); <-doneB })

	floorSock := filepath.Join(b.TempDir(), "floor.sock")
	fln, err := net.Listen("unix", floorSock)
	if err != nil {
		b.Fatal(err)
	}
	fsrv := &http.Server{Handler: floor.Handler()}
	go fsrv.Serve(fln)
	b.Cleanup(func() { fsrv.Close() })

	// The same floor on fasthttp, the one well-kept Go HTTP/1.1 server
	// built to beat net/http's cost per request: issue 16 keeps net/http
	// unless another server clears this floor by a wide margin without
	// giving up a behaviour of API.md. It does clear it; what it gives up
	// is in docs/benchmarks.md ("net/http or fasthttp"). Only this
	// benchmark uses it.
	fastSock := filepath.Join(b.TempDir(), "floor-fasthttp.sock")
	fastLn, err := net.Listen("unix", fastSock)
	if err != nil {
		b.Fatal(err)
	}
	fastSrv := &fasthttp.Server{Handler: fastFloor, NoDefaultServerHeader: true}
	go fastSrv.Serve(fastLn)
	b.Cleanup(func() { fastSrv.Shutdown() })

	for !c.Synced() {
		time.Sleep(10 * time.Millisecond)
	}
	for _, bc := range []struct {
		name, sock, req string
	}{
		{"floor", floorSock, "GET /x HTTP/1.1\r\nHost: l\r\n\r\n"},
		{"floor-fasthttp", fastSock, "GET /x HTTP/1.1\r\nHost: l\r\n\r\n"},
		{"get-cached", sock, "GET /v1/kv/bench/k?serializable HTTP/1.1\r\nHost: l\r\n\r\n"},
		{"get", sock, "GET /v1/kv/bench/k HTTP/1.1\r\nHost: l\r\n\r\n"},
		{"list", sock, "GET /v1/kv/list/?prefix HTTP/1.1\r\nHost: l\r\n\r\n"},
		{"put", sock, "PUT /v1/kv/bench/k HTTP/1.1\r\nHost: l\r\nContent-Length: 16\r\n\r\n0123456789abcdef"},
		{"get-cached+budgets", sockB, "GET /v1/kv/bench/k?serializable HTTP/1.1\r\nHost: l\r\n\r\n"},
		{"get+budgets", sockB, "GET /v1/kv/bench/k HTTP/1.1\r\nHost: l\r\n\r\n"},
	} {
		for _, clients := range []int{1, 16} {
			b.Run(fmt.Sprintf("%s/clients=%d", bc.name, clients), func(b *testing.B) {
				conns := make(chan *benchConn, clients)
				for range clients {
					rc, err := dialBench(bc.sock, bc.req)
					if err != nil {
						b.Fatal(err)
					}
					defer rc.c.Close()
					conns <- rc
				}
				b.ReportAllocs()
				cpu0 := processCPU(b)
				defer func() {
					b.ReportMetric(float64((processCPU(b)-cpu0).Microseconds())/float64(b.N), "cpu-µs/op")
				}()
				b.ResetTimer()
				if clients == 1 {
					rc := <-conns
					for range b.N {
						if err := rc.do(); err != nil {
							b.Fatal(err)
						}
					}
					return
				}
				b.SetParallelism((clients + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
				b.RunParallel(func(pb *testing.PB) {
					rc := <-conns
					for pb.Next() {
						if err := rc.do(); err != nil {
							b.Error(err)
							return
						}
					}
				})
			})
		}
	}
}

// fastFloor is floor.Handler on fasthttp: the same value and headers
// (fasthttp writes Content-Length and Date itself).
func fastFloor(ctx *fasthttp.RequestCtx) {
	ctx.Response.Header.SetContentType("application/octet-stream")
	ctx.Response.Header.Set("X-Etcd-Revision", "42")
	ctx.Write(floor.Value)
}

// processCPU is the user and system CPU this process has used so far.
func processCPU(b *testing.B) time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// benchConn is a keep-alive HTTP/1.1 connection that sends one prepared
// request over and over and reads the answers without allocating.
type benchConn struct {
	c   net.Conn
	br  *bufio.Reader
	req []byte
}

func dialBench(sock, req string) (*benchConn, error) {
	c, err := net.Dial("unix", sock)
	if err != nil {
		return nil, err
	}
	return &benchConn{c: c, br: bufio.NewReaderSize(c, 64<<10), req: []byte(req)}, nil
}

var errRawStatus = errors.New("raw client: not a 2xx answer")

func (rc *benchConn) do() error {
	if _, err := rc.c.Write(rc.req); err != nil {
		return err
	}
	line, err := rc.br.ReadSlice('\n')
	if err != nil {
		return err
	}
	if len(line) < 12 || line[9] != '2' {
		return fmt.Errorf("%w: %q", errRawStatus, line)
	}
	length := -1
	for {
		line, err := rc.br.ReadSlice('\n')
		if err != nil {
			return err
		}
		if len(line) <= 2 {
			break
		}
		const cl = "content-length:"
		if len(line) > len(cl) && asciiEqualFold(line[:len(cl)], cl) {
			n := 0
			for _, ch := range line[len(cl):] {
				if ch >= '0' && ch <= '9' {
					n = n*10 + int(ch-'0')
				}
			}
			length = n
		}
	}
	if length < 0 {
		return errors.New("raw client: no Content-Length")
	}
	_, err = rc.br.Discard(length)
	return err
}

func asciiEqualFold(b []byte, s string) bool {
	for i := range b {
		ch := b[i]
		if 'A' <= ch && ch <= 'Z' {
			ch += 'a' - 'A'
		}
		if ch != s[i] {
			return false
		}
	}
	return true
}
