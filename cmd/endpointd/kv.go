package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"
	"unicode"
	"unicode/utf8"

	"udp_iaasd/api"
	"udp_iaasd/client"
	"udp_iaasd/config"
)

const kvUsage = `usage:
  endpointd kv get KEY                      print KEY's value, byte for byte
  endpointd kv put KEY [VALUE]              write VALUE (or stdin) to KEY
         [-ttl D] [-if-revision N | -if-absent | -if-exists]
  endpointd kv del KEY [-prefix] [-if-revision N]
  endpointd kv ls [PREFIX] [-limit N] [-json]
  endpointd kv watch KEY [-prefix] [-rev N] one JSON event per line until interrupted
  endpointd kv txn                          run the /v1/txn body on stdin, print the answer
                                            (exit 0: the compares held, 1: they did not)

common flags: -socket PATH (else $ENDPOINTD_SOCKET, else socket.path of -config, else the default)
exit codes: 0 ok, 1 key absent or condition failed, 2 usage or a request refused as malformed,
            3 agent or etcd unavailable
`

func cmdKV(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, kvUsage)
		return exitUsage
	}
	sub, args := args[0], args[1:]
	if isHelp(sub) {
		fmt.Fprint(stdout, kvUsage)
		return exitOK
	}
	cmd, ok := kvCommands[sub]
	if !ok {
		fmt.Fprintf(stderr, "endpointd kv: unknown subcommand %q\n%s", sub, kvUsage)
		return exitUsage
	}
	flags := flag.NewFlagSet("endpointd kv "+sub, flag.ContinueOnError)
	flags.Usage = func() { commandUsage(flags.Output(), "kv "+sub) }
	at := defineAgentFlags(flags)
	run := cmd.setup(flags)
	pos, code, ok := parseInterleaved(flags, args, stderr)
	if !ok {
		return code
	}
	if len(pos) < cmd.minArgs || len(pos) > cmd.maxArgs {
		fmt.Fprintf(stderr, "endpointd kv %s: wrong number of arguments\n%s", sub, kvUsage)
		return exitUsage
	}
	c, code, ok := at.clientFor(flags, client.Options{}, stderr)
	if !ok {
		return code
	}
	return run(ctx, c, pos, kvIO{stdin, stdout, stderr})
}

// kvFlags defines the flags of the kv subcommand that setup runs.
func kvFlags(setup func(*flag.FlagSet) kvRun) func(*flag.FlagSet) {
	return func(fs *flag.FlagSet) {
		defineAgentFlags(fs)
		setup(fs)
	}
}

// kvCommand is one `endpointd kv` subcommand: how many positional
// arguments it takes, and a setup that defines its flags and returns what
// runs it once they are parsed.
type kvCommand struct {
	minArgs, maxArgs int
	setup            func(flags *flag.FlagSet) kvRun
}

type kvRun func(ctx context.Context, c *client.Client, pos []string, std kvIO) int

type kvIO struct {
	in          io.Reader
	out, errOut io.Writer
}

var kvCommands = map[string]kvCommand{
	"get":   {1, 1, kvGet},
	"put":   {1, 2, kvPut},
	"del":   {1, 1, kvDel},
	"ls":    {0, 1, kvLs},
	"watch": {1, 1, kvWatch},
	"txn":   {0, 0, kvTxn},
}

func kvTxn(*flag.FlagSet) kvRun {
	return func(ctx context.Context, c *client.Client, pos []string, std kvIO) int {
		body, err := io.ReadAll(std.in)
		if err != nil {
			fmt.Fprintf(std.errOut, "endpointd kv txn: reading the transaction from stdin: %v\n", err)
			return exitUsage
		}
		answer, succeeded, err := c.TxnJSON(ctx, body)
		if err != nil {
			return kvFail(std.errOut, err)
		}
		std.out.Write(answer)
		if !succeeded {
			return exitFailure
		}
		return exitOK
	}
}

// ttlFlag is a TTL given as a Go duration (30s, 1h) or as whole seconds
// (30); 0 is none. kv put takes what lock and elect take and what the HTTP
// API's ttl=SECONDS takes. etcd leases are whole seconds: a fraction is
// refused rather than rounded.
type ttlFlag time.Duration

