package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"udp_iaasd/api"
)

func (s *Server) serveKV(w http.ResponseWriter, r *http.Request, rawKey string) {
	var err error
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		err = s.getKV(w, r, rawKey)
	case http.MethodPut:
		err = s.putKV(w, r, rawKey)
	case http.MethodDelete:
		err = s.deleteKV(w, r, rawKey)
	default:
		methodIs(w, r, http.MethodGet, http.MethodPut, http.MethodDelete)
	}
	if err != nil {
		s.writeAPIError(w, r, err)
	}
}

// params is a request's query, checked against the parameters its method
// accepts: unknown and repeated parameters are errors.
type params url.Values

func parseParams(r *http.Request, allowed ...string) (params, error) {
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return nil, badRequest("malformed query string: " + err.Error())
	}
	for name, vs := range q {
		known := false
		for _, a := range allowed {
			known = known || a == name
		}
		if !known {
			if len(allowed) == 0 {
				return nil, badRequest(fmt.Sprintf("unknown query parameter %q: %s %s takes none", name, r.Method, "this path"))
			}
			return nil, badRequest(fmt.Sprintf("unknown query parameter %q for %s (accepted: %s)", name, r.Method, strings.Join(allowed, ", ")))
		}
		if len(vs) > 1 {
			return nil, badRequest(fmt.Sprintf("query parameter %q given %d times", name, len(vs)))
		}
	}
	return params(q), nil
}

func (p params) has(name string) bool { _, ok := p[name]; return ok }

// flag reads a boolean parameter: bare (?prefix) or =true means true.
func (p params) flag(name string) (bool, error) {
	vs, ok := p[name]
	if !ok {
		return false, nil
	}
	switch vs[0] {
	case "", "true", "1":
		return true, nil
	case "false", "0":
		return false, nil
	}
	return false, badRequest(fmt.Sprintf("query parameter %q must be true or false, got %q", name, vs[0]))
}

// positive reads a parameter that must be a whole number ≥ 1.
func (p params) positive(name string) (int64, bool, error) {
	vs, ok := p[name]
	if !ok {
		return 0, false, nil
	}
	n, err := strconv.ParseInt(vs[0], 10, 64)
	if err != nil || n < 1 {
		return 0, false, badRequest(fmt.Sprintf("query parameter %q must be a whole number of at least 1, got %q", name, vs[0]))
	}
	return n, true, nil
}

// key decodes a raw path key and checks it against the limits. An empty key
// is allowed only with prefix.
func (s *Server) key(raw string, prefix bool) (string, error) {
	key, err := url.PathUnescape(raw)
	if err != nil {
		return "", badRequest("malformed percent-encoding in key: " + err.Error())
	}
	if key == "" && !prefix {
		return "", badRequest("empty key: put the key after /v1/kv/ (an empty key is only allowed with ?prefix)")
	}
	if max := s.limits.Load().MaxKeyBytes; len(key) > max {
		return "", badRequest(fmt.Sprintf("key is %d bytes, over limits.max_key_bytes (%d)", len(key), max))
	}
	return key, nil
}

// keyRequest parses what every key path shares: the query, checked against
// the parameters the method accepts; the prefix flag; and the key.
func (s *Server) keyRequest(r *http.Request, rawKey string, allowed ...string) (p params, key string, prefix bool, err error) {
	if p, err = parseParams(r, allowed...); err != nil {
		return nil, "", false, err
	}
	if prefix, err = p.flag("prefix"); err != nil {
		return nil, "", false, err
	}
	key, err = s.key(rawKey, prefix)
	return p, key, prefix, err
}

// withTimeout bounds one request's etcd work by etcd.request_timeout.
func (s *Server) withTimeout(r *http.Request) (context.Context, context.CancelFunc) {
	return context.WithTimeout(r.Context(), s.limits.Load().RequestTimeout)
}

