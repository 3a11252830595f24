package server

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"udp_iaasd/access"
	"udp_iaasd/api"
	"udp_iaasd/backoff"
	"udp_iaasd/etcd"
)

const (
	defaultHeartbeat = 10 * time.Second
	minHeartbeat     = 100 * time.Millisecond
	maxHeartbeat     = time.Hour
	// watchWriteTimeout ends a stream whose client stopped reading, so that
	// it cannot pin an etcd watch and a goroutine forever.
	watchWriteTimeout = 10 * time.Second
)

// resumeBackoff paces re-opening an etcd watch that broke.
var resumeBackoff = backoff.DefaultPolicy().WithMax(2 * time.Second)

func (s *Server) serveWatch(w http.ResponseWriter, r *http.Request, rawKey string) {
	if err := s.watch(w, r, rawKey); err != nil {
		s.writeAPIError(w, r, err)
	}
}

// watch streams events for a key or prefix (API.md). Errors returned before
// the stream starts are answered as JSON errors; once it has started, the
// stream ends with an ERROR line instead.
func (s *Server) watch(w http.ResponseWriter, r *http.Request, rawKey string) error {
	p, key, prefix, err := s.keyParams(r, rawKey, "prefix", "rev", "heartbeat")
	if err != nil {
		return err
	}
	pm, err := s.permit(r, access.Read, key, prefix)
	if err != nil {
		return err
	}
	startRev, _, err := p.positive("rev")
	if err != nil {
		return err
	}
	heartbeat, err := heartbeatParam(p)
	if err != nil {
		return err
	}

	l := s.limits.Load()
	if n := s.watchers.Add(1); n > int64(l.MaxWatches) {
		s.watchers.Add(-1)
		return &apiError{code: api.CodeUnavailable,
			msg: fmt.Sprintf("too many open watches (limits.max_watches = %d); try again later", l.MaxWatches)}
	}
	defer s.watchers.Add(-1)

	// Without rev the watch starts after the current revision, read through
	// a quorum so that "now" is never behind a write the client has seen.
	// The read also fails fast, with 503, while etcd is unreachable. With a
	// past rev, a range read at it tells a compacted start (410) before the
	// stream begins: etcd confirms a compacted watch first and cancels it
	// only afterwards.
	tctx, cancel := s.withTimeout(r)
	now, err := s.etcd.Read(tctx, key, etcd.ReadOptions{CountOnly: true})
	current := now.Revision
	if err == nil && startRev > 0 && startRev <= current {
		_, err = s.etcd.Read(tctx, key, etcd.ReadOptions{CountOnly: true, Revision: startRev})
	}
	cancel()
	if err != nil {
		return s.readError(r, err, startRev)
	}
	if startRev == 0 {
		startRev = current + 1
	}

	st := &stream{s: s, w: w, r: r, key: key, prefix: prefix, lastRev: startRev - 1, permit: pm}
	st.rc = http.NewResponseController(w)
	if err := st.open(true); err != nil {
		return err
	}
	defer st.close()

	h := w.Header()
	h.Set("Content-Type", "application/x-ndjson")
	h.Set("X-Etcd-Revision", strconv.FormatInt(current, 10))
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	if err := st.rc.Flush(); err != nil {
		return nil
	}
	st.run(heartbeat)
	return nil
}

// stream is one watch request's state, owned by its handler goroutine.
type stream struct {
	s      *Server
	w      http.ResponseWriter
	rc     *http.ResponseController
	r      *http.Request
	key    string
	prefix bool
	// permit re-checks the stream's keys after a reload.
	permit *access.Permit

	wch         <-chan etcd.WatchResponse
	cancelWatch context.CancelFunc
	// lastRev: every event with mod_revision ≤ lastRev has been delivered.
	lastRev     int64
	progressRev int64 // etcd's latest progress notification
	buf         []byte
	// progressAsked is set while a progress request is in flight, so a slow
	// etcd gets one per stream, not one per heartbeat.
	progressAsked atomic.Bool
}

// open follows etcd from lastRev+1: through a shared hub when one can take
// the stream from there, else on a watch of its own. A first own watch waits
// for etcd to confirm it before the stream begins.
func (st *stream) open(first bool) error {
	if sub := st.s.etcd.Subscribe(st.key, st.prefix, st.lastRev+1); sub != nil {
		st.wch, st.cancelWatch = sub.C(), sub.Close
		return nil
	}
	// etcd's "require leader" (every WatchKV watch has it) makes a member
	// cut off from its cluster end the watch, and we resume elsewhere,
	// instead of it silently going quiet.
	ctx, cancel := context.WithCancel(st.r.Context())
	wch, err := st.s.etcd.WatchKV(ctx, st.key, etcd.WatchOptions{Prefix: st.prefix, Rev: st.lastRev + 1, CreatedNotify: true})
	if err != nil {
		cancel()
		return err
	}
	st.wch, st.cancelWatch = wch, cancel
	if !first {
		return nil
	}
	timeout := time.NewTimer(st.s.limits.Load().RequestTimeout)
	defer timeout.Stop()
	select {
	case resp, ok := <-wch:
		switch {
		case !ok:
			st.close()
			return st.ctxErr()
		case resp.CompactRevision != 0:
			st.close()
			return gone(resp.CompactRevision)
		case resp.Err != nil:
			st.close()
			return resp.Err
		}
		// The created notification carries no events.
		return nil
	case <-timeout.C:
		st.close()
		return context.DeadlineExceeded
	}
}

