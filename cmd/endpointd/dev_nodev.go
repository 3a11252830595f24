//go:build nodev

package main

import (
	"context"
	"fmt"
	"io"
)

// cmdDev in a nodev build: the etcd server that dev runs is left out of
// this binary (packagers build the agent with -tags nodev), so dev says so.
func cmdDev(_ context.Context, _ []string, _, stderr io.Writer) int {
	fmt.Fprintln(stderr, "endpointd dev: this binary was built without the dev cluster (-tags nodev); "+
		"run a full build for it, e.g. go run ./cmd/endpointd dev")
	return exitUsage
}
