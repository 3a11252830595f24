package cache

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.etcd.io/etcd/api/v3/mvccpb"

	"udp_iaasd/etcd"
	"udp_iaasd/internal/etcdtest"
	"udp_iaasd/internal/syncbuf"
)

// persisted starts a cache of prefixes over cluster that persists in dir,
// and returns it with a stop that waits for its final write.
func persisted(t *testing.T, cluster *etcdtest.Cluster, dir string, logs *syncbuf.Buffer, prefixes ...string) (*Cache, *prometheus.Registry, func()) {
	t.Helper()
	ec, err := etcd.New(etcd.Config{Endpoints: cluster.Endpoints(), StatusProbeInterval: time.Millisecond,
		RequestTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	log := etcdtest.Logger(t)
	if logs != nil {
		log = slogTo(logs)
	}
	c := New(ec, Options{Prefixes: prefixes, MaxStaleness: testStaleness, Dir: dir, PersistInterval: 20 * time.Millisecond,
		Registerer: reg, Logger: log})
	c.Load()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			cancel()
			<-done
			ec.Close()
		}
	}
	t.Cleanup(stop)
	return c, reg, stop
}

func rangeRPCs(cluster *etcdtest.Cluster) int64 {
	var n int64
	for _, m := range cluster.Members {
		n += m.UnaryRPCs()["/etcdserverpb.KV/Range"]
	}
	return n
}

// The drill, on a real cluster: a persisted copy answers stale reads while
// every member is down, before and after the agent's cache restarts; fresh
// reads do not use it; when the members return the copy is confirmed again
// by resuming its watch — no Range reaches etcd — and changes made meanwhile
// by others appear, and revisions never go back.
func TestCopySurvivesOutageAndRestart(t *testing.T) {
	cluster := etcdtest.New(t, 1)
	direct := cluster.Client(t)
	ctx := context.Background()
	for i := 1; i <= 3; i++ {
		if _, err := direct.Put(ctx, fmt.Sprintf("cfg/k%d", i), fmt.Sprint("v", i)); err != nil {
			t.Fatal(err)
		}
	}
	dir := filepath.Join(t.TempDir(), "cache")
	c1, _, stop1 := persisted(t, cluster, dir, nil, "cfg/")
	etcdtest.Eventually(t, 10*time.Second, "synced", c1.Synced)
	_, info1, _ := c1.Get("cfg/k1", Fresh)
	etcdtest.Eventually(t, 10*time.Second, "the copy persisted", func() bool {
		return c1.Status()[0].PersistedRevision >= info1.Rev
	})
	if st, err := os.Stat(dir); err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("cache.dir: %v, %v; want mode 0700", st, err)
	}
	file := filepath.Join(dir, fileName("cfg/"))
	if st, err := os.Stat(file); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("copy %s: %v, %v; want mode 0600", file, st, err)
	}

	cluster.StopAll()
	// In memory, during the outage: fresh reads stop, stale ones answer.
	etcdtest.Eventually(t, 10*time.Second, "fresh reads to stop", func() bool { _, _, ok := c1.Get("cfg/k1", Fresh); return !ok })
	kv, info, ok := c1.Get("cfg/k1", Any)
	if !ok || string(kv.Value) != "v1" || info.Rev != info1.Rev {
		t.Fatalf("stale read during the outage: %v %+v %v", kv, info, ok)
	}
	stop1()

	// A restart inside the outage: the copy is loaded, unconfirmed.
	c2, _, stop2 := persisted(t, cluster, dir, nil, "cfg/")
	kvs, count, _, info2, ok := c2.List("cfg/", 0, Any)
	if !ok || count != 3 || string(kvs[2].Value) != "v3" || info2.Rev != info1.Rev || !info2.Stale {
		t.Fatalf("stale list after the restart: %d keys, %+v, ok %v", count, info2, ok)
	}
	if _, _, ok := c2.Get("cfg/k1", Fresh); ok {
		t.Fatal("a copy loaded from disk answered a fresh read before its watch caught up")
	}
	if info2.Age < info1.Age {
		t.Fatalf("the loaded copy is younger (%v) than it was (%v)", info2.Age, info1.Age)
	}

	before := rangeRPCs(cluster)
	if err := cluster.RestartAll(); err != nil {
		t.Fatal(err)
	}
	etcdtest.Eventually(t, 20*time.Second, "confirmed again", c2.Synced)
	put, err := direct.Put(ctx, "cfg/k4", "new")
	if err != nil {
		t.Fatal(err)
	}
	etcdtest.Eventually(t, 10*time.Second, "a change after the return to show", func() bool {
		kv, info, ok := c2.Get("cfg/k4", Fresh)
		return ok && kv != nil && string(kv.Value) == "new" && info.Rev >= put.Header.Revision
	})
	if n := rangeRPCs(cluster) - before; n != 0 {
		t.Fatalf("the cache sent %d Range requests to resume; want 0 (resume, not relist)", n)
	}
	stop2()
	// The final write at a clean stop holds the change.
	s, err := readCopy(file)
	if err != nil || len(s.kvs) != 4 || s.rev < put.Header.Revision {
		t.Fatalf("copy after a clean stop: %v, %v", s, err)
	}
}

