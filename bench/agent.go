package main

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"udp_iaasd/internal/agentproc"
	"udp_iaasd/internal/etcdtest"
)

// agentProc is an agent process of this binary (-role agent) in a
// directory of its own, which holds its endpoints.yaml, config.yaml and
// socket. Every mode starts its agents this way.
type agentProc struct {
	cmd     *exec.Cmd
	logf    *os.File // the child's stderr when it goes to a file; closed once started
	dir     string
	epsPath string
	cfgPath string
	sock    string
	http    *httpTarget // set by start
}

// newAgentProc writes dir's endpoints.yaml (eps) and config.yaml (see
// writeConfig) and prepares the command; start runs it. The child's
// stderr goes to stderr, or to dir/agent.log when it is nil.
func newAgentProc(dir string, eps []string, socketFields, config string, stderr io.Writer) (*agentProc, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	a := &agentProc{dir: dir, epsPath: filepath.Join(dir, "endpoints.yaml"), cfgPath: filepath.Join(dir, "config.yaml"),
		sock: filepath.Join(dir, "endpointd.sock")}
	if err := writeEndpoints(a.epsPath, eps); err != nil {
		return nil, err
	}
	if err := a.writeConfig(socketFields, config); err != nil {
		return nil, err
	}
	a.cmd = exec.Command(os.Args[0], "-role", "agent", "-config", a.cfgPath)
	a.cmd.Stderr = stderr
	if stderr == nil {
		logf, err := os.Create(filepath.Join(dir, "agent.log"))
		if err != nil {
			return nil, err
		}
		a.cmd.Stderr, a.logf = logf, logf
	}
	return a, nil
}

// writeConfig writes config.yaml: the endpoints file, the socket (its path,
// then socketFields, e.g. `, grpc_path: …`), then config (more YAML lines).
// An agent that runs reads it again on SIGHUP.
func (a *agentProc) writeConfig(socketFields, config string) error {
	yaml := fmt.Sprintf("endpoints_file: endpoints.yaml\nsocket: {path: %s%s}\n%s", a.sock, socketFields, config)
	return os.WriteFile(a.cfgPath, []byte(yaml), 0o644)
}

// start runs the agent and returns once it says it is ready (agentproc).
func (a *agentProc) start(timeout time.Duration) error {
	err := agentproc.Start(a.cmd, timeout)
	if a.logf != nil {
		a.logf.Close()
	}
	if err != nil {
		if a.logf != nil {
			log, _ := os.ReadFile(a.logf.Name())
			return fmt.Errorf("agent in %s: %w\n%s", a.dir, err, log)
		}
		return fmt.Errorf("agent in %s: %w", a.dir, err)
	}
	a.http = newHTTPTarget("endpointd", a.sock, a.cmd.Process.Pid)
	return nil
}

func (a *agentProc) pid() int { return a.cmd.Process.Pid }

// signal sends sig, if the agent was started.
func (a *agentProc) signal(sig os.Signal) {
	if a != nil && a.cmd.Process != nil {
		a.cmd.Process.Signal(sig)
	}
}

// stop ends the agent with SIGTERM (a clean stop) and waits for it; an
// agent that never started is left alone.
func (a *agentProc) stop() {
	a.signal(syscall.SIGTERM)
	a.wait()
}

// wait waits for a started agent to exit.
func (a *agentProc) wait() {
	if a != nil && a.cmd.Process != nil {
		a.cmd.Wait()
	}
}

// benchCluster makes a temporary directory with three member processes in
// it, for a mode whose agents it then starts there; done kills the members
// and removes the directory.
func benchCluster(name string) (dir string, cluster *etcdtest.ProcCluster, done func(), err error) {
	if dir, err = os.MkdirTemp("", "endpointd-"+name+"-"); err != nil {
		return "", nil, nil, err
	}
	if cluster, err = etcdtest.StartProc(filepath.Join(dir, "etcd"), 3); err != nil {
		os.RemoveAll(dir)
		return "", nil, nil, err
	}
	return dir, cluster, func() { cluster.KillAll(); os.RemoveAll(dir) }, nil
}
