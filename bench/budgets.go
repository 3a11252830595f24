package main

// Budgets mode (go run ./bench -budgets): the four targets of API.md
// "Budgets", measured on a three-member cluster in processes of its own and
// a real agent, with two local users: this process (root, uid 0, the
// "flooder" rule) and a child run as nobody (uid 65534, the "trickle"
// rule). It needs root, to start the child as another user.
//
//	isolation  max_requests_per_second 200; the flooder sends linearizable
//	           gets from 32 connections while the trickler sends 20 gets/s:
//	           requests/s the members saw from the agent (their own
//	           grpc_server_started_total), the trickler's errors and latency
//	           beside its latency alone.
//	queue      a budget of 2/s and 48 concurrent TTL puts (a lease each):
//	           how many got 429 with Retry-After, how many went, the longest
//	           answer (nothing hangs past request_timeout).
//	rate       a rule with rate 50; the flooder paces 500 requests/s: what
//	           got through per second, 429s with Retry-After, and the
//	           trickler (another rule) meanwhile.
//	streams    max_streams 5: the sixth watch, and the next after closing one.

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"udp_iaasd/internal/etcdtest"
)

const nobody = 65534

type budgetsEnv struct {
	dir     string
	self    string // this binary, copied where nobody may run it
	cluster *etcdtest.ProcCluster
	agent   *agentProc
	hc      *http.Client
}

// budgetsConfig is config.yaml's lines after the socket: the host's budget
// and the two peers' rules, flooder adding fields to the flooder's.
func budgetsConfig(hostBudget int, flooder string) string {
	return fmt.Sprintf(`etcd: {max_requests_per_second: %d, request_timeout: 5s}
access:
  - {name: flooder, uids: [0], prefixes: [""], allow: [read, write]%s}
  - {name: trickle, uids: [%d], prefixes: [""], allow: [read, write]}
`, hostBudget, flooder, nobody)
}

// socketMode lets nobody reach the socket.
const socketMode = `, mode: "0666"`

// reload rewrites config.yaml and sends the agent SIGHUP. Nothing in
// /v1/status says that config.yaml was read again, so it gives the agent a
// second (a benchmark, not a test: the phases' figures show the new budget).
func (e *budgetsEnv) reload(hostBudget int, flooder string) error {
	if err := e.agent.writeConfig(socketMode, budgetsConfig(hostBudget, flooder)); err != nil {
		return err
	}
	e.agent.signal(syscall.SIGHUP)
	time.Sleep(time.Second)
	return nil
}

// memberRequests is the unary requests the members have started, the
// agent's own probes (Maintenance/Status) left out.
func (e *budgetsEnv) memberRequests() (float64, error) {
	var n float64
	for _, ep := range e.cluster.Endpoints() {
		m, err := etcdtest.UnaryRPCs(ep)
		if err != nil {
			return 0, err
		}
		for method, v := range m {
			if method != "Status" {
				n += v
			}
		}
	}
	return n, nil
}

