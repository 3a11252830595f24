package server

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"udp_iaasd/internal/etcdtest"
)

// Misbehaving local clients — garbage, bad encodings, huge and unfinished
// headers, bodies cut off, watches abandoned, pipelines dropped — get a clear
// answer or a closed connection, harm no other client, and leave no
// goroutine behind once the server has shut down.
func TestHostileClientsLeakNothing(t *testing.T) {
	// etcd runs in a process of its own, so every goroutine left in this one
	// after the server and its etcd client are closed is a leak of ours. That
	// needs a test process of its own as well: other tests here run members
	// in process (the shared cluster), whose goroutines come and go on their
	// own. So the test runs itself again, alone, in a fresh test process.
	if os.Getenv(hostileAlone) == "" {
		cmd := exec.Command(os.Args[0], "-test.run=^TestHostileClientsLeakNothing$", "-test.count=1", "-test.v")
		cmd.Env = append(os.Environ(), hostileAlone+"=1")
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "--- PASS: TestHostileClientsLeakNothing") {
			t.Fatalf("the test alone in a process: %v\n%s", err, out)
		}
		return
	}
	cl := etcdtest.NewProc(t, 1)
	ignore := goleak.IgnoreCurrent()

	t.Run("hostile", func(t *testing.T) {
		e := newEnv(t, cl, func(o *Options) { o.ReadHeaderTimeout = 300 * time.Millisecond; o.MaxHeaderBytes = 4096 })
		healthy := func() {
			t.Helper()
			e.expect(e.do("GET", "/healthz", nil, nil), http.StatusOK, "")
		}
		send := func(raw string) (string, error) {
			c, err := net.Dial("unix", e.sock)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			io.WriteString(c, raw)
			b, err := io.ReadAll(c)
			return string(b), err
		}
		cases := []struct{ name, raw, want string }{
			{"garbage", "\x00\x01\x02 NOT HTTP\r\n\r\n", "400 Bad Request"},
			{"bad percent-encoding", "GET /v1/kv/%zz HTTP/1.1\r\nHost: x\r\n\r\n", "400 Bad Request"},
			{"huge header", "GET /healthz HTTP/1.1\r\nHost: x\r\nX: " + strings.Repeat("a", 8192) + "\r\n\r\n", "431"},
			{"unfinished header", "GET /healthz HTTP/1.1\r\nHost: x\r\n", ""},
			{"body shorter than declared", "PUT /v1/kv/hostile/k HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nonly-a-little", ""},
			{"HTTP/1.0 without Host", "GET /healthz HTTP/1.0\r\n\r\n", "200 OK"},
			{"pipelined, then gone", "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /v1/kv/a HTTP/1.1\r\nHost: x\r\n\r\nGET /v1/watch/a HTTP/1.1\r\nHost: x\r\n\r\n", ""},
		}
		for _, c := range cases {
			got, _ := send(c.raw)
			if c.want != "" && !strings.Contains(got, c.want) {
				t.Errorf("%s: answer %q, want %q", c.name, firstLine(got), c.want)
			}
			healthy()
		}
		if _, ok := e.directGet("hostile/k"); ok {
			t.Fatal("a cut-off body was written")
		}
		// Watches abandoned mid-stream, by many clients at once.
		for i := range 20 {
			ws := e.watch(fmt.Sprintf("/v1/watch/hostile/%d?heartbeat=100ms", i))
			ws.conn.Close()
		}
		etcdtest.Eventually(t, 10*time.Second, "abandoned watches to end", func() bool { return e.srv.watchers.Load() == 0 })
		healthy()
		// A body sent and then the client vanishes before the answer.
		c, _ := net.Dial("unix", e.sock)
		fmt.Fprintf(c, "PUT /v1/kv/hostile/gone HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nvalue")
		c.Close()
		healthy()
	})
	// The server, its connections and its etcd client are closed: nothing of
	// ours may remain.
	goleak.VerifyNone(t, ignore)
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// hostileAlone marks the test process TestHostileClientsLeakNothing runs
// itself in.
const hostileAlone = "ENDPOINTD_HOSTILE_ALONE"

// Any raw path decodes without panicking; a key whose every byte is
// percent-encoded comes back exactly.
func FuzzKeyFromPath(f *testing.F) {
	for _, s := range []string{"a", "/a//b/", "%2F", "%zz", "%", "..", "\xff", "a%00b", "%FF%FE", strings.Repeat("k", 5000)} {
		f.Add(s)
	}
	s := New(Options{Limits: Limits{MaxKeyBytes: 4096, MaxValueBytes: 1, MaxWatches: 1}})
	f.Fuzz(func(t *testing.T, raw string) {
		if key, err := s.key(raw, true); err == nil && len(key) > len(raw) {
			t.Fatalf("decoding %q grew it to %q", raw, key)
		}
		var b strings.Builder
		for i := 0; i < len(raw); i++ {
			fmt.Fprintf(&b, "%%%02X", raw[i])
		}
		key, err := s.key(b.String(), true)
		if len(raw) > 4096 {
			if err == nil {
				t.Fatalf("a %d-byte key passed the 4096-byte limit", len(raw))
			}
			return
		}
		if err != nil || key != raw {
			t.Fatalf("%q encoded as %q decoded to %q, %v", raw, b.String(), key, err)
		}
		if _, err := url.PathUnescape(b.String()); err != nil {
			t.Fatal(err)
		}
	})
}
