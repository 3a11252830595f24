package grpcapi_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"udp_iaasd/access"
	"udp_iaasd/etcd"
	"udp_iaasd/internal/etcdtest"
)

// etcdctl is stock etcdctl, built from go.etcd.io/etcd/etcdctl/v3 (a tool
// of this module, go.mod's tool directive) once per test binary.
var (
	etcdctlOnce sync.Once
	etcdctlPath string
	etcdctlErr  error
)

func etcdctl(t *testing.T) string {
	t.Helper()
	etcdctlOnce.Do(func() {
		dir, err := os.MkdirTemp("", "endpointd-etcdctl-")
		if err != nil {
			etcdctlErr = err
			return
		}
		etcdctlPath = filepath.Join(dir, "etcdctl")
		out, err := exec.Command("go", "build", "-o", etcdctlPath, "go.etcd.io/etcd/etcdctl/v3").CombinedOutput()
		if err != nil {
			etcdctlErr = fmt.Errorf("go build etcdctl: %v\n%s", err, out)
		}
	})
	if etcdctlErr != nil {
		t.Fatal(etcdctlErr)
	}
	return etcdctlPath
}

// ctl runs etcdctl against the socket and returns its exit code and output.
func ctl(t *testing.T, sock string, stdin string, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(etcdctl(t), append([]string{"--endpoints", "unix://" + sock, "--dial-timeout", "5s", "--command-timeout", "10s"}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	out, _ := cmd.CombinedOutput()
	return cmd.ProcessState.ExitCode(), string(out)
}

// The README's commands, with stock etcdctl on the socket.
func TestEtcdctl(t *testing.T) {
	cl := etcdtest.New(t, 3)
	a := startAgent(t, cl.Endpoints(), nil)
	s := a.sock
	steps := []struct {
		stdin string
		args  []string
		has   string
	}{
		{"", []string{"put", "app/x", "1"}, "OK"},
		{"", []string{"get", "app/x"}, "app/x\n1"},
		{"", []string{"get", "--prefix", "app/", "--keys-only"}, "app/x"},
		{"value(\"app/x\") = \"1\"\n\nput app/y 2\n\nget app/x\n\n", []string{"txn"}, "SUCCESS"},
		{"", []string{"get", "app/y"}, "app/y\n2"},
		{"", []string{"del", "--prefix", "app/"}, "2"},
		{"", []string{"lease", "grant", "60"}, "granted with TTL(60s)"},
		{"", []string{"member", "list"}, "started"},
		// Every member's client URL is the socket, so --cluster stays on it.
		{"", []string{"member", "list", "-w", "simple"}, ", unix://" + s + ", "},
		{"", []string{"endpoint", "status"}, "unix://" + s},
		{"", []string{"endpoint", "status", "--cluster"}, "unix://" + s},
		{"", []string{"endpoint", "health"}, "is healthy"},
		{"", []string{"auth", "status"}, "Authentication Status: false"},
		{"", []string{"alarm", "list"}, ""},
		{"", []string{"lock", "app/l", "echo", "held"}, "held"},
		{"", []string{"defrag"}, "PermissionDenied"},
		{"", []string{"member", "add", "x", "--peer-urls", "http://127.0.0.1:1"}, "PermissionDenied"},
		{"", []string{"compaction", "1"}, "PermissionDenied"},
		{"", []string{"defrag", "--cluster"}, "PermissionDenied"},
	}
	for _, st := range steps {
		code, out := ctl(t, s, st.stdin, st.args...)
		if !strings.Contains(out, st.has) || (code != 0) != strings.Contains(st.has, "PermissionDenied") {
			t.Fatalf("etcdctl %s: exit %d\n%s\nwant %q", strings.Join(st.args, " "), code, out, st.has)
		}
	}
	// lease keep-alive and revoke on the lease just granted.
	_, out := ctl(t, s, "", "lease", "grant", "60")
	var id string
	fmt.Sscanf(out, "lease %s granted", &id)
	if code, out := ctl(t, s, "", "lease", "keep-alive", "--once", id); code != 0 || !strings.Contains(out, "keepalived") {
		t.Fatalf("keep-alive: %d %s", code, out)
	}
	if code, out := ctl(t, s, "", "lease", "revoke", id); code != 0 || !strings.Contains(out, "revoked") {
		t.Fatalf("revoke: %d %s", code, out)
	}

	// elect: a campaigner holds while another process sees it lead.
	camp := exec.Command(etcdctl(t), "--endpoints", "unix://"+s, "elect", "app/e", "host-a")
	camp.Stdout, camp.Stderr = new(strings.Builder), new(strings.Builder)
	if err := camp.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { camp.Process.Kill(); camp.Wait() }()
	if !electListenNames(t, []string{"--endpoints", "unix://" + s}, "app/e", "host-a") {
		t.Fatal("etcdctl elect -l never named the campaigner")
	}
}

// An access rule limiting this uid to app/: etcdctl get --prefix "" fails
// with PermissionDenied while get app/x works; and a watch through etcdctl
// loses no event across an endpoints reload.
func TestEtcdctlAccessAndWatch(t *testing.T) {
	cl := etcdtest.New(t, 3)
	eps := cl.Endpoints()
	policy, err := access.NewPolicy([]access.Rule{{Name: "app", UIDs: []uint32{uint32(os.Getuid())}, Prefixes: []string{"app/"}, Read: true, Write: true}})
	if err != nil {
		t.Fatal(err)
	}
	a := startAgent(t, eps, policy)
	s := a.sock
	if code, out := ctl(t, s, "", "put", "app/x", "1"); code != 0 {
		t.Fatalf("put app/x: %s", out)
	}
	if code, out := ctl(t, s, "", "get", "app/x"); code != 0 || !strings.Contains(out, "app/x") {
		t.Fatalf("get app/x: %d %s", code, out)
	}
	if code, out := ctl(t, s, "", "get", "--prefix", ""); code == 0 || !strings.Contains(out, "PermissionDenied") ||
		!strings.Contains(out, "may not read") {
		t.Fatalf("get --prefix \"\": %d %s", code, out)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// From a known revision, so that writes made while etcdctl connects
	// are not "before" its watch.
	now, err := a.ec.Read(ctx, "app/", etcd.ReadOptions{CountOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	watch := exec.CommandContext(ctx, etcdctl(t), "--endpoints", "unix://"+s, "watch", "--prefix", "app/w/", "--rev", fmt.Sprint(now.Revision+1))
	out, _ := watch.StdoutPipe()
	if err := watch.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); watch.Wait() }()
	puts := make(chan string, 1000)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if l := sc.Text(); strings.HasPrefix(l, "app/w/") {
				puts <- l
			}
		}
		close(puts)
	}()
	const n = 60
	for i := range n {
		if i == n/3 {
			if err := a.ec.UpdateEndpoints([]string{eps[1], eps[2]}); err != nil {
				t.Fatal(err)
			}
		}
		if i == 2*n/3 {
			if err := a.ec.UpdateEndpoints(eps); err != nil {
				t.Fatal(err)
			}
		}
		if code, o := ctl(t, s, "", "put", fmt.Sprintf("app/w/%02d", i), "v"); code != 0 {
			t.Fatalf("put %d: %s", i, o)
		}
	}
	for i := range n {
		select {
		case l := <-puts:
			if want := fmt.Sprintf("app/w/%02d", i); l != want {
				t.Fatalf("event %d is %q, want %q", i, l, want)
			}
		case <-time.After(15 * time.Second):
			t.Fatalf("event %d never arrived", i)
		}
	}
}

// endpointd's locks and elections (etcd.Lock and etcd.Campaign, what
// `endpointd lock` and /v1/lock use) and stock etcdctl agree: etcdctl lock
// waits while endpointd holds the name, and gets it once released;
// etcdctl elect -l names endpointd's leader.
func TestEtcdctlInterop(t *testing.T) {
	cl := etcdtest.New(t, 1)
	a := startAgent(t, cl.Endpoints(), nil)
	direct := []string{"--endpoints", strings.Join(cl.Endpoints(), ",")}
	ctx := ctxT(t, 60*time.Second)
	h, err := a.ec.Lock(ctx, "mix", 10, "")
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 1500*time.Millisecond)
	out, _ := exec.CommandContext(wctx, etcdctl(t), append(direct, "lock", "mix", "echo", "got-it")...).CombinedOutput()
	cancel()
	if strings.Contains(string(out), "got-it") {
		t.Fatalf("etcdctl lock ran while endpointd held the lock: %s", out)
	}
	h.Release(ctx)
	out, err = exec.CommandContext(ctx, etcdctl(t), append(direct, "lock", "mix", "echo", "got-it")...).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "got-it") {
		t.Fatalf("etcdctl lock after release: %v %s", err, out)
	}

	e, err := a.ec.Campaign(ctx, "mix-elect", "endpointd-host", 10)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Release(ctx)
	if !electListenNames(t, direct, "mix-elect", "endpointd-host") {
		t.Fatal("etcdctl elect -l did not name endpointd's leader")
	}
}

