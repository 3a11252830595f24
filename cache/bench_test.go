package cache

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
)

// The persisted copy's cost at the sizes docs/reliability.md quotes: one
// write of a whole copy (encode, fsync, rename, fsync the directory) and one
// load (read, checksum, decode, index) — warm, in this process, and cold, in
// a process just started as the agent meets it. Values are 1 KiB.
//
//	go test ./cache -run '^$' -bench 'Persist|Load' -benchtime 5x
func BenchmarkPersist(b *testing.B) {
	for _, n := range []int{10_000, 100_000} {
		b.Run(fmt.Sprintf("keys=%d", n), func(b *testing.B) {
			s := benchSnapshot(n)
			path := filepath.Join(b.TempDir(), fileName(s.prefix))
			b.SetBytes(int64(n) * 1024)
			b.ResetTimer()
			for b.Loop() {
				if err := writeFile(path, s); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkLoad(b *testing.B) {
	for _, n := range []int{10_000, 100_000} {
		b.Run(fmt.Sprintf("keys=%d", n), func(b *testing.B) {
			s := benchSnapshot(n)
			dir := b.TempDir()
			if err := writeFile(filepath.Join(dir, fileName(s.prefix)), s); err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(n) * 1024)
			b.ResetTimer()
			for b.Loop() {
				c := New(nil, Options{Prefixes: []string{s.prefix}, MaxStaleness: time.Hour, Dir: dir, PersistInterval: time.Second})
				c.Load()
				if st := c.Status(); !st[0].Present || st[0].Keys != n {
					b.Fatalf("loaded %+v", st[0])
				}
			}
		})
	}
}

// BenchmarkColdLoad times Load in a process of its own, run for each load
// (this test binary again, TestColdLoadChild): a heap still small, memory
// never touched — what an agent starting with a large copy pays, which a
// warm loop (BenchmarkLoad) hides.
func BenchmarkColdLoad(b *testing.B) {
	for _, n := range []int{10_000, 100_000} {
		b.Run(fmt.Sprintf("keys=%d", n), func(b *testing.B) {
			s := benchSnapshot(n)
			dir := b.TempDir()
			if err := writeFile(filepath.Join(dir, fileName(s.prefix)), s); err != nil {
				b.Fatal(err)
			}
			var load time.Duration
			for b.Loop() {
				cmd := exec.Command(os.Args[0], "-test.run=^TestColdLoadChild$", "-test.v")
				cmd.Env = append(os.Environ(), "ENDPOINTD_COLD_LOAD_DIR="+dir, "ENDPOINTD_COLD_LOAD_KEYS="+strconv.Itoa(n))
				out, err := cmd.CombinedOutput()
				_, after, found := strings.Cut(string(out), "cold load ns: ")
				if err != nil || !found {
					b.Fatalf("child: %v\n%s", err, out)
				}
				ns, err := strconv.ParseInt(strings.Fields(after)[0], 10, 64)
				if err != nil {
					b.Fatal(err)
				}
				load += time.Duration(ns)
			}
			b.ReportMetric(float64(load.Milliseconds())/float64(b.N), "load-ms/op")
		})
	}
}

// TestColdLoadChild is BenchmarkColdLoad's child process, and skips
// otherwise.
func TestColdLoadChild(t *testing.T) {
	dir := os.Getenv("ENDPOINTD_COLD_LOAD_DIR")
	if dir == "" {
		t.Skip("the child process of BenchmarkColdLoad")
	}
	want, _ := strconv.Atoi(os.Getenv("ENDPOINTD_COLD_LOAD_KEYS"))
	start := time.Now()
	c := New(nil, Options{Prefixes: []string{"bench/"}, MaxStaleness: time.Hour, Dir: dir, PersistInterval: time.Second})
	c.Load()
	took := time.Since(start)
	if st := c.Status(); !st[0].Present || st[0].Keys != want {
		t.Fatalf("loaded %+v, want %d keys", st[0], want)
	}
	t.Logf("cold load ns: %d", took.Nanoseconds())
}

func benchSnapshot(n int) *snapshot {
	s := &snapshot{prefix: "bench/", rev: int64(n) + 10, confirmed: time.Now()}
	value := bytes.Repeat([]byte("v"), 1024)
	for i := range n {
		s.kvs = append(s.kvs, &mvccpb.KeyValue{Key: fmt.Appendf(nil, "bench/%08d", i), Value: value,
			CreateRevision: int64(i + 2), ModRevision: int64(i + 2), Version: 1})
	}
	return s
}
