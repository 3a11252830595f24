//go:build nodev

package main

import (
	"context"
	"fmt"
	"io"
)

// cmdDev in a nodev build: the etcd server that dev runs is left out of
// this binary (packagers build the agent with -tags nodev), so dev says so.
// -h documents the command as a full build has it, and says so too.
func cmdDev(_ context.Context, args []string, _, stderr io.Writer) int {
	if len(args) == 1 && isHelp(args[0]) {
		commandUsage(stderr, "dev")
		fmt.Fprintln(stderr, "\nThis binary was built without the dev cluster (-tags nodev): run a full build for it.")
		return exitOK
	}
	fmt.Fprintln(stderr, "endpointd dev: this binary was built without the dev cluster (-tags nodev); "+
		"run a full build for it, e.g. go run ./cmd/endpointd dev")
	return exitUsage
}
