package render

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"udp_iaasd/config"
)

// checkOutputMax is how much of a failing check's output is logged.
const checkOutputMax = 4 << 10

// state is what the renderer remembers of a destination across its own
// restarts: the revision and digest of the content it last wrote there, so
// that it never replaces it with content rendered at an older revision.
type state struct {
	Revision int64  `json:"revision"`
	SHA256   string `json:"sha256"`
}

// stateFile is destination's state file in dir.
func stateFile(dir, destination string) string {
	r := strings.NewReplacer("/", "%2F", "%", "%25")
	return filepath.Join(dir, r.Replace(strings.TrimPrefix(destination, "/"))+".json")
}

func loadState(dir, destination string) state {
	var st state
	if b, err := os.ReadFile(stateFile(dir, destination)); err == nil {
		json.Unmarshal(b, &st)
	}
	return st
}

// saveState records st atomically (temp file, rename).
func saveState(dir, destination string, st state) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	b, _ := json.Marshal(st)
	path := stateFile(dir, destination)
	f, err := os.CreateTemp(dir, ".state-*")
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		os.Remove(f.Name())
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(f.Name())
		return err
	}
	f.Close()
	return os.Rename(f.Name(), path)
}

func digest(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// outcome is what writing a render did.
type outcome int

const (
	unchanged outcome = iota // the destination already held these bytes
	written                  // replaced (and reloaded, if configured)
	older                    // not written: rendered at an older revision than the destination's
)

// install puts content at t's destination as API.md says: only when it
// differs; a temporary file in the destination's directory, fsynced, with
// mode and owner, checked, renamed over the destination, the directory
// fsynced; then the reload. A reader of the destination sees the old file
// or the new one, never a part. The returned error says what failed; the
// destination is then as it was (a failed reload excepted: the file stays).
func install(ctx context.Context, t *config.RenderTemplate, stateDir string, rev int64, content []byte, log func(msg string, args ...any)) (outcome, error) {
	if cur, err := os.ReadFile(t.Destination); err == nil && bytes.Equal(cur, content) {
		return unchanged, nil
	}
	if st := loadState(stateDir, t.Destination); st.Revision > rev {
		return older, nil
	}
	dir := filepath.Dir(t.Destination)
	f, err := os.CreateTemp(dir, "."+filepath.Base(t.Destination)+".endpointd-*")
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return 0, fmt.Errorf("the destination's directory %s does not exist", dir)
		}
		return 0, fmt.Errorf("creating the candidate file: %w", err)
	}
	tmp := f.Name()
	keep := false
	defer func() {
		if !keep {
			os.Remove(tmp)
		}
	}()
	_, err = f.Write(content)
	if err == nil {
		err = f.Sync()
	}
	if err == nil {
		err = f.Chmod(os.FileMode(t.Mode))
	}
	if err == nil && (t.UID >= 0 || t.GID >= 0) {
		err = f.Chown(t.UID, t.GID)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return 0, fmt.Errorf("writing the candidate file: %w", err)
	}
	if len(t.Check) > 0 {
		if err := runCommand(ctx, t.Check, tmp, t.CheckTimeout); err != nil {
			return 0, fmt.Errorf("check %v failed; the destination is unchanged: %w", t.Check, err)
		}
	}
	if err := os.Rename(tmp, t.Destination); err != nil {
		return 0, fmt.Errorf("replacing the destination: %w", err)
	}
	keep = true
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	if err := saveState(stateDir, t.Destination, state{Revision: rev, SHA256: digest(content)}); err != nil {
		log("render: cannot record the destination's revision in state_dir", "destination", t.Destination, "error", err)
	}
	if len(t.Reload) > 0 {
		// Not retried until the next distinct content: a reload that fails
		// is the service's problem to report, and the file stays.
		if err := runCommand(ctx, t.Reload, t.Destination, time.Minute); err != nil {
			return written, fmt.Errorf("reload %v failed (the new file stays): %w", t.Reload, err)
		}
	}
	return written, nil
}

// runCommand runs argv, with %s replaced by path wherever it stands, within
// timeout. Its error carries the exit status and the first 4 KiB of its
// output.
func runCommand(ctx context.Context, argv []string, path string, timeout time.Duration) error {
	args := make([]string, len(argv))
	for i, a := range argv {
		args[i] = strings.ReplaceAll(a, "%s", path)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.WaitDelay = time.Second // a child that keeps the output open does not hold us
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if err == nil {
		return nil
	}
	o := out.Bytes()
	if len(o) > checkOutputMax {
		o = o[:checkOutputMax]
	}
	if ctx.Err() == context.DeadlineExceeded {
		return fmt.Errorf("did not finish within %s (killed); output: %q", timeout, o)
	}
	return fmt.Errorf("%v; output: %q", err, o)
}