// electListenNames runs etcdctl elect -l (which follows the leader until
// interrupted) for up to 10s and reports whether it printed want.
func electListenNames(t *testing.T, endpoints []string, name, want string) bool {
	t.Helper()
	ctx, stop := context.WithTimeout(context.Background(), 10*time.Second)
	defer stop()
	listen := exec.CommandContext(ctx, etcdctl(t), append(endpoints, "elect", "-l", name)...)
	out, _ := listen.StdoutPipe()
	if err := listen.Start(); err != nil {
		t.Fatal(err)
	}
	defer listen.Wait()
	defer stop()
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if sc.Text() == want {
			return true
		}
	}
	return false
}

// A lease lives in the shared cluster's lease table until its TTL, so a
// peer whose rules only let it read may not grant one: `etcdctl lease
// grant` and `etcdctl lock` (which grants one first) are PermissionDenied
// and leave no lease behind; a peer allowed to write somewhere may.
func TestEtcdctlLeaseGrantNeedsWrite(t *testing.T) {
	cl := etcdtest.New(t, 1)
	uid := uint32(os.Getuid())
	readOnly, err := access.NewPolicy([]access.Rule{{Name: "ro", UIDs: []uint32{uid}, Prefixes: []string{"app/"}, Read: true}})
	if err != nil {
		t.Fatal(err)
	}
	a := startAgent(t, cl.Endpoints(), readOnly)
	direct := etcdtest.DirectClient(t, cl.Endpoints())
	for _, args := range [][]string{{"lease", "grant", "60"}, {"lock", "app/l", "true"}} {
		if code, out := ctl(t, a.sock, "", args...); code == 0 || !strings.Contains(out, "PermissionDenied") ||
			!strings.Contains(out, "may not grant leases") {
			t.Fatalf("etcdctl %s as a read-only peer: %d %s", strings.Join(args, " "), code, out)
		}
	}
	if ls, err := direct.Leases(t.Context()); err != nil || len(ls.Leases) != 0 {
		t.Fatalf("leases after the refusals: %v %v, want none", ls, err)
	}

	writer, err := access.NewPolicy([]access.Rule{{Name: "rw", UIDs: []uint32{uid}, Prefixes: []string{"app/"}, Read: true, Write: true}})
	if err != nil {
		t.Fatal(err)
	}
	a.gate.Set(access.Settings{Policy: writer})
	if code, out := ctl(t, a.sock, "", "lease", "grant", "60"); code != 0 || !strings.Contains(out, "granted with TTL(60s)") {
		t.Fatalf("etcdctl lease grant as a writer: %d %s", code, out)
	}
}

