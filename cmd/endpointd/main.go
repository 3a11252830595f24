// Command endpointd is the endpointd agent and its command-line client.
// See README.md; every subcommand lives in its own file of this package.
package main

import (
	"context"
	"os"
)

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}
