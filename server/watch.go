package server

import (
	"fmt"
	"net/http"
	"strconv"
	"time"

	"udp_iaasd/access"
	"udp_iaasd/api"
	"udp_iaasd/etcd"
)

const (
	defaultHeartbeat = 10 * time.Second
	minHeartbeat     = 100 * time.Millisecond
	maxHeartbeat     = time.Hour
)

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
	release, err := s.openStream(r)
	if err != nil {
		return err
	}
	defer release()
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
		return apiErr(api.CodeUnavailable,
			fmt.Sprintf("too many open watches (limits.max_watches = %d); try again later", l.MaxWatches))
	}
	defer s.watchers.Add(-1)

	// The follower fails fast before anything is streamed: 503 while etcd
	// is unreachable, 410 for a compacted start.
	f, err := s.etcd.StartFollow(r.Context(), key, startRev, etcd.FollowOptions{Prefix: prefix})
	if err != nil {
		return s.readError(r, err, startRev)
	}
	defer f.Stop()

	h := w.Header()
	h.Set("X-Etcd-Revision", strconv.FormatInt(f.Current, 10))
	st := &stream{s: s, r: r, sw: startStream(w), f: f, permit: pm, lastRev: f.Start - 1}
	st.run(heartbeat)
	return nil
}

// stream is one watch request's state, owned by its handler goroutine. It
// only encodes: the follower (etcd.Follow) resumes, trims and orders.
type stream struct {
	s      *Server
	r      *http.Request
	sw     *streamWriter
	f      *etcd.Followed
	permit *access.Permit // re-checks the stream's keys after a reload
	// lastRev: every event with mod_revision ≤ lastRev has been delivered.
	lastRev int64
	buf     []byte
}

// run delivers events until the client leaves, the agent stops, or the
// stream can no longer be continued without a gap.
func (st *stream) run(heartbeat time.Duration) {
	hb := time.NewTicker(heartbeat)
	defer hb.Stop()
	for {
		select {
		case <-st.r.Context().Done():
			return
		case <-st.permit.Changed():
			// New rules (SIGHUP): a peer that may no longer read these keys
			// loses the stream.
			if err := st.permit.Recheck(); err != nil {
				st.sw.event(api.LineError, err.Error(), api.CodeForbidden)
				return
			}
		case <-st.s.stopping:
			st.sw.event(api.LineError, "the agent is shutting down; resume from the last revision", api.CodeUnavailable)
			return
		case <-hb.C:
			if !st.sw.progress(st.lastRev) {
				return
			}
			// Ask etcd for a fresher progress revision for the next beat.
			// Best effort: heartbeats continue from lastRev without it.
			st.s.etcd.AskWatchProgress("", 0)
		case resp, ok := <-st.f.C:
			switch {
			case !ok:
				return // the request's context ended
			case resp.CompactRevision != 0:
				st.sw.errorLine(api.LineError, api.Error{Code: api.CodeGone, CompactRevision: resp.CompactRevision,
					Error: fmt.Sprintf("events after revision %d were compacted away; re-read and watch again", st.lastRev)})
				return
			case resp.Progress && len(resp.Events) == 0:
				st.lastRev = max(st.lastRev, resp.Revision)
				continue
			}
			if !st.deliver(resp) {
				return
			}
		}
	}
}

// deliver writes the response's events as lines.
func (st *stream) deliver(resp etcd.WatchResponse) bool {
	st.buf = st.buf[:0]
	for _, ev := range resp.Events {
		st.buf = appendEvent(st.buf, ev)
	}
	if len(st.buf) == 0 {
		return true
	}
	if !st.sw.write(st.buf) {
		return false
	}
	st.lastRev = max(st.lastRev, resp.Events[len(resp.Events)-1].Kv.ModRevision)
	return true
}
