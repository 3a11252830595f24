package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"

	"udp_iaasd/access"
	"udp_iaasd/api"
	"udp_iaasd/cache"
	"udp_iaasd/etcd"
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
// accepts: unknown and repeated parameters are errors. It is parsed as
// url.ParseQuery parses (& between pairs, + and %XX unescaped, ; refused)
// but into a small array, not a map: a method accepts five at most, and
// every request on the hot path has one or none.
type params struct {
	n  int
	kv [maxParams]param
}

type param struct{ name, value string }

// maxParams bounds the parameters one request can carry: as many as the
// method accepting the most (GET on /v1/kv/), each at most once.
const maxParams = 8

func parseParams(r *http.Request, allowed ...string) (params, error) {
	var p params
	q := r.URL.RawQuery
	for q != "" {
		var pair string
		pair, q, _ = strings.Cut(q, "&")
		if strings.Contains(pair, ";") {
			return params{}, badRequest("malformed query string: invalid semicolon separator in query")
		}
		if pair == "" {
			continue
		}
		name, value, _ := strings.Cut(pair, "=")
		var err error
		if name, err = queryUnescape(name); err != nil {
			return params{}, badRequest("malformed query string: " + err.Error())
		}
		if value, err = queryUnescape(value); err != nil {
			return params{}, badRequest("malformed query string: " + err.Error())
		}
		known := false
		for _, a := range allowed {
			known = known || a == name
		}
		if !known {
			if len(allowed) == 0 {
				return params{}, badRequest(fmt.Sprintf("unknown query parameter %q: %s %s takes none", name, r.Method, "this path"))
			}
			return params{}, badRequest(fmt.Sprintf("unknown query parameter %q for %s (accepted: %s)", name, r.Method, strings.Join(allowed, ", ")))
		}
		if _, seen := p.get(name); seen {
			return params{}, badRequest(fmt.Sprintf("query parameter %q given more than once", name))
		}
		if p.n == maxParams {
			return params{}, badRequest("too many query parameters")
		}
		p.kv[p.n] = param{name, value}
		p.n++
	}
	return p, nil
}

// queryUnescape is url.QueryUnescape, which allocates only when there is
// something to unescape.
func queryUnescape(s string) (string, error) {
	if !strings.ContainsAny(s, "%+") {
		return s, nil
	}
	return url.QueryUnescape(s)
}

func (p *params) get(name string) (string, bool) {
	for i := range p.n {
		if p.kv[i].name == name {
			return p.kv[i].value, true
		}
	}
	return "", false
}

func (p *params) has(name string) bool { _, ok := p.get(name); return ok }

// flag reads a boolean parameter: bare (?prefix) or =true means true.
func (p *params) flag(name string) (bool, error) {
	v, ok := p.get(name)
	if !ok {
		return false, nil
	}
	switch v {
	case "", "true", "1":
		return true, nil
	case "false", "0":
		return false, nil
	}
	return false, badRequest(fmt.Sprintf("query parameter %q must be true or false, got %q", name, v))
}

