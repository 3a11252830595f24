// Package client is the Go client of endpointd's local API (API.md) over its
// unix socket.
//
// It owns the HTTP side of talking to the agent: encoding requests, decoding
// answers into typed results and errors, retrying what is safe to retry, and
// resuming broken watch streams. It is built on hashicorp/go-retryablehttp.
// It retries a request only when it cannot have taken effect — the agent was
// not reachable, or it answered 503, which the API reserves for requests it
// did not send to etcd — and never retries a write whose outcome is unknown
// (a timeout or a connection broken mid-request).
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-retryablehttp"

	"udp_iaasd/api"
	"udp_iaasd/backoff"
)

// DefaultSocket is the agent's default socket (CONFIG.md socket.path).
const DefaultSocket = "/run/endpointd/endpointd.sock"

// Options configure New. The zero value is usable.
type Options struct {
	// Timeout bounds one attempt of a request that is not a watch. Default
	// 30s (the agent answers within etcd.request_timeout).
	Timeout time.Duration
	// RetryMax is how many times a safe-to-retry request is retried.
	// Default 4; negative disables retries.
	RetryMax int
	// Backoff paces retries; a Retry-After from the agent takes precedence.
	// Default 100ms, ×2, up to 2s, ±20%.
	Backoff backoff.Policy
	Logger  *slog.Logger
}

// Client talks to one agent socket. It is safe for concurrent use.
type Client struct {
	socket   string
	hc       *retryablehttp.Client
	stream   *http.Client // watches, locks, elections: no overall timeout
	policy   backoff.Policy
	retryMax int
}

// New returns a client of the agent listening on socket.
func New(socket string, opts Options) *Client {
	if opts.Timeout <= 0 {
		opts.Timeout = 30 * time.Second
	}
	switch {
	case opts.RetryMax == 0:
		opts.RetryMax = 4
	case opts.RetryMax < 0:
		opts.RetryMax = 0
	}
	if opts.Backoff == (backoff.Policy{}) {
		opts.Backoff = backoff.DefaultPolicy().WithMax(2 * time.Second)
	}
	dial := func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", socket)
	}
	tr := &http.Transport{DialContext: dial, MaxIdleConnsPerHost: 64, IdleConnTimeout: 90 * time.Second}
	hc := retryablehttp.NewClient()
	hc.HTTPClient = &http.Client{Transport: tr, Timeout: opts.Timeout}
	hc.RetryMax = opts.RetryMax
	hc.CheckRetry = checkRetry
	c := &Client{socket: socket, hc: hc, stream: &http.Client{Transport: tr}, policy: opts.Backoff, retryMax: opts.RetryMax}
	hc.Backoff = func(_, _ time.Duration, attempt int, resp *http.Response) time.Duration {
		return c.retryDelay(attempt, resp)
	}
	hc.ErrorHandler = retryablehttp.PassthroughErrorHandler
	if opts.Logger != nil {
		hc.Logger = opts.Logger
	} else {
		hc.Logger = nil
	}
	return c
}

type idempotentKey struct{}

// checkRetry retries what cannot have taken effect: a request that never
// reached the agent, or one the agent answered with 503 (it did not go to
// etcd). Reads are also retried after a connection broke mid-request.
func checkRetry(ctx context.Context, resp *http.Response, err error) (bool, error) {
	if ctx.Err() != nil {
		return false, ctx.Err()
	}
	if err != nil {
		if notSent(err) {
			return true, nil
		}
		idempotent, _ := ctx.Value(idempotentKey{}).(bool)
		return idempotent, nil
	}
	// 503: not sent to etcd; 429: over a budget, not sent either. Both say
	// when to come back (Retry-After, which retryDelay follows).
	return resp.StatusCode == http.StatusServiceUnavailable || resp.StatusCode == http.StatusTooManyRequests, nil
}

// notSent reports errors that mean the request never reached the agent.
func notSent(err error) bool {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return true
	}
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT)
}

// retries paces the retries of one request or stream: every retry of the
// client — retryablehttp's, a hold's start, a watch's resumption — waits as
// retryDelay says and stops after RetryMax. A retries is used by the one
// goroutine that retries.
type retries struct {
	c       *Client
	attempt int
}

// left reports whether a retry is left.
func (r *retries) left() bool { return r.attempt < r.c.retryMax }

// wait waits before the next retry, after resp (nil: none came), or until
// ctx ends (its error).
func (r *retries) wait(ctx context.Context, resp *http.Response) error {
	b := backoff.Backoff{Policy: r.c.policy}
	if err := b.Wait(ctx, r.c.retryDelay(r.attempt, resp)); err != nil {
		return err
	}
	r.attempt++
	return nil
}

