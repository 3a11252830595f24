// Package agent is endpointd's running process: it keeps the etcd client's
// endpoints in step with endpoints.yaml and serves the local API.
//
// It owns the wiring and the decisions between the parts — which file version
// is applied, what a reload may change (config.Diff decides), what
// /v1/status says, when the process is ready — and the config metrics. The
// parts themselves live in config, watcher, etcd, cache and server. It tells
// systemd its state through Options.Notify (READY, RELOADING, STOPPING,
// STATUS; cmd/endpointd sends them, and the watchdog pings after SelfCheck)
// and does not speak HTTP itself: it serves through server and checks itself
// through client. It does not parse command lines or build loggers.
package agent

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"udp_iaasd/access"
	"udp_iaasd/api"
	"udp_iaasd/cache"
	"udp_iaasd/client"
	"udp_iaasd/config"
	"udp_iaasd/etcd"
	"udp_iaasd/grpcapi"
	"udp_iaasd/server"
	"udp_iaasd/watcher"
)

// Options configure New.
type Options struct {
	// Config is the validated config.yaml the agent starts with.
	Config *config.Config
	// ConfigPath is re-read on Reload; "" means the defaults were used and
	// a reload re-reads only the endpoints file.
	ConfigPath string
	Version    string
	Logger     *slog.Logger
	// LogLevel, when set, is the level a reload's log.level is applied to.
	LogLevel *slog.LevelVar
	// Listener, when set, is served instead of creating socket.path (socket
	// activation). The agent then never removes the socket file.
	Listener net.Listener
	// GRPCListener, when set, serves etcd's gRPC API (socket activation);
	// else socket.grpc_path, when set, is created.
	GRPCListener net.Listener
	// Notify, when set, receives sd_notify-style state lines ("READY=1",
	// "STATUS=…", "RELOADING=1", "STOPPING=1").
	Notify func(state string)
	// StatusProbeInterval overrides how old the members' probe may be
	// before /v1/status probes again (tests; default etcd's 30s).
	StatusProbeInterval time.Duration
}

// Agent is the running process. Build it with New and call Run once.
type Agent struct {
	opts    Options
	log     *slog.Logger
	etcd    *etcd.EtcdClient
	cache   *cache.Cache // nil without cache.prefixes
	gate    *access.Gate // the access decision both sockets ask
	srv     *server.Server
	reg     *prometheus.Registry
	metrics *metrics
	reloadc chan struct{}
	addr    atomic.Pointer[string]        // the socket being served, once Run listens
	self    atomic.Pointer[client.Client] // a client of that socket, for SelfCheck

	cfg   atomic.Pointer[config.Config] // swapped whole on reload
	state atomic.Pointer[fileState]     // what /v1/status says of the endpoints file

	// applyMu serializes applying file versions with config reloads, so a
	// reload's new minimum and a file read under the old one cannot cross.
	applyMu sync.Mutex
}

// fileState is the endpoints file as last applied and last read. It is
// replaced whole, never mutated.
type fileState struct {
	sha256      string
	appliedAt   time.Time
	reloads     uint64
	lastError   string
	lastErrorAt time.Time
}

