package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"runtime/debug"
	"strings"
)

// Exit codes shared by the subcommands (CONFIG.md, sysexits for config).
const (
	exitOK          = 0
	exitFailure     = 1 // invalid input (validate), key absent or condition failed (kv), agent failure (run)
	exitUsage       = 2
	exitUnavailable = 3  // the agent or etcd is unavailable (kv, status); a hold was lost (lock, elect)
	exitConfig      = 78 // EX_CONFIG: run could not start for its config; a client command's -config is unusable
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "v0.1.0"

// releaseDate is the date of the release version names (the top entry of
// packaging/changelog.yml; a packaging test holds the man page to both).
const releaseDate = "2026-12-02"

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
	case "render":
		return cmdRender(ctx, rest, stdout, stderr)
	case "completion":
		return cmdCompletion(rest, stdout, stderr)
	case "man":
		return cmdMan(rest, stdout, stderr)
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

// A command is one of endpointd's commands as its usage, the man page and
// the shell completions describe it. flags is the very function the command
// defines its flags with, so none of those can drift from the code.
type command struct {
	name    string // "run", "kv put"
	args    string // what follows the flags in its synopsis
	summary string
	flags   func(fs *flag.FlagSet)
}

// commands in the order usage and the man page list them.
var commands = []command{
	{"run", "", "run the agent (what the systemd unit starts)", func(fs *flag.FlagSet) { runFlags(fs) }},
	{"validate", "[ENDPOINTS_FILE]", "check config.yaml and an endpoints file offline", func(fs *flag.FlagSet) { validateFlags(fs) }},
	{"kv get", "KEY", "print KEY's value, byte for byte", kvFlags(kvGet)},
	{"kv put", "KEY [VALUE]", "write VALUE (or stdin) to KEY", kvFlags(kvPut)},
	{"kv del", "KEY", "delete KEY (or every key under it)", kvFlags(kvDel)},
	{"kv ls", "[PREFIX]", "list the keys under PREFIX", kvFlags(kvLs)},
	{"kv watch", "KEY", "print one JSON event per line until interrupted", kvFlags(kvWatch)},
	{"kv txn", "", "run the /v1/txn body on stdin, print the answer", kvFlags(kvTxn)},
	{"lock", "NAME -- CMD [ARGS...]", "run CMD while holding the lock NAME", func(fs *flag.FlagSet) { holdFlags(fs, false) }},
	{"elect", "NAME VALUE -- CMD [ARGS...] | -observe NAME", "run CMD while leader of the election NAME; or follow its leader", func(fs *flag.FlagSet) { holdFlags(fs, true) }},
	{"status", "", "show the agent's status", func(fs *flag.FlagSet) { statusFlags(fs) }},
	{"render", "", "keep files rendered from etcd through the agent; reload their services", func(fs *flag.FlagSet) { renderFlags(fs) }},
	{"dev", "", "a demo: etcd in-process, the agent, lines to try (not in -tags nodev builds)", func(fs *flag.FlagSet) { devFlags(fs) }},
	{"completion", "bash|zsh", "print the shell completion script (fish is not supported)", nil},
	{"man", "", "print the man page (roff)", nil},
	{"version", "", "print the version", nil},
}

// usage prints each command's synopsis, its flags included.
func usage(w io.Writer) {
	fmt.Fprint(w, "usage: endpointd <command> [flags] [arguments]\n\ncommands:\n")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-13s %s\n", c.name, c.summary)
		if syn := c.synopsis(); syn != "" {
			fmt.Fprintf(w, "  %-13s   %s\n", "", syn)
		}
	}
	fmt.Fprint(w, "\nRun \"endpointd <command> -h\" for a command's flags; \"endpointd man\" prints the manual.\n")
}

// flagSet is c's flags, defined by the command's own function.
func (c command) flagSet() *flag.FlagSet {
	fs := flag.NewFlagSet("endpointd "+c.name, flag.ContinueOnError)
	if c.flags != nil {
		c.flags(fs)
	}
	return fs
}

// synopsis is c's flags in brackets, then its arguments:
// "[-config PATH] [ENDPOINTS_FILE]".
func (c command) synopsis() string {
	var parts []string
	c.flagSet().VisitAll(func(f *flag.Flag) {
		if name := flagArg(f); name != "" {
			parts = append(parts, "[-"+f.Name+" "+name+"]")
		} else {
			parts = append(parts, "[-"+f.Name+"]")
		}
	})
	if c.args != "" {
		parts = append(parts, c.args)
	}
	return strings.Join(parts, " ")
}

// flagArg is the placeholder for f's value ("" for a boolean flag): the
// backquoted word of its usage, as flag.PrintDefaults takes it, else its type.
func flagArg(f *flag.Flag) string {
	if b, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && b.IsBoolFlag() {
		return ""
	}
	name, _ := flag.UnquoteUsage(f)
	return strings.ToUpper(name)
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

// commandUsage prints one command's usage the same way for every command:
// its synopsis, what it does, and each flag with its description. name is
// as in commands ("kv put").
func commandUsage(w io.Writer, name string) {
	for _, c := range commands {
		if c.name != name {
			continue
		}
		fmt.Fprintf(w, "usage: endpointd %s %s\n\n%s.\n", c.name, c.synopsis(), c.summary)
		fs := c.flagSet()
		n := 0
		fs.VisitAll(func(*flag.Flag) { n++ })
		if n > 0 {
			fmt.Fprint(w, "\nflags:\n")
			fs.SetOutput(w)
			fs.PrintDefaults()
		}
		fmt.Fprint(w, "\nexit codes: 0 ok, 1 failure, 2 usage, 3 agent or etcd unavailable, 78 unusable config (\"endpointd man\" says which command uses which).\n")
		return
	}
	usage(w)
}

// parseFlags parses a subcommand's flags, printing errors and usage to
// stderr; -h prints the command's usage and is exit 0. It returns the exit
// code to use when parsing did not succeed.
func parseFlags(fs *flag.FlagSet, args []string, stderr io.Writer) (int, bool) {
	fs.SetOutput(stderr)
	fs.Usage = func() { commandUsage(fs.Output(), strings.TrimPrefix(fs.Name(), "endpointd ")) }
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK, false
		}
		return exitUsage, false
	}
	return 0, true
}

// devFlags defines dev's flags. It is here, not in dev.go, so that a nodev
// build documents the same command line.
func devFlags(fs *flag.FlagSet) (members *int, verbose *bool) {
	return fs.Int("members", 3, "the `number` of etcd members to run"), fs.Bool("v", false, "log at debug level")
}
