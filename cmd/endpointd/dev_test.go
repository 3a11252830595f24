//go:build !nodev

package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"udp_iaasd/internal/syncbuf"
)

// `endpointd dev` comes up with one command and cleans up on Ctrl-C.
func TestDev(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var out, errb syncbuf.Buffer
	done := make(chan int, 1)
	go func() { done <- run(ctx, []string{"dev"}, strings.NewReader(""), &out, &errb) }()
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(out.String(), "Ctrl-C stops everything") {
		if time.Now().After(deadline) {
			t.Fatalf("dev never printed its instructions:\n%s\n%s", out.String(), errb.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	var sock string
	for l := range strings.SplitSeq(out.String(), "\n") {
		if f := strings.Fields(l); len(f) == 2 && f[0] == "export" {
			sock = strings.TrimPrefix(f[1], "ENDPOINTD_SOCKET=")
		}
	}
	if code, _, stderr := invoke(t, "", "kv", "put", "-socket", sock, "hello", "world"); code != 0 {
		t.Fatalf("kv put against dev: %d %s", code, stderr)
	}
	if code, stdout, _ := invoke(t, "", "kv", "get", "-socket", sock, "hello"); code != 0 || stdout != "world" {
		t.Fatalf("kv get against dev: %d %q", code, stdout)
	}
	cancel()
	if c := <-done; c != 0 {
		t.Fatalf("dev exit %d:\n%s", c, errb.String())
	}
	if _, err := os.Stat(filepath.Dir(sock)); !os.IsNotExist(err) {
		t.Fatalf("dev left %s behind", filepath.Dir(sock))
	}
}
