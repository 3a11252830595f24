package etcd

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"udp_iaasd/internal/etcdtest"
)

// queueReads holds every in-flight slot of c's reader, starts one Range per
// entry of reads, and waits until all are queued; release then lets them go
// as batches. It makes a batch's contents certain instead of a matter of
// scheduling.
func queueReads(t *testing.T, c *EtcdClient, reads []func() error) (release func() []error) {
	t.Helper()
	r := c.reads
	r.mu.Lock()
	held := maxReadBatches - r.inflight
	r.inflight = maxReadBatches
	r.mu.Unlock()

	errs := make([]error, len(reads))
	var wg sync.WaitGroup
	for i, read := range reads {
		wg.Go(func() { errs[i] = read() })
	}
	etcdtest.Eventually(t, 10*time.Second, "reads to queue", func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return len(r.queue) == len(reads)
	})
	return func() []error {
		for range held {
			r.finished()
		}
		wg.Wait()
		return errs
	}
}

func TestBatchAnswersEachReadItsOwn(t *testing.T) {
	cluster := etcdtest.New(t, 3)
	c := newTestClient(t, Config{Endpoints: cluster.Endpoints()})
	ctx := ctxT(t, 20*time.Second)
	for i := range 10 {
		if err := c.Put(ctx, fmt.Sprintf("b/%02d", i), strconv.Itoa(i)); err != nil {
			t.Fatal(err)
		}
	}
	writeRev := func() int64 {
		resp, err := cluster.Client(t).Get(ctx, "b/00")
		if err != nil {
			t.Fatal(err)
		}
		return resp.Header.Revision
	}()

	type answer struct {
		resp *clientv3.GetResponse
		err  error
	}
	cases := []struct {
		name  string
		key   string
		opts  []clientv3.OpOption
		check func(*clientv3.GetResponse) error
	}{
		{"one key", "b/03", nil, func(r *clientv3.GetResponse) error {
			if len(r.Kvs) != 1 || string(r.Kvs[0].Value) != "3" {
				return fmt.Errorf("kvs %v", r.Kvs)
			}
			return nil
		}},
		{"absent key", "b/none", nil, func(r *clientv3.GetResponse) error {
			if len(r.Kvs) != 0 || r.Count != 0 {
				return fmt.Errorf("kvs %v count %d", r.Kvs, r.Count)
			}
			return nil
		}},
		{"prefix with limit", "b/", []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithLimit(4),
			clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend)}, func(r *clientv3.GetResponse) error {
			if len(r.Kvs) != 4 || r.Count != 10 || !r.More || string(r.Kvs[0].Key) != "b/09" {
				return fmt.Errorf("kvs %d count %d more %v first %q", len(r.Kvs), r.Count, r.More, r.Kvs[0].Key)
			}
			return nil
		}},
		{"keys only", "b/", []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithKeysOnly()}, func(r *clientv3.GetResponse) error {
			if len(r.Kvs) != 10 || len(r.Kvs[5].Value) != 0 {
				return fmt.Errorf("kvs %d value %q", len(r.Kvs), r.Kvs[5].Value)
			}
			return nil
		}},
		{"count only", "b/", []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithCountOnly()}, func(r *clientv3.GetResponse) error {
			if len(r.Kvs) != 0 || r.Count != 10 {
				return fmt.Errorf("kvs %d count %d", len(r.Kvs), r.Count)
			}
			return nil
		}},
	}
	answers := make([]answer, len(cases))
	var reads []func() error
	for i, tc := range cases {
		reads = append(reads, func() error {
			answers[i].resp, answers[i].err = c.rangeKeys(ctx, tc.key, tc.opts...)
			return nil
		})
	}
	release := queueReads(t, c, reads)
	release()

	for i, tc := range cases {
		a := answers[i]
		if a.err != nil {
			t.Errorf("%s: %v", tc.name, a.err)
			continue
		}
		if a.resp.Header == nil || a.resp.Header.Revision < writeRev {
			t.Errorf("%s: header %v, want revision >= %d", tc.name, a.resp.Header, writeRev)
		}
		if err := tc.check(a.resp); err != nil {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
	if st := c.ReadStats(); st.Batches != 1 || st.Reads != uint64(len(cases)) {
		t.Errorf("ReadStats = %+v, want one batch of %d", st, len(cases))
	}
}

// A cluster whose --max-txn-ops is below our batch size refuses the batch;
// every read must still be answered, and later batches must fit.
func TestBatchRefusedByEtcdFallsBack(t *testing.T) {
	cluster, err := etcdtest.Start(etcdtest.Options{Members: 1, Dir: t.TempDir(), MaxTxnOps: 3})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cluster.Close)
	c := newTestClient(t, Config{Endpoints: cluster.Endpoints()})
	ctx := ctxT(t, 20*time.Second)
	const n = 8
	for i := range n {
		if err := c.Put(ctx, fmt.Sprintf("k%d", i), strconv.Itoa(i)); err != nil {
			t.Fatal(err)
		}
	}
	get := func(i int) func() error {
		return func() error {
			v, err := c.Get(ctx, fmt.Sprintf("k%d", i))
			if err == nil && v != strconv.Itoa(i) {
				err = fmt.Errorf("k%d = %q", i, v)
			}
			return err
		}
	}
	for round := range 2 {
		var reads []func() error
		for i := range n {
			reads = append(reads, get(i))
		}
		if err := errors.Join(queueReads(t, c, reads)()...); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
	}
	c.reads.mu.Lock()
	limit := c.reads.maxOps
	c.reads.mu.Unlock()
	if limit < 1 || limit > 3 {
		t.Errorf("batch limit after refusals = %d, want 1..3", limit)
	}
}

