package etcd

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Write batching.
//
// A put costs one gRPC call and one raft entry, and on a small host the call
// is most of its price in the agent. Concurrent puts without a lease — plain
// or conditional — are therefore sent together as one transaction, by the same
// "natural" rule as reads (batch.go): a put is sent at once, alone, while
// fewer than maxWriteBatches puts or batches are in flight; only puts that
// arrive while that many are in flight wait, and they leave together as soon
// as one of those returns. A lone writer never waits for company.
//
// What a batched put promises is what a lone one does. It is answered only
// once etcd has committed the transaction, so it is as durable as any write.
// Its revision is the new mod_revision of its key. It joins only a batch that
// has not been sent, so the transaction commits inside its request's
// interval: it is linearizable. Concurrent puts may share a revision, as the
// puts of one /v1/txn do; watchers see them as that revision's events, each
// once. Two puts of one key never share a batch (etcd refuses a transaction
// that writes a key twice): the later one goes in another, and as with any
// two concurrent puts of one key, either may commit first; the key keeps
// the value of the one given the higher revision. (A client's puts one
// after the other are never concurrent: each waits for its answer.)
//
// A conditional put (compare-and-swap: If-Match, If-None-Match) goes in a
// batch as a nested transaction of its own — if its condition holds, the
// put; else a keys-only read of its key for the current mod_revision — so
// one failed condition fails only its own put. etcd evaluates every compare
// of a transaction, nested ones included, against the store as it was
// before the transaction's first write (server/etcdserver/txn, compareToPath),
// and a batch holds each key once, so each condition is decided on its own
// key exactly as if its put had been sent alone at the batch's point.
//
// A batch that fails is resent put by put only where etcd cannot have
// applied it — a refusal before the write (too many operations, too large a
// request, a permission one of its keys lacks, a quota). Any other failure,
// a timeout or a broken connection, may have been applied: every put of the
// batch gets it, as a lone put would, and the API answers 504 (outcome
// unknown). A batch is never resent whole.
const maxWriteBatches = 2

// writer batches plain puts (see above).
type writer struct {
	c *EtcdClient

	mu       sync.Mutex
	queue    []*pendingWrite // puts waiting for the next batch, in arrival order
	inflight int             // puts and batches sent and not yet answered
	maxOps   int             // largest batch etcd accepts; 0 until one is refused
	stats    WriteStats
}

// WriteStats counts the batching of puts since the client was built. Puts
// sent alone are not counted.
type WriteStats struct {
	Batches uint64 // transactions of two or more puts
	Puts    uint64 // puts they carried
}

// WriteStats returns how puts have been batched.
func (c *EtcdClient) WriteStats() WriteStats {
	c.writes.mu.Lock()
	defer c.writes.mu.Unlock()
	return c.writes.stats
}

// pendingWrite is one put waiting in a batch. done is closed once res or err
// is set, or alone: the batch was refused unapplied and this put should be
// sent by itself.
type pendingWrite struct {
	key      string
	value    []byte
	cond     Condition
	deadline time.Time // zero: none

	done  chan struct{}
	res   WriteResult
	err   error
	alone bool
}

func (w *writer) put(ctx context.Context, key string, value []byte, cond Condition) (WriteResult, error) {
	w.mu.Lock()
	if w.inflight < maxWriteBatches && len(w.queue) == 0 {
		w.inflight++
		w.mu.Unlock()
		res, err := w.c.putAlone(ctx, key, value, cond)
		w.finished()
		return res, err
	}
	p := &pendingWrite{key: key, value: value, cond: cond, done: make(chan struct{})}
	if d, ok := ctx.Deadline(); ok {
		p.deadline = d
	}
	w.queue = append(w.queue, p)
	w.mu.Unlock()

	select {
	case <-p.done:
	case <-ctx.Done():
		// The batch may still be sent and applied: the outcome is unknown,
		// which is what a context error says of a write.
		return WriteResult{}, ctx.Err()
	}
	if p.alone {
		return w.c.putAlone(ctx, key, value, cond)
	}
	return p.res, p.err
}

// putAlone is one put: one Put call, or with a condition one transaction.
func (c *EtcdClient) putAlone(ctx context.Context, key string, value []byte, cond Condition) (WriteResult, error) {
	var res WriteResult
	err := c.unary(ctx, func(ctx context.Context, cli *clientv3.Client) (err error) {
		res, err = putIf(ctx, cli, key, clientv3.OpPut(key, string(value)), cond)
		return err
	})
	return res, err
}

