package etcd

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
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

// batcher is the natural batching of reads and writes (see above, and
// writebatch.go): requests of type Q answered with R. The algorithm —
// enqueue, send alone while there is room, take the next batch when one
// returns, a batch's deadline, halving on ErrTooManyOps — is here once; the
// hooks say what a request is in a transaction and what its answer is.
type batcher[Q, R any] struct {
	c *EtcdClient
	// maxInflight is how many requests or batches may be in flight before
	// newcomers wait to go together.
	maxInflight int
	// alone sends one request by itself.
	alone func(ctx context.Context, q Q) (R, error)
	// op is the request's operation in a batch's transaction.
	op func(q Q) clientv3.Op
	// key, when set, keeps two requests of one key out of one batch (etcd
	// refuses a transaction that writes a key twice).
	key func(q Q) string
	// answer is what the committed transaction says to its i-th request;
	// false: nothing certain, send the request alone.
	answer func(resp *clientv3.TxnResponse, i int) (R, bool)
	// sendAlone: a batch that failed with err failed for a reason that may
	// be one request's (and did not take effect), so each goes alone;
	// otherwise every request gets err, as it would have alone.
	sendAlone func(err error) bool

	mu       sync.Mutex                  // guards the fields below
	queue    []*pending[Q, R]            // requests waiting for the next batch, in arrival order
	inflight int                         // requests and batches sent and not yet answered
	maxOps   int                         // largest batch etcd accepts; 0 until one is refused (then maxBatchOps applies)
	stats    struct{ batches, n uint64 } // batches of two or more, and the requests they carried
}

// pending is one request waiting in a batch. done is closed once res or
// err is set, or alone: the request should be sent by itself.
type pending[Q, R any] struct {
	q        Q
	deadline time.Time // zero: none

	done  chan struct{}
	res   R
	err   error
	alone bool
	sent  atomic.Bool // its batch got its host-budget token
}

// forget takes p out of the queue, if it is still there (its caller gave
// up: it is not sent). b.mu held.
func (b *batcher[Q, R]) forget(p *pending[Q, R]) {
	for i, x := range b.queue {
		if x == p {
			b.queue = append(b.queue[:i], b.queue[i+1:]...)
			return
		}
	}
}

// do answers q: at once, alone, while there is room and nothing waits;
// else in the next batch.
func (b *batcher[Q, R]) do(ctx context.Context, q Q) (R, error) {
	b.mu.Lock()
	if b.inflight < b.maxInflight && len(b.queue) == 0 {
		// Nothing is waiting and there is room: go now, alone, on the
		// caller's goroutine and context.
		b.inflight++
		b.mu.Unlock()
		res, err := b.alone(ctx, q)
		b.finished()
		return res, err
	}
	p := &pending[Q, R]{q: q, done: make(chan struct{})}
	if d, ok := ctx.Deadline(); ok {
		p.deadline = d
	}
	b.queue = append(b.queue, p)
	b.mu.Unlock()

	select {
	case <-p.done:
	case <-ctx.Done():
		// Still queued: it is taken out and never sent. Otherwise its batch
		// may still be sent; its answer for p is dropped. (A write's
		// outcome is then unknown, which is what a context error says of a
		// write.)
		var zero R
		b.mu.Lock()
		b.forget(p)
		b.mu.Unlock()
		if !p.sent.Load() && errors.Is(ctx.Err(), context.DeadlineExceeded) && b.c.budget.enabled() {
			// It waited for the host budget (in the queue, or in a batch
			// waiting for its token) past its deadline: never sent.
			return zero, &BudgetError{RetryAfter: b.c.requestTimeout()}
		}
		return zero, ctx.Err()
	}
	if p.alone {
		return b.alone(ctx, q)
	}
	return p.res, p.err
}

// finished records that a request or batch came back, and starts the next
// batch if requests are waiting for one.
func (b *batcher[Q, R]) finished() {
	b.mu.Lock()
	b.inflight--
	batch := b.take()
	b.mu.Unlock()
	if batch != nil {
		go b.send(batch)
	}
}

// take removes the next batch from the queue — in arrival order, at most
// one request per key when key is set, the rest left for later batches —
// and counts it in flight; nil if nothing waits or there is no room. b.mu
// must be held.
func (b *batcher[Q, R]) take() []*pending[Q, R] {
	if len(b.queue) == 0 || b.inflight >= b.maxInflight {
		return nil
	}
	limit := maxBatchOps
	if b.maxOps > 0 {
		limit = b.maxOps
	}
	var batch []*pending[Q, R]
	var keys map[string]bool
	if b.key != nil {
		keys = make(map[string]bool, min(len(b.queue), limit))
	}
	rest := b.queue[:0]
	for _, p := range b.queue {
		if len(batch) >= limit || (keys != nil && keys[b.key(p.q)]) {
			rest = append(rest, p)
			continue
		}
		if keys != nil {
			keys[b.key(p.q)] = true
		}
		batch = append(batch, p)
	}
	clear(b.queue[len(rest):])
	b.queue = rest
	b.inflight++
	if len(batch) > 1 {
		b.stats.batches++
		b.stats.n += uint64(len(batch))
	}
	return batch
}

