package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"udp_iaasd/api"
	"udp_iaasd/client"
	"udp_iaasd/config"
	"udp_iaasd/internal/etcdtest"
	"udp_iaasd/internal/syncbuf"
)

// invoke runs the command line in-process and returns exit code and output.
func invoke(t *testing.T, stdin string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), args, strings.NewReader(stdin), &out, &errb)
	return code, out.String(), errb.String()
}

func TestValidateCorpus(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "config.yaml")
	os.WriteFile(cfg, []byte("min_cluster_size: 3\n"), 0o644)
	files, _ := filepath.Glob("../../config/testdata/endpoints/*.yml")
	if len(files) < 10 {
		t.Fatalf("corpus too small: %d files", len(files))
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			code, stdout, stderr := invoke(t, "", "validate", "-config", cfg, f)
			if strings.HasSuffix(f, ".good.yml") {
				if code != 0 || !strings.Contains(stdout, "valid: ") || stderr != "" {
					t.Fatalf("exit %d, stdout %q, stderr %q", code, stdout, stderr)
				}
				return
			}
			want, err := os.ReadFile(strings.TrimSuffix(f, ".yml") + ".err")
			if err != nil {
				t.Fatal(err)
			}
			// The corpus names files by base name; validate names them as given.
			wantText := strings.ReplaceAll(string(want), filepath.Base(f), f)
			if code != 1 || stderr != wantText || stdout != "" {
				t.Fatalf("exit %d\nstderr:\n%s\nwant:\n%s", code, stderr, wantText)
			}
		})
	}
}

func TestValidateExitCodes(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	os.WriteFile(good, []byte("endpoints: [a:1, b:1, c:1]\n"), 0o644)
	badCfg := filepath.Join(dir, "bad-config.yaml")
	os.WriteFile(badCfg, []byte("min_cluster_size: 0\nlog: {level: loud}\n"), 0o644)
	cfgNamesFile := filepath.Join(dir, "names.yaml")
	os.WriteFile(cfgNamesFile, []byte("endpoints_file: good.yaml\nmin_cluster_size: 1\n"), 0o644)

	tests := []struct {
		name      string
		args      []string
		code      int
		stderrHas string
	}{
		{"valid with defaults (no config.yaml anywhere)", []string{"validate", good}, 0, ""},
		{"missing endpoints file", []string{"validate", filepath.Join(dir, "nope.yaml")}, 2, "nope.yaml: cannot read: no such file"},
		{"missing explicit config", []string{"validate", "-config", filepath.Join(dir, "nope-config.yaml"), good}, 2, "cannot read"},
		{"bad config", []string{"validate", "-config", badCfg, good}, 1, "bad-config.yaml:1:19: min_cluster_size: must be at least 1"},
		{"bad config reports every problem", []string{"validate", "-config", badCfg, good}, 1, `bad-config.yaml:2:14: log.level: "loud"`},
		{"file named by config (relative to it)", []string{"validate", "-config", cfgNamesFile}, 0, ""},
		{"two files", []string{"validate", good, good}, 2, "one endpoints file at most"},
		{"unknown flag", []string{"validate", "-bogus"}, 2, "flag provided but not defined"},
	}
	if _, err := os.Stat("/etc/endpointd/config.yaml"); err == nil {
		t.Skip("this machine has /etc/endpointd/config.yaml; the defaults case cannot be tested here")
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, stderr := invoke(t, "", tt.args...)
			if code != tt.code || !strings.Contains(stderr, tt.stderrHas) {
				t.Fatalf("exit %d (want %d), stderr %q (want %q)", code, tt.code, stderr, tt.stderrHas)
			}
		})
	}
}

func TestUsageAndVersion(t *testing.T) {
	if code, _, stderr := invoke(t, ""); code != 2 || !strings.Contains(stderr, "usage:") {
		t.Fatalf("no args: %d %q", code, stderr)
	}
	if code, _, _ := invoke(t, "", "frobnicate"); code != 2 {
		t.Fatalf("unknown command: %d", code)
	}
	if code, stdout, _ := invoke(t, "", "version"); code != 0 || !strings.HasPrefix(stdout, "endpointd v") {
		t.Fatalf("version: %d %q", code, stdout)
	}
}

