package etcd

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"udp_iaasd/internal/etcdtest"
)

// queuePuts holds every in-flight slot of c's writer, starts one plain
// PutKV per entry, waits until all are queued, and returns a release that
// lets them go as batches and returns their revisions in order.
func queuePuts(t *testing.T, c *EtcdClient, ctx context.Context, kvs [][2]string) (release func() ([]int64, []error)) {
	t.Helper()
	puts := make([]queuedPut, len(kvs))
	for i, kv := range kvs {
		puts[i] = queuedPut{key: kv[0], value: kv[1]}
	}
	releaseWrites := queueWrites(t, c, ctx, puts)
	return func() ([]int64, []error) {
		results, errs := releaseWrites()
		revs := make([]int64, len(results))
		for i, r := range results {
			revs[i] = r.Revision
		}
		return revs, errs
	}
}

// queuedPut is one PutKV for queueWrites.
type queuedPut struct {
	key, value string
	opts       PutOptions
}

// queueWrites is queuePuts for puts with options: conditions too.
func queueWrites(t *testing.T, c *EtcdClient, ctx context.Context, puts []queuedPut) (release func() ([]WriteResult, []error)) {
	t.Helper()
	w := c.writes
	w.mu.Lock()
	held := maxWriteBatches - w.inflight
	w.inflight = maxWriteBatches
	w.mu.Unlock()

	results := make([]WriteResult, len(puts))
	errs := make([]error, len(puts))
	var wg sync.WaitGroup
	for i, p := range puts {
		// One at a time into the queue, so that its order is puts' order.
		wg.Go(func() {
			results[i], errs[i] = c.PutKV(ctx, p.key, []byte(p.value), p.opts)
		})
		etcdtest.Eventually(t, 10*time.Second, "the put to queue", func() bool {
			w.mu.Lock()
			defer w.mu.Unlock()
			return len(w.queue) == i+1
		})
	}
	return func() ([]WriteResult, []error) {
		for range held {
			c.writes.finished()
		}
		wg.Wait()
		return results, errs
	}
}

// nextEvents returns the next n events of wch as key=value@mod_revision,
// or more when the last response carries more.
func nextEvents(t *testing.T, ctx context.Context, wch clientv3.WatchChan, n int) []string {
	t.Helper()
	var got []string
	for len(got) < n {
		select {
		case wr := <-wch:
			for _, ev := range wr.Events {
				got = append(got, fmt.Sprintf("%s=%s@%d", ev.Kv.Key, ev.Kv.Value, ev.Kv.ModRevision))
			}
		case <-ctx.Done():
			t.Fatalf("events so far: %v", got)
		}
	}
	return got
}

// Puts queued together leave as one transaction: one revision for the
// batch, each key's value and mod_revision as written, one watch event
// each. A second put of a key goes in another transaction.
func TestPutsShareATransaction(t *testing.T) {
	cluster := etcdtest.New(t, 1)
	c := newTestClient(t, Config{Endpoints: cluster.Endpoints()})
	direct := cluster.Client(t)
	ctx := ctxT(t, 30*time.Second)
	start, err := direct.Get(ctx, "wb/")
	if err != nil {
		t.Fatal(err)
	}
	wch := direct.Watch(ctx, "wb/", clientv3.WithPrefix(), clientv3.WithRev(start.Header.Revision+1))

	kvs := [][2]string{{"wb/a", "1"}, {"wb/b", "2"}, {"wb/a", "3"}, {"wb/c", "4"}, {"wb/d", "5"}}
	revs, errs := queuePuts(t, c, ctx, kvs)()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	// wb/a, wb/b, wb/c, wb/d in the first batch; the second wb/a in a
	// transaction of its own. The two batches are in flight together, so
	// either may commit first — as any two concurrent puts of one key — and
	// wb/a keeps the value of the one given the higher revision.
	if revs[0] != revs[1] || revs[0] != revs[3] || revs[0] != revs[4] || revs[2] == revs[0] {
		t.Fatalf("revisions %v: want one for the first batch and another for the second put of wb/a", revs)
	}
	if st := c.WriteStats(); st.Batches != 1 || st.Puts != 4 {
		t.Errorf("WriteStats = %+v, want one batch of 4", st)
	}
	lastA := "1"
	if revs[2] > revs[0] {
		lastA = "3"
	}
	want := map[string]string{"wb/a": lastA, "wb/b": "2", "wb/c": "4", "wb/d": "5"}
	for k, v := range want {
		resp, err := direct.Get(ctx, k)
		if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != v {
			t.Fatalf("%s: %v %v, want %q", k, resp, err, v)
		}
	}
	// Every put is one event, with the revision its caller was given.
	got := nextEvents(t, ctx, wch, len(kvs))
	wantEvents := map[string]bool{}
	for i, kv := range kvs {
		wantEvents[fmt.Sprintf("%s=%s@%d", kv[0], kv[1], revs[i])] = true
	}
	for _, e := range got {
		if !wantEvents[e] {
			t.Errorf("unexpected or repeated event %s (want %v)", e, wantEvents)
		}
		delete(wantEvents, e)
	}
}

