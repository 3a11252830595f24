// Package examples holds the example files; this test keeps them valid.
package examples

import (
	"os"
	"testing"

	"udp_iaasd/config"
)

func TestExamplesAreValid(t *testing.T) {
	cfg, err := config.Load("config.yaml")
	if err != nil {
		t.Fatalf("examples/config.yaml: %v", err)
	}
	def := config.Default()
	def.EndpointsFile = cfg.EndpointsFile
	if cfg.MinClusterSize != def.MinClusterSize || cfg.Etcd != def.Etcd || cfg.Backoff != def.Backoff ||
		cfg.Watch != def.Watch || cfg.Cache.MaxStaleness != def.Cache.MaxStaleness || cfg.Limits != def.Limits || cfg.Log != def.Log || cfg.Socket.Path != def.Socket.Path ||
		cfg.Socket.Mode != def.Socket.Mode {
		t.Fatalf("examples/config.yaml no longer shows the defaults:\n%+v\n%+v", cfg, def)
	}
	data, err := os.ReadFile("endpoints.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := config.ParseEndpoints("endpoints.yaml", data, cfg.Etcd.TLS.Enabled(), cfg.MinClusterSize); err != nil {
		t.Fatalf("examples/endpoints.yaml: %v", err)
	}
}