// agentUnderTest runs `endpointd run` in-process against a real cluster and
// returns its socket. It stops the agent with SIGTERM at cleanup.
type agentUnderTest struct {
	sock, cfg, dir string
	notify         chan string
	code           chan int
	stderr         *syncbuf.Buffer
}

// runAgent starts `endpointd run` with NOTIFY_SOCKET pointing at a datagram
// socket the test reads, as systemd would.
func runAgent(t *testing.T, cluster *etcdtest.Cluster, extraEnv map[string]string) *agentUnderTest {
	t.Helper()
	dir := t.TempDir()
	a := &agentUnderTest{dir: dir, sock: filepath.Join(dir, "run", "endpointd.sock"), cfg: filepath.Join(dir, "config.yaml"),
		notify: make(chan string, 100), code: make(chan int, 1), stderr: &syncbuf.Buffer{}}
	os.WriteFile(filepath.Join(dir, "endpoints.yaml"), config.EndpointsYAML(cluster.Endpoints()), 0o644)
	os.WriteFile(a.cfg, []byte(fmt.Sprintf("endpoints_file: endpoints.yaml\nmin_cluster_size: 1\nsocket: {path: %s, mode: \"0600\"}\nwatch: {debounce: 50ms}\n", a.sock)), 0o644)

	notifyPath := filepath.Join(dir, "notify.sock")
	nconn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notifyPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nconn.Close() })
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := nconn.Read(buf)
			if err != nil {
				return
			}
			a.notify <- string(buf[:n])
		}
	}()
	t.Setenv("NOTIFY_SOCKET", notifyPath)
	for k, v := range extraEnv {
		t.Setenv(k, v)
	}
	go func() {
		a.code <- run(context.Background(), []string{"run", "-config", a.cfg}, strings.NewReader(""), &bytes.Buffer{}, a.stderr)
	}()
	a.await(t, "READY=1")
	return a
}

// await waits for a notification that starts with prefix.
func (a *agentUnderTest) await(t *testing.T, prefix string) string {
	t.Helper()
	timeout := time.After(15 * time.Second)
	for {
		select {
		case n := <-a.notify:
			if strings.HasPrefix(n, prefix) {
				return n
			}
		case <-timeout:
			t.Fatalf("no %q notification; log:\n%s", prefix, a.stderr.String())
		}
	}
}

func (a *agentUnderTest) stop(t *testing.T) int {
	t.Helper()
	syscall.Kill(os.Getpid(), syscall.SIGTERM)
	select {
	case c := <-a.code:
		return c
	case <-time.After(20 * time.Second):
		t.Fatal("the agent did not stop on SIGTERM")
		return -1
	}
}

// The systemd life cycle: READY once serving, WATCHDOG pings after
// self-checks, RELOADING then READY on SIGHUP, STOPPING on SIGTERM, exit 0,
// socket removed.
func TestRunLifecycle(t *testing.T) {
	cluster := etcdtest.New(t, 1)
	a := runAgent(t, cluster, map[string]string{"WATCHDOG_USEC": "400000"})
	if fi, err := os.Stat(a.sock); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket %v, %v; want mode 0600", fi, err)
	}
	a.await(t, "WATCHDOG=1")

	// A second agent on the live socket refuses to start; the first serves on.
	code, _, stderr := invoke(t, "", "run", "-config", a.cfg)
	if code != exitFailure || !strings.Contains(stderr, "another endpointd running") {
		t.Fatalf("second agent: exit %d, %q", code, stderr)
	}
	if code, _, _ := invoke(t, "", "kv", "put", "-socket", a.sock, "life", "still"); code != 0 {
		t.Fatalf("the first agent stopped serving (kv put exit %d)", code)
	}

	syscall.Kill(os.Getpid(), syscall.SIGHUP)
	n := a.await(t, "RELOADING=1")
	if !strings.Contains(n, "MONOTONIC_USEC=") {
		t.Fatalf("RELOADING without MONOTONIC_USEC: %q", n)
	}
	a.await(t, "READY=1")

	if c := a.stop(t); c != 0 {
		t.Fatalf("exit %d after SIGTERM; log:\n%s", c, a.stderr.String())
	}
	a.await(t, "STOPPING=1")
	if _, err := os.Stat(a.sock); !os.IsNotExist(err) {
		t.Fatalf("socket left behind: %v", err)
	}
}

