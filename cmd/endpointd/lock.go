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
	"slices"
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

// cmdHold is `endpointd lock` (election false) and `endpointd elect`:
// parse the command line, acquire the hold, run and supervise CMD.
func cmdHold(ctx context.Context, election bool, args []string, stdout, stderr io.Writer) int {
	hc, code := parseHold(election, args, stderr)
	if hc == nil {
		return code
	}
	c := client.New(hc.socket, client.Options{})
	if hc.observe {
		return observeLeader(ctx, c, hc.name, stdout, stderr)
	}
	// Signals: while waiting they end the wait; once CMD runs they are passed
	// to it.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	h, code := hc.acquire(ctx, c, sigs, stderr)
	if h == nil {
		return code
	}
	defer h.Release()
	return hc.supervise(h, sigs, stdout, stderr)
}

// holdCommand is a parsed `endpointd lock` or `endpointd elect`.
type holdCommand struct {
	verb     string // lock or elect
	election bool
	socket   string
	observe  bool // elect -observe NAME
	name     string
	value    string   // elect's VALUE
	command  []string // CMD [ARGS...]
	ttl      time.Duration
	grace    time.Duration
	wait     time.Duration // lock's -wait; < 0: no limit
}

// holderName names a lock's holder: who it said it is, and its key and
// fencing token; a holder that said nothing (etcdctl lock) by its key.
func holderName(e *client.Error) string {
	if e.Holder != "" {
		return fmt.Sprintf("%s (key %s, revision %d)", e.Holder, e.HolderKey, e.HolderRevision)
	}
	return fmt.Sprintf("%s (revision %d)", e.HolderKey, e.HolderRevision)
}

// parseHold parses the command line; nil and the exit code when there is
// nothing to run (-h, or a usage error, already explained on stderr).
func parseHold(election bool, args []string, stderr io.Writer) (*holdCommand, int) {
	hc := &holdCommand{verb: "lock", election: election}
	if election {
		hc.verb = "elect"
	}
	flags := flag.NewFlagSet("endpointd "+hc.verb, flag.ContinueOnError)
	flags.SetOutput(stderr)
	flags.Usage = func() { commandUsage(stderr, hc.verb) }
	o := holdFlags(flags, election)
	if err := flags.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, exitOK
		}
		return nil, exitUsage
	}
	sock, err := o.agent.socketPath(flags)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", flags.Name(), err)
		return nil, exitConfig
	}
	hc.socket, hc.observe, hc.ttl, hc.grace, hc.wait = sock, *o.observe, *o.ttl, *o.grace, -1
	if o.wait != nil {
		hc.wait = *o.wait
	}
	pos := flags.Args()
	if hc.observe {
		if len(pos) != 1 {
			fmt.Fprint(stderr, "endpointd elect -observe: give exactly one NAME\n"+lockUsage)
			return nil, exitUsage
		}
		hc.name = pos[0]
		return hc, exitOK
	}
	want := 1
	if election {
		want = 2
	}
	dash := slices.Index(pos, "--")
	if dash < 0 && len(pos) > want {
		dash = want // flag.Parse consumed the "--" itself
		pos = append(pos[:want:want], append([]string{"--"}, pos[want:]...)...)
	}
	if dash != want || len(pos) < want+2 {
		fmt.Fprintf(stderr, "endpointd %s: want %s -- CMD [ARGS...]\n%s", hc.verb, map[bool]string{false: "NAME", true: "NAME VALUE"}[election], lockUsage)
		return nil, exitUsage
	}
	hc.name, hc.command = pos[0], pos[want+1:]
	if election {
		hc.value = pos[1]
	}
	return hc, exitOK
}

// acquire takes the lock or leadership, waiting as -wait says; a signal
// ends the wait. nil and the exit code when it was not taken.
func (hc *holdCommand) acquire(ctx context.Context, c *client.Client, sigs <-chan os.Signal, stderr io.Writer) (*client.Hold, int) {
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
	// The wait is over when acquire returns: from then on signals go to
	// the command, not to this goroutine.
	defer func() { cancel(); <-waiting }()

	opts := []client.HoldOption{client.HoldTTL(hc.ttl)}
	var (
		h   *client.Hold
		err error
	)
	var e *client.Error
	if hc.election {
		h, err = c.Campaign(wctx, hc.name, []byte(hc.value), opts...)
	} else {
		if hc.wait != 0 {
			// Try first, so that a person waiting knows for whom: a lock
			// held elsewhere is named before the wait begins.
			h, err = c.Lock(wctx, hc.name, append(opts, client.LockWait(0))...)
			if err == nil {
				return h, exitOK
			}
			if errors.Is(err, client.ErrLocked) && errors.As(err, &e) {
				fmt.Fprintf(stderr, "endpointd lock: waiting for %s, held by %s\n", hc.name, holderName(e))
			}
		}
		if hc.wait >= 0 {
			opts = append(opts, client.LockWait(hc.wait))
		}
		h, err = c.Lock(wctx, hc.name, opts...)
	}
	if err == nil {
		return h, exitOK
	}
	switch {
	case errors.Is(err, client.ErrLocked) && errors.As(err, &e):
		fmt.Fprintf(stderr, "endpointd lock: %s is held by %s; not running the command\n", hc.name, holderName(e))
		return nil, exitFailure
	case wctx.Err() != nil && ctx.Err() == nil:
		fmt.Fprintf(stderr, "endpointd %s: interrupted while waiting; not running the command\n", hc.verb)
		return nil, exitFailure
	}
	return nil, kvFail(stderr, err)
}

// supervise runs the command while h is held: signals are passed on to it;
// a lost hold stops it (SIGTERM, then SIGKILL after -grace) and exits 3.
// Otherwise the exit status is the command's.
func (hc *holdCommand) supervise(h *client.Hold, sigs <-chan os.Signal, stdout, stderr io.Writer) int {
	env := "ENDPOINTD_LOCK_"
	if hc.election {
		env = "ENDPOINTD_ELECTION_"
	}
	cmd := exec.Command(hc.command[0], hc.command[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, stdout, stderr
	cmd.Env = append(os.Environ(), env+"KEY="+h.Key, env+"REVISION="+strconv.FormatInt(h.Revision, 10))
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(stderr, "endpointd %s: %v\n", hc.verb, err)
		return 127
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	send := func(s os.Signal) {
		if err := cmd.Process.Signal(s); err != nil && !errors.Is(err, os.ErrProcessDone) {
			fmt.Fprintf(stderr, "endpointd %s: signalling the command: %v\n", hc.verb, err)
		}
	}
	lost := false
	var werr error
wait:
	for {
		select {
		case s := <-sigs:
			send(s)
		case <-h.Lost():
			lost = true
			fmt.Fprintf(stderr, "endpointd %s: the hold on %s was lost (%v); stopping the command\n", hc.verb, hc.name, h.Err())
			send(syscall.SIGTERM)
			select {
			case werr = <-waited:
			case <-time.After(hc.grace):
				cmd.Process.Kill()
				werr = <-waited
			}
			break wait
		case werr = <-waited:
			break wait
		}
	}
	// An exit status is the command's answer; anything else (copying its
	// output failed) is worth saying.
	if exitErr := (*exec.ExitError)(nil); werr != nil && !errors.As(werr, &exitErr) {
		fmt.Fprintf(stderr, "endpointd %s: %v\n", hc.verb, werr)
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