// reset starts the count again after a success (a watch that streamed).
func (r *retries) reset() { r.attempt = 0 }

// retryDelay is the wait before retry number attempt (0: the first): the
// agent's Retry-After when it sent one, capped at the policy's Max, else
// the policy's delay.
func (c *Client) retryDelay(attempt int, resp *http.Response) time.Duration {
	if d, ok := retryAfter(resp); ok {
		return min(d, c.policy.Max)
	}
	return c.policy.Delay(attempt, rand.Float64())
}

func retryAfter(resp *http.Response) (time.Duration, bool) {
	if resp == nil {
		return 0, false
	}
	s, err := strconv.Atoi(resp.Header.Get("Retry-After"))
	if err != nil || s < 0 {
		return 0, false
	}
	return time.Duration(s) * time.Second, true
}

// do sends one request and returns the response of the last attempt; a
// non-2xx answer becomes an *Error.
func (c *Client) do(ctx context.Context, method, path string, query url.Values, header http.Header, body []byte) (*http.Response, error) {
	ctx = context.WithValue(ctx, idempotentKey{}, method == http.MethodGet || method == http.MethodHead)
	u := "http://endpointd" + path
	if len(query) > 0 {
		u += "?" + encodeQuery(query)
	}
	var rb any
	if body != nil {
		rb = body
	}
	req, err := retryablehttp.NewRequestWithContext(ctx, method, u, rb)
	if err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, c.unreachable(err)
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		return nil, decodeError(resp)
	}
	return resp, nil
}

// unreachable wraps a transport error so errors.Is(err, ErrUnavailable) holds
// for a missing or dead agent.
func (c *Client) unreachable(err error) error {
	if notSent(err) {
		return &UnreachableError{Socket: c.socket, Err: err}
	}
	return fmt.Errorf("client: %w", err)
}

// UnreachableError: a request never reached the agent — no socket at the
// path, or nothing listening on it. It is ErrUnavailable (safe to retry).
type UnreachableError struct {
	Socket string
	Err    error
}

func (e *UnreachableError) Error() string {
	// The cause without the internal URL and the path again: "connect: no
	// such file or directory".
	cause := e.Err
	var se *os.SyscallError
	if errors.As(cause, &se) {
		cause = se
	}
	return fmt.Sprintf("client: the agent is not reachable at %s: %v", e.Socket, cause)
}

func (e *UnreachableError) Is(target error) bool { return target == ErrUnavailable }

func (e *UnreachableError) Unwrap() error { return e.Err }

// encodeQuery writes flags bare (?prefix) as API.md shows them.
func encodeQuery(q url.Values) string {
	var b strings.Builder
	for k, vs := range q {
		for _, v := range vs {
			if b.Len() > 0 {
				b.WriteByte('&')
			}
			b.WriteString(url.QueryEscape(k))
			if v != "" {
				b.WriteByte('=')
				b.WriteString(url.QueryEscape(v))
			}
		}
	}
	return b.String()
}

