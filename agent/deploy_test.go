package agent_test

import (
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
	"testing"

	"udp_iaasd/internal/agenttest"
	"udp_iaasd/internal/etcdtest"
)

// Every metric the alerting rules and the dashboard in deploy/ name is one
// a real agent exports, so that neither can drift from /metrics unseen.
func TestDeployNamesExportedMetrics(t *testing.T) {
	cluster := etcdtest.New(t, 2)
	// A cached prefix, so that the cache's metrics are exported too.
	h := agenttest.Start(t, agenttest.Options{Endpoints: cluster.Endpoints(),
		Extra: "cache: {prefixes: [cfg/], dir: " + t.TempDir() + "}\n" +
			fmt.Sprintf("access:\n  - {name: all, uids: [%d], prefixes: [\"\"], allow: [read, write], rate: 1000}\n", os.Getuid())})
	h.Eventually("ready", func() bool { return h.Status().Ready })
	h.Eventually("the cache listed", func() bool { st := h.Status(); return len(st.Cache) == 1 && st.Cache[0].Confirmed })
	resp, err := h.HTTP.Get("http://localhost/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	exported := map[string]bool{}
	for _, line := range strings.Split(string(body), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name := line
		if i := strings.IndexAny(line, "{ "); i >= 0 {
			name = line[:i]
		}
		exported[name] = true
	}
	names := regexp.MustCompile(`endpointd_[a-z_]+`)
	for _, f := range []string{"../deploy/prometheus/endpointd-rules.yml", "../deploy/grafana/endpointd.json"} {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		found := names.FindAllString(string(data), -1)
		if len(found) < 5 {
			t.Fatalf("%s names only %d metrics", f, len(found))
		}
		for _, n := range found {
			if strings.HasPrefix(n, "endpointd_rules") {
				continue // the rule file's own name
			}
			if !exported[n] {
				t.Errorf("%s names %s, which the agent does not export", f, n)
			}
		}
	}
}
