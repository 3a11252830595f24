package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"udp_iaasd/client"
	"udp_iaasd/config"
	"udp_iaasd/internal/agenttest"
	"udp_iaasd/internal/etcdtest"
	"udp_iaasd/internal/syncbuf"
)

// endpointd runs this test binary as the endpointd command (TestMain).
func endpointd(args ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "ENDPOINTD_BE_MAIN=1")
	return cmd
}

// readyAgent starts an in-process agent and returns its socket once it has
// applied its endpoints and reached etcd.
func readyAgent(t *testing.T, eps []string) string {
	t.Helper()
	a := agenttest.Start(t, agenttest.Options{Endpoints: eps})
	a.Eventually("the agent ready", func() bool { return a.Status().Ready })
	return a.Sock
}

// The README's nightly backup: `endpointd lock` on three hosts (three
// agents, one cluster), three runs each; one command runs at a time, each
// with its fencing token, each run's exit status passed through.
func TestLockCommandOneAtATime(t *testing.T) {
	cluster := etcdtest.New(t, 3)
	var socks []string
	for range 3 {
		socks = append(socks, readyAgent(t, cluster.Endpoints()))
	}
	log := filepath.Join(t.TempDir(), "runs.log")
	script := `echo "start $ENDPOINTD_LOCK_REVISION $ENDPOINTD_LOCK_KEY" >> "$LOG"; sleep 0.05; echo "end $ENDPOINTD_LOCK_REVISION" >> "$LOG"`
	var wg sync.WaitGroup
	for _, s := range socks {
		for range 3 {
			wg.Go(func() {
				cmd := endpointd("lock", "-socket", s, "nightly-backup", "--", "sh", "-c", script)
				cmd.Env = append(cmd.Env, "LOG="+log)
				if out, err := cmd.CombinedOutput(); err != nil {
					t.Errorf("endpointd lock: %v\n%s", err, out)
				}
			})
		}
	}
	wg.Wait()
	data, _ := os.ReadFile(log)
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	if len(lines) != 18 {
		t.Fatalf("%d lines, want 18:\n%s", len(lines), data)
	}
	last := int64(0)
	for i := 0; i < len(lines); i += 2 {
		start, end := strings.Fields(lines[i]), strings.Fields(lines[i+1])
		if start[0] != "start" || end[0] != "end" || start[1] != end[1] || !strings.HasPrefix(start[2], "nightly-backup/") {
			t.Fatalf("runs overlap or lack the token:\n%s", data)
		}
		rev, _ := strconv.ParseInt(start[1], 10, 64)
		if rev <= last {
			t.Fatalf("fencing token %d after %d:\n%s", rev, last, data)
		}
		last = rev
	}
}

// Exit statuses, a wait that runs out, signals passed to the command, and a
// lost hold ending the command.
func TestLockCommandBehaviour(t *testing.T) {
	cluster := etcdtest.New(t, 2)
	sock := readyAgent(t, cluster.Endpoints())
	run := func(args ...string) (int, string) {
		cmd := endpointd(append([]string{"lock", "-socket", sock}, args...)...)
		out, _ := cmd.CombinedOutput()
		return cmd.ProcessState.ExitCode(), string(out)
	}
	if code, out := run("st", "--", "sh", "-c", "exit 7"); code != 7 {
		t.Fatalf("exit status: %d %s", code, out)
	}
	if code, out := run("st"); code != 2 || !strings.Contains(out, "NAME -- CMD") {
		t.Fatalf("no command: %d %s", code, out)
	}

	c := client.New(sock, client.Options{})
	h, err := c.Lock(context.Background(), "held")
	if err != nil {
		t.Fatal(err)
	}
	for _, wait := range []string{"0", "300ms"} {
		code, out := run("-wait", wait, "held", "--", "touch", filepath.Join(t.TempDir(), "ran"))
		// The holder is named by who it is, then its key.
		if code != 1 || !strings.Contains(out, fmt.Sprintf("is held by uid %d", os.Getuid())) || !strings.Contains(out, "(key "+h.Key) ||
			strings.Count(out, "held by") != map[string]int{"0": 1, "300ms": 2}[wait] {
			t.Fatalf("-wait %s on a held lock: %d %s", wait, code, out)
		}
		// A wait says first whom it waits for.
		if wait != "0" && !strings.Contains(out, "waiting for held, held by uid") {
			t.Fatalf("-wait %s does not say whom it waits for: %s", wait, out)
		}
	}
	h.Release()

	// SIGTERM to endpointd reaches the command, whose status comes back.
	dir := t.TempDir()
	ready := filepath.Join(dir, "ready")
	cmd := endpointd("lock", "-socket", sock, "sig", "--", "sh", "-c", `trap "exit 42" TERM; touch "$READY"; while :; do sleep 0.05; done`)
	cmd.Env = append(cmd.Env, "READY="+ready)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	etcdtest.Eventually(t, 10*time.Second, "the command running", func() bool { _, err := os.Stat(ready); return err == nil })
	cmd.Process.Signal(syscall.SIGTERM)
	cmd.Wait()
	if code := cmd.ProcessState.ExitCode(); code != 42 {
		t.Fatalf("after SIGTERM: exit %d, want the command's 42", code)
	}

	// A lost hold (its lease revoked, as an expiry would) stops the command:
	// SIGTERM, then SIGKILL after -grace for one that ignores it; exit 3.
	ready2 := filepath.Join(dir, "ready2")
	var out bytes.Buffer
	cmd = endpointd("lock", "-socket", sock, "-ttl", "5s", "-grace", "300ms", "lost", "--", "sh", "-c", `trap "" TERM; touch "$READY"; while :; do sleep 0.05; done`)
	cmd.Env = append(cmd.Env, "READY="+ready2)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	etcdtest.Eventually(t, 10*time.Second, "the command running", func() bool { _, err := os.Stat(ready2); return err == nil })
	direct := cluster.Client(t)
	resp, err := direct.Get(context.Background(), "lost/", clientv3.WithPrefix())
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("the lock key: %v %v", resp, err)
	}
	if _, err := direct.Revoke(context.Background(), clientv3.LeaseID(resp.Kvs[0].Lease)); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("endpointd lock did not end after the hold was lost:\n%s", out.String())
	}
	if code := cmd.ProcessState.ExitCode(); code != 3 || !strings.Contains(out.String(), "was lost") {
		t.Fatalf("after the hold was lost: exit %d\n%s", code, out.String())
	}
}

