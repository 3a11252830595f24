package server

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"udp_iaasd/access"
	"udp_iaasd/api"
	"udp_iaasd/etcd"
)

// maxTxnOps is etcd's default --max-txn-ops: more compares, or more
// operations in a branch, are refused here with a clear message (a cluster
// set lower refuses them itself, which is also a 400).
const maxTxnOps = 128

// The body of POST /v1/txn (API.md "Transactions"). Pointers tell a field
// left out from one given empty.
type txnBody struct {
	Compare []txnCompareJSON `json:"compare"`
	Success []txnOpJSON      `json:"success"`
	Failure []txnOpJSON      `json:"failure"`
}

type txnCompareJSON struct {
	Key         *string         `json:"key"`
	KeyBase64   *string         `json:"key_base64"`
	Target      string          `json:"target"`
	Op          string          `json:"op"`
	Value       json.RawMessage `json:"value"`
	ValueBase64 *string         `json:"value_base64"`
}

type txnOpJSON struct {
	Get    *txnArgs `json:"get"`
	Put    *txnArgs `json:"put"`
	Delete *txnArgs `json:"delete"`
}

type txnArgs struct {
	Key         *string `json:"key"`
	KeyBase64   *string `json:"key_base64"`
	Value       *string `json:"value"`
	ValueBase64 *string `json:"value_base64"`
	TTL         *int64  `json:"ttl"`
	Prefix      bool    `json:"prefix"`
	Limit       *int64  `json:"limit"`
	KeysOnly    bool    `json:"keys_only"`
}

func (s *Server) serveTxn(w http.ResponseWriter, r *http.Request) {
	if err := s.txn(w, r); err != nil {
		s.writeAPIError(w, r, err)
	}
}

func (s *Server) txn(w http.ResponseWriter, r *http.Request) error {
	if _, err := parseParams(r); err != nil {
		return err
	}
	max := s.limits.Load().MaxTxnBytes
	raw, err := s.readBody(w, r, max, "transaction body is over limits.max_txn_bytes (%d bytes)")
	if err != nil {
		return err
	}
	t, err := s.parseTxn(r, raw)
	if err != nil {
		return err
	}
	ctx, cancel := s.withTimeout(r)
	defer cancel()
	res, err := s.etcd.Txn(ctx, t)
	if err != nil {
		return err
	}
	for _, op := range append(t.Success, t.Failure...) {
		if op.Kind != etcd.TxnGet {
			s.cache.Wrote(op.Key, res.Revision)
		}
	}
	w.Header().Set("X-Etcd-Revision", strconv.FormatInt(res.Revision, 10))
	ran := t.Failure
	if res.Succeeded {
		ran = t.Success
	}
	writeBody(w, http.StatusOK, "application/json", appendTxnResult(nil, res, ran))
	return nil
}

// parseTxn decodes and checks a body strictly, and checks every key of it
// — compares and both branches, whichever runs — against the access rules.
func (s *Server) parseTxn(r *http.Request, raw []byte) (etcd.Txn, error) {
	var body txnBody
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil {
		return etcd.Txn{}, badRequest("malformed transaction body: " + err.Error())
	}
	if dec.More() {
		return etcd.Txn{}, badRequest("malformed transaction body: more than one JSON value")
	}
	if len(body.Compare) > maxTxnOps || len(body.Success) > maxTxnOps || len(body.Failure) > maxTxnOps {
		return etcd.Txn{}, badRequest(fmt.Sprintf("too many operations: at most %d compares and %d operations per branch", maxTxnOps, maxTxnOps))
	}
	var t etcd.Txn
	for i, c := range body.Compare {
		cmp, err := parseCompare(c)
		if err != nil {
			return etcd.Txn{}, badRequest(fmt.Sprintf("compare[%d]: %v", i, err))
		}
		if err := s.authorize(r, access.Read, cmp.Key, false); err != nil {
			return etcd.Txn{}, err
		}
		t.Compare = append(t.Compare, cmp)
	}
	var err error
	if t.Success, err = s.parseBranch(r, "success", body.Success); err != nil {
		return etcd.Txn{}, err
	}
	if t.Failure, err = s.parseBranch(r, "failure", body.Failure); err != nil {
		return etcd.Txn{}, err
	}
	return t, nil
}

