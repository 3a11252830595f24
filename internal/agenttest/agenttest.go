// Package agenttest is the test kit for what runs in front of a cluster:
// the files an agent reads, written the way the tools that own them write
// them. It sits above internal/etcdtest (clusters) and package config.
package agenttest

import (
	"os"
	"testing"

	"udp_iaasd/config"
)

// WriteEndpoints replaces the endpoints file at path with one listing eps,
// as configuration management does (a temporary file renamed over it).
func WriteEndpoints(t testing.TB, path string, eps ...string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, config.EndpointsYAML(eps), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}