// A copy whose revision etcd has compacted is listed again, not resumed.
func TestCompactedCopyIsRelisted(t *testing.T) {
	cluster := etcdtest.New(t, 1)
	direct := cluster.Client(t)
	ctx := context.Background()
	direct.Put(ctx, "cfg/a", "1")
	dir := t.TempDir()
	c1, _, stop1 := persisted(t, cluster, dir, nil, "cfg/")
	etcdtest.Eventually(t, 10*time.Second, "synced", c1.Synced)
	etcdtest.Eventually(t, 10*time.Second, "persisted", func() bool { return c1.Status()[0].PersistedRevision > 0 })
	stop1()
	var last int64
	for i := range 5 {
		r, _ := direct.Put(ctx, "cfg/b", fmt.Sprint(i))
		last = r.Header.Revision
	}
	if _, err := direct.Compact(ctx, last); err != nil {
		t.Fatal(err)
	}
	before := rangeRPCs(cluster)
	c2, _, _ := persisted(t, cluster, dir, nil, "cfg/")
	etcdtest.Eventually(t, 10*time.Second, "relisted", func() bool {
		kv, _, ok := c2.Get("cfg/b", Fresh)
		return ok && kv != nil && string(kv.Value) == "4"
	})
	if rangeRPCs(cluster) == before {
		t.Fatal("a compacted copy came back without a list")
	}
}

