package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"iter"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"udp_iaasd/api"
)

// ErrLost: a hold ended without Release — the agent could not keep its
// lease alive (LOST), stopped, took the right away, or the connection to it
// broke. Whoever holds a Hold must stop acting as holder when Lost closes.
var ErrLost = errors.New("client: the hold was lost")

// Hold is a held lock or won election. It lasts while its connection to the
// agent stays open.
type Hold struct {
	// Key is the holder's key; Revision its create revision: the fencing
	// token, which grows from each holder to the next.
	Key      string
	Revision int64

	body   io.ReadCloser
	cancel context.CancelFunc
	lost   chan struct{}

	mu  sync.Mutex // guards err
	err error
}

// Lost is closed when the hold has ended without Release; Err says why.
func (h *Hold) Lost() <-chan struct{} { return h.lost }

// Err is why the hold ended (nil while it lasts, and after Release).
func (h *Hold) Err() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.err
}

// Release ends the hold: it closes the connection, and the agent deletes
// the key as soon as it sees it closed (a moment later, not before Release
// returns).
func (h *Hold) Release() {
	h.cancel()
	h.body.Close()
}

// HoldOption shapes Lock and Campaign.
type HoldOption func(url.Values)

// HoldTTL is the lease that keeps the hold alive if the agent itself dies
// (whole seconds, at least 1; default 10s).
func HoldTTL(d time.Duration) HoldOption {
	return func(q url.Values) { q.Set("ttl", strconv.FormatInt(max(int64(d/time.Second), 1), 10)) }
}

// LockWait gives up waiting for the lock after d (0: try once); then
// errors.Is(err, ErrLocked) holds and the *Error names the holder. Without
// it Lock waits until ctx ends.
func LockWait(d time.Duration) HoldOption {
	return func(q url.Values) { q.Set("wait", d.String()) }
}

// HoldHeartbeat sets how often the agent says the hold still stands.
func HoldHeartbeat(d time.Duration) HoldOption {
	return func(q url.Values) { q.Set("heartbeat", d.String()) }
}

// Lock takes the lock name, waiting while another holds it (until ctx ends,
// or LockWait). The lock's keys are those of etcd's concurrency.Mutex on
// name, so it excludes etcdctl lock and Go programs using it.
func (c *Client) Lock(ctx context.Context, name string, opts ...HoldOption) (*Hold, error) {
	return c.hold(ctx, "/v1/lock/", name, nil, api.LineLocked, opts)
}

// Campaign runs for leader of the election name with value, waiting until
// elected (or ctx ends). Leadership lasts until Release or Lost.
func (c *Client) Campaign(ctx context.Context, name string, value []byte, opts ...HoldOption) (*Hold, error) {
	if value == nil {
		value = []byte{}
	}
	return c.hold(ctx, "/v1/election/", name, value, api.LineElected, opts)
}

// startHold sends a hold's request, retried as the client retries what
// cannot have taken effect — a request that never reached the agent, or a
// 503 (no lock or campaign was started) — so that a lock asked for while the
// agent restarts waits for it instead of failing. The last attempt's
// response is returned, whatever its status.
func (c *Client) startHold(ctx, hctx context.Context, u string, body []byte) (*http.Response, error) {
	r := retries{c: c}
	for {
		req, err := http.NewRequestWithContext(hctx, http.MethodPost, u, bytes.NewReader(body))
		if err != nil {
			return nil, fmt.Errorf("client: %w", err)
		}
		resp, err := c.stream.Do(req)
		retry := (err != nil && notSent(err)) || (err == nil && resp.StatusCode == http.StatusServiceUnavailable)
		if !retry || !r.left() {
			return resp, err // the last attempt's answer, whatever it is
		}
		if resp != nil {
			resp.Body.Close()
		}
		if err := r.wait(ctx, resp); err != nil {
			return nil, err
		}
	}
}

