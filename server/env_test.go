package server

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"udp_iaasd/access"
	"udp_iaasd/api"
	"udp_iaasd/etcd"
	"udp_iaasd/internal/etcdtest"
	"udp_iaasd/internal/peertest"
)

// One three-member cluster serves the package's tests that do not stop
// members; each test works under its own key prefix.
var (
	sharedOnce    sync.Once
	sharedCluster *etcdtest.Cluster
	sharedErr     error
)

func TestMain(m *testing.M) {
	peertest.RunIfHelper()
	etcdtest.RunMemberIfRequested()
	code := m.Run()
	peertest.Cleanup()
	if sharedCluster != nil {
		sharedCluster.Close()
	}
	os.Exit(code)
}

func shared(t *testing.T) *etcdtest.Cluster {
	t.Helper()
	sharedOnce.Do(func() { sharedCluster, sharedErr = etcdtest.Start(etcdtest.Options{}) })
	if sharedErr != nil {
		t.Fatalf("start shared cluster: %v", sharedErr)
	}
	return sharedCluster
}

// env is a server on a real unix socket in front of a real cluster.
type env struct {
	t      *testing.T
	ec     *etcd.EtcdClient
	srv    *Server
	sock   string
	direct *clientv3.Client
	reg    *prometheus.Registry
}

type envOpt func(*Options)

// withPolicy serves with the access rules of p, on the env's registry so
// that endpointd_access_denied_total can be read from /metrics.
func withPolicy(p *access.Policy) envOpt {
	return func(o *Options) { o.Gate = access.NewGate(access.Settings{Policy: p}, o.Registry, o.Logger) }
}

// endpointer is a cluster of either kind, in-process or member processes.
type endpointer interface{ Endpoints() []string }

func newEnv(t *testing.T, cluster endpointer, opts ...envOpt) *env {
	t.Helper()
	if cluster == nil || cluster == (*etcdtest.Cluster)(nil) {
		cluster = shared(t)
	}
	e := serve(t, newEtcd(t, cluster.Endpoints()), opts...)
	e.direct = etcdtest.DirectClient(t, cluster.Endpoints())
	return e
}

func newEtcd(t *testing.T, endpoints []string) *etcd.EtcdClient {
	t.Helper()
	ec, err := etcd.New(etcd.Config{Endpoints: endpoints, StatusProbeInterval: time.Millisecond,
		RequestTimeout: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ec.Close() })
	return ec
}

// serve starts a server for ec on a socket of the test's own.
func serve(t *testing.T, ec *etcd.EtcdClient, opts ...envOpt) *env {
	t.Helper()
	e := &env{t: t, ec: ec, sock: filepath.Join(t.TempDir(), "e.sock"), reg: prometheus.NewRegistry()}
	o := Options{
		Etcd:              ec,
		Limits:            Limits{MaxKeyBytes: 4096, MaxValueBytes: 1 << 20, MaxWatches: 64},
		Status:            func() api.Status { return api.Status{Ready: true, Endpoints: ec.Endpoints()} },
		Registry:          e.reg,
		MaxHeaderBytes:    16 << 10,
		ReadHeaderTimeout: 2 * time.Second,
		IdleTimeout:       time.Minute,
		MaxConnections:    256,
		ShutdownTimeout:   3 * time.Second,
	}
	for _, f := range opts {
		f(&o)
	}
	e.srv = New(o)
	ln, err := Listen(e.sock, 0o660, -1)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return e
}

// resp is an HTTP answer read off the wire.
type resp struct {
	status int
	header http.Header
	body   []byte
}

func (r resp) json(t *testing.T) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.body, &m); err != nil {
		t.Fatalf("body %q is not JSON: %v", r.body, err)
	}
	return m
}

