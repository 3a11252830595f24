package server

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"udp_iaasd/access"
	"udp_iaasd/internal/etcdtest"
	"udp_iaasd/internal/syncbuf"
)

func TestListenModeAndGroup(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "run", "endpointd") // parent does not exist yet
	path := filepath.Join(dir, "s.sock")
	groups, _ := os.Getgroups()
	gid := os.Getgid()
	if len(groups) > 0 {
		gid = groups[len(groups)-1]
	}
	ln, err := Listen(path, 0o640, gid)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o640 {
		t.Fatalf("socket mode %v, want socket 0640", fi.Mode())
	}
	if st := fi.Sys().(*syscall.Stat_t); int(st.Gid) != gid {
		t.Fatalf("socket group %d, want %d", st.Gid, gid)
	}
	if di, _ := os.Stat(dir); di.Mode().Perm() != 0o755 {
		t.Fatalf("created directory mode %v, want 0755", di.Mode().Perm())
	}
	ln.Close()
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Close left the socket behind: %v", err)
	}
}

func TestListenRefusesAndReplaces(t *testing.T) {
	dir := t.TempDir()

	t.Run("live socket", func(t *testing.T) {
		path := filepath.Join(dir, "live.sock")
		first, err := Listen(path, 0o600, -1)
		if err != nil {
			t.Fatal(err)
		}
		defer first.Close()
		go func() { // the first one serves
			for {
				c, err := first.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
		if _, err := Listen(path, 0o600, -1); !errors.Is(err, ErrSocketInUse) {
			t.Fatalf("second Listen = %v, want ErrSocketInUse", err)
		}
		if c, err := net.Dial("unix", path); err != nil {
			t.Fatalf("the first listener stopped serving: %v", err)
		} else {
			c.Close()
		}
	})

	t.Run("stale socket", func(t *testing.T) {
		path := filepath.Join(dir, "stale.sock")
		old, err := Listen(path, 0o600, -1)
		if err != nil {
			t.Fatal(err)
		}
		// A crash leaves the file without a listener: stop unlinking, close.
		old.SetUnlinkOnClose(false)
		old.Close()
		if _, err := os.Lstat(path); err != nil {
			t.Fatalf("setup: stale socket missing: %v", err)
		}
		ln, err := Listen(path, 0o600, -1)
		if err != nil {
			t.Fatalf("stale socket not replaced: %v", err)
		}
		ln.Close()
	})

	for _, tt := range []struct {
		name  string
		setup func(path string)
	}{
		{"regular file", func(p string) { os.WriteFile(p, []byte("precious"), 0o600) }},
		{"directory", func(p string) { os.Mkdir(p, 0o700) }},
		{"symlink", func(p string) { os.Symlink(filepath.Join(dir, "elsewhere"), p) }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "-"))
			tt.setup(path)
			before, _ := os.Lstat(path)
			if _, err := Listen(path, 0o600, -1); !errors.Is(err, ErrNotSocket) {
				t.Fatalf("Listen over a %s = %v, want ErrNotSocket", tt.name, err)
			}
			after, err := os.Lstat(path)
			if err != nil || after.Mode() != before.Mode() || after.ModTime() != before.ModTime() {
				t.Fatalf("the %s was touched: %v", tt.name, err)
			}
			if tt.name == "regular file" {
				if b, _ := os.ReadFile(path); string(b) != "precious" {
					t.Fatal("the regular file's content changed")
				}
			}
		})
	}
}

func TestPeerCredentials(t *testing.T) {
	uid, gid := os.Getuid(), os.Getgid()
	tests := []struct {
		name       string
		uids, gids []int
		want       int
	}{
		{"no lists: anyone", nil, nil, http.StatusOK},
		{"our uid", []int{uid}, nil, http.StatusOK},
		{"our gid", nil, []int{gid}, http.StatusOK},
		{"other uid only", []int{uid + 12345}, nil, http.StatusForbidden},
		{"other uid and gid", []int{uid + 12345}, []int{gid + 12345}, http.StatusForbidden},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, nil, func(o *Options) {
				o.Gate = access.NewGate(access.Settings{AllowedUIDs: tt.uids, AllowedGIDs: tt.gids}, nil, nil)
			})
			for _, p := range []string{"/healthz", "/metrics", "/v1/status", "/v1/kv/peer/k"} {
				r := e.do("GET", p, nil, nil)
				got := r.status
				if p == "/v1/kv/peer/k" && got == http.StatusNotFound {
					got = http.StatusOK // allowed, the key is just absent
				}
				if got != tt.want {
					t.Fatalf("GET %s = %d, want %d (%s)", p, r.status, tt.want, r.body)
				}
				if tt.want == http.StatusForbidden {
					e.expect(r, http.StatusForbidden, "forbidden")
				}
			}
		})
	}
}

