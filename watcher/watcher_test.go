package watcher

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"udp_iaasd/internal/syncbuf"
)

// harness runs a Watcher on a file in a temporary directory and collects what
// it reports.
type harness struct {
	t       *testing.T
	dir     string
	path    string
	w       *Watcher
	updates chan Update
}

func start(t *testing.T, dir, name string, setup func(*Watcher)) *harness {
	t.Helper()
	h := &harness{t: t, dir: dir, path: filepath.Join(dir, name), updates: make(chan Update, 100)}
	h.w = New(h.path, func(u Update) { h.updates <- u })
	h.w.Debounce = 50 * time.Millisecond
	h.w.RearmInterval = 50 * time.Millisecond
	if setup != nil {
		setup(h.w)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return h
}

// next waits for the next update. The bound is for a broken watcher, not a
// speed claim.
func (h *harness) next() Update {
	h.t.Helper()
	select {
	case u := <-h.updates:
		return u
	case <-time.After(10 * time.Second):
		h.t.Fatal("no update within 10s")
		return Update{}
	}
}

func (h *harness) expect(want string) {
	h.t.Helper()
	u := h.next()
	if u.Err != nil || string(u.Data) != want {
		h.t.Fatalf("update = %q, %v; want %q", u.Data, u.Err, want)
	}
}

// quiet asserts nothing is reported for a while: several debounce periods.
func (h *harness) quiet() {
	h.t.Helper()
	select {
	case u := <-h.updates:
		h.t.Fatalf("unexpected update %q, %v", u.Data, u.Err)
	case <-time.After(400 * time.Millisecond):
	}
}

func write(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
}

func TestReplacementStyles(t *testing.T) {
	styles := []struct {
		name    string
		replace func(t *testing.T, h *harness, data string)
	}{
		{"in-place write", func(t *testing.T, h *harness, data string) {
			f, err := os.OpenFile(h.path, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			// Same length, so no truncation: bytes change in place.
			if _, err := f.WriteAt([]byte(data), 0); err != nil {
				t.Fatal(err)
			}
		}},
		{"truncate and write", func(t *testing.T, h *harness, data string) {
			f, err := os.OpenFile(h.path, os.O_WRONLY|os.O_TRUNC, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if _, err := f.WriteString(data); err != nil {
				t.Fatal(err)
			}
		}},
		{"temp file and rename (ansible, puppet, chef, salt)", func(t *testing.T, h *harness, data string) {
			tmp := filepath.Join(h.dir, ".endpoints.yaml.tmp123")
			write(t, tmp, data)
			if err := os.Rename(tmp, h.path); err != nil {
				t.Fatal(err)
			}
		}},
		{"sed -i", func(t *testing.T, h *harness, data string) {
			run(t, "sed", "-i", "s/.*/"+data+"/", h.path)
		}},
		{"editor: rename to backup, write new", func(t *testing.T, h *harness, data string) {
			if err := os.Rename(h.path, h.path+"~"); err != nil {
				t.Fatal(err)
			}
			write(t, h.path, data)
			os.Remove(h.path + "~")
		}},
		{"delete and recreate", func(t *testing.T, h *harness, data string) {
			if err := os.Remove(h.path); err != nil {
				t.Fatal(err)
			}
			write(t, h.path, data)
		}},
	}
	for i, st := range styles {
		t.Run(st.name, func(t *testing.T) {
			dir := t.TempDir()
			write(t, filepath.Join(dir, "endpoints.yaml"), "version-a")
			h := start(t, dir, "endpoints.yaml", nil)
			h.expect("version-a")
			want := fmt.Sprintf("version-%c", 'b'+i%20) // same length as version-a
			st.replace(t, h, want)
			// A burst may pass through a missing or empty file (delete and
			// recreate) before the debounce settles; the last report must be
			// the new version, and nothing after it.
			for {
				u := h.next()
				if u.Err == nil && string(u.Data) == want {
					break
				}
				if u.Err != nil && !errors.Is(u.Err, fs.ErrNotExist) {
					t.Fatalf("unexpected error %v", u.Err)
				}
			}
			h.quiet()
		})
	}
}

// A Kubernetes ConfigMap volume: endpoints.yaml -> ..data/endpoints.yaml,
// ..data -> ..2024_01_01_00_00_00.1; an update writes a new timestamped
// directory and renames a new ..data symlink over the old one. No event ever
// names endpoints.yaml.
func TestKubernetesConfigMapSwap(t *testing.T) {
	dir := t.TempDir()
	mkVersion := func(name, data string) {
		if err := os.Mkdir(filepath.Join(dir, name), 0o755); err != nil {
			t.Fatal(err)
		}
		write(t, filepath.Join(dir, name, "endpoints.yaml"), data)
	}
	mkVersion("..2024_01_01_00_00_00.1", "v1")
	if err := os.Symlink("..2024_01_01_00_00_00.1", filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("..data/endpoints.yaml", filepath.Join(dir, "endpoints.yaml")); err != nil {
		t.Fatal(err)
	}
	h := start(t, dir, "endpoints.yaml", nil)
	h.expect("v1")

	for i, v := range []string{"v2", "v3"} {
		ts := fmt.Sprintf("..2024_01_01_00_00_0%d.%d", i+1, i+2)
		mkVersion(ts, v)
		tmpLink := filepath.Join(dir, "..data_tmp")
		if err := os.Symlink(ts, tmpLink); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmpLink, filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
		h.expect(v)
	}
	h.quiet()
}

func TestDirectoryRemovedAndRecreated(t *testing.T) {
	parent := t.TempDir()
	dir := filepath.Join(parent, "etc")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(dir, "endpoints.yaml"), "before")
	h := start(t, dir, "endpoints.yaml", nil)
	h.expect("before")

	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	u := h.next()
	if !errors.Is(u.Err, fs.ErrNotExist) {
		t.Fatalf("after removing the directory: %q, %v; want a missing-file error", u.Data, u.Err)
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(dir, "endpoints.yaml"), "after")
	h.expect("after")

	// The watch is live again: an ordinary edit is seen.
	write(t, filepath.Join(dir, "endpoints.yaml"), "edited")
	h.expect("edited")
}

func TestNoReportWithoutChange(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "endpoints.yaml")
	write(t, path, "same")
	h := start(t, dir, "endpoints.yaml", nil)
	h.expect("same")

	write(t, path, "same") // identical bytes
	h.quiet()
	if err := os.Chmod(path, 0o600); err != nil { // CHMOD alone
		t.Fatal(err)
	}
	h.quiet()
	write(t, filepath.Join(dir, "unrelated"), "x") // a neighbour changes
	h.quiet()

	// Reread reports even unchanged bytes (SIGHUP).
	h.w.Reread()
	if u := h.next(); !u.Forced || string(u.Data) != "same" {
		t.Fatalf("Reread gave %+v", u)
	}
}

func TestBurstIsOneRead(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "endpoints.yaml")
	write(t, path, "v0")
	var mu sync.Mutex
	reads := 0
	h := start(t, dir, "endpoints.yaml", func(w *Watcher) {
		// Far longer than 20 back-to-back writes take even on a loaded
		// machine, so the burst is one burst.
		w.Debounce = 2 * time.Second
		w.Read = func(p string) ([]byte, error) {
			mu.Lock()
			reads++
			mu.Unlock()
			return os.ReadFile(p)
		}
	})
	h.expect("v0")
	for i := range 20 {
		write(t, path, fmt.Sprintf("v%d", i+1))
	}
	h.expect("v20")
	h.quiet()
	mu.Lock()
	defer mu.Unlock()
	if reads != 2 { // the first read and one after the burst
		t.Fatalf("%d reads for one burst, want 2", reads)
	}
}

func TestMissingAtStartThenAppears(t *testing.T) {
	dir := t.TempDir()
	h := start(t, dir, "endpoints.yaml", nil)
	if u := h.next(); !errors.Is(u.Err, fs.ErrNotExist) {
		t.Fatalf("first update = %+v, want a missing-file error", u)
	}
	write(t, filepath.Join(dir, "endpoints.yaml"), "hello")
	h.expect("hello")
	if err := os.Remove(filepath.Join(dir, "endpoints.yaml")); err != nil {
		t.Fatal(err)
	}
	if u := h.next(); !errors.Is(u.Err, fs.ErrNotExist) {
		t.Fatalf("after delete: %+v, want a missing-file error", u)
	}
	h.quiet() // a missing file is reported once, not on every event or resync
}

// Resync reads the file even when no event says it changed (NFS, a watch
// lost in a way inotify never reports).
func TestResyncWithoutEvents(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "endpoints.yaml")
	write(t, path, "v1")
	var mu sync.Mutex
	content := "v1"
	h := start(t, dir, "endpoints.yaml", func(w *Watcher) {
		w.ResyncInterval = 100 * time.Millisecond
		// The reader sees content that changes without any file event.
		w.Read = func(string) ([]byte, error) {
			mu.Lock()
			defer mu.Unlock()
			return []byte(content), nil
		}
	})
	h.expect("v1")
	mu.Lock()
	content = "v2"
	mu.Unlock()
	h.expect("v2")
}

