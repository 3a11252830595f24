package etcdtest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"udp_iaasd/internal/devcluster"
)

// envMember carries a member's spec to a re-executed test binary.
const envMember = "ETCDTEST_MEMBER"

// RunMemberIfRequested turns this process into an etcd member when a
// ProcCluster started it; otherwise it returns at once. Call it first in the
// TestMain of any package that uses ProcCluster:
//
//	func TestMain(m *testing.M) { etcdtest.RunMemberIfRequested(); os.Exit(m.Run()) }
func RunMemberIfRequested() {
	raw := os.Getenv(envMember)
	if raw == "" {
		return
	}
	var spec devcluster.MemberSpec
	if err := json.Unmarshal([]byte(raw), &spec); err != nil {
		fmt.Fprintf(os.Stderr, "etcdtest member: bad spec: %v\n", err)
		os.Exit(2)
	}
	e, err := embed.StartEtcd(devcluster.MemberConfig(spec))
	if err != nil {
		fmt.Fprintf(os.Stderr, "etcdtest member %s: %v\n", spec.Name, err)
		os.Exit(1)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	select {
	case <-sig:
		e.Close()
		os.Exit(0)
	case err := <-e.Err():
		fmt.Fprintf(os.Stderr, "etcdtest member %s: %v\n", spec.Name, err)
		os.Exit(1)
	}
}

// ProcCluster is a cluster whose members run as separate processes (this
// test binary, re-executed), so that kill -9 is real: no deferred cleanup,
// no graceful leadership transfer, file descriptors dropped by the kernel.
type ProcCluster struct {
	Members []*ProcMember
}

// ProcMember is one member process.
type ProcMember struct {
	Name string
	spec devcluster.MemberSpec
	log  string // the member's stderr, for failures

	mu  sync.Mutex // guards cmd
	cmd *exec.Cmd
}

// NewProc starts n member processes for a test and kills them in
// t.Cleanup. The package's TestMain must call RunMemberIfRequested.
func NewProc(t testing.TB, n int) *ProcCluster {
	t.Helper()
	c, err := StartProc(t.TempDir(), n)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.KillAll)
	return c
}

// StartProc starts n member processes with their data under dir and waits
// for the cluster to serve. The program's main (or TestMain) must call
// RunMemberIfRequested first. The caller kills them with KillAll.
func StartProc(dir string, n int) (*ProcCluster, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("etcdtest: %w", err)
	}
	ports, err := devcluster.FreePorts(2 * n)
	if err != nil {
		return nil, err
	}
	c := &ProcCluster{}
	token := fmt.Sprintf("proc-%d", time.Now().UnixNano())
	var initial []string
	for i := range n {
		name := fmt.Sprintf("p%d", i)
		m := &ProcMember{Name: name, spec: devcluster.MemberSpec{
			Name:      name,
			Dir:       filepath.Join(dir, name),
			ClientURL: fmt.Sprintf("http://127.0.0.1:%d", ports[2*i]),
			PeerURL:   fmt.Sprintf("http://127.0.0.1:%d", ports[2*i+1]),
			State:     embed.ClusterStateFlagNew,
			Token:     token,
			Fsync:     true, // a kill -9 must find only what etcd itself made durable
		}, log: filepath.Join(dir, name+".log")}
		initial = append(initial, name+"="+m.spec.PeerURL)
		c.Members = append(c.Members, m)
	}
	for _, m := range c.Members {
		m.spec.InitialCluster = strings.Join(initial, ",")
		if err := m.spawn(); err != nil {
			c.KillAll()
			return nil, err
		}
	}
	if err := c.waitServing(30 * time.Second); err != nil {
		c.KillAll()
		return nil, err
	}
	for _, m := range c.Members {
		m.spec.State = embed.ClusterStateFlagExisting
	}
	return c, nil
}

// PID is the member's process id, 0 when it is not running.
func (m *ProcMember) PID() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd == nil {
		return 0
	}
	return m.cmd.Process.Pid
}

func (m *ProcMember) spawn() error {
	spec, _ := json.Marshal(m.spec)
	// A test binary re-executed runs no tests (-test.run); RunMemberIfRequested
	// takes over before flags are parsed in any case.
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envMember+"="+string(spec))
	logf, err := os.OpenFile(m.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("etcdtest: start member process %s: %w", m.Name, err)
	}
	logf.Close()
	m.mu.Lock()
	m.cmd = cmd
	m.mu.Unlock()
	return nil
}

// Endpoint is the member's client URL.
func (m *ProcMember) Endpoint() string { return m.spec.ClientURL }

// Kill sends SIGKILL and reaps the process.
func (m *ProcMember) Kill() {
	m.mu.Lock()
	cmd := m.cmd
	m.cmd = nil
	m.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Kill()
	cmd.Wait()
}

// Pause stops the member's process with SIGSTOP: its connections stay open
// and nothing answers on them — a hung member, as a wedged process or a
// black-holed network looks to its clients. Resume undoes it.
func (m *ProcMember) Pause() error { return m.signal(syscall.SIGSTOP) }

// Resume continues a paused member (SIGCONT).
func (m *ProcMember) Resume() error { return m.signal(syscall.SIGCONT) }

func (m *ProcMember) signal(sig syscall.Signal) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd == nil {
		return fmt.Errorf("etcdtest: member %s is not running", m.Name)
	}
	return m.cmd.Process.Signal(sig)
}

// Running reports whether the member's process is up.
func (m *ProcMember) Running() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.cmd != nil
}

// Restart starts a killed member again from its data directory and waits
// until it answers.
func (m *ProcMember) Restart() error {
	if m.Running() {
		return fmt.Errorf("etcdtest: member %s is running", m.Name)
	}
	if err := m.spawn(); err != nil {
		return err
	}
	return waitAnswers(m.Endpoint(), 30*time.Second, m.log)
}

// Endpoints returns the members' client URLs.
func (c *ProcCluster) Endpoints() []string {
	out := make([]string, len(c.Members))
	for i, m := range c.Members {
		out[i] = m.Endpoint()
	}
	return out
}

// KillAll kills every member at once.
func (c *ProcCluster) KillAll() {
	var wg sync.WaitGroup
	for _, m := range c.Members {
		wg.Go(m.Kill)
	}
	wg.Wait()
}

// RestartAll restarts every killed member concurrently (a lone member cannot
// serve without a quorum).
func (c *ProcCluster) RestartAll() error {
	var errs []error
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, m := range c.Members {
		if m.Running() {
			continue
		}
		wg.Go(func() {
			if err := m.Restart(); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (c *ProcCluster) waitServing(timeout time.Duration) error {
	for _, m := range c.Members {
		if err := waitAnswers(m.Endpoint(), timeout, m.log); err != nil {
			return err
		}
	}
	return nil
}

// waitAnswers polls a member with a Status request until it answers: not a
// read, so that tests counting the Range requests a member received (an
// agent must resume, not relist) count only their own.
func waitAnswers(endpoint string, timeout time.Duration, logPath string) error {
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: time.Second, Logger: zap.NewNop()})
	if err != nil {
		return err
	}
	defer cli.Close()
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := cli.Status(ctx, endpoint)
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(logPath)
			return fmt.Errorf("etcdtest: member at %s not serving after %v: %w\n%s", endpoint, timeout, err, log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
