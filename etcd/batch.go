package etcd

import (
	"context"
	"errors"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Read batching.
//
// A linearizable read costs one gRPC call, and on a small host the call —
// not etcd's work — is most of its price, in the agent and in etcd alike.
// Concurrent linearizable reads are therefore sent together as one read-only
// transaction, which etcd serves with one ReadIndex round and one
// consistent snapshot of the store (server/etcdserver/v3_server.go, Txn).
//
// The batching is "natural": a read is sent at once, alone, while fewer
// than maxReadBatches reads or batches are in flight; only reads that arrive
// while that many are in flight wait, and they leave together as soon as one
// of those returns. A lone reader never waits for company.
//
// Why it is still linearizable: a read joins only a batch that has not been
// sent yet, so the transaction starts after the read arrived and ends before
// it is answered; etcd linearizes the transaction, which puts the read's
// linearization point inside its own interval. Every read of a batch sees
// the same revision, as two reads at the same instant would.
const (
	// maxReadBatches is how many reads or batches may be in flight before
	// newcomers wait to go together. Measured with `go run ./bench`: fewer
	// batches mean bigger ones and less CPU per read; too few serialize the
	// ReadIndex rounds.
	maxReadBatches = 2
	// maxBatchOps keeps a batch well under etcd's --max-txn-ops (default 128).
	maxBatchOps = 64
)

// reader batches linearizable range reads (see above).
type reader struct {
	c *EtcdClient

	mu       sync.Mutex
	queue    []*pendingRead // reads waiting for the next batch, in arrival order
	inflight int            // reads and batches sent and not yet answered
	maxOps   int            // largest batch etcd accepts; 0 until one is refused (then maxBatchOps applies)
	stats    ReadStats
}

// ReadStats counts the batching of linearizable reads since the client was
// built. Reads sent alone are not counted.
type ReadStats struct {
	Batches uint64 // transactions of two or more reads
	Reads   uint64 // reads they carried
}

// ReadStats returns how linearizable reads have been batched.
func (c *EtcdClient) ReadStats() ReadStats {
	c.reads.mu.Lock()
	defer c.reads.mu.Unlock()
	return c.reads.stats
}

// pendingRead is one read waiting in a batch. done is closed once resp or
// err is set; alone means the batch failed in a way that says nothing about
// this read, which should then be sent by itself.
type pendingRead struct {
	op       clientv3.Op
	deadline time.Time // zero: none

	done  chan struct{}
	resp  *clientv3.GetResponse
	err   error
	alone bool
}

// Range reads key with clientv3's Get options (clientv3.WithPrefix, WithRev,
// WithSerializable, …) and returns what clientv3's Get would. Linearizable
// reads of the current revision may share one etcd transaction with
// concurrent reads (see above); reads at a revision and serializable reads
// are sent alone. ctx is bounded by RequestTimeout when it has no deadline.
func (c *EtcdClient) Range(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	op := clientv3.OpGet(key, opts...)
	if op.Rev() != 0 || op.IsSerializable() {
		return c.rangeAlone(ctx, op)
	}
	return c.reads.read(ctx, op)
}

// rangeAlone sends op as one Range call.
func (c *EtcdClient) rangeAlone(ctx context.Context, op clientv3.Op) (*clientv3.GetResponse, error) {
	var resp *clientv3.GetResponse
	err := c.unary(ctx, func(ctx context.Context, cli *clientv3.Client) error {
		r, err := cli.Do(ctx, op)
		resp = r.Get()
		return err
	})
	return resp, err
}

func (r *reader) read(ctx context.Context, op clientv3.Op) (*clientv3.GetResponse, error) {
	r.mu.Lock()
	if r.inflight < maxReadBatches && len(r.queue) == 0 {
		// Nothing is waiting and there is room: go now, alone, on the
		// caller's goroutine and context.
		r.inflight++
		r.mu.Unlock()
		resp, err := r.c.rangeAlone(ctx, op)
		r.finished()
		return resp, err
	}
	p := &pendingRead{op: op, done: make(chan struct{})}
	if d, ok := ctx.Deadline(); ok {
		p.deadline = d
	}
	r.queue = append(r.queue, p)
	r.mu.Unlock()

	select {
	case <-p.done:
	case <-ctx.Done():
		// The batch may still be sent; its answer for p is dropped.
		return nil, ctx.Err()
	}
	if p.alone {
		return r.c.rangeAlone(ctx, op)
	}
	return p.resp, p.err
}

// finished records that a read or batch came back, and starts the next
// batch if reads are waiting for one.
func (r *reader) finished() {
	r.mu.Lock()
	r.inflight--
	batch := r.take()
	r.mu.Unlock()
	if batch != nil {
		go r.send(batch)
	}
}

// take removes the next batch from the queue and counts it in flight, or
// returns nil if nothing waits or there is no room. r.mu must be held.
func (r *reader) take() []*pendingRead {
	if len(r.queue) == 0 || r.inflight >= maxReadBatches {
		return nil
	}
	limit := maxBatchOps
	if r.maxOps > 0 {
		limit = r.maxOps
	}
	n := min(len(r.queue), limit)
	batch := make([]*pendingRead, n)
	copy(batch, r.queue)
	r.queue = append(r.queue[:0], r.queue[n:]...)
	r.inflight++
	if n > 1 {
		r.stats.Batches++
		r.stats.Reads += uint64(n)
	}
	return batch
}

// send runs batches until none is waiting: each is sent, answered, and the
// next taken.
func (r *reader) send(batch []*pendingRead) {
	for batch != nil {
		r.sendOne(batch)
		r.mu.Lock()
		r.inflight--
		batch = r.take()
		r.mu.Unlock()
	}
}

// sendOne sends one batch and answers its reads. The batch outlives any one
// of its callers, so it runs on its own context, bounded by the latest of
// their deadlines; each caller still stops waiting at its own.
func (r *reader) sendOne(batch []*pendingRead) {
	deadline := time.Now().Add(r.c.requestTimeout())
	if d, ok := latest(batch, func(p *pendingRead) time.Time { return p.deadline }); ok {
		deadline = d
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()

	if len(batch) == 1 {
		p := batch[0]
		p.resp, p.err = r.c.rangeAlone(ctx, p.op)
		close(p.done)
		return
	}
	ops := make([]clientv3.Op, len(batch))
	for i, p := range batch {
		ops[i] = p.op
	}
	var resp *clientv3.TxnResponse
	err := r.c.unary(ctx, func(ctx context.Context, cli *clientv3.Client) (err error) {
		resp, err = cli.Txn(ctx).Then(ops...).Commit()
		return err
	})
	if errors.Is(err, rpctypes.ErrTooManyOps) {
		// The cluster runs with a --max-txn-ops below maxBatchOps: halve
		// the batches until they fit; these reads go alone.
		r.mu.Lock()
		r.maxOps = max(1, len(batch)/2)
		r.mu.Unlock()
	}
	for i, p := range batch {
		switch {
		case err == nil && i < len(resp.Responses) && resp.Responses[i].GetResponseRange() != nil:
			rr := resp.Responses[i].GetResponseRange()
			// The ranges of a transaction carry no header of their own
			// worth having; the transaction's is the revision they read.
			rr.Header = resp.Header
			p.resp = (*clientv3.GetResponse)(rr)
		case err == nil:
			p.alone = true // cannot happen with etcd as it is; do not guess
		case final(err):
			p.err = err
		default:
			// Each read goes alone. One read can spoil a transaction for
			// all (a permission it lacks, a response over the size limit);
			// and when the connection broke under the batch, clientv3
			// retries a lone Range on another member, which it never does
			// for a transaction.
			p.alone = true
		}
		close(p.done)
	}
}

// latest returns the latest deadline of a batch's requests, or false when
// one of them has none (a zero deadline).
func latest[T any](batch []T, deadline func(T) time.Time) (time.Time, bool) {
	var d time.Time
	for _, p := range batch {
		pd := deadline(p)
		if pd.IsZero() {
			return time.Time{}, false
		}
		if pd.After(d) {
			d = pd
		}
	}
	return d, true
}

// final reports whether err would be every read's answer if each were sent
// alone: nothing is reachable, the client is closed, or time ran out.
func final(err error) bool {
	switch {
	case errors.Is(err, ErrUnavailable), errors.Is(err, ErrClosed), errors.Is(err, ErrNoEndpoints),
		errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return true
	}
	switch status.Code(err) {
	case codes.DeadlineExceeded, codes.Canceled:
		return true
	}
	return false
}
