package agent_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"udp_iaasd/config"
	"udp_iaasd/internal/agentproc"
	"udp_iaasd/internal/etcdtest"
)

// The whole agent killed with SIGKILL at 100 random instants while the keys
// of its cached prefix change: every start answers its first stale read
// from a copy whose keys all come from one write (ten keys written together
// in one transaction, so a copy mixing two writes would show two values),
// and the copies loaded never go back in revision. The copy's writer alone
// is killed the same way in the cache's tests; this is the agent around it:
// load before the socket answers, persistence while the watch applies.
func TestAgentKilledWhileKeysChange(t *testing.T) {
	iterations := 100
	if testing.Short() {
		iterations = 20
	}
	cluster := etcdtest.New(t, 1)
	direct := etcdtest.DirectClient(t, cluster.Endpoints())
	dir := t.TempDir()
	sock := filepath.Join(dir, "endpointd.sock")
	os.WriteFile(filepath.Join(dir, "endpoints.yaml"), config.EndpointsYAML(cluster.Endpoints()), 0o644)
	cfg := filepath.Join(dir, "config.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`endpoints_file: endpoints.yaml
min_cluster_size: 1
socket: {path: %s}
cache: {prefixes: [cfg/], dir: %s, persist_interval: 5ms}
`, sock, filepath.Join(dir, "cache"))), 0o644)

	// The writer: ten keys, one value, one transaction per write.
	const keys = 10
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { stop(); wg.Wait() })
	var writes int
	write := func(i int) error {
		ops := make([]clientv3.Op, keys)
		for k := range keys {
			ops[k] = clientv3.OpPut(fmt.Sprintf("cfg/%02d", k), strconv.Itoa(i))
		}
		_, err := direct.Txn(ctx).Then(ops...).Commit()
		return err
	}
	if err := write(0); err != nil {
		t.Fatal(err)
	}
	wg.Go(func() {
		for i := 1; ctx.Err() == nil; i++ {
			if write(i) == nil {
				writes = i
			}
		}
	})

	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}}}
	// firstStale is the first stale listing of cfg/ after a start: its
	// revision and the values it holds.
	firstStale := func() (int64, map[string]int) {
		resp, err := hc.Get("http://localhost/v1/kv/cfg/?prefix&stale")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body struct {
			Kvs []struct {
				Key   string `json:"key"`
				Value string `json:"value"`
			} `json:"kvs"`
		}
		if resp.StatusCode != 200 || json.NewDecoder(resp.Body).Decode(&body) != nil {
			t.Fatalf("the first stale listing after a start: %d", resp.StatusCode)
		}
		rev, _ := strconv.ParseInt(resp.Header.Get("X-Etcd-Revision"), 10, 64)
		values := map[string]int{}
		for _, kv := range body.Kvs {
			values[kv.Value]++
		}
		return rev, values
	}

	var last, first int64
	advanced := 0
	for i := range iterations {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), agentChild+"="+cfg)
		cmd.Stderr = etcdtest.LogWriter(t)
		if err := agentproc.Start(cmd, 30*time.Second); err != nil {
			t.Fatalf("start %d: %v", i, err)
		}
		if i == 0 {
			// The first agent lists the prefix and persists a first copy.
			etcdtest.Eventually(t, 10*time.Second, "a first copy persisted", func() bool {
				resp, err := hc.Get("http://localhost/v1/status")
				if err != nil {
					return false
				}
				defer resp.Body.Close()
				var st struct {
					Cache []struct {
						PersistedRevision int64 `json:"persisted_revision"`
					} `json:"cache"`
				}
				return json.NewDecoder(resp.Body).Decode(&st) == nil && len(st.Cache) == 1 && st.Cache[0].PersistedRevision > 0
			})
		}
		rev, values := firstStale()
		if len(values) != 1 || values[firstValue(values)] != keys {
			t.Fatalf("start %d: the copy mixes writes: %d keys by value %v at revision %d", i, keys, values, rev)
		}
		if rev < last {
			t.Fatalf("start %d: the copy went back from revision %d to %d", i, last, rev)
		}
		if i == 0 {
			first = rev
		} else if rev > last {
			advanced++
		}
		last = rev
		// A resumed watch's first events come within etcd's sync interval
		// (100ms) of its start; up to 400ms lets kills land before it,
		// while the copy catches up, and while it is written.
		time.Sleep(time.Duration(rand.Int64N(int64(400 * time.Millisecond))))
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
	}
	stop()
	wg.Wait()
	t.Logf("%d kills while %d writes of %d keys went on: every first stale answer was one write's keys; the copy advanced on %d starts (revision %d to %d)",
		iterations, writes, keys, advanced, first, last)
	if last <= first {
		t.Fatalf("the copy never advanced (revision %d): the kills did not land while keys changed", last)
	}
}

func firstValue(m map[string]int) string {
	for v := range m {
		return v
	}
	return ""
}