// A cluster whose --max-txn-ops is below the batch refuses it before
// applying anything: each put is then sent alone and succeeds, and later
// batches fit.
func TestPutBatchRefusedGoesAlone(t *testing.T) {
	cluster, err := etcdtest.Start(etcdtest.Options{Members: 1, Dir: t.TempDir(), MaxTxnOps: 3})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cluster.Close)
	c := newTestClient(t, Config{Endpoints: cluster.Endpoints()})
	ctx := ctxT(t, 30*time.Second)
	for round := range 2 {
		var kvs [][2]string
		for i := range 8 {
			kvs = append(kvs, [2]string{fmt.Sprintf("r/k%d", i), fmt.Sprintf("%d-%d", round, i)})
		}
		revs, errs := queuePuts(t, c, ctx, kvs)()
		if err := errors.Join(errs...); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		for i, kv := range kvs {
			v, err := c.Get(ctx, kv[0])
			if err != nil || v != kv[1] || revs[i] <= 0 {
				t.Fatalf("round %d: %s = %q (%v), revision %d", round, kv[0], v, err, revs[i])
			}
		}
	}
	c.writes.mu.Lock()
	limit := c.writes.maxOps
	c.writes.mu.Unlock()
	if limit < 1 || limit > 3 {
		t.Errorf("batch limit after refusals = %d, want 1..3", limit)
	}
}

