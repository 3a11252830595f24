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
	var sock, grpcSock string
	for l := range strings.SplitSeq(out.String(), "\n") {
		if f := strings.Fields(l); len(f) == 2 && f[0] == "export" {
			sock = strings.TrimPrefix(f[1], "ENDPOINTD_SOCKET=")
		}
		if f := strings.Fields(l); len(f) >= 3 && f[0] == "etcdctl" {
			grpcSock = strings.TrimPrefix(f[2], "unix://")
		}
	}
	// The README's etcdctl lines work from the quick start: dev serves the
	// gRPC socket too.
	if fi, err := os.Stat(grpcSock); grpcSock == "" || err != nil || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("dev printed no gRPC socket that exists (%q, %v):\n%s", grpcSock, err, out.String())
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

// A demo of no members is a usage error, said as one.
func TestDevNeedsAMember(t *testing.T) {
	code, _, stderr := invoke(t, "", "dev", "-members", "0")
	if code != exitUsage || !strings.Contains(stderr, "-members must be at least 1") {
		t.Fatalf("dev -members 0: exit %d, %q", code, stderr)
	}
}