func (s *Server) parseBranch(r *http.Request, name string, in []txnOpJSON) ([]etcd.TxnOp, error) {
	out := make([]etcd.TxnOp, 0, len(in))
	written := map[string]int{}
	for i, o := range in {
		op, err := s.parseOp(o)
		if err != nil {
			return nil, badRequest(fmt.Sprintf("%s[%d]: %v", name, i, err))
		}
		if op.Kind != etcd.TxnGet && !op.Prefix {
			if j, dup := written[op.Key]; dup {
				return nil, badRequest(fmt.Sprintf("%s[%d]: key %q is already written by %s[%d]; etcd allows one write per key in a transaction", name, i, op.Key, name, j))
			}
			written[op.Key] = i
		}
		aop := access.Write
		if op.Kind == etcd.TxnGet {
			aop = access.Read
		}
		if err := s.authorize(r, aop, op.Key, op.Prefix); err != nil {
			return nil, err
		}
		out = append(out, op)
	}
	return out, nil
}

func (s *Server) parseOp(o txnOpJSON) (etcd.TxnOp, error) {
	var (
		op   etcd.TxnOp
		args *txnArgs
		n    int
	)
	if o.Get != nil {
		op.Kind, args, n = etcd.TxnGet, o.Get, n+1
	}
	if o.Put != nil {
		op.Kind, args, n = etcd.TxnPut, o.Put, n+1
	}
	if o.Delete != nil {
		op.Kind, args, n = etcd.TxnDelete, o.Delete, n+1
	}
	if n != 1 {
		return op, errors.New(`each operation is an object with exactly one of "get", "put", "delete"`)
	}
	key, err := txnKey(args.Key, args.KeyBase64)
	if err != nil {
		return op, err
	}
	if key == "" && !args.Prefix {
		return op, errors.New("empty key (allowed only with prefix)")
	}
	if max := s.limits.Load().MaxKeyBytes; len(key) > max {
		return op, fmt.Errorf("key is %d bytes, over limits.max_key_bytes (%d)", len(key), max)
	}
	op.Key, op.Prefix = key, args.Prefix
	switch op.Kind {
	case etcd.TxnPut:
		if args.Prefix || args.Limit != nil || args.KeysOnly {
			return op, errors.New("put takes key, value (or value_base64) and ttl only")
		}
		if op.Value, err = valueOf(args.Value, args.ValueBase64, true); err != nil {
			return op, err
		}
		if len(op.Value) > s.limits.Load().MaxValueBytes {
			return op, fmt.Errorf("value is over limits.max_value_bytes (%d bytes)", s.limits.Load().MaxValueBytes)
		}
		if args.TTL != nil {
			if *args.TTL < 1 {
				return op, fmt.Errorf("ttl must be a whole number of seconds of at least 1, got %d", *args.TTL)
			}
			op.TTL = *args.TTL
		}
	case etcd.TxnDelete:
		if args.Value != nil || args.ValueBase64 != nil || args.TTL != nil || args.Limit != nil || args.KeysOnly {
			return op, errors.New("delete takes key and prefix only")
		}
	case etcd.TxnGet:
		if args.Value != nil || args.ValueBase64 != nil || args.TTL != nil {
			return op, errors.New("get takes key, prefix, limit and keys_only only")
		}
		if (args.Limit != nil || args.KeysOnly) && !args.Prefix {
			return op, errors.New("limit and keys_only apply only with prefix")
		}
		if args.Limit != nil {
			if *args.Limit < 1 {
				return op, fmt.Errorf("limit must be at least 1, got %d", *args.Limit)
			}
			op.Limit = *args.Limit
		}
		op.KeysOnly = args.KeysOnly
	}
	return op, nil
}

func parseCompare(c txnCompareJSON) (etcd.TxnCompare, error) {
	key, err := txnKey(c.Key, c.KeyBase64)
	if err != nil {
		return etcd.TxnCompare{}, err
	}
	if key == "" {
		return etcd.TxnCompare{}, errors.New("empty key")
	}
	cmp := etcd.TxnCompare{Key: key, Target: etcd.CompareTarget(c.Target), Op: c.Op}
	switch c.Op {
	case "=", "!=", "<", ">":
	default:
		return cmp, fmt.Errorf(`op must be one of "=", "!=", "<", ">", got %q`, c.Op)
	}
	switch cmp.Target {
	case etcd.TargetValue:
		var s *string
		if len(c.Value) > 0 {
			if err := json.Unmarshal(c.Value, &s); err != nil || s == nil {
				return cmp, errors.New(`target "value" compares with a string "value" (or "value_base64")`)
			}
		}
		if cmp.Value, err = valueOf(s, c.ValueBase64, true); err != nil {
			return cmp, err
		}
	case etcd.TargetVersion, etcd.TargetCreateRevision, etcd.TargetModRevision, etcd.TargetLease:
		if c.ValueBase64 != nil {
			return cmp, fmt.Errorf("target %q compares with a number \"value\", not value_base64", c.Target)
		}
		if err := json.Unmarshal(c.Value, &cmp.Number); err != nil || len(c.Value) == 0 {
			return cmp, fmt.Errorf("target %q compares with a whole number \"value\"", c.Target)
		}
	default:
		return cmp, fmt.Errorf(`target must be one of "value", "version", "create_revision", "mod_revision", "lease", got %q`, c.Target)
	}
	return cmp, nil
}