func TestRunBadConfigExits78(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "config.yaml")
	os.WriteFile(cfg, []byte("backoff: {jitter: 2}\n"), 0o644)
	code, _, stderr := invoke(t, "", "run", "-config", cfg)
	if code != 78 || !strings.Contains(stderr, "config.yaml:1:19: backoff.jitter") {
		t.Fatalf("exit %d, %q", code, stderr)
	}
	code, _, _ = invoke(t, "", "run", "-config", filepath.Join(t.TempDir(), "missing.yaml"))
	if code != 78 {
		t.Fatalf("missing explicit config: exit %d, want 78", code)
	}
}

func TestKVCommands(t *testing.T) {
	cluster := etcdtest.New(t, 1)
	a := runAgent(t, cluster, nil)
	t.Cleanup(func() { a.stop(t) })
	s := a.sock
	t.Setenv("ENDPOINTD_SOCKET", s) // the environment names the socket below

	steps := []struct {
		stdin      string
		args       []string
		code       int
		stdout     string // exact, when not ""
		stdoutHas  string
		stderrHas  string
		skipStdout bool
	}{
		{args: []string{"kv", "get", "cli/k"}, code: 1, stderrHas: "not found"},
		{args: []string{"kv", "put", "cli/k", "hello"}, code: 0, stdoutHas: "revision "},
		{args: []string{"kv", "get", "cli/k"}, code: 0, stdout: "hello"},
		{stdin: "from\x00stdin\xff", args: []string{"kv", "put", "cli/bin"}, code: 0, stdoutHas: "revision "},
		{args: []string{"kv", "get", "cli/bin"}, code: 0, stdout: "from\x00stdin\xff"},
		{args: []string{"kv", "put", "cli/k", "again", "-if-absent"}, code: 1, stderrHas: "precondition_failed"},
		{args: []string{"kv", "put", "-if-exists", "cli/k", "again"}, code: 0, stdoutHas: "revision "},
		{args: []string{"kv", "put", "cli/k", "x", "-if-revision", "1"}, code: 1, stderrHas: "precondition_failed"},
		{args: []string{"kv", "put", "cli/two\nlines", "v"}, code: 0, stdoutHas: "revision "},
		// One key a line: a key that would read as two is quoted.
		{args: []string{"kv", "ls", "cli/"}, code: 0, stdout: "cli/bin\ncli/k\n\"cli/two\\nlines\"\n"},
		{args: []string{"kv", "ls", "cli/", "-json"}, code: 0, stdoutHas: `"value_base64":"ZnJvbQBzdGRpbv8="`},
		{args: []string{"kv", "del", "cli/", "-prefix"}, code: 0, stdoutHas: "deleted 3"},
		{args: []string{"kv", "del", "cli/k"}, code: 0, stdoutHas: "deleted 0"},
		{stdin: `{"compare":[{"key":"cli/t","target":"version","op":"=","value":0}],"success":[{"put":{"key":"cli/t","value":"1"}},{"put":{"key":"cli/u","value":"1"}}]}`,
			args: []string{"kv", "txn"}, code: 0, stdoutHas: `"succeeded":true`},
		{stdin: `{"compare":[{"key":"cli/t","target":"version","op":"=","value":0}],"failure":[{"get":{"key":"cli/u"}}]}`,
			args: []string{"kv", "txn"}, code: 1, stdoutHas: `"succeeded":false`},
		{stdin: `{"compare":[`, args: []string{"kv", "txn"}, code: 2, stderrHas: "invalid_argument"},
		{args: []string{"kv", "get"}, code: 2, stderrHas: "wrong number of arguments"},
		{args: []string{"kv", "frob"}, code: 2, stderrHas: "unknown subcommand"},
		{args: []string{"kv", "put", "cli/k", "v", "-if-absent", "-if-exists"}, code: 2, stderrHas: "exclude each other"},
		{args: []string{"kv", "get", "-socket", filepath.Join(a.dir, "nobody.sock"), "cli/k"}, code: 3, stderrHas: "not reachable"},
		{args: []string{"status"}, code: 0, stdoutHas: ": ready"},
		{args: []string{"status", "-socket", filepath.Join(a.dir, "nobody.sock")}, code: 3},
	}
	for _, st := range steps {
		code, stdout, stderr := invoke(t, st.stdin, st.args...)
		if code != st.code || (st.stdout != "" && stdout != st.stdout) || !strings.Contains(stdout, st.stdoutHas) ||
			!strings.Contains(stderr, st.stderrHas) {
			t.Fatalf("%v: exit %d (want %d)\nstdout %q\nstderr %q", st.args, code, st.code, stdout, stderr)
		}
	}

	code, stdout, _ := invoke(t, "", "status", "-json")
	var st map[string]any
	if code != 0 || json.Unmarshal([]byte(stdout), &st) != nil || st["ready"] != true {
		t.Fatalf("status -json: %d %q", code, stdout)
	}

	// kv watch from a revision prints events as JSON lines until interrupted.
	_, out, _ := invoke(t, "", "kv", "put", "cli/w", "1")
	rev := strings.TrimSpace(strings.TrimPrefix(out, "revision "))
	invoke(t, "", "kv", "put", "cli/w", "2")
	invoke(t, "", "kv", "del", "cli/w")
	ctx, cancel := context.WithCancel(context.Background())
	var wout syncbuf.Buffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"kv", "watch", "cli/w", "-rev", rev}, strings.NewReader(""), &wout, &bytes.Buffer{})
	}()
	deadline := time.Now().Add(10 * time.Second)
	for strings.Count(wout.String(), "\n") < 3 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	if c := <-done; c != 0 {
		t.Fatalf("kv watch exit %d after interrupt", c)
	}
	lines := strings.Split(strings.TrimSpace(wout.String()), "\n")
	// The fields in the HTTP stream's order.
	if len(lines) != 3 || !strings.HasPrefix(lines[0], `{"type":"PUT","key":"cli/w","value":"1","create_revision":`) ||
		!strings.Contains(lines[1], `"value":"2"`) || !strings.HasPrefix(lines[2], `{"type":"DELETE","key":"cli/w","mod_revision":`) {
		t.Fatalf("kv watch printed:\n%s", wout.String())
	}
}

