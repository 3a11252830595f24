package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"udp_iaasd/internal/etcdtest"
	"udp_iaasd/internal/syncbuf"
)

// TestMain lets tests start this test binary as the endpointd command, for
// runs that need a process of its own (socket activation).
func TestMain(m *testing.M) {
	if os.Getenv("ENDPOINTD_BE_MAIN") == "1" {
		os.Exit(asMain(os.Args[1:]))
	}
	os.Exit(m.Run())
}

// Under systemd-socket-activate the agent serves on the socket it inherits
// (LISTEN_FDS, matched by name) and leaves the socket to its owner.
func TestSocketActivation(t *testing.T) {
	activate, err := exec.LookPath("systemd-socket-activate")
	if err != nil {
		t.Skip("systemd-socket-activate is not installed (.ci/run installs it)")
	}
	cluster := etcdtest.New(t, 1)
	dir := t.TempDir()
	sock := filepath.Join(dir, "activated.sock")
	grpcSock := filepath.Join(dir, "etcd.sock")
	cfg := filepath.Join(dir, "config.yaml")
	os.WriteFile(filepath.Join(dir, "endpoints.yaml"), []byte("endpoints: ["+cluster.Endpoints()[0]+"]\n"), 0o644)
	// socket.path names another file: the agent must not create it.
	os.WriteFile(cfg, []byte("endpoints_file: endpoints.yaml\nmin_cluster_size: 1\nsocket: {path: "+filepath.Join(dir, "unused.sock")+"}\n"), 0o644)

	cmd := exec.Command(activate, "-l", sock, "-l", grpcSock, "--fdname=endpointd.socket:endpointd-grpc", "-E", "ENDPOINTD_BE_MAIN=1",
		os.Args[0], "run", "-config", cfg)
	var logs syncbuf.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
		}
	})
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}}
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := hc.Get("http://localhost/v1/status")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 && strings.Contains(string(b), `"ready":true`) {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no ready answer on the activated socket: %v\nlog:\n%s", err, logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !strings.Contains(logs.String(), "listening on the socket systemd passed") {
		t.Fatalf("the agent did not use the inherited socket; log:\n%s", logs.String())
	}
	if _, err := os.Stat(filepath.Join(dir, "unused.sock")); !os.IsNotExist(err) {
		t.Fatal("the agent created socket.path although systemd passed a socket")
	}
	// The second socket, named endpointd-grpc, serves etcd's gRPC API.
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{"unix://" + grpcSock}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, "activated", "yes"); err != nil {
		t.Fatalf("put through the activated gRPC socket: %v\nlog:\n%s", err, logs.String())
	}
	if !strings.Contains(logs.String(), "serving etcd's gRPC API on the socket systemd passed") {
		t.Fatalf("the agent did not serve gRPC on the inherited socket; log:\n%s", logs.String())
	}
}
