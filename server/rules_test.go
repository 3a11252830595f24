package server

import (
	"bufio"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"udp_iaasd/access"
	"udp_iaasd/internal/peertest"
	"udp_iaasd/internal/syncbuf"
)

// Identities of the test peers: real processes, as the kernel reports them.
var (
	alice    = peertest.Identity{UID: 12001, GID: 12001}
	bob      = peertest.Identity{UID: 12002, GID: 12002, Groups: []uint32{23000}} // in "readers" by a supplementary group
	web      = peertest.Identity{UID: 12003, GID: 12003, Cgroup: "acl-web-1.service"}
	stranger = peertest.Identity{UID: 12004, GID: 12004}
)

func testPolicy(t *testing.T, withAlice bool) *access.Policy {
	t.Helper()
	rules := []access.Rule{
		{Name: "readers", GIDs: []uint32{23000}, Prefixes: []string{"acl/shared/"}, Read: true},
		{Name: "web", Units: []string{"acl-web-*.service"}, Prefixes: []string{"acl/web/"}, Read: true, Write: true},
		// This test process (root) sets things up through the same socket.
		{Name: "tests", UIDs: []uint32{uint32(os.Getuid())}, Prefixes: []string{""}, Read: true, Write: true},
	}
	if withAlice {
		rules = append(rules, access.Rule{Name: "alice", UIDs: []uint32{12001}, Prefixes: []string{"acl/alice/"}, Read: true, Write: true})
	}
	p, err := access.NewPolicy(rules)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// aclEnv is a server with the test rules on a socket other uids can reach.
func aclEnv(t *testing.T, buf *syncbuf.Buffer) *env {
	t.Helper()
	peertest.Skip(t, false)
	e := newEnv(t, nil, func(o *Options) {
		o.Logger = slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelInfo}))
		o.Gate = access.NewGate(access.Settings{Policy: testPolicy(t, true), Audit: true}, o.Registry, o.Logger)
	})
	if err := os.Chmod(e.sock, 0o666); err != nil {
		t.Fatal(err)
	}
	peertest.OpenPath(t, filepath.Dir(e.sock))
	return e
}

