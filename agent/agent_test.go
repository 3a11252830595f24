package agent_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"udp_iaasd/agent"
	"udp_iaasd/client"
	"udp_iaasd/config"
	"udp_iaasd/internal/agenttest"
	"udp_iaasd/internal/etcdtest"
)

// endpointsFile is config.EndpointsYAML for a test's variadic lists.
func endpointsFile(eps ...string) string { return string(config.EndpointsYAML(eps)) }

func TestStartAppliesAndServes(t *testing.T) {
	cluster := etcdtest.New(t, 3)
	h := agenttest.Start(t, agenttest.Options{Endpoints: cluster.Endpoints()})
	h.Eventually("ready", func() bool { return h.Status().Ready })
	st := h.Status()
	if !slices.Equal(st.Endpoints, cluster.Endpoints()) || st.Config.Reloads != 1 || st.Config.SHA256 == "" ||
		st.Config.AppliedAt == "" || st.Config.LastError != "" || !st.Etcd.Connected || len(st.Etcd.Members) != 3 {
		t.Fatalf("status = %+v", st)
	}
	if code, _ := h.Get("/readyz"); code != 200 {
		t.Fatalf("/readyz = %d", code)
	}
	ctx := context.Background()
	if _, err := h.Client.Put(ctx, "agent/k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	if kv, err := h.Client.Get(ctx, "agent/k"); err != nil || string(kv.Value) != "v" {
		t.Fatalf("Get = %v, %v", kv, err)
	}
	// READY=1 came once the socket served, and a STATUS line said so.
	if n := h.Notes(); !slices.Contains(n, "READY=1") {
		t.Fatalf("notifications %q lack READY=1", n)
	}
	_, metrics := h.Get("/metrics")
	for _, name := range []string{
		`endpointd_config_reloads_total{result="success"} 1`,
		`endpointd_config_reloads_total{result="failure"} 0`,
		"endpointd_config_last_reload_successful 1",
		"endpointd_config_last_reload_success_timestamp_seconds",
		"endpointd_endpoints 3",
		"endpointd_etcd_up 1",
		"endpointd_etcd_reconnects_total 0",
		"endpointd_etcd_read_batches_total",
		"endpointd_etcd_batched_reads_total",
		"endpointd_etcd_write_batches_total",
		"endpointd_etcd_batched_writes_total",
		`endpointd_http_requests_total{code="200",method="PUT"}`,
		"endpointd_http_request_duration_seconds_bucket",
		"endpointd_watchers 0",
	} {
		if !strings.Contains(metrics, name) {
			t.Errorf("/metrics lacks %q", name)
		}
	}
}

// Every way config management, editors and Kubernetes replace a file is
// picked up and applied; the measured time is logged, not asserted.
func TestReplacementStylesApplied(t *testing.T) {
	cluster := etcdtest.New(t, 3)
	eps := cluster.Endpoints()
	h := agenttest.Start(t, agenttest.Options{Endpoints: eps})
	h.Eventually("first apply", func() bool { return h.Status().Config.Reloads == 1 })

	sets := [][]string{{eps[1], eps[2], eps[0]}, {eps[2], eps[0]}, eps, {eps[0], eps[1]}, {eps[1], eps[0], eps[2]}, eps[1:]}
	styles := []struct {
		name    string
		replace func(data string)
	}{
		{"truncate and write", func(data string) { h.Write(data) }},
		{"temp file and rename", func(data string) {
			tmp := filepath.Join(filepath.Dir(h.EpsPath), ".ansible_tmp")
			os.WriteFile(tmp, []byte(data), 0o644)
			os.Rename(tmp, h.EpsPath)
		}},
		{"sed -i", func(data string) {
			// sed rewrites through a temp file and renames it over.
			script := filepath.Join(h.Dir, "script.sed")
			os.WriteFile(script, []byte("1,$d\n"), 0o644)
			exec.Command("sed", "-i", "-f", script, h.EpsPath).Run()
			f, _ := os.OpenFile(h.EpsPath, os.O_WRONLY|os.O_APPEND, 0)
			f.WriteString(data)
			f.Close()
		}},
		{"delete and recreate", func(data string) {
			os.Remove(h.EpsPath)
			h.Write(data)
		}},
		{"editor backup rename", func(data string) {
			os.Rename(h.EpsPath, h.EpsPath+"~")
			h.Write(data)
		}},
		{"directory removed and recreated", func(data string) {
			os.RemoveAll(filepath.Dir(h.EpsPath))
			time.Sleep(100 * time.Millisecond)
			os.MkdirAll(filepath.Dir(h.EpsPath), 0o755)
			h.Write(data)
		}},
	}
	for i, st := range styles {
		want := sets[i]
		st.replace(endpointsFile(want...))
		took := h.Eventually(st.name, func() bool { return slices.Equal(h.Status().Endpoints, want) })
		t.Logf("%s: applied %v after the change", st.name, took)
	}
	if st := h.Status(); st.Config.LastError != "" && !strings.Contains(st.Config.LastError, "missing") {
		t.Fatalf("last_error %q after valid replacements", st.Config.LastError)
	}
}