// txnKey is a key given as "key" or "key_base64", exactly one.
func txnKey(key, key64 *string) (string, error) {
	switch {
	case key != nil && key64 != nil:
		return "", errors.New(`give "key" or "key_base64", not both`)
	case key != nil:
		return *key, nil
	case key64 != nil:
		b, err := base64.StdEncoding.DecodeString(*key64)
		if err != nil {
			return "", fmt.Errorf("key_base64: %v", err)
		}
		return string(b), nil
	}
	return "", errors.New(`missing "key" (or "key_base64")`)
}

// valueOf is a value given as "value" or "value_base64" (at most one; with
// need, exactly one).
func valueOf(v, v64 *string, need bool) ([]byte, error) {
	switch {
	case v != nil && v64 != nil:
		return nil, errors.New(`give "value" or "value_base64", not both`)
	case v != nil:
		return []byte(*v), nil
	case v64 != nil:
		b, err := base64.StdEncoding.DecodeString(*v64)
		if err != nil {
			return nil, fmt.Errorf("value_base64: %v", err)
		}
		return b, nil
	case need:
		return nil, errors.New(`missing "value" (or "value_base64")`)
	}
	return nil, nil
}

// appendTxnResult writes the answer: one result per operation of the
// branch that ran, shaped like the single-key answers.
func appendTxnResult(b []byte, res etcd.TxnResult, ran []etcd.TxnOp) []byte {
	b = append(b, `{"succeeded":`...)
	b = strconv.AppendBool(b, res.Succeeded)
	b = append(b, ',')
	b = appendIntField(b, "revision", res.Revision)
	b = append(b, `,"results":[`...)
	for i, r := range res.Results {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, '{')
		b = appendIntField(b, "revision", r.Revision)
		switch r.Kind {
		case etcd.TxnDelete:
			b = append(b, ',')
			b = appendIntField(b, "deleted", r.Deleted)
		case etcd.TxnGet:
			b = append(b, ',')
			b = appendIntField(b, "count", r.Count)
			b = append(b, `,"more":`...)
			b = strconv.AppendBool(b, r.More)
			b = append(b, `,"kvs":[`...)
			for j, kv := range r.KVs {
				if j > 0 {
					b = append(b, ',')
				}
				b = appendKV(b, kv, !ran[i].KeysOnly)
			}
			b = append(b, ']')
		}
		b = append(b, '}')
	}
	return append(b, "]}\n"...)
}

// readBody reads a request body of at most max bytes, refusing a larger
// one (413, tooLargeMsg) before reading it when Content-Length says so and
// while reading otherwise. A client that trickles its body holds a
// connection, so the read is bounded by etcd.request_timeout.
func (s *Server) readBody(w http.ResponseWriter, r *http.Request, max int, tooLargeFormat string) ([]byte, error) {
	tooLarge := func() error { return apiErr(api.CodeTooLarge, fmt.Sprintf(tooLargeFormat, max)) }
	if r.ContentLength > int64(max) {
		return nil, tooLarge()
	}
	http.NewResponseController(w).SetReadDeadline(time.Now().Add(s.etcd.RequestTimeout()))
	if r.ContentLength >= 0 {
		// The length is known and within the limit, and net/http's body
		// reader stops at it: read exactly that, into one allocation.
		b := make([]byte, r.ContentLength)
		if _, err := io.ReadFull(r.Body, b); err != nil {
			return nil, badRequest("reading the request body: " + err.Error())
		}
		return b, nil
	}
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, int64(max)))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, tooLarge()
		}
		return nil, badRequest("reading the request body: " + err.Error())
	}
	return b, nil
}
