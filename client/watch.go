package client

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"iter"
	"net/http"
	"strconv"

	"udp_iaasd/api"
)

// Event is one line of a watch stream.
type Event struct {
	Type string // api.LinePut, api.LineDelete or api.LineProgress
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
// where it was — from the revision of the last event it yielded, skipping
// that revision's keys it already yielded (one revision may hold several
// events: a transaction, or puts the agent batched), or after the last
// heartbeat, which says its revision is complete. It ends
// when ctx ends (with no error), when the iteration stops, or with an error:
// ErrGone when the events it needs were compacted, ErrUnavailable when the
// agent stayed unreachable through the retries.
func (c *Client) Watch(ctx context.Context, key string, opts ...Option) iter.Seq2[Event, error] {
	return func(yield func(Event, error) bool) {
		o := apply(opts)
		var at resumePoint
		if v := o.q.Get("rev"); v != "" {
			at.next, _ = strconv.ParseInt(v, 10, 64)
		}
		r := retries{c: c}
		for {
			if from := at.from(); from > 0 {
				o.q.Set("rev", strconv.FormatInt(from, 10))
			}
			resp, err := c.openWatch(ctx, key, o)
			if err == nil {
				r.reset()
				if at.next == 0 { // the stream starts after the revision it reports
					cur, _ := strconv.ParseInt(resp.Header.Get("X-Etcd-Revision"), 10, 64)
					at.next = cur + 1
				}
				var stop bool
				stop, err = c.readStream(resp, &at, yield)
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
			if !r.left() {
				if err == nil {
					err = fmt.Errorf("%w: watch stream kept ending", ErrUnavailable)
				}
				yield(Event{}, err)
				return
			}
			if r.wait(ctx, nil) != nil {
				return
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
		return nil, c.unreachable(err)
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		return nil, decodeError(resp)
	}
	return resp, nil
}

// resumePoint is where a watch stands: every revision before next was
// yielded whole; of revision partial (when not 0) the events of the keys in
// seen were yielded and more may follow.
type resumePoint struct {
	next    int64
	partial int64
	seen    map[string]bool
}

// from is the revision a new stream starts at: partial, whose events the
// stream repeats and seen filters, or next.
func (p *resumePoint) from() int64 {
	if p.partial > 0 {
		return p.partial
	}
	return p.next
}

// readStream yields the stream's events until it ends, moving at along. It
// returns whether the caller stopped, and why the stream ended (nil for an
// ERROR line asking to resume or a clean end, which is then resumed).
func (c *Client) readStream(resp *http.Response, at *resumePoint, yield func(Event, error) bool) (bool, error) {
	defer resp.Body.Close()
	start := at.from()
	r := bufio.NewReaderSize(resp.Body, 64<<10)
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			if len(line) == 0 && (err == io.EOF || errors.Is(err, io.ErrUnexpectedEOF)) {
				return false, nil
			}
			return false, fmt.Errorf("%w: watch stream broke: %w", ErrUnavailable, err)
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
			return false, fmt.Errorf("client: bad watch line %q: %w", line, err)
		}
		ev := Event{Type: raw.Type}
		switch raw.Type {
		case api.LinePut, api.LineDelete:
			kv, err := raw.rawKV.decode()
			if err != nil {
				return false, err
			}
			ev.KV, ev.Revision = kv, kv.ModRevision
			if ev.Revision < start || (ev.Revision == at.partial && at.seen[string(kv.Key)]) {
				continue // already yielded before a resume
			}
			if ev.Revision != at.partial {
				at.partial = ev.Revision
				clear(at.seen)
				if at.seen == nil {
					at.seen = map[string]bool{}
				}
			}
			at.seen[string(kv.Key)] = true
			at.next = ev.Revision + 1
		case api.LineProgress:
			ev.Revision = raw.Revision
			at.next = max(at.next, raw.Revision+1)
			if raw.Revision >= at.partial {
				at.partial = 0 // every event up to it was delivered
				clear(at.seen)
			}
		case api.LineError:
			e := &Error{Status: http.StatusOK, Code: raw.Code, Message: raw.Error, CompactRevision: raw.CompactRevision}
			if raw.Code == api.CodeUnavailable {
				return false, nil // the agent is stopping or etcd is away: resume
			}
			return false, e
		default:
			continue // a line type this client does not know
		}
		if !yield(ev, nil) {
			return true, nil
		}
	}
}