// Many writers on few keys, batched as it happens: per key, the revisions
// given back are distinct and the last one's value is what stays; a watch
// from before sees every put once, at the revision its caller was given.
func TestConcurrentPutsKeepEveryWrite(t *testing.T) {
	cluster := etcdtest.New(t, 3)
	c := newTestClient(t, Config{Endpoints: cluster.Endpoints()})
	direct := cluster.Client(t)
	ctx := ctxT(t, 60*time.Second)
	start, err := direct.Get(ctx, "cw/")
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancelWatch := context.WithCancel(ctx)
	defer cancelWatch()
	wch := direct.Watch(wctx, "cw/", clientv3.WithPrefix(), clientv3.WithRev(start.Header.Revision+1))

	const writers, puts, keys = 32, 25, 6
	type write struct {
		key, value string
		rev        int64
	}
	var (
		mu     sync.Mutex
		writes []write
		wg     sync.WaitGroup
	)
	for w := range writers {
		wg.Go(func() {
			for i := range puts {
				key, value := fmt.Sprintf("cw/%d", (w+i)%keys), fmt.Sprintf("w%d-%d", w, i)
				res, err := c.PutKV(ctx, key, []byte(value), PutOptions{})
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				writes = append(writes, write{key, value, res.Revision})
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	if st := c.WriteStats(); st.Batches == 0 {
		t.Logf("no batch formed (%+v): the machine let every put go alone", st)
	} else {
		t.Logf("WriteStats: %+v of %d puts", st, writers*puts)
	}
	last := map[string]write{}
	seen := map[string]map[int64]bool{}
	for _, wr := range writes {
		if seen[wr.key] == nil {
			seen[wr.key] = map[int64]bool{}
		}
		if seen[wr.key][wr.rev] {
			t.Fatalf("two puts of %s were given revision %d", wr.key, wr.rev)
		}
		seen[wr.key][wr.rev] = true
		if wr.rev > last[wr.key].rev {
			last[wr.key] = wr
		}
	}
	for k, wr := range last {
		resp, err := direct.Get(ctx, k)
		if err != nil || string(resp.Kvs[0].Value) != wr.value || resp.Kvs[0].ModRevision != wr.rev {
			t.Fatalf("%s: %v %v; the put given the highest revision was %+v", k, resp.Kvs, err, wr)
		}
	}
	want := map[string]bool{}
	for _, wr := range writes {
		want[fmt.Sprintf("%s=%s@%d", wr.key, wr.value, wr.rev)] = true
	}
	var lastRev int64
	for n := 0; n < len(writes); {
		select {
		case resp := <-wch:
			for _, ev := range resp.Events {
				e := fmt.Sprintf("%s=%s@%d", ev.Kv.Key, ev.Kv.Value, ev.Kv.ModRevision)
				if !want[e] {
					t.Fatalf("event %s is no acknowledged put, or came twice", e)
				}
				if ev.Kv.ModRevision < lastRev {
					t.Fatalf("event %s after revision %d", e, lastRev)
				}
				lastRev = ev.Kv.ModRevision
				delete(want, e)
				n++
			}
		case <-ctx.Done():
			t.Fatalf("%d events missing, e.g. %v", len(want), want)
		}
	}
}

// Conditional puts queued with plain ones leave in the same transaction,
// each condition decided on its own: the ones that hold write at the
// batch's revision, the ones that fail write nothing and say the key's
// mod_revision; a watch sees only what was written.
func TestConditionalPutsShareATransaction(t *testing.T) {
	cluster := etcdtest.New(t, 1)
	c := newTestClient(t, Config{Endpoints: cluster.Endpoints()})
	direct := cluster.Client(t)
	ctx := ctxT(t, 30*time.Second)
	seed := map[string]int64{}
	for _, k := range []string{"cb/match", "cb/stale", "cb/exists", "cb/there"} {
		resp, err := direct.Put(ctx, k, "old")
		if err != nil {
			t.Fatal(err)
		}
		seed[k] = resp.Header.Revision
	}
	wch := direct.Watch(ctx, "cb/", clientv3.WithPrefix(), clientv3.WithRev(seed["cb/there"]+1))

	puts := []queuedPut{
		{key: "cb/plain", value: "p"},
		{key: "cb/match", value: "m", opts: PutOptions{If: Condition{ModRevision: seed["cb/match"]}}},
		{key: "cb/stale", value: "s", opts: PutOptions{If: Condition{ModRevision: seed["cb/stale"] - 1}}},
		{key: "cb/new", value: "n", opts: PutOptions{If: Condition{Absent: true}}},
		{key: "cb/exists", value: "e", opts: PutOptions{If: Condition{Absent: true}}},
		{key: "cb/there", value: "t", opts: PutOptions{If: Condition{Exists: true}}},
		{key: "cb/missing", value: "x", opts: PutOptions{If: Condition{Exists: true}}},
	}
	results, errs := queueWrites(t, c, ctx, puts)()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	if st := c.WriteStats(); st.Batches != 1 || st.Puts != uint64(len(puts)) {
		t.Errorf("WriteStats = %+v, want one batch of %d", st, len(puts))
	}
	rev := results[0].Revision
	if rev <= seed["cb/there"] {
		t.Fatalf("plain put: %+v", results[0])
	}
	want := []WriteResult{
		{Revision: rev},
		{Revision: rev},
		{Failed: true, CurrentModRevision: seed["cb/stale"]},
		{Revision: rev},
		{Failed: true, CurrentModRevision: seed["cb/exists"]},
		{Revision: rev},
		{Failed: true},
	}
	for i, w := range want {
		if results[i] != w {
			t.Errorf("%s: %+v, want %+v", puts[i].key, results[i], w)
		}
	}
	values := map[string]string{"cb/plain": "p", "cb/match": "m", "cb/stale": "old", "cb/new": "n",
		"cb/exists": "old", "cb/there": "t", "cb/missing": ""}
	for k, v := range values {
		resp, err := direct.Get(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		got := ""
		if len(resp.Kvs) == 1 {
			got = string(resp.Kvs[0].Value)
		}
		if got != v {
			t.Errorf("%s = %q, want %q", k, got, v)
		}
	}
	// The four writes are the revision's events, and the only ones: the
	// next event after them is a marker written afterwards.
	got := nextEvents(t, ctx, wch, 4)
	marker, err := direct.Put(ctx, "cb/zz-marker", "z")
	if err != nil {
		t.Fatal(err)
	}
	got = append(got, nextEvents(t, ctx, wch, 1)...)
	wantEvents := []string{
		fmt.Sprintf("cb/match=m@%d", rev), fmt.Sprintf("cb/new=n@%d", rev),
		fmt.Sprintf("cb/plain=p@%d", rev), fmt.Sprintf("cb/there=t@%d", rev),
		fmt.Sprintf("cb/zz-marker=z@%d", marker.Header.Revision),
	}
	slices.Sort(got)
	if !slices.Equal(got, wantEvents) {
		t.Errorf("events %v, want %v", got, wantEvents)
	}
}

// Compare-and-swap counters under contention, batched as it happens: every
// increment that was acknowledged is in the final count, and no other.
func TestConcurrentCompareAndSwapLosesNoUpdate(t *testing.T) {
	cluster := etcdtest.New(t, 3)
	c := newTestClient(t, Config{Endpoints: cluster.Endpoints()})
	ctx := ctxT(t, 90*time.Second)
	const workers, increments, counters = 16, 20, 4
	var (
		mu   sync.Mutex
		wins = map[string]int{}
		wg   sync.WaitGroup
	)
	for w := range workers {
		wg.Go(func() {
			key := fmt.Sprintf("cas/%d", w%counters)
			for done := 0; done < increments; {
				r, err := c.Read(ctx, key, ReadOptions{})
				if err != nil {
					t.Error(err)
					return
				}
				n, cond := 0, Condition{Absent: true}
				if len(r.KVs) == 1 {
					n, _ = strconv.Atoi(string(r.KVs[0].Value))
					cond = Condition{ModRevision: r.KVs[0].ModRevision}
				}
				res, err := c.PutKV(ctx, key, []byte(strconv.Itoa(n+1)), PutOptions{If: cond})
				if err != nil {
					t.Error(err)
					return
				}
				if !res.Failed {
					done++
					mu.Lock()
					wins[key]++
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	t.Logf("WriteStats: %+v", c.WriteStats())
	for k, n := range wins {
		v, err := c.Get(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		if v != strconv.Itoa(n) {
			t.Errorf("%s = %s after %d acknowledged increments", k, v, n)
		}
	}
}

// A put with a ttl never joins a batch: it grants a lease and writes with
// it, under its condition if it has one. A put whose condition fails
// writes nothing and revokes the lease it was granted, so no lease is left
// behind to expire on its own.
func TestLeasedPutUnderCondition(t *testing.T) {
	cluster := etcdtest.New(t, 1)
	c := newTestClient(t, Config{Endpoints: cluster.Endpoints()})
	direct := cluster.Client(t)
	ctx := ctxT(t, 30*time.Second)
	seed, err := direct.Put(ctx, "ttl/there", "old")
	if err != nil {
		t.Fatal(err)
	}
	there := seed.Header.Revision

	for _, tc := range []struct {
		name    string
		key     string
		cond    Condition
		written bool
	}{
		{"no condition", "ttl/plain", Condition{}, true},
		{"absent, holds", "ttl/new", Condition{Absent: true}, true},
		{"absent, fails", "ttl/there", Condition{Absent: true}, false},
		{"mod_revision, fails", "ttl/there", Condition{ModRevision: there - 1}, false},
		{"mod_revision, holds", "ttl/there", Condition{ModRevision: there}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before, err := direct.Get(ctx, tc.key)
			if err != nil {
				t.Fatal(err)
			}
			res, err := c.PutKV(ctx, tc.key, []byte("v"), PutOptions{TTL: 60, If: tc.cond})
			if err != nil {
				t.Fatal(err)
			}
			after, err := direct.Get(ctx, tc.key)
			if err != nil {
				t.Fatal(err)
			}
			if !tc.written {
				if !res.Failed || res.CurrentModRevision != there {
					t.Fatalf("result %+v, want Failed with current_mod_revision %d", res, there)
				}
				if after.Header.Revision != before.Header.Revision {
					t.Fatalf("a failed put moved the store from revision %d to %d", before.Header.Revision, after.Header.Revision)
				}
				leases, err := direct.Leases(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if len(leases.Leases) != 0 {
					t.Fatalf("%d leases left behind by a failed put", len(leases.Leases))
				}
				return
			}
			if res.Failed || len(after.Kvs) != 1 || after.Kvs[0].ModRevision != res.Revision {
				t.Fatalf("result %+v, key now %v", res, after.Kvs)
			}
			lease := clientv3.LeaseID(after.Kvs[0].Lease)
			ttl, err := direct.TimeToLive(ctx, lease)
			if err != nil {
				t.Fatal(err)
			}
			if lease == 0 || ttl.GrantedTTL != 60 {
				t.Fatalf("key's lease %x granted ttl %d, want a 60s lease", lease, ttl.GrantedTTL)
			}
			if _, err := direct.Revoke(ctx, lease); err != nil { // leave no lease for the next case
				t.Fatal(err)
			}
		})
	}
}