// New builds the agent: an etcd client with no endpoints yet, and the server.
// It does not touch the socket or the endpoints file; Run does.
func New(opts Options) (*Agent, error) {
	if opts.Config == nil {
		return nil, errors.New("agent: no config")
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	cfg := opts.Config
	a := &Agent{opts: opts, log: opts.Logger, reg: prometheus.NewRegistry(), reloadc: make(chan struct{}, 1)}
	a.cfg.Store(cfg)
	a.state.Store(&fileState{})

	ecfg, err := EtcdConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	ecfg.Logger = a.log
	ecfg.StatusProbeInterval = cmp.Or(opts.StatusProbeInterval, ecfg.StatusProbeInterval)
	a.etcd, err = etcd.New(ecfg)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	a.etcd.SetRequestBudget(cfg.Etcd.MaxRequestsPerSecond)
	a.metrics = newMetrics(a.reg, a.etcd, opts.Version, a.cfg.Load)
	if len(cfg.Cache.Prefixes) > 0 {
		a.cache = cache.New(a.etcd, cache.Options{
			Prefixes:        cfg.Cache.Prefixes,
			MaxStaleness:    cfg.Cache.MaxStaleness,
			Dir:             cfg.Cache.Dir,
			PersistInterval: cfg.Cache.PersistInterval,
			Registerer:      a.reg,
			Logger:          a.log,
		})
	}
	settings, err := accessSettings(cfg)
	if err != nil {
		a.etcd.Close()
		return nil, fmt.Errorf("agent: %w", err)
	}
	a.gate = access.NewGate(settings, a.reg, a.log)
	a.srv = server.New(server.Options{
		Etcd:              a.etcd,
		Cache:             a.cache,
		Limits:            serverLimits(cfg),
		Gate:              a.gate,
		Status:            a.Status,
		Registry:          a.reg,
		Logger:            a.log,
		MaxHeaderBytes:    cfg.Limits.MaxHeaderBytes,
		ReadHeaderTimeout: cfg.Limits.ReadHeaderTimeout,
		IdleTimeout:       cfg.Limits.IdleTimeout,
		MaxConnections:    cfg.Limits.MaxConnections,
		ShutdownTimeout:   cfg.Limits.ShutdownTimeout,
	})
	return a, nil
}

// serverLimits is what the server takes live from cfg.
func serverLimits(cfg *config.Config) server.Limits {
	return server.Limits{
		MaxKeyBytes:   cfg.Limits.MaxKeyBytes,
		MaxValueBytes: cfg.Limits.MaxValueBytes,
		MaxTxnBytes:   cfg.Limits.MaxTxnBytes,
		MaxWatches:    cfg.Limits.MaxWatches,
		StaleIfError:  cfg.Cache.StaleIfError,
	}
}

// accessSettings is what the access gate takes live from cfg. The access
// rules' user and group names are resolved here, at start and on every
// reload.
func accessSettings(cfg *config.Config) (access.Settings, error) {
	policy, err := cfg.AccessPolicy()
	if err != nil {
		return access.Settings{}, err
	}
	return access.Settings{
		AllowedUIDs: cfg.Socket.AllowedUIDs,
		AllowedGIDs: cfg.Socket.AllowedGIDs,
		Policy:      policy,
		Audit:       cfg.Log.Audit,
	}, nil
}

// Etcd returns the agent's etcd client.
func (a *Agent) Etcd() *etcd.EtcdClient { return a.etcd }

// Reload asks Run to re-read config.yaml and the endpoints file (SIGHUP). It
// never blocks.
func (a *Agent) Reload() {
	select {
	case a.reloadc <- struct{}{}:
	default:
	}
}

func (a *Agent) notify(state string) {
	if a.opts.Notify != nil {
		a.opts.Notify(state)
	}
}

// Run serves until ctx ends, then shuts down: it stops accepting, ends watch
// streams, lets in-flight requests finish, and removes the socket it
// created. It returns an error only if it could not start or the server
// failed. The etcd client is New's, and Close's to close.
//
// What it runs are components started in order and stopped in reverse: the
// endpoints file's watcher (so the file is read before the sockets are
// served), the read cache, then both sockets.
func (a *Agent) Run(ctx context.Context) error {
	cfg := a.cfg.Load()
	ln, err := a.listen(cfg)
	if err != nil {
		return err
	}
	gln, err := a.listenGRPC(cfg)
	if err != nil {
		ln.Close()
		return err
	}
	var mln net.Listener
	if cfg.Metrics.Listen != "" {
		if mln, err = net.Listen("tcp", cfg.Metrics.Listen); err != nil {
			ln.Close()
			if gln != nil {
				gln.Close()
			}
			return fmt.Errorf("agent: metrics.listen: %w", err)
		}
		a.log.Info("serving /metrics over TCP", "addr", mln.Addr().String())
	}
	addr := ln.Addr().String()
	a.addr.Store(&addr)
	a.self.Store(client.New(addr, client.Options{RetryMax: -1}))

	run := components{log: a.log}
	watcher := a.watcherFor(cfg)
	run.start("the endpoints file's watcher", watcher.run)
	// On a socket systemd passed (a restart or an upgrade under socket
	// activation) the agent waits, up to etcd.request_timeout, until it
	// can answer — a set applied and etcd reached: clients that connect
	// meanwhile queue in the socket's backlog instead of getting 503 for a
	// restart.
	if a.opts.Listener != nil {
		wctx, cancel := context.WithTimeout(ctx, cfg.Etcd.RequestTimeout)
		if err := a.WaitReady(wctx); err != nil && ctx.Err() == nil {
			a.log.Warn("serving the passed socket before etcd is reachable", "waited", cfg.Etcd.RequestTimeout)
		}
		cancel()
	}
	if a.cache != nil {
		// The persisted copies are in place before a socket answers.
		a.cache.Load()
		run.start("the read cache", func(ctx context.Context) error { a.cache.Run(ctx); return nil })
	}
	sockets := run.start("the sockets", func(ctx context.Context) error { return a.serve(ctx, ln, gln) })
	if mln != nil {
		run.start("the metrics listener", func(ctx context.Context) error { return a.serveMetrics(ctx, mln) })
	}
	a.notify("READY=1")
	a.notify("STATUS=" + a.statusLine())

	var runErr error
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-a.reloadc:
			// MONOTONIC_USEC lets Type=notify-reload (systemd 253+) match
			// this reload to the signal that asked for it.
			a.notify("RELOADING=1\n" + daemon.SdNotifyMonotonicUsec())
			if a.reloadConfig() {
				watcher = a.watcherFor(a.cfg.Load())
				run.replace("the endpoints file's watcher", watcher.run)
			} else {
				watcher.Reread()
			}
			a.notify("READY=1")
			a.notify("STATUS=" + a.statusLine())
		case <-sockets.done:
			runErr, sockets.err = sockets.err, nil // returned, not logged again
			break loop
		}
	}

	a.notify("STOPPING=1")
	a.log.Info("shutting down")
	run.stopAll()
	a.log.Info("stopped")
	return runErr
}