// An overflowed inotify queue loses events: the watcher must start afresh,
// re-read, and keep watching.
func TestQueueOverflowRecovers(t *testing.T) {
	limit, err := os.ReadFile("/proc/sys/fs/inotify/max_queued_events")
	if err != nil {
		t.Skipf("no inotify limits here: %v", err)
	}
	var n int
	fmt.Sscan(string(limit), &n)
	if n <= 0 || n > 100000 {
		t.Skipf("max_queued_events %d: too large to overflow quickly", n)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "endpoints.yaml")
	write(t, path, "v1")
	block := make(chan struct{})
	h := &harness{t: t, dir: dir, path: path, updates: make(chan Update, 100)}
	first := true
	h.w = New(path, func(u Update) {
		if first {
			first = false
			<-block // hold the loop so fsnotify's reader, then the kernel queue, backs up
		}
		h.updates <- u
	})
	h.w.Debounce = 50 * time.Millisecond
	var logBuf syncbuf.Buffer
	h.w.Logger = slog.New(slog.NewTextHandler(&logBuf, nil))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.w.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	time.Sleep(100 * time.Millisecond) // the first read is now blocked in OnUpdate
	for i := range n + 1000 {
		f, err := os.Create(filepath.Join(dir, fmt.Sprintf("f%d", i)))
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	write(t, path, "v2")
	close(block)
	h.expect("v1")
	h.expect("v2")
	write(t, path, "v3")
	h.expect("v3")
	if !strings.Contains(logBuf.String(), "queue or buffer overflow") {
		t.Fatalf("the queue never overflowed, so recovery was not exercised; log:\n%s", logBuf.String())
	}
}

// Events for other files in the directory — a log appended every 20ms, a
// sibling config being written — never postpone reading the watched file:
// a new version is reported while they go on. (Debouncing every event in
// the directory held the read back until the noise stopped.)
func TestUnrelatedFilesDoNotDelay(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "endpoints.yaml")
	if err := os.WriteFile(path, []byte("v1"), 0o644); err != nil {
		t.Fatal(err)
	}
	h := start(t, dir, "endpoints.yaml", func(w *Watcher) {
		w.Debounce = 200 * time.Millisecond // ten noise writes per quiet period
		w.ResyncInterval = time.Hour        // only events can report the change
	})
	h.expect("v1")
	stop := make(chan struct{})
	var wg sync.WaitGroup
	defer func() { close(stop); wg.Wait() }()
	wg.Go(func() {
		f, err := os.OpenFile(filepath.Join(dir, "agent.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			t.Error(err)
			return
		}
		defer f.Close()
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				f.WriteString("noise\n")
				os.WriteFile(filepath.Join(dir, "sibling.yaml"), []byte(time.Now().String()), 0o644)
			}
		}
	})
	if err := os.WriteFile(path+".tmp", []byte("v2"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		t.Fatal(err)
	}
	h.expect("v2") // while the noise goes on
}
