// Command soak runs endpointd under steady mixed load against a healthy
// local etcd cluster and reports whether anything degrades: 5xx answers,
// goroutines, heap or resident memory growing. It is a program, not a timed
// test; docs/reliability.md records its runs.
//
//	go run ./reliability/soak -duration 10m -clients 64
//
// The agent runs in a child process (this binary, re-executed), so its
// goroutines and memory are measured apart from the in-process etcd cluster
// and the load generator.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"udp_iaasd/api"
	"udp_iaasd/client"
	"udp_iaasd/config"
	"udp_iaasd/internal/agentproc"
	"udp_iaasd/internal/devcluster"
)

func main() {
	agentConfig := flag.String("agent-config", "", "internal: run as the agent child with this config")
	duration := flag.Duration("duration", 10*time.Minute, "how long to load the agent")
	clients := flag.Int("clients", 64, "concurrent clients")
	keys := flag.Int("keys", 1000, "distinct keys")
	valueSize := flag.Int("value-size", 256, "bytes per value")
	watchers := flag.Int("watchers", 8, "open watch streams")
	sample := flag.Duration("sample", 30*time.Second, "how often to sample the agent")
	flag.Parse()
	if *agentConfig != "" {
		os.Exit(agentproc.Main(*agentConfig, "soak"))
	}
	os.Exit(soak(*duration, *clients, *keys, *valueSize, *watchers, *sample))
}

type sampleRow struct {
	at                    time.Duration
	goroutines, heap, rss float64
	ops                   int64
}