func (t *ttlFlag) String() string { return time.Duration(*t).String() }

func (t *ttlFlag) Set(s string) error {
	d, err := time.ParseDuration(s)
	if err != nil {
		n, nerr := strconv.ParseInt(s, 10, 64)
		if nerr != nil {
			return fmt.Errorf("want a duration such as 30s or whole seconds, got %q", s)
		}
		d = time.Duration(n) * time.Second
	}
	if d < 0 || d%time.Second != 0 {
		return fmt.Errorf("want whole seconds (an etcd lease's unit; 0 for no TTL), got %s", d)
	}
	*t = ttlFlag(d)
	return nil
}

// readFlags are the flags of get and ls that choose how fresh an answer
// must be (API.md "Reading while etcd is away").
func readFlags(flags *flag.FlagSet) func() []client.Option {
	stale := flags.Bool("stale", false, "answer from the agent's copy of a cached prefix at once, whatever its age")
	ifError := flags.Duration("stale-if-error", 0, "if etcd cannot answer, answer from the agent's copy when it was confirmed at most `D` ago (e.g. 10m)")
	minRev := flags.Int64("min-revision", 0, "refuse an answer older than store revision `N`")
	return func() []client.Option {
		var opts []client.Option
		if *stale {
			opts = append(opts, client.Stale())
		}
		if *ifError > 0 {
			opts = append(opts, client.StaleIfError(*ifError))
		}
		if *minRev > 0 {
			opts = append(opts, client.MinRevision(*minRev))
		}
		return opts
	}
}

// noteStale tells stderr that an answer came from a copy that is not known
// to be current, so that a person does not take it for etcd's.
func noteStale(w io.Writer, f client.Freshness) {
	if f.FromCache && f.Stale {
		fmt.Fprintf(w, "(stale: from the agent's copy, last confirmed current %s ago)\n", f.Age)
	}
}

func kvGet(flags *flag.FlagSet) kvRun {
	readOpts := readFlags(flags)
	return func(ctx context.Context, c *client.Client, pos []string, std kvIO) int {
		kv, err := c.Get(ctx, pos[0], readOpts()...)
		if err != nil {
			return kvFail(std.errOut, err)
		}
		std.out.Write(kv.Value)
		noteStale(std.errOut, kv.Freshness)
		return exitOK
	}
}

func kvPut(flags *flag.FlagSet) kvRun {
	var ttl ttlFlag
	flags.Var(&ttl, "ttl", "`D` until the key expires: a duration such as 30s or 1h, or whole seconds")
	ifRevision := flags.Int64("if-revision", 0, "write only if the key's mod_revision is `N`")
	ifAbsent := flags.Bool("if-absent", false, "write only if the key does not exist")
	ifExists := flags.Bool("if-exists", false, "write only if the key exists")
	return func(ctx context.Context, c *client.Client, pos []string, std kvIO) int {
		var value []byte
		if len(pos) == 2 {
			value = []byte(pos[1])
		} else {
			var err error
			if value, err = io.ReadAll(std.in); err != nil {
				fmt.Fprintf(std.errOut, "endpointd kv put: reading the value from stdin: %v\n", err)
				return exitUsage
			}
		}
		var opts []client.Option
		if ttl > 0 {
			opts = append(opts, client.TTL(time.Duration(ttl)))
		}
		switch {
		case countTrue(*ifRevision > 0, *ifAbsent, *ifExists) > 1:
			fmt.Fprintln(std.errOut, "endpointd kv put: -if-revision, -if-absent and -if-exists exclude each other")
			return exitUsage
		case *ifRevision > 0:
			opts = append(opts, client.IfModRevision(*ifRevision))
		case *ifAbsent:
			opts = append(opts, client.IfAbsent())
		case *ifExists:
			opts = append(opts, client.IfExists())
		}
		r, err := c.Put(ctx, pos[0], value, opts...)
		if err != nil {
			return kvFail(std.errOut, err)
		}
		fmt.Fprintf(std.out, "revision %d\n", r)
		return exitOK
	}
}

