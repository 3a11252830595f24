package render_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"udp_iaasd/client"
	"udp_iaasd/internal/agenttest"
	"udp_iaasd/internal/etcdtest"
	"udp_iaasd/internal/syncbuf"
	"udp_iaasd/render"
)

// rig is a real agent over a real cluster, a directory for templates,
// destinations, scripts and state, and a renderer run in this process.
type rig struct {
	t       *testing.T
	cluster *etcdtest.Cluster
	agent   *agenttest.Agent
	direct  *clientv3.Client
	dir     string
	logs    *syncbuf.Buffer
	notes   []string
	notesMu sync.Mutex
}

func newRig(t *testing.T, agentExtra string) *rig {
	t.Helper()
	cluster := etcdtest.New(t, 2)
	r := &rig{t: t, cluster: cluster, direct: cluster.Client(t), dir: t.TempDir(), logs: &syncbuf.Buffer{}}
	r.agent = agenttest.Start(t, agenttest.Options{Endpoints: cluster.Endpoints(), Extra: agentExtra})
	r.agent.Eventually("ready", func() bool { return r.agent.Status().Ready })
	return r
}

func (r *rig) put(key, value string) int64 {
	r.t.Helper()
	resp, err := r.direct.Put(context.Background(), key, value)
	if err != nil {
		r.t.Fatal(err)
	}
	return resp.Header.Revision
}

func (r *rig) file(name, content string, mode os.FileMode) string {
	r.t.Helper()
	p := filepath.Join(r.dir, name)
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		r.t.Fatal(err)
	}
	return p
}

// counter is a reload script that appends a line to its log per run.
func (r *rig) counter(name string) (argv []string, count func() int) {
	log := filepath.Join(r.dir, name+".runs")
	script := r.file(name+".sh", "#!/bin/sh\necho \"$1\" >> "+log+"\n", 0o755)
	return []string{script, "%s"}, func() int {
		b, _ := os.ReadFile(log)
		return strings.Count(string(b), "\n")
	}
}

func (r *rig) load(renderYAML string) *render.Set {
	r.t.Helper()
	path := r.file("render.yaml", renderYAML, 0o644)
	s, err := render.Load(path)
	if err != nil {
		r.t.Fatal(err)
	}
	return s
}

