// Package sockettest serves the agent's sockets in a test's own process, in
// front of a real cluster: the HTTP API (package server) and etcd's gRPC API
// (package grpcapi) on real unix sockets, with one etcd client, one access
// gate and, when asked, a read cache — the parts the agent wires, without
// its files, its reloads or its process. Tests of the Go client and of the
// gRPC socket use it; the agent's own tests use internal/agenttest, and the
// server's in-package tests keep a kit of their own (they reach unexported
// state, and an in-package test cannot import a package that imports
// server).
package sockettest

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"udp_iaasd/access"
	"udp_iaasd/api"
	"udp_iaasd/cache"
	"udp_iaasd/etcd"
	"udp_iaasd/grpcapi"
	"udp_iaasd/server"
)

// Options say what to serve.
type Options struct {
	Endpoints []string
	// HTTP and GRPC are the sockets' paths; "" serves no such socket.
	HTTP, GRPC string
	// Policy holds the access rules (nil: none).
	Policy *access.Policy
	// CachePrefixes, when set, are served from a read cache; Start returns
	// once it is synced.
	CachePrefixes []string
	// RequestTimeout is etcd.request_timeout; default 3s.
	RequestTimeout time.Duration
	Logger         *slog.Logger
}

// Agent is what Start serves.
type Agent struct {
	Etcd *etcd.EtcdClient
	Gate *access.Gate

	stopOnce sync.Once
	stop     func()
}

// Start serves o's sockets; Stop ends them and closes the etcd client.
func Start(o Options) (*Agent, error) {
	if o.RequestTimeout <= 0 {
		o.RequestTimeout = 3 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	ec, err := etcd.New(etcd.Config{Endpoints: o.Endpoints, RequestTimeout: o.RequestTimeout,
		StatusProbeInterval: time.Millisecond, Logger: o.Logger})
	if err != nil {
		return nil, err
	}
	a := &Agent{Etcd: ec, Gate: access.NewGate(access.Settings{Policy: o.Policy}, nil, o.Logger)}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	a.stop = func() {
		cancel()
		wg.Wait()
		ec.Close()
	}
	var c *cache.Cache
	if len(o.CachePrefixes) > 0 {
		c = cache.New(ec, cache.Options{Prefixes: o.CachePrefixes, MaxStaleness: time.Second, Logger: o.Logger})
		wg.Go(func() { c.Run(ctx) })
		if err := awaitSynced(ctx, c, 10*time.Second); err != nil {
			a.Stop()
			return nil, err
		}
	}
	if o.HTTP != "" {
		srv := server.New(server.Options{Etcd: ec, Cache: c, Gate: a.Gate, Registry: prometheus.NewRegistry(), Logger: o.Logger,
			Limits: server.Limits{MaxKeyBytes: 4096, MaxValueBytes: 1 << 20, MaxWatches: 64},
			Status: func() api.Status { return api.Status{Ready: true, Endpoints: ec.Endpoints()} }})
		ln, err := server.Listen(o.HTTP, 0o600, -1)
		if err != nil {
			a.Stop()
			return nil, err
		}
		wg.Go(func() { srv.Serve(ctx, ln) })
	}
	if o.GRPC != "" {
		g := grpcapi.New(grpcapi.Options{Etcd: ec, Cache: c, Gate: a.Gate, Logger: o.Logger, ShutdownTimeout: 2 * time.Second})
		ln, err := server.Listen(o.GRPC, 0o600, -1)
		if err != nil {
			a.Stop()
			return nil, err
		}
		wg.Go(func() { g.Serve(ctx, ln) })
	}
	return a, nil
}

// Serve is Start for a test: it fails the test if the sockets cannot be
// served, and stops them when the test ends.
func Serve(t testing.TB, o Options) *Agent {
	t.Helper()
	a, err := Start(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Stop)
	return a
}

// Stop ends the sockets and closes the etcd client; it may be called more
// than once.
func (a *Agent) Stop() { a.stopOnce.Do(a.stop) }

// awaitSynced waits until the cache's copies are listed and watched.
func awaitSynced(ctx context.Context, c *cache.Cache, max time.Duration) error {
	deadline := time.Now().Add(max)
	for !c.Synced() {
		if time.Now().After(deadline) || ctx.Err() != nil {
			return errors.New("sockettest: the read cache did not sync")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}
