package server

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"udp_iaasd/access"
	"udp_iaasd/internal/etcdtest"
	"udp_iaasd/internal/peertest"
)

func revOf(t *testing.T, m map[string]any) int64 {
	t.Helper()
	f, ok := m["revision"].(float64)
	if !ok {
		t.Fatalf("no revision in %v", m)
	}
	return int64(f)
}

// A lock is held while its request is open: a second request waits (409
// locked naming the holder when its wait runs out), and gets the lock as
// soon as the first connection closes, with a larger fencing token.
func TestLockHoldAndRelease(t *testing.T) {
	e := newEnv(t, nil)
	first := e.stream("POST", "/v1/lock/svl?ttl=5&heartbeat=100ms", "")
	if first.resp.StatusCode != http.StatusOK || first.resp.Header.Get("Content-Type") != "application/x-ndjson" {
		t.Fatalf("lock: %d %v", first.resp.StatusCode, first.resp.Header)
	}
	locked := first.next()
	if locked["type"] != "LOCKED" || !strings.HasPrefix(locked["key"].(string), "svl/") {
		t.Fatalf("first line %v", locked)
	}
	rev := revOf(t, locked)
	// Heartbeats while held.
	select {
	case m := <-first.lines:
		if m["type"] != "PROGRESS" {
			t.Fatalf("heartbeat %v", m)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no heartbeat")
	}

	for _, q := range []string{"wait=0", "wait=200ms"} {
		r := e.do("POST", "/v1/lock/svl?"+q, nil, nil)
		e.expect(r, http.StatusConflict, "locked")
		var body struct {
			Key      string
			Revision int64
			Holder   string
		}
		json.Unmarshal(r.body, &body)
		if body.Key != locked["key"] || body.Revision != rev {
			t.Fatalf("%s: 409 body %s, want the holder %v", q, r.body, locked)
		}
		// The holder said who it is: this test's process, on this host.
		host, _ := os.Hostname()
		if want := fmt.Sprintf("uid %d", os.Getuid()); !strings.HasPrefix(body.Holder, want) ||
			!strings.Contains(body.Holder, fmt.Sprintf("pid %d on %s", os.Getpid(), host)) {
			t.Fatalf("%s: 409 holder %q, want %s … pid %d on %s; body %s", q, body.Holder, want, os.Getpid(), host, r.body)
		}
	}

	got := make(chan *watchStream, 1)
	go func() { got <- e.stream("POST", "/v1/lock/svl?wait=20s", "") }()
	e.waiters("svl/", 2)
	released := time.Now()
	first.conn.Close()
	second := <-got
	m := second.next()
	if m["type"] != "LOCKED" || revOf(t, m) <= rev {
		t.Fatalf("second holder %v (first's revision %d)", m, rev)
	}
	t.Logf("the waiter got the lock %v after the holder's connection closed", time.Since(released).Round(time.Millisecond))
}

// waiters waits until n holders and waiters have their keys under prefix
// (a lock's or an election's): a second request is then waiting, not still
// on its way.
func (e *env) waiters(prefix string, n int64) {
	e.t.Helper()
	etcdtest.Eventually(e.t, 10*time.Second, fmt.Sprintf("%d holders and waiters under %s", n, prefix), func() bool {
		resp, err := e.direct.Get(e.t.Context(), prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
		return err == nil && resp.Count == n
	})
}

// A holder killed with SIGKILL (a real process, whose socket the kernel
// closes) releases the lock at once, not after the TTL.
func TestLockReleasedWhenHolderKilled(t *testing.T) {
	peertest.Skip(t, false)
	e := newEnv(t, nil)
	os.Chmod(e.sock, 0o666)
	peertest.OpenPath(t, filepath.Dir(e.sock))
	holder := peertest.Command(t, e.sock, peertest.Identity{UID: 0, GID: 0}, "watch", "POST", "http://localhost/v1/lock/kill9?ttl=60", "")
	out, _ := holder.StdoutPipe()
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 256)
	n, _ := out.Read(buf)
	if !strings.Contains(string(buf[:n]), "200") {
		t.Fatalf("holder: %q", buf[:n])
	}
	etcdtest.Eventually(t, 10*time.Second, "the holder's key", func() bool {
		resp, err := e.direct.Get(t.Context(), "kill9/", clientv3.WithPrefix())
		return err == nil && len(resp.Kvs) == 1
	})
	holder.Process.Kill()
	holder.Wait()
	killed := time.Now()
	next := e.stream("POST", "/v1/lock/kill9?wait=10s&heartbeat=1h", "")
	if next.resp.StatusCode != http.StatusOK {
		t.Fatalf("after the holder was killed: %d", next.resp.StatusCode)
	}
	if m := next.next(); m["type"] != "LOCKED" {
		t.Fatalf("after the holder was killed: %v", m)
	}
	// Within the 10s wait, far inside the 60s TTL: released by the closed
	// connection, not by the lease.
	t.Logf("acquired %v after SIGKILL of the holder (ttl 60s)", time.Since(killed).Round(time.Millisecond))
}

// Elections: the leader is the first campaigner until it leaves, GET and
// observe say so, and the next one is elected when it does.
func TestElectionStreams(t *testing.T) {
	e := newEnv(t, nil)
	e.expect(e.do("GET", "/v1/election/sve", nil, nil), http.StatusNotFound, "not_found")
	obs := e.stream("GET", "/v1/election/sve?observe&heartbeat=1h", "")
	a := e.stream("POST", "/v1/election/sve?ttl=5", "alpha")
	ea := a.next()
	if ea["type"] != "ELECTED" {
		t.Fatalf("a: %v", ea)
	}
	if l := obs.next(); l["type"] != "LEADER" || l["value"] != "alpha" || l["key"] != ea["key"] {
		t.Fatalf("observed %v", l)
	}
	r := e.do("GET", "/v1/election/sve", nil, nil)
	var cur map[string]any
	json.Unmarshal(r.body, &cur)
	if r.status != 200 || cur["value"] != "alpha" || revOf(t, cur) != revOf(t, ea) {
		t.Fatalf("GET leader: %d %s", r.status, r.body)
	}
	bc := make(chan *watchStream, 1)
	go func() { bc <- e.stream("POST", "/v1/election/sve", "beta") }()
	e.waiters("sve/", 2)
	a.conn.Close()
	b := <-bc
	eb := b.next()
	if eb["type"] != "ELECTED" || revOf(t, eb) <= revOf(t, ea) {
		t.Fatalf("b: %v", eb)
	}
	if l := obs.next(); l["value"] != "beta" {
		t.Fatalf("observed %v after a left", l)
	}
	e.expect(e.do("PUT", "/v1/election/sve", nil, nil), http.StatusMethodNotAllowed, "method_not_allowed")
}

// ownPolicy lets this process's uid read and write under prefix only.
func ownPolicy(t *testing.T, prefix string) *access.Policy {
	t.Helper()
	p, err := access.NewPolicy([]access.Rule{{Name: "t", UIDs: []uint32{uint32(os.Getuid())}, Prefixes: []string{prefix}, Read: true, Write: true}})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// A hold whose lease is gone ends with LOST; names go through the access
// rules, and a reload that takes the right away ends the hold (released).
func TestLockLostAndAccess(t *testing.T) {
	e := newEnv(t, nil, withPolicy(ownPolicy(t, "lk/")))
	e.expect(e.do("POST", "/v1/lock/other", nil, nil), http.StatusForbidden, "forbidden")
	e.expect(e.do("POST", "/v1/election/other", nil, []byte("v")), http.StatusForbidden, "forbidden")
	e.expect(e.do("GET", "/v1/election/other", nil, nil), http.StatusForbidden, "forbidden")
	// "lk" itself is outside lk/: the lock's keys are lk/…, under "lk/"
	// only when the name starts with it.
	e.expect(e.do("POST", "/v1/lock/l", nil, nil), http.StatusForbidden, "forbidden")

	s := e.stream("POST", "/v1/lock/lk/a?ttl=3", "")
	m := s.next()
	key := m["key"].(string)
	lease, err := strconv.ParseInt(key[strings.LastIndexByte(key, '/')+1:], 16, 64)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.direct.Revoke(t.Context(), clientv3.LeaseID(lease)); err != nil {
		t.Fatal(err)
	}
	if m := s.next(); m["type"] != "LOST" {
		t.Fatalf("after the lease was revoked: %v", m)
	}

	s2 := e.stream("POST", "/v1/lock/lk/b", "")
	if m := s2.next(); m["type"] != "LOCKED" {
		t.Fatal(m)
	}
	e.srv.gate.Set(access.Settings{Policy: ownPolicy(t, "elsewhere/")})
	if m := s2.next(); m["type"] != "ERROR" || m["code"] != "forbidden" {
		t.Fatalf("after the rule was taken away: %v", m)
	}
	etcdtest.Eventually(t, 5*time.Second, "the revoked hold released", func() bool {
		resp, err := e.direct.Get(t.Context(), "lk/b/", clientv3.WithPrefix())
		return err == nil && len(resp.Kvs) == 0
	})
}

// A reload that comes while a lock is waited for ends the hold as soon as
// it is taken, if the new rules no longer allow it: the hold watches for
// reloads since its rules were first consulted, not since it was granted.
func TestLockWaitOutlivedByItsRule(t *testing.T) {
	e := newEnv(t, nil, withPolicy(ownPolicy(t, "lw/")))
	first := e.stream("POST", "/v1/lock/lw/x?heartbeat=1h", "")
	if m := first.next(); m["type"] != "LOCKED" {
		t.Fatal(m)
	}
	// The second waits (its answer starts once it holds the lock).
	second := make(chan *watchStream, 1)
	go func() { second <- e.stream("POST", "/v1/lock/lw/x?heartbeat=1h", "") }()
	etcdtest.Eventually(t, 10*time.Second, "the second to wait", func() bool {
		resp, err := e.direct.Get(t.Context(), "lw/x/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		return err == nil && resp.Count == 2
	})

	e.srv.gate.Set(access.Settings{Policy: ownPolicy(t, "elsewhere/")})
	if m := first.next(); m["type"] != "ERROR" || m["code"] != "forbidden" {
		t.Fatalf("the holder, after the rule was taken away: %v", m)
	}
	var s *watchStream
	select {
	case s = <-second:
	case <-time.After(15 * time.Second):
		t.Fatal("the waiter never got the lock")
	}
	if m := s.next(); m["type"] != "LOCKED" {
		t.Fatalf("the waiter: %v", m)
	}
	if m := s.next(); m["type"] != "ERROR" || m["code"] != "forbidden" {
		t.Fatalf("the waiter, granted after the rule was taken away: %v", m)
	}
	etcdtest.Eventually(t, 5*time.Second, "both holds released", func() bool {
		resp, err := e.direct.Get(t.Context(), "lw/x/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		return err == nil && resp.Count == 0
	})
}

// etcd away for less than the TTL does not end a hold; away for longer,
// the hold ends with LOST (the agent cannot know its lease survived).
// The member is a process of its own, stopped with SIGSTOP.
func TestLockOutageShorterAndLongerThanTTL(t *testing.T) {
	cl := etcdtest.NewProc(t, 1)
	e := newEnv(t, cl)
	s := e.stream("POST", "/v1/lock/outage?ttl=4&heartbeat=200ms", "")
	if m := s.next(); m["type"] != "LOCKED" {
		t.Fatal(m)
	}
	m := cl.Members[0]
	if err := m.Pause(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	m.Resume()
	// The hold stands: heartbeats go on and no LOST comes for well past the
	// outage.
	deadline := time.After(3 * time.Second)
	for done := false; !done; {
		select {
		case l, ok := <-s.lines:
			if !ok || l["type"] != "PROGRESS" {
				t.Fatalf("after a 1s outage (ttl 4s): %v (open %v)", l, ok)
			}
		case <-deadline:
			done = true
		}
	}
	if err := m.Pause(); err != nil {
		t.Fatal(err)
	}
	defer m.Resume()
	if l := s.next(); l["type"] != "LOST" {
		t.Fatalf("after an outage longer than the ttl: %v", l)
	}
}

// Killing the etcd leader (SIGKILL, a member process) while a lock is held
// does not end the hold: the cluster elects another leader within the TTL,
// the lease survives, and a contender keeps waiting until the holder lets
// go.
func TestLockSurvivesLeaderKill(t *testing.T) {
	cl := etcdtest.NewProc(t, 3)
	e := newEnv(t, cl)
	s := e.stream("POST", "/v1/lock/lk9?ttl=10&heartbeat=200ms", "")
	if m := s.next(); m["type"] != "LOCKED" {
		t.Fatal(m)
	}
	killed := false
	for _, m := range cl.Members {
		st, err := e.direct.Status(t.Context(), m.Endpoint())
		if err == nil && st.Leader == st.Header.MemberId {
			m.Kill()
			killed = true
			break
		}
	}
	if !killed {
		t.Fatal("no leader found")
	}
	waiter := make(chan *watchStream, 1)
	go func() { waiter <- e.stream("POST", "/v1/lock/lk9?wait=30s", "") }()
	// For longer than an election takes, the hold stands and the contender
	// waits.
	deadline := time.After(4 * time.Second)
	for done := false; !done; {
		select {
		case l, ok := <-s.lines:
			if !ok || l["type"] != "PROGRESS" {
				t.Fatalf("after the leader was killed: %v (open %v)", l, ok)
			}
		case w := <-waiter:
			t.Fatalf("a contender got the lock while it was held: %d", w.resp.StatusCode)
		case <-deadline:
			done = true
		}
	}
	s.conn.Close()
	w := <-waiter
	if m := w.next(); m["type"] != "LOCKED" {
		t.Fatalf("the contender after release: %v", m)
	}
}
