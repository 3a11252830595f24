package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"udp_iaasd/config"
	"udp_iaasd/internal/etcdtest"
	"udp_iaasd/internal/syncbuf"
)

// `endpointd run` runs on agent.Procs Ps with GOGC agent.GCPercent unless
// the environment sets GOMAXPROCS or GOGC, which then win; the start-up log
// line and the Go collector's gauges in /metrics say which it got.
func TestRunTunesItsRuntime(t *testing.T) {
	cluster := etcdtest.New(t, 1)
	for _, tc := range []struct {
		name        string
		env         []string
		procs, gogc string
	}{
		{"defaults", nil, "1", "200"},
		{"environment wins", []string{"GOMAXPROCS=2", "GOGC=150"}, "2", "150"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			sock := filepath.Join(dir, "agent.sock")
			cfg := filepath.Join(dir, "config.yaml")
			os.WriteFile(filepath.Join(dir, "endpoints.yaml"), config.EndpointsYAML(cluster.Endpoints()), 0o644)
			os.WriteFile(cfg, []byte("endpoints_file: endpoints.yaml\nmin_cluster_size: 1\nsocket: {path: "+sock+"}\n"), 0o644)
			cmd := endpointd("run", "-config", cfg)
			cmd.Env = append(withoutVars(cmd.Env, "GOMAXPROCS", "GOGC", "LISTEN_FDS", "NOTIFY_SOCKET"), tc.env...)
			var logs syncbuf.Buffer
			cmd.Stdout, cmd.Stderr = &logs, &logs
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() { cmd.Process.Kill(); cmd.Wait() }()

			hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
				DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
					return (&net.Dialer{}).DialContext(ctx, "unix", sock)
				}}}
			var gauges map[string]string
			etcdtest.Eventually(t, 20*time.Second, "the agent's /metrics", func() bool {
				gauges = scrape(hc, "go_sched_gomaxprocs_threads", "go_gc_gogc_percent")
				return gauges != nil
			})
			want := map[string]string{"go_sched_gomaxprocs_threads": tc.procs, "go_gc_gogc_percent": tc.gogc}
			for name, v := range want {
				if gauges[name] != v {
					t.Errorf("%s = %q, want %q\nlog:\n%s", name, gauges[name], v, logs.String())
				}
			}
			if line := fmt.Sprintf("gomaxprocs=%s gogc=%s", tc.procs, tc.gogc); !strings.Contains(logs.String(), line) {
				t.Errorf("the start-up log does not say %q:\n%s", line, logs.String())
			}
		})
	}
}

// scrape returns the named unlabelled gauges from the agent's /metrics, or
// nil if it cannot be read or lacks one of them.
func scrape(hc *http.Client, names ...string) map[string]string {
	resp, err := hc.Get("http://localhost/metrics")
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	got := map[string]string{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		for _, n := range names {
			if v, ok := strings.CutPrefix(sc.Text(), n+" "); ok {
				got[n] = v
			}
		}
	}
	if len(got) != len(names) {
		return nil
	}
	return got
}

// withoutVars is env without the named variables.
func withoutVars(env []string, names ...string) []string {
	var out []string
next:
	for _, kv := range env {
		for _, n := range names {
			if strings.HasPrefix(kv, n+"=") {
				continue next
			}
		}
		out = append(out, kv)
	}
	return out
}
