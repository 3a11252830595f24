package server

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"
	"udp_iaasd/etcd"

	clientv3 "go.etcd.io/etcd/client/v3"

	"udp_iaasd/internal/etcdtest"
)

func TestWatchEventsInOrder(t *testing.T) {
	e := newEnv(t, nil)
	ws := e.watch("/v1/watch/w1/?prefix&heartbeat=200ms")
	if ws.resp.StatusCode != 200 || ws.resp.Header.Get("Content-Type") != "application/x-ndjson" {
		t.Fatalf("watch answered %d %s", ws.resp.StatusCode, ws.resp.Header.Get("Content-Type"))
	}
	e.do("PUT", "/v1/kv/w1/a", nil, []byte("1"))
	e.do("PUT", "/v1/kv/w1/b", nil, []byte{0xff})
	e.do("DELETE", "/v1/kv/w1/a", nil, nil)
	e.do("PUT", "/v1/kv/w2/outside", nil, []byte("x")) // not under the prefix

	ev := ws.next()
	if ev["type"] != "PUT" || ev["key"] != "w1/a" || ev["value"] != "1" || ev["version"] != 1.0 || ev["create_revision"] == nil {
		t.Fatalf("first event %v", ev)
	}
	rev1 := ev["mod_revision"].(float64)
	ev = ws.next()
	if ev["type"] != "PUT" || ev["key"] != "w1/b" || ev["value_base64"] != "/w==" || ev["mod_revision"].(float64) <= rev1 {
		t.Fatalf("second event %v", ev)
	}
	ev = ws.next()
	if ev["type"] != "DELETE" || ev["key"] != "w1/a" {
		t.Fatalf("third event %v", ev)
	}
	if _, has := ev["value"]; has {
		t.Fatalf("DELETE carries a value: %v", ev)
	}
	// Heartbeats arrive and never claim less than what was delivered.
	delRev := ev["mod_revision"].(float64)
	deadline := time.After(5 * time.Second)
	for {
		select {
		case m := <-ws.lines:
			if m["type"] == "PROGRESS" {
				if m["revision"].(float64) < delRev {
					t.Fatalf("PROGRESS %v below the delivered revision %v", m, delRev)
				}
				return
			}
			t.Fatalf("unexpected line %v (w2/outside leaked in?)", m)
		case <-deadline:
			t.Fatal("no PROGRESS heartbeat within 5s at heartbeat=200ms")
		}
	}
}

func TestWatchReplayFromRevision(t *testing.T) {
	e := newEnv(t, nil)
	var revs []float64
	for i := range 5 {
		r := e.do("PUT", "/v1/kv/replay/k", nil, []byte(fmt.Sprint(i)))
		revs = append(revs, r.json(t)["revision"].(float64))
	}
	ws := e.watch(fmt.Sprintf("/v1/watch/replay/k?rev=%d", int64(revs[1])))
	for i := 1; i < 5; i++ {
		ev := ws.next()
		if ev["value"] != fmt.Sprint(i) || ev["mod_revision"] != revs[i] {
			t.Fatalf("replayed event %d = %v, want value %d at %v", i, ev, i, revs[i])
		}
	}
	// A transaction's events share a revision: all are delivered.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := e.direct.Txn(ctx).Then(clientv3.OpPut("replay/k", "t1"), clientv3.OpPut("replay/kk", "t2")).Commit(); err != nil {
		t.Fatal(err)
	}
	ws2 := e.watch("/v1/watch/replay/?prefix&rev=1")
	var got []string
	for range 7 {
		got = append(got, ws2.next()["value"].(string))
	}
	if want := []string{"0", "1", "2", "3", "4", "t1", "t2"}; !slices.Equal(got, want) {
		t.Fatalf("prefix replay = %v, want %v", got, want)
	}
}

// A watch ends when its client goes away and leaves nothing behind.
func TestWatchClientGoesAway(t *testing.T) {
	e := newEnv(t, nil)
	ws := e.watch("/v1/watch/gone/k")
	etcdtest.Eventually(t, 10*time.Second, "one watcher", func() bool { return e.srv.watchers.Load() == 1 })
	ws.conn.Close()
	etcdtest.Eventually(t, 10*time.Second, "no watchers", func() bool { return e.srv.watchers.Load() == 0 })
}