func kvDel(flags *flag.FlagSet) kvRun {
	prefix := flags.Bool("prefix", false, "delete every key under KEY")
	ifRevision := flags.Int64("if-revision", 0, "delete only if the key's mod_revision is `N`")
	return func(ctx context.Context, c *client.Client, pos []string, std kvIO) int {
		var opts []client.Option
		if *prefix {
			opts = append(opts, client.WithPrefix())
		}
		if *ifRevision > 0 {
			opts = append(opts, client.IfModRevision(*ifRevision))
		}
		r, n, err := c.Delete(ctx, pos[0], opts...)
		if err != nil {
			return kvFail(std.errOut, err)
		}
		fmt.Fprintf(std.out, "deleted %d (revision %d)\n", n, r)
		return exitOK
	}
}

func kvLs(flags *flag.FlagSet) kvRun {
	limit := flags.Int64("limit", 0, "list at most `N` keys")
	asJSON := flags.Bool("json", false, "print keys, values and revisions as JSON lines")
	readOpts := readFlags(flags)
	return func(ctx context.Context, c *client.Client, pos []string, std kvIO) int {
		p := ""
		if len(pos) == 1 {
			p = pos[0]
		}
		opts := readOpts()
		if *limit > 0 {
			opts = append(opts, client.Limit(*limit))
		}
		if !*asJSON {
			opts = append(opts, client.KeysOnly())
		}
		res, err := c.List(ctx, p, opts...)
		if err != nil {
			return kvFail(std.errOut, err)
		}
		for _, kv := range res.KVs {
			if *asJSON {
				printJSONLine(std.out, "", kv)
			} else {
				fmt.Fprintln(std.out, listedKey(kv.Key))
			}
		}
		if res.More {
			fmt.Fprintf(std.errOut, "(%d of %d keys shown)\n", len(res.KVs), res.Count)
		}
		noteStale(std.errOut, res.Freshness)
		return exitOK
	}
}

func kvWatch(flags *flag.FlagSet) kvRun {
	prefix := flags.Bool("prefix", false, "watch every key under KEY")
	rev := flags.Int64("rev", 0, "start at revision `N` (default: changes from now)")
	return func(ctx context.Context, c *client.Client, pos []string, std kvIO) int {
		ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
		defer stop()
		var opts []client.Option
		if *prefix {
			opts = append(opts, client.WithPrefix())
		}
		if *rev > 0 {
			opts = append(opts, client.AtRevision(*rev))
		}
		for ev, err := range c.Watch(ctx, pos[0], opts...) {
			if err != nil {
				return kvFail(std.errOut, err)
			}
			if ev.Type == api.LineProgress {
				continue
			}
			printJSONLine(std.out, ev.Type, ev.KV)
		}
		return exitOK
	}
}

// printJSONLine prints a key-value (or an event, with typ) as the HTTP
// API's listings and watch streams do, fields in the same order: strings
// when UTF-8, base64 otherwise (api.AppendBytesField).
func printJSONLine(w io.Writer, typ string, kv client.KV) {
	b := []byte{'{'}
	if typ != "" {
		b = append(b, `"type":`...)
		b = api.AppendString(b, []byte(typ))
		b = append(b, ',')
	}
	b = api.AppendBytesField(b, "key", kv.Key)
	if typ == api.LineDelete {
		b = fmt.Appendf(b, `,"mod_revision":%d}`, kv.ModRevision)
	} else {
		b = append(b, ',')
		b = api.AppendBytesField(b, "value", kv.Value)
		b = fmt.Appendf(b, `,"create_revision":%d,"mod_revision":%d,"version":%d,"lease":%d}`,
			kv.CreateRevision, kv.ModRevision, kv.Version, kv.Lease)
	}
	w.Write(append(b, '\n'))
}

// listedKey is a key as kv ls prints it, one a line: as it is, or quoted
// (Go syntax) when it would not read back as one line of itself — a newline
// or other control character, bytes that are not UTF-8, or a leading quote.
func listedKey(key []byte) string {
	if utf8.Valid(key) && !bytes.ContainsFunc(key, unicode.IsControl) && !bytes.HasPrefix(key, []byte(`"`)) {
		return string(key)
	}
	return strconv.Quote(string(key))
}

