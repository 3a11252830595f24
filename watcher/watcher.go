// Package watcher watches one file and reports each new version of its bytes,
// however the file was replaced: written in place, truncated and rewritten,
// renamed over (Ansible, Puppet, Chef, Salt, sed -i, editors), deleted and
// recreated, swapped through a Kubernetes ConfigMap's ..data symlink, or
// removed along with its directory and recreated.
//
// It owns the question "did the file change?" and nothing after it: it does
// not parse or validate what it reads. It watches the parent directory, never
// the file (a watch on a file dies with the inode a rename replaces), and
// decides by content: every burst of events leads to one read after a quiet
// period, and only bytes that differ from the last read are reported.
package watcher

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"
)

// Update is one version of the file, or the reason it could not be read.
type Update struct {
	Path string
	Data []byte // nil when Err is set
	Sum  string // hex sha256 of Data; "" when Err is set
	Err  error  // e.g. errors.Is(Err, fs.ErrNotExist) for a missing file
	// Forced is true for a read that Reread asked for, which is reported even
	// when the bytes did not change.
	Forced bool
}

// Reader reads the file; config.ReadFile fits (it stops at a size limit).
type Reader func(path string) ([]byte, error)

// Watcher reports versions of one file to OnUpdate. Build it with New; set
// the optional fields before Run starts, and do not change them afterwards.
type Watcher struct {
	Path string
	// OnUpdate is called from Run's goroutine for the first read and for every
	// read whose outcome differs from the previous one. It must not block for
	// long: the next event waits for it.
	OnUpdate func(Update)
	// Read reads the file. Default: os.ReadFile.
	Read Reader
	// Debounce is the quiet time after the last event before the file is
	// read. Default 100ms.
	Debounce time.Duration
	// ResyncInterval re-reads the file, and re-adds a lost watch, even when no
	// event came (NFS, missed events). Default 30s.
	ResyncInterval time.Duration
	// RearmInterval is how often a watch on a missing directory is retried.
	// Default 200ms.
	RearmInterval time.Duration
	Logger        *slog.Logger

	rereadc chan struct{}
}

// New returns a Watcher of path with the defaults.
func New(path string, onUpdate func(Update)) *Watcher {
	return &Watcher{Path: path, OnUpdate: onUpdate, rereadc: make(chan struct{}, 1)}
}

// Reread asks Run to read the file now and report it even if unchanged (a
// SIGHUP). It never blocks; requests made while one is pending merge.
func (w *Watcher) Reread() {
	select {
	case w.rereadc <- struct{}{}:
	default:
	}
}

// state is owned by Run's goroutine alone; it needs no lock.
type state struct {
	w       *Watcher
	dir     string
	log     *slog.Logger
	fsw     *fsnotify.Watcher // nil while not watching
	lastKey string            // outcome of the last reported read
	events  <-chan fsnotify.Event
	errs    <-chan error
	// names are the entries of dir whose events can change what the path
	// reads: the file's own name and, when it is a symlink into dir (a
	// Kubernetes ConfigMap: endpoints.yaml -> ..data/endpoints.yaml), the
	// first entry of its target (..data, which the swap renames over).
	// Events for other files in dir — logs, sibling configs — never delay
	// a read.
	names map[string]bool
}

