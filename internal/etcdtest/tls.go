package etcdtest

import (
	"testing"

	"udp_iaasd/internal/devcluster"
)

// TLSFiles is a throwaway CA and a server certificate (devcluster's).
type TLSFiles = devcluster.TLSFiles

// NewTLSFiles writes a fresh CA and server certificate under dir.
func NewTLSFiles(dir string) (*TLSFiles, error) { return devcluster.NewTLSFiles(dir) }

// NewTLS starts an n-member cluster for a test whose members also serve
// TLS, with a fresh CA; both are cleaned up with t.
func NewTLS(t testing.TB, n int) (*Cluster, *TLSFiles) {
	t.Helper()
	files, err := NewTLSFiles(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	c, err := Start(Options{Members: n, Dir: t.TempDir(), TLS: files})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c, files
}
