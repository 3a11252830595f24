package etcd

import (
	"context"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// The typed operations of the agent's KV API (API.md): what a read, a
// conditional or TTL write, and a delete are in etcd terms, decided here
// so that no caller builds clientv3 operations or transactions itself.

// ReadOptions describe a read: one key, or every key under a prefix.
type ReadOptions struct {
	Prefix       bool  // every key starting with the key, sorted by key
	Limit        int64 // with Prefix: at most this many (0: all)
	KeysOnly     bool  // with Prefix: without values
	Revision     int64 // at this store revision; 0: the current one
	Serializable bool  // from one member, without a quorum round trip
	CountOnly    bool  // only Count and Revision, no keys
}

// ReadResult is what a read found at Revision (the store's revision when it
// was read, or the one asked for).
type ReadResult struct {
	Revision int64
	Count    int64 // keys that match in the store; more than len(KVs) when More
	More     bool  // Limit cut the list
	KVs      []*mvccpb.KeyValue
}

// Read reads key, or the keys under it, as o says. Linearizable reads of the
// current revision may share a transaction with concurrent ones (batch.go).
func (c *EtcdClient) Read(ctx context.Context, key string, o ReadOptions) (ReadResult, error) {
	var opts []clientv3.OpOption
	if o.Revision > 0 {
		opts = append(opts, clientv3.WithRev(o.Revision))
	}
	if o.Serializable {
		opts = append(opts, clientv3.WithSerializable())
	}
	if o.CountOnly {
		opts = append(opts, clientv3.WithCountOnly())
	}
	if o.Prefix {
		opts = append(opts, clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
		if o.Limit > 0 {
			opts = append(opts, clientv3.WithLimit(o.Limit))
		}
		if o.KeysOnly {
			opts = append(opts, clientv3.WithKeysOnly())
		}
	}
	resp, err := c.rangeKeys(ctx, key, opts...)
	if err != nil {
		return ReadResult{}, err
	}
	return ReadResult{Revision: resp.Header.Revision, Count: resp.Count, More: resp.More, KVs: resp.Kvs}, nil
}

// Condition is a precondition on one key, checked in the same etcd
// transaction as the write it guards. The zero Condition always holds.
type Condition struct {
	Exists      bool  // the key exists
	Absent      bool  // the key does not exist
	ModRevision int64 // the key's mod_revision is this (when > 0)
}

func (cond Condition) always() bool { return cond == Condition{} }

func (cond Condition) cmp(key string) clientv3.Cmp {
	switch {
	case cond.Exists:
		return clientv3.Compare(clientv3.CreateRevision(key), ">", 0)
	case cond.Absent:
		return clientv3.Compare(clientv3.CreateRevision(key), "=", 0)
	}
	return clientv3.Compare(clientv3.ModRevision(key), "=", cond.ModRevision)
}

// WriteResult is what a write did.
type WriteResult struct {
	// Revision is the store revision the write made (a put's key has it as
	// its mod_revision). 0 when Failed.
	Revision int64
	// Failed: the condition did not hold and nothing was written;
	// CurrentModRevision is the key's mod_revision then (0: absent).
	Failed             bool
	CurrentModRevision int64
	// Deleted counts the keys a delete removed.
	Deleted int64
}

// PutOptions shape a put.
type PutOptions struct {
	// TTL, when positive, attaches the key to a new lease of that many
	// seconds (etcd raises it to its minimum lease TTL).
	TTL int64
	If  Condition
}

// PutKV writes value at key as o says. A put without a TTL, conditional or
// not, may share one transaction with concurrent ones (writebatch.go). With
// a condition, the check and the write are one transaction, and its result
// decides Failed. A lease granted
// for a write whose condition failed is revoked (best effort: it expires by
// itself otherwise).
func (c *EtcdClient) PutKV(ctx context.Context, key string, value []byte, o PutOptions) (WriteResult, error) {
	if o.TTL <= 0 {
		// It may share a transaction with concurrent puts (writebatch.go).
		return c.writes.do(ctx, putRequest{key: key, value: value, cond: o.If})
	}
	var res WriteResult
	err := c.unary(ctx, func(ctx context.Context, cli *clientv3.Client) error {
		lr, err := cli.Grant(ctx, o.TTL)
		if err != nil {
			return err
		}
		res, err = putIf(ctx, cli, key, clientv3.OpPut(key, string(value), clientv3.WithLease(lr.ID)), o.If)
		if err == nil && res.Failed {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
			defer cancel()
			cli.Revoke(rctx, lr.ID)
		}
		return err
	})
	return res, err
}

// putIf sends put, a put of key, as one call: alone when cond always
// holds, else in a transaction with cond.
func putIf(ctx context.Context, cli *clientv3.Client, key string, put clientv3.Op, cond Condition) (WriteResult, error) {
	if cond.always() {
		resp, err := cli.Do(ctx, put)
		if err != nil {
			return WriteResult{}, err
		}
		return WriteResult{Revision: resp.Put().Header.Revision}, nil
	}
	resp, current, err := conditional(ctx, cli, cond.cmp(key), key, put)
	switch {
	case err != nil:
		return WriteResult{}, err
	case !resp.Succeeded:
		return WriteResult{Failed: true, CurrentModRevision: current}, nil
	}
	return WriteResult{Revision: resp.Header.Revision}, nil
}

// DeleteKV deletes key, or every key under it with prefix, if cond holds
// (a condition applies to a single key only; with prefix it must be the
// zero Condition).
func (c *EtcdClient) DeleteKV(ctx context.Context, key string, prefix bool, cond Condition) (WriteResult, error) {
	var res WriteResult
	err := c.unary(ctx, func(ctx context.Context, cli *clientv3.Client) error {
		if cond.always() {
			var opts []clientv3.OpOption
			if prefix {
				opts = append(opts, clientv3.WithPrefix())
			}
			resp, err := cli.Delete(ctx, key, opts...)
			if err != nil {
				return err
			}
			res.Revision, res.Deleted = resp.Header.Revision, resp.Deleted
			return nil
		}
		resp, current, err := conditional(ctx, cli, cond.cmp(key), key, clientv3.OpDelete(key))
		if err != nil {
			return err
		}
		if !resp.Succeeded {
			res.Failed, res.CurrentModRevision = true, current
			return nil
		}
		res.Revision, res.Deleted = resp.Header.Revision, resp.Responses[0].GetResponseDeleteRange().Deleted
		return nil
	})
	return res, err
}

// conditional runs op only if cmp holds, in one etcd transaction. When cmp
// does not hold it returns the key's current mod_revision (0: absent).
func conditional(ctx context.Context, cli *clientv3.Client, cmp clientv3.Cmp, key string, op clientv3.Op) (*clientv3.TxnResponse, int64, error) {
	resp, err := cli.Txn(ctx).If(cmp).Then(op).Else(clientv3.OpGet(key, clientv3.WithKeysOnly())).Commit()
	if err != nil || resp.Succeeded {
		return resp, 0, err
	}
	return resp, elseModRevision((*pb.TxnResponse)(resp)), nil
}

// elseModRevision is the mod_revision that the else branch of a failed
// conditional (one keys-only read of its key) found; 0 if no key.
func elseModRevision(txn *pb.TxnResponse) int64 {
	if kvs := txn.Responses[0].GetResponseRange().GetKvs(); len(kvs) > 0 {
		return kvs[0].ModRevision
	}
	return 0
}

// CompactRevision returns the store's compaction point, learned by opening
// a watch at rev, a revision known to be compacted: etcd answers such a
// watch with the compaction revision (a range error does not carry it). 0
// when it cannot tell.
func (c *EtcdClient) CompactRevision(ctx context.Context, rev int64) int64 {
	ctx, cancel := c.bound(ctx)
	defer cancel()
	wch, err := c.watch(clientv3.WithRequireLeader(ctx), "\x00", clientv3.WithRev(rev))
	if err != nil {
		return 0
	}
	for resp := range wch {
		if resp.CompactRevision != 0 {
			return resp.CompactRevision
		}
		if resp.Err() != nil {
			return 0
		}
	}
	return 0
}