// send runs batches until none is waiting: each is sent, answered, and the
// next taken.
func (b *batcher[Q, R]) send(batch []*pending[Q, R]) {
	for batch != nil {
		b.sendOne(batch)
		b.mu.Lock()
		b.inflight--
		batch = b.take()
		b.mu.Unlock()
	}
}

// sendOne sends one batch and answers its requests. The batch outlives any
// one of its callers, so it runs on its own context, bounded by the latest
// of their deadlines; each caller still stops waiting at its own.
func (b *batcher[Q, R]) sendOne(batch []*pending[Q, R]) {
	deadline := time.Now().Add(b.c.requestTimeout())
	if d, ok := latest(batch); ok {
		deadline = d
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()

	if len(batch) == 1 {
		p := batch[0]
		p.res, p.err = b.alone(ctx, p.q)
		close(p.done)
		return
	}
	ops := make([]clientv3.Op, len(batch))
	for i, p := range batch {
		ops[i] = b.op(p.q)
	}
	var resp *clientv3.TxnResponse
	// The batch is one request to the host budget; its requests count as
	// sent once it has its token (do tells the others apart).
	err := b.c.takeBudget(ctx)
	if err == nil {
		for _, p := range batch {
			p.sent.Store(true)
		}
		err = b.c.onLive(ctx, func(ctx context.Context, cli *clientv3.Client) (err error) {
			resp, err = cli.Txn(ctx).Then(ops...).Commit()
			return err
		})
	}
	if errors.Is(err, rpctypes.ErrTooManyOps) {
		// The cluster runs with a --max-txn-ops below maxBatchOps: halve
		// the batches until they fit; these requests go alone.
		b.mu.Lock()
		b.maxOps = max(1, len(batch)/2)
		b.mu.Unlock()
	}
	for i, p := range batch {
		switch {
		case err == nil:
			var ok bool
			p.res, ok = b.answer(resp, i)
			p.alone = !ok
		case b.sendAlone(err):
			p.alone = true
		default:
			p.err = err
		}
		close(p.done)
	}
}

// latest returns the latest deadline of a batch's requests, or false when
// one of them has none (a zero deadline).
func latest[Q, R any](batch []*pending[Q, R]) (time.Time, bool) {
	var d time.Time
	for _, p := range batch {
		if p.deadline.IsZero() {
			return time.Time{}, false
		}
		if p.deadline.After(d) {
			d = p.deadline
		}
	}
	return d, true
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
	return ReadStats{Batches: c.reads.stats.batches, Reads: c.reads.stats.n}
}

// newReader is the batcher of linearizable reads.
func newReader(c *EtcdClient) *batcher[clientv3.Op, *clientv3.GetResponse] {
	return &batcher[clientv3.Op, *clientv3.GetResponse]{
		c:           c,
		maxInflight: maxReadBatches,
		alone:       c.rangeAlone,
		op:          func(op clientv3.Op) clientv3.Op { return op },
		answer: func(resp *clientv3.TxnResponse, i int) (*clientv3.GetResponse, bool) {
			if i >= len(resp.Responses) || resp.Responses[i].GetResponseRange() == nil {
				return nil, false // cannot happen with etcd as it is; do not guess
			}
			rr := resp.Responses[i].GetResponseRange()
			// The ranges of a transaction carry no header of their own
			// worth having; the transaction's is the revision they read.
			rr.Header = resp.Header
			return (*clientv3.GetResponse)(rr), true
		},
		// Unless every read would have got err alone, each goes alone. One
		// read can spoil a transaction for all (a permission it lacks, a
		// response over the size limit); and when the connection broke
		// under the batch, clientv3 retries a lone Range on another member,
		// which it never does for a transaction.
		sendAlone: func(err error) bool { return !failsAlike(err) },
	}
}

// rangeKeys reads key with clientv3's Get options (clientv3.WithPrefix, WithRev,
// WithSerializable, …) and returns what clientv3's Get would. Linearizable
// reads of the current revision may share one etcd transaction with
// concurrent reads (see above); reads at a revision and serializable reads
// are sent alone. ctx is bounded by RequestTimeout when it has no deadline.
func (c *EtcdClient) rangeKeys(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	op := clientv3.OpGet(key, opts...)
	if op.Rev() != 0 || op.IsSerializable() {
		return c.rangeAlone(ctx, op)
	}
	return c.reads.do(ctx, op)
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
