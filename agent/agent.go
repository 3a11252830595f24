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
	"net"
	"os/user"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

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

	tlsCfg, err := cfg.TLSConfig()
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	password, err := cfg.Password()
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	a.etcd, err = etcd.New(etcd.Config{
		DialTimeout:         cfg.Etcd.DialTimeout,
		RequestTimeout:      cfg.Etcd.RequestTimeout,
		KeepAliveTime:       cfg.Etcd.KeepaliveTime,
		KeepAliveTimeout:    cfg.Etcd.KeepaliveTimeout,
		ProbeTimeout:        cfg.Etcd.ProbeTimeout,
		SuspectAfter:        cfg.Etcd.SuspectAfter,
		ConnectSpread:       cfg.Etcd.ConnectSpread,
		RebalanceSpread:     cfg.Etcd.RebalanceSpread,
		TLS:                 tlsCfg,
		Username:            cfg.Etcd.Username,
		Password:            password,
		Backoff:             cfg.Backoff,
		StatusProbeInterval: cmp.Or(opts.StatusProbeInterval, cfg.Etcd.StatusProbeInterval),
		Logger:              a.log,
	})
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	a.metrics = newMetrics(a.reg, a.etcd, opts.Version, a.cfg.Load)
	if len(cfg.Cache.Prefixes) > 0 {
		a.cache = cache.New(a.etcd, cfg.Cache.Prefixes, cfg.Cache.MaxStaleness, a.log)
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
		MaxKeyBytes:    cfg.Limits.MaxKeyBytes,
		MaxValueBytes:  cfg.Limits.MaxValueBytes,
		MaxTxnBytes:    cfg.Limits.MaxTxnBytes,
		MaxWatches:     cfg.Limits.MaxWatches,
		RequestTimeout: cfg.Etcd.RequestTimeout,
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
// streams, lets in-flight requests finish, closes the etcd client and removes
// the socket it created. It returns an error only if it could not start or
// the server failed.
func (a *Agent) Run(ctx context.Context) error {
	cfg := a.cfg.Load()
	ln := a.opts.Listener
	if ln == nil {
		gid, err := ResolveGroup(cfg.Socket.Group)
		if err != nil {
			a.etcd.Close()
			return err
		}
		ul, err := server.Listen(cfg.Socket.Path, fs.FileMode(cfg.Socket.Mode), gid)
		if err != nil {
			a.etcd.Close()
			return err
		}
		ln = ul
		a.log.Info("listening", "socket", cfg.Socket.Path, "mode", fmt.Sprintf("%04o", cfg.Socket.Mode), "group", cfg.Socket.Group)
	} else {
		a.log.Info("listening on the socket systemd passed", "addr", ln.Addr().String())
	}

	addr := ln.Addr().String()
	a.addr.Store(&addr)
	a.self.Store(client.New(addr, client.Options{RetryMax: -1}))

	// The endpoints file is read before the socket is served. On a socket
	// systemd passed (a restart or an upgrade under socket activation) the
	// agent also waits, up to etcd.request_timeout, until it can answer —
	// a set applied and etcd reached: clients that connect meanwhile queue
	// in the socket's backlog instead of getting 503 for a restart.
	w := a.startWatcher(cfg)
	if a.opts.Listener != nil {
		a.awaitReady(ctx, cfg.Etcd.RequestTimeout)
	}
	srvCtx, stopSrv := context.WithCancel(context.Background())
	srvDone := make(chan error, 1)
	go func() { srvDone <- a.srv.Serve(srvCtx, ln) }()
	grpcDone, err := a.serveGRPC(srvCtx, cfg)
	if err != nil {
		w.stop()
		stopSrv()
		<-srvDone
		a.etcd.Close()
		return err
	}

	cacheCtx, stopCache := context.WithCancel(context.Background())
	cacheDone := make(chan struct{})
	go func() {
		defer close(cacheDone)
		if a.cache != nil {
			a.cache.Run(cacheCtx)
		}
	}()
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
				w.stop()
				w = a.startWatcher(a.cfg.Load())
			} else {
				w.w.Reread()
			}
			a.notify("READY=1")
			a.notify("STATUS=" + a.statusLine())
		case err := <-srvDone:
			runErr = err
			srvDone = nil
			break loop
		}
	}

	a.notify("STOPPING=1")
	a.log.Info("shutting down")
	w.stop()
	stopSrv()
	if err := <-grpcDone; err != nil {
		a.log.Warn("gRPC socket shutdown", "error", err)
	}
	if srvDone != nil {
		if err := <-srvDone; err != nil {
			a.log.Warn("server shutdown", "error", err)
		}
	}
	stopCache()
	<-cacheDone
	a.etcd.Close()
	a.log.Info("stopped")
	return runErr
}

// awaitReady waits until the agent can answer (Status().Ready), ctx ends,
// or max has passed. It polls: it runs once, at start.
func (a *Agent) awaitReady(ctx context.Context, max time.Duration) {
	deadline := time.Now().Add(max)
	for !a.Status().Ready && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond)
	}
	if !a.Status().Ready {
		a.log.Warn("serving the passed socket before etcd is reachable", "waited", max)
	}
}