// do sends one request with the request-target written exactly as given, the
// way curl --unix-socket --path-as-is would.
func (e *env) do(method, target string, header map[string]string, body []byte) resp {
	e.t.Helper()
	conn, err := net.Dial("unix", e.sock)
	if err != nil {
		e.t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(15 * time.Second))
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n", method, target)
	for k, v := range header {
		fmt.Fprintf(&b, "%s: %s\r\n", k, v)
	}
	if body != nil {
		fmt.Fprintf(&b, "Content-Length: %d\r\n", len(body))
	}
	b.WriteString("\r\n")
	if _, err := io.WriteString(conn, b.String()); err != nil {
		e.t.Fatal(err)
	}
	if body != nil {
		// A server may answer (405, 413, …) and close without reading the
		// body; the write then fails but the answer is there to read.
		conn.Write(body)
	}
	r, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: method})
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, target, err)
	}
	defer r.Body.Close()
	data, err := io.ReadAll(r.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return resp{status: r.StatusCode, header: r.Header, body: data}
}

func (e *env) expect(r resp, status int, code string) {
	e.t.Helper()
	if r.status != status {
		e.t.Fatalf("status %d, want %d; body %s", r.status, status, r.body)
	}
	if code == "" {
		return
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		e.t.Fatalf("error Content-Type %q, want application/json", ct)
	}
	m := r.json(e.t)
	if m["code"] != code || m["error"] == "" || m["error"] == nil {
		e.t.Fatalf("error body %s, want code %q and a message", r.body, code)
	}
}

// directGet reads a key straight from etcd: what the agent did, seen by the
// baseline.
func (e *env) directGet(key string) (string, bool) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := e.direct.Get(ctx, key)
	if err != nil {
		e.t.Fatal(err)
	}
	if len(r.Kvs) == 0 {
		return "", false
	}
	return string(r.Kvs[0].Value), true
}

// watchStream is an open watch read line by line.
type watchStream struct {
	t     *testing.T
	conn  net.Conn
	resp  *http.Response
	lines chan map[string]any
}

func (e *env) watch(target string) *watchStream { return e.stream("GET", target, "") }

// stream sends a request whose answer is NDJSON (a watch, a lock, a
// campaign, an observation) and returns once its headers are in.
func (e *env) stream(method, target, body string) *watchStream {
	e.t.Helper()
	conn, err := net.Dial("unix", e.sock)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { conn.Close() })
	fmt.Fprintf(conn, "%s %s HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n%s", method, target, len(body), body)
	br := bufio.NewReader(conn)
	r, err := http.ReadResponse(br, &http.Request{Method: method})
	if err != nil {
		e.t.Error(err)
		return &watchStream{t: e.t, conn: conn, lines: make(chan map[string]any)}
	}
	ws := &watchStream{t: e.t, conn: conn, resp: r, lines: make(chan map[string]any, 1000)}
	go func() {
		defer close(ws.lines)
		sc := bufio.NewScanner(r.Body)
		sc.Buffer(make([]byte, 0, 64<<10), 8<<20)
		for sc.Scan() {
			var m map[string]any
			if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
				m = map[string]any{"type": "BAD", "raw": sc.Text()}
			}
			ws.lines <- m
		}
	}()
	return ws
}

// next returns the next line that is not a PROGRESS heartbeat, within 15s
// (heartbeats do not extend it).
func (ws *watchStream) next() map[string]any {
	ws.t.Helper()
	timeout := time.After(15 * time.Second)
	for {
		select {
		case m, ok := <-ws.lines:
			if !ok {
				ws.t.Fatal("watch stream ended")
			}
			if m["type"] != "PROGRESS" {
				return m
			}
		case <-timeout:
			ws.t.Fatal("no watch event within 15s")
		}
	}
}

// newClusterForTest is a cluster of the test's own, for tests that compact
// or stop members.
func newClusterForTest(t *testing.T) *etcdtest.Cluster { return etcdtest.New(t, 1) }

func rawConn(t *testing.T, sock string) net.Conn {
	t.Helper()
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(15 * time.Second))
	return conn
}

func readResp(t *testing.T, conn net.Conn, method string) resp {
	t.Helper()
	r, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: method})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Body.Close()
	data, _ := io.ReadAll(r.Body)
	return resp{status: r.StatusCode, header: r.Header, body: data}
}