// Run watches until ctx ends. It reads the file once at start and reports
// that read whatever it finds. It returns nil when ctx ends; it does not give
// up on watcher errors (it starts a fresh watcher and re-reads).
func (w *Watcher) Run(ctx context.Context) error {
	if w.OnUpdate == nil {
		return errors.New("watcher: OnUpdate is nil")
	}
	if w.rereadc == nil {
		return errors.New("watcher: build the Watcher with New")
	}
	debounce := or(w.Debounce, 100*time.Millisecond)
	s := &state{w: w, dir: filepath.Dir(w.Path), log: w.Logger}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	defer s.disarm()

	s.arm()
	s.read(false)

	resync := time.NewTicker(or(w.ResyncInterval, 30*time.Second))
	defer resync.Stop()
	// The re-arm ticker runs only while the directory is gone (no fsnotify
	// watch): an agent on every host should not wake when nothing happens.
	var rearm *time.Ticker
	defer func() {
		if rearm != nil {
			rearm.Stop()
		}
	}()
	quiet := time.NewTimer(time.Hour)
	quiet.Stop()
	defer quiet.Stop()

	for {
		var rearmc <-chan time.Time
		switch {
		case s.fsw == nil && rearm == nil:
			rearm = time.NewTicker(or(w.RearmInterval, 200*time.Millisecond))
		case s.fsw != nil && rearm != nil:
			rearm.Stop()
			rearm = nil
		}
		if rearm != nil {
			rearmc = rearm.C
		}
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-s.events:
			if !ok {
				s.restart("event channel closed")
				quiet.Reset(debounce)
				continue
			}
			if ev.Op == fsnotify.Chmod {
				continue // a mode change alone is not a new version
			}
			if filepath.Clean(ev.Name) == s.dir && ev.Op&(fsnotify.Remove|fsnotify.Rename) != 0 {
				// The directory itself went away (or moved, taking the watch
				// with it). Re-arm on the path until it is back.
				s.log.Warn("watched directory removed; waiting for it to return", "dir", s.dir)
				s.disarm()
			} else if !s.names[filepath.Base(ev.Name)] {
				continue // another file in the directory
			}
			quiet.Reset(debounce)
		case err, ok := <-s.errs:
			if !ok {
				s.restart("error channel closed")
			} else {
				// An overflowed queue means events were lost: start afresh
				// and read, whatever the error.
				s.restart(err.Error())
			}
			quiet.Reset(debounce)
		case <-quiet.C:
			s.read(false)
		case <-w.rereadc:
			if s.fsw == nil {
				s.arm()
			}
			s.read(true)
		case <-resync.C:
			if s.fsw == nil {
				s.arm()
			}
			s.read(false)
		case <-rearmc:
			if s.fsw == nil && s.arm() {
				s.log.Info("watching directory again", "dir", s.dir)
				quiet.Reset(debounce)
			}
		}
	}
}

func or(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

// relevantNames is state.names for path, read now (a symlink's target
// changes with every ConfigMap swap).
func relevantNames(path string) map[string]bool {
	names := map[string]bool{filepath.Base(path): true}
	if target, err := os.Readlink(path); err == nil && !filepath.IsAbs(target) {
		first, _, _ := strings.Cut(filepath.Clean(target), string(filepath.Separator))
		if first != ".." && first != "." {
			names[first] = true
		}
	}
	return names
}

// arm starts watching the directory; it reports whether it could.
func (s *state) arm() bool {
	fsw, err := fsnotify.NewWatcher()
	if err != nil {
		s.log.Error("cannot create file watcher", "error", err)
		return false
	}
	if err := fsw.Add(s.dir); err != nil {
		fsw.Close()
		if !errors.Is(err, fs.ErrNotExist) {
			s.log.Error("cannot watch directory", "dir", s.dir, "error", err)
		}
		return false
	}
	s.fsw, s.events, s.errs = fsw, fsw.Events, fsw.Errors
	return true
}

func (s *state) disarm() {
	if s.fsw != nil {
		s.fsw.Close()
	}
	s.fsw, s.events, s.errs = nil, nil, nil
}

func (s *state) restart(why string) {
	s.log.Warn("file watcher failed; starting a fresh one and re-reading", "dir", s.dir, "reason", why)
	s.disarm()
	s.arm()
}

// read reads the file and reports the outcome if it differs from the last
// one reported, or if forced.
func (s *state) read(forced bool) {
	read := s.w.Read
	if read == nil {
		read = os.ReadFile
	}
	s.names = relevantNames(s.w.Path)
	data, err := read(s.w.Path)
	u := Update{Path: s.w.Path, Forced: forced}
	var key string
	if err != nil {
		u.Err = fmt.Errorf("read %s: %w", s.w.Path, err)
		key = "error:" + err.Error()
		if errors.Is(err, fs.ErrNotExist) {
			key = "missing"
		}
	} else {
		sum := sha256.Sum256(data)
		u.Data, u.Sum = data, hex.EncodeToString(sum[:])
		key = u.Sum
	}
	if key == s.lastKey && !forced {
		return
	}
	s.lastKey = key
	s.w.OnUpdate(u)
}