func (st *stream) ctxErr() error {
	if err := st.r.Context().Err(); err != nil {
		return err
	}
	return fmt.Errorf("etcd watch closed before it started")
}

func gone(compactRev int64) *apiError {
	return &apiError{code: api.CodeGone,
		msg:   fmt.Sprintf("revision compacted; the oldest revision still available is %d", compactRev),
		extra: map[string]any{"compact_revision": compactRev}}
}

func (st *stream) close() {
	if st.cancelWatch != nil {
		st.cancelWatch()
		st.cancelWatch = nil
	}
	st.wch = nil
}

// run delivers events until the client leaves, the agent stops, or the
// stream can no longer be continued without a gap.
func (st *stream) run(heartbeat time.Duration) {
	hb := time.NewTicker(heartbeat)
	defer hb.Stop()
	bo := backoff.Backoff{Policy: resumeBackoff}
	var retry <-chan time.Time
	for {
		select {
		case <-st.r.Context().Done():
			return
		case <-st.permit.Changed():
			// New rules (SIGHUP): a peer that may no longer read these keys
			// loses the stream.
			if err := st.permit.Recheck(); err != nil {
				st.writeError(api.CodeForbidden, err.Error(), nil)
				return
			}
		case <-st.s.stopping:
			st.writeError(api.CodeUnavailable, "the agent is shutting down; resume from the last revision", nil)
			return
		case <-hb.C:
			if !st.write(st.progressLine()) {
				return
			}
			// Ask etcd for a fresher progress revision for the next beat.
			// Best effort: heartbeats continue from lastRev without it. The
			// goroutine ends with the request's context at the latest.
			if st.progressAsked.CompareAndSwap(false, true) {
				go func() {
					defer st.progressAsked.Store(false)
					st.s.etcd.RequestWatchProgress(st.r.Context(), "")
				}()
			}
		case <-retry:
			retry = nil
			if err := st.open(false); err != nil {
				retry = time.After(bo.Next())
			}
		case resp, ok := <-st.wch:
			if ok && resp.CompactRevision != 0 {
				st.writeError(api.CodeGone, fmt.Sprintf("events after revision %d were compacted away; re-read and watch again", st.lastRev),
					map[string]any{"compact_revision": resp.CompactRevision})
				return
			}
			if !ok || resp.Err != nil {
				if st.r.Context().Err() != nil {
					return
				}
				// A member went away, lost its leader, or the client was
				// replaced by an endpoint reload: resume where we are.
				st.close()
				retry = time.After(bo.Next())
				continue
			}
			bo.Reset()
			if resp.Progress {
				st.progressRev = max(st.progressRev, resp.Revision)
				continue
			}
			if !st.deliver(resp) {
				return
			}
		}
	}
}

// deliver writes the response's events that were not delivered before: after
// a resume etcd may send again what came before lastRev+1 (it never does,
// but a repeat would break the contract, so it is checked, not assumed).
func (st *stream) deliver(resp etcd.WatchResponse) bool {
	st.buf = st.buf[:0]
	last := st.lastRev
	for _, ev := range resp.Events {
		if ev.Kv.ModRevision <= st.lastRev {
			continue
		}
		st.buf = appendEvent(st.buf, ev)
		last = max(last, ev.Kv.ModRevision)
	}
	if len(st.buf) == 0 {
		return true
	}
	if !st.write(st.buf) {
		return false
	}
	st.lastRev = last
	return true
}

func (st *stream) progressLine() []byte {
	b := append(st.buf[:0], `{"type":"PROGRESS",`...)
	b = appendIntField(b, "revision", max(st.lastRev, st.progressRev))
	st.buf = append(b, "}\n"...)
	return st.buf
}

func (st *stream) writeError(code, msg string, extra map[string]any) {
	b := append(st.buf[:0], `{"type":"ERROR","code":`...)
	b = appendJSONString(b, []byte(code))
	b = append(b, `,"error":`...)
	b = appendJSONString(b, []byte(msg))
	for k, v := range extra {
		if n, ok := v.(int64); ok {
			b = append(b, ',')
			b = appendIntField(b, k, n)
		}
	}
	st.write(append(b, "}\n"...))
}

// write sends b and flushes it, giving a client that stopped reading
// watchWriteTimeout before the stream is ended.
func (st *stream) write(b []byte) bool {
	st.rc.SetWriteDeadline(time.Now().Add(watchWriteTimeout))
	if _, err := st.w.Write(b); err != nil {
		return false
	}
	return st.rc.Flush() == nil
}
