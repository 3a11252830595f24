package server

import (
	"context"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"udp_iaasd/etcd"
	"udp_iaasd/internal/etcdtest"
)

// BenchmarkGet is a linearizable single-key GET through a real socket and a
// real one-member cluster, for profiling the agent's share of a request:
//
//	go test -run '^$' -bench BenchmarkGet -cpuprofile cpu.out ./server
func BenchmarkGet(b *testing.B) {
	cl := etcdtest.New(b, 1)
	ec, err := etcd.New(etcd.Config{Endpoints: cl.Endpoints()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ec.Close() })
	srv := New(Options{Etcd: ec, Registry: prometheus.NewRegistry(),
		Limits: Limits{MaxKeyBytes: 4096, MaxValueBytes: 1 << 20, MaxWatches: 16, RequestTimeout: 5 * time.Second},
		Status: func() Status { return Status{Ready: true} }})
	sock := filepath.Join(b.TempDir(), "b.sock")
	ln, err := Listen(sock, 0o600, -1)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Serve(ctx, ln); close(done) }()
	b.Cleanup(func() { cancel(); <-done })
	if err := ec.Put(context.Background(), "bench/k", "value"); err != nil {
		b.Fatal(err)
	}
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}, MaxIdleConnsPerHost: 64}}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			resp, err := hc.Get("http://localhost/v1/kv/bench/k")
			if err != nil {
				b.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	})
}