func runBudgets(duration time.Duration, rounds int) int {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "bench -budgets: needs root, to run the second local user (nobody) as a child")
		return 2
	}
	e, err := setupBudgets()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench -budgets:", err)
		return 1
	}
	defer e.close()
	fmt.Println("# budgets (go run ./bench -budgets): 3 members, one agent, uid 0 floods, uid 65534 trickles 20 gets/s")
	fmt.Println()

	alone, err := e.trickle(duration)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Printf("trickler alone: %d gets, %d errors, median %.1f ms, p99 %.1f ms\n\n", alone.N, alone.Errors, alone.P50, alone.P99)
	fmt.Println("| isolation round | members' requests/s (budget 200) | flooder gets/s | flooder 429/s | trickler errors | trickler median | trickler p99 |")
	fmt.Println("|---|---:|---:|---:|---:|---:|---:|")
	for i := range rounds {
		if err := e.isolation(i+1, duration); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	fmt.Println()
	if err := e.queue(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := e.rate(duration); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := e.streams(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

func setupBudgets() (*budgetsEnv, error) {
	dir, err := os.MkdirTemp("", "endpointd-budgets-")
	if err != nil {
		return nil, err
	}
	os.Chmod(dir, 0o755) // nobody reaches the socket through it
	e := &budgetsEnv{dir: dir}
	// go run builds into a directory only its user may enter.
	e.self = filepath.Join(dir, "bench")
	if bin, err := os.ReadFile(os.Args[0]); err != nil {
		return nil, err
	} else if err := os.WriteFile(e.self, bin, 0o755); err != nil {
		return nil, err
	}
	if e.cluster, err = etcdtest.StartProc(filepath.Join(dir, "etcd"), 3); err != nil {
		return nil, err
	}
	if e.agent, err = newAgentProc(dir, e.cluster.Endpoints(), socketMode, budgetsConfig(200, ""), os.Stderr); err != nil {
		return nil, err
	}
	if err := e.agent.start(time.Minute); err != nil {
		return nil, err
	}
	e.hc = e.agent.http.hc
	req, _ := http.NewRequest(http.MethodPut, "http://endpointd/v1/kv/bench/k", strings.NewReader("0123456789abcdef"))
	resp, err := e.hc.Do(req)
	if err != nil {
		return nil, err
	}
	resp.Body.Close()
	return e, nil
}

func (e *budgetsEnv) close() {
	e.agent.stop()
	if e.cluster != nil {
		e.cluster.KillAll()
	}
	os.RemoveAll(e.dir)
}

// trickleStats is what the trickler child reports.
type trickleStats struct {
	N, Errors int
	P50, P99  float64 // milliseconds
	FirstErr  string
}

// trickle runs the trickler child as nobody for d.
func (e *budgetsEnv) trickle(d time.Duration) (*trickleStats, error) {
	cmd := exec.Command(e.self, "-role", "trickle", "-listen", e.agent.sock, "-cell", d.String())
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("trickler: %w", err)
	}
	var st trickleStats
	return &st, json.Unmarshal(out, &st)
}

// runTrickle is the trickler child: 20 linearizable gets a second on sock
// for d, then its stats as JSON on stdout.
func runTrickle(sock string, d time.Duration) int {
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var dl net.Dialer
		return dl.DialContext(ctx, "unix", sock)
	}}}
	var st trickleStats
	var lat []float64
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for end := time.Now().Add(d); time.Now().Before(end); <-tick.C {
		start := time.Now()
		resp, err := hc.Get("http://endpointd/v1/kv/bench/k")
		st.N++
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				err = fmt.Errorf("status %d", resp.StatusCode)
			}
		}
		if err != nil {
			st.Errors++
			if st.FirstErr == "" {
				st.FirstErr = err.Error()
			}
			continue
		}
		lat = append(lat, float64(time.Since(start).Microseconds())/1000)
	}
	st.P50, st.P99 = percentile(lat, 0.5), percentile(lat, 0.99)
	json.NewEncoder(os.Stdout).Encode(st)
	return 0
}

func percentile(v []float64, p float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[min(len(s)-1, int(p*float64(len(s))))]
}

// answers counts the flooder's answers by kind.
type answers struct{ ok, throttled, withRetryAfter atomic.Int64 }

// flood reads bench/k once as the flooder and counts the answer in a.
func (e *budgetsEnv) flood(a *answers) {
	resp, err := e.hc.Get("http://endpointd/v1/kv/bench/k")
	if err != nil {
		return
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	switch resp.StatusCode {
	case 200:
		a.ok.Add(1)
	case 429:
		a.throttled.Add(1)
		if resp.Header.Get("Retry-After") != "" {
			a.withRetryAfter.Add(1)
		}
	}
}

// isolation: the flood beside the trickle.
func (e *budgetsEnv) isolation(round int, d time.Duration) error {
	var a answers
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() {
			for ctx.Err() == nil {
				e.flood(&a)
			}
		})
	}
	time.Sleep(time.Second) // the flood under way
	before, err := e.memberRequests()
	if err != nil {
		stop()
		return err
	}
	ok0, th0, start := a.ok.Load(), a.throttled.Load(), time.Now()
	st, terr := e.trickle(d)
	elapsed := time.Since(start).Seconds()
	after, err := e.memberRequests()
	okN, thN := a.ok.Load()-ok0, a.throttled.Load()-th0
	stop()
	wg.Wait()
	if terr != nil {
		return terr
	}
	if err != nil {
		return err
	}
	fmt.Printf("| %d | %.0f | %.0f | %.0f | %d of %d | %.1f ms | %.1f ms |\n", round, (after-before)/elapsed,
		float64(okN)/elapsed, float64(thN)/elapsed, st.Errors, st.N, st.P50, st.P99)
	if st.FirstErr != "" {
		fmt.Printf("|   | trickler's first error: %s |\n", st.FirstErr)
	}
	return nil
}

