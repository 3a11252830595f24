// Package agentproc runs the real agent as a child process of a tool's own
// binary (the benchmarks, the soak), the one way: the child side, Main, runs
// it as `endpointd run` does; the parent side, Start, starts the child and
// returns once the agent in it is ready, as the child itself says over
// systemd's notify protocol (READY=1) — the parent never polls it.
package agentproc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"golang.org/x/sys/unix"

	"udp_iaasd/agent"
	"udp_iaasd/config"
)

// Main is the child: the agent on the config at cfgPath, with `endpointd
// run`'s runtime settings (agent.TuneRuntime), until SIGTERM or SIGINT;
// SIGHUP reloads. It
// tells the parent READY=1 once the agent can answer (a set applied and
// etcd reached), not merely once it serves. It returns the exit status.
func Main(cfgPath, version string) int {
	agent.TuneRuntime()
	cfg, err := config.Load(cfgPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 78
	}
	a, err := agent.New(agent.Options{Config: cfg, ConfigPath: cfgPath, Version: version,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		Notify: func(state string) {
			if state != "READY=1" { // said below, once it can answer
				daemon.SdNotify(false, state)
			}
		}})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer a.Close()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	// SIGHUP reloads config.yaml, as under `endpointd run`.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-hup:
				a.Reload()
			case <-ctx.Done():
				return
			}
		}
	}()
	runErr := make(chan error, 1)
	go func() { runErr <- a.Run(ctx) }()
	if a.WaitReady(ctx) == nil {
		daemon.SdNotify(false, daemon.SdNotifyReady)
	}
	if err := <-runErr; err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// Start starts cmd — the tool's binary, re-executed so that it calls Main —
// with a notify socket of its own, and waits until the agent in it says it
// is ready, the child exits, or timeout passes. The caller owns cmd (Wait,
// signals) from then on.
func Start(cmd *exec.Cmd, timeout time.Duration) error {
	dir, err := os.MkdirTemp("", "endpointd-agentproc-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	addr := &net.UnixAddr{Name: filepath.Join(dir, "notify"), Net: "unixgram"}
	conn, err := net.ListenUnixgram("unixgram", addr)
	if err != nil {
		return fmt.Errorf("agentproc: notify socket: %w", err)
	}
	defer conn.Close()
	if cmd.Env == nil {
		cmd.Env = os.Environ()
	}
	cmd.Env = append(cmd.Env, "NOTIFY_SOCKET="+addr.Name)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("agentproc: %w", err)
	}
	deadline := time.Now().Add(timeout)
	buf := make([]byte, 4096)
	for {
		// Short reads, so that a child that died is noticed.
		next := time.Now().Add(200 * time.Millisecond)
		if next.After(deadline) {
			next = deadline
		}
		conn.SetReadDeadline(next)
		n, _, err := conn.ReadFromUnix(buf)
		if err == nil {
			for _, line := range strings.Split(string(buf[:n]), "\n") {
				if line == daemon.SdNotifyReady {
					return nil
				}
			}
			continue
		}
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			return fmt.Errorf("agentproc: notify socket: %w", err)
		}
		if exited(cmd) {
			return errors.New("agentproc: the agent exited before it was ready")
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("agentproc: the agent was not ready within %v", timeout)
		}
	}
}

// exited reports whether cmd's process has ended, without reaping it (the
// caller's Wait does).
func exited(cmd *exec.Cmd) bool {
	var info unix.Siginfo
	err := unix.Waitid(unix.P_PID, cmd.Process.Pid, &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil)
	return err != nil || info.Signo != 0
}
