package server

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"udp_iaasd/access"
	"udp_iaasd/api"
	"udp_iaasd/cache"
	"udp_iaasd/config"
	"udp_iaasd/etcd"
	"udp_iaasd/internal/etcdtest"
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
		c = cache.New(ec, []string{"bench/"}, config.Default().Cache.MaxStaleness, slog.New(slog.DiscardHandler))
		go c.Run(ctx)
	}
	srv := New(Options{Etcd: ec, Registry: prometheus.NewRegistry(), Cache: c,
		Limits: Limits{MaxKeyBytes: 4096, MaxValueBytes: 1 << 20, MaxWatches: 16, RequestTimeout: 5 * time.Second, Access: policy},
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