// run starts a renderer of s; stop ends it and waits.
func (r *rig) run(s *render.Set) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	rd := render.New(render.Options{
		Client: client.New(r.agent.Sock, client.Options{RetryMax: 1}),
		Logger: slog.New(slog.NewTextHandler(r.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Notify: func(st string) { r.notesMu.Lock(); r.notes = append(r.notes, st); r.notesMu.Unlock() },
	})
	done := make(chan struct{})
	go func() { rd.Run(ctx, s, nil); close(done) }()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	r.t.Cleanup(stop)
	return stop
}

func (r *rig) eventually(what string, cond func() bool) {
	r.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			r.t.Fatalf("timed out after 15s waiting for %s; the renderer logged:\n%s", what, r.logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func read(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

// The README's first day, through a real agent: two templates over one
// prefix write both files, each reloading once; a change to a key one of
// them uses rewrites that file alone and reloads it once; a change that
// renders the same bytes runs nothing; a renderer restart runs no reload.
func TestRenderAndReloadOnce(t *testing.T) {
	r := newRig(t, "")
	r.put("app/a", "1")
	r.put("app/b", "2")
	r.put("other/x", "x1")
	listT := r.file("list.tmpl", "{{range ls \"app/\"}}{{.Key | trimPrefix \"app/\"}}={{.Value}}\n{{end}}", 0o644)
	mixT := r.file("mix.tmpl", "x={{key \"other/x\"}} a={{key \"app/a\"}} c={{keyOr \"app/c\" \"none\"}}\n", 0o644)
	reload1, runs1 := r.counter("reload1")
	reload2, runs2 := r.counter("reload2")
	one, two := filepath.Join(r.dir, "one.conf"), filepath.Join(r.dir, "two.conf")
	s := r.load(fmt.Sprintf(`socket: %s
state_dir: %s
templates:
  - {source: %s, destination: %s, reload: [%q, %q], mode: "0640"}
  - {source: %s, destination: %s, reload: [%q, %q]}
`, r.agent.Sock, filepath.Join(r.dir, "state"), listT, one, reload1[0], reload1[1], mixT, two, reload2[0], reload2[1]))
	stop := r.run(s)
	r.eventually("both files and one reload each", func() bool { return runs1() == 1 && runs2() == 1 })
	if got := read(one); got != "a=1\nb=2\n" {
		t.Fatalf("one.conf = %q", got)
	}
	if got := read(two); got != "x=x1 a=1 c=none\n" {
		t.Fatalf("two.conf = %q", got)
	}
	if st, _ := os.Stat(one); st.Mode().Perm() != 0o640 {
		t.Fatalf("one.conf mode %v", st.Mode())
	}
	r.eventually("READY=1 and a status of 2 current", func() bool {
		r.notesMu.Lock()
		notes := strings.Join(r.notes, "\n")
		r.notesMu.Unlock()
		return strings.Contains(notes, "READY=1") && strings.Contains(notes, "STATUS=2 of 2 templates current")
	})

	r.put("other/x", "x2")
	r.eventually("two.conf rewritten and reloaded", func() bool { return runs2() == 2 && read(two) == "x=x2 a=1 c=none\n" })
	if runs1() != 1 {
		t.Fatalf("a change one.conf does not read reloaded it (%d runs)", runs1())
	}

	// The same value again: a new revision, the same bytes.
	before := strings.Count(r.logs.String(), "render: unchanged")
	r.put("app/b", "2")
	r.eventually("the render of the same bytes", func() bool { return strings.Count(r.logs.String(), "render: unchanged") > before })
	if runs1() != 1 || runs2() != 2 {
		t.Fatalf("same bytes ran a reload: %d, %d", runs1(), runs2())
	}

	// A key one template reads appears.
	r.put("app/c", "3")
	r.eventually("app/c in both", func() bool {
		return read(two) == "x=x2 a=1 c=3\n" && read(one) == "a=1\nb=2\nc=3\n"
	})
	r.eventually("one reload each", func() bool { return runs1() == 2 && runs2() == 3 })

	// A restart renders the same bytes: no reload.
	stop()
	before = strings.Count(r.logs.String(), "render: unchanged")
	r.run(r.load(read(filepath.Join(r.dir, "render.yaml"))))
	r.eventually("both rendered again", func() bool { return strings.Count(r.logs.String(), "render: unchanged") >= before+2 })
	if runs1() != 2 || runs2() != 3 {
		t.Fatalf("a restart ran reloads: %d, %d", runs1(), runs2())
	}
}

// Every key of one render comes from one revision: a writer changes two
// keys together, and no rendered file ever shows them apart. A reader of
// the destination meanwhile never sees a partial or mixed file.
func TestOneRevisionAndAtomicWrites(t *testing.T) {
	r := newRig(t, "")
	r.put("pair/a", "0")
	r.put("pair/b", "0")
	pad := strings.Repeat("p", 64<<10) // a file large enough to be written in several pieces
	tmpl := r.file("pair.tmpl", "a={{key \"pair/a\"}}\n"+pad+"\nb={{key \"pair/b\"}}\n", 0o644)
	dest := filepath.Join(r.dir, "pair.conf")
	r.run(r.load(fmt.Sprintf("socket: %s\nstate_dir: %s\ntemplates:\n  - {source: %s, destination: %s}\n",
		r.agent.Sock, filepath.Join(r.dir, "state"), tmpl, dest)))
	r.eventually("first render", func() bool { return strings.HasPrefix(read(dest), "a=0") })

	var bad atomic.Value
	var reads atomic.Int64
	stopRead := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stopRead:
				return
			default:
			}
			b, err := os.ReadFile(dest)
			if err != nil {
				bad.Store("read: " + err.Error())
				return
			}
			reads.Add(1)
			lines := strings.Split(string(b), "\n")
			if len(lines) != 4 || lines[1] != pad || strings.TrimPrefix(lines[0], "a=") != strings.TrimPrefix(lines[2], "b=") {
				bad.Store(fmt.Sprintf("a torn or mixed file: %d lines, %q … %q", len(lines), lines[0], lines[len(lines)-2]))
				return
			}
		}
	})
	const changes = 1000
	ctx := context.Background()
	for i := 1; i <= changes; i++ {
		v := fmt.Sprint(i)
		if _, err := r.direct.Txn(ctx).Then(clientv3.OpPut("pair/a", v), clientv3.OpPut("pair/b", v)).Commit(); err != nil {
			t.Fatal(err)
		}
		if i%100 == 0 {
			r.eventually("render caught up", func() bool { return strings.HasPrefix(read(dest), "a="+v+"\n") })
		}
	}
	close(stopRead)
	wg.Wait()
	if b := bad.Load(); b != nil {
		t.Fatal(b)
	}
	t.Logf("%d reads of the destination during %d changes, none torn or mixed", reads.Load(), changes)
}

