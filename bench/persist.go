package main

// Persist mode (go run ./bench -persist): what persisting the cache's
// copies costs an agent under a steady write rate. Two agent processes
// follow the same cached prefix of one three-member cluster, one with
// cache.dir set (persist_interval 1s, the default) and one with copies in
// memory only; a writer changes keys of the prefix at a steady rate; each
// agent's CPU over the window (/proc/PID/stat) is compared. The prefix is
// 1,000 and then 10,000 keys of 1 KiB.

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

var persistMode bool

func init() {
	flag.BoolVar(&persistMode, "persist", false, "persist mode: agent CPU for persisting cached copies under a steady write rate (see persist.go)")
}

func runPersistBench(window time.Duration) int {
	if err := persistBench(window); err != nil {
		fmt.Fprintln(os.Stderr, "bench -persist:", err)
		return 1
	}
	return 0
}

func persistBench(window time.Duration) error {
	dir, cluster, done, err := benchCluster("persist-bench")
	if err != nil {
		return err
	}
	defer done()
	cli, err := clientv3.New(clientv3.Config{Endpoints: cluster.Endpoints(), Logger: zap.NewNop()})
	if err != nil {
		return err
	}
	defer cli.Close()
	const rate = 20 // writes per second
	fmt.Printf("# persist (go run ./bench -persist): 3 members, two agents on one cached prefix, %d writes/s for %v\n\n", rate, window)
	fmt.Println("| prefix | agent CPU, copies persisted | agent CPU, in memory only | persistence costs | copy writes |")
	fmt.Println("|---|---:|---:|---:|---:|")
	value := strings.Repeat("v", 1024)
	for _, keys := range []int{1000, 10000} {
		prefix := fmt.Sprintf("p%d/", keys)
		for i := 0; i < keys; i += 64 {
			var ops []clientv3.Op
			for j := i; j < min(i+64, keys); j++ {
				ops = append(ops, clientv3.OpPut(fmt.Sprintf("%s%06d", prefix, j), value))
			}
			if _, err := cli.Txn(context.Background()).Then(ops...).Commit(); err != nil {
				return err
			}
		}
		var agents []*agentProc
		for _, name := range []string{"persisted", "memory"} {
			adir := filepath.Join(dir, fmt.Sprintf("%s-%d", name, keys))
			cacheDir := `""`
			if name == "persisted" {
				cacheDir = filepath.Join(adir, "cache")
			}
			a, err := newAgentProc(adir, cluster.Endpoints(), "", fmt.Sprintf("cache: {prefixes: [%s], dir: %s}\n", prefix, cacheDir), os.Stderr)
			if err != nil {
				return err
			}
			if err := a.start(time.Minute); err != nil {
				return err
			}
			defer a.stop()
			agents = append(agents, a)
		}
		time.Sleep(3 * time.Second) // listed, first copy written, settled
		cpu0 := []time.Duration{cpuTime(agents[0].pid()), cpuTime(agents[1].pid())}
		copyFile := filepath.Join(dir, fmt.Sprintf("persisted-%d", keys), "cache", prefix[:len(prefix)-1]+"%2F.copy")
		writes, lastMod := 0, time.Time{}
		tick := time.NewTicker(time.Second / rate)
		start := time.Now()
		for i := 0; time.Since(start) < window; i++ {
			<-tick.C
			if _, err := cli.Put(context.Background(), fmt.Sprintf("%s%06d", prefix, i%keys), fmt.Sprintf("%s-%d", value, i)); err != nil {
				tick.Stop()
				return err
			}
			if st, err := os.Stat(copyFile); err == nil && st.ModTime() != lastMod {
				lastMod = st.ModTime()
				writes++
			}
		}
		tick.Stop()
		elapsed := time.Since(start).Seconds()
		p := float64((cpuTime(agents[0].pid()) - cpu0[0]).Milliseconds()) / elapsed
		m := float64((cpuTime(agents[1].pid()) - cpu0[1]).Milliseconds()) / elapsed
		fmt.Printf("| %d keys × 1 KiB | %.1f ms/s | %.1f ms/s | %.1f ms/s | %d in %.0fs |\n", keys, p, m, p-m, writes, elapsed)
	}
	return nil
}