// etcdctlAt runs etcdctl against endpoint (the socket as unix://PATH, or
// a member) with a bounded wait, and returns its exit code and output.
func etcdctlAt(t *testing.T, endpoint string, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, etcdctl(t), append([]string{"--endpoints", endpoint, "--dial-timeout", "5s", "--command-timeout", "10s"}, args...)...)
	out, _ := cmd.CombinedOutput()
	return cmd.ProcessState.ExitCode(), string(out)
}

// headerFields are the parts of etcdctl's JSON that name who answered
// (the socket's answers carry the revision only); the rest must agree.
var headerFields = regexp.MustCompile(`"(cluster_id|member_id|raft_term)":\d+,?`)

// The compatibility suite with etcdctl: the same commands through the
// socket and directly against a member, outputs compared — JSON with the
// answering member's identity taken out, text as it is.
func TestEtcdctlSameAsDirect(t *testing.T) {
	cl := etcdtest.New(t, 1)
	a := startAgent(t, cl.Endpoints(), nil)
	sock, direct := "unix://"+a.sock, cl.Endpoints()[0]
	if code, out := etcdctlAt(t, sock, "put", "cmp/a", "1"); code != 0 {
		t.Fatal(out)
	}
	etcdctlAt(t, sock, "put", "cmp/b", "2")
	_, lease := etcdctlAt(t, sock, "lease", "grant", "600")
	id := strings.Fields(lease)[1] // "lease 694d… granted with TTL(600s)"
	etcdctlAt(t, sock, "put", "cmp/leased", "3", "--lease", id)
	_, st := etcdctlAt(t, sock, "endpoint", "status", "-w", "json")
	rev := regexp.MustCompile(`"revision":(\d+)`).FindStringSubmatch(st)
	if rev == nil {
		t.Fatalf("endpoint status: %s", st)
	}
	for _, args := range [][]string{
		{"get", "cmp/", "--prefix", "-w", "json"},
		{"get", "cmp/", "--prefix", "--keys-only", "--limit", "1", "-w", "json"},
		{"get", "cmp/a", "--rev", "2", "-w", "json"},
		{"lease", "timetolive", id, "--keys"},
		{"lease", "timetolive", "1234567"},
		{"lease", "revoke", "1234567"},
		{"txn", "-w", "json"},
	} {
		stdin := ""
		if args[0] == "txn" {
			stdin = "value(\"cmp/a\") = \"1\"\n\nget cmp/b\n\n\n"
		}
		run := func(ep string) string {
			cmd := exec.Command(etcdctl(t), append([]string{"--endpoints", ep, "--dial-timeout", "5s", "--command-timeout", "10s"}, args...)...)
			cmd.Stdin = strings.NewReader(stdin)
			out, _ := cmd.CombinedOutput()
			var kept []string // without clientv3's own log lines (times, addresses)
			for l := range strings.SplitSeq(string(out), "\n") {
				if !strings.HasPrefix(l, `{"level":`) {
					kept = append(kept, l)
				}
			}
			return headerFields.ReplaceAllString(strings.Join(kept, "\n"), "")
		}
		got, want := run(sock), run(direct)
		// A TTL read a moment apart may differ by a second.
		ttl := regexp.MustCompile(`remaining\(\d+s\)`)
		got, want = ttl.ReplaceAllString(got, "remaining(Ns)"), ttl.ReplaceAllString(want, "remaining(Ns)")
		if got != want {
			t.Errorf("etcdctl %s\nthrough the socket:\n%s\ndirectly:\n%s", strings.Join(args, " "), got, want)
		}
	}

	// A watch from a compacted revision: the same text and exit.
	if code, out := etcdctlAt(t, sock, "compaction", rev[1]); code == 0 {
		t.Fatalf("compaction through the socket was served: %s", out)
	}
	if _, err := etcdtest.DirectClient(t, cl.Endpoints()).Compact(t.Context(), mustInt(t, rev[1])); err != nil {
		t.Fatal(err)
	}
	codeS, outS := etcdctlAt(t, sock, "watch", "cmp/a", "--rev", "2")
	codeD, outD := etcdctlAt(t, direct, "watch", "cmp/a", "--rev", "2")
	if codeS != codeD || outS != outD || !strings.Contains(outS, "compacted") {
		t.Errorf("watch from a compacted revision: through the socket exit %d %q, directly exit %d %q", codeS, outS, codeD, outD)
	}
}

func mustInt(t *testing.T, s string) int64 {
	t.Helper()
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
