// Command bench measures endpointd side by side with direct clientv3 and
// etcd's grpc-proxy against one local three-member etcd cluster, in one run:
//
//	go run ./bench                       # the full table (a few minutes)
//	go run ./bench -cell 1s -rounds 2    # quicker, noisier
//
// Every etcd member, the agent and the proxy run in processes of their own
// (this binary, re-executed), so the agent's and the proxy's CPU per request
// and memory come from their own /proc entries. Targets alternate within each
// round (A/B/C, rotated), so drift on a shared 2-core machine is spread over
// all three. The endpointd target is a plain keep-alive net/http client over
// the unix socket, as any HTTP client would be; the agent runs with
// cache.prefixes [bench/], so its serializable gets come from memory.
package main

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/proxy/grpcproxy"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"udp_iaasd/agent"
	"udp_iaasd/internal/agentproc"
	"udp_iaasd/internal/etcdtest"
	"udp_iaasd/internal/floor"
)

func main() {
	etcdtest.RunMemberIfRequested()
	role := flag.String("role", "", "internal: agent, proxy or watcher")
	cfgPath := flag.String("config", "", "internal: the agent's config.yaml")
	endpoints := flag.String("endpoints", "", "internal: the proxy's etcd endpoints, comma-separated")
	listen := flag.String("listen", "", "internal: the proxy's listen address, or the floor's socket")
	var o options
	flag.DurationVar(&o.cell, "cell", 2e9, "how long each measurement runs")
	flag.IntVar(&o.rounds, "rounds", 3, "rounds of A/B/C alternation per cell")
	flag.IntVar(&o.keys, "keys", 100, "keys read and written")
	flag.IntVar(&o.reloads, "reloads", 100, "endpoints file reloads to time")
	flag.IntVar(&o.watchers, "watchers", 100, "local watchers for the fan-out measurement")
	flag.StringVar(&o.only, "only", "", "measure only operations whose name contains this")
	flag.IntVar(&o.proxyProcs, "proxy-procs", 0, "GOMAXPROCS for grpc-proxy; 0 leaves Go's default, as etcd ships it")
	var fo fleetOptions
	flag.IntVar(&fo.n, "fleet", 0, "fleet mode: N agents beside N bare etcd clients (see fleet.go)")
	flag.DurationVar(&fo.window, "window", 20e9, "fleet mode: how long each idle measurement runs")
	flag.BoolVar(&fo.events, "events", true, "fleet mode: run the fleet events too")
	flag.Parse()
	switch *role {
	case "agent":
		os.Exit(agentproc.Main(*cfgPath, "bench"))
	case "proxy":
		os.Exit(runProxy(*endpoints, *listen))
	case "watcher":
		os.Exit(runWatcher(*endpoints))
	case "floor":
		os.Exit(runFloor(*listen))
	case "trickle":
		os.Exit(runTrickle(*listen, o.cell))
	case "render":
		os.Exit(runRenderChild(*cfgPath))
	}
	if renderMode {
		os.Exit(runRenderBench(o.cell * 5))
	}
	if persistMode {
		os.Exit(runPersistBench(o.cell * 10))
	}
	if budgetsMode {
		os.Exit(runBudgets(o.cell*5, o.rounds))
	}
	if fo.n > 0 {
		os.Exit(runFleet(fo))
	}
	os.Exit(run(o))
}

// runFloor is the floor child: package floor's handler, the least a
// net/http server on a unix socket can do for a request, on sock until
// SIGTERM. Its CPU per request is what the agent's cached reads are held
// to, so it runs with the agent's runtime settings: the ratio is then the
// handler's cost, not the runtime's.
func runFloor(sock string) int {
	agent.TuneRuntime()
	ln, err := net.Listen("unix", sock)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	srv := &http.Server{Handler: floor.Handler()}
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM)
		<-sig
		srv.Close()
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// runProxy is the grpc-proxy child, assembled as `etcd grpc-proxy start`
// assembles it (etcdmain.newGRPCProxyServer), without its optional features.
func runProxy(endpoints, listen string) int {
	cli, err := clientv3.New(clientv3.Config{Endpoints: splitComma(endpoints), Logger: zap.NewNop()})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer cli.Close()
	kvp, _ := grpcproxy.NewKvProxy(cli)
	watchp, _ := grpcproxy.NewWatchProxy(cli.Ctx(), zap.NewNop(), cli)
	leasep, _ := grpcproxy.NewLeaseProxy(cli.Ctx(), cli)
	srv := grpc.NewServer(grpc.MaxConcurrentStreams(1 << 30))
	etcdserverpb.RegisterKVServer(srv, kvp)
	etcdserverpb.RegisterWatchServer(srv, watchp)
	etcdserverpb.RegisterLeaseServer(srv, leasep)
	etcdserverpb.RegisterMaintenanceServer(srv, grpcproxy.NewMaintenanceProxy(cli))
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM)
		<-sig
		srv.Stop()
	}()
	if err := srv.Serve(ln); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}