func countTrue(bs ...bool) int {
	n := 0
	for _, b := range bs {
		if b {
			n++
		}
	}
	return n
}

// kvFail prints err and maps it to the kv exit codes.
func kvFail(stderr io.Writer, err error) int {
	printErr(stderr, err)
	switch {
	case errors.Is(err, client.ErrNotFound), errors.Is(err, client.ErrPreconditionFailed):
		return exitFailure
	case errors.Is(err, client.ErrUnavailable), errors.Is(err, client.ErrTimeout), errors.Is(err, client.ErrTooManyRequests):
		return exitUnavailable
	case errors.Is(err, client.ErrInvalidArgument), errors.Is(err, client.ErrTooLarge):
		return exitUsage
	}
	return exitFailure
}

// printErr prints a client command's error, with what to try when the
// agent could not be reached at all.
func printErr(stderr io.Writer, err error) {
	var ae *client.Error
	if errors.As(err, &ae) && errors.Is(err, client.ErrTooManyRequests) {
		fmt.Fprintf(stderr, "endpointd: rate limited, retry in %ds (%s)\n", int64(max(ae.RetryAfter, time.Second)/time.Second), ae.Message)
		return
	}
	fmt.Fprintln(stderr, err)
	var ue *client.UnreachableError
	if errors.As(err, &ue) {
		fmt.Fprintln(stderr, "is endpointd running there? -socket PATH, $ENDPOINTD_SOCKET or -config name another socket")
	}
}

// agentFlags are the flags of every command that talks to the agent: where
// its socket is.
type agentFlags struct {
	socket, config *string
}

func defineAgentFlags(fs *flag.FlagSet) *agentFlags {
	return &agentFlags{
		socket: fs.String("socket", "", "the agent's socket `path` (else $ENDPOINTD_SOCKET, else socket.path of -config)"),
		config: fs.String("config", config.DefaultPath, "`path` of the config.yaml whose socket.path to use"),
	}
}

// socketPath: -socket, else $ENDPOINTD_SOCKET, else socket.path of the
// config.yaml that -config names (or the default one, when it exists), else
// the default socket. A -config given on the command line that cannot be
// used is the error — never a quiet fall back to the default socket; the
// default config.yaml, unreadable or invalid, is passed over.
func (a *agentFlags) socketPath(flags *flag.FlagSet) (string, error) {
	if *a.socket != "" {
		return *a.socket, nil
	}
	if s := os.Getenv("ENDPOINTD_SOCKET"); s != "" {
		return s, nil
	}
	cfg, _, err := loadConfig(flags, *a.config)
	if err == nil {
		return cfg.Socket.Path, nil
	}
	explicit := false
	flags.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "config" })
	if explicit {
		return "", err
	}
	return client.DefaultSocket, nil
}

// clientFor is the client of the agent the flags name; false (and the
// exit code, the reason on stderr) when -config cannot be used.
func (a *agentFlags) clientFor(flags *flag.FlagSet, opts client.Options, stderr io.Writer) (*client.Client, int, bool) {
	sock, err := a.socketPath(flags)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", flags.Name(), err)
		return nil, exitConfig, false
	}
	return client.New(sock, opts), exitOK, true
}

// parseInterleaved parses flags that may come before or after positional
// arguments (kv del KEY -prefix), as CONFIG.md's synopses write them. After
// "--" everything is positional.
func parseInterleaved(flags *flag.FlagSet, args []string, stderr io.Writer) ([]string, int, bool) {
	flags.SetOutput(stderr)
	var pos []string
	for {
		if err := flags.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, exitOK, false
			}
			return nil, exitUsage, false
		}
		rest := flags.Args()
		if len(rest) == 0 {
			return pos, 0, true
		}
		if consumed := len(args) - len(rest); consumed > 0 && args[consumed-1] == "--" {
			return append(pos, rest...), 0, true
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}