func TestWatchLimit(t *testing.T) {
	e := newEnv(t, nil, func(o *Options) { o.Limits.MaxWatches = 2 })
	e.watch("/v1/watch/lim/a")
	e.watch("/v1/watch/lim/b")
	r := e.do("GET", "/v1/watch/lim/c", nil, nil)
	e.expect(r, http.StatusServiceUnavailable, "unavailable")
	if r.header.Get("Retry-After") == "" {
		t.Fatal("503 without Retry-After")
	}
}

// The stream survives a member's loss and an endpoint change (which
// replaces the client when it switches plain/TLS, and re-balances otherwise)
// without missing or repeating an event.
func TestWatchSurvivesMemberLossAndReload(t *testing.T) {
	cluster := etcdtest.New(t, 3)
	e := newEnv(t, cluster)
	ws := e.watch("/v1/watch/surv/?prefix&heartbeat=500ms")

	const n = 60
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := range n {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			// Write directly so that writes do not depend on the agent under test.
			for {
				if _, err := e.direct.Put(ctx, fmt.Sprintf("surv/%03d", i), "v"); err == nil || ctx.Err() != nil {
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
			cancel()
			time.Sleep(20 * time.Millisecond)
		}
	})
	time.Sleep(200 * time.Millisecond)
	eps := cluster.Endpoints()
	for i, m := range cluster.Members {
		m.Stop()
		time.Sleep(300 * time.Millisecond)
		if err := e.ec.UpdateEndpoints(append(eps[i+1:], eps[:i+1]...)); err != nil {
			t.Fatal(err)
		}
		if err := m.Restart(); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	// A retried write whose first attempt timed out yet applied shows as two
	// PUTs of one key at two revisions; both are real. What must hold:
	// strictly increasing revisions (in order, nothing repeated), every key.
	var last float64
	seen := map[string]bool{}
	for len(seen) < n {
		ev := ws.next()
		if ev["type"] != "PUT" {
			t.Fatalf("unexpected event %v", ev)
		}
		if rev := ev["mod_revision"].(float64); rev <= last {
			t.Fatalf("event %v at revision %v after %v", ev["key"], rev, last)
		} else {
			last = rev
		}
		seen[ev["key"].(string)] = true
	}
	for i := range n {
		if k := fmt.Sprintf("surv/%03d", i); !seen[k] {
			t.Fatalf("key %s never delivered", k)
		}
	}
	// Anything after that is a retried write's second PUT: later, never a repeat.
	select {
	case m := <-ws.lines:
		if m["type"] != "PROGRESS" && m["mod_revision"].(float64) <= last {
			t.Fatalf("line after all events repeats an old revision: %v", m)
		}
	case <-time.After(time.Second):
	}
}

// After a whole-cluster outage the stream goes on: events written once the
// cluster is back arrive, none missed.
func TestWatchSurvivesWholeClusterRestart(t *testing.T) {
	cluster := etcdtest.New(t, 1)
	e := newEnv(t, cluster)
	ws := e.watch("/v1/watch/outage/?prefix&heartbeat=200ms")
	e.do("PUT", "/v1/kv/outage/before", nil, []byte("1"))
	if ev := ws.next(); ev["key"] != "outage/before" {
		t.Fatalf("event %v", ev)
	}
	cluster.StopAll()
	time.Sleep(time.Second)
	if err := cluster.RestartAll(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for {
		if _, err := e.direct.Put(ctx, "outage/after", "2"); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if ev := ws.next(); ev["key"] != "outage/after" || ev["type"] != "PUT" {
		t.Fatalf("event after the outage: %v", ev)
	}
}

// Streams on one prefix share one etcd watch, and each still gets every
// event from its own start exactly once, in order.
func TestWatchCoalescing(t *testing.T) {
	e := newEnv(t, nil)
	const n = 20
	streams := make([]*watchStream, n)
	for i := range streams {
		streams[i] = e.watch("/v1/watch/coal/?prefix")
	}
	if got := e.ec.WatchHubs(); got != 1 {
		t.Fatalf("%d hubs for %d streams on one prefix, want 1", got, n)
	}
	for i := range 30 {
		e.do("PUT", fmt.Sprintf("/v1/kv/coal/%02d", i), nil, []byte("v"))
	}
	// A stream that starts now, after those writes, must not see them.
	late := e.watch("/v1/watch/coal/?prefix")
	e.do("PUT", "/v1/kv/coal/late", nil, []byte("v"))
	for i, ws := range streams {
		var last float64
		for j := range 31 {
			ev := ws.next()
			want := fmt.Sprintf("coal/%02d", j)
			if j == 30 {
				want = "coal/late"
			}
			if ev["key"] != want || ev["mod_revision"].(float64) <= last {
				t.Fatalf("stream %d event %d = %v, want %s after revision %v", i, j, ev, want, last)
			}
			last = ev["mod_revision"].(float64)
		}
	}
	if ev := late.next(); ev["key"] != "coal/late" {
		t.Fatalf("the late stream's first event is %v, want coal/late", ev)
	}
	// Streams leaving stop the hub once the last one is gone.
	for _, ws := range append(streams, late) {
		ws.conn.Close()
	}
	etcdtest.Eventually(t, 10*time.Second, "the hub to stop", func() bool { return e.ec.WatchHubs() == 0 })
}

// A stream whose client stops reading is detached from the shared watch
// (the hub never waits for it) and, once its client reads again, still gets
// every event exactly once, from a watch of its own.
func TestWatchSlowSubscriberDetached(t *testing.T) {
	cluster := shared(t)
	ec, err := etcd.New(etcd.Config{Endpoints: cluster.Endpoints(), RequestTimeout: 3 * time.Second, WatchBuffer: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ec.Close() })
	e := serve(t, ec)
	e.direct = etcdtest.DirectClient(t, cluster.Endpoints())
	// The slow client: a raw connection that reads nothing for now.
	slow := rawConn(t, e.sock)
	slow.SetDeadline(time.Now().Add(60 * time.Second))
	fmt.Fprintf(slow, "GET /v1/watch/slowsub/?prefix HTTP/1.1\r\nHost: x\r\n\r\n")
	etcdtest.Eventually(t, 10*time.Second, "the slow stream", func() bool { return e.srv.watchers.Load() == 1 })
	fast := e.watch("/v1/watch/slowsub/?prefix")
	big := make([]byte, 256<<10)
	// Puts of 256 KiB until the slow subscriber is detached: they fill the
	// unix socket's buffer (about 2 MiB), then the 2-slot channel. How many
	// that takes is not fixed — etcd may deliver several revisions in one
	// response (a watcher catching up gets them batched), and the hub
	// hands the fast stream a response before it finds the slow one's
	// channel full — so the test puts until the detach, within a bound, and
	// the slow period stays well inside the stream's 10s write timeout.
	n := 0
	for ; n < 64 && e.ec.DetachedSubscribers() == 0; n++ {
		e.do("PUT", fmt.Sprintf("/v1/kv/slowsub/%02d", n), nil, big)
		if ev := fast.next(); ev["key"] != fmt.Sprintf("slowsub/%02d", n) {
			t.Fatalf("fast stream event %d = %v", n, ev["key"])
		}
	}
	if e.ec.DetachedSubscribers() == 0 {
		t.Fatalf("the slow subscriber is still attached after %d puts of 256 KiB", n)
	}
	t.Logf("the slow subscriber detached after %d puts", n)
	// Now the slow client reads: everything, once, in order.
	resp, err := http.ReadResponse(bufio.NewReader(slow), &http.Request{Method: "GET"})
	if err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 1<<20), 4<<20)
	var last float64
	for i := 0; i < n; {
		if !sc.Scan() {
			t.Fatalf("slow stream ended after %d events: %v", i, sc.Err())
		}
		var ev map[string]any
		json.Unmarshal(sc.Bytes(), &ev)
		if ev["type"] == "PROGRESS" {
			continue
		}
		if ev["key"] != fmt.Sprintf("slowsub/%02d", i) || ev["mod_revision"].(float64) <= last {
			t.Fatalf("slow stream event %d = %v after revision %v", i, ev["key"], last)
		}
		last = ev["mod_revision"].(float64)
		i++
	}
}
