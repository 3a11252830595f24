// Package peertest runs test peers as other identities: processes with
// another uid, gid and supplementary groups (SysProcAttr.Credential),
// started inside a cgroup named like a systemd unit (clone into the cgroup,
// so the process is in it from its first instruction). They are real
// processes talking to a real unix socket, so the kernel — not the test —
// says who they are.
//
// A test package that uses it has TestMain call Main (or RunIfHelper first
// thing): the helper is the test binary itself, re-executed.
package peertest

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// Identity is who a helper runs as. Cgroup, when set, is the cgroup the
// helper starts in, a path below a slice of the test run's own: a unit's
// name ("billing.service", so the helper is in that system unit), or any
// shape systemd makes below slices
// ("user-1004.slice/user@1004.service/app.slice/web.service").
type Identity struct {
	UID, GID uint32
	Groups   []uint32
	Cgroup   string
}

const envAction = "ENDPOINTD_PEERTEST"

// Main is a TestMain for packages that use helpers: it runs the helper when
// the process is one, else the tests, and removes the helper's copy of the
// test binary afterwards.
func Main(m *testing.M) {
	RunIfHelper()
	code := m.Run()
	Cleanup()
	os.Exit(code)
}

// Cleanup removes the helpers' copy of the test binary (Main calls it).
func Cleanup() {
	if binDir != "" {
		os.RemoveAll(binDir)
	}
}

// RunIfHelper runs the helper's action and exits when the process was
// started as a helper; otherwise it returns at once.
func RunIfHelper() {
	action := os.Getenv(envAction)
	if action == "" {
		return
	}
	args := os.Args[1:]
	for i, a := range args {
		if a == "--" {
			args = args[i+1:]
			break
		}
	}
	os.Exit(runHelper(action, os.Getenv("ENDPOINTD_PEERTEST_SOCKET"), args))
}

// runHelper: "http" sends METHOD URL BODY [HEADER: VALUE…] and prints the
// status line then the body; "watch" does the same, copying the streamed
// body to stdout line by line as it arrives.
func runHelper(action, socket string, args []string) int {
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", socket)
	}}}
	method, url, body := args[0], args[1], args[2]
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		fmt.Println("ERR", err)
		return 2
	}
	if body == "" {
		req.Body = nil
	}
	for _, h := range args[3:] {
		k, v, _ := strings.Cut(h, ":")
		req.Header.Set(strings.TrimSpace(k), strings.TrimSpace(v))
	}
	resp, err := c.Do(req)
	if err != nil {
		fmt.Println("ERR", err)
		return 2
	}
	defer resp.Body.Close()
	fmt.Println(resp.StatusCode)
	if action == "watch" {
		br := bufio.NewReader(resp.Body)
		for {
			line, err := br.ReadString('\n')
			os.Stdout.WriteString(line)
			if err != nil {
				return 0
			}
		}
	}
	b, _ := io.ReadAll(resp.Body)
	os.Stdout.Write(b)
	return 0
}

// Skip skips the test unless peers can be run as other identities here:
// as root, and with a writable cgroup hierarchy when unit is true.
func Skip(t testing.TB, unit bool) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("running peers as other uids needs root (setuid/setgroups); this run is not root")
	}
	if unit {
		if _, err := cgroupRoot(); err != nil {
			t.Skipf("running a peer inside a unit's cgroup: %v", err)
		}
	}
}

// cgroupRoot is the cgroup v2 hierarchy (the unified one on hybrid hosts),
// if a directory can be made in it.
func cgroupRoot() (string, error) {
	for _, root := range []string{"/sys/fs/cgroup/unified", "/sys/fs/cgroup"} {
		if _, err := os.Stat(filepath.Join(root, "cgroup.procs")); err != nil {
			continue
		}
		probe := filepath.Join(root, fmt.Sprintf("endpointd-peertest-probe-%d", os.Getpid()))
		if err := os.Mkdir(probe, 0o755); err != nil {
			return "", fmt.Errorf("cgroup v2 hierarchy %s is not writable: %w", root, err)
		}
		os.Remove(probe)
		return root, nil
	}
	return "", fmt.Errorf("no cgroup v2 hierarchy found")
}