func (s *Server) getKV(w http.ResponseWriter, r *http.Request, rawKey string) error {
	p, key, prefix, err := s.keyRequest(r, rawKey, "prefix", "limit", "keys_only", "rev", "serializable")
	if err != nil {
		return err
	}
	limit, hasLimit, err := p.positive("limit")
	if err != nil {
		return err
	}
	keysOnly, err := p.flag("keys_only")
	if err != nil {
		return err
	}
	if !prefix && (hasLimit || p.has("keys_only")) {
		return badRequest("limit and keys_only apply only to prefix listings; add ?prefix")
	}
	rev, _, err := p.positive("rev")
	if err != nil {
		return err
	}
	serializable, err := p.flag("serializable")
	if err != nil {
		return err
	}

	if serializable && rev == 0 && s.cache != nil && s.fromCache(w, key, prefix, limit, keysOnly) {
		return nil
	}
	var opts []clientv3.OpOption
	if rev > 0 {
		opts = append(opts, clientv3.WithRev(rev))
	}
	if serializable {
		opts = append(opts, clientv3.WithSerializable())
	}
	if prefix {
		opts = append(opts, clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
		if hasLimit {
			opts = append(opts, clientv3.WithLimit(limit))
		}
		if keysOnly {
			opts = append(opts, clientv3.WithKeysOnly())
		}
	}
	ctx, cancel := s.withTimeout(r)
	defer cancel()
	resp, err := s.etcd.Range(ctx, key, opts...)
	if err != nil {
		return s.readError(r, err, rev)
	}
	if prefix {
		writeListing(w, resp.Header.Revision, resp.Count, resp.More, resp.Kvs, keysOnly)
		return nil
	}
	var kv *mvccpb.KeyValue
	if len(resp.Kvs) > 0 {
		kv = resp.Kvs[0]
	}
	return writeValue(w, key, resp.Header.Revision, kv)
}

// fromCache answers a serializable read from the cache, if it can; it
// reports whether it did.
func (s *Server) fromCache(w http.ResponseWriter, key string, prefix bool, limit int64, keysOnly bool) bool {
	if prefix {
		kvs, count, more, rev, ok := s.cache.List(key, limit)
		if ok {
			w.Header().Set("X-Endpointd-Cache", "hit")
			writeListing(w, rev, count, more, kvs, keysOnly)
		}
		return ok
	}
	kv, rev, ok := s.cache.Get(key)
	if ok {
		w.Header().Set("X-Endpointd-Cache", "hit")
		if err := writeValue(w, key, rev, kv); err != nil {
			writeError(w, api.CodeNotFound, err.Error(), nil)
		}
	}
	return ok
}

// writeListing writes a prefix listing (API.md) read at revision rev.
func writeListing(w http.ResponseWriter, rev, count int64, more bool, kvs []*mvccpb.KeyValue, keysOnly bool) {
	w.Header().Set("X-Etcd-Revision", strconv.FormatInt(rev, 10))
	size := 64
	for _, kv := range kvs {
		size += len(kv.Key) + len(kv.Value) + 112 // field names and numbers; base64 may grow it once
	}
	b := make([]byte, 0, size)
	b = append(b, '{')
	b = appendIntField(b, "revision", rev)
	b = append(b, ',')
	b = appendIntField(b, "count", count)
	b = append(b, `,"more":`...)
	b = strconv.AppendBool(b, more)
	b = append(b, `,"kvs":[`...)
	for i, kv := range kvs {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendKV(b, kv, !keysOnly)
	}
	b = append(b, "]}\n"...)
	writeBody(w, http.StatusOK, "application/json", b)
}

// writeValue writes a single-key read at revision rev: the raw value with
// its metadata headers, or 404 (an *apiError) when kv is nil.
func writeValue(w http.ResponseWriter, key string, rev int64, kv *mvccpb.KeyValue) error {
	h := w.Header()
	if kv == nil {
		h.Set("X-Etcd-Revision", strconv.FormatInt(rev, 10))
		return &apiError{code: api.CodeNotFound, msg: fmt.Sprintf("key %q not found", key)}
	}
	// The hot path of every single-key read. The keys are canonical already,
	// so they are assigned, not Set (which canonicalizes each key), and one
	// backing array holds every value (Set allocates a slice per header).
	v := make([]string, 8)
	v[0] = strconv.FormatInt(rev, 10)
	v[1] = strconv.FormatInt(kv.CreateRevision, 10)
	v[2] = strconv.FormatInt(kv.ModRevision, 10)
	v[3] = strconv.FormatInt(kv.Version, 10)
	v[4] = strconv.FormatInt(kv.Lease, 10)
	v[5] = `"` + v[2] + `"`
	v[6] = "application/octet-stream"
	v[7] = strconv.Itoa(len(kv.Value))
	h["X-Etcd-Revision"] = v[0:1:1]
	h["X-Etcd-Create-Revision"] = v[1:2:2]
	h["X-Etcd-Mod-Revision"] = v[2:3:3]
	h["X-Etcd-Version"] = v[3:4:4]
	h["X-Etcd-Lease"] = v[4:5:5]
	h["Etag"] = v[5:6:6]
	h["Content-Type"] = v[6:7:7]
	h["Content-Length"] = v[7:8:8]
	w.WriteHeader(http.StatusOK)
	w.Write(kv.Value)
	return nil
}

// readError classifies a failed read; a compacted revision gets the
// compaction point, which etcd's range error does not carry.
func (s *Server) readError(r *http.Request, err error, rev int64) error {
	ae := s.classify(r, err)
	if ae != nil && ae.code == api.CodeGone {
		ae.extra = map[string]any{"compact_revision": s.compactRevision(r, rev)}
	}
	if ae == nil {
		return err // the client went away; writeAPIError will find no one to answer
	}
	return ae
}

// compactRevision finds the store's compaction point by opening a watch at a
// compacted revision: etcd answers it with the compaction revision.
func (s *Server) compactRevision(r *http.Request, rev int64) int64 {
	ctx, cancel := s.withTimeout(r)
	defer cancel()
	wch, err := s.etcd.Watch(clientv3.WithRequireLeader(ctx), "\x00", clientv3.WithRev(rev))
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

func etag(rev int64) string { return `"` + strconv.FormatInt(rev, 10) + `"` }

func writeBody(w http.ResponseWriter, code int, contentType string, body []byte) {
	h := w.Header()
	h.Set("Content-Type", contentType)
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(code)
	w.Write(body)
}

// condition is a write's precondition from If-Match / If-None-Match.
type condition struct {
	cmp  clientv3.Cmp
	none bool // no condition
}

// parseCondition reads If-Match and If-None-Match (API.md): a quoted
// mod_revision or * for If-Match, only * for If-None-Match.
func parseCondition(r *http.Request, key string) (condition, error) {
	im, hasIM := r.Header["If-Match"]
	inm, hasINM := r.Header["If-None-Match"]
	switch {
	case hasIM && hasINM:
		return condition{}, badRequest("use either If-Match or If-None-Match, not both")
	case hasIM:
		if len(im) != 1 {
			return condition{}, badRequest("If-Match given more than once")
		}
		v := strings.TrimSpace(im[0])
		if v == "*" {
			return condition{cmp: clientv3.Compare(clientv3.CreateRevision(key), ">", 0)}, nil
		}
		if len(v) < 3 || v[0] != '"' || v[len(v)-1] != '"' {
			return condition{}, badRequest(`If-Match must be a quoted mod_revision such as "42", or *`)
		}
		rev, err := strconv.ParseInt(v[1:len(v)-1], 10, 64)
		if err != nil || rev < 1 {
			return condition{}, badRequest(fmt.Sprintf("If-Match %s is not a quoted mod_revision of at least 1", v))
		}
		return condition{cmp: clientv3.Compare(clientv3.ModRevision(key), "=", rev)}, nil
	case hasINM:
		if len(inm) != 1 || strings.TrimSpace(inm[0]) != "*" {
			return condition{}, badRequest("If-None-Match accepts only *")
		}
		return condition{cmp: clientv3.Compare(clientv3.CreateRevision(key), "=", 0)}, nil
	}
	return condition{none: true}, nil
}

func (s *Server) putKV(w http.ResponseWriter, r *http.Request, rawKey string) error {
	p, key, _, err := s.keyRequest(r, rawKey, "ttl")
	if err != nil {
		return err
	}
	ttl, hasTTL, err := p.positive("ttl")
	if err != nil {
		return err
	}
	cond, err := parseCondition(r, key)
	if err != nil {
		return err
	}
	value, err := s.readValue(w, r)
	if err != nil {
		return err
	}

	ctx, cancel := s.withTimeout(r)
	defer cancel()
	var (
		rev        int64
		failed     bool
		currentRev int64
	)
	err = s.etcd.Do(ctx, func(ctx context.Context, cli *clientv3.Client) error {
		var opts []clientv3.OpOption
		var lease clientv3.LeaseID
		if hasTTL {
			lr, err := cli.Grant(ctx, ttl)
			if err != nil {
				return err
			}
			lease = lr.ID
			opts = append(opts, clientv3.WithLease(lease))
		}
		revoke := func() {
			if lease != 0 { // best effort: an unused lease expires by itself
				rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
				defer cancel()
				cli.Revoke(rctx, lease)
			}
		}
		if cond.none {
			resp, err := cli.Put(ctx, key, string(value), opts...)
			if err != nil {
				return err
			}
			rev = resp.Header.Revision
			return nil
		}
		resp, current, err := conditional(ctx, cli, cond.cmp, key, clientv3.OpPut(key, string(value), opts...))
		if err != nil {
			return err
		}
		if !resp.Succeeded {
			failed, currentRev = true, current
			revoke()
			return nil
		}
		rev = resp.Header.Revision
		return nil
	})
	if err != nil {
		return err
	}
	if failed {
		return preconditionFailed(key, currentRev)
	}
	s.cache.Wrote(key, rev)
	if peer, ok := peerFrom(r.Context()); ok {
		s.log.Debug("put", "key", key, "revision", rev, "uid", peer.UID, "pid", peer.PID)
	}
	w.Header().Set("ETag", etag(rev))
	writeBody(w, http.StatusOK, "application/json", appendRevision(nil, rev, -1))
	return nil
}

// conditional runs op only if cmp holds, in one etcd transaction: the
// transaction's result decides the answer. When cmp does not hold it returns
// the key's current mod_revision (0: absent) for the 412.
func conditional(ctx context.Context, cli *clientv3.Client, cmp clientv3.Cmp, key string, op clientv3.Op) (*clientv3.TxnResponse, int64, error) {
	resp, err := cli.Txn(ctx).If(cmp).Then(op).Else(clientv3.OpGet(key, clientv3.WithKeysOnly())).Commit()
	if err != nil || resp.Succeeded {
		return resp, 0, err
	}
	if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
		return resp, kvs[0].ModRevision, nil
	}
	return resp, 0, nil
}

func preconditionFailed(key string, current int64) error {
	return &apiError{code: api.CodePreconditionFailed,
		msg:   fmt.Sprintf("the condition on key %q did not hold (current mod_revision %d)", key, current),
		extra: map[string]any{"current_mod_revision": current}}
}

// appendRevision writes {"revision":N} or, with deleted ≥ 0,
// {"revision":N,"deleted":K}.
func appendRevision(b []byte, rev, deleted int64) []byte {
	b = append(b, '{')
	b = appendIntField(b, "revision", rev)
	if deleted >= 0 {
		b = append(b, ',')
		b = appendIntField(b, "deleted", deleted)
	}
	return append(b, "}\n"...)
}

// readValue reads the body, refusing one over limits.max_value_bytes (413)
// before reading it when Content-Length says so, and while reading otherwise.
func (s *Server) readValue(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	l := s.limits.Load()
	tooLarge := &apiError{code: api.CodeTooLarge,
		msg: fmt.Sprintf("value is over limits.max_value_bytes (%d bytes)", l.MaxValueBytes)}
	if r.ContentLength > int64(l.MaxValueBytes) {
		return nil, tooLarge
	}
	// A client that trickles its body holds a connection; bound the read.
	http.NewResponseController(w).SetReadDeadline(time.Now().Add(l.RequestTimeout))
	value, err := io.ReadAll(http.MaxBytesReader(w, r.Body, int64(l.MaxValueBytes)))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, tooLarge
		}
		return nil, badRequest("reading the request body: " + err.Error())
	}
	return value, nil
}

