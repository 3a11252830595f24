package main

// Render mode (go run ./bench -render): what `endpointd render` costs, on a
// three-member cluster in processes of its own, the agent and the renderer
// each in a process of its own (this binary, re-executed):
//
//	watches    20 templates over one 1,000-key prefix: the etcd watchers
//	           the members hold for them (etcd_debugging_mvcc_watcher_total
//	           before and after the renderer starts); one is the target.
//	renders    one key of the prefix changed as fast as the renders keep up,
//	           for the cell's duration: renders per second of the 20
//	           templates together (each a whole 1,000-key listing at one
//	           revision, compared with its destination and written), and the
//	           agent's and the renderer's CPU per render (/proc/PID/stat).

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"udp_iaasd/client"
	"udp_iaasd/internal/etcdtest"
	"udp_iaasd/render"
)

var renderMode bool

func init() {
	flag.BoolVar(&renderMode, "render", false, "render mode: what endpointd render costs (see render.go)")
}

// runRenderChild is the renderer child: render.Run on the render file until
// SIGTERM, logging each write at info on stderr (the parent counts them).
func runRenderChild(cfgPath string) int {
	set, err := render.Load(cfgPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 78
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	r := render.New(render.Options{Client: client.New(set.Config().Socket, client.Options{}),
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))})
	if err := r.Run(ctx, set, nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

func runRenderBench(cell time.Duration) int {
	if err := renderBench(cell); err != nil {
		fmt.Fprintln(os.Stderr, "bench -render:", err)
		return 1
	}
	return 0
}

func renderBench(cell time.Duration) error {
	const templates, keys = 20, 1000
	dir, cluster, done, err := benchCluster("render-bench")
	if err != nil {
		return err
	}
	defer done()
	agent, err := newAgentProc(dir, cluster.Endpoints(), "", "", os.Stderr)
	if err != nil {
		return err
	}
	if err := agent.start(time.Minute); err != nil {
		return err
	}
	defer agent.stop()
	sock, hc := agent.sock, agent.http.hc
	put := func(key, value string) error {
		req, _ := http.NewRequest(http.MethodPut, "http://endpointd/v1/kv/"+key, strings.NewReader(value))
		resp, err := hc.Do(req)
		if err != nil {
			return err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("put %s: %d", key, resp.StatusCode)
		}
		return nil
	}
	value := strings.Repeat("v", 100)
	for i := range keys {
		if err := put(fmt.Sprintf("bench/r/%04d", i), value); err != nil {
			return err
		}
	}
	tmpl := filepath.Join(dir, "list.tmpl")
	os.WriteFile(tmpl, []byte("{{ range ls \"bench/r/\" }}{{ .Key }}={{ .Value }}\n{{ end }}"), 0o644)
	var rf strings.Builder
	fmt.Fprintf(&rf, "socket: %s\nstate_dir: %s\ntemplates:\n", sock, filepath.Join(dir, "state"))
	for i := range templates {
		fmt.Fprintf(&rf, "  - {source: %s, destination: %s}\n", tmpl, filepath.Join(dir, fmt.Sprintf("out-%02d.conf", i)))
	}
	rfPath := filepath.Join(dir, "render.yaml")
	os.WriteFile(rfPath, []byte(rf.String()), 0o644)

	watchers := func() float64 {
		var n float64
		for _, ep := range cluster.Endpoints() {
			v, _ := etcdtest.Gauge(ep, "etcd_debugging_mvcc_watcher_total")
			n += v
		}
		return n
	}
	before := watchers()
	rcmd := exec.Command(os.Args[0], "-role", "render", "-config", rfPath)
	stderr, err := rcmd.StderrPipe()
	if err != nil {
		return err
	}
	if err := rcmd.Start(); err != nil {
		return err
	}
	defer func() { rcmd.Process.Signal(syscall.SIGTERM); rcmd.Wait() }()
	var written atomic.Int64
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "destination written") {
				written.Add(1)
			} else if strings.Contains(sc.Text(), "level=ERROR") {
				fmt.Fprintln(os.Stderr, sc.Text())
			}
		}
	}()
	for deadline := time.Now().Add(time.Minute); written.Load() < templates; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			return fmt.Errorf("only %d of %d templates rendered", written.Load(), templates)
		}
	}
	time.Sleep(time.Second) // every watch set up
	after := watchers()

	fmt.Printf("# render (go run ./bench -render): 3 members, one agent, one renderer; %d templates over one %d-key prefix (100-byte values)\n\n",
		templates, keys)
	fmt.Printf("etcd watchers for the %d templates: %.0f (members' etcd_debugging_mvcc_watcher_total, %.0f before the renderer, %.0f after)\n\n",
		templates, after-before, before, after)

	// Changes as fast as the renders keep up: the next change once every
	// template has written the last one.
	agentCPU0, renderCPU0, w0, start := cpuTime(agent.pid()), cpuTime(rcmd.Process.Pid), written.Load(), time.Now()
	changes := 0
	for time.Since(start) < cell {
		changes++
		target := w0 + int64(changes*templates)
		if err := put("bench/r/0500", fmt.Sprintf("%s-%d", value, changes)); err != nil {
			return err
		}
		for deadline := time.Now().Add(30 * time.Second); written.Load() < target; time.Sleep(100 * time.Microsecond) {
			if time.Now().After(deadline) {
				return fmt.Errorf("change %d: %d of %d renders", changes, written.Load()-w0, changes*templates)
			}
		}
	}
	elapsed := time.Since(start)
	renders := written.Load() - w0
	agentCPU, renderCPU := cpuTime(agent.pid())-agentCPU0, cpuTime(rcmd.Process.Pid)-renderCPU0
	fmt.Printf("| changes | renders | renders/s | change to last file written | agent CPU per render | renderer CPU per render |\n")
	fmt.Printf("|---:|---:|---:|---:|---:|---:|\n")
	fmt.Printf("| %d | %d | %.0f | %.1f ms | %.0f µs | %.0f µs |\n", changes, renders, float64(renders)/elapsed.Seconds(),
		float64(elapsed.Microseconds())/float64(changes)/1000,
		float64(agentCPU.Microseconds())/float64(renders), float64(renderCPU.Microseconds())/float64(renders))
	return nil
}
