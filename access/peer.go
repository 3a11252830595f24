package access

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Peer is the process on the other end of a unix connection, as the kernel
// reported it when the connection was accepted — never what the client
// claims. It is read once per connection (Identify), so checking a request
// costs no system call.
type Peer struct {
	// Known: the kernel told us who the peer is. A peer that is not known
	// matches no rule.
	Known    bool
	PID      int32
	UID, GID uint32
	// Groups are the peer's supplementary groups (SO_PEERGROUPS).
	Groups []uint32
	// Unit is the systemd unit of the peer process ("" when it could not be
	// determined, which matches no units entry).
	Unit string
}

// String names the peer in messages: "uid 1001 (unit billing.service)".
func (p Peer) String() string {
	if !p.Known {
		return "a peer whose credentials could not be read"
	}
	if p.Unit == "" {
		return fmt.Sprintf("uid %d", p.UID)
	}
	return fmt.Sprintf("uid %d (unit %s)", p.UID, p.Unit)
}

// inGroup: gid is the peer's primary or one of its supplementary groups.
func (p Peer) inGroup(gid uint32) bool {
	if p.GID == gid {
		return true
	}
	for _, g := range p.Groups {
		if g == gid {
			return true
		}
	}
	return false
}

// Identify reads who is on the other end of c: uid, gid and pid from
// SO_PEERCRED (the credentials of the process that called connect, so a
// child that connects is the child), supplementary groups from
// SO_PEERGROUPS, and the systemd unit from the peer's cgroup.
//
// The unit is read so that a reused pid cannot be mistaken for the peer:
// SO_PEERPIDFD (Linux 6.5+) gives a pidfd for the very process that
// connected; its /proc/PID/cgroup is read, and then the pidfd is asked
// whether that process is still alive — if it is, the pid was not reused
// while we read. If the process has exited, or the kernel has no
// SO_PEERPIDFD, the unit is left unknown and units rules do not match the
// peer (uid and group rules still do): a pid alone could name another
// process by the time its cgroup is read.
//
// An error means the peer's credentials could not be read; the caller must
// refuse it.
func Identify(c *net.UnixConn) (Peer, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return Peer{}, fmt.Errorf("access: peer credentials: %w", err)
	}
	var (
		p    Peer
		ierr error
	)
	if err := raw.Control(func(fd uintptr) { p, ierr = identifyFD(int(fd)) }); err != nil {
		return Peer{}, fmt.Errorf("access: peer credentials: %w", err)
	}
	return p, ierr
}

func identifyFD(fd int) (Peer, error) {
	cred, err := unix.GetsockoptUcred(fd, unix.SOL_SOCKET, unix.SO_PEERCRED)
	if err != nil {
		return Peer{}, fmt.Errorf("access: SO_PEERCRED: %w", err)
	}
	groups, err := peerGroups(fd)
	if err != nil {
		return Peer{}, fmt.Errorf("access: SO_PEERGROUPS: %w", err)
	}
	p := Peer{Known: true, PID: cred.Pid, UID: cred.Uid, GID: cred.Gid, Groups: groups}
	p.Unit = peerUnit(fd, cred.Pid)
	return p, nil
}

// peerGroups reads SO_PEERGROUPS: an array of gid_t, whose size the kernel
// reports with ERANGE when the buffer is too small.
func peerGroups(fd int) ([]uint32, error) {
	buf := make([]uint32, 64)
	for {
		n := uint32(len(buf) * 4)
		_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_PEERGROUPS,
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&n)), 0)
		switch errno {
		case 0:
			return buf[:n/4], nil
		case unix.ERANGE:
			buf = make([]uint32, n/4+1)
		default:
			return nil, errno
		}
	}
}

// peerUnit is the peer's systemd unit, or "" when it cannot be read safely
// (see Identify).
func peerUnit(fd int, pid int32) string {
	pidfd, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PEERPIDFD)
	if err != nil {
		return "" // ENOPROTOOPT before Linux 6.5
	}
	defer unix.Close(pidfd)
	data, err := os.ReadFile("/proc/" + strconv.Itoa(int(pid)) + "/cgroup")
	if err != nil {
		return ""
	}
	// Still alive: /proc/PID was this process when it was read.
	if err := unix.PidfdSendSignal(pidfd, 0, nil, 0); err != nil {
		return ""
	}
	return UnitFromCgroup(string(data))
}

// UnitFromCgroup finds the systemd unit in the contents of /proc/PID/cgroup:
// the unit systemd's system manager placed the process in, which is the
// outermost ".service" or ".scope" component of the cgroup v2 path
// ("0::/system.slice/billing.service"), counted only when every component
// above it is a ".slice" — or, when the v2 path names none, the same of the
// name=systemd hierarchy (hybrid hosts). "" when neither has one.
//
// Outermost, because everything below a unit's cgroup is the unit's to
// name: a service with Delegate=yes may make a sub-cgroup called
// "web.service", and every user's own manager (user@UID.service) makes
// them for `systemd-run --user --unit=web`. Creating a cgroup beside the
// system's units needs privileges; creating one below your own does not.
// So a process under a user manager is in "user@UID.service", and a
// delegated service's children are in that service.
func UnitFromCgroup(data string) string {
	var v2, named string
	for line := range strings.SplitSeq(data, "\n") {
		id, rest, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		ctrls, path, ok := strings.Cut(rest, ":")
		if !ok {
			continue
		}
		switch {
		case id == "0" && ctrls == "":
			v2 = path
		case ctrls == "name=systemd":
			named = path
		}
	}
	if u := systemUnit(v2); u != "" {
		return u
	}
	return systemUnit(named)
}

// systemUnit is the first component of path below its slices, when that is
// a service or a scope.
func systemUnit(path string) string {
	for c := range strings.SplitSeq(path, "/") {
		switch {
		case c == "" || strings.HasSuffix(c, ".slice"):
			continue
		case strings.HasSuffix(c, ".service") || strings.HasSuffix(c, ".scope"):
			return c
		}
		return ""
	}
	return ""
}

// errNotUnix: only unix connections carry peer credentials.
var errNotUnix = errors.New("access: not a unix connection")

// IdentifyConn is Identify for a net.Conn that may wrap a *net.UnixConn
// (Unwrap() net.Conn); anything else cannot be identified.
func IdentifyConn(c net.Conn) (Peer, error) {
	for {
		switch v := c.(type) {
		case *net.UnixConn:
			return Identify(v)
		case interface{ Unwrap() net.Conn }:
			c = v.Unwrap()
		default:
			return Peer{}, errNotUnix
		}
	}
}