func (s *Server) deleteKV(w http.ResponseWriter, r *http.Request, rawKey string) error {
	_, key, prefix, err := s.keyRequest(r, rawKey, "prefix")
	if err != nil {
		return err
	}
	cond, err := parseCondition(r, key)
	if err != nil {
		return err
	}
	if prefix && !cond.none {
		return badRequest("If-Match and If-None-Match apply to a single key, not to ?prefix")
	}
	ctx, cancel := s.withTimeout(r)
	defer cancel()
	var (
		rev, deleted, currentRev int64
		failed                   bool
	)
	err = s.etcd.Do(ctx, func(ctx context.Context, cli *clientv3.Client) error {
		if cond.none {
			var opts []clientv3.OpOption
			if prefix {
				opts = append(opts, clientv3.WithPrefix())
			}
			resp, err := cli.Delete(ctx, key, opts...)
			if err != nil {
				return err
			}
			rev, deleted = resp.Header.Revision, resp.Deleted
			return nil
		}
		resp, current, err := conditional(ctx, cli, cond.cmp, key, clientv3.OpDelete(key))
		if err != nil {
			return err
		}
		if !resp.Succeeded {
			failed, currentRev = true, current
			return nil
		}
		rev, deleted = resp.Header.Revision, resp.Responses[0].GetResponseDeleteRange().Deleted
		return nil
	})
	if err != nil {
		return err
	}
	if failed {
		return preconditionFailed(key, currentRev)
	}
	s.cache.Wrote(key, rev)
	if peer, ok := peerFrom(r.Context()); ok {
		s.log.Debug("delete", "key", key, "prefix", prefix, "deleted", deleted, "uid", peer.UID, "pid", peer.PID)
	}
	writeBody(w, http.StatusOK, "application/json", appendRevision(nil, rev, deleted))
	return nil
}
