package agent_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"udp_iaasd/client"
	"udp_iaasd/internal/agenttest"
	"udp_iaasd/internal/etcdtest"
)

// The outage drill, as a new user would run it: three keys under a cached
// prefix, every member stopped. Stale and stale-if-error reads answer from
// the copy with its revision and a growing Age; plain reads and writes are
// 503 at once; access rules hold for stale answers; an agent restarted
// inside the outage answers from its persisted copy; when the members
// return the copy is confirmed by resuming its watch (no Range from the
// agent), a change made meanwhile by another client appears, and the
// revisions one agent answers with never go back.
func TestReadsThroughAnOutage(t *testing.T) {
	cluster := etcdtest.New(t, 3)
	direct := cluster.Client(t)
	ctx := context.Background()
	for i := 1; i <= 3; i++ {
		direct.Put(ctx, fmt.Sprintf("cfg/k%d", i), fmt.Sprint("v", i))
	}
	direct.Put(ctx, "cfg/secret", "s")
	direct.Put(ctx, "other/x", "o")
	extra := fmt.Sprintf(`cache: {prefixes: [cfg/], dir: %s, persist_interval: 50ms, max_staleness: 300ms}
access:
  - name: tests
    uids: [%d]
    prefixes: ["cfg/k", "other/"]
    allow: [read, write]
`, filepath.Join(t.TempDir(), "cache"), os.Getuid())
	h := agenttest.Start(t, agenttest.Options{Endpoints: cluster.Endpoints(), Extra: extra})
	confirmed := func(h *agenttest.Agent) func() bool {
		return func() bool { st := h.Status(); return len(st.Cache) == 1 && st.Cache[0].Confirmed }
	}
	h.Eventually("the copy confirmed", confirmed(h))

	var highest int64 // the highest revision one agent has answered with
	get := func(h *agenttest.Agent, path string, header ...string) (*http.Response, string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, "http://localhost"+path, nil)
		for i := 0; i+1 < len(header); i += 2 {
			req.Header.Add(header[i], header[i+1])
		}
		resp, err := h.HTTP.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var b [4096]byte
		n, _ := resp.Body.Read(b[:])
		if rev, err := strconv.ParseInt(resp.Header.Get("X-Etcd-Revision"), 10, 64); err == nil && resp.StatusCode == 200 {
			if rev < highest {
				t.Fatalf("%s answered revision %d after %d: back in time", path, rev, highest)
			}
			highest = rev
		}
		return resp, string(b[:n])
	}
	stale := func(h *agenttest.Agent, path string, header ...string) (rev int64, age int) {
		t.Helper()
		resp, body := get(h, path, header...)
		if resp.StatusCode != 200 || resp.Header.Get("X-Endpointd-Cache") != "hit" || resp.Header.Get("Age") == "" {
			t.Fatalf("%s %v = %d %v %s", path, header, resp.StatusCode, resp.Header, body)
		}
		rev, _ = strconv.ParseInt(resp.Header.Get("X-Etcd-Revision"), 10, 64)
		age, _ = strconv.Atoi(resp.Header.Get("Age"))
		return rev, age
	}
	expect := func(h *agenttest.Agent, code int, path string, header ...string) {
		t.Helper()
		if resp, body := get(h, path, header...); resp.StatusCode != code {
			t.Fatalf("%s %v = %d %s, want %d", path, header, resp.StatusCode, body, code)
		}
	}

	rev0, _ := stale(h, "/v1/kv/cfg/k1?stale")
	expect(h, 400, "/v1/kv/cfg/k1?stale&rev=1")
	expect(h, 400, "/v1/kv/cfg/k1", "Cache-Control", "stale-if-error=soon")
	expect(h, 403, "/v1/kv/cfg/secret?stale")
	expect(h, 403, "/v1/kv/cfg/?prefix&stale")
	if resp, _ := get(h, "/v1/kv/other/x?stale"); resp.StatusCode != 200 || resp.Header.Get("X-Endpointd-Cache") != "" {
		t.Fatalf("stale outside the cached prefixes: %d %v (want a serializable read from etcd)", resp.StatusCode, resp.Header)
	}

	cluster.StopAll()
	h.Eventually("etcd gone", func() bool { return !h.Status().Etcd.Connected })
	start := time.Now()
	expect(h, 503, "/v1/kv/cfg/k1")
	expect(h, 503, "/v1/kv/cfg/k1?serializable")
	if _, err := h.Client.Put(ctx, "cfg/k1", []byte("during")); !errors.Is(err, client.ErrUnavailable) && !errors.Is(err, client.ErrTimeout) {
		t.Fatalf("a write during the outage: %v", err)
	}
	t.Logf("plain reads and a write during the outage answered in %v", time.Since(start))
	if rev, _ := stale(h, "/v1/kv/cfg/k2?stale"); rev != rev0 {
		t.Fatalf("the copy's revision %d, before the outage %d", rev, rev0)
	}
	stale(h, "/v1/kv/cfg/k3", "Cache-Control", "max-age=0, stale-if-error=3600")
	stale(h, "/v1/kv/cfg/k?prefix", "Cache-Control", "stale-if-error=3600")
	expect(h, 403, "/v1/kv/cfg/secret", "Cache-Control", "stale-if-error=3600")
	expect(h, 503, fmt.Sprintf("/v1/kv/cfg/k1?stale&min_revision=%d", rev0+1))
	h.Eventually("the copy to say it is stale", func() bool {
		resp, _ := get(h, "/v1/kv/cfg/k1?stale")
		return resp.Header.Get("X-Endpointd-Stale") == "true"
	})
	h.Eventually("Age to grow", func() bool { _, age := stale(h, "/v1/kv/cfg/k1?stale"); return age >= 1 })
	kv, err := h.Client.Get(ctx, "cfg/k1", client.Stale())
	if err != nil || string(kv.Value) != "v1" || !kv.FromCache || !kv.Stale || kv.Age < time.Second || kv.Revision != rev0 {
		t.Fatalf("client Stale read: %+v, %v", kv, err)
	}
	// Members stopped one by one can end the watch on the first, resume it
	// on a survivor and confirm it there: the copy must still end up
	// unconfirmed once the last one is gone.
	h.Eventually("the copy to be unconfirmed", func() bool { return !h.Status().Cache[0].Confirmed })
	st := h.Status()
	if c := st.Cache[0]; c.Confirmed || !c.Present || c.Revision != rev0 || c.Keys != 4 || c.PersistedRevision != rev0 {
		t.Fatalf("status during the outage: %+v", c)
	}

	// The agent restarts inside the outage: its copy comes from disk.
	h.Stop()
	highest = 0 // a new agent's life
	h2 := agenttest.Start(t, agenttest.Options{Endpoints: cluster.Endpoints(), Extra: extra})
	rev, age := stale(h2, "/v1/kv/cfg/k1?stale")
	if rev != rev0 || age < 1 {
		t.Fatalf("after the restart: revision %d age %d, want %d and the copy's true age", rev, age, rev0)
	}
	list, err := h2.Client.List(ctx, "cfg/k", client.StaleIfError(time.Hour))
	if err != nil || list.Count != 3 || !list.FromCache || list.Revision != rev0 {
		t.Fatalf("stale-if-error list after the restart: %+v, %v", list, err)
	}
	expect(h2, 503, "/v1/kv/cfg/k1")

	// The members return: resume, not relist.
	ranges := func() (n int64) {
		for _, m := range cluster.Members {
			n += m.UnaryRPCs()["/etcdserverpb.KV/Range"]
		}
		return n
	}
	before := ranges()
	if err := cluster.RestartAll(); err != nil {
		t.Fatal(err)
	}
	h2.Eventually("the copy confirmed again", confirmed(h2))
	put, err := direct.Put(ctx, "cfg/k4", "after")
	if err != nil {
		t.Fatal(err)
	}
	h2.Eventually("a change made after the return", func() bool {
		resp, body := get(h2, "/v1/kv/cfg/k4?stale")
		r, _ := strconv.ParseInt(resp.Header.Get("X-Etcd-Revision"), 10, 64)
		return resp.StatusCode == 200 && body == "after" && r >= put.Header.Revision
	})
	if n := ranges() - before; n != 0 {
		t.Fatalf("the members saw %d Range requests from the agent during recovery, want 0", n)
	}
	if resp, _ := get(h2, "/v1/kv/cfg/k4?stale"); resp.Header.Get("X-Endpointd-Stale") != "" {
		t.Fatalf("a confirmed copy still says stale: %v", resp.Header)
	}
}