// TestBatchedReadsAreLinearizable runs readers against a writer: a read that
// starts after a write was acknowledged must see it (or a later one), and
// each reader's revisions never go back.
func TestBatchedReadsAreLinearizable(t *testing.T) {
	cluster := etcdtest.New(t, 3)
	c := newTestClient(t, Config{Endpoints: cluster.Endpoints()})
	writer := cluster.Client(t)
	ctx := ctxT(t, 60*time.Second)

	var acked atomic.Int64 // highest value whose put was acknowledged
	if _, err := writer.Put(ctx, "lin", "0"); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	writerDone := make(chan error, 1)
	go func() {
		for v := int64(1); ; v++ {
			select {
			case <-stop:
				writerDone <- nil
				return
			default:
			}
			if _, err := writer.Put(ctx, "lin", strconv.FormatInt(v, 10)); err != nil {
				writerDone <- err
				return
			}
			acked.Store(v)
		}
	}()

	const readers, each = 16, 150
	var wg sync.WaitGroup
	errc := make(chan error, readers)
	for range readers {
		wg.Go(func() {
			var lastRev int64
			for range each {
				floor := acked.Load()
				resp, err := c.rangeKeys(ctx, "lin")
				if err != nil {
					errc <- err
					return
				}
				v, _ := strconv.ParseInt(string(resp.Kvs[0].Value), 10, 64)
				if v < floor {
					errc <- fmt.Errorf("read %d after the put of %d was acknowledged", v, floor)
					return
				}
				if resp.Header.Revision < lastRev {
					errc <- fmt.Errorf("revision went back from %d to %d", lastRev, resp.Header.Revision)
					return
				}
				lastRev = resp.Header.Revision
			}
		})
	}
	wg.Wait()
	close(stop)
	if err := <-writerDone; err != nil {
		t.Fatal(err)
	}
	close(errc)
	for err := range errc {
		t.Error(err)
	}
	st := c.ReadStats()
	t.Logf("%d reads, %d of them in %d batches", readers*each, st.Reads, st.Batches)
}

// A read waiting for a batch returns at its own deadline, whatever the batch
// does.
func TestQueuedReadHonoursItsDeadline(t *testing.T) {
	cluster := etcdtest.New(t, 1)
	c := newTestClient(t, Config{Endpoints: cluster.Endpoints(), RequestTimeout: 30 * time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	got := make(chan error, 1)
	release := queueReads(t, c, []func() error{func() error {
		_, err := c.rangeKeys(ctx, "x")
		got <- err
		return nil
	}})
	defer release()
	select {
	case err := <-got: // while every in-flight slot is still held
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v, want context.DeadlineExceeded", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a queued read outlived its deadline by 10s")
	}
}

// A member stopped under batched reads costs no read an error: clientv3
// retries a failed Range on another member, but not a transaction, so reads
// of a batch that broke with its connection are sent again one by one.
func TestBatchedReadsSurviveAMemberStop(t *testing.T) {
	cluster := etcdtest.New(t, 3)
	c := newTestClient(t, Config{Endpoints: cluster.Endpoints(), RequestTimeout: 5 * time.Second})
	ctx := ctxT(t, 60*time.Second)
	if err := c.Put(ctx, "survive", "v"); err != nil {
		t.Fatal(err)
	}
	// Stop a follower: the leader's loss would add an election, which is not
	// what this is about.
	var follower *etcdtest.Member
	for _, m := range cluster.Members {
		st, err := cluster.Client(t).Status(ctx, m.Endpoint())
		if err != nil {
			t.Fatal(err)
		}
		if st.Leader != st.Header.MemberId {
			follower = m
			break
		}
	}

	var (
		stop   atomic.Bool
		reads  atomic.Int64
		failed atomic.Int64
		first  atomic.Value
		wg     sync.WaitGroup
	)
	for range 16 {
		wg.Go(func() {
			for !stop.Load() {
				rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				_, err := c.rangeKeys(rctx, "survive")
				cancel()
				reads.Add(1)
				if err != nil {
					failed.Add(1)
					first.CompareAndSwap(nil, err.Error())
				}
			}
		})
	}
	time.Sleep(300 * time.Millisecond)
	follower.Stop()
	time.Sleep(time.Second)
	stop.Store(true)
	wg.Wait()
	t.Logf("%d reads, %d failed, %d batched", reads.Load(), failed.Load(), c.ReadStats().Reads)
	if n := failed.Load(); n > 0 {
		t.Fatalf("%d reads failed while a follower stopped; first: %v", n, first.Load())
	}
}