func (c *Client) hold(ctx context.Context, path, name string, body []byte, want string, opts []HoldOption) (*Hold, error) {
	q := url.Values{}
	for _, o := range opts {
		o(q)
	}
	u := "http://endpointd" + keyPath(path, name)
	if len(q) > 0 {
		u += "?" + encodeQuery(q)
	}
	// The hold outlives ctx's use for acquiring it: it lasts until Release.
	hctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	stop := context.AfterFunc(ctx, cancel)
	resp, err := c.startHold(ctx, hctx, u, body)
	if err != nil {
		cancel()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, c.unreachable(err)
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		cancel()
		return nil, decodeError(resp)
	}
	br := bufio.NewReader(resp.Body)
	first, err := readLine(br)
	if !stop() || err != nil || first.Type != want {
		cancel()
		resp.Body.Close()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if err == nil {
			err = fmt.Errorf("%w: %s %s", ErrLost, first.Type, first.Error)
		}
		return nil, err
	}
	h := &Hold{Key: first.Key, Revision: first.Revision, body: resp.Body, cancel: cancel, lost: make(chan struct{})}
	go func() {
		for {
			l, err := readLine(br)
			if err == nil && l.Type == api.LineProgress {
				continue
			}
			if hctx.Err() == nil { // not released: lost
				if err == nil {
					err = fmt.Errorf("%w: %s %s", ErrLost, l.Type, l.Error)
				} else {
					err = fmt.Errorf("%w: %v", ErrLost, err)
				}
				h.mu.Lock()
				h.err = err
				h.mu.Unlock()
				close(h.lost)
			}
			resp.Body.Close()
			return
		}
	}()
	return h, nil
}

// streamLine is one NDJSON line of a hold or an observation.
type streamLine struct {
	Type        string  `json:"type"`
	Key         string  `json:"key"`
	KeyBase64   *string `json:"key_base64"`
	Value       *string `json:"value"`
	ValueBase64 *string `json:"value_base64"`
	Revision    int64   `json:"revision"`
	Error       string  `json:"error"`
	Code        string  `json:"code"`
}

func readLine(br *bufio.Reader) (streamLine, error) {
	raw, err := br.ReadBytes('\n')
	if err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return streamLine{}, err
	}
	var l streamLine
	if err := json.Unmarshal(raw, &l); err != nil {
		return streamLine{}, fmt.Errorf("client: decode stream line %q: %w", raw, err)
	}
	if l.KeyBase64 != nil {
		k, err := base64Decode(*l.KeyBase64)
		if err != nil {
			return streamLine{}, err
		}
		l.Key = string(k)
	}
	return l, nil
}

// Leader is an election's leader.
type Leader struct {
	Key      string
	Value    []byte
	Revision int64
}

func (l streamLine) leader() (Leader, error) {
	v, err := pick(l.Value, l.ValueBase64)
	if err != nil {
		return Leader{}, err
	}
	return Leader{Key: l.Key, Value: v, Revision: l.Revision}, nil
}

// Leader returns the current leader of the election name
// (errors.Is(err, ErrNotFound) when there is none).
func (c *Client) Leader(ctx context.Context, name string) (*Leader, error) {
	resp, err := c.do(ctx, http.MethodGet, keyPath("/v1/election/", name), nil, nil, nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	l, err := readLine(bufio.NewReader(resp.Body))
	if err != nil {
		return nil, err
	}
	out, err := l.leader()
	return &out, err
}

// Observe yields the leader of the election name and each change, until
// ctx ends or the stream fails (yielding the error last).
func (c *Client) Observe(ctx context.Context, name string) iter.Seq2[Leader, error] {
	return func(yield func(Leader, error) bool) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://endpointd"+keyPath("/v1/election/", name)+"?observe", nil)
		if err != nil {
			yield(Leader{}, fmt.Errorf("client: %w", err))
			return
		}
		resp, err := c.stream.Do(req)
		if err != nil {
			if ctx.Err() == nil {
				yield(Leader{}, c.unreachable(err))
			}
			return
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			yield(Leader{}, decodeError(resp))
			return
		}
		br := bufio.NewReader(resp.Body)
		for {
			l, err := readLine(br)
			if ctx.Err() != nil {
				return
			}
			if err != nil {
				yield(Leader{}, err)
				return
			}
			switch l.Type {
			case api.LineProgress:
				continue
			case api.LineLeader:
				ld, err := l.leader()
				if !yield(ld, err) || err != nil {
					return
				}
			default:
				yield(Leader{}, &Error{Status: http.StatusOK, Code: l.Code, Message: l.Error})
				return
			}
		}
	}
}