// queue: 48 concurrent TTL puts against a budget of 2/s.
func (e *budgetsEnv) queue() error {
	if err := e.reload(2, ""); err != nil {
		return err
	}
	time.Sleep(time.Second) // a full bucket
	type result struct {
		code       int
		retryAfter string
		took       time.Duration
	}
	results := make([]result, 48)
	var wg sync.WaitGroup
	for i := range results {
		wg.Go(func() {
			start := time.Now()
			req, _ := http.NewRequest(http.MethodPut, fmt.Sprintf("http://endpointd/v1/kv/queue/%d?ttl=30", i), strings.NewReader("v"))
			resp, err := e.hc.Do(req)
			results[i].took = time.Since(start)
			if err != nil {
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			results[i].code, results[i].retryAfter = resp.StatusCode, resp.Header.Get("Retry-After")
		})
	}
	wg.Wait()
	var sent, refused, withRetry, other int
	var longest, longestSent time.Duration
	for _, r := range results {
		longest = max(longest, r.took)
		switch r.code {
		case 200:
			sent++
			longestSent = max(longestSent, r.took)
		case 429:
			refused++
			if r.retryAfter != "" {
				withRetry++
			}
		default:
			other++
		}
	}
	fmt.Printf("queue (budget 2/s, request_timeout 5s, 48 concurrent TTL puts): %d sent (longest %v), %d refused with 429 (%d with Retry-After), %d other; longest answer %v\n\n",
		sent, longestSent.Round(time.Millisecond), refused, withRetry, other, longest.Round(time.Millisecond))
	return e.reload(0, "")
}

// rate: a rule with rate 50, the flooder pacing 500 requests/s.
func (e *budgetsEnv) rate(d time.Duration) error {
	if err := e.reload(0, ", rate: 50"); err != nil {
		return err
	}
	time.Sleep(time.Second)
	var a answers
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		var inner sync.WaitGroup
		for ctx.Err() == nil {
			<-tick.C
			inner.Go(func() { e.flood(&a) })
		}
		inner.Wait()
	})
	start := time.Now()
	st, err := e.trickle(d)
	elapsed := time.Since(start).Seconds()
	stop()
	wg.Wait()
	if err != nil {
		return err
	}
	fmt.Printf("rate (rule rate 50, flooder paced at 500/s for %.0fs): %.1f/s through, %.0f/s refused with 429 (%d of %d with Retry-After); trickler (another rule): %d errors of %d, median %.1f ms\n\n",
		elapsed, float64(a.ok.Load())/elapsed, float64(a.throttled.Load())/elapsed, a.withRetryAfter.Load(), a.throttled.Load(), st.Errors, st.N, st.P50)
	return nil
}

// streams: max_streams 5.
func (e *budgetsEnv) streams() error {
	if err := e.reload(0, ", max_streams: 5"); err != nil {
		return err
	}
	open := func() (*http.Response, context.CancelFunc, error) {
		ctx, cancel := context.WithCancel(context.Background())
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://endpointd/v1/watch/bench/k", nil)
		resp, err := e.hc.Do(req)
		if err != nil {
			cancel()
			return nil, nil, err
		}
		return resp, cancel, nil
	}
	var cancels []context.CancelFunc
	var codes []int
	for range 6 {
		resp, cancel, err := open()
		if err != nil {
			return err
		}
		codes = append(codes, resp.StatusCode)
		if resp.StatusCode == 200 {
			bufio.NewReader(resp.Body) // left open
			cancels = append(cancels, cancel)
		} else {
			resp.Body.Close()
			cancel()
		}
	}
	start := time.Now()
	sixth := codes[5]
	cancels[0]()
	var next int
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		resp, cancel, err := open()
		if err != nil {
			return err
		}
		next = resp.StatusCode
		if next == 200 {
			cancels = append(cancels, cancel)
			break
		}
		resp.Body.Close()
		cancel()
	}
	fmt.Printf("streams (max_streams 5): watches 1-5 %v, the sixth %d; after closing one the next %d (within %v)\n",
		codes[:5], sixth, next, time.Since(start).Round(time.Millisecond))
	for _, c := range cancels {
		c()
	}
	return nil
}

func init() {
	flag.BoolVar(&budgetsMode, "budgets", false, "budgets mode: the targets of API.md \"Budgets\" (needs root; see budgets.go)")
}

var budgetsMode bool