func soak(duration time.Duration, clients, nkeys, valueSize, nwatchers int, every time.Duration) int {
	dir, err := os.MkdirTemp("", "endpointd-soak-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	cluster, err := devcluster.Start(devcluster.Options{Members: 3, Dir: filepath.Join(dir, "etcd"), Fsync: true})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer cluster.Close()
	sock := filepath.Join(dir, "endpointd.sock")
	os.WriteFile(filepath.Join(dir, "endpoints.yaml"), config.EndpointsYAML(cluster.Endpoints()), 0o644)
	cfgPath := filepath.Join(dir, "config.yaml")
	os.WriteFile(cfgPath, []byte("endpoints_file: endpoints.yaml\nsocket: {path: "+sock+"}\n"), 0o644)

	child := exec.Command(os.Args[0], "-agent-config", cfgPath)
	child.Stderr = os.Stderr
	if err := agentproc.Start(child, 30*time.Second); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer func() { child.Process.Signal(syscall.SIGTERM); child.Wait() }()

	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}, Timeout: 10 * time.Second}
	c := client.New(sock, client.Options{RetryMax: -1})
	fmt.Printf("soak: %v, %d clients, %d keys, %d-byte values, %d watchers; agent pid %d\n",
		duration, clients, nkeys, valueSize, nwatchers, child.Process.Pid)

	ctx, cancel := context.WithTimeout(context.Background(), duration)
	defer cancel()
	var (
		ops, errs5xx, errsOther atomic.Int64
		byOp                    [5]atomic.Int64
		latMu                   sync.Mutex
		lats                    []time.Duration
		watchEvents             atomic.Int64
		firstErr                atomic.Value
	)
	value := []byte(strings.Repeat("v", valueSize))
	var wg sync.WaitGroup
	for w := range nwatchers {
		wg.Go(func() {
			for ev, err := range c.Watch(ctx, fmt.Sprintf("soak/%d", w), client.WithPrefix()) {
				if err != nil {
					return
				}
				if ev.Type != api.LineProgress {
					watchEvents.Add(1)
				}
			}
		})
	}
	for i := range clients {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(i), 7))
			var mine []time.Duration
			for ctx.Err() == nil {
				key := fmt.Sprintf("soak/%d", rng.IntN(nkeys))
				start := time.Now()
				var err error
				kind := rng.IntN(100)
				switch {
				case kind < 50:
					_, err = c.Get(ctx, key)
					if errors.Is(err, client.ErrNotFound) {
						err = nil
					}
					byOp[0].Add(1)
				case kind < 80:
					_, err = c.Put(ctx, key, value)
					byOp[1].Add(1)
				case kind < 90:
					_, err = c.List(ctx, fmt.Sprintf("soak/%d", rng.IntN(10)), client.Limit(50), client.KeysOnly())
					byOp[2].Add(1)
				case kind < 95:
					var kv *client.KV
					if kv, err = c.Get(ctx, key); err == nil {
						_, err = c.Put(ctx, key, value, client.IfModRevision(kv.ModRevision))
					}
					if errors.Is(err, client.ErrPreconditionFailed) || errors.Is(err, client.ErrNotFound) {
						err = nil // a lost race is an answer, not a failure
					}
					byOp[3].Add(1)
				default:
					_, _, err = c.Delete(ctx, key)
					byOp[4].Add(1)
				}
				if ctx.Err() != nil {
					break
				}
				mine = append(mine, time.Since(start))
				ops.Add(1)
				var apiErr *client.Error
				switch {
				case err == nil:
				case errors.As(err, &apiErr) && apiErr.Status >= 500:
					errs5xx.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
				default:
					errsOther.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
				}
			}
			latMu.Lock()
			lats = append(lats, mine...)
			latMu.Unlock()
		})
	}

	var rows []sampleRow
	begin := time.Now()
	take := func() {
		m := scrape(hc)
		r := sampleRow{at: time.Since(begin).Round(time.Second), goroutines: m["go_goroutines"],
			heap: m["go_memstats_heap_inuse_bytes"], rss: m["process_resident_memory_bytes"], ops: ops.Load()}
		rows = append(rows, r)
		fmt.Printf("%8v  ops %9d  goroutines %5.0f  heap %6.1f MiB  rss %6.1f MiB\n",
			r.at, r.ops, r.goroutines, r.heap/(1<<20), r.rss/(1<<20))
	}
	take()
	tick := time.NewTicker(every)
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-tick.C:
			take()
		}
	}
	tick.Stop()
	wg.Wait()
	time.Sleep(2 * time.Second) // idle connections settle
	take()

	slices.Sort(lats)
	pct := func(p float64) time.Duration {
		if len(lats) == 0 {
			return 0
		}
		return lats[min(len(lats)-1, int(float64(len(lats))*p))]
	}
	first, mid, last := rows[0], rows[len(rows)/2], rows[len(rows)-1]
	fmt.Printf("\nSOAK SUMMARY\n")
	fmt.Printf("  duration %v, %d clients: %d requests (%.0f/s): get %d, put %d, list %d, cas %d, delete %d\n",
		duration, clients, ops.Load(), float64(ops.Load())/duration.Seconds(),
		byOp[0].Load(), byOp[1].Load(), byOp[2].Load(), byOp[3].Load(), byOp[4].Load())
	fmt.Printf("  5xx answers: %d; other errors: %d", errs5xx.Load(), errsOther.Load())
	if e := firstErr.Load(); e != nil {
		fmt.Printf(" (first: %s)", e)
	}
	fmt.Printf("\n  latency p50 %v, p99 %v, p99.9 %v, max %v\n", pct(0.5), pct(0.99), pct(0.999), pct(1))
	fmt.Printf("  watch events delivered: %d\n", watchEvents.Load())
	fmt.Printf("  agent goroutines: start %.0f, middle %.0f, end (after load) %.0f\n", first.goroutines, mid.goroutines, last.goroutines)
	fmt.Printf("  agent heap in use: start %.1f MiB, middle %.1f MiB, end %.1f MiB\n", first.heap/(1<<20), mid.heap/(1<<20), last.heap/(1<<20))
	fmt.Printf("  agent RSS: start %.1f MiB, middle %.1f MiB, end %.1f MiB\n", first.rss/(1<<20), mid.rss/(1<<20), last.rss/(1<<20))
	if errs5xx.Load() > 0 {
		return 1
	}
	return 0
}

// scrape reads the agent's /metrics into name → value (unlabelled series).
func scrape(hc *http.Client) map[string]float64 {
	out := map[string]float64{}
	resp, err := hc.Get("http://localhost/metrics")
	if err != nil {
		return out
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(io.LimitReader(resp.Body, 8<<20))
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") || strings.Contains(line, "{") {
			continue
		}
		f := strings.Fields(line)
		if len(f) == 2 {
			if v, err := strconv.ParseFloat(f[1], 64); err == nil {
				out[f[0]] = v
			}
		}
	}
	return out
}
