//go:build nodev

package main

import (
	"context"
	"strings"
	"testing"
)

// A nodev build says dev is not in it, and exits with the usage code.
func TestDevNotBuilt(t *testing.T) {
	var out, errb strings.Builder
	if code := run(context.Background(), []string{"dev"}, strings.NewReader(""), &out, &errb); code != exitUsage ||
		!strings.Contains(errb.String(), "-tags nodev") {
		t.Fatalf("dev in a nodev build: exit %d, stderr %q", code, errb.String())
	}
}