// Misbehaving local clients are cut off: huge headers, and headers that
// never finish.
func TestHeaderLimits(t *testing.T) {
	e := newEnv(t, nil, func(o *Options) { o.ReadHeaderTimeout = 300 * time.Millisecond; o.MaxHeaderBytes = 4096 })
	conn := rawConn(t, e.sock)
	fmt.Fprintf(conn, "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: %s\r\n\r\n", strings.Repeat("a", 64<<10))
	if r := readResp(t, conn, "GET"); r.status != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("huge header answered %d", r.status)
	}

	slow := rawConn(t, e.sock)
	fmt.Fprintf(slow, "GET /healthz HTTP/1.1\r\nHost: x\r\n") // and never the blank line
	start := time.Now()
	buf := make([]byte, 1)
	_, err := slow.Read(buf)
	if err == nil && time.Since(start) > 5*time.Second {
		t.Fatal("a slow header was not cut off")
	}
	if err == nil {
		// net/http may answer 408 before closing; either way it ended.
		return
	}
	// The server closed the connection.
	if time.Since(start) > 10*time.Second {
		t.Fatalf("slow header held the connection for %v", time.Since(start))
	}
	// Others are unaffected.
	e.expect(e.do("GET", "/healthz", nil, nil), http.StatusOK, "")
}

// Shutdown ends open watch streams with an ERROR line and drains.
func TestShutdownEndsWatches(t *testing.T) {
	cl := shared(t)
	e := newEnv(t, cl)
	ws := e.watch("/v1/watch/shut/k")
	etcdtest.Eventually(t, 10*time.Second, "watcher", func() bool { return e.srv.watchers.Load() == 1 })
	e.srv.beginStopping()
	for {
		select {
		case m, ok := <-ws.lines:
			if !ok {
				t.Fatal("stream closed without an ERROR line")
			}
			if m["type"] == "ERROR" {
				if m["code"] != "unavailable" {
					t.Fatalf("ERROR line %v", m)
				}
				return
			}
		case <-time.After(5 * time.Second):
			t.Fatal("no ERROR line after shutdown began")
		}
	}
}

// Before any endpoint set is applied, KV and watch answer 503 with
// Retry-After at once; health still answers.
func TestNoEndpointsIsUnavailable(t *testing.T) {
	e := serve(t, newEtcd(t, nil))
	for _, req := range [][2]string{{"GET", "/v1/kv/x"}, {"PUT", "/v1/kv/x"}, {"DELETE", "/v1/kv/x"}, {"GET", "/v1/watch/x"}} {
		var body []byte
		if req[0] == "PUT" {
			body = []byte("v")
		}
		start := time.Now()
		r := e.do(req[0], req[1], nil, body)
		e.expect(r, http.StatusServiceUnavailable, "unavailable")
		if r.header.Get("Retry-After") == "" {
			t.Fatalf("%s %s: 503 without Retry-After", req[0], req[1])
		}
		if time.Since(start) > time.Second {
			t.Fatalf("%s %s took %v: not fast", req[0], req[1], time.Since(start))
		}
	}
	e.expect(e.do("GET", "/healthz", nil, nil), http.StatusOK, "")
}

// Past limits.max_connections, new connections wait in the backlog until one
// closes; they are not refused and the others are not disturbed.
func TestConnectionCap(t *testing.T) {
	e := newEnv(t, nil, func(o *Options) { o.MaxConnections = 2 })
	a, b := rawConn(t, e.sock), rawConn(t, e.sock)
	for _, c := range []net.Conn{a, b} { // both accepted and served (keep-alive)
		fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
		if r := readResp(t, c, "GET"); r.status != 200 {
			t.Fatalf("status %d", r.status)
		}
	}
	third := rawConn(t, e.sock)
	fmt.Fprintf(third, "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	third.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	buf := make([]byte, 1)
	if _, err := third.Read(buf); err == nil {
		t.Fatal("a third connection was served past max_connections=2")
	}
	a.Close()
	third.SetReadDeadline(time.Now().Add(10 * time.Second))
	if r := readResp(t, third, "GET"); r.status != 200 {
		t.Fatalf("the waiting connection got %d after a slot freed", r.status)
	}
}

// Writes are logged at debug level with the writing peer's uid and pid
// (from SO_PEERCRED), so an operator can tell which local process wrote.
func TestWritesLogThePeer(t *testing.T) {
	var buf syncbuf.Buffer
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	e := newEnv(t, nil, func(o *Options) { o.Logger = log })
	if r := e.do("PUT", "/v1/kv/peerlog/k", nil, []byte("v")); r.status != http.StatusOK {
		t.Fatalf("PUT: %d %s", r.status, r.body)
	}
	if r := e.do("DELETE", "/v1/kv/peerlog/k", nil, nil); r.status != http.StatusOK {
		t.Fatalf("DELETE: %d %s", r.status, r.body)
	}
	peer := fmt.Sprintf("uid=%d pid=%d", os.Getuid(), os.Getpid())
	for _, op := range []string{"msg=put", "msg=delete"} {
		found := false
		for _, line := range strings.Split(buf.String(), "\n") {
			if strings.Contains(line, op) && strings.Contains(line, "key=peerlog/k") && strings.Contains(line, peer) {
				found = true
			}
		}
		if !found {
			t.Errorf("no %s line with key=peerlog/k and %s in:\n%s", op, peer, buf.String())
		}
	}
}
