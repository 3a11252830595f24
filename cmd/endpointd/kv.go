package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"
	"unicode/utf8"

	"udp_iaasd/client"
	"udp_iaasd/config"
)

const kvUsage = `usage:
  endpointd kv get KEY                      print KEY's value, byte for byte
  endpointd kv put KEY [VALUE]              write VALUE (or stdin) to KEY
         [-ttl SECONDS] [-if-revision N | -if-absent | -if-exists]
  endpointd kv del KEY [-prefix] [-if-revision N]
  endpointd kv ls [PREFIX] [-limit N] [-json]
  endpointd kv watch KEY [-prefix] [-rev N] one JSON event per line until interrupted

common flags: -socket PATH (else $ENDPOINTD_SOCKET, else socket.path of -config, else the default)
exit codes: 0 ok, 1 key absent or condition failed, 2 usage, 3 agent or etcd unavailable
`

func cmdKV(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, kvUsage)
		return exitUsage
	}
	sub, args := args[0], args[1:]
	flags := flag.NewFlagSet("endpointd kv "+sub, flag.ContinueOnError)
	flags.Usage = func() { fmt.Fprint(flags.Output(), kvUsage) }
	socket := flags.String("socket", "", "the agent's socket")
	configPath := flags.String("config", config.DefaultPath, "config.yaml whose socket.path to use")
	var (
		prefix     = new(bool)
		rev        = new(int64)
		ttl        = new(int64)
		ifRevision = new(int64)
		ifAbsent   = new(bool)
		ifExists   = new(bool)
		limit      = new(int64)
		asJSON     = new(bool)
	)
	switch sub {
	case "get":
	case "put":
		flags.Int64Var(ttl, "ttl", 0, "seconds until the key expires")
		flags.Int64Var(ifRevision, "if-revision", 0, "write only if the key's mod_revision is N")
		flags.BoolVar(ifAbsent, "if-absent", false, "write only if the key does not exist")
		flags.BoolVar(ifExists, "if-exists", false, "write only if the key exists")
	case "del":
		flags.BoolVar(prefix, "prefix", false, "delete every key under KEY")
		flags.Int64Var(ifRevision, "if-revision", 0, "delete only if the key's mod_revision is N")
	case "ls":
		flags.Int64Var(limit, "limit", 0, "list at most N keys")
		flags.BoolVar(asJSON, "json", false, "print keys, values and revisions as JSON lines")
	case "watch":
		flags.BoolVar(prefix, "prefix", false, "watch every key under KEY")
		flags.Int64Var(rev, "rev", 0, "start at revision N (default: changes from now)")
	default:
		fmt.Fprintf(stderr, "endpointd kv: unknown subcommand %q\n%s", sub, kvUsage)
		return exitUsage
	}
	pos, code, ok := parseInterleaved(flags, args, stderr)
	if !ok {
		return code
	}
	want := map[string][2]int{"get": {1, 1}, "put": {1, 2}, "del": {1, 1}, "ls": {0, 1}, "watch": {1, 1}}[sub]
	if len(pos) < want[0] || len(pos) > want[1] {
		fmt.Fprintf(stderr, "endpointd kv %s: wrong number of arguments\n%s", sub, kvUsage)
		return exitUsage
	}
	c := client.New(resolveSocket(flags, *socket, *configPath), client.Options{})

	switch sub {
	case "get":
		kv, err := c.Get(ctx, pos[0])
		if err != nil {
			return kvFail(stderr, err)
		}
		stdout.Write(kv.Value)
		return exitOK
	case "put":
		var value []byte
		if len(pos) == 2 {
			value = []byte(pos[1])
		} else {
			var err error
			if value, err = io.ReadAll(stdin); err != nil {
				fmt.Fprintf(stderr, "endpointd kv put: reading the value from stdin: %v\n", err)
				return exitUsage
			}
		}
		var opts []client.Option
		if *ttl > 0 {
			opts = append(opts, client.TTL(time.Duration(*ttl)*time.Second))
		}
		switch {
		case countTrue(*ifRevision > 0, *ifAbsent, *ifExists) > 1:
			fmt.Fprintln(stderr, "endpointd kv put: -if-revision, -if-absent and -if-exists exclude each other")
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
			return kvFail(stderr, err)
		}
		fmt.Fprintf(stdout, "revision %d\n", r)
		return exitOK
	case "del":
		var opts []client.Option
		if *prefix {
			opts = append(opts, client.WithPrefix())
		}
		if *ifRevision > 0 {
			opts = append(opts, client.IfModRevision(*ifRevision))
		}
		r, n, err := c.Delete(ctx, pos[0], opts...)
		if err != nil {
			return kvFail(stderr, err)
		}
		fmt.Fprintf(stdout, "deleted %d (revision %d)\n", n, r)
		return exitOK
	case "ls":
		p := ""
		if len(pos) == 1 {
			p = pos[0]
		}
		var opts []client.Option
		if *limit > 0 {
			opts = append(opts, client.Limit(*limit))
		}
		if !*asJSON {
			opts = append(opts, client.KeysOnly())
		}
		res, err := c.List(ctx, p, opts...)
		if err != nil {
			return kvFail(stderr, err)
		}
		for _, kv := range res.KVs {
			if *asJSON {
				printJSONLine(stdout, "", kv)
			} else {
				fmt.Fprintf(stdout, "%s\n", kv.Key)
			}
		}
		if res.More {
			fmt.Fprintf(stderr, "(%d of %d keys shown)\n", len(res.KVs), res.Count)
		}
		return exitOK
	case "watch":
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
				return kvFail(stderr, err)
			}
			if ev.Type == "PROGRESS" {
				continue
			}
			printJSONLine(stdout, ev.Type, ev.KV)
		}
		return exitOK
	}
	return exitUsage
}

// printJSONLine prints a key-value (or an event, with typ) as the API does:
// strings when UTF-8, base64 otherwise.
func printJSONLine(w io.Writer, typ string, kv client.KV) {
	m := map[string]any{"mod_revision": kv.ModRevision}
	if typ != "" {
		m["type"] = typ
	}
	putBytes := func(name string, b []byte) {
		if utf8.Valid(b) {
			m[name] = string(b)
		} else {
			m[name+"_base64"] = b // encoding/json writes []byte as base64
		}
	}
	putBytes("key", kv.Key)
	if typ != "DELETE" {
		putBytes("value", kv.Value)
		m["create_revision"], m["version"], m["lease"] = kv.CreateRevision, kv.Version, kv.Lease
	}
	b, _ := json.Marshal(m)
	fmt.Fprintf(w, "%s\n", b)
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
	fmt.Fprintln(stderr, err)
	switch {
	case errors.Is(err, client.ErrNotFound), errors.Is(err, client.ErrPreconditionFailed):
		return exitFailure
	case errors.Is(err, client.ErrUnavailable), errors.Is(err, client.ErrTimeout):
		return exitUnavailable
	case errors.Is(err, client.ErrInvalidArgument), errors.Is(err, client.ErrTooLarge):
		return exitUsage
	}
	return exitFailure
}

// resolveSocket: -socket, else $ENDPOINTD_SOCKET, else socket.path of the
// config.yaml that -config names (or the default one, when it exists), else
// the default socket.
func resolveSocket(flags *flag.FlagSet, socket, configPath string) string {
	if socket != "" {
		return socket
	}
	if s := os.Getenv("ENDPOINTD_SOCKET"); s != "" {
		return s
	}
	if cfg, _, err := loadConfig(flags, configPath); err == nil {
		return cfg.Socket.Path
	}
	return client.DefaultSocket
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
