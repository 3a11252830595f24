package agenttest

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"udp_iaasd/agent"
	"udp_iaasd/api"
	"udp_iaasd/client"
	"udp_iaasd/config"
	"udp_iaasd/internal/etcdtest"
	"udp_iaasd/internal/syncbuf"
)

// Options shape an agent for a test. The config is the kit's — min_cluster_size
// 2, quick timings — plus what the fields add.
type Options struct {
	// Endpoints is the endpoints file the agent starts with; nil: none yet.
	Endpoints []string
	// RequestTimeout is etcd.request_timeout; default 2s.
	RequestTimeout time.Duration
	// EtcdExtra adds keys to config.yaml's etcd section, e.g.
	// "tls: {ca_file: /x}".
	EtcdExtra string
	// Extra adds top-level config.yaml lines (not endpoints_file,
	// min_cluster_size, socket, etcd, backoff or watch: the kit sets those).
	Extra string
	// LogLevel is what reaches the test's log (Logs gets everything);
	// default info.
	LogLevel slog.Level
	// GRPC serves etcd's gRPC API on GRPCSock too.
	GRPC bool
}

// Agent is an agent running in-process for a test, on real files and a
// real socket in a directory of the test's own, in front of a real cluster.
// It stops when the test ends.
type Agent struct {
	Agent   *agent.Agent
	Dir     string
	CfgPath string
	EpsPath string
	Sock    string
	// GRPCSock is the gRPC socket's path (Options.GRPC).
	GRPCSock string
	// Client asks the socket without retrying, so every failure is seen.
	Client *client.Client
	// HTTP is a plain HTTP client of the socket.
	HTTP *http.Client
	// Logs holds everything the agent logged.
	Logs *syncbuf.Buffer

	t      testing.TB
	cancel context.CancelFunc
	done   chan error

	mu    sync.Mutex // guards notes
	notes []string   // what the agent told systemd
}

// Start writes config.yaml and, unless o.Endpoints is nil, the endpoints
// file, runs the agent, and returns once its socket answers.
func Start(t testing.TB, o Options) *Agent {
	t.Helper()
	if o.RequestTimeout <= 0 {
		o.RequestTimeout = 2 * time.Second
	}
	dir := t.TempDir()
	a := &Agent{t: t, Dir: dir, CfgPath: filepath.Join(dir, "config.yaml"),
		EpsPath: filepath.Join(dir, "etc", "endpoints.yaml"), Sock: filepath.Join(dir, "run", "endpointd.sock"),
		Logs: &syncbuf.Buffer{}}
	if err := os.MkdirAll(filepath.Dir(a.EpsPath), 0o755); err != nil {
		t.Fatal(err)
	}
	etcdExtra := ""
	if o.EtcdExtra != "" {
		etcdExtra = ", " + o.EtcdExtra
	}
	grpcPath := ""
	if o.GRPC {
		a.GRPCSock = filepath.Join(dir, "run", "etcd.sock")
		grpcPath = ", grpc_path: " + a.GRPCSock
	}
	cfgYAML := fmt.Sprintf(`endpoints_file: %s
min_cluster_size: 2
socket: {path: %s%s}
etcd: {request_timeout: %s, dial_timeout: 2s%s}
backoff: {initial: 50ms, max: 1s}
watch: {debounce: 50ms, resync_interval: 1s}
%s`, a.EpsPath, a.Sock, grpcPath, o.RequestTimeout, etcdExtra, o.Extra)
	if err := os.WriteFile(a.CfgPath, []byte(cfgYAML), 0o644); err != nil {
		t.Fatal(err)
	}
	if o.Endpoints != nil {
		a.Write(string(config.EndpointsYAML(o.Endpoints)))
	}
	cfg, err := config.Load(a.CfgPath)
	if err != nil {
		t.Fatal(err)
	}
	testLog := slog.NewTextHandler(etcdtest.LogWriter(t), &slog.HandlerOptions{Level: o.LogLevel})
	all := slog.NewTextHandler(a.Logs, &slog.HandlerOptions{Level: slog.LevelDebug})
	a.Agent, err = agent.New(agent.Options{Config: cfg, ConfigPath: a.CfgPath, Version: "test", Notify: a.note,
		StatusProbeInterval: time.Millisecond, Logger: slog.New(teeHandler{testLog, all})})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	a.cancel, a.done = cancel, make(chan error, 1)
	go func() {
		err := a.Agent.Run(ctx)
		a.Agent.Close()
		a.done <- err
	}()
	t.Cleanup(a.Stop)
	a.Client = client.New(a.Sock, client.Options{RetryMax: -1, Timeout: 3 * o.RequestTimeout})
	a.HTTP = &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", a.Sock)
	}}}
	// Wait for an answer, not for the file: the socket exists from bind(),
	// a moment before listen(), when a connect is refused.
	a.Eventually("the socket serves", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, _, err := a.Client.Status(ctx)
		return err == nil
	})
	return a
}

// Stop stops the agent (at the test's end, or earlier) and fails the test
// if Run returned an error.
func (a *Agent) Stop() {
	if a.cancel == nil {
		return
	}
	a.cancel()
	a.cancel = nil
	if err := <-a.done; err != nil {
		a.t.Errorf("agent Run: %v", err)
	}
}

func (a *Agent) note(s string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.notes = append(a.notes, s)
}

// Notes returns what the agent has told systemd (READY=1, STATUS=…).
func (a *Agent) Notes() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.notes)
}

// Write writes the endpoints file in place (truncate and write).
func (a *Agent) Write(data string) {
	a.t.Helper()
	if err := os.WriteFile(a.EpsPath, []byte(data), 0o644); err != nil {
		a.t.Fatal(err)
	}
}

// Status is the agent's /v1/status, through the socket.
func (a *Agent) Status() *api.Status {
	a.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, _, err := a.Client.Status(ctx)
	if err != nil {
		a.t.Fatal(err)
	}
	return st
}

// Get sends GET path to the socket and returns the status code and body.
func (a *Agent) Get(path string) (int, string) {
	a.t.Helper()
	resp, err := a.HTTP.Get("http://localhost" + path)
	if err != nil {
		a.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// Eventually polls cond (etcdtest.Eventually, 15s) and returns how long it
// took, for logs; the bound is for a broken agent, not a speed claim.
func (a *Agent) Eventually(what string, cond func() bool) time.Duration {
	a.t.Helper()
	start := time.Now()
	etcdtest.Eventually(a.t, 15*time.Second, what, cond)
	return time.Since(start)
}

// teeHandler sends each record to two handlers, each with its own level.
type teeHandler [2]slog.Handler

func (h teeHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h[0].Enabled(ctx, l) || h[1].Enabled(ctx, l)
}

func (h teeHandler) Handle(ctx context.Context, r slog.Record) error {
	for _, x := range h {
		if x.Enabled(ctx, r.Level) {
			if err := x.Handle(ctx, r.Clone()); err != nil {
				return err
			}
		}
	}
	return nil
}

func (h teeHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return teeHandler{h[0].WithAttrs(attrs), h[1].WithAttrs(attrs)}
}

func (h teeHandler) WithGroup(name string) slog.Handler {
	return teeHandler{h[0].WithGroup(name), h[1].WithGroup(name)}
}