// Every kind of bad file is logged, removed, and never answers; the files of
// prefixes no longer cached and interrupted writes are removed; the good
// copy beside them loads.
func TestBadCopiesAreDiscarded(t *testing.T) {
	dir := t.TempDir()
	good := &snapshot{prefix: "good/", rev: 7, confirmed: time.Now().Add(-time.Hour),
		kvs: []*mvccpb.KeyValue{{Key: []byte("good/a"), Value: []byte("1"), ModRevision: 5, CreateRevision: 5, Version: 1}}}
	var buf bytes.Buffer
	if err := good.encode(&buf); err != nil {
		t.Fatal(err)
	}
	valid := buf.Bytes()
	encode := func(s *snapshot) []byte {
		var b bytes.Buffer
		if err := s.encode(&b); err != nil {
			t.Fatal(err)
		}
		return b.Bytes()
	}
	flipped := bytes.Clone(valid)
	flipped[len(flipped)/2] ^= 0x10
	foreign := bytes.Clone(valid)
	foreign[len(magic)+3] = 9 // format version 9, checksum recomputed below
	foreign = append(foreign[:len(foreign)-4], crcOf(foreign[:len(foreign)-4])...)
	bad := map[string][]byte{
		"truncated/":  valid[:len(valid)-9],
		"flipped/":    flipped,
		"empty/":      nil,
		"foreign/":    foreign,
		"garbage/":    []byte("{\"not\": \"a copy\"}\n"),
		"misplaced/":  encode(&snapshot{prefix: "other/", rev: 3}),
		"outoforder/": encode(&snapshot{prefix: "outoforder/", rev: 9, kvs: []*mvccpb.KeyValue{{Key: []byte("outoforder/b")}, {Key: []byte("outoforder/a")}}}),
	}
	write := func(name string, b []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	prefixes := []string{"good/"}
	for p, b := range bad {
		write(fileName(p), b)
		prefixes = append(prefixes, p)
	}
	write(fileName("good/"), valid)
	write(fileName("gone/"), encode(&snapshot{prefix: "gone/", rev: 3}))
	write(fileName("good/")+".tmp-123", valid[:10])
	write("README", []byte("not ours"))

	logs := &syncbuf.Buffer{}
	reg := prometheus.NewRegistry()
	c := New(nil, Options{Prefixes: prefixes, MaxStaleness: time.Second, Dir: dir, PersistInterval: time.Second,
		Registerer: reg, Logger: slogTo(logs)})
	c.Load()

	kv, info, ok := c.Get("good/a", Any)
	if !ok || string(kv.Value) != "1" || info.Rev != 7 || !info.Stale || info.Age < 59*time.Minute {
		t.Fatalf("good copy: %v %+v %v", kv, info, ok)
	}
	for p := range bad {
		if _, _, ok := c.Get(p+"x", Any); ok {
			t.Errorf("%s: a bad copy answered", p)
		}
		if _, err := os.Stat(filepath.Join(dir, fileName(p))); !os.IsNotExist(err) {
			t.Errorf("%s: the bad file is still there (%v)", p, err)
		}
		if !strings.Contains(logs.String(), fmt.Sprintf("prefix=%s", p)) {
			t.Errorf("%s: not logged", p)
		}
	}
	for _, name := range []string{fileName("gone/"), fileName("good/") + ".tmp-123"} {
		if _, err := os.Stat(filepath.Join(dir, name)); !os.IsNotExist(err) {
			t.Errorf("%s is still there (%v)", name, err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "README")); err != nil {
		t.Errorf("a file that is not a copy was removed: %v", err)
	}
	if n := testutil.ToFloat64(c.metrics.loadErrors); n != float64(len(bad)) {
		t.Errorf("endpointd_cache_load_errors_total = %v, want %d", n, len(bad))
	}
	if !strings.Contains(logs.String(), "level=WARN") {
		t.Error("nothing logged at warn")
	}
}

// An unwritable cache.dir costs nothing but the copies on disk: the cache
// answers, the failures are counted and logged once.
func TestUnwritableDir(t *testing.T) {
	cluster := etcdtest.New(t, 1)
	// A directory under a regular file cannot be made, even by root.
	parent := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(parent, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	logs := &syncbuf.Buffer{}
	c, _, _ := persisted(t, cluster, filepath.Join(parent, "cache"), logs, "cfg/")
	etcdtest.Eventually(t, 10*time.Second, "synced", c.Synced)
	direct := cluster.Client(t)
	for i := range 3 {
		direct.Put(context.Background(), "cfg/x", fmt.Sprint(i))
	}
	etcdtest.Eventually(t, 10*time.Second, "persist errors counted", func() bool {
		return testutil.ToFloat64(c.metrics.persistErrors) >= 3
	})
	if _, _, ok := c.Get("cfg/x", Fresh); !ok {
		t.Fatal("reads suffer from an unwritable cache.dir")
	}
	if n := strings.Count(logs.String(), "msg=\"cache: cannot persist"); n != 1 {
		t.Fatalf("a failing copy was logged %d times, want once:\n%s", n, logs)
	}
}

// A write that fails part way (a full disk) leaves the previous copy as it
// was. /dev/full fails every write with ENOSPC; the rename never happens.
func TestFailedWriteKeepsPreviousCopy(t *testing.T) {
	dir := t.TempDir()
	old := &snapshot{prefix: "p/", rev: 4, confirmed: time.Now(), kvs: []*mvccpb.KeyValue{{Key: []byte("p/a"), Value: []byte("old"), ModRevision: 4}}}
	path := filepath.Join(dir, fileName("p/"))
	if err := writeFile(path, old); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat("/dev/full"); err != nil {
		t.Skip("no /dev/full")
	}
	f, err := os.OpenFile("/dev/full", os.O_WRONLY, 0)
	if err != nil {
		t.Skip(err)
	}
	defer f.Close()
	big := &snapshot{prefix: "p/", rev: 9, kvs: []*mvccpb.KeyValue{{Key: []byte("p/a"), Value: bytes.Repeat([]byte("x"), 4<<20), ModRevision: 9}}}
	if err := big.encode(f); err == nil {
		t.Fatal("writing to /dev/full succeeded")
	}
	s, err := readCopy(path)
	if err != nil || s.rev != 4 || string(s.kvs[0].Value) != "old" {
		t.Fatalf("previous copy: %+v, %v", s, err)
	}
}

func TestRoundTrip(t *testing.T) {
	s := &snapshot{prefix: "a/", rev: 1 << 40, confirmed: time.Unix(1700000000, 123456789)}
	for i := range 1000 {
		s.kvs = append(s.kvs, &mvccpb.KeyValue{Key: fmt.Appendf(nil, "a/%04d", i), Value: bytes.Repeat([]byte{byte(i)}, i),
			CreateRevision: int64(i + 1), ModRevision: int64(i + 2), Version: 3, Lease: int64(i)})
	}
	var b bytes.Buffer
	if err := s.encode(&b); err != nil {
		t.Fatal(err)
	}
	got, err := decode(b.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if got.prefix != s.prefix || got.rev != s.rev || !got.confirmed.Equal(s.confirmed) || len(got.kvs) != len(s.kvs) {
		t.Fatalf("decoded %q %d %v %d", got.prefix, got.rev, got.confirmed, len(got.kvs))
	}
	for i := range s.kvs {
		a, b := s.kvs[i], got.kvs[i]
		if !bytes.Equal(a.Key, b.Key) || !bytes.Equal(a.Value, b.Value) || a.ModRevision != b.ModRevision ||
			a.CreateRevision != b.CreateRevision || a.Version != b.Version || a.Lease != b.Lease {
			t.Fatalf("entry %d differs", i)
		}
	}
	for _, p := range []string{"cfg/", "a.b/", "..", "", "x y/\n", strings.Repeat("long/", 100)} {
		n := fileName(p)
		if strings.ContainsAny(strings.TrimSuffix(n, fileSuffix), "/.\n ") || len(n) > 255 {
			t.Errorf("fileName(%q) = %q", p, n)
		}
	}
}

func readCopy(path string) (*snapshot, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return decode(b)
}

func slogTo(b *syncbuf.Buffer) *slog.Logger {
	return slog.New(slog.NewTextHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func crcOf(b []byte) []byte {
	return binary.BigEndian.AppendUint32(nil, crc32.Checksum(b, castagnoli))
}

// crashChild, in a child process, writes copies of one prefix as fast as
// it can, each a consistent snapshot: every key's value is the copy's
// revision. The parent kills it at random instants.
const crashChild = "ENDPOINTD_CACHE_CRASH_CHILD"

func TestMain(m *testing.M) {
	if dir := os.Getenv(crashChild); dir != "" {
		path := filepath.Join(dir, fileName("crash/"))
		for rev := int64(1); ; rev++ {
			s := &snapshot{prefix: "crash/", rev: rev, confirmed: time.Now()}
			for i := range 2000 {
				s.kvs = append(s.kvs, &mvccpb.KeyValue{Key: fmt.Appendf(nil, "crash/%05d", i),
					Value: bytes.Repeat([]byte(strconv.FormatInt(rev, 10)+","), 20), ModRevision: rev})
			}
			if err := writeFile(path, s); err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
		}
	}
	os.Exit(m.Run())
}

// kill -9 at any instant of a write leaves a copy that is one whole
// snapshot: the previous one or the new one, never a mix, never torn.
func TestKillDuringWrite(t *testing.T) {
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(1, 2))
	var lastRev int64
	for i := range 100 {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), crashChild+"="+dir)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, fileName("crash/"))
		// Let it write at least once, then kill it at a random instant.
		etcdtest.Eventually(t, 10*time.Second, "a first write", func() bool {
			s, err := readCopy(path)
			return err == nil && s.rev > 0
		})
		time.Sleep(time.Duration(rng.IntN(20)) * time.Millisecond)
		cmd.Process.Kill()
		cmd.Wait()

		c := New(nil, Options{Prefixes: []string{"crash/"}, MaxStaleness: time.Hour, Dir: dir, PersistInterval: time.Second})
		c.Load()
		kvs, count, _, info, ok := c.List("crash/", 0, Any)
		if !ok || count != 2000 {
			t.Fatalf("iteration %d: the copy after kill -9 did not load (%d keys, ok %v)", i, count, ok)
		}
		want := bytes.Repeat([]byte(strconv.FormatInt(info.Rev, 10)+","), 20)
		for _, kv := range kvs {
			if !bytes.Equal(kv.Value, want) {
				t.Fatalf("iteration %d: key %s holds %.20q, not the copy's revision %d: a mix", i, kv.Key, kv.Value, info.Rev)
			}
		}
		lastRev = info.Rev
	}
	t.Logf("100 kills; the last loaded copy was the child's write %d", lastRev)
}

// faultSink keeps the read below from being optimised away.
var faultSink byte

// A copy truncated under the mapping (by someone other than the agent,
// which only replaces copies by rename) faults when read: readMapped turns
// the fault into an error, so the copy is discarded instead of the agent
// crashing.
func TestMappedCopyTruncatedWhileRead(t *testing.T) {
	path := filepath.Join(t.TempDir(), "copy")
	if err := os.WriteFile(path, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	err := readMapped(path, func(b []byte) error {
		if err := os.Truncate(path, 0); err != nil {
			t.Fatal(err)
		}
		faultSink = b[len(b)-1] // a page the file no longer backs
		return nil
	})
	if err == nil || !strings.Contains(err.Error(), "faulted") {
		t.Fatalf("reading a truncated mapping: %v, want the fault as an error", err)
	}
	// Anything else that panics is not a fault, and is not hidden.
	defer func() {
		if r := recover(); r != "a bug" {
			t.Fatalf("recovered %v, want the panic passed on", r)
		}
	}()
	readMapped(path+"-2", func([]byte) error { return nil }) // absent: an error, no call
	if err := os.WriteFile(path, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	readMapped(path, func([]byte) error { panic("a bug") })
}