func TestKubernetesConfigMapSwap(t *testing.T) {
	cluster := etcdtest.New(t, 3)
	eps := cluster.Endpoints()
	h := agenttest.Start(t, agenttest.Options{})
	dir := filepath.Dir(h.EpsPath)
	version := func(name string, list []string) {
		os.Mkdir(filepath.Join(dir, name), 0o755)
		os.WriteFile(filepath.Join(dir, name, "endpoints.yaml"), []byte(endpointsFile(list...)), 0o644)
		os.Symlink(name, filepath.Join(dir, "..data_tmp"))
		os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data"))
	}
	version("..v1", eps)
	os.Symlink("..data/endpoints.yaml", h.EpsPath)
	h.Eventually("v1 applied", func() bool { return slices.Equal(h.Status().Endpoints, eps) })
	want := []string{eps[2], eps[1]}
	version("..v2", want)
	h.Eventually("v2 applied through the ..data swap", func() bool { return slices.Equal(h.Status().Endpoints, want) })
}

// A bad file never takes effect: the last good set stays, and status and
// metrics say why.
func TestBadEditsKeepLastGood(t *testing.T) {
	cluster := etcdtest.New(t, 3)
	eps := cluster.Endpoints()
	h := agenttest.Start(t, agenttest.Options{Endpoints: eps})
	h.Eventually("first apply", func() bool { return h.Status().Config.Reloads == 1 })
	good := h.Status()

	bad := []struct {
		name, data, wantErr string
	}{
		{"too few", endpointsFile(eps[0]), "1 endpoint, fewer than min_cluster_size 2"},
		{"bad port", endpointsFile(eps[0], "10.0.0.1:99999"), `endpoints.yaml:3:5: endpoint "10.0.0.1:99999": port out of range 1-65535`},
		{"syntax", "endpoints: [a:1,\n", "YAML syntax"},
		{"unknown key", endpointsFile(eps...) + "extra: 1\n", `unknown key "extra"`},
		{"empty", "", "file is empty"},
		{"duplicate", endpointsFile(eps[0], eps[0]), "duplicate"},
	}
	failures := 0
	for _, b := range bad {
		h.Write(b.data)
		failures++
		h.Eventually(b.name+" rejected", func() bool { return strings.Contains(h.Status().Config.LastError, b.wantErr) })
		st := h.Status()
		if !slices.Equal(st.Endpoints, eps) || st.Config.Reloads != 1 || st.Config.SHA256 != good.Config.SHA256 || st.Config.LastErrorAt == "" {
			t.Fatalf("%s: status changed: %+v", b.name, st)
		}
		if !strings.Contains(st.Config.LastError, h.EpsPath) {
			t.Fatalf("%s: last_error %q does not name the file", b.name, st.Config.LastError)
		}
		if _, err := h.Client.Put(context.Background(), "still/works", []byte(b.name)); err != nil {
			t.Fatalf("%s: KV failed while a bad file was in place: %v", b.name, err)
		}
	}
	_, m := h.Get("/metrics")
	if !strings.Contains(m, fmt.Sprintf(`endpointd_config_reloads_total{result="failure"} %d`, failures)) ||
		!strings.Contains(m, "endpointd_config_last_reload_successful 0") {
		t.Fatalf("metrics after %d rejections:\n%s", failures, grep(m, "endpointd_config"))
	}

	// Deleting the file is a rejection too.
	os.Remove(h.EpsPath)
	h.Eventually("missing file reported", func() bool { return strings.Contains(h.Status().Config.LastError, "missing") })
	if !slices.Equal(h.Status().Endpoints, eps) {
		t.Fatal("deleting the file changed the applied set")
	}

	// The same set, valid again after a rejection, is applied and counted.
	h.Write(endpointsFile(eps...))
	h.Eventually("good file applied again", func() bool { return h.Status().Config.Reloads == 2 })
	if st := h.Status(); st.Config.LastError != "" {
		t.Fatalf("last_error not cleared: %+v", st.Config)
	}
	// Identical bytes are not processed again.
	h.Write(endpointsFile(eps...))
	time.Sleep(500 * time.Millisecond)
	if n := h.Status().Config.Reloads; n != 2 {
		t.Fatalf("identical bytes counted as a reload: %d", n)
	}
}