// Each identity, through a real process, gets exactly what the rules say on
// every path: reads, writes, listings, watches, conditional and TTL writes.
func TestAccessRulesForRealPeers(t *testing.T) {
	var buf syncbuf.Buffer
	e := aclEnv(t, &buf)
	if r := e.do("PUT", "/v1/kv/acl/shared/x", nil, []byte("s")); r.status != http.StatusOK {
		t.Fatalf("setup: %d %s", r.status, r.body)
	}
	const U = "http://localhost"
	for _, tc := range []struct {
		who             peertest.Identity
		name            string
		method, path    string
		body            string
		headers         []string
		want            int
		wantInForbidden string
	}{
		{alice, "own key", "PUT", "/v1/kv/acl/alice/k", "v", nil, 200, ""},
		{alice, "own key read", "GET", "/v1/kv/acl/alice/k", "", nil, 200, ""},
		{alice, "own key head", "HEAD", "/v1/kv/acl/alice/k", "", nil, 200, ""},
		{alice, "own listing", "GET", "/v1/kv/acl/alice/?prefix", "", nil, 200, ""},
		{alice, "conditional create", "PUT", "/v1/kv/acl/alice/c", "v", []string{"If-None-Match: *"}, 200, ""},
		{alice, "conditional create again", "PUT", "/v1/kv/acl/alice/c", "v", []string{"If-None-Match: *"}, 412, ""},
		{alice, "TTL write", "PUT", "/v1/kv/acl/alice/t?ttl=30", "v", nil, 200, ""},
		{alice, "wider listing", "GET", "/v1/kv/acl/al?prefix", "", nil, 403, `uid 12001 may not read keys under prefix "acl/al"`},
		{alice, "everything", "GET", "/v1/kv/?prefix", "", nil, 403, "may not read"},
		{alice, "other key", "GET", "/v1/kv/acl/shared/x", "", nil, 403, `may not read key "acl/shared/x"`},
		{alice, "other key write", "PUT", "/v1/kv/acl/shared/x", "v", nil, 403, "may not write"},
		{alice, "other key TTL write", "PUT", "/v1/kv/acl/shared/x?ttl=5", "v", nil, 403, "may not write"},
		{alice, "other key conditional", "DELETE", "/v1/kv/acl/shared/x", "", []string{"If-Match: \"1\""}, 403, "may not write"},
		{alice, "other watch", "GET", "/v1/watch/acl/shared/x", "", nil, 403, "may not read"},
		{alice, "own prefix delete", "DELETE", "/v1/kv/acl/alice/?prefix", "", nil, 200, ""},
		{bob, "group read", "GET", "/v1/kv/acl/shared/x", "", nil, 200, ""},
		{bob, "group listing", "GET", "/v1/kv/acl/shared/?prefix", "", nil, 200, ""},
		{bob, "group may not write", "PUT", "/v1/kv/acl/shared/x", "v", nil, 403, "uid 12002 may not write"},
		{bob, "group may not delete", "DELETE", "/v1/kv/acl/shared/?prefix", "", nil, 403, "may not write"},
		{bob, "status for a matched peer", "GET", "/v1/status", "", nil, 200, ""},
		{web, "unit write", "PUT", "/v1/kv/acl/web/session", "v", nil, 200, ""},
		{web, "unit read elsewhere", "GET", "/v1/kv/acl/alice/k", "", nil, 403, "uid 12003 (unit acl-web-1.service) may not read"},
		{stranger, "no rule: kv", "GET", "/v1/kv/acl/shared/x", "", nil, 403, "matches no access rule"},
		{stranger, "no rule: healthz", "GET", "/healthz", "", nil, 403, "matches no access rule"},
		{stranger, "no rule: status", "GET", "/v1/status", "", nil, 403, "matches no access rule"},
		{stranger, "no rule: metrics", "GET", "/metrics", "", nil, 403, "matches no access rule"},
		{stranger, "no rule: watch", "GET", "/v1/watch/acl/shared/x", "", nil, 403, "matches no access rule"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body := peertest.Do(t, e.sock, tc.who, tc.method, U+tc.path, tc.body, tc.headers...)
			if code != tc.want {
				t.Fatalf("%s %s as uid %d: %d %s, want %d", tc.method, tc.path, tc.who.UID, code, body, tc.want)
			}
			if tc.want == 403 && tc.method != "HEAD" {
				var eb struct{ Code, Error string }
				if err := json.Unmarshal([]byte(body), &eb); err != nil || eb.Code != "forbidden" || !strings.Contains(eb.Error, tc.wantInForbidden) {
					t.Fatalf("403 body %s: want code forbidden and %q in the message", body, tc.wantInForbidden)
				}
				// Never another rule's prefixes.
				for _, other := range []string{"acl/web/", "acl/alice/", "acl/shared/"} {
					if !strings.Contains(tc.path, other) && strings.Contains(body, other) {
						t.Fatalf("403 body %s names another rule's prefix %s", body, other)
					}
				}
			}
		})
	}
	// What the writes did, and what the audit saw.
	if v, ok := e.directGet("acl/web/session"); !ok || v != "v" {
		t.Errorf("the unit's write is not in etcd: %q %v", v, ok)
	}
	if v, _ := e.directGet("acl/shared/x"); v != "s" {
		t.Errorf("a refused write changed acl/shared/x to %q", v)
	}
	logs := buf.String()
	for _, want := range []string{
		`msg="audit: write allowed" uid=12001 gid=12001`, `rule=alice`,
		`msg="audit: write allowed" uid=12003`, `unit=acl-web-1.service key=acl/web/session`,
		`msg="access denied" uid=12002`, `op=write key=acl/shared/x`,
		`msg="access denied" uid=12004`, `op=any`,
	} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %q:\n%s", want, logs)
		}
	}
	// The refusals above, by operation.
	metrics := e.do("GET", "/metrics", nil, nil).body
	for op, want := range map[string]int{"read": 5, "write": 5, "any": 5} {
		line := fmt.Sprintf("endpointd_access_denied_total{op=%q} %d\n", op, want)
		if !strings.Contains(string(metrics), line) {
			t.Errorf("/metrics lacks %q", line)
		}
	}
}

// A reload that takes a rule away ends the peer's open watch with an ERROR
// line (code forbidden); the peer's next request is refused.
func TestAccessReloadEndsWatch(t *testing.T) {
	var buf syncbuf.Buffer
	e := aclEnv(t, &buf)
	cmd := peertest.Command(t, e.sock, alice, "watch", "GET", "http://localhost/v1/watch/acl/alice/?prefix&heartbeat=100ms", "")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer cmd.Process.Kill()
	lines := make(chan string, 64)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	next := func(what string) string {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("stream ended waiting for %s", what)
			}
			return l
		case <-time.After(10 * time.Second):
			t.Fatalf("no line for %s", what)
		}
		return ""
	}
	if l := next("status"); l != "200" {
		t.Fatalf("watch: %s", l)
	}
	// An event reaches it while the rule stands.
	if r := e.do("PUT", "/v1/kv/acl/alice/w", nil, []byte("1")); r.status != 200 {
		t.Fatal(r.status)
	}
	for l := next("the event"); !strings.Contains(l, `"type":"PUT"`); l = next("the event") {
	}
	// A reload that keeps the rule changes nothing for the stream.
	e.srv.gate.Set(access.Settings{Policy: testPolicy(t, true), Audit: true})
	if r := e.do("PUT", "/v1/kv/acl/alice/w", nil, []byte("2")); r.status != 200 {
		t.Fatal(r.status)
	}
	for l := next("the second event"); !strings.Contains(l, `"type":"PUT"`); l = next("the second event") {
		if strings.Contains(l, "ERROR") {
			t.Fatalf("stream ended by a reload that kept its rule: %s", l)
		}
	}
	// Now without alice's rule.
	e.srv.gate.Set(access.Settings{Policy: testPolicy(t, false), Audit: true})
	var last string
	for l := range lines {
		last = l
	}
	if !strings.Contains(last, `"type":"ERROR"`) || !strings.Contains(last, `"code":"forbidden"`) || !strings.Contains(last, "uid 12001") {
		t.Fatalf("the stream's last line is %q, want an ERROR with code forbidden naming the peer", last)
	}
	if code, body := peertest.Do(t, e.sock, alice, "GET", "http://localhost/v1/kv/acl/alice/w", ""); code != 403 {
		t.Fatalf("after the reload: %d %s", code, body)
	}
}