// endpointd elect runs the command as leader; -observe prints the leader.
func TestElectCommand(t *testing.T) {
	cluster := etcdtest.New(t, 2)
	sock := readyAgent(t, cluster.Endpoints())
	cmd := endpointd("elect", "-socket", sock, "leader", "host-a", "--", "sh", "-c", `echo "$ENDPOINTD_ELECTION_KEY $ENDPOINTD_ELECTION_REVISION"; sleep 1`)
	var out bytes.Buffer
	cmd.Stdout = &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	obs := endpointd("elect", "-socket", sock, "-observe", "leader")
	var obsOut syncbuf.Buffer
	obs.Stdout = &obsOut
	obs.Start()
	etcdtest.Eventually(t, 10*time.Second, "the observer sees host-a", func() bool { return strings.Contains(obsOut.String(), " host-a") })
	obs.Process.Signal(syscall.SIGTERM)
	obs.Wait()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("elect: %v", err)
	}
	if !strings.HasPrefix(out.String(), "leader/") {
		t.Fatalf("the command's environment: %q", out.String())
	}
}

// An agent killed with SIGKILL cannot release its holders' locks: they go
// with the lease, after its TTL, and another agent's client gets the lock
// then.
func TestLockReleasedWithinTTLWhenAgentDies(t *testing.T) {
	cluster := etcdtest.New(t, 2)
	dir := t.TempDir()
	sock := filepath.Join(dir, "agent.sock")
	cfg := filepath.Join(dir, "config.yaml")
	os.WriteFile(filepath.Join(dir, "endpoints.yaml"), config.EndpointsYAML(cluster.Endpoints()), 0o644)
	os.WriteFile(cfg, []byte("endpoints_file: endpoints.yaml\nmin_cluster_size: 1\nsocket: {path: "+sock+"}\n"), 0o644)
	agent := endpointd("run", "-config", cfg)
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { agent.Process.Kill(); agent.Wait() })
	c := client.New(sock, client.Options{RetryMax: 10})
	var h *client.Hold
	etcdtest.Eventually(t, 20*time.Second, "the agent's lock", func() bool {
		var err error
		h, err = c.Lock(context.Background(), "agentdies", client.HoldTTL(3*time.Second))
		return err == nil
	})
	agent.Process.Kill()
	agent.Wait()
	killed := time.Now()
	direct := cluster.Client(t)
	if resp, err := direct.Get(context.Background(), h.Key); err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("the lock key right after the agent died: %v %v", resp, err)
	}
	second := agenttest.Start(t, agenttest.Options{Endpoints: cluster.Endpoints()})
	second.Eventually("the second agent ready", func() bool { return second.Status().Ready })
	other := client.New(second.Sock, client.Options{})
	h2, err := other.Lock(context.Background(), "agentdies", client.LockWait(20*time.Second))
	if err != nil {
		t.Fatalf("the lock after the agent died: %v", err)
	}
	t.Logf("acquired %v after SIGKILL of the holder's agent (ttl 3s)", time.Since(killed).Round(10*time.Millisecond))
	if h2.Revision <= h.Revision {
		t.Fatalf("token %d after %d", h2.Revision, h.Revision)
	}
	h2.Release()
}