func grep(s, sub string) string {
	var out []string
	for l := range strings.SplitSeq(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// With no valid endpoints file at start the agent serves health, status and
// metrics, answers KV with 503, is not ready, and applies the first valid
// file that appears.
func TestStartWithoutEndpointsFile(t *testing.T) {
	cluster := etcdtest.New(t, 3)
	h := agenttest.Start(t, agenttest.Options{})
	h.Eventually("missing file reported", func() bool { return strings.Contains(h.Status().Config.LastError, "missing") })
	if code, _ := h.Get("/healthz"); code != 200 {
		t.Fatalf("/healthz = %d", code)
	}
	if code, body := h.Get("/readyz"); code != 503 || !strings.Contains(body, "no valid endpoint set") {
		t.Fatalf("/readyz = %d %s", code, body)
	}
	if _, err := h.Client.Get(context.Background(), "k"); !errors.Is(err, client.ErrUnavailable) {
		t.Fatalf("KV before endpoints = %v, want ErrUnavailable", err)
	}
	h.Write(endpointsFile(cluster.Endpoints()...))
	h.Eventually("ready after the file appears", func() bool { return h.Status().Ready })
}

// A whole-cluster outage shows in status and readiness, requests fail fast,
// and the agent reconnects by itself.
func TestWholeClusterOutage(t *testing.T) {
	cluster := etcdtest.New(t, 3)
	h := agenttest.Start(t, agenttest.Options{Endpoints: cluster.Endpoints()})
	h.Eventually("ready", func() bool { return h.Status().Ready })

	cluster.StopAll()
	h.Eventually("disconnected", func() bool { return !h.Status().Etcd.Connected })
	if code, body := h.Get("/readyz"); code != 503 || !strings.Contains(body, "etcd unreachable") {
		t.Fatalf("/readyz during outage = %d %s", code, body)
	}
	start := time.Now()
	_, err := h.Client.Put(context.Background(), "outage/k", []byte("v"))
	if !errors.Is(err, client.ErrUnavailable) && !errors.Is(err, client.ErrTimeout) {
		t.Fatalf("Put during outage = %v", err)
	}
	if took := time.Since(start); took > 3*time.Second { // request_timeout 2s plus margin: a hang, not a speed claim
		t.Fatalf("Put during outage took %v", took)
	}
	if code, _ := h.Get("/healthz"); code != 200 {
		t.Fatal("the agent stopped serving health during the outage")
	}

	if err := cluster.RestartAll(); err != nil {
		t.Fatal(err)
	}
	h.Eventually("ready again", func() bool { return h.Status().Ready })
	if _, err := h.Client.Put(context.Background(), "outage/k", []byte("after")); err != nil {
		t.Fatalf("Put after recovery: %v", err)
	}
	if st := h.Status(); st.Etcd.Reconnects < 1 {
		t.Fatalf("reconnects = %d", st.Etcd.Reconnects)
	}
}

// Reload (SIGHUP) re-reads config.yaml: live settings apply, a bad file is
// rejected with the running config kept, and the endpoints file is re-read.
func TestReload(t *testing.T) {
	cluster := etcdtest.New(t, 3)
	eps := cluster.Endpoints()
	h := agenttest.Start(t, agenttest.Options{Endpoints: eps[:2]})
	h.Eventually("applied", func() bool { return h.Status().Config.Reloads == 1 })

	// Raise min_cluster_size to 3: the same two-endpoint file is now
	// rejected on the re-read the reload does.
	cfg, _ := os.ReadFile(h.CfgPath)
	os.WriteFile(h.CfgPath, []byte(strings.Replace(string(cfg), "min_cluster_size: 2", "min_cluster_size: 3", 1)), 0o644)
	h.Agent.Reload()
	h.Eventually("re-read under the new minimum", func() bool {
		return strings.Contains(h.Status().Config.LastError, "fewer than min_cluster_size 3")
	})
	if !slices.Equal(h.Status().Endpoints, eps[:2]) {
		t.Fatal("the applied set changed on a rejected re-read")
	}
	notes := h.Notes()
	if !slices.ContainsFunc(notes, func(s string) bool { return strings.HasPrefix(s, "RELOADING=1\nMONOTONIC_USEC=") }) {
		t.Fatalf("no RELOADING=1 with MONOTONIC_USEC in %q", notes)
	}

	// A bad config.yaml is rejected; the running config (min 3) stays.
	os.WriteFile(h.CfgPath, []byte("min_cluster_size: zero\n"), 0o644)
	h.Agent.Reload()
	h.Write(endpointsFile(eps...))
	h.Eventually("three endpoints applied under the kept config", func() bool { return slices.Equal(h.Status().Endpoints, eps) })
	// The kept minimum still rules: a two-endpoint file is rejected.
	h.Write(endpointsFile(eps[:2]...))
	h.Eventually("a two-endpoint file rejected under the kept minimum of 3", func() bool {
		return strings.Contains(h.Status().Config.LastError, "fewer than min_cluster_size 3")
	})
}

// etcd.tls in config.yaml reaches the client: bare host:port entries in the
// endpoints file become https and are verified against ca_file.
func TestAgentOverTLS(t *testing.T) {
	cluster, files := etcdtest.NewTLS(t, 1)
	host := cluster.Members[0].TLSClientURL.Host
	port := strings.Split(host, ":")[1]
	// Two spellings of the one member (the certificate names both), so the
	// file meets min_cluster_size 2.
	h := agenttest.Start(t, agenttest.Options{Endpoints: []string{host, "localhost:" + port}, EtcdExtra: "tls: {ca_file: " + files.CAFile + "}"})
	h.Eventually("ready over TLS", func() bool { return h.Status().Ready })
	if eps := h.Status().Endpoints; eps[0] != "https://"+host {
		t.Fatalf("applied %v, want https entries", eps)
	}
	if _, err := h.Client.Put(context.Background(), "tls/agent", []byte("v")); err != nil {
		t.Fatalf("Put through the agent over TLS: %v", err)
	}
}

// CONFIG.md: each apply and each rejection is one log line with the file's
// sha256 and, on rejection, the message.
func TestApplyAndRejectionLogLines(t *testing.T) {
	cluster := etcdtest.New(t, 3)
	eps := cluster.Endpoints()
	h := agenttest.Start(t, agenttest.Options{Endpoints: eps})
	h.Eventually("applied", func() bool { return h.Status().Config.Reloads == 1 })
	sum := h.Status().Config.SHA256
	if got := h.Logs.Lines("endpoints applied", "sha256="+sum); len(got) != 1 {
		t.Fatalf("%d apply lines with sha256=%s, want 1: %q", len(got), sum, got)
	}

	bad := endpointsFile(eps[0], "10.0.0.1:99999")
	h.Write(bad)
	h.Eventually("rejected", func() bool { return h.Status().Config.LastError != "" })
	badSum := fmt.Sprintf("%x", sha256.Sum256([]byte(bad)))
	got := h.Logs.Lines("endpoints file rejected", "sha256="+badSum)
	if len(got) != 1 || !strings.Contains(got[0], "port out of range 1-65535") || !strings.Contains(got[0], h.EpsPath+":3:5") {
		t.Fatalf("rejection lines %q, want one with the sha256, FILE:LINE:COL and the message", got)
	}
	// The same bad bytes again: not processed, so not logged again.
	h.Write(bad)
	time.Sleep(500 * time.Millisecond)
	if n := len(h.Logs.Lines("endpoints file rejected")); n != 1 {
		t.Fatalf("%d rejection lines after rewriting identical bytes, want 1", n)
	}
}

// With etcd authentication: an agent started while etcd is down applies its
// endpoints file anyway and connects once etcd is back; etcd's refusals are
// 403; and the password file is read again on reload, both ways.
func TestAuthentication(t *testing.T) {
	cluster := etcdtest.New(t, 3)
	cluster.EnableAuth(t, "agent", "agentpw", "a/")
	pwFile := filepath.Join(t.TempDir(), "etcd-password")
	writePW := func(pw string) {
		t.Helper()
		if err := os.WriteFile(pwFile, []byte(pw+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writePW("agentpw")
	cluster.StopAll()

	h := agenttest.Start(t, agenttest.Options{Endpoints: cluster.Endpoints(), EtcdExtra: "username: agent, password_file: " + pwFile})
	h.Eventually("the endpoints file applied while etcd is down", func() bool {
		st := h.Status()
		return st.Config.Reloads == 1 && st.Config.LastError == "" && !st.Etcd.Connected
	})
	if code, body := h.Get("/v1/kv/a/k"); code != http.StatusServiceUnavailable {
		t.Fatalf("GET while etcd is down: %d %s", code, body)
	}
	if err := cluster.RestartAll(); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	h.Eventually("a write once etcd is back", func() bool {
		_, err := h.Client.Put(ctx, "a/k", []byte("v"))
		return err == nil
	})
	if code, body := h.Get("/v1/kv/b/k"); code != http.StatusForbidden || !strings.Contains(body, `"code":"forbidden"`) {
		t.Fatalf("GET outside the user's permissions: %d %s", code, body)
	}

	// A wrong password on reload: the client is rebuilt with it and cannot
	// authenticate; status says why.
	writePW("wrong")
	h.Agent.Reload()
	h.Eventually("status to report the refused password", func() bool {
		st := h.Status()
		return !st.Etcd.Connected && strings.Contains(st.Etcd.LastError, "authentication failed")
	})
	if code, _ := h.Get("/v1/kv/a/k"); code != http.StatusServiceUnavailable {
		t.Fatalf("GET with a refused password: %d, want 503", code)
	}
	// The right one on the next reload repairs it.
	writePW("agentpw")
	h.Agent.Reload()
	h.Eventually("a read after the password is fixed", func() bool {
		kv, err := h.Client.Get(ctx, "a/k")
		return err == nil && string(kv.Value) == "v"
	})
	if lines := h.Logs.Lines("agentpw"); len(lines) > 0 {
		t.Errorf("the password appears in the log: %q", lines)
	}
}

// Access rules come from config.yaml and reload with it: a reload with a bad
// rule (an unknown user) is rejected at its position and the running rules
// stay; a good one applies to the next request.
func TestAccessRulesReload(t *testing.T) {
	cluster := etcdtest.New(t, 2)
	rules := func(prefix, user string) string {
		return fmt.Sprintf("access:\n  - name: tests\n    uids: [%d]\n    users: [%s]\n    prefixes: [%q]\n    allow: [read, write]\n",
			os.Getuid(), user, prefix)
	}
	h := agenttest.Start(t, agenttest.Options{Endpoints: cluster.Endpoints(), Extra: rules("ok/", "root")})
	h.Eventually("applied", func() bool { return h.Status().Config.Reloads == 1 })
	put := func(key string) error { _, err := h.Client.Put(context.Background(), key, []byte("v")); return err }
	if err := put("ok/x"); err != nil {
		t.Fatalf("allowed put: %v", err)
	}
	if err := put("no/x"); !errors.Is(err, client.ErrForbidden) {
		t.Fatalf("put outside the rule: %v, want forbidden", err)
	}

	cfg, _ := os.ReadFile(h.CfgPath)
	bad := strings.Replace(string(cfg), "users: [root]", "users: [no-such-user-endpointd]", 1)
	os.WriteFile(h.CfgPath, []byte(bad), 0o644)
	h.Agent.Reload()
	h.Eventually("the bad rule rejected", func() bool {
		return strings.Contains(h.Logs.String(), `unknown user \"no-such-user-endpointd\"`)
	})
	if !strings.Contains(h.Logs.String(), "config.yaml:") {
		t.Errorf("the rejection does not name the file and position:\n%s", h.Logs.String())
	}
	if err := put("ok/x"); err != nil {
		t.Fatalf("the running rules were dropped: %v", err)
	}
	if err := put("no/x"); !errors.Is(err, client.ErrForbidden) {
		t.Fatalf("the running rules were loosened: %v", err)
	}

	os.WriteFile(h.CfgPath, []byte(strings.Replace(string(cfg), `prefixes: ["ok/"]`, `prefixes: [""]`, 1)), 0o644)
	h.Agent.Reload()
	h.Eventually("the wider rule applied", func() bool { return put("no/x") == nil })
}

// The files config.yaml names are read into the etcd client's config, and
// each unusable one is named by its setting.
func TestEtcdConfigFiles(t *testing.T) {
	dir := t.TempDir()
	pw := filepath.Join(dir, "pw")
	if err := os.WriteFile(pw, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := config.Default()
	c.Etcd.Username, c.Etcd.PasswordFile = "root", pw
	if ec, err := agent.EtcdConfig(c); err != nil || ec.Password != "s3cret" || ec.Username != "root" || ec.TLS != nil {
		t.Fatalf("EtcdConfig = %+v, %v", ec, err)
	}
	c.Etcd.PasswordFile = filepath.Join(dir, "missing")
	c.Etcd.TLS.CAFile = pw // not PEM
	_, err := agent.EtcdConfig(c)
	if err == nil || !strings.Contains(err.Error(), "etcd.password_file") || !strings.Contains(err.Error(), "etcd.tls: ca file") ||
		!strings.Contains(err.Error(), "no PEM certificate") {
		t.Fatalf("bad password and CA files: %v", err)
	}
}

// A fresh install, before config management writes the endpoints file,
// says that nothing is applied yet — not that "the applied endpoints stay
// in force" — in the log and on /readyz; once a set was applied, a missing
// file keeps it.
func TestFreshInstallSaysNothingIsApplied(t *testing.T) {
	cluster := etcdtest.New(t, 3)
	h := agenttest.Start(t, agenttest.Options{})
	h.Eventually("the missing file logged", func() bool {
		return strings.Contains(h.Logs.String(), "no endpoints are applied yet")
	})
	code, body := h.Get("/readyz")
	if code != 503 || !strings.Contains(body, "no valid endpoint set applied yet") || !strings.Contains(body, "file is missing") ||
		strings.Contains(body, "stay in force") {
		t.Fatalf("/readyz before any file: %d %s", code, body)
	}
	if strings.Contains(h.Logs.String(), "keeping the applied endpoints") {
		t.Fatalf("a fresh install claims applied endpoints:\n%s", h.Logs.String())
	}
	agenttest.WriteEndpoints(t, h.EpsPath, cluster.Endpoints()...)
	h.Eventually("applied", func() bool { return h.Status().Ready })
	os.Remove(h.EpsPath)
	h.Eventually("the removal logged as keeping the set", func() bool {
		return strings.Contains(h.Logs.String(), "keeping the applied endpoints")
	})
}

// metrics.listen serves /metrics, and nothing else, over TCP, where
// Prometheus can scrape it; the gRPC socket's calls and watches are there.
func TestMetricsOverTCP(t *testing.T) {
	cluster := etcdtest.New(t, 3)
	h := agenttest.Start(t, agenttest.Options{Endpoints: cluster.Endpoints(), GRPC: true, Extra: "metrics: {listen: \"127.0.0.1:0\"}\n"})
	h.Eventually("ready", func() bool { return h.Status().Ready })
	var addr string
	h.Eventually("the metrics address logged", func() bool {
		m := regexp.MustCompile(`msg="serving /metrics over TCP" addr=(\S+)`).FindStringSubmatch(h.Logs.String())
		if m != nil {
			addr = m[1]
		}
		return m != nil
	})
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{"unix://" + h.GRPCSock}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, "m/x", "1"); err != nil {
		t.Fatal(err)
	}
	wch := cli.Watch(ctx, "m/", clientv3.WithPrefix(), clientv3.WithCreatedNotify())
	<-wch
	scrape := func() string {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	body := scrape()
	for _, want := range []string{
		`grpc_server_handled_total{grpc_code="OK",grpc_method="Put",grpc_service="etcdserverpb.KV",grpc_type="unary"} 1`,
		"endpointd_grpc_watchers 1",
		"endpointd_etcd_up 1",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics over TCP lacks %q", want)
		}
	}
	if resp, err := http.Get("http://" + addr + "/v1/status"); err != nil || resp.StatusCode != http.StatusNotFound {
		t.Fatalf("GET /v1/status over the metrics listener: %v %v, want 404", resp, err)
	}
}