// Close releases what New built: the etcd client. Call it once Run has
// returned (or instead of Run).
func (a *Agent) Close() error { return a.etcd.Close() }

// WaitReady waits until the agent can answer (Status().Ready: a set
// applied and etcd reached) or ctx ends. It waits on the etcd client's
// connection changes, not on a timer.
func (a *Agent) WaitReady(ctx context.Context) error {
	for {
		changed := a.etcd.ConnectionChanged() // before the check: no change is missed
		if a.Status().Ready {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// listen returns the HTTP socket: the one systemd passed, or socket.path,
// created now.
func (a *Agent) listen(cfg *config.Config) (net.Listener, error) {
	if ln := a.opts.Listener; ln != nil {
		a.log.Info("listening on the socket systemd passed", "addr", ln.Addr().String())
		return ln, nil
	}
	gid, err := cfg.Socket.GID()
	if err != nil {
		return nil, err
	}
	ln, err := server.Listen(cfg.Socket.Path, fs.FileMode(cfg.Socket.Mode), gid)
	if err != nil {
		return nil, err
	}
	a.log.Info("listening", "socket", cfg.Socket.Path, "mode", fmt.Sprintf("%04o", cfg.Socket.Mode), "group", cfg.Socket.Group)
	return ln, nil
}

// listenGRPC returns the gRPC socket: the one systemd passed, or
// socket.grpc_path, created now; nil when there is neither.
func (a *Agent) listenGRPC(cfg *config.Config) (net.Listener, error) {
	if ln := a.opts.GRPCListener; ln != nil {
		a.log.Info("serving etcd's gRPC API on the socket systemd passed", "addr", ln.Addr().String())
		return ln, nil
	}
	if cfg.Socket.GRPCPath == "" {
		return nil, nil
	}
	gid, err := cfg.Socket.GID()
	if err != nil {
		return nil, err
	}
	ln, err := server.Listen(cfg.Socket.GRPCPath, fs.FileMode(cfg.Socket.Mode), gid)
	if err != nil {
		return nil, err
	}
	a.log.Info("serving etcd's gRPC API", "socket", cfg.Socket.GRPCPath)
	return ln, nil
}

// serveMetrics serves GET /metrics, and nothing else, on ln until ctx ends
// (metrics.listen): Prometheus cannot scrape a unix socket. No access rules
// apply there: the address is the operator's to keep on loopback or a
// management network.
func (a *Agent) serveMetrics(ctx context.Context, ln net.Listener) error {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("agent: metrics listener: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	srv.Shutdown(sctx)
	<-errc
	return nil
}

// serve serves the HTTP socket, and the gRPC one when gln is set, until ctx
// ends; both drain at once. The first error ends both.
func (a *Agent) serve(ctx context.Context, ln, gln net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 2)
	go func() { errc <- a.srv.Serve(ctx, ln) }()
	n := 1
	if gln != nil {
		g := grpcapi.New(grpcapi.Options{Etcd: a.etcd, Cache: a.cache, Gate: a.gate, Logger: a.log, Registry: a.reg,
			ShutdownTimeout: a.cfg.Load().Limits.ShutdownTimeout})
		go func() { errc <- g.Serve(ctx, gln) }()
		n++
	}
	var first error
	for range n {
		if err := <-errc; err != nil && first == nil {
			first = err
			cancel()
		}
	}
	return first
}

// SelfCheck asks the agent's own socket for /healthz through the Go client,
// end to end through accept, HTTP parsing and the handler: what a watchdog
// ping should vouch for. It does not retry: the watchdog wants this
// moment's answer.
func (a *Agent) SelfCheck(ctx context.Context) error {
	c := a.self.Load()
	if c == nil {
		return errors.New("agent: not listening yet")
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	err := c.Healthz(ctx)
	// 403 (our own uid not in socket.allowed_uids) still proves the request
	// path works.
	if err != nil && !errors.Is(err, client.ErrForbidden) {
		return fmt.Errorf("agent: self-check: %w", err)
	}
	return nil
}

// watcherFor is the endpoints file's watcher as cfg configures it; its Run
// is a component of Run.
func (a *Agent) watcherFor(cfg *config.Config) *fileWatcher {
	w := watcher.New(cfg.EndpointsFile, a.apply)
	w.Read = config.ReadFile
	w.Debounce = cfg.Watch.Debounce
	w.ResyncInterval = cfg.Watch.ResyncInterval
	w.Logger = a.log
	return &fileWatcher{w}
}

// fileWatcher is the watcher a component runs.
type fileWatcher struct{ *watcher.Watcher }

func (w *fileWatcher) run(ctx context.Context) error { return w.Run(ctx) }

// apply handles one version of the endpoints file: validate, apply, record.
// It runs on the watcher's goroutine.
func (a *Agent) apply(u watcher.Update) {
	a.applyMu.Lock()
	defer a.applyMu.Unlock()
	cfg := a.cfg.Load()
	if u.Err != nil {
		msg := u.Err.Error()
		if errors.Is(u.Err, fs.ErrNotExist) {
			msg = cfg.EndpointsFile + ": file is missing"
		}
		a.reject("", msg)
		return
	}
	eps, err := config.ParseEndpoints(cfg.EndpointsFile, u.Data, cfg.Etcd.TLS.Enabled(), cfg.MinClusterSize)
	if err == nil {
		err = a.etcd.ApplyEndpoints(eps.List)
	}
	if err != nil {
		a.reject(u.Sum, err.Error())
		return
	}
	prev := a.state.Load()
	now := time.Now()
	a.state.Store(&fileState{sha256: u.Sum, appliedAt: now, reloads: prev.reloads + 1})
	a.metrics.reloaded(true, now)
	a.log.Info("endpoints applied", "file", cfg.EndpointsFile, "sha256", u.Sum, "endpoints", strings.Join(eps.Strings(), ","))
	a.notify("STATUS=" + a.statusLine())
}

// reject records a file version that was not applied; the applied set, if
// any, stays. The log says which: a fresh install has none yet.
func (a *Agent) reject(sum, msg string) {
	prev := a.state.Load()
	next := *prev
	next.lastError, next.lastErrorAt = msg, time.Now()
	a.state.Store(&next)
	a.metrics.reloaded(false, next.lastErrorAt)
	if prev.appliedAt.IsZero() {
		a.log.Error("endpoints file not applied; no endpoints are applied yet, so requests get 503 until a valid file is written",
			"sha256", sum, "error", msg)
	} else {
		a.log.Error("endpoints file rejected; keeping the applied endpoints", "sha256", sum, "error", msg)
	}
	a.notify("STATUS=" + a.statusLine())
}

// reloadConfig re-reads config.yaml and applies what can change live. It
// reports whether the watcher must be restarted (its file or pacing changed).
// A bad file is rejected and the running config kept.
func (a *Agent) reloadConfig() (restartWatcher bool) {
	a.applyMu.Lock()
	defer a.applyMu.Unlock()
	old := a.cfg.Load()
	if a.opts.ConfigPath == "" {
		a.log.Info("reload: re-reading the endpoints file (no config file; defaults in use)")
		return false
	}
	next, err := config.Load(a.opts.ConfigPath)
	var ecfg etcd.Config
	if err == nil {
		ecfg, err = EtcdConfig(next)
	}
	var settings access.Settings
	if err == nil {
		settings, err = accessSettings(next)
	}
	if err != nil {
		a.log.Error("reload: config rejected; keeping the running config", "file", a.opts.ConfigPath, "error", err)
		return false
	}
	live, waiting := config.Diff(old, next)
	for _, f := range waiting {
		a.log.Warn("reload: setting changed; it takes effect after a restart", "setting", f)
	}
	a.cfg.Store(live)
	a.etcd.SetRequestTimeout(live.Etcd.RequestTimeout)
	a.etcd.SetRequestBudget(live.Etcd.MaxRequestsPerSecond)
	// The password file is read again on every reload (a rotation); the
	// client is rebuilt only if the credentials changed.
	a.etcd.SetCredentials(live.Etcd.Username, ecfg.Password)
	// Every setting serverLimits and accessSettings read is live, so next's
	// and live's agree.
	a.srv.SetLimits(serverLimits(live))
	a.gate.Set(settings)
	if a.opts.LogLevel != nil {
		a.opts.LogLevel.Set(ParseLevel(live.Log.Level))
	}
	a.log.Info("reload: config applied", "file", a.opts.ConfigPath)
	return live.EndpointsFile != old.EndpointsFile || live.Watch != old.Watch
}

// Status reports the agent's state (/v1/status).
func (a *Agent) Status() api.Status {
	cfg := a.cfg.Load()
	st := a.state.Load()
	h := a.etcd.Health()
	eps := a.etcd.Endpoints()
	if eps == nil {
		eps = []string{}
	}
	members := make([]api.MemberStatus, len(h.Members))
	for i, m := range h.Members {
		members[i] = api.MemberStatus{Endpoint: m.Endpoint, Healthy: m.Healthy, LatencyMS: m.LatencyMS, Error: m.Error}
	}
	return api.Status{
		Version:   a.opts.Version,
		Ready:     len(eps) > 0 && h.Connected,
		Endpoints: eps,
		Config: api.ConfigStatus{
			EndpointsFile: cfg.EndpointsFile,
			SHA256:        st.sha256,
			AppliedAt:     rfc3339(st.appliedAt),
			Reloads:       st.reloads,
			LastError:     st.lastError,
			LastErrorAt:   rfc3339(st.lastErrorAt),
		},
		Etcd: api.EtcdStatus{
			Connected:  h.Connected,
			ClusterID:  h.ClusterID,
			Leader:     h.Leader,
			Reconnects: h.Reconnects,
			LastError:  h.LastError,
			CheckedAt:  rfc3339(h.CheckedAt),
			Members:    members,
		},
		Cache: cacheStatus(a.cache),
	}
}

// cacheStatus is /v1/status's view of the cached prefixes.
func cacheStatus(c *cache.Cache) []api.CacheStatus {
	var out []api.CacheStatus
	for _, p := range c.Status() {
		out = append(out, api.CacheStatus{Prefix: p.Prefix, Present: p.Present, Revision: p.Revision, Keys: p.Keys,
			AgeSeconds: math.Round(p.Age.Seconds()*1000) / 1000, Confirmed: p.Confirmed,
			PersistedRevision: p.PersistedRevision, PersistedAt: rfc3339(p.PersistedAt)})
	}
	return out
}

// statusLine is a one-line summary for systemd's STATUS=.
func (a *Agent) statusLine() string {
	st := a.Status()
	switch {
	case st.Ready:
		return fmt.Sprintf("serving; %d endpoints applied, etcd connected", len(st.Endpoints))
	default:
		return "waiting: " + st.NotReadyReason()
	}
}

func rfc3339(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339Nano)
}

// ParseLevel maps log.level to a slog level.
func ParseLevel(s string) slog.Level {
	switch s {
	case "debug":
		return slog.LevelDebug
	case "warn":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	}
	return slog.LevelInfo
}

// metrics are the agent's share of API.md's metrics.
type metrics struct {
	reloads       *prometheus.CounterVec
	lastOK        prometheus.Gauge
	lastSuccessTS prometheus.Gauge
}

func newMetrics(reg *prometheus.Registry, ec *etcd.EtcdClient, version string, cfg func() *config.Config) *metrics {
	m := &metrics{
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "endpointd_config_reloads_total",
			Help: "Endpoints file versions read, by result: success (applied) or failure (rejected).",
		}, []string{"result"}),
		lastOK: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "endpointd_config_last_reload_successful",
			Help: "1 if the last endpoints file version read was applied, 0 if it was rejected.",
		}),
		lastSuccessTS: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "endpointd_config_last_reload_success_timestamp_seconds",
			Help: "When an endpoints file was last applied, in Unix seconds.",
		}),
	}
	m.reloads.WithLabelValues("success")
	m.reloads.WithLabelValues("failure")
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "endpointd_build_info",
		Help: "Always 1; the version label says which endpointd runs.",
	}, []string{"version"})
	build.WithLabelValues(version).Set(1)
	reg.MustRegister(m.reloads, m.lastOK, m.lastSuccessTS, build,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "endpointd_min_cluster_size",
			Help: "min_cluster_size in force: the fewest endpoints a file may list.",
		}, func() float64 { return float64(cfg().MinClusterSize) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "endpointd_watchers_limit",
			Help: "limits.max_watches in force: open watch streams beyond it get 503.",
		}, func() float64 { return float64(cfg().Limits.MaxWatches) }),
		ec.Collector(),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}

func (m *metrics) reloaded(ok bool, at time.Time) {
	if ok {
		m.reloads.WithLabelValues("success").Inc()
		m.lastOK.Set(1)
		m.lastSuccessTS.Set(float64(at.UnixNano()) / 1e9)
		return
	}
	m.reloads.WithLabelValues("failure").Inc()
	m.lastOK.Set(0)
}