var seq atomic.Int64

// The test binary lives in a directory only its owner may enter; helpers
// with other uids run a copy in a directory anyone may.
var (
	binOnce sync.Once
	binDir  string
	binPath string
	binErr  error
)

func helperBinary() (string, error) {
	binOnce.Do(func() {
		if binDir, binErr = os.MkdirTemp("", "endpointd-peertest-"); binErr != nil {
			return
		}
		if binErr = os.Chmod(binDir, 0o755); binErr != nil {
			return
		}
		src, err := os.Open(os.Args[0])
		if err != nil {
			binErr = err
			return
		}
		defer src.Close()
		binPath = filepath.Join(binDir, "helper")
		dst, err := os.OpenFile(binPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
		if err != nil {
			binErr = err
			return
		}
		if _, err := io.Copy(dst, src); err != nil {
			binErr = err
		}
		if err := dst.Close(); err != nil && binErr == nil {
			binErr = err
		}
	})
	return binPath, binErr
}

// Command prepares the helper as id, talking to the socket: action is
// "http" or "watch", then method, URL (http://localhost/...) and body.
func Command(t testing.TB, socket string, id Identity, action, method, url, body string, headers ...string) *exec.Cmd {
	t.Helper()
	bin, err := helperBinary()
	if err != nil {
		t.Fatalf("peertest: copy of the test binary: %v", err)
	}
	cmd := exec.Command(bin, append([]string{"--", method, url, body}, headers...)...)
	cmd.Env = append(os.Environ(), envAction+"="+action, "ENDPOINTD_PEERTEST_SOCKET="+socket)
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: &syscall.Credential{Uid: id.UID, Gid: id.GID, Groups: id.Groups},
		Pdeathsig:  syscall.SIGKILL,
	}
	if id.Cgroup != "" {
		root, err := cgroupRoot()
		if err != nil {
			t.Skipf("running a peer inside a unit's cgroup: %v", err)
		}
		// A parent cgroup per helper, so that a unit name can be used by
		// several helpers and is cleaned up with the test.
		top := filepath.Join(root, fmt.Sprintf("endpointd-test-%d-%d.slice", os.Getpid(), seq.Add(1)))
		dir := filepath.Join(top, filepath.Clean("/"+id.Cgroup))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatalf("cgroup %s: %v", dir, err)
		}
		fd, err := syscall.Open(dir, syscall.O_DIRECTORY|syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
		if err != nil {
			t.Fatalf("cgroup %s: %v", dir, err)
		}
		cmd.SysProcAttr.UseCgroupFD = true
		cmd.SysProcAttr.CgroupFD = fd
		t.Cleanup(func() {
			syscall.Close(fd)
			// The helper has exited by now (tests wait for it); its cgroup
			// empties as it is reaped.
			deadline := time.Now().Add(5 * time.Second)
			for os.Remove(dir) != nil && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
			for d := filepath.Dir(dir); len(d) >= len(top); d = filepath.Dir(d) {
				os.Remove(d)
			}
		})
	}
	return cmd
}

// Do runs an "http" helper and returns the status code and body.
func Do(t testing.TB, socket string, id Identity, method, url, body string, headers ...string) (int, string) {
	t.Helper()
	out, err := Command(t, socket, id, "http", method, url, body, headers...).Output()
	if err != nil {
		t.Fatalf("helper as uid %d: %v (%s)", id.UID, err, out)
	}
	status, rest, _ := strings.Cut(string(out), "\n")
	var code int
	if _, err := fmt.Sscan(status, &code); err != nil {
		t.Fatalf("helper as uid %d: %s", id.UID, out)
	}
	return code, rest
}

// OpenPath makes every directory from dir up to (not including) the
// system's temporary directory traversable by anyone, so that a helper with
// another uid can reach a socket in a t.TempDir().
func OpenPath(t testing.TB, dir string) {
	t.Helper()
	top := filepath.Clean(os.TempDir())
	for d := filepath.Clean(dir); d != top && d != "/" && strings.HasPrefix(d, top); d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
}
