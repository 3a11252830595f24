package access

import (
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"udp_iaasd/internal/peertest"
)

func TestMain(m *testing.M) { peertest.Main(m) }

// The unit is the one systemd's system manager placed the process in: the
// outermost service or scope below slices only, whatever a unit or a user
// names inside its own subtree.
func TestUnitFromCgroup(t *testing.T) {
	for _, tc := range []struct{ name, data, want string }{
		{"system service", "0::/system.slice/billing.service\n", "billing.service"},
		{"service in nested slices", "0::/system.slice/app.slice/app-web.slice/web.service\n", "web.service"},
		{"service in a slice of its own", "0::/web.slice/web.service\n", "web.service"},
		{"scope of a session", "0::/user.slice/user-1000.slice/session-4.scope\n", "session-4.scope"},
		{"transient scope", "0::/system.slice/run-r1234.scope\n", "run-r1234.scope"},
		{"PID 1", "0::/init.scope\n", "init.scope"},
		{"a process below its unit", "0::/system.slice/billing.service/worker\n", "billing.service"},
		// A user manager's units are the user's to name: all of them are
		// the manager's unit.
		{"user manager", "0::/user.slice/user-1001.slice/user@1001.service/init.scope\n", "user@1001.service"},
		{"user service (systemd-run --user --unit=web)", "0::/user.slice/user-1001.slice/user@1001.service/app.slice/web.service\n", "user@1001.service"},
		{"user session.slice", "0::/user.slice/user-1001.slice/user@1001.service/session.slice/dbus.service\n", "user@1001.service"},
		// Delegate=yes: the service may make sub-cgroups with any name.
		{"delegated subtree named like a unit", "0::/system.slice/other.service/web.service\n", "other.service"},
		{"delegated subtree, deeper", "0::/system.slice/other.service/x.slice/web.service\n", "other.service"},
		// A container's own systemd runs below the scope the host made.
		{"container payload", "0::/machine.slice/machine-c1.scope/payload/system.slice/web.service\n", "machine-c1.scope"},
		{"container init.scope", "0::/system.slice/docker-0123abcd.scope/init.scope\n", "docker-0123abcd.scope"},
		// Hybrid hosts: the unified hierarchy may hold nothing of systemd's.
		{"hybrid: v2 root, name=systemd has it", "12:memory:/x\n1:name=systemd:/system.slice/cron.service\n0::/\n", "cron.service"},
		{"hybrid: name=systemd, user manager", "1:name=systemd:/user.slice/user-7.slice/user@7.service/app.slice/web.service\n0::/\n", "user@7.service"},
		{"v2 wins over name=systemd", "1:name=systemd:/system.slice/a.service\n0::/system.slice/b.service\n", "b.service"},
		{"no unit", "0::/\n", ""},
		{"a slice is not a unit", "0::/system.slice\n", ""},
		{"a cgroup that is neither above the unit", "0::/custom/web.service\n", ""},
		{"v1 controllers only", "4:memory:/system.slice/a.service\n", ""},
		{"empty", "", ""},
		{"lookalike", "0::/system.slice/a.servicex\n", ""},
	} {
		if got := UnitFromCgroup(tc.data); got != tc.want {
			t.Errorf("%s: UnitFromCgroup = %q, want %q", tc.name, got, tc.want)
		}
	}
}

func listen(t *testing.T) (string, *net.UnixListener) {
	dir := t.TempDir()
	path := filepath.Join(dir, "s.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	os.Chmod(path, 0o777)
	peertest.OpenPath(t, dir)
	return path, ln
}

func accept(t *testing.T, ln *net.UnixListener) *net.UnixConn {
	t.Helper()
	ln.SetDeadline(time.Now().Add(10 * time.Second))
	c, err := ln.AcceptUnix()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// This process, connecting to itself: the kernel's answer is ours.
func TestIdentifySelf(t *testing.T) {
	path, ln := listen(t)
	cc, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	p, err := IdentifyConn(accept(t, ln))
	if err != nil {
		t.Fatal(err)
	}
	if !p.Known || int(p.PID) != os.Getpid() || int(p.UID) != os.Getuid() || int(p.GID) != os.Getgid() {
		t.Fatalf("peer %+v, want pid %d uid %d gid %d", p, os.Getpid(), os.Getuid(), os.Getgid())
	}
	if _, err := IdentifyConn(nil); err == nil {
		t.Fatal("a nil conn identified")
	}
}

// A real process with another uid, gid, supplementary groups and unit —
// started by this test, so it is the child that connects — is seen as it
// is.
func TestIdentifyOtherProcess(t *testing.T) {
	peertest.Skip(t, true)
	path, ln := listen(t)
	id := peertest.Identity{UID: 12345, GID: 23456, Groups: []uint32{30001, 30002}, Cgroup: "idtest-peer.service"}
	cmd := peertest.Command(t, path, id, "http", "GET", "http://localhost/x", "")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer cmd.Process.Kill()
	p, err := Identify(accept(t, ln))
	if err != nil {
		t.Fatal(err)
	}
	if int(p.PID) != cmd.Process.Pid {
		t.Errorf("pid %d, want the child's %d", p.PID, cmd.Process.Pid)
	}
	if p.UID != id.UID || p.GID != id.GID {
		t.Errorf("uid/gid %d/%d, want %d/%d", p.UID, p.GID, id.UID, id.GID)
	}
	for _, g := range id.Groups {
		if !slices.Contains(p.Groups, g) {
			t.Errorf("groups %v lack %d", p.Groups, g)
		}
	}
	if p.Unit != id.Cgroup {
		t.Errorf("unit %q, want %q", p.Unit, id.Cgroup)
	}
	if got := p.String(); got != "uid 12345 (unit idtest-peer.service)" {
		t.Errorf("String() = %q", got)
	}
}

// A peer that has exited by the time it is identified cannot have its unit
// read safely (its pid may already be another process's): the unit is
// unknown, the rest of its credentials are still the kernel's.
func TestIdentifyExitedPeer(t *testing.T) {
	peertest.Skip(t, true)
	path, ln := listen(t)
	id := peertest.Identity{UID: 12346, GID: 12346, Cgroup: "gone.service"}
	cmd := peertest.Command(t, path, id, "http", "GET", "http://localhost/x", "")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := accept(t, ln)
	cmd.Process.Kill()
	cmd.Wait()
	p, err := Identify(c)
	if err != nil {
		t.Fatal(err)
	}
	if p.UID != id.UID || p.Unit != "" {
		t.Fatalf("peer %+v: want uid %d and no unit", p, id.UID)
	}
}
