package client

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"iter"
	"math/rand/v2"
	"net/http"
	"strconv"
	"time"

	"udp_iaasd/api"
)

// Event is one line of a watch stream.
type Event struct {
	Type string // "PUT", "DELETE" or "PROGRESS"
	// KV is the key after a PUT; for a DELETE only Key and ModRevision are
	// set.
	KV KV
	// Revision is the event's mod_revision, or for PROGRESS the revision up
	// to which every event has been delivered.
	Revision int64
}

// Watch streams events for key (every key under it WithPrefix), from
// AtRevision or from now. Events arrive in revision order, each once: when a
// stream breaks (the agent restarts, a reload, etcd trouble) Watch resumes
// from the revision after the last event or heartbeat it yielded. It ends
// when ctx ends (with no error), when the iteration stops, or with an error:
// ErrGone when the events it needs were compacted, ErrUnavailable when the
// agent stayed unreachable through the retries.
func (c *Client) Watch(ctx context.Context, key string, opts ...Option) iter.Seq2[Event, error] {
	return func(yield func(Event, error) bool) {
		o := apply(opts)
		var next int64 // the first revision still wanted; 0: from now
		if v := o.q.Get("rev"); v != "" {
			next, _ = strconv.ParseInt(v, 10, 64)
		}
		failures := 0
		for {
			if next > 0 {
				o.q.Set("rev", strconv.FormatInt(next, 10))
			}
			resp, err := c.openWatch(ctx, key, o)
			if err == nil {
				failures = 0
				if next == 0 { // the stream starts after the revision it reports
					cur, _ := strconv.ParseInt(resp.Header.Get("X-Etcd-Revision"), 10, 64)
					next = cur + 1
				}
				var stop bool
				next, stop, err = c.readStream(resp, next, yield)
				if stop {
					return
				}
			}
			if ctx.Err() != nil {
				return
			}
			if err != nil && !retryableWatchError(err) {
				yield(Event{}, err)
				return
			}
			failures++
			if failures > c.hc.RetryMax {
				if err == nil {
					err = fmt.Errorf("%w: watch stream kept ending", ErrUnavailable)
				}
				yield(Event{}, err)
				return
			}
			t := time.NewTimer(c.policy.Delay(failures-1, rand.Float64()))
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
		}
	}
}

func retryableWatchError(err error) bool {
	return errors.Is(err, ErrUnavailable) || errors.Is(err, io.ErrUnexpectedEOF)
}

// openWatch starts one stream; non-200 answers become *Error.
func (c *Client) openWatch(ctx context.Context, key string, o reqOpts) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://endpointd"+keyPath("/v1/watch/", key)+"?"+encodeQuery(o.q), nil)
	if err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	for k, vs := range o.h {
		req.Header[k] = vs
	}
	resp, err := c.stream.Do(req)
	if err != nil {
		return nil, unreachable(err)
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		return nil, decodeError(resp)
	}
	return resp, nil
}

// readStream yields the stream's events until it ends. It returns the next
// revision wanted, whether the caller stopped, and why the stream ended (nil
// for an ERROR line asking to resume or a clean end, which is then resumed).
func (c *Client) readStream(resp *http.Response, next int64, yield func(Event, error) bool) (int64, bool, error) {
	defer resp.Body.Close()
	// Events of one revision (a transaction) share it, so "already seen"
	// means older than where this stream started, not than the last event.
	start := next
	r := bufio.NewReaderSize(resp.Body, 64<<10)
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			if len(line) == 0 && (err == io.EOF || errors.Is(err, io.ErrUnexpectedEOF)) {
				return next, false, nil
			}
			return next, false, fmt.Errorf("%w: watch stream broke: %w", ErrUnavailable, err)
		}
		var raw struct {
			rawKV
			Type            string `json:"type"`
			Revision        int64  `json:"revision"`
			Code            string `json:"code"`
			Error           string `json:"error"`
			CompactRevision int64  `json:"compact_revision"`
		}
		if err := json.Unmarshal(line, &raw); err != nil {
			return next, false, fmt.Errorf("client: bad watch line %q: %w", line, err)
		}
		ev := Event{Type: raw.Type}
		switch raw.Type {
		case "PUT", "DELETE":
			kv, err := raw.rawKV.decode()
			if err != nil {
				return next, false, err
			}
			ev.KV, ev.Revision = kv, kv.ModRevision
			if ev.Revision < start {
				continue // already yielded before a resume
			}
			next = ev.Revision + 1
		case "PROGRESS":
			ev.Revision = raw.Revision
			next = max(next, raw.Revision+1)
		case "ERROR":
			e := &Error{Status: http.StatusOK, Code: raw.Code, Message: raw.Error, CompactRevision: raw.CompactRevision}
			if raw.Code == api.CodeUnavailable {
				return next, false, nil // the agent is stopping or etcd is away: resume
			}
			return next, false, e
		default:
			continue // a line type this client does not know
		}
		if !yield(ev, nil) {
			return next, true, nil
		}
	}
}