// A client command given -config that cannot be used says the config's own
// error and exits 78, never falling back to the default socket; without
// -config, an absent default config.yaml is passed over.
func TestClientCommandsUseTheirConfig(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "nope.yaml")
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("socket: {path: /x}\nno_such_key: 1\n"), 0o644)
	t.Setenv("ENDPOINTD_SOCKET", "")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"status", "-config", missing}, missing + ": no such file or directory"},
		{[]string{"status", "-config", bad}, bad + ":2:1"},
		{[]string{"kv", "get", "-config", missing, "k"}, missing + ": no such file or directory"},
		{[]string{"lock", "-config", bad, "n", "--", "true"}, bad + ":2:1"},
	} {
		code, _, errOut := invoke(t, "", tc.args...)
		if code != exitConfig || !strings.Contains(errOut, tc.want) || strings.Contains(errOut, "dial unix") {
			t.Errorf("endpointd %s: exit %d, stderr %q; want 78 and %q", strings.Join(tc.args, " "), code, errOut, tc.want)
		}
	}
}

// An agent that is not there is named by its socket, without the client's
// internal URL, with what to try.
func TestUnreachableAgentMessage(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "none.sock")
	t.Setenv("ENDPOINTD_SOCKET", sock)
	for _, args := range [][]string{{"status"}, {"kv", "get", "k"}} {
		code, _, errOut := invoke(t, "", args...)
		want := "client: the agent is not reachable at " + sock + ": connect: no such file or directory\n" +
			"is endpointd running there? -socket PATH, $ENDPOINTD_SOCKET or -config name another socket\n"
		if code != exitUnavailable || errOut != want {
			t.Errorf("endpointd %s: exit %d, stderr %q; want 3 and %q", strings.Join(args, " "), code, errOut, want)
		}
	}
}

