package etcd

import (
	"context"

	clientv3 "go.etcd.io/etcd/client/v3"
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
	return WriteStats{Batches: c.writes.stats.batches, Puts: c.writes.stats.n}
}

// putRequest is one put a batch may carry: plain or conditional, no lease.
type putRequest struct {
	key   string
	value []byte
	cond  Condition
}

// newWriter is the batcher of puts.
func newWriter(c *EtcdClient) *batcher[putRequest, WriteResult] {
	return &batcher[putRequest, WriteResult]{
		c:           c,
		maxInflight: maxWriteBatches,
		alone: func(ctx context.Context, p putRequest) (WriteResult, error) {
			return c.putAlone(ctx, p.key, p.value, p.cond)
		},
		op: func(p putRequest) clientv3.Op {
			put := clientv3.OpPut(p.key, string(p.value))
			if p.cond.always() {
				return put
			}
			return clientv3.OpTxn([]clientv3.Cmp{p.cond.cmp(p.key)}, []clientv3.Op{put},
				[]clientv3.Op{clientv3.OpGet(p.key, clientv3.WithKeysOnly())})
		},
		key: func(p putRequest) string { return p.key },
		answer: func(resp *clientv3.TxnResponse, i int) (WriteResult, bool) {
			if txn := resp.Responses[i].GetResponseTxn(); txn != nil {
				return condResult(resp, i), true
			}
			return WriteResult{Revision: resp.Header.Revision}, true
		},
		// Resent put by put only where etcd cannot have applied the batch;
		// any other failure may have been applied, and every put gets it.
		sendAlone: refusedUnapplied,
	}
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

// condResult is what the nested transaction at i of a committed batch did
// for its conditional put.
func condResult(resp *clientv3.TxnResponse, i int) WriteResult {
	txn := resp.Responses[i].GetResponseTxn()
	if txn.Succeeded {
		return WriteResult{Revision: resp.Header.Revision}
	}
	return WriteResult{Failed: true, CurrentModRevision: elseModRevision(txn)}
}