// A units rule matches the unit systemd's system manager placed the peer
// in. The same uid in a cgroup of that name below a user manager
// (systemd-run --user --unit=…) or below a delegated service is in that
// manager's or service's unit, and matches no rule.
func TestUnitRuleCannotBeForged(t *testing.T) {
	peertest.Skip(t, true)
	policy, err := access.NewPolicy([]access.Rule{
		{Name: "bar", Units: []string{"bar-demo.service"}, Prefixes: []string{"bar/"}, Read: true, Write: true},
		{Name: "tests", UIDs: []uint32{uint32(os.Getuid())}, Prefixes: []string{""}, Read: true, Write: true},
	})
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, nil, withPolicy(policy))
	if err := os.Chmod(e.sock, 0o666); err != nil {
		t.Fatal(err)
	}
	peertest.OpenPath(t, filepath.Dir(e.sock))
	const uid = 12005
	for _, tc := range []struct {
		name, cgroup string
		want         int
		unit         string // the unit the refusal names
	}{
		{"the system unit", "bar-demo.service", 200, ""},
		{"a user manager's unit of that name", "user-12005.slice/user@12005.service/app.slice/bar-demo.service", 403, "user@12005.service"},
		{"a delegated service's sub-cgroup of that name", "other.service/bar-demo.service", 403, "other.service"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := peertest.Identity{UID: uid, GID: uid, Cgroup: tc.cgroup}
			code, body := peertest.Do(t, e.sock, id, "PUT", "http://localhost/v1/kv/bar/x", "v")
			if code != tc.want {
				t.Fatalf("PUT bar/x from cgroup %s: %d %s, want %d", tc.cgroup, code, body, tc.want)
			}
			if want := fmt.Sprintf("uid %d (unit %s) matches no access rule", uid, tc.unit); tc.want == 403 && !strings.Contains(body, want) {
				t.Fatalf("refusal %s: want it to say %q", body, want)
			}
		})
	}
}

// Refusals are logged per (uid, unit), not per process: sixty processes of
// one uid, each refused once, write one log line; the counter counts all
// sixty.
func TestForkingPeerDoesNotFloodTheLog(t *testing.T) {
	var buf syncbuf.Buffer
	e := aclEnv(t, &buf)
	const n = 60
	start := time.Now()
	for i := range n {
		if code, body := peertest.Do(t, e.sock, stranger, "GET", "http://localhost/v1/kv/acl/shared/x", ""); code != 403 {
			t.Fatalf("request %d: %d %s", i, code, body)
		}
	}
	// At most one line per interval (a loaded machine spreads the 60
	// processes over more intervals), and every refusal either logged or
	// counted in the next line's not_logged_before.
	elapsed := time.Since(start)
	var lines, suppressed int
	for l := range strings.SplitSeq(buf.String(), "\n") {
		if !strings.Contains(l, `msg="access denied" uid=12004`) {
			continue
		}
		lines++
		var k int
		if _, err := fmt.Sscanf(l[strings.Index(l, "not_logged_before="):], "not_logged_before=%d", &k); err != nil {
			t.Fatalf("refusal line without its count: %s", l)
		}
		suppressed += k
	}
	if most := 1 + int(elapsed/(10*time.Second)); lines < 1 || lines > most {
		t.Fatalf("%d refusal lines for %d refusals of one uid in %v, want 1 to %d:\n%s", lines, n, elapsed, most, buf.String())
	}
	if lines+suppressed > n {
		t.Fatalf("%d logged and %d counted as left out, of %d refusals", lines, suppressed, n)
	}
	line := fmt.Sprintf("endpointd_access_denied_total{op=\"any\"} %d\n", n)
	if metrics := e.do("GET", "/metrics", nil, nil).body; !strings.Contains(string(metrics), line) {
		t.Fatalf("/metrics lacks %q", line)
	}
}
