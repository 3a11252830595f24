package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"udp_iaasd/client"
)

// statusFlags defines status's flags.
func statusFlags(fs *flag.FlagSet) (at *agentFlags, asJSON *bool) {
	return defineAgentFlags(fs), fs.Bool("json", false, "print the raw /v1/status JSON")
}

// cmdStatus prints /v1/status for a person (a short table) or, with -json,
// for a script. Exit 0 when the agent is ready, 1 when it answers but is not
// ready, 3 when it cannot be reached.
func cmdStatus(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	flags := flag.NewFlagSet("endpointd status", flag.ContinueOnError)
	at, asJSON := statusFlags(flags)
	if code, ok := parseFlags(flags, args, stderr); !ok {
		return code
	}
	if flags.NArg() > 0 {
		fmt.Fprintf(stderr, "endpointd status: unexpected arguments %q\n", flags.Args())
		return exitUsage
	}
	c, code, ok := at.clientFor(flags, client.Options{RetryMax: -1}, stderr)
	if !ok {
		return code
	}
	st, raw, err := c.Status(ctx)
	if err != nil {
		printErr(stderr, err)
		return exitUnavailable
	}
	if *asJSON {
		fmt.Fprintf(stdout, "%s\n", raw)
	} else {
		printStatus(stdout, st)
	}
	if !st.Ready {
		return exitFailure
	}
	return exitOK
}

// plural is "1 reload", "2 reloads".
func plural(n uint64, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

func printStatus(w io.Writer, st *client.Status) {
	state := "ready"
	if !st.Ready {
		state = "NOT READY"
	}
	fmt.Fprintf(w, "endpointd %s: %s\n\n", st.Version, state)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	dash := func(s string) string {
		if s == "" {
			return "-"
		}
		return s
	}
	sha := st.Config.SHA256
	if len(sha) > 12 {
		sha = sha[:12]
	}
	fmt.Fprintf(tw, "endpoints file\t%s\n", st.Config.EndpointsFile)
	fmt.Fprintf(tw, "applied\t%s (sha256 %s, %s)\n", dash(st.Config.AppliedAt), dash(sha), plural(st.Config.Reloads, "reload"))
	fmt.Fprintf(tw, "last error\t%s\n", dash(st.Config.LastError))
	conn := "disconnected"
	if st.Etcd.Connected {
		conn = "connected"
	}
	leader := st.Etcd.Leader
	if leader != "" && !strings.Contains(leader, "://") {
		// The agent names the leader by its client URL when it is one of
		// the endpoints, by its member ID when it is not.
		leader = "member " + leader + " (not in the endpoint list)"
	}
	fmt.Fprintf(tw, "etcd\t%s, cluster %s, leader %s, %s\n", conn, dash(st.Etcd.ClusterID), dash(leader), plural(st.Etcd.Reconnects, "reconnect"))
	tw.Flush()
	if len(st.Etcd.Members) > 0 {
		fmt.Fprintln(w)
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "ENDPOINT\tHEALTH\tLATENCY\tERROR")
		for _, m := range st.Etcd.Members {
			h, latency := "ok", fmt.Sprintf("%.1fms", m.LatencyMS)
			if !m.Healthy {
				h, latency = "DOWN", "-" // no answer: no latency to show
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", m.Endpoint, h, latency, m.Error)
		}
		tw.Flush()
	}
}
