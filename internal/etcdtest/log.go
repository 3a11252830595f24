package etcdtest

import (
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"
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

// LogWriter is Logger's writer, for a test that tees a component's log.
func LogWriter(t testing.TB) io.Writer { return testLog{t} }

// Eventually polls cond every 10ms until it holds, and fails the test when
// it has not within d. d bounds a broken component, not a speed claim.
func Eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