// serveGRPC serves etcd's gRPC API on the activated listener or
// socket.grpc_path, when either is there, until ctx ends; the channel gets
// Serve's result (nil at once when there is no gRPC socket).
func (a *Agent) serveGRPC(ctx context.Context, cfg *config.Config) (<-chan error, error) {
	done := make(chan error, 1)
	ln := a.opts.GRPCListener
	if ln == nil && cfg.Socket.GRPCPath != "" {
		gid, err := ResolveGroup(cfg.Socket.Group)
		if err != nil {
			return nil, err
		}
		ul, err := server.Listen(cfg.Socket.GRPCPath, fs.FileMode(cfg.Socket.Mode), gid)
		if err != nil {
			return nil, err
		}
		ln = ul
		a.log.Info("serving etcd's gRPC API", "socket", cfg.Socket.GRPCPath)
	}
	if ln == nil {
		done <- nil
		return done, nil
	}
	if a.opts.GRPCListener != nil {
		a.log.Info("serving etcd's gRPC API on the socket systemd passed", "addr", ln.Addr().String())
	}
	g := grpcapi.New(grpcapi.Options{Etcd: a.etcd, Cache: a.cache, Gate: a.gate, Logger: a.log, ShutdownTimeout: cfg.Limits.ShutdownTimeout})
	go func() { done <- g.Serve(ctx, ln) }()
	return done, nil
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

// runningWatcher is a watcher goroutine with its stop function.
type runningWatcher struct {
	w      *watcher.Watcher
	cancel context.CancelFunc
	done   chan struct{}
}

func (r *runningWatcher) stop() {
	r.cancel()
	<-r.done
}

func (a *Agent) startWatcher(cfg *config.Config) *runningWatcher {
	w := watcher.New(cfg.EndpointsFile, a.apply)
	w.Read = config.ReadFile
	w.Debounce = cfg.Watch.Debounce
	w.ResyncInterval = cfg.Watch.ResyncInterval
	w.Logger = a.log
	ctx, cancel := context.WithCancel(context.Background())
	r := &runningWatcher{w: w, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		w.Run(ctx)
	}()
	return r
}

// apply handles one version of the endpoints file: validate, apply, record.
// It runs on the watcher's goroutine.
func (a *Agent) apply(u watcher.Update) {
	a.applyMu.Lock()
	defer a.applyMu.Unlock()
	cfg := a.cfg.Load()
	if u.Err != nil {
		msg := u.Err.Error()
		if errors.Is(u.Err, fs.ErrNotExist) {
			msg = cfg.EndpointsFile + ": file is missing; the applied endpoints stay in force"
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

// reject records a file version that was not applied; the applied set stays.
func (a *Agent) reject(sum, msg string) {
	prev := a.state.Load()
	next := *prev
	next.lastError, next.lastErrorAt = msg, time.Now()
	a.state.Store(&next)
	a.metrics.reloaded(false, next.lastErrorAt)
	a.log.Error("endpoints file rejected; keeping the applied endpoints", "sha256", sum, "error", msg)
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
	if err == nil {
		_, err = next.TLSConfig()
	}
	var password string
	if err == nil {
		password, err = next.Password()
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
	// The password file is read again on every reload (a rotation); the
	// client is rebuilt only if the credentials changed.
	a.etcd.SetCredentials(live.Etcd.Username, password)
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
	}
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

// ResolveGroup turns socket.group into a gid: "" is -1 (keep the process's
// group), a number is a gid, anything else a group name.
func ResolveGroup(group string) (int, error) {
	if group == "" {
		return -1, nil
	}
	if gid, err := strconv.Atoi(group); err == nil {
		return gid, nil
	}
	g, err := user.LookupGroup(group)
	if err != nil {
		return 0, fmt.Errorf("socket.group: %w", err)
	}
	gid, err := strconv.Atoi(g.Gid)
	if err != nil {
		return 0, fmt.Errorf("socket.group %q: gid %q is not a number", group, g.Gid)
	}
	return gid, nil
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
			Name: "endpointd_endpoints",
			Help: "Endpoints in the applied set.",
		}, func() float64 { return float64(len(ec.Endpoints())) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "endpointd_min_cluster_size",
			Help: "min_cluster_size in force: the fewest endpoints a file may list.",
		}, func() float64 { return float64(cfg().MinClusterSize) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "endpointd_watchers_limit",
			Help: "limits.max_watches in force: open watch streams beyond it get 503.",
		}, func() float64 { return float64(cfg().Limits.MaxWatches) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "endpointd_etcd_up",
			Help: "1 if at least one etcd member answered the latest health probe.",
		}, func() float64 {
			if ec.Health().Connected {
				return 1
			}
			return 0
		}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "endpointd_etcd_reconnects_total",
			Help: "Times the connection to etcd was re-established after every member was unreachable.",
		}, func() float64 { return float64(ec.Health().Reconnects) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "endpointd_etcd_read_batches_total",
			Help: "Read-only transactions that carried two or more concurrent linearizable reads.",
		}, func() float64 { return float64(ec.ReadStats().Batches) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "endpointd_etcd_batched_reads_total",
			Help: "Linearizable reads sent to etcd inside a batch rather than alone.",
		}, func() float64 { return float64(ec.ReadStats().Reads) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "endpointd_etcd_write_batches_total",
			Help: "Transactions that carried two or more concurrent plain puts.",
		}, func() float64 { return float64(ec.WriteStats().Batches) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "endpointd_etcd_batched_writes_total",
			Help: "Plain puts sent to etcd inside a batch rather than alone.",
		}, func() float64 { return float64(ec.WriteStats().Puts) }),
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
