package reliability

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"udp_iaasd/agent"
	"udp_iaasd/client"
	"udp_iaasd/config"
	"udp_iaasd/internal/agenttest"
	"udp_iaasd/internal/etcdtest"
)

func TestMain(m *testing.M) {
	etcdtest.RunMemberIfRequested()
	os.Exit(m.Run())
}

// requestTimeout is etcd.request_timeout in these runs, as in the issue's
// independent fault run.
const requestTimeout = 2 * time.Second

// agentRun is an endpointd agent in front of a process cluster.
type agentRun struct {
	t       *testing.T
	sock    string
	epsPath string
	agent   *agent.Agent
}

func startAgent(t *testing.T, cluster *etcdtest.ProcCluster) *agentRun {
	t.Helper()
	dir := t.TempDir()
	r := &agentRun{t: t, sock: filepath.Join(dir, "endpointd.sock"), epsPath: filepath.Join(dir, "endpoints.yaml")}
	r.writeEndpoints(cluster.Endpoints())
	cfgPath := filepath.Join(dir, "config.yaml")
	os.WriteFile(cfgPath, []byte(fmt.Sprintf(`endpoints_file: endpoints.yaml
min_cluster_size: 2
socket: {path: %s}
etcd: {request_timeout: %s, dial_timeout: 2s}
backoff: {initial: 50ms, max: 1s}
watch: {debounce: 50ms}
limits: {max_watches: 64}
`, r.sock, requestTimeout)), 0o644)
	cfg, err := config.Load(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	level := new(slog.LevelVar)
	level.Set(slog.LevelWarn)
	r.agent, err = agent.New(agent.Options{Config: cfg, Version: "reliability", StatusProbeInterval: time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.agent.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent: %v", err)
		}
	})
	etcdtest.Eventually(t, 20*time.Second, "the agent to be ready", func() bool { return r.agent.Status().Ready })
	return r
}

func (r *agentRun) writeEndpoints(eps []string) { agenttest.WriteEndpoints(r.t, r.epsPath, eps...) }

// client returns a client that does not retry: every failure is seen.
func (r *agentRun) client() *client.Client {
	return client.New(r.sock, client.Options{RetryMax: -1, Timeout: 3 * requestTimeout})
}
