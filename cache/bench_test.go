package cache

import (
	"bytes"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
)

// The persisted copy's cost at the sizes docs/reliability.md quotes: one
// write of a whole copy (encode, fsync, rename, fsync the directory) and one
// load at start (read, checksum, decode, index). Values are 1 KiB.
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

func benchSnapshot(n int) *snapshot {
	s := &snapshot{prefix: "bench/", rev: int64(n) + 10, confirmed: time.Now()}
	value := bytes.Repeat([]byte("v"), 1024)
	for i := range n {
		s.kvs = append(s.kvs, &mvccpb.KeyValue{Key: fmt.Appendf(nil, "bench/%08d", i), Value: value,
			CreateRevision: int64(i + 2), ModRevision: int64(i + 2), Version: 1})
	}
	return s
}