// Errors stay with their template and leave its destination as it was: a
// missing key (rendered when it arrives), a failing check (the next good
// change applies), a check that hangs (killed at check_timeout), output
// past MaxOutput, a destination in a missing directory, a failing reload
// (the file stays). The other template goes on.
func TestErrorsAreLocal(t *testing.T) {
	r := newRig(t, "")
	r.put("svc/port", "80")
	okT := r.file("ok.tmpl", "port {{key \"svc/port\"}}\n", 0o644)
	missingT := r.file("missing.tmpl", "need {{key \"svc/later\"}}\n", 0o644)
	checkT := r.file("check.tmpl", "mode {{keyOr \"svc/mode\" \"good\"}}\n", 0o644)
	hangT := r.file("hang.tmpl", "hang {{keyOr \"svc/hang\" \"x\"}}\n", 0o644)
	bigT := r.file("big.tmpl", `{{range split "," "`+strings.Repeat(",", 5000)+`"}}{{range split "," "`+strings.Repeat(",", 5000)+`"}}xxxxxxxx{{end}}{{end}}`, 0o644)
	failReloadT := r.file("failreload.tmpl", "v {{keyOr \"svc/v\" \"1\"}}\n", 0o644)
	check := r.file("check.sh", "#!/bin/sh\necho checking \"$1\"\n! grep -q bad \"$1\"\n", 0o755)
	hang := r.file("hang.sh", "#!/bin/sh\nsleep 30\n", 0o755)
	notExec := r.file("notexec.sh", "#!/bin/sh\nexit 0\n", 0o644)
	noexecT := r.file("noexec.tmpl", "n {{keyOr \"svc/n\" \"1\"}}\n", 0o644)
	failing := r.file("fail.sh", "#!/bin/sh\necho reload broke >&2\nexit 3\n", 0o755)
	d := func(n string) string { return filepath.Join(r.dir, n) }
	os.WriteFile(d("check.conf"), []byte("previous\n"), 0o644)
	os.WriteFile(d("hang.conf"), []byte("previous\n"), 0o644)
	r.run(r.load(fmt.Sprintf(`socket: %s
state_dir: %s
templates:
  - {source: %s, destination: %s}
  - {source: %s, destination: %s}
  - {source: %s, destination: %s, check: [%q, "%%s"]}
  - {source: %s, destination: %s, check: [%q], check_timeout: 300ms}
  - {source: %s, destination: %s}
  - {source: %s, destination: %s}
  - {source: %s, destination: %s, reload: [%q]}
  - {source: %s, destination: %s, check: [%q, "%%s"]}
`, r.agent.Sock, d("state"), okT, d("ok.conf"), missingT, d("missing.conf"), checkT, d("check.conf"), check,
		hangT, d("hang.conf"), hang, bigT, d("big.conf"), okT, d("nodir/x.conf"), failReloadT, d("failreload.conf"), failing,
		noexecT, d("noexec.conf"), notExec)))

	r.eventually("the good template written", func() bool { return read(d("ok.conf")) == "port 80\n" })
	r.eventually("the check passed", func() bool { return read(d("check.conf")) == "mode good\n" })
	r.eventually("the failing reload's file written", func() bool { return read(d("failreload.conf")) == "v 1\n" })
	for _, want := range []string{
		`svc/later\" does not exist`,
		"did not finish within 300ms (killed)",
		"the output passed 16 MiB",
		"nodir does not exist",
		"reload broke",
		"notexec.sh: permission denied",
	} {
		r.eventually("the error "+want, func() bool { return strings.Contains(r.logs.String(), want) })
	}
	for _, f := range []string{"missing.conf", "big.conf", "noexec.conf"} {
		if _, err := os.Stat(d(f)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s exists after a failed render", f)
		}
	}
	if read(d("hang.conf")) != "previous\n" {
		t.Errorf("a hung check replaced the destination")
	}
	if !strings.Contains(r.logs.String(), "missing.tmpl") {
		t.Errorf("the missing key's error does not name its template")
	}

	r.put("svc/mode", "bad")
	r.eventually("the check failing", func() bool {
		return strings.Contains(r.logs.String(), "checking") && strings.Contains(r.logs.String(), "check [")
	})
	if read(d("check.conf")) != "mode good\n" {
		t.Fatalf("a failed check replaced the destination: %q", read(d("check.conf")))
	}
	r.put("svc/mode", "fine")
	r.eventually("the next good change applied", func() bool { return read(d("check.conf")) == "mode fine\n" })

	r.put("svc/later", "here")
	r.eventually("the missing key's arrival rendered it", func() bool { return read(d("missing.conf")) == "need here\n" })
	r.put("svc/port", "81")
	r.eventually("the good template still follows", func() bool { return read(d("ok.conf")) == "port 81\n" })
	for _, leftover := range mustGlob(t, filepath.Join(r.dir, ".*endpointd-*")) {
		t.Errorf("a candidate file was left behind: %s", leftover)
	}
}

