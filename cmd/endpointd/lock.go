package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"udp_iaasd/client"
)

const lockUsage = `usage:
  endpointd lock [-ttl 10s] [-wait D] [-grace 10s] NAME -- CMD [ARGS...]
      run CMD while holding the lock NAME; ENDPOINTD_LOCK_KEY and
      ENDPOINTD_LOCK_REVISION (the fencing token) are in its environment
  endpointd elect [-ttl 10s] [-grace 10s] NAME VALUE -- CMD [ARGS...]
      run CMD while leader of the election NAME (ENDPOINTD_ELECTION_KEY,
      ENDPOINTD_ELECTION_REVISION)
  endpointd elect -observe NAME
      print the leader and each change, one line each, until interrupted

common flags: -socket PATH (else $ENDPOINTD_SOCKET, else socket.path of -config, else the default)
exit status: CMD's (128+N when a signal N ended it); 1 -wait ran out (CMD not run);
  2 usage; 3 the agent is unreachable, or the hold was lost (CMD got SIGTERM, then
  SIGKILL after -grace)
`

// holdOptions are the flags of lock and elect.
type holdOptions struct {
	agent      *agentFlags
	ttl, grace *time.Duration
	wait       *time.Duration // lock only
	observe    *bool          // elect only; false for lock
}

// holdFlags defines lock's flags, or elect's with election.
func holdFlags(fs *flag.FlagSet, election bool) *holdOptions {
	o := &holdOptions{
		agent: defineAgentFlags(fs),
		ttl:   fs.Duration("ttl", 10*time.Second, "the lease that keeps the hold alive if the agent dies"),
		grace: fs.Duration("grace", 10*time.Second, "after a lost hold, how long CMD has between SIGTERM and SIGKILL"),
	}
	if election {
		o.observe = fs.Bool("observe", false, "print the leader and each change")
	} else {
		o.observe = new(bool)
		o.wait = fs.Duration("wait", -1, "give up after waiting this long (0: try once)")
	}
	return o
}

// cmdHold is `endpointd lock` (election false) and `endpointd elect`.
func cmdHold(ctx context.Context, election bool, args []string, stdout, stderr io.Writer) int {
	name := "lock"
	if election {
		name = "elect"
	}
	flags := flag.NewFlagSet("endpointd "+name, flag.ContinueOnError)
	flags.SetOutput(stderr)
	flags.Usage = func() { fmt.Fprint(stderr, lockUsage) }
	o := holdFlags(flags, election)
	ttl, grace, wait, observe := o.ttl, o.grace, o.wait, o.observe
	if err := flags.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	pos := flags.Args()
	c := client.New(o.agent.socketPath(flags), client.Options{})
	if *observe {
		if len(pos) != 1 {
			fmt.Fprint(stderr, "endpointd elect -observe: give exactly one NAME\n"+lockUsage)
			return exitUsage
		}
		return observeLeader(ctx, c, pos[0], stdout, stderr)
	}
	want := 1
	if election {
		want = 2
	}
	dash := -1
	for i, a := range pos {
		if a == "--" {
			dash = i
			break
		}
	}
	if dash < 0 && len(pos) > want {
		dash = want // flag.Parse consumed the "--" itself
		pos = append(pos[:want:want], append([]string{"--"}, pos[want:]...)...)
	}
	if dash != want || len(pos) < want+2 {
		fmt.Fprintf(stderr, "endpointd %s: want %s -- CMD [ARGS...]\n%s", name, map[bool]string{false: "NAME", true: "NAME VALUE"}[election], lockUsage)
		return exitUsage
	}
	command := pos[want+1:]

	// Signals: while waiting they end the wait; once CMD runs they are passed
	// to it.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	waiting := make(chan struct{})
	go func() {
		defer close(waiting)
		select {
		case <-sigs:
			cancel()
		case <-wctx.Done():
		}
	}()

	opts := []client.HoldOption{client.HoldTTL(*ttl)}
	var (
		h   *client.Hold
		err error
		env string
	)
	if election {
		env = "ENDPOINTD_ELECTION_"
		h, err = c.Campaign(wctx, pos[0], []byte(pos[1]), opts...)
	} else {
		env = "ENDPOINTD_LOCK_"
		if *wait >= 0 {
			opts = append(opts, client.LockWait(*wait))
		}
		h, err = c.Lock(wctx, pos[0], opts...)
	}
	if err != nil {
		var e *client.Error
		switch {
		case errors.Is(err, client.ErrLocked) && errors.As(err, &e):
			fmt.Fprintf(stderr, "endpointd lock: %s is held by %s (revision %d); not running the command\n", pos[0], e.HolderKey, e.HolderRevision)
			return exitFailure
		case wctx.Err() != nil && ctx.Err() == nil:
			fmt.Fprintf(stderr, "endpointd %s: interrupted while waiting; not running the command\n", name)
			return exitFailure
		}
		return kvFail(stderr, err)
	}
	defer h.Release()
	cancel() // the wait is over: from here on signals go to the command
	<-waiting

	cmd := exec.Command(command[0], command[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, stdout, stderr
	cmd.Env = append(os.Environ(), env+"KEY="+h.Key, env+"REVISION="+strconv.FormatInt(h.Revision, 10))
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(stderr, "endpointd %s: %v\n", name, err)
		return 127
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	lost := false
	for {
		select {
		case s := <-sigs:
			cmd.Process.Signal(s)
			continue
		case <-h.Lost():
			lost = true
			fmt.Fprintf(stderr, "endpointd %s: the hold on %s was lost (%v); stopping the command\n", name, pos[0], h.Err())
			cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-done:
			case <-time.After(*grace):
				cmd.Process.Kill()
				<-done
			}
		case <-done:
		}
		break
	}
	if lost {
		return exitUnavailable
	}
	return exitStatus(cmd.ProcessState)
}

// exitStatus is the shell's: the exit code, or 128+N for a signal N.
func exitStatus(ps *os.ProcessState) int {
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ps.ExitCode()
}

func observeLeader(ctx context.Context, c *client.Client, name string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	for l, err := range c.Observe(ctx, name) {
		if err != nil {
			return kvFail(stderr, err)
		}
		fmt.Fprintf(stdout, "%s %d %s\n", l.Key, l.Revision, l.Value)
	}
	return exitOK
}
