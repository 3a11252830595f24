package etcdtest

import (
	"log/slog"
	"strings"
	"testing"
)

// Logger returns a debug-level logger that writes into t's log, so a test's
// output shows what the code under test logged, next to the failure.
func Logger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testLog{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testLog struct{ t testing.TB }

func (l testLog) Write(p []byte) (int, error) {
	l.t.Helper()
	l.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}