func mustGlob(t *testing.T, pattern string) []string {
	m, err := filepath.Glob(pattern)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// With every member down, destinations stay as they are; a renderer started
// then with stale_if_error renders from the agent's copy and writes nothing
// older than what the destination holds; without it, it waits.
func TestOutage(t *testing.T) {
	r := newRig(t, "")
	cacheDir := t.TempDir()
	// A second agent with a cached prefix: the copy the renderer may use.
	r.agent.Stop()
	r.agent = agenttest.Start(t, agenttest.Options{Endpoints: r.cluster.Endpoints(),
		Extra: "cache: {prefixes: [cfg/], dir: " + cacheDir + ", persist_interval: 50ms}\n"})
	r.agent.Eventually("cache confirmed", func() bool { st := r.agent.Status(); return len(st.Cache) == 1 && st.Cache[0].Confirmed })
	r.put("cfg/v", "one")
	r.eventually("the agent's copy to have cfg/v", func() bool { code, body := r.agent.Get("/v1/kv/cfg/v?stale"); return code == 200 && body == "one" })
	tmpl := r.file("cfg.tmpl", "v={{key \"cfg/v\"}}\n", 0o644)
	dest := filepath.Join(r.dir, "cfg.conf")
	reload, runs := r.counter("reload")
	cfg := func(stale string) string {
		return fmt.Sprintf("socket: %s\nstate_dir: %s\ntemplates:\n  - {source: %s, destination: %s, reload: [%q], stale_if_error: %s}\n",
			r.agent.Sock, filepath.Join(r.dir, "state"), tmpl, dest, reload[0], stale)
	}
	stop := r.run(r.load(cfg("0s")))
	r.eventually("rendered", func() bool { return read(dest) == "v=one\n" && runs() == 1 })
	stop()

	r.cluster.StopAll()
	r.agent.Eventually("etcd gone", func() bool { return !r.agent.Status().Etcd.Connected })
	// Without stale_if_error: it waits; the file stays.
	before := strings.Count(r.logs.String(), "template failed")
	stop = r.run(r.load(cfg("0s")))
	r.eventually("a render refused during the outage", func() bool {
		return strings.Count(r.logs.String(), "template failed") > before
	})
	stop()
	if read(dest) != "v=one\n" || runs() != 1 {
		t.Fatalf("during the outage: %q, %d reloads", read(dest), runs())
	}
	// With it: from the copy; the same bytes, so nothing is written.
	before = strings.Count(r.logs.String(), "render: unchanged")
	stop = r.run(r.load(cfg("1h")))
	r.eventually("rendered from the agent's copy", func() bool { return strings.Count(r.logs.String(), "render: unchanged") > before })
	stop()
	// Content from the copy that would be older than what the destination
	// holds is not written: the state says a later revision was written.
	os.WriteFile(dest, []byte("v=newer-by-hand\n"), 0o644)
	os.WriteFile(filepath.Join(r.dir, "state", strings.ReplaceAll(strings.TrimPrefix(dest, "/"), "/", "%2F")+".json"),
		[]byte(`{"revision": 1000000}`), 0o644)
	stop = r.run(r.load(cfg("1h")))
	r.eventually("the older render refused", func() bool { return strings.Contains(r.logs.String(), "older revision") })
	stop()
	if read(dest) != "v=newer-by-hand\n" || runs() != 1 {
		t.Fatalf("an older render replaced the destination: %q, %d reloads", read(dest), runs())
	}
}

// -once renders, checks, writes and reloads each template once, reporting
// failures; -dry-run prints a unified diff and writes nothing.
func TestOnceAndDryRun(t *testing.T) {
	r := newRig(t, "")
	r.put("k", "new")
	tmpl := r.file("k.tmpl", "line 1\nk={{key \"k\"}}\nline 3\n", 0o644)
	bad := r.file("bad.tmpl", "{{key \"absent\"}}", 0o644)
	dest := r.file("k.conf", "line 1\nk=old\nline 3\n", 0o644)
	reload, runs := r.counter("reload")
	s := r.load(fmt.Sprintf("socket: %s\nstate_dir: %s\ntemplates:\n  - {source: %s, destination: %s, reload: [%q]}\n  - {source: %s, destination: %s}\n",
		r.agent.Sock, filepath.Join(r.dir, "state"), tmpl, dest, reload[0], bad, filepath.Join(r.dir, "bad.conf")))
	rd := render.New(render.Options{Client: client.New(r.agent.Sock, client.Options{})})
	var diff bytes.Buffer
	if failed := rd.Once(context.Background(), s, &diff); failed != 1 {
		t.Fatalf("dry run: %d failed, want 1", failed)
	}
	if !strings.Contains(diff.String(), "-k=old\n+k=new\n") || !strings.Contains(diff.String(), "--- "+dest) {
		t.Fatalf("diff:\n%s", diff.String())
	}
	if read(dest) != "line 1\nk=old\nline 3\n" || runs() != 0 {
		t.Fatal("the dry run wrote or reloaded")
	}
	if failed := rd.Once(context.Background(), s, nil); failed != 1 || read(dest) != "line 1\nk=new\nline 3\n" || runs() != 1 {
		t.Fatalf("once: %d failed, %q, %d reloads", failed, read(dest), runs())
	}
	if failed := rd.Once(context.Background(), s, nil); failed != 1 || runs() != 1 {
		t.Fatalf("once again: %d failed, %d reloads (want no reload for the same bytes)", failed, runs())
	}
}

// The examples in examples/render render what their comments promise,
// through a real agent: the nginx upstreams and the TOML file. Their
// checks run where nginx and python3 are installed.
func TestExamples(t *testing.T) {
	r := newRig(t, "")
	r.put("services/web/a", "10.0.0.1:8080")
	r.put("services/web/b", "10.0.0.2:8080")
	r.put("app/db/url", `postgres://db/app?sslmode="require"`)
	r.put("app/features/search", "true")
	r.put("app/features/limit", "25")
	r.put("app/replicas", "r1,r2")
	examples, _ := filepath.Abs("../examples/render")
	var files strings.Builder
	fmt.Fprintf(&files, "socket: %s\nstate_dir: %s\ntemplates:\n", r.agent.Sock, filepath.Join(r.dir, "state"))
	for _, ex := range []struct{ file, dest, tool string }{{"nginx.yaml", "upstreams.conf", "nginx"}, {"app.yaml", "app.toml", "python3"}} {
		b, err := os.ReadFile(filepath.Join(examples, ex.file))
		if err != nil {
			t.Fatal(err)
		}
		y := strings.ReplaceAll(string(b), "/etc/endpointd/templates", examples)
		y = regexp.MustCompile(`destination: \S+`).ReplaceAllString(y, "destination: "+filepath.Join(r.dir, ex.dest))
		y = regexp.MustCompile(`reload: .*`).ReplaceAllString(y, "reload: []")
		if _, err := exec.LookPath(ex.tool); err != nil {
			t.Logf("%s: no %s here; rendering without its check", ex.file, ex.tool)
			y = regexp.MustCompile(`(?s)check:.*?(\n    [a-z_]+:)`).ReplaceAllString(y, "$1")
			y = regexp.MustCompile(`check: \[.*\]\n`).ReplaceAllString(y, "")
		}
		_, body, _ := strings.Cut(y, "templates:\n")
		files.WriteString(body)
	}
	stop := r.run(r.load(files.String()))
	defer stop()
	r.eventually("both examples rendered", func() bool {
		return read(filepath.Join(r.dir, "upstreams.conf")) != "" && read(filepath.Join(r.dir, "app.toml")) != ""
	})
	up := read(filepath.Join(r.dir, "upstreams.conf"))
	if !strings.Contains(up, "server 10.0.0.1:8080;  # a\n    server 10.0.0.2:8080;  # b\n") {
		t.Fatalf("upstreams.conf:\n%s", up)
	}
	toml := read(filepath.Join(r.dir, "app.toml"))
	for _, want := range []string{`url = "postgres://db/app?sslmode=\"require\""`, "pool_size = 10", "limit = 25", "search = true",
		`hosts = ["r1","r2"]`} {
		if !strings.Contains(toml, want) {
			t.Fatalf("app.toml lacks %q:\n%s", want, toml)
		}
	}
}
