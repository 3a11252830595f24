package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"udp_iaasd/config"
	"udp_iaasd/internal/etcdtest"
	"udp_iaasd/internal/syncbuf"
)

// A restart under socket activation costs local clients nothing: the
// socket outlives the agent (here the test holds it, as systemd does), new
// connections queue in its backlog while no agent runs, and a restarted
// agent accepts only once it can answer. A plain HTTP loop — a new
// connection per request, no retries, like curl in a shell loop — sees no
// failure across three restarts.
func TestRestartUnderSocketActivation(t *testing.T) {
	cluster := etcdtest.New(t, 1)
	dir := t.TempDir()
	sock := filepath.Join(dir, "activated.sock")
	cfg := filepath.Join(dir, "config.yaml")
	os.WriteFile(filepath.Join(dir, "endpoints.yaml"), config.EndpointsYAML(cluster.Endpoints()), 0o644)
	os.WriteFile(cfg, []byte("endpoints_file: endpoints.yaml\nmin_cluster_size: 1\nsocket: {path: "+filepath.Join(dir, "unused.sock")+"}\n"), 0o644)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	lf, err := ln.File()
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	var logs syncbuf.Buffer
	start := func() *exec.Cmd {
		// LISTEN_PID must be the agent's own pid: the shell exports its $$
		// and execs the agent in its place, as systemd sets it after fork.
		cmd := exec.Command("sh", "-c", `export LISTEN_PID=$$; exec "$0" "$@"`, os.Args[0], "run", "-config", cfg)
		cmd.Env = append(os.Environ(), "ENDPOINTD_BE_MAIN=1", "LISTEN_FDS=1", "LISTEN_FDNAMES=endpointd.socket", "NOTIFY_SOCKET=")
		cmd.ExtraFiles = []*os.File{lf}
		cmd.Stdout, cmd.Stderr = &logs, &logs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		return cmd
	}
	agent := start()
	defer func() { agent.Process.Kill(); agent.Wait() }()

	hc := &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		}}}
	put, _ := http.NewRequest(http.MethodPut, "http://localhost/v1/kv/restart/probe", nil)
	etcdtest.Eventually(t, 20*time.Second, "the first agent answering", func() bool {
		resp, err := hc.Do(put)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})

	var ok, failed atomic.Int64
	var firstFailure atomic.Value
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for ctx.Err() == nil {
				resp, err := hc.Get("http://localhost/v1/kv/restart/probe")
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode == 200 {
						ok.Add(1)
						continue
					}
					err = fmt.Errorf("status %d", resp.StatusCode)
				}
				failed.Add(1)
				firstFailure.CompareAndSwap(nil, err.Error())

			}
		})
	}
	for range 3 {
		time.Sleep(300 * time.Millisecond)
		agent.Process.Signal(syscall.SIGTERM)
		agent.Wait()
		agent = start()
	}
	time.Sleep(500 * time.Millisecond)
	stop()
	wg.Wait()
	t.Logf("%d requests across 3 restarts, %d failed", ok.Load(), failed.Load())
	if failed.Load() != 0 {
		t.Fatalf("%d of %d requests failed across restarts (first: %v)\nlog:\n%s", failed.Load(), ok.Load()+failed.Load(), firstFailure.Load(), logs.String())
	}
	if ok.Load() < 50 {
		t.Fatalf("only %d requests answered", ok.Load())
	}
}