// status for a person: counts in words that agree with them, a leader
// outside the endpoint list named as such, no latency for a member that
// did not answer.
func TestPrintStatus(t *testing.T) {
	var b bytes.Buffer
	printStatus(&b, &client.Status{Version: "v1", Ready: true,
		Config: api.ConfigStatus{EndpointsFile: "/e.yaml", AppliedAt: "2026-12-04T00:00:00Z", SHA256: "abc", Reloads: 1},
		Etcd: api.EtcdStatus{Connected: true, ClusterID: "c1", Leader: "8e9e05c52164694d", Reconnects: 1,
			Members: []api.MemberStatus{{Endpoint: "http://a:2379", Healthy: true, LatencyMS: 1.5},
				{Endpoint: "http://b:2379", Error: "no answer"}}}})
	out := b.String()
	for _, want := range []string{"(sha256 abc, 1 reload)", "leader member 8e9e05c52164694d (not in the endpoint list), 1 reconnect",
		"1.5ms", "DOWN    -"} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "0.0ms") {
		t.Errorf("a member that did not answer shows a latency:\n%s", out)
	}
}

// render refuses a render file or template that does not load with exit 78
// and the position, and its flags with usage errors.
func TestRenderExitCodes(t *testing.T) {
	dir := t.TempDir()
	tmpl := filepath.Join(dir, "t.tmpl")
	os.WriteFile(tmpl, []byte("{{if}}\n"), 0o644)
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("templates:\n  - {source: "+tmpl+", destination: /tmp/x}\n"), 0o644)
	unknown := filepath.Join(dir, "unknown.yaml")
	os.WriteFile(unknown, []byte("templats: []\n"), 0o644)
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"render", "-config", bad}, exitConfig, tmpl + ":1: missing value for if"},
		{[]string{"render", "-config", unknown}, exitConfig, `unknown.yaml:1:1: unknown key "templats"`},
		{[]string{"render", "-config", filepath.Join(dir, "absent.yaml")}, exitConfig, "no such file"},
		{[]string{"render", "-once", "-dry-run", "-config", bad}, exitUsage, "exclude each other"},
		{[]string{"render", "extra"}, exitUsage, "unexpected arguments"},
	} {
		code, _, stderr := invoke(t, "", tc.args...)
		if code != tc.code || !strings.Contains(stderr, tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want %d and %q", tc.args, code, stderr, tc.code, tc.want)
		}
	}
}

