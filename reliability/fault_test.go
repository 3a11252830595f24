package reliability

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"udp_iaasd/client"
	"udp_iaasd/internal/agenttest"
	"udp_iaasd/internal/etcdtest"
)

// faultDuration is how long writers run; ENDPOINTD_FAULT_DURATION lengthens
// the run (docs/reliability.md).
func faultDuration(t *testing.T, def time.Duration) time.Duration {
	if v := os.Getenv("ENDPOINTD_FAULT_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("ENDPOINTD_FAULT_DURATION: %v", err)
		}
		return d
	}
	return def
}

type writeResult struct {
	key, value string
	start, end time.Time
	rev        int64
	err        error
}

// Under write load through the socket, with a live watch open: every member
// is killed with SIGKILL and restarted in turn, and the endpoints file is
// rewritten (reordered, then a changed set swapped in and back). Then every
// acknowledged write must read back, the watch must have delivered every
// acknowledged key exactly once in revision order, and no request may have
// taken longer than request_timeout plus a margin.
func TestFaultInjection(t *testing.T) {
	if testing.Short() {
		t.Skip("fault injection runs member processes")
	}
	cluster := etcdtest.NewProc(t, 3)
	run := startAgent(t, cluster)
	c := run.Client
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// The watch starts before the first write and uses the resuming client.
	watcher := client.New(run.Sock, client.Options{RetryMax: 100})
	type seen struct {
		key  string
		rev  int64
		typ  string
		when time.Time
	}
	var (
		evMu   sync.Mutex
		events []seen
	)
	watchDone := make(chan error, 1)
	first, err := c.Put(ctx, "fault/start", []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for ev, err := range watcher.Watch(ctx, "fault/w/", client.WithPrefix(), client.AtRevision(first+1), client.Heartbeat(500*time.Millisecond)) {
			if err != nil {
				watchDone <- err
				return
			}
			if ev.Type == "PROGRESS" {
				continue
			}
			evMu.Lock()
			events = append(events, seen{string(ev.KV.Key), ev.Revision, ev.Type, time.Now()})
			evMu.Unlock()
		}
		watchDone <- nil
	}()

	const writers = 8
	duration := faultDuration(t, 14*time.Second)
	results := make([][]writeResult, writers)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				r := writeResult{key: fmt.Sprintf("fault/w/%d/%06d", w, i), value: fmt.Sprintf("v-%d-%d", w, i), start: time.Now()}
				r.rev, r.err = c.Put(ctx, r.key, []byte(r.value))
				r.end = time.Now()
				results[w] = append(results[w], r)
				if r.err != nil {
					time.Sleep(20 * time.Millisecond)
				}
			}
		})
	}

	// The fault schedule, spread over the run.
	type kill struct {
		at     time.Time
		member string
		leader bool
	}
	var kills []kill
	step := duration / 8
	eps := cluster.Endpoints()
	time.Sleep(step)
	for i, m := range cluster.Members {
		// A fresh probe round: the snapshot's leader is as of the last
		// event, and the previous kill may have moved leadership since.
		hctx, hcancel := context.WithTimeout(context.Background(), 5*time.Second)
		leader := run.Agent.Etcd().CheckHealth(hctx).Leader == m.Endpoint()
		hcancel()
		t.Logf("kill -9 %s (leader: %v)", m.Name, leader)
		kills = append(kills, kill{time.Now(), m.Name, leader})
		m.Kill()
		time.Sleep(step / 2)
		if err := m.Restart(); err != nil {
			t.Fatal(err)
		}
		t.Logf("%s restarted, %v after the first kill", m.Name, time.Since(kills[0].at).Round(time.Millisecond))
		switch i {
		case 0:
			agenttest.WriteEndpoints(t, run.EpsPath, eps[2], eps[0], eps[1])
			t.Log("endpoints file reordered")
		case 1:
			agenttest.WriteEndpoints(t, run.EpsPath, eps[1:]...)
			t.Logf("endpoints file: a changed set swapped in, %v after the first kill", time.Since(kills[0].at).Round(time.Millisecond))
		case 2:
			agenttest.WriteEndpoints(t, run.EpsPath, eps...)
			t.Log("endpoints file: the full set back")
		}
		time.Sleep(step)
	}
	time.Sleep(step)
	close(stop)
	wg.Wait()

	// Every acknowledged write reads back with its value. A failure window
	// is a writer's run of failed requests: from the first one's start to the
	// next success's start; it is charged to the last kill before the first
	// failure was seen.
	var acked []writeResult
	var slowest time.Duration
	var slowestReq writeResult
	longestWindow, failures := time.Duration(0), 0
	windowByKill := make([]time.Duration, len(kills))
	windowWhy := make([]string, len(kills)) // how the longest window of each kill began
	charge := func(first, worst writeResult, d time.Duration) {
		longestWindow = max(longestWindow, d)
		for i := len(kills) - 1; i >= 0; i-- {
			if !first.end.Before(kills[i].at) {
				if d > windowByKill[i] {
					windowByKill[i] = d
					windowWhy[i] = fmt.Sprintf("began %v after the kill: %v; its slowest failure took %v: %v",
						first.start.Sub(kills[i].at).Round(time.Millisecond), first.err, worst.end.Sub(worst.start).Round(time.Millisecond), worst.err)
				}
				return
			}
		}
	}
	for _, rs := range results {
		var windowStart time.Time
		var first, worst writeResult
		for _, r := range rs {
			if d := r.end.Sub(r.start); d > slowest {
				slowest, slowestReq = d, r
			}
			if r.err == nil {
				acked = append(acked, r)
				if !windowStart.IsZero() {
					charge(first, worst, r.start.Sub(windowStart))
					windowStart = time.Time{}
				}
				continue
			}
			failures++
			if !errors.Is(r.err, client.ErrUnavailable) && !errors.Is(r.err, client.ErrTimeout) {
				t.Errorf("write %s failed with an unexpected error: %v", r.key, r.err)
			}
			if windowStart.IsZero() {
				windowStart, first, worst = r.start, r, r
			}
			if r.end.Sub(r.start) > worst.end.Sub(worst.start) {
				worst = r
			}
		}
	}
	rc := run.Client
	for _, r := range acked {
		kv, err := rc.Get(context.Background(), r.key)
		if err != nil || string(kv.Value) != r.value || kv.ModRevision != r.rev {
			t.Fatalf("acknowledged write %s (rev %d) reads back as %v, %v", r.key, r.rev, kv, err)
		}
	}

	// The watch delivered every acknowledged key exactly once, in order.
	byKey := map[string]int{}
	deadline := time.Now().Add(20 * time.Second)
	for {
		evMu.Lock()
		n := len(events)
		evMu.Unlock()
		if n >= len(acked) || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(time.Second) // anything repeated would arrive now
	cancel()
	if err := <-watchDone; err != nil {
		t.Fatalf("watch ended with %v", err)
	}
	evMu.Lock()
	defer evMu.Unlock()
	var last int64
	for _, ev := range events {
		byKey[ev.key]++
		// Puts batched into one transaction share a revision: order is
		// never backwards; each key once is checked below.
		if ev.rev < last {
			t.Fatalf("watch event %s at revision %d after revision %d", ev.key, ev.rev, last)
		}
		last = ev.rev
	}
	for k, n := range byKey {
		if n != 1 {
			t.Fatalf("key %s delivered %d times", k, n)
		}
	}
	for _, r := range acked {
		if byKey[r.key] != 1 {
			t.Fatalf("acknowledged key %s (rev %d) never delivered by the watch", r.key, r.rev)
		}
	}
	// Nothing may hang: etcd.request_timeout plus a margin.
	if slowest > requestTimeout+time.Second {
		t.Fatalf("a request took %v (%s: %v), over request_timeout %v plus 1s", slowest, slowestReq.key, slowestReq.err, requestTimeout)
	}
	for i, k := range kills {
		role := "follower"
		if k.leader {
			role = "leader"
		}
		t.Logf("kill -9 of %s (%s): longest failure window %v (%s)", k.member, role, windowByKill[i].Round(time.Millisecond), windowWhy[i])
	}
	t.Logf("FAULT RUN: %v, %d writers: %d writes acknowledged, %d failed, 0 lost; watch delivered %d events, "+
		"0 missed, 0 repeated; longest failure window %v; slowest request %v",
		duration, writers, len(acked), failures, len(events), longestWindow.Round(time.Millisecond), slowest.Round(time.Millisecond))
}
