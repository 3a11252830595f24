package reliability

import (
	"log/slog"
	"os"
	"testing"
	"time"

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

// startAgent runs an agent in front of a process cluster, with
// etcd.request_timeout requestTimeout, and waits until it is ready. Its
// Client does not retry: every failure is seen.
func startAgent(t *testing.T, cluster *etcdtest.ProcCluster) *agenttest.Agent {
	t.Helper()
	a := agenttest.Start(t, agenttest.Options{Endpoints: cluster.Endpoints(), RequestTimeout: requestTimeout,
		Extra: "limits: {max_watches: 64}\n", LogLevel: slog.LevelWarn})
	etcdtest.Eventually(t, 20*time.Second, "the agent to be ready", func() bool { return a.Agent.Status().Ready })
	return a
}