// finished records that a put or batch came back, and starts the next batch
// if puts are waiting for one.
func (w *writer) finished() {
	w.mu.Lock()
	w.inflight--
	batch := w.take()
	w.mu.Unlock()
	if batch != nil {
		go w.send(batch)
	}
}

// take removes the next batch from the queue — in arrival order, at most one
// put per key, the rest left for later batches — and counts it in
// flight; nil if nothing waits or there is no room. w.mu must be held.
func (w *writer) take() []*pendingWrite {
	if len(w.queue) == 0 || w.inflight >= maxWriteBatches {
		return nil
	}
	limit := maxBatchOps
	if w.maxOps > 0 {
		limit = w.maxOps
	}
	var batch []*pendingWrite
	keys := make(map[string]bool, min(len(w.queue), limit))
	rest := w.queue[:0]
	for _, p := range w.queue {
		if len(batch) < limit && !keys[p.key] {
			keys[p.key] = true
			batch = append(batch, p)
		} else {
			rest = append(rest, p)
		}
	}
	clear(w.queue[len(rest):])
	w.queue = rest
	w.inflight++
	if len(batch) > 1 {
		w.stats.Batches++
		w.stats.Puts += uint64(len(batch))
	}
	return batch
}

// send runs batches until none is waiting.
func (w *writer) send(batch []*pendingWrite) {
	for batch != nil {
		w.sendOne(batch)
		w.mu.Lock()
		w.inflight--
		batch = w.take()
		w.mu.Unlock()
	}
}

// sendOne sends one batch and answers its puts. Like a read batch it runs on
// its own context, bounded by the latest of its puts' deadlines.
func (w *writer) sendOne(batch []*pendingWrite) {
	deadline := time.Now().Add(w.c.requestTimeout())
	if d, ok := latest(batch, func(p *pendingWrite) time.Time { return p.deadline }); ok {
		deadline = d
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()

	if len(batch) == 1 {
		p := batch[0]
		p.res, p.err = w.c.putAlone(ctx, p.key, p.value, p.cond)
		close(p.done)
		return
	}
	ops := make([]clientv3.Op, len(batch))
	for i, p := range batch {
		put := clientv3.OpPut(p.key, string(p.value))
		if p.cond.always() {
			ops[i] = put
			continue
		}
		ops[i] = clientv3.OpTxn([]clientv3.Cmp{p.cond.cmp(p.key)}, []clientv3.Op{put},
			[]clientv3.Op{clientv3.OpGet(p.key, clientv3.WithKeysOnly())})
	}
	var resp *clientv3.TxnResponse
	err := w.c.unary(ctx, func(ctx context.Context, cli *clientv3.Client) (err error) {
		resp, err = cli.Txn(ctx).Then(ops...).Commit()
		return err
	})
	if errors.Is(err, rpctypes.ErrTooManyOps) {
		w.mu.Lock()
		w.maxOps = max(1, len(batch)/2)
		w.mu.Unlock()
	}
	for i, p := range batch {
		switch {
		case err == nil && p.cond.always():
			p.res.Revision = resp.Header.Revision
		case err == nil:
			p.res = condResult(resp, i)
		case refusedUnapplied(err):
			p.alone = true
		default:
			p.err = err
		}
		close(p.done)
	}
}

// condResult is what the nested transaction at i of a committed batch did
// for its conditional put.
func condResult(resp *clientv3.TxnResponse, i int) WriteResult {
	txn := resp.Responses[i].GetResponseTxn()
	if txn.Succeeded {
		return WriteResult{Revision: resp.Header.Revision}
	}
	return WriteResult{Failed: true, CurrentModRevision: elseModRevision(txn)}
}

// refusedUnapplied reports errors with which etcd (or the client, before
// sending) refused a whole transaction without applying any of it, for a
// reason that may belong to one of its puts only.
func refusedUnapplied(err error) bool {
	for _, e := range []error{rpctypes.ErrTooManyOps, rpctypes.ErrRequestTooLarge, rpctypes.ErrPermissionDenied,
		rpctypes.ErrDuplicateKey, rpctypes.ErrNoSpace, rpctypes.ErrTooManyRequests} {
		if errors.Is(err, e) {
			return true
		}
	}
	// The client's own limit on what it sends (MaxCallSendMsgSize): the
	// request never left. (The same code on a received message would come
	// after the write; a transaction of puts has no large answer, but the
	// message is checked all the same.)
	if s, ok := status.FromError(err); ok && s.Code() == codes.ResourceExhausted &&
		strings.Contains(s.Message(), "trying to send") {
		return true
	}
	return false
}
