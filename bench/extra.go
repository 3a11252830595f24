package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"udp_iaasd/api"
	"udp_iaasd/config"
)

// reloadLatency times n endpoints file replacements (temp file + rename, as
// config management does) until /v1/status reports the new file's sha256.
func (e *env) reloadLatency(n int) {
	eps := e.cluster.Endpoints()
	var lats []time.Duration
	for i := range n {
		order := slices.Clone(eps)
		if i%2 == 1 {
			slices.Reverse(order)
		}
		content := fmt.Sprintf("# reload %d\n%s", i, config.EndpointsYAML(order))
		want := sha([]byte(content))
		tmp := e.agent.epsPath + ".tmp"
		writeFile(tmp, content)
		start := time.Now()
		rename(tmp, e.agent.epsPath)
		for {
			st, err := e.viaAgent.status()
			if err == nil && st.Config.SHA256 == want {
				break
			}
			if time.Since(start) > 10*time.Second {
				fmt.Printf("reload %d not applied within 10s\n", i)
				return
			}
			time.Sleep(time.Millisecond)
		}
		lats = append(lats, time.Since(start))
	}
	slices.Sort(lats)
	fmt.Printf("reload latency (file renamed -> new set applied, %d reloads, watch.debounce 100ms): p50 %v, p99 %v\n",
		n, lats[len(lats)/2].Round(time.Millisecond/10), lats[len(lats)*99/100].Round(time.Millisecond/10))
}

// watchFanOut opens n watchers on one prefix through each path and reports
// how many watches etcd itself then holds, and event delivery latency.
func (e *env) watchFanOut(n int) {
	fmt.Printf("watch fan-out, %d local watchers on one prefix, 100 puts:\n", n)
	for _, path := range []string{"direct", "endpointd", "grpc-proxy"} {
		before := e.upstreamWatchers()
		ctx, cancel := context.WithCancel(context.Background())
		var mu sync.Mutex
		var lats []time.Duration
		record := func(v []byte) {
			ns, err := strconv.ParseInt(string(v), 10, 64)
			if err == nil {
				mu.Lock()
				lats = append(lats, time.Since(time.Unix(0, ns)))
				mu.Unlock()
			}
		}
		prefix := "bench/watch/" + path + "/"
		var ready sync.WaitGroup
		for range n {
			ready.Add(1)
			switch path {
			case "endpointd":
				go e.httpWatch(ctx, prefix, &ready, record)
			default:
				cli := e.direct.cli
				if path == "grpc-proxy" {
					cli = e.viaProxy.cli
				}
				go func() {
					wch := cli.Watch(clientv3.WithRequireLeader(ctx), prefix, clientv3.WithPrefix(), clientv3.WithCreatedNotify())
					ready.Done()
					for resp := range wch {
						for _, ev := range resp.Events {
							record(ev.Kv.Value)
						}
					}
				}()
			}
		}
		ready.Wait()
		time.Sleep(500 * time.Millisecond)
		upstream := e.upstreamWatchers() - before
		for i := range 100 {
			e.direct.put(context.Background(), fmt.Sprintf("%s%d", prefix, i), []byte(strconv.FormatInt(time.Now().UnixNano(), 10)))
			time.Sleep(5 * time.Millisecond)
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			mu.Lock()
			got := len(lats)
			mu.Unlock()
			if got >= 100*n || time.Now().After(deadline) {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		cancel()
		mu.Lock()
		slices.Sort(lats)
		p := func(q float64) time.Duration {
			if len(lats) == 0 {
				return 0
			}
			return lats[min(len(lats)-1, int(float64(len(lats))*q))].Round(time.Microsecond)
		}
		fmt.Printf("  %-10s upstream etcd watches %4.0f, events delivered %6d of %6d, delivery p50 %v, p99 %v\n",
			path, upstream, len(lats), 100*n, p(0.5), p(0.99))
		mu.Unlock()
		time.Sleep(500 * time.Millisecond)
	}
}

// httpWatch is one watcher on the agent's socket, on its own connection.
func (e *env) httpWatch(ctx context.Context, prefix string, ready *sync.WaitGroup, record func([]byte)) {
	conn, err := net.Dial("unix", e.agent.sock)
	if err != nil {
		ready.Done()
		return
	}
	defer conn.Close()
	go func() { <-ctx.Done(); conn.Close() }()
	fmt.Fprintf(conn, "GET /v1/watch/%s?prefix HTTP/1.1\r\nHost: x\r\n\r\n", prefix)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	ready.Done()
	if err != nil {
		return
	}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		var ev struct {
			Type  string `json:"type"`
			Value string `json:"value"`
		}
		if json.Unmarshal(sc.Bytes(), &ev) == nil && ev.Type == api.LinePut {
			record([]byte(ev.Value))
		}
	}
}

// upstreamWatchers sums etcd_debugging_mvcc_watcher_total over the members.
func (e *env) upstreamWatchers() float64 {
	total := 0.0
	for _, ep := range e.cluster.Endpoints() {
		resp, err := http.Get(ep + "/metrics")
		if err != nil {
			continue
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for line := range strings.SplitSeq(string(b), "\n") {
			if strings.HasPrefix(line, "etcd_debugging_mvcc_watcher_total ") {
				v, _ := strconv.ParseFloat(strings.Fields(line)[1], 64)
				total += v
			}
		}
	}
	return total
}

// failover kills the leader under a one-client put loop and times how long
// until a put succeeds again, for the direct client and through the agent.
func (e *env) failover() {
	fmt.Println("failover, leader killed with SIGKILL under a 1-client put loop (time to the first success after the kill):")
	for _, t := range []target{e.direct, e.viaAgent} {
		st, err := e.viaAgent.status()
		if err != nil {
			fmt.Println("  status:", err)
			return
		}
		var victim = e.cluster.Members[0]
		for _, m := range e.cluster.Members {
			if m.Endpoint() == st.Etcd.Leader {
				victim = m
			}
		}
		ctx, cancel := context.WithCancel(context.Background())
		var killedAt time.Time
		var mu sync.Mutex
		firstOK := make(chan time.Time, 1)
		go func() {
			for i := 0; ctx.Err() == nil; i++ {
				rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
				_, err := t.put(rctx, "bench/failover", value)
				rcancel()
				now := time.Now()
				mu.Lock()
				k := killedAt
				mu.Unlock()
				if err == nil && !k.IsZero() {
					select {
					case firstOK <- now:
					default:
					}
					return
				}
			}
		}()
		time.Sleep(300 * time.Millisecond)
		mu.Lock()
		killedAt = time.Now()
		mu.Unlock()
		victim.Kill()
		select {
		case ok := <-firstOK:
			fmt.Printf("  %-10s %v\n", t.name(), ok.Sub(killedAt).Round(time.Millisecond))
		case <-time.After(15 * time.Second):
			fmt.Printf("  %-10s no success within 15s\n", t.name())
		}
		cancel()
		if err := victim.Restart(); err != nil {
			fmt.Println("  restart:", err)
			return
		}
		time.Sleep(2 * time.Second)
	}
}