// keyPath escapes a key into the path so that every byte arrives as it is:
// the agent percent-decodes the raw path once.
func keyPath(prefix, key string) string {
	var b strings.Builder
	b.Grow(len(prefix) + len(key)*3)
	b.WriteString(prefix)
	for i := 0; i < len(key); i++ {
		c := key[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("-._~/", c) >= 0 {
			b.WriteByte(c)
			continue
		}
		fmt.Fprintf(&b, "%%%02X", c)
	}
	return b.String()
}

// KV is one key and its metadata.
type KV struct {
	Key            []byte
	Value          []byte // nil with KeysOnly
	CreateRevision int64
	ModRevision    int64
	Version        int64
	Lease          int64
	// Revision is the store revision the answer was read at (Get only).
	Revision int64
	// Freshness says whether the agent answered from its copy (Get only).
	Freshness
}

// Freshness describes an answer the agent gave from its copy of a cached
// prefix (X-Endpointd-Cache, Age, X-Endpointd-Stale).
type Freshness struct {
	// FromCache: answered from the agent's copy, not by etcd.
	FromCache bool
	// Age: since the copy was last confirmed current (whole seconds).
	Age time.Duration
	// Stale: the copy was not confirmed within the agent's
	// cache.max_staleness (etcd away, or the copy still catching up).
	Stale bool
}

func freshness(h http.Header) Freshness {
	age, _ := strconv.ParseInt(h.Get("Age"), 10, 64)
	return Freshness{FromCache: h.Get("X-Endpointd-Cache") == "hit", Age: time.Duration(age) * time.Second,
		Stale: h.Get("X-Endpointd-Stale") == "true"}
}

// GetOption, ListOption, PutOption, DeleteOption and WatchOption shape a
// request; each is a func over url.Values and headers.
type (
	reqOpts struct {
		q url.Values
		h http.Header
	}
	// Option is any of the request options below.
	Option func(*reqOpts)
)

func apply(opts []Option) reqOpts {
	r := reqOpts{q: url.Values{}, h: http.Header{}}
	for _, o := range opts {
		o(&r)
	}
	return r
}

// AtRevision reads at store revision rev (Get, List), or starts a watch at it.
func AtRevision(rev int64) Option {
	return func(r *reqOpts) { r.q.Set("rev", strconv.FormatInt(rev, 10)) }
}

// Serializable reads from the member without a quorum round trip.
func Serializable() Option { return func(r *reqOpts) { r.q.Set("serializable", "") } }

// Stale answers a read of a cached prefix from the agent's copy at once,
// whatever its age and whether or not etcd is reachable; see the answer's
// Freshness. Outside the cached prefixes it reads as Serializable.
func Stale() Option { return func(r *reqOpts) { r.q.Set("stale", "") } }

// StaleIfError reads as usual, but when etcd cannot answer, answers from
// the agent's copy of a cached prefix if it was confirmed at most maxAge
// ago (Cache-Control: stale-if-error, whole seconds).
func StaleIfError(maxAge time.Duration) Option {
	return func(r *reqOpts) {
		r.h.Add("Cache-Control", "stale-if-error="+strconv.FormatInt(int64(maxAge/time.Second), 10))
	}
}

// MinRevision refuses (503, ErrUnavailable) an answer older than store
// revision rev, from etcd or from the copy: a reader that must never go
// back passes the highest revision it has seen.
func MinRevision(rev int64) Option {
	return func(r *reqOpts) { r.q.Set("min_revision", strconv.FormatInt(rev, 10)) }
}

// Limit lists at most n keys.
func Limit(n int64) Option { return func(r *reqOpts) { r.q.Set("limit", strconv.FormatInt(n, 10)) } }

// KeysOnly lists keys without values.
func KeysOnly() Option { return func(r *reqOpts) { r.q.Set("keys_only", "") } }

// WithPrefix deletes or watches every key under the given key.
func WithPrefix() Option { return func(r *reqOpts) { r.q.Set("prefix", "") } }

// TTL attaches the written key to a new lease of d (whole seconds, at least 1).
func TTL(d time.Duration) Option {
	return func(r *reqOpts) { r.q.Set("ttl", strconv.FormatInt(max(int64(d/time.Second), 1), 10)) }
}

// IfModRevision writes or deletes only if the key's mod_revision is rev
// (compare-and-swap).
func IfModRevision(rev int64) Option {
	return func(r *reqOpts) { r.h.Set("If-Match", `"`+strconv.FormatInt(rev, 10)+`"`) }
}

// IfExists writes only if the key exists.
func IfExists() Option { return func(r *reqOpts) { r.h.Set("If-Match", "*") } }

// IfAbsent writes only if the key does not exist (create).
func IfAbsent() Option { return func(r *reqOpts) { r.h.Set("If-None-Match", "*") } }

// Heartbeat asks a watch for PROGRESS lines at least every d.
func Heartbeat(d time.Duration) Option {
	return func(r *reqOpts) { r.q.Set("heartbeat", d.String()) }
}

// Get reads one key. An absent key is an error for which
// errors.Is(err, ErrNotFound) holds.
func (c *Client) Get(ctx context.Context, key string, opts ...Option) (*KV, error) {
	o := apply(opts)
	resp, err := c.do(ctx, http.MethodGet, keyPath("/v1/kv/", key), o.q, o.h, nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	value, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("client: read value: %w", err)
	}
	h := resp.Header
	num := func(name string) int64 { n, _ := strconv.ParseInt(h.Get(name), 10, 64); return n }
	return &KV{Key: []byte(key), Value: value, CreateRevision: num("X-Etcd-Create-Revision"),
		ModRevision: num("X-Etcd-Mod-Revision"), Version: num("X-Etcd-Version"), Lease: num("X-Etcd-Lease"),
		Revision: num("X-Etcd-Revision"), Freshness: freshness(h)}, nil
}

// ListResult is a prefix listing.
type ListResult struct {
	Revision int64
	Count    int64 // keys under the prefix in the store
	More     bool  // the listing was cut by Limit
	KVs      []KV
	Freshness
}

// List reads every key under prefix, sorted by key.
func (c *Client) List(ctx context.Context, prefix string, opts ...Option) (*ListResult, error) {
	o := apply(opts)
	o.q.Set("prefix", "")
	resp, err := c.do(ctx, http.MethodGet, keyPath("/v1/kv/", prefix), o.q, o.h, nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var raw struct {
		Revision int64   `json:"revision"`
		Count    int64   `json:"count"`
		More     bool    `json:"more"`
		KVs      []rawKV `json:"kvs"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&raw); err != nil {
		return nil, fmt.Errorf("client: decode listing: %w", err)
	}
	out := &ListResult{Revision: raw.Revision, Count: raw.Count, More: raw.More, KVs: make([]KV, len(raw.KVs)),
		Freshness: freshness(resp.Header)}
	for i, r := range raw.KVs {
		kv, err := r.decode()
		if err != nil {
			return nil, err
		}
		out.KVs[i] = kv
	}
	return out, nil
}

// Put writes value to key and returns the key's new mod_revision. With a
// condition that does not hold, errors.Is(err, ErrPreconditionFailed) holds
// and the *Error carries the current mod_revision.
func (c *Client) Put(ctx context.Context, key string, value []byte, opts ...Option) (int64, error) {
	o := apply(opts)
	if value == nil {
		value = []byte{}
	}
	resp, err := c.do(ctx, http.MethodPut, keyPath("/v1/kv/", key), o.q, o.h, value)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var out struct {
		Revision int64 `json:"revision"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return 0, fmt.Errorf("client: decode put answer: %w", err)
	}
	return out.Revision, nil
}

// Delete removes key (every key under it WithPrefix) and returns the store
// revision and how many keys were deleted (0 is not an error).
func (c *Client) Delete(ctx context.Context, key string, opts ...Option) (rev, deleted int64, err error) {
	o := apply(opts)
	resp, err := c.do(ctx, http.MethodDelete, keyPath("/v1/kv/", key), o.q, o.h, nil)
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	var out struct {
		Revision int64 `json:"revision"`
		Deleted  int64 `json:"deleted"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return 0, 0, fmt.Errorf("client: decode delete answer: %w", err)
	}
	return out.Revision, out.Deleted, nil
}

// Healthz asks the agent's /healthz: nil while the process serves, else an
// *Error or the transport's error.
func (c *Client) Healthz(ctx context.Context) error {
	resp, err := c.do(ctx, http.MethodGet, "/healthz", nil, nil, nil)
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}

// Status returns the agent's /v1/status as raw JSON and decoded.
func (c *Client) Status(ctx context.Context) (*Status, []byte, error) {
	resp, err := c.do(ctx, http.MethodGet, "/v1/status", nil, nil, nil)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, nil, fmt.Errorf("client: read status: %w", err)
	}
	var st Status
	if err := json.Unmarshal(raw, &st); err != nil {
		return nil, nil, fmt.Errorf("client: decode status: %w", err)
	}
	return &st, bytes.TrimSpace(raw), nil
}

// Status is the agent's /v1/status (API.md), as package api declares it.
type Status = api.Status

// rawKV is a key-value object of the API's JSON, with the UTF-8/base64 rule.
type rawKV struct {
	Key            *string `json:"key"`
	KeyBase64      *string `json:"key_base64"`
	Value          *string `json:"value"`
	ValueBase64    *string `json:"value_base64"`
	CreateRevision int64   `json:"create_revision"`
	ModRevision    int64   `json:"mod_revision"`
	Version        int64   `json:"version"`
	Lease          int64   `json:"lease"`
}

func (r rawKV) decode() (KV, error) {
	key, err := pick(r.Key, r.KeyBase64)
	if err != nil {
		return KV{}, fmt.Errorf("client: key: %w", err)
	}
	value, err := pick(r.Value, r.ValueBase64)
	if err != nil {
		return KV{}, fmt.Errorf("client: value: %w", err)
	}
	return KV{Key: key, Value: value, CreateRevision: r.CreateRevision, ModRevision: r.ModRevision,
		Version: r.Version, Lease: r.Lease}, nil
}

func pick(plain, b64 *string) ([]byte, error) {
	switch {
	case plain != nil:
		return []byte(*plain), nil
	case b64 != nil:
		return base64Decode(*b64)
	}
	return nil, nil
}
