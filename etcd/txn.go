package etcd

import (
	"context"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Transactions (API.md "Transactions"): compares on keys, then one branch
// of gets, puts and deletes, as one etcd transaction.

// CompareTarget is what a TxnCompare looks at.
type CompareTarget string

// The targets of API.md.
const (
	TargetValue          CompareTarget = "value"
	TargetVersion        CompareTarget = "version"
	TargetCreateRevision CompareTarget = "create_revision"
	TargetModRevision    CompareTarget = "mod_revision"
	TargetLease          CompareTarget = "lease"
)

// TxnCompare is one compare: Target of Key Op (=, !=, <, >) Value (for
// TargetValue) or Number (the others).
type TxnCompare struct {
	Key    string
	Target CompareTarget
	Op     string
	Value  []byte
	Number int64
}

// TxnOpKind is what a TxnOp does.
type TxnOpKind int

// The operations of a branch.
const (
	TxnGet TxnOpKind = iota + 1
	TxnPut
	TxnDelete
)

// TxnOp is one operation of a branch.
type TxnOp struct {
	Kind     TxnOpKind
	Key      string
	Value    []byte // put
	TTL      int64  // put: attach the key to a new lease of this many seconds
	Prefix   bool   // get, delete: every key under Key
	Limit    int64  // get with Prefix
	KeysOnly bool   // get with Prefix
}

// Txn is a transaction: all Compare hold → Success runs, else Failure.
type Txn struct {
	Compare []TxnCompare
	Success []TxnOp
	Failure []TxnOp
}

// TxnOpResult is one operation's result, in the branch's order.
type TxnOpResult struct {
	Kind     TxnOpKind
	Revision int64 // the transaction's revision
	Deleted  int64 // delete
	Count    int64 // get
	More     bool  // get
	KVs      []*mvccpb.KeyValue
}

// TxnResult is what a transaction did.
type TxnResult struct {
	Succeeded bool
	Revision  int64
	Results   []TxnOpResult
}

// Txn runs t as one etcd transaction. Puts with a TTL get a lease per
// distinct TTL, granted before the transaction; leases the branch that ran
// did not use are revoked afterwards (best effort: they expire by
// themselves otherwise). The transaction is not retried: a write that
// timed out may have been applied.
func (c *EtcdClient) Txn(ctx context.Context, t Txn) (TxnResult, error) {
	var res TxnResult
	err := c.unary(ctx, func(ctx context.Context, cli *clientv3.Client) error {
		leases := map[int64]clientv3.LeaseID{}
		for _, branch := range [][]TxnOp{t.Success, t.Failure} {
			for _, op := range branch {
				if op.Kind != TxnPut || op.TTL <= 0 || leases[op.TTL] != 0 {
					continue
				}
				lr, err := cli.Grant(ctx, op.TTL)
				if err != nil {
					return err
				}
				leases[op.TTL] = lr.ID
			}
		}
		cmps := make([]clientv3.Cmp, len(t.Compare))
		for i, cmp := range t.Compare {
			cmps[i] = cmp.clientv3()
		}
		resp, err := cli.Txn(ctx).If(cmps...).Then(ops(t.Success, leases)...).Else(ops(t.Failure, leases)...).Commit()
		if err != nil {
			return err
		}
		ran := t.Failure
		if resp.Succeeded {
			ran = t.Success
		}
		used := map[int64]bool{}
		for _, op := range ran {
			if op.Kind == TxnPut && op.TTL > 0 {
				used[op.TTL] = true
			}
		}
		for ttl, id := range leases {
			if !used[ttl] {
				rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
				cli.Revoke(rctx, id)
				cancel()
			}
		}
		res = TxnResult{Succeeded: resp.Succeeded, Revision: resp.Header.Revision, Results: make([]TxnOpResult, len(ran))}
		for i, r := range resp.Responses {
			out := TxnOpResult{Kind: ran[i].Kind, Revision: resp.Header.Revision}
			switch {
			case r.GetResponseRange() != nil:
				rr := r.GetResponseRange()
				out.Count, out.More, out.KVs = rr.Count, rr.More, rr.Kvs
			case r.GetResponseDeleteRange() != nil:
				out.Deleted = r.GetResponseDeleteRange().Deleted
			}
			res.Results[i] = out
		}
		return nil
	})
	return res, err
}

func (cmp TxnCompare) clientv3() clientv3.Cmp {
	switch cmp.Target {
	case TargetValue:
		return clientv3.Compare(clientv3.Value(cmp.Key), cmp.Op, string(cmp.Value))
	case TargetVersion:
		return clientv3.Compare(clientv3.Version(cmp.Key), cmp.Op, cmp.Number)
	case TargetCreateRevision:
		return clientv3.Compare(clientv3.CreateRevision(cmp.Key), cmp.Op, cmp.Number)
	case TargetLease:
		return clientv3.Compare(clientv3.LeaseValue(cmp.Key), cmp.Op, cmp.Number)
	}
	return clientv3.Compare(clientv3.ModRevision(cmp.Key), cmp.Op, cmp.Number)
}

func ops(branch []TxnOp, leases map[int64]clientv3.LeaseID) []clientv3.Op {
	out := make([]clientv3.Op, len(branch))
	for i, op := range branch {
		var opts []clientv3.OpOption
		switch op.Kind {
		case TxnGet:
			if op.Prefix {
				opts = append(opts, clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
				if op.Limit > 0 {
					opts = append(opts, clientv3.WithLimit(op.Limit))
				}
				if op.KeysOnly {
					opts = append(opts, clientv3.WithKeysOnly())
				}
			}
			out[i] = clientv3.OpGet(op.Key, opts...)
		case TxnPut:
			if op.TTL > 0 {
				opts = append(opts, clientv3.WithLease(leases[op.TTL]))
			}
			out[i] = clientv3.OpPut(op.Key, string(op.Value), opts...)
		case TxnDelete:
			if op.Prefix {
				opts = append(opts, clientv3.WithPrefix())
			}
			out[i] = clientv3.OpDelete(op.Key, opts...)
		}
	}
	return out
}
