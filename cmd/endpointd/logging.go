package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"syscall"
)

// newLogger builds the agent's logger: text or JSON on stderr, or, when
// stderr is connected to journald, lines without our own timestamps (the
// journal has its own) and with sd-daemon priority prefixes, so that
// `journalctl -p warning` works.
func newLogger(format string, level *slog.LevelVar, stderr io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	if f, ok := stderr.(*os.File); ok && onJournal(f) {
		opts.ReplaceAttr = func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && (a.Key == slog.TimeKey || a.Key == slog.LevelKey) {
				return slog.Attr{}
			}
			return a
		}
		return slog.New(newJournalHandler(stderr, format, opts))
	}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(stderr, opts))
	}
	return slog.New(slog.NewTextHandler(stderr, opts))
}

// onJournal reports whether f is the stream systemd connected to journald:
// JOURNAL_STREAM names its device and inode.
func onJournal(f *os.File) bool {
	want := os.Getenv("JOURNAL_STREAM")
	if want == "" {
		return false
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		return false
	}
	return want == fmt.Sprintf("%d:%d", st.Dev, st.Ino)
}

// journalHandler writes each record as one line prefixed with its syslog
// priority, e.g. "<4>msg=…".
type journalHandler struct {
	inner slog.Handler
	out   io.Writer
	mu    *sync.Mutex   // guards buf and writes to out
	buf   *bytes.Buffer // inner writes here
}

func newJournalHandler(out io.Writer, format string, opts *slog.HandlerOptions) *journalHandler {
	buf := &bytes.Buffer{}
	var inner slog.Handler = slog.NewTextHandler(buf, opts)
	if format == "json" {
		inner = slog.NewJSONHandler(buf, opts)
	}
	return &journalHandler{inner: inner, out: out, mu: &sync.Mutex{}, buf: buf}
}

func (h *journalHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.inner.Enabled(ctx, l)
}

func (h *journalHandler) Handle(ctx context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.buf.Reset()
	if err := h.inner.Handle(ctx, r); err != nil {
		return err
	}
	_, err := fmt.Fprintf(h.out, "<%d>%s", priority(r.Level), strings.TrimPrefix(h.buf.String(), " "))
	return err
}

func (h *journalHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &journalHandler{inner: h.inner.WithAttrs(as), out: h.out, mu: h.mu, buf: h.buf}
}

func (h *journalHandler) WithGroup(name string) slog.Handler {
	return &journalHandler{inner: h.inner.WithGroup(name), out: h.out, mu: h.mu, buf: h.buf}
}

// priority maps a level to sd-daemon(3)'s: err, warning, info, debug.
func priority(l slog.Level) int {
	switch {
	case l >= slog.LevelError:
		return 3
	case l >= slog.LevelWarn:
		return 4
	case l >= slog.LevelInfo:
		return 6
	}
	return 7
}
