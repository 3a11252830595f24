//go:build !nodev

package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"udp_iaasd/agent"
	"udp_iaasd/config"
	"udp_iaasd/internal/devcluster"
)

// cmdDev is a newcomer's first contact: a real three-member etcd cluster
// in-process, an endpoints file, the agent on a socket in a temporary
// directory, and lines to try. Ctrl-C stops it all and removes the directory.
func cmdDev(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	flags := flag.NewFlagSet("endpointd dev", flag.ContinueOnError)
	members, verbose := devFlags(flags)
	if code, ok := parseFlags(flags, args, stderr); !ok {
		return code
	}
	if *members < 1 {
		fmt.Fprintf(stderr, "endpointd dev: -members must be at least 1, got %d\n", *members)
		return exitUsage
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()

	dir, err := os.MkdirTemp("", "endpointd-dev-")
	if err != nil {
		fmt.Fprintf(stderr, "endpointd dev: %v\n", err)
		return exitFailure
	}
	defer os.RemoveAll(dir)

	fmt.Fprintf(stdout, "starting a %d-member etcd cluster in %s …\n", *members, dir)
	cluster, err := devcluster.Start(devcluster.Options{Members: *members, Dir: filepath.Join(dir, "etcd"), Fsync: true})
	if err != nil {
		fmt.Fprintf(stderr, "endpointd dev: %v\n", err)
		return exitFailure
	}
	defer cluster.Close()

	cfgPath, cfg, err := writeDevConfig(dir, cluster.Endpoints(), min(2, *members))
	if err != nil {
		fmt.Fprintf(stderr, "endpointd dev: %v\n", err)
		return exitFailure
	}
	level := new(slog.LevelVar)
	if *verbose {
		level.Set(slog.LevelDebug)
	}
	log := newLogger("text", level, stderr)
	a, err := agent.New(agent.Options{Config: cfg, ConfigPath: cfgPath, Version: version + "-dev", Logger: log, LogLevel: level})
	if err != nil {
		fmt.Fprintf(stderr, "endpointd dev: %v\n", err)
		return exitFailure
	}
	runErr := make(chan error, 1)
	go func() { runErr <- a.Run(ctx) }()

	rctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	err = a.WaitReady(rctx)
	cancel()
	if err != nil && ctx.Err() == nil {
		fmt.Fprintf(stderr, "endpointd dev: the agent did not become ready: %s\n", a.Status().NotReadyReason())
	}
	printDevHelp(stdout, cfg, cluster.Endpoints(), dir, cfgPath)

	err = <-runErr
	a.Close() // the agent's client, then the cluster it talks to
	cluster.Close()
	if err != nil {
		fmt.Fprintf(stderr, "endpointd dev: %v\n", err)
		return exitFailure
	}
	fmt.Fprintf(stdout, "stopped; removed %s\n", dir)
	return exitOK
}

// writeDevConfig writes dev's config.yaml (minimum cluster size minSize)
// and endpoints file into dir, and loads the config back.
func writeDevConfig(dir string, eps []string, minSize int) (string, *config.Config, error) {
	cfgPath := filepath.Join(dir, "config.yaml")
	cfgYAML := fmt.Sprintf("# endpointd dev: a config for the demo\nendpoints_file: endpoints.yaml\nmin_cluster_size: %d\nsocket:\n  path: %s\n  grpc_path: %s\n",
		minSize, filepath.Join(dir, "endpointd.sock"), filepath.Join(dir, "etcd.sock"))
	if err := os.WriteFile(cfgPath, []byte(cfgYAML), 0o644); err != nil {
		return "", nil, err
	}
	header := []byte("# etcd endpoints for endpointd dev; edit me to see a hot reload\n")
	if err := os.WriteFile(filepath.Join(dir, "endpoints.yaml"), append(header, config.EndpointsYAML(eps)...), 0o644); err != nil {
		return "", nil, err
	}
	cfg, err := config.Load(cfgPath)
	return cfgPath, cfg, err
}

// printDevHelp prints the lines to try against the running demo.
func printDevHelp(stdout io.Writer, cfg *config.Config, eps []string, dir, cfgPath string) {
	sock, file, self := cfg.Socket.Path, cfg.EndpointsFile, selfCommand()
	fmt.Fprintf(stdout, strings.ReplaceAll(`
endpointd is serving on %[1]s, in front of etcd at %[3]s.

Try it (in another terminal):

  curl --unix-socket %[1]s -X PUT --data-binary world http://localhost/v1/kv/hello
  curl --unix-socket %[1]s http://localhost/v1/kv/hello
  curl --unix-socket %[1]s 'http://localhost/v1/kv/?prefix'
  curl --unix-socket %[1]s -N 'http://localhost/v1/watch/hello?heartbeat=5s'
  curl --unix-socket %[1]s http://localhost/v1/status

  export ENDPOINTD_SOCKET=%[1]s
  SELF kv put greeting hello
  SELF kv get greeting
  SELF kv watch greeting
  SELF status

  etcd's own clients on the gRPC socket (etcdctl: go run go.etcd.io/etcd/etcdctl/v3@v3.7.3):
  etcdctl --endpoints unix://%[7]s get hello

Hot reload: edit %[2]s (min_cluster_size is %[4]d).
  Drop a member and watch the log apply it; leave fewer than %[4]d, or write
  a bad entry, and the log says why it was rejected while the last good set
  stays in force.
  SELF validate -config %[6]s

Ctrl-C stops everything and removes %[5]s.
`, "SELF", self), sock, file, strings.Join(eps, ", "), cfg.MinClusterSize, dir, cfgPath, cfg.Socket.GRPCPath)

}

// selfCommand is how to run this endpointd again: "go run ./cmd/endpointd"
// when it was started that way (its binary is in go's build cache), else
// the path it was started by.
func selfCommand() string {
	if strings.Contains(os.Args[0], "go-build") {
		return "go run ./cmd/endpointd"
	}
	return os.Args[0]
}
