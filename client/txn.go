package client

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
)

// Txn is a transaction (API.md "Transactions"): when every Compare holds,
// Success runs, else Failure — one etcd transaction.
type Txn struct {
	Compare []Compare
	Success []Op
	Failure []Op
}

// Compare is one condition of a transaction. Build it with CompareValue,
// CompareVersion, CompareCreateRevision, CompareModRevision or
// CompareLease; op is "=", "!=", "<" or ">".
type Compare struct {
	key    string
	target string
	op     string
	value  []byte
	number int64
}

// CompareValue compares key's value with value.
func CompareValue(key, op string, value []byte) Compare {
	return Compare{key: key, target: "value", op: op, value: value}
}

// CompareVersion compares key's version (0: absent) with v.
func CompareVersion(key, op string, v int64) Compare {
	return Compare{key: key, target: "version", op: op, number: v}
}

// CompareCreateRevision compares key's create_revision (0: absent) with rev.
func CompareCreateRevision(key, op string, rev int64) Compare {
	return Compare{key: key, target: "create_revision", op: op, number: rev}
}

// CompareModRevision compares key's mod_revision (0: absent) with rev.
func CompareModRevision(key, op string, rev int64) Compare {
	return Compare{key: key, target: "mod_revision", op: op, number: rev}
}

// CompareLease compares key's lease (0: none) with lease.
func CompareLease(key, op string, lease int64) Compare {
	return Compare{key: key, target: "lease", op: op, number: lease}
}

// Op is one operation of a branch: OpGet, OpPut or OpDelete.
type Op struct {
	kind     string
	key      string
	value    []byte
	ttl      int64
	prefix   bool
	limit    int64
	keysOnly bool
}

// OpGet reads key; with WithPrefix, Limit and KeysOnly as for List.
func OpGet(key string, opts ...Option) Op {
	o := apply(opts)
	op := Op{kind: "get", key: key, prefix: o.q.Has("prefix"), keysOnly: o.q.Has("keys_only")}
	fmt.Sscan(o.q.Get("limit"), &op.limit)
	return op
}

// OpPut writes value at key; with TTL, on a new lease of that TTL.
func OpPut(key string, value []byte, opts ...Option) Op {
	o := apply(opts)
	op := Op{kind: "put", key: key, value: value}
	fmt.Sscan(o.q.Get("ttl"), &op.ttl)
	return op
}

// OpDelete deletes key (every key under it WithPrefix).
func OpDelete(key string, opts ...Option) Op {
	return Op{kind: "delete", key: key, prefix: apply(opts).q.Has("prefix")}
}

// TxnResponse is what a transaction did: which branch ran (Succeeded: the
// compares held), its revision, and one result per operation of that
// branch, in order.
type TxnResponse struct {
	Succeeded bool
	Revision  int64
	Results   []TxnResult
}

// TxnResult is one operation's result: Deleted for a delete; Count, More
// and KVs for a get.
type TxnResult struct {
	Revision int64
	Deleted  int64
	Count    int64
	More     bool
	KVs      []KV
}

// Txn runs t. A transaction whose compares did not hold is not an error
// (Succeeded is false). It is never retried once sent: it may have been
// applied.
func (c *Client) Txn(ctx context.Context, t Txn) (*TxnResponse, error) {
	body, err := json.Marshal(t.wire())
	if err != nil {
		return nil, fmt.Errorf("client: encode txn: %w", err)
	}
	resp, err := c.do(ctx, http.MethodPost, "/v1/txn", nil, http.Header{"Content-Type": {"application/json"}}, body)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var raw struct {
		Succeeded bool  `json:"succeeded"`
		Revision  int64 `json:"revision"`
		Results   []struct {
			Revision int64   `json:"revision"`
			Deleted  int64   `json:"deleted"`
			Count    int64   `json:"count"`
			More     bool    `json:"more"`
			KVs      []rawKV `json:"kvs"`
		} `json:"results"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&raw); err != nil {
		return nil, fmt.Errorf("client: decode txn answer: %w", err)
	}
	out := &TxnResponse{Succeeded: raw.Succeeded, Revision: raw.Revision, Results: make([]TxnResult, len(raw.Results))}
	for i, r := range raw.Results {
		res := TxnResult{Revision: r.Revision, Deleted: r.Deleted, Count: r.Count, More: r.More}
		for _, rk := range r.KVs {
			kv, err := rk.decode()
			if err != nil {
				return nil, err
			}
			res.KVs = append(res.KVs, kv)
		}
		out.Results[i] = res
	}
	return out, nil
}

// TxnJSON sends a /v1/txn body as it is (API.md's JSON) and returns the
// answer's JSON and whether the compares held — for tools that pass
// transactions through, such as `endpointd kv txn`.
func (c *Client) TxnJSON(ctx context.Context, body []byte) (answer []byte, succeeded bool, err error) {
	resp, err := c.do(ctx, http.MethodPost, "/v1/txn", nil, http.Header{"Content-Type": {"application/json"}}, body)
	if err != nil {
		return nil, false, err
	}
	defer resp.Body.Close()
	answer, err = io.ReadAll(resp.Body)
	if err != nil {
		return nil, false, fmt.Errorf("client: read txn answer: %w", err)
	}
	var head struct {
		Succeeded bool `json:"succeeded"`
	}
	if err := json.Unmarshal(answer, &head); err != nil {
		return nil, false, fmt.Errorf("client: decode txn answer: %w", err)
	}
	return answer, head.Succeeded, nil
}

// wire is t as API.md's JSON. Keys and values go base64, so that any bytes
// pass exactly.
func (t Txn) wire() map[string]any {
	b64 := base64.StdEncoding.EncodeToString
	cmps := make([]map[string]any, len(t.Compare))
	for i, c := range t.Compare {
		m := map[string]any{"key_base64": b64([]byte(c.key)), "target": c.target, "op": c.op}
		if c.target == "value" {
			m["value_base64"] = b64(c.value)
		} else {
			m["value"] = c.number
		}
		cmps[i] = m
	}
	branch := func(ops []Op) []map[string]any {
		out := make([]map[string]any, len(ops))
		for i, op := range ops {
			args := map[string]any{"key_base64": b64([]byte(op.key))}
			switch op.kind {
			case "put":
				args["value_base64"] = b64(op.value)
				if op.ttl > 0 {
					args["ttl"] = op.ttl
				}
			case "get":
				if op.limit > 0 {
					args["limit"] = op.limit
				}
				if op.keysOnly {
					args["keys_only"] = true
				}
				fallthrough
			case "delete":
				if op.prefix {
					args["prefix"] = true
				}
			}
			out[i] = map[string]any{op.kind: args}
		}
		return out
	}
	return map[string]any{"compare": cmps, "success": branch(t.Success), "failure": branch(t.Failure)}
}
