package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
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
			if err := os.WriteFile(filepath.Join(dir, "endpoints.yaml"), config.EndpointsYAML(cluster.Endpoints()), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(cfg, []byte("endpoints_file: endpoints.yaml\nmin_cluster_size: 1\nsocket: {path: "+sock+"}\n"), 0o644); err != nil {
				t.Fatal(err)
			}
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
			var procs, gogc float64
			etcdtest.Eventually(t, 20*time.Second, "the agent's /metrics", func() bool {
				var err1, err2 error
				procs, err1 = etcdtest.GaugeVia(hc, "http://localhost", "go_sched_gomaxprocs_threads")
				gogc, err2 = etcdtest.GaugeVia(hc, "http://localhost", "go_gc_gogc_percent")
				return err1 == nil && err2 == nil
			})
			for _, g := range []struct {
				name      string
				got, want string
			}{
				{"go_sched_gomaxprocs_threads", strconv.FormatFloat(procs, 'g', -1, 64), tc.procs},
				{"go_gc_gogc_percent", strconv.FormatFloat(gogc, 'g', -1, 64), tc.gogc},
			} {
				if g.got != g.want {
					t.Errorf("%s = %q, want %q\nlog:\n%s", g.name, g.got, g.want, logs.String())
				}
			}
			if line := fmt.Sprintf("gomaxprocs=%s gogc=%s", tc.procs, tc.gogc); !strings.Contains(logs.String(), line) {
				t.Errorf("the start-up log does not say %q:\n%s", line, logs.String())
			}
		})
	}
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
