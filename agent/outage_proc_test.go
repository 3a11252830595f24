package agent_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"udp_iaasd/client"
	"udp_iaasd/config"
	"udp_iaasd/internal/agentproc"
	"udp_iaasd/internal/etcdtest"
)

// agentChild names the config.yaml the test binary, run again, serves as
// a real agent process (agentproc.Main, what `endpointd run` runs).
const agentChild = "ENDPOINTD_TEST_AGENT_CONFIG"

func TestMain(m *testing.M) {
	etcdtest.RunMemberIfRequested()
	if cfg := os.Getenv(agentChild); cfg != "" {
		os.Exit(agentproc.Main(cfg, "test"))
	}
	os.Exit(m.Run())
}

// The outage drill with real processes, as the operator would meet it: a
// three-member cluster of member processes, the agent a process of its
// own with a cached prefix persisted. Every member is killed; stale reads
// answer from the copy; the agent is killed with SIGKILL inside the outage
// and started again, and answers stale reads from its persisted copy at
// once, with the copy's revision and true age; plain reads and writes are
// 503; when the members return the copy is confirmed by resuming its watch
// — the members' own /metrics count no Range from the agent — and a key
// changed after their return appears.
func TestAgentKilledInsideOutage(t *testing.T) {
	cluster := etcdtest.NewProc(t, 3)
	dir := t.TempDir()
	sock := filepath.Join(dir, "endpointd.sock")
	os.WriteFile(filepath.Join(dir, "endpoints.yaml"), config.EndpointsYAML(cluster.Endpoints()), 0o644)
	cfg := filepath.Join(dir, "config.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`endpoints_file: endpoints.yaml
socket: {path: %s}
etcd: {request_timeout: 2s}
cache: {prefixes: [cfg/], dir: %s, persist_interval: 100ms, max_staleness: 500ms}
`, sock, filepath.Join(dir, "cache"))), 0o644)
	start := func() *exec.Cmd {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), agentChild+"="+cfg)
		cmd.Stderr = etcdtest.LogWriter(t)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		return cmd
	}
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}}}
	get := func(path string) (int, http.Header, string) {
		resp, err := hc.Get("http://localhost" + path)
		if err != nil {
			return 0, nil, err.Error()
		}
		defer resp.Body.Close()
		var b [256]byte
		n, _ := resp.Body.Read(b[:])
		return resp.StatusCode, resp.Header, string(b[:n])
	}
	c := client.New(sock, client.Options{RetryMax: -1})
	ctx := context.Background()

	agent := start()
	etcdtest.Eventually(t, 30*time.Second, "the agent ready", func() bool {
		st, _, err := c.Status(ctx)
		return err == nil && st.Ready && len(st.Cache) == 1 && st.Cache[0].Confirmed
	})
	var rev int64
	for i := 1; i <= 3; i++ {
		r, err := c.Put(ctx, fmt.Sprintf("cfg/k%d", i), []byte(fmt.Sprint("v", i)))
		if err != nil {
			t.Fatal(err)
		}
		rev = r
	}
	etcdtest.Eventually(t, 10*time.Second, "the copy persisted at the last write", func() bool {
		st, _, err := c.Status(ctx)
		return err == nil && st.Cache[0].PersistedRevision >= rev
	})

	cluster.KillAll()
	etcdtest.Eventually(t, 10*time.Second, "stale reads from the copy", func() bool {
		code, h, body := get("/v1/kv/cfg/k1?stale")
		return code == 200 && body == "v1" && h.Get("X-Etcd-Revision") == strconv.FormatInt(rev, 10)
	})
	// 503 once the agent has seen every member go (a read sent just before
	// may wait for its timeout instead: 504).
	etcdtest.Eventually(t, 10*time.Second, "a plain read refused with 503", func() bool {
		code, _, _ := get("/v1/kv/cfg/k1")
		return code == 503
	})

	// SIGKILL: no clean stop, no last write.
	agent.Process.Signal(syscall.SIGKILL)
	agent.Wait()
	restarted := time.Now()
	start()
	var firstAnswer time.Duration
	etcdtest.Eventually(t, 10*time.Second, "a stale answer after the restart", func() bool {
		code, h, body := get("/v1/kv/cfg/k2?stale")
		if code == 200 && body == "v2" && h.Get("X-Etcd-Revision") == strconv.FormatInt(rev, 10) && h.Get("Age") != "" &&
			h.Get("X-Endpointd-Stale") == "true" {
			firstAnswer = time.Since(restarted)
			return true
		}
		return false
	})
	t.Logf("after kill -9 and a restart inside the outage, the first stale answer came %v after the start", firstAnswer.Round(time.Millisecond))
	// A plain read needs etcd: 503 at once, even while the new agent's
	// first connection attempt is under way (it waits for its outcome
	// rather than send the read to wait for its timeout).
	if code, _, body := get("/v1/kv/cfg/?prefix"); code != 503 {
		t.Fatalf("a plain listing after the restart: %d %s, want 503", code, body)
	}
	if code, h, _ := func() (int, http.Header, string) {
		req, _ := http.NewRequest(http.MethodGet, "http://localhost/v1/kv/cfg/?prefix", nil)
		req.Header.Set("Cache-Control", "stale-if-error=600")
		resp, err := hc.Do(req)
		if err != nil {
			return 0, nil, ""
		}
		resp.Body.Close()
		return resp.StatusCode, resp.Header, ""
	}(); code != 200 || h.Get("X-Endpointd-Cache") != "hit" {
		t.Fatalf("a stale-if-error listing after the restart: %d %v", code, h)
	}
	req, _ := http.NewRequest(http.MethodPut, "http://localhost/v1/kv/cfg/k1", nil)
	if resp, err := hc.Do(req); err != nil || resp.StatusCode != 503 {
		t.Fatalf("a write during the outage: %v %v", resp, err)
	}

	ranges := func() float64 {
		var n float64
		for _, ep := range cluster.Endpoints() {
			m, err := etcdtest.UnaryRPCs(ep)
			if err != nil {
				t.Fatal(err)
			}
			n += m["Range"]
		}
		return n
	}
	if err := cluster.RestartAll(); err != nil {
		t.Fatal(err)
	}
	// The members' counters start again with their processes (and their
	// restart is awaited with Status, not a read): every Range they count
	// was sent after their return.
	etcdtest.Eventually(t, 30*time.Second, "the copy confirmed again", func() bool {
		st, _, err := c.Status(ctx)
		return err == nil && len(st.Cache) == 1 && st.Cache[0].Confirmed
	})
	if n := ranges(); n != 0 {
		t.Fatalf("the members counted %v Range requests during recovery, want 0 (resume, not relist)", n)
	}
	direct := etcdtest.DirectClient(t, cluster.Endpoints())
	put, err := direct.Put(ctx, "cfg/k4", "after")
	if err != nil {
		t.Fatal(err)
	}
	etcdtest.Eventually(t, 10*time.Second, "a change after the return", func() bool {
		code, h, body := get("/v1/kv/cfg/k4?stale")
		r, _ := strconv.ParseInt(h.Get("X-Etcd-Revision"), 10, 64)
		return code == 200 && body == "after" && r >= put.Header.Revision
	})
}