// `endpointd render` under systemd's protocol, through a real agent: READY
// after the first round with STATUS=; SIGHUP with a broken render file
// keeps the running templates; SIGHUP with a good one applies it; SIGTERM
// exits 0.
func TestRenderLifecycle(t *testing.T) {
	cluster := etcdtest.New(t, 1)
	a := runAgent(t, cluster, nil)
	if code, _, _ := invoke(t, "", "kv", "put", "-socket", a.sock, "r/k", "v1"); code != 0 {
		t.Fatal("put")
	}
	dir := t.TempDir()
	tmpl := filepath.Join(dir, "t.tmpl")
	os.WriteFile(tmpl, []byte("k={{key \"r/k\"}}\n"), 0o644)
	dest := filepath.Join(dir, "out.conf")
	cfg := filepath.Join(dir, "render.yaml")
	runs := filepath.Join(dir, "reloads")
	reload := filepath.Join(dir, "reload.sh")
	os.WriteFile(reload, []byte("#!/bin/sh\necho run >> "+runs+"\n"), 0o755)
	reloads := func() int { b, _ := os.ReadFile(runs); return strings.Count(string(b), "\n") }
	good := fmt.Sprintf("socket: %s\nstate_dir: %s\ntemplates:\n  - {source: %s, destination: %s, reload: [%s]}\n",
		a.sock, filepath.Join(dir, "state"), tmpl, dest, reload)
	os.WriteFile(cfg, []byte(good), 0o644)
	stderr := &syncbuf.Buffer{}
	code := make(chan int, 1)
	go func() {
		code <- run(context.Background(), []string{"render", "-config", cfg}, strings.NewReader(""), &bytes.Buffer{}, stderr)
	}()
	a.await(t, "STATUS=1 of 1 templates current")
	a.await(t, "READY=1")
	read := func() string { b, _ := os.ReadFile(dest); return string(b) }
	if read() != "k=v1\n" {
		t.Fatalf("rendered %q", read())
	}

	os.WriteFile(cfg, []byte(good+"  - {source: relative.tmpl, destination: "+dest+"}\n"), 0o644)
	syscall.Kill(os.Getpid(), syscall.SIGHUP)
	etcdtest.Eventually(t, 10*time.Second, "the broken file rejected", func() bool {
		return strings.Contains(stderr.String(), "keeping the running templates")
	})
	invoke(t, "", "kv", "put", "-socket", a.sock, "r/k", "v2")
	etcdtest.Eventually(t, 10*time.Second, "the running template to go on", func() bool { return read() == "k=v2\n" })
	etcdtest.Eventually(t, 10*time.Second, "its reload", func() bool { return reloads() == 2 })

	// A SIGHUP with the same good file renders the same bytes: no reload.
	os.WriteFile(cfg, []byte(good), 0o644)
	syscall.Kill(os.Getpid(), syscall.SIGHUP)
	etcdtest.Eventually(t, 10*time.Second, "the reloaded set running", func() bool {
		return strings.Count(stderr.String(), "render file reloaded") == 1
	})
	invoke(t, "", "kv", "put", "-socket", a.sock, "r/k", "v2") // a new revision, the same bytes
	// Then a change that does render differently: once it is written, the
	// one before it has been rendered too, and only this one reloads.
	invoke(t, "", "kv", "put", "-socket", a.sock, "r/k", "v3")
	etcdtest.Eventually(t, 10*time.Second, "v3 rendered", func() bool { return read() == "k=v3\n" })
	etcdtest.Eventually(t, 10*time.Second, "its reload", func() bool { return reloads() >= 3 })
	if n := reloads(); n != 3 {
		t.Fatalf("a SIGHUP or an unchanged render ran the reload: %d runs, want 3", n)
	}

	os.WriteFile(tmpl, []byte("key is {{key \"r/k\"}}\n"), 0o644)
	syscall.Kill(os.Getpid(), syscall.SIGHUP)
	etcdtest.Eventually(t, 10*time.Second, "the new template applied", func() bool { return read() == "key is v3\n" })
	etcdtest.Eventually(t, 10*time.Second, "one reload for its new content", func() bool { return reloads() == 4 })

	a.stop(t) // SIGTERM: the agent and the renderer in this process alike
	select {
	case c := <-code:
		if c != exitOK {
			t.Fatalf("render exit %d:\n%s", c, stderr)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("render did not stop on SIGTERM")
	}
}

// Every command answers -h the same way — its synopsis, what it does, its
// flags with their descriptions — and exits 0; extra arguments and an
// unsupported shell are usage errors that say so.
func TestEveryCommandHelp(t *testing.T) {
	for _, c := range commands {
		if c.name == "version" {
			continue
		}
		args := append(strings.Fields(c.name), "-h")
		code, stdout, stderr := invoke(t, "", args...)
		out := stdout + stderr
		if code != exitOK || !strings.Contains(out, "usage: endpointd "+strings.Fields(c.name)[0]) {
			t.Errorf("%v: exit %d\n%s", args, code, out)
		}
		if c.flags != nil && !strings.Contains(out, "flags:") && c.name != "completion" && c.name != "man" {
			t.Errorf("%v does not describe its flags:\n%s", args, out)
		}
	}
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"kv", "-h"}, exitOK, "endpointd kv put"},
		{[]string{"status", "extra"}, exitUsage, `unexpected arguments ["extra"]`},
		{[]string{"completion", "fish"}, exitUsage, `"fish" is not supported`},
		{[]string{"kv", "put", "-ttl", "1.5s", "k", "v"}, exitUsage, "want whole seconds"},
	} {
		code, stdout, stderr := invoke(t, "", tc.args...)
		if code != tc.code || !strings.Contains(stdout+stderr, tc.want) {
			t.Errorf("%v: exit %d, %q; want %d and %q", tc.args, code, stdout+stderr, tc.code, tc.want)
		}
	}
}
