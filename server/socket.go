package server

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Errors of Listen, for errors.Is.
var (
	ErrSocketInUse = errors.New("server: another process is serving on the socket")
	ErrNotSocket   = errors.New("server: the socket path holds something that is not a socket")
)

// Listen creates the unix socket at path with the given mode and group (gid
// < 0 keeps the process's group). There is no window in which the socket is
// more open than mode: it is bound, then chowned and chmodded, and only then
// listens — a bound socket that does not listen refuses every connection, so
// the process-wide umask need not be touched. A stale socket (no one accepts
// on it) is replaced; a live one, or anything at the path that is not a socket
// (a file, a directory, a symlink), is refused and left untouched. A missing
// parent directory is created with mode 0755; an existing one is never
// loosened.
func Listen(path string, mode os.FileMode, gid int) (*net.UnixListener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("server: socket directory: %w", err)
	}
	if err := clearStale(path); err != nil {
		return nil, err
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("server: socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("server: bind %s: %w", path, err)
	}
	fail := func(what string, err error) (*net.UnixListener, error) {
		unix.Close(fd)
		os.Remove(path)
		return nil, fmt.Errorf("server: %s %s: %w", what, path, err)
	}
	if gid >= 0 {
		if err := os.Lchown(path, -1, gid); err != nil {
			return fail("chown", err)
		}
	}
	if err := os.Chmod(path, mode.Perm()); err != nil {
		return fail("chmod", err)
	}
	if err := unix.Listen(fd, 1024); err != nil {
		return fail("listen", err)
	}
	f := os.NewFile(uintptr(fd), path)
	ln, err := net.FileListener(f)
	f.Close()
	if err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("server: listener for %s: %w", path, err)
	}
	ul := ln.(*net.UnixListener)
	// We created the file; Close removes it (net's default for listeners it
	// binds itself, which a listener built from a descriptor does not have).
	ul.SetUnlinkOnClose(true)
	return ul, nil
}

// clearStale removes a socket nobody accepts on, and refuses anything else.
func clearStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("server: socket path: %w", err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("%w: %s is a %s; remove it or choose another socket.path", ErrNotSocket, path, typeName(fi.Mode()))
	}
	conn, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		conn.Close()
		return fmt.Errorf("%w: %s answers; is another endpointd running?", ErrSocketInUse, path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("server: probe existing socket %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("server: remove stale socket: %w", err)
	}
	return nil
}

func typeName(m fs.FileMode) string {
	switch {
	case m&fs.ModeSymlink != 0:
		return "symlink"
	case m.IsDir():
		return "directory"
	case m.IsRegular():
		return "regular file"
	}
	return "non-socket file"
}

// limitListener caps concurrent connections (max > 0): past max, Accept
// waits for one to close and new clients queue in the kernel's backlog. It
// tells accepted of every connection as it is taken, and knows whether an
// Accept is under way, so that a shutdown can tell when the last connection
// taken has been counted (Server.awaitNoNewConns).
func limitListener(ln net.Listener, max int, accepted func(net.Conn), acceptDone func()) *limitedListener {
	l := &limitedListener{Listener: ln, done: make(chan struct{}), accepted: accepted, acceptDone: acceptDone}
	if max > 0 {
		l.sem = make(chan struct{}, max)
	}
	return l
}

type limitedListener struct {
	net.Listener
	sem       chan struct{} // nil: no cap
	done      chan struct{}
	closeOnce sync.Once
	accepted  func(net.Conn)
	// acceptDone is told each time an Accept call ends (awaitNoNewConns
	// waits for none to be under way).
	acceptDone func()
	inAccept   atomic.Int64 // Accept calls under way
	stopped    atomic.Bool  // stopAccepting was called
}

func (l *limitedListener) Accept() (net.Conn, error) {
	if l.sem != nil {
		select {
		case l.sem <- struct{}{}:
		case <-l.done:
			return nil, net.ErrClosed
		}
	}
	l.inAccept.Add(1)
	defer func() {
		l.inAccept.Add(-1)
		if l.acceptDone != nil {
			l.acceptDone()
		}
	}()
	c, err := l.Listener.Accept()
	if err != nil {
		if l.sem != nil {
			<-l.sem
		}
		if l.stopped.Load() {
			// The past deadline is a timeout, which net/http would retry
			// (and log) with backoff until Shutdown; say closed instead.
			return nil, errStopped
		}
		return nil, err
	}
	release := func() {}
	if l.sem != nil {
		release = func() { <-l.sem }
	}
	lc := &limitedConn{Conn: c, release: release}
	if l.accepted != nil {
		l.accepted(lc) // counted before the Accept is over
	}
	return lc, nil
}

// errStopped is what Accept returns once stopAccepting was called.
var errStopped = fmt.Errorf("no longer accepting: %w", net.ErrClosed)

// stopAccepting makes Accept fail from now on without taking another
// connection from the kernel: with the deadline past, Accept returns before
// calling accept(2), so connections still queued stay in the socket's
// backlog (for the next agent, when systemd holds the socket).
func (l *limitedListener) stopAccepting() {
	l.stopped.Store(true)
	if d, ok := l.Listener.(interface{ SetDeadline(time.Time) error }); ok {
		d.SetDeadline(time.Now())
	}
}

// countNew follows connections through net/http's states, counting those
// accepted whose first request has not been read yet.
// A connection counts until its first request reaches the handler
// (started), or it goes idle or away: net/http drops, unanswered, a request
// it has read but not yet handed over when Shutdown begins.
func (s *Server) countNew(c net.Conn, st http.ConnState) {
	switch st {
	case http.StateIdle, http.StateHijacked, http.StateClosed:
		s.started(c)
	}
}

// accepted counts a connection just taken (limitListener).
func (s *Server) accepted(c net.Conn) {
	s.fresh.Store(c, struct{}{})
	s.newConns.Add(1)
}

// started: c's request has reached the handler.
func (s *Server) started(c net.Conn) {
	if _, was := s.fresh.LoadAndDelete(c); was {
		s.newConns.Add(-1)
		s.settled.notify()
	}
}

// changes is a broadcast of "something changed": wait returns a channel
// that the next notify closes. It costs a lock per notify, which happens
// once per connection (its first request) and per Accept, not per request.
type changes struct {
	mu sync.Mutex // guards ch
	ch chan struct{}
}

func (c *changes) wait() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ch == nil {
		c.ch = make(chan struct{})
	}
	return c.ch
}

func (c *changes) notify() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ch != nil {
		close(c.ch)
		c.ch = nil
	}
}

// awaitNoNewConns waits, up to max, until no Accept is under way and every
// connection taken has had its first request handed to the handler (or
// gone).
func (s *Server) awaitNoNewConns(l *limitedListener, max time.Duration) {
	timeout := time.NewTimer(max)
	defer timeout.Stop()
	for {
		changed := s.settled.wait() // before the check: no change is missed
		if l.inAccept.Load() == 0 && s.newConns.Load() == 0 {
			return
		}
		select {
		case <-changed:
		case <-timeout.C:
			return
		}
	}
}

func (l *limitedListener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return l.Listener.Close()
}

type limitedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

// Unwrap gives access.IdentifyConn the unix connection.
func (c *limitedConn) Unwrap() net.Conn { return c.Conn }

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
