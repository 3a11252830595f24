package agent_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"udp_iaasd/client"
	"udp_iaasd/internal/agenttest"
	"udp_iaasd/internal/etcdtest"
)

// Budgets on both sockets, with a real agent, cluster and config: past its
// rate a peer gets 429 too_many_requests with Retry-After over HTTP and
// ResourceExhausted over gRPC, and nothing reaches etcd; the agent's own
// paths are never counted; max_streams refuses the next watch at once and
// closing one lets the next in; a reload changes the budgets live without
// cutting an open stream; the Go client retries 429 after Retry-After.
func TestBudgetsOnBothSockets(t *testing.T) {
	cluster := etcdtest.New(t, 2)
	rule := func(rate, burst, streams int) string {
		return fmt.Sprintf("access:\n  - name: tests\n    uids: [%d]\n    prefixes: [\"\"]\n    allow: [read, write]\n"+
			"    rate: %d\n    burst: %d\n    max_streams: %d\n", os.Getuid(), rate, burst, streams)
	}
	h := agenttest.Start(t, agenttest.Options{Endpoints: cluster.Endpoints(), GRPC: true, Extra: rule(1, 3, 0)})
	h.Eventually("ready", func() bool { return h.Status().Ready })
	ranges := func() (n int64) {
		for _, m := range cluster.Members {
			n += m.UnaryRPCs()["/etcdserverpb.KV/Range"]
		}
		return n
	}

	get := func(path string) *http.Response {
		t.Helper()
		resp, err := h.HTTP.Get("http://localhost" + path)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}
	// Spend the burst (whatever the status calls above left of it), then
	// the next request is refused and never sent.
	h.Eventually("the bucket to be spent", func() bool { return get("/v1/kv/x").StatusCode == 429 })
	before := ranges()
	resp := get("/v1/kv/x")
	if resp.StatusCode != 429 {
		t.Fatalf("status %d, want 429", resp.StatusCode)
	}
	if ra, err := strconv.Atoi(resp.Header.Get("Retry-After")); err != nil || ra < 1 {
		t.Fatalf("Retry-After %q", resp.Header.Get("Retry-After"))
	}
	if n := ranges() - before; n != 0 {
		t.Fatalf("a throttled read reached etcd (%d Range)", n)
	}
	for range 5 {
		if code, _ := h.Get("/v1/status"); code != 200 {
			t.Fatalf("/v1/status is counted against the rate: %d", code)
		}
	}
	if code, body := h.Get("/metrics"); code != 200 || !strings.Contains(body, `endpointd_throttled_total{reason="rate",rule="tests"}`) {
		t.Fatalf("/metrics %d without the throttle counter", code)
	}

	// gRPC: the same bucket, ResourceExhausted.
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{"unix://" + h.GRPCSock}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	h.Eventually("a gRPC call refused", func() bool {
		_, err := cli.Get(context.Background(), "x")
		return status.Code(err) == codes.ResourceExhausted
	})

	// The Go client waits Retry-After and retries within RetryMax.
	retrying := client.New(h.Sock, client.Options{RetryMax: 5})
	if _, err := retrying.Put(context.Background(), "x", []byte("v")); err != nil {
		t.Fatalf("the client gave up on 429: %v", err)
	}
	noRetry := client.New(h.Sock, client.Options{RetryMax: -1})
	h.Eventually("a 429 error", func() bool {
		_, err := noRetry.Get(context.Background(), "x")
		var ae *client.Error
		return errors.Is(err, client.ErrTooManyRequests) && errors.As(err, &ae) && ae.RetryAfter >= time.Second
	})

	// Streams: a generous rate, two streams.
	reload := func(extra string) {
		cfg, _ := os.ReadFile(h.CfgPath)
		s := string(cfg)
		s = s[:strings.Index(s, "access:")] + extra
		os.WriteFile(h.CfgPath, []byte(s), 0o644)
		h.Agent.Reload()
	}
	reload(rule(1000, 1000, 2))
	open := func() (*http.Response, error) {
		ctx, cancel := context.WithCancel(context.Background())
		t.Cleanup(cancel)
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://localhost/v1/watch/w", nil)
		resp, err := h.HTTP.Do(req)
		if err == nil && resp.StatusCode == 200 {
			t.Cleanup(func() { resp.Body.Close() })
		}
		return resp, err
	}
	var w1 *http.Response
	h.Eventually("the reload applied (a watch opens)", func() bool {
		r, err := open()
		if err == nil && r.StatusCode == 200 {
			w1 = r
			return true
		}
		return false
	})
	if r, err := open(); err != nil || r.StatusCode != 200 {
		t.Fatalf("second watch: %v %v", r.StatusCode, err)
	}
	r3, err := open()
	if err != nil || r3.StatusCode != 429 {
		t.Fatalf("third watch with max_streams 2: %v %v", r3.StatusCode, err)
	}
	r3.Body.Close()
	// Lowering the limit never cuts a stream: both stay open.
	reload(rule(1000, 1000, 1))
	h.Eventually("the lowered limit applied", func() bool { r, err := open(); return err == nil && r.StatusCode == 429 })
	direct := cluster.Client(t)
	direct.Put(context.Background(), "w", "event")
	line := make([]byte, 512)
	n, err := w1.Body.Read(line)
	if err != nil || !strings.Contains(string(line[:n]), `"PUT"`) {
		t.Fatalf("an open watch after lowering max_streams: %q %v", line[:n], err)
	}
	w1.Body.Close()
	reload(rule(1000, 1000, 3))
	h.Eventually("a watch after closing one and raising the limit", func() bool {
		r, err := open()
		return err == nil && r.StatusCode == 200
	})
}