// positive reads a parameter that must be a whole number ≥ 1.
func (p *params) positive(name string) (int64, bool, error) {
	v, ok := p.get(name)
	if !ok {
		return 0, false, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 1 {
		return 0, false, badRequest(fmt.Sprintf("query parameter %q must be a whole number of at least 1, got %q", name, v))
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
func (s *Server) keyRequest(r *http.Request, rawKey string, op access.Op, allowed ...string) (p params, key string, prefix bool, err error) {
	if p, key, prefix, err = s.keyParams(r, rawKey, allowed...); err != nil {
		return params{}, "", false, err
	}
	return p, key, prefix, s.authorize(r, op, key, prefix)
}

// keyParams is keyRequest without the access check (a stream takes a
// permit instead).
func (s *Server) keyParams(r *http.Request, rawKey string, allowed ...string) (p params, key string, prefix bool, err error) {
	if p, err = parseParams(r, allowed...); err != nil {
		return params{}, "", false, err
	}
	if prefix, err = p.flag("prefix"); err != nil {
		return params{}, "", false, err
	}
	if key, err = s.key(rawKey, prefix); err != nil {
		return params{}, "", false, err
	}
	return p, key, prefix, nil
}

// withTimeout bounds one request's etcd work by etcd.request_timeout.
func (s *Server) withTimeout(r *http.Request) (context.Context, context.CancelFunc) {
	return context.WithTimeout(r.Context(), s.etcd.RequestTimeout())
}

func (s *Server) getKV(w http.ResponseWriter, r *http.Request, rawKey string) error {
	p, key, prefix, err := s.keyRequest(r, rawKey, access.Read,
		"prefix", "limit", "keys_only", "rev", "serializable", "stale", "min_revision")
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
	stale, err := p.flag("stale")
	if err != nil {
		return err
	}
	minRev, _, err := p.positive("min_revision")
	if err != nil {
		return err
	}
	if stale && rev != 0 {
		return badRequest("stale answers from the agent's copy, which keeps no history: use either stale or rev")
	}
	staleIfError, err := s.staleIfError(r)
	if err != nil {
		return err
	}
	q := cacheRead{key: key, prefix: prefix, limit: limit, keysOnly: keysOnly, minRev: minRev}
	covered := rev == 0 && s.cache.Covers(key)
	if stale {
		if covered {
			return s.fromCopy(w, r, q, -1, "stale")
		}
		serializable = true // outside the cached prefixes: as serializable
	}

	if serializable && covered && s.fromCache(w, r, q) {
		return nil
	}
	ctx, cancel := s.withTimeout(r)
	defer cancel()
	res, err := s.etcd.Read(ctx, key, etcd.ReadOptions{Prefix: prefix, Limit: limit, KeysOnly: keysOnly,
		Revision: rev, Serializable: serializable})
	if err != nil {
		ae := s.readError(r, err, rev)
		if covered && staleIfError > 0 && unanswerable(ae) {
			if s.fromCopy(w, r, q, staleIfError, "stale_if_error") == nil {
				return nil
			}
		}
		return ae
	}
	if res.Revision < minRev {
		return olderThan("etcd's answer", res.Revision, minRev)
	}
	if prefix {
		writeListing(w, res.Revision, res.Count, res.More, res.KVs, keysOnly)
		return nil
	}
	var kv *mvccpb.KeyValue
	if len(res.KVs) > 0 {
		kv = res.KVs[0]
	}
	return writeValue(w, r, key, res.Revision, kv)
}

// cacheRead is a read the cache may answer.
type cacheRead struct {
	key      string
	prefix   bool
	limit    int64
	keysOnly bool
	minRev   int64
}

// fromCache answers a serializable read from a confirmed, recent copy, if
// it can; it reports whether it did.
func (s *Server) fromCache(w http.ResponseWriter, r *http.Request, q cacheRead) bool {
	if q.prefix {
		kvs, count, more, info, ok := s.cache.List(q.key, q.limit, cache.Fresh)
		if ok && info.Rev >= q.minRev {
			copyHeaders(w, info)
			writeListing(w, info.Rev, count, more, kvs, q.keysOnly)
		}
		return ok && info.Rev >= q.minRev
	}
	kv, info, ok := s.cache.Get(q.key, cache.Fresh)
	if !ok || info.Rev < q.minRev {
		return false
	}
	copyHeaders(w, info)
	if err := writeValue(w, r, q.key, info.Rev, kv); err != nil {
		writeError(w, api.Error{Code: api.CodeNotFound, Error: err.Error()})
	}
	return true
}

// fromCopy answers a read from whatever copy there is, if it is at most
// maxAge old (< 0: any age) and at min_revision or later; reason is the
// metric's. It returns the error to answer instead: 503 when there is no
// copy, or none young or recent enough.
func (s *Server) fromCopy(w http.ResponseWriter, r *http.Request, q cacheRead, maxAge time.Duration, reason string) error {
	var (
		kvs      []*mvccpb.KeyValue
		kv       *mvccpb.KeyValue
		count    int64
		more, ok bool
		info     cache.Info
	)
	if q.prefix {
		kvs, count, more, info, ok = s.cache.List(q.key, q.limit, cache.Any)
	} else {
		kv, info, ok = s.cache.Get(q.key, cache.Any)
	}
	switch {
	case !ok:
		return apiErr(api.CodeUnavailable, "the agent has no copy of this cached prefix yet (never listed, "+
			"discarded, or being listed again); retry when etcd answers")
	case maxAge >= 0 && info.Age > maxAge:
		return apiErr(api.CodeUnavailable, fmt.Sprintf("etcd cannot answer, and the agent's copy was last confirmed %ds ago, "+
			"more than stale-if-error allows (%ds)", int64(info.Age/time.Second), int64(maxAge/time.Second)))
	case info.Rev < q.minRev:
		return olderThan("the agent's copy", info.Rev, q.minRev)
	}
	s.cache.CountStale(reason)
	copyHeaders(w, info)
	if q.prefix {
		writeListing(w, info.Rev, count, more, kvs, q.keysOnly)
		return nil
	}
	if err := writeValue(w, r, q.key, info.Rev, kv); err != nil {
		writeError(w, api.Error{Code: api.CodeNotFound, Error: err.Error()})
	}
	return nil
}

// olderThan is the 503 of a read whose answer would be older than the
// min_revision it asked for.
func olderThan(what string, rev, minRev int64) *apiError {
	return apiErr(api.CodeUnavailable, fmt.Sprintf("%s is at revision %d, older than min_revision %d", what, rev, minRev))
}

// unanswerable reports whether a read's error means etcd could not answer
// (503 or 504): the errors stale-if-error stands in for.
func unanswerable(err error) bool {
	var ae *apiError
	return errors.As(err, &ae) && (ae.body.Code == api.CodeUnavailable || ae.body.Code == api.CodeTimeout)
}

// staleIfError reads Cache-Control's stale-if-error (RFC 5861), or the
// configured default when the request sends none. Other directives are
// ignored; a malformed value is 400.
func (s *Server) staleIfError(r *http.Request) (time.Duration, error) {
	for _, line := range r.Header["Cache-Control"] {
		for d := range strings.SplitSeq(line, ",") {
			name, value, has := strings.Cut(strings.TrimSpace(d), "=")
			if !strings.EqualFold(strings.TrimSpace(name), "stale-if-error") {
				continue
			}
			value = strings.Trim(strings.TrimSpace(value), `"`)
			n, err := strconv.ParseInt(value, 10, 64)
			if !has || err != nil || n < 0 {
				return 0, badRequest(fmt.Sprintf("Cache-Control: stale-if-error wants whole seconds (stale-if-error=60), got %q", d))
			}
			return time.Duration(min(n, int64(math.MaxInt64/time.Second))) * time.Second, nil
		}
	}
	return s.limits.Load().StaleIfError, nil
}

// copyHeaders says an answer came from the agent's copy, and how old it is.
func copyHeaders(w http.ResponseWriter, info cache.Info) {
	h := w.Header()
	h["X-Endpointd-Cache"] = cacheHit
	secs := int64(info.Age / time.Second)
	if secs < int64(len(ageValues)) {
		h["Age"] = ageValues[secs]
	} else {
		h["Age"] = []string{strconv.FormatInt(secs, 10)}
	}
	if info.Stale {
		h["X-Endpointd-Stale"] = staleTrue
	}
}

// ageValues are Age's values for copies under a minute old, made once (a
// fresh copy is a second old or less; each response shares the slice, whose
// capacity of 1 makes an Add copy it).
var ageValues = func() [][]string {
	v := make([][]string, 60)
	for i := range v {
		v[i] = []string{strconv.Itoa(i)}
	}
	return v
}()

var staleTrue = []string{"true"}

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

// cacheHit is X-Endpointd-Cache's value on reads the cache answered; one
// slice for every response (its capacity of 1 makes an Add copy it).
var cacheHit = []string{"hit"}

// inlineLength is the largest value whose Content-Length net/http works
// out itself: it buffers that much of a body, and when the handler returns
// with all of it buffered, it sends the length (bufferBeforeChunkingSize).
const inlineLength = 2048

// writeValue writes a single-key read at revision rev: the raw value with
// its metadata headers, or 404 (an *apiError) when kv is nil.
//
// It is the hot path of every single-key read, and is written to allocate
// twice: the digits of all five numbers go into one string that the
// header values slice, and the header keys, canonical already, are
// assigned rather than Set (which canonicalizes each key and allocates a
// slice per value). Content-Length is left to net/http for small values,
// which keeps the header map within its small size (net/http copies the map
// once per response: beyond 8 keys the copy costs three more allocations).
func writeValue(w http.ResponseWriter, r *http.Request, key string, rev int64, kv *mvccpb.KeyValue) error {
	h := w.Header()
	if kv == nil {
		h.Set("X-Etcd-Revision", strconv.FormatInt(rev, 10))
		return apiErr(api.CodeNotFound, fmt.Sprintf("key %q not found", key))
	}
	var buf [6*20 + 2]byte
	b := strconv.AppendInt(buf[:0], rev, 10)
	endRev := len(b)
	b = strconv.AppendInt(b, kv.CreateRevision, 10)
	endCreate := len(b)
	b = append(b, '"')
	b = strconv.AppendInt(b, kv.ModRevision, 10)
	endMod := len(b)
	b = append(b, '"')
	b = strconv.AppendInt(b, kv.Version, 10)
	endVersion := len(b)
	b = strconv.AppendInt(b, kv.Lease, 10)
	endLease := len(b)
	b = strconv.AppendInt(b, int64(len(kv.Value)), 10)
	digits := string(b)

	v := make([]string, 8)
	v[0] = digits[:endRev]
	v[1] = digits[endRev:endCreate]
	v[2] = digits[endCreate+1 : endMod]
	v[3] = digits[endMod+1 : endVersion]
	v[4] = digits[endVersion:endLease]
	v[5] = digits[endCreate : endMod+1] // "mod_revision"
	v[6] = "application/octet-stream"
	v[7] = digits[endLease:]
	h["X-Etcd-Revision"] = v[0:1:1]
	h["X-Etcd-Create-Revision"] = v[1:2:2]
	h["X-Etcd-Mod-Revision"] = v[2:3:3]
	h["X-Etcd-Version"] = v[3:4:4]
	h["X-Etcd-Lease"] = v[4:5:5]
	h["Etag"] = v[5:6:6]
	h["Content-Type"] = v[6:7:7]
	// A HEAD writes the body too (net/http drops it), but an empty one
	// gives net/http nothing to count, so HEAD always says its length.
	if len(kv.Value) > inlineLength || r.Method == http.MethodHead {
		h["Content-Length"] = v[7:8:8]
	}
	w.WriteHeader(http.StatusOK)
	w.Write(kv.Value)
	return nil
}

// readError classifies a failed read; a compacted revision gets the
// compaction point, which etcd's range error does not carry.
func (s *Server) readError(r *http.Request, err error, rev int64) error {
	ae := s.classify(r, err)
	if ae != nil && ae.body.Code == api.CodeGone {
		ctx, cancel := s.withTimeout(r)
		defer cancel()
		ae.body.CompactRevision = s.etcd.CompactRevision(ctx, rev)
	}
	if ae == nil {
		return err // the client went away; writeAPIError will find no one to answer
	}
	return ae
}

func writeBody(w http.ResponseWriter, code int, contentType string, body []byte) {
	h := w.Header()
	h.Set("Content-Type", contentType)
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(code)
	w.Write(body)
}

// parseCondition reads If-Match and If-None-Match (API.md): a quoted
// mod_revision or * for If-Match, only * for If-None-Match.
func parseCondition(r *http.Request) (etcd.Condition, error) {
	im, hasIM := r.Header["If-Match"]
	inm, hasINM := r.Header["If-None-Match"]
	switch {
	case hasIM && hasINM:
		return etcd.Condition{}, badRequest("use either If-Match or If-None-Match, not both")
	case hasIM:
		if len(im) != 1 {
			return etcd.Condition{}, badRequest("If-Match given more than once")
		}
		v := strings.TrimSpace(im[0])
		if v == "*" {
			return etcd.Condition{Exists: true}, nil
		}
		if len(v) < 3 || v[0] != '"' || v[len(v)-1] != '"' {
			return etcd.Condition{}, badRequest(`If-Match must be a quoted mod_revision such as "42", or *`)
		}
		rev, err := strconv.ParseInt(v[1:len(v)-1], 10, 64)
		if err != nil || rev < 1 {
			return etcd.Condition{}, badRequest(fmt.Sprintf("If-Match %s is not a quoted mod_revision of at least 1", v))
		}
		return etcd.Condition{ModRevision: rev}, nil
	case hasINM:
		if len(inm) != 1 || strings.TrimSpace(inm[0]) != "*" {
			return etcd.Condition{}, badRequest("If-None-Match accepts only *")
		}
		return etcd.Condition{Absent: true}, nil
	}
	return etcd.Condition{}, nil
}

func (s *Server) putKV(w http.ResponseWriter, r *http.Request, rawKey string) error {
	p, key, _, err := s.keyRequest(r, rawKey, access.Write, "ttl")
	if err != nil {
		return err
	}
	ttl, _, err := p.positive("ttl") // 0 without one
	if err != nil {
		v, _ := p.get("ttl")
		return badRequest(fmt.Sprintf("ttl is whole seconds, at least 1 (ttl=30 for thirty seconds; the CLI's -ttl also takes 30s), got %q", v))
	}
	cond, err := parseCondition(r)
	if err != nil {
		return err
	}
	value, err := s.readValue(w, r)
	if err != nil {
		return err
	}
	ctx, cancel := s.withTimeout(r)
	defer cancel()
	res, err := s.etcd.PutKV(ctx, key, value, etcd.PutOptions{TTL: ttl, If: cond})
	if err != nil {
		return err
	}
	if res.Failed {
		return preconditionFailed(key, res.CurrentModRevision)
	}
	s.cache.Wrote(key, res.Revision)
	// Enabled first: the arguments alone would cost allocations on every
	// write while debug logging is off.
	if s.log.Enabled(r.Context(), slog.LevelDebug) {
		if peer, ok := peerFrom(r.Context()); ok {
			s.log.Debug("put", "key", key, "revision", res.Revision, "uid", peer.UID, "pid", peer.PID)
		}
	}
	writeRevision(w, res.Revision, -1, true)
	return nil
}

// writeRevision answers a write: {"revision":N} or, with deleted ≥ 0,
// {"revision":N,"deleted":K}, and with etag, ETag: "N". Like writeValue it
// keeps to a few allocations: the body, one string holding the ETag and
// the length, and one slice backing the header values.
func writeRevision(w http.ResponseWriter, rev, deleted int64, etag bool) {
	body := appendRevision(make([]byte, 0, 64), rev, deleted)
	var buf [48]byte
	b := append(buf[:0], '"')
	b = strconv.AppendInt(b, rev, 10)
	b = append(b, '"')
	endTag := len(b)
	b = strconv.AppendInt(b, int64(len(body)), 10)
	digits := string(b)
	v := make([]string, 3)
	v[0] = "application/json"
	v[1] = digits[endTag:]
	v[2] = digits[:endTag]
	h := w.Header()
	h["Content-Type"] = v[0:1:1]
	h["Content-Length"] = v[1:2:2]
	if etag {
		h["Etag"] = v[2:3:3]
	}
	w.WriteHeader(http.StatusOK)
	w.Write(body)
}

func preconditionFailed(key string, current int64) error {
	return &apiError{body: api.Error{Code: api.CodePreconditionFailed, CurrentModRevision: current,
		Error: fmt.Sprintf("the condition on key %q did not hold (current mod_revision %d)", key, current)}}
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

// readValue reads a value: at most limits.max_value_bytes.
func (s *Server) readValue(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	return s.readBody(w, r, s.limits.Load().MaxValueBytes, "value is over limits.max_value_bytes (%d bytes)")
}

func (s *Server) deleteKV(w http.ResponseWriter, r *http.Request, rawKey string) error {
	_, key, prefix, err := s.keyRequest(r, rawKey, access.Write, "prefix")
	if err != nil {
		return err
	}
	cond, err := parseCondition(r)
	if err != nil {
		return err
	}
	if prefix && cond != (etcd.Condition{}) {
		return badRequest("If-Match and If-None-Match apply to a single key, not to ?prefix")
	}
	ctx, cancel := s.withTimeout(r)
	defer cancel()
	res, err := s.etcd.DeleteKV(ctx, key, prefix, cond)
	if err != nil {
		return err
	}
	if res.Failed {
		return preconditionFailed(key, res.CurrentModRevision)
	}
	s.cache.Wrote(key, res.Revision)
	if s.log.Enabled(r.Context(), slog.LevelDebug) {
		if peer, ok := peerFrom(r.Context()); ok {
			s.log.Debug("delete", "key", key, "prefix", prefix, "deleted", res.Deleted, "uid", peer.UID, "pid", peer.PID)
		}
	}
	writeRevision(w, res.Revision, res.Deleted, false)
	return nil
}
