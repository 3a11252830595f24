package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"runtime/debug"
)

// Exit codes shared by the subcommands (CONFIG.md, sysexits for config).
const (
	exitOK          = 0
	exitFailure     = 1 // invalid input (validate), key absent or condition failed (kv), agent failure (run)
	exitUsage       = 2
	exitUnavailable = 3  // the agent or etcd is unavailable (kv, status); a hold was lost (lock, elect)
	exitConfig      = 78 // EX_CONFIG: run could not start for its config
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "v0.1.0"

// run is the whole command line: main only hands it the process's streams.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return exitUsage
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "run":
		return cmdRun(ctx, rest, stderr)
	case "validate":
		return cmdValidate(rest, stdout, stderr)
	case "kv":
		return cmdKV(ctx, rest, stdin, stdout, stderr)
	case "status":
		return cmdStatus(ctx, rest, stdout, stderr)
	case "lock":
		return cmdHold(ctx, false, rest, stdout, stderr)
	case "elect":
		return cmdHold(ctx, true, rest, stdout, stderr)
	case "dev":
		return cmdDev(ctx, rest, stdout, stderr)
	case "version", "-version", "--version":
		fmt.Fprintln(stdout, "endpointd", fullVersion())
		return exitOK
	case "help", "-h", "-help", "--help":
		usage(stdout)
		return exitOK
	}
	fmt.Fprintf(stderr, "endpointd: unknown command %q\n\n", cmd)
	usage(stderr)
	return exitUsage
}

func usage(w io.Writer) {
	fmt.Fprint(w, `usage: endpointd <command> [flags]

commands:
  run      [-config PATH]                       run the agent (what the systemd unit starts)
  validate [-config PATH] [ENDPOINTS_FILE]      check config.yaml and an endpoints file offline
  kv       get|put|del|ls|watch …               read and write etcd through the agent's socket
  kv txn                                        run a /v1/txn body from stdin
  lock     [-ttl D] [-wait D] NAME -- CMD …     run CMD while holding the lock NAME
  elect    NAME VALUE -- CMD … | -observe NAME  run CMD while leader; or follow the leader
  status   [-json]                              show the agent's status
  dev                                           a demo: 3-member etcd in-process, the agent, lines to try
  version                                       print the version

Run "endpointd <command> -h" for a command's flags.
`)
}

// fullVersion adds the VCS revision the binary was built from, when known.
func fullVersion() string {
	v := version
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				v += " (" + s.Value[:12] + ")"
			}
		}
	}
	return v
}

// parseFlags parses a subcommand's flags, printing errors and usage to
// stderr. It returns the exit code to use when parsing did not succeed.
func parseFlags(fs *flag.FlagSet, args []string, stderr io.Writer) (int, bool) {
	fs.SetOutput(stderr)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK, false
		}
		return exitUsage, false
	}
	return 0, true
}
