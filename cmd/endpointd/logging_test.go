package main

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// Under journald (JOURNAL_STREAM names our stderr) lines carry sd-daemon
// priority prefixes and no timestamps of our own; elsewhere they are plain.
func TestJournalLogging(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "stderr"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	level := new(slog.LevelVar)
	level.Set(slog.LevelDebug)

	t.Setenv("JOURNAL_STREAM", fmt.Sprintf("%d:%d", st.Dev, st.Ino))
	log := newLogger("text", level, f).With("component", "test")
	log.Debug("d")
	log.Info("i", "k", "v")
	log.Warn("w")
	log.Error("e")
	b, _ := os.ReadFile(f.Name())
	want := []string{"<7>msg=d component=test", "<6>msg=i component=test k=v", "<4>msg=w component=test", "<3>msg=e component=test"}
	got := strings.Split(strings.TrimSpace(string(b)), "\n")
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("journal lines:\n%s\nwant:\n%s", b, strings.Join(want, "\n"))
	}

	t.Setenv("JOURNAL_STREAM", "1:2") // another stream: not the journal
	f.Truncate(0)
	f.Seek(0, 0)
	newLogger("text", level, f).Info("plain")
	b, _ = os.ReadFile(f.Name())
	if !strings.HasPrefix(string(b), "time=") || strings.HasPrefix(string(b), "<") {
		t.Fatalf("off the journal: %q", b)
	}
}
