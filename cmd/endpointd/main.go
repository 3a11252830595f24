// Command endpointd is the endpointd agent and its command-line client.
// See README.md; every subcommand lives in its own file of this package.
package main

import (
	"context"
	"os"

	"udp_iaasd/agent"
)

func main() {
	os.Exit(asMain(os.Args[1:]))
}

// asMain is main without the exit, shared with tests that start the test
// binary as endpointd (TestMain). Only the agent's own process gets the
// agent's runtime settings; the client subcommands and dev keep Go's.
func asMain(args []string) int {
	if len(args) > 0 && args[0] == "run" {
		agent.TuneRuntime()
	}
	return run(context.Background(), args, os.Stdin, os.Stdout, os.Stderr)
}
