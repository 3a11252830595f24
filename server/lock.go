package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"time"

	"udp_iaasd/access"
	"udp_iaasd/api"
	"udp_iaasd/etcd"
)

// Locks and elections (API.md "Locks", "Elections"): the request holds the
// lock (or leadership) for as long as it stays open, and the agent keeps
// the lease alive meanwhile.

const (
	lockPrefix     = "/v1/lock/"
	electionPrefix = "/v1/election/"
	defaultLockTTL = 10
)

// holdParams are the query parameters of a lock or a campaign.
type holdParams struct {
	name      string
	ttl       int64
	wait      time.Duration
	hasWait   bool
	heartbeat time.Duration
}

// holdRequest parses a lock or campaign request and checks that the peer
// may write the name's keys; the hold keeps the permit.
func (s *Server) holdRequest(r *http.Request, rawName string, allowed ...string) (holdParams, *access.Permit, error) {
	p, err := parseParams(r, allowed...)
	if err != nil {
		return holdParams{}, nil, err
	}
	var hp holdParams
	if hp.name, err = s.key(rawName, false); err != nil {
		return hp, nil, err
	}
	ttl, has, err := p.positive("ttl")
	if err != nil {
		return hp, nil, err
	}
	hp.ttl = defaultLockTTL
	if has {
		hp.ttl = ttl
	}
	if v, ok := p.get("wait"); ok {
		if hp.wait, err = time.ParseDuration(v); err != nil || hp.wait < 0 {
			return hp, nil, badRequest(fmt.Sprintf("wait must be a duration such as 30s (0: try once); got %q", v))
		}
		hp.hasWait = true
	}
	if hp.heartbeat, err = heartbeatParam(p); err != nil {
		return hp, nil, err
	}
	pm, err := s.permit(r, access.Write, hp.name+"/", true)
	return hp, pm, err
}

// heartbeatParam reads the heartbeat parameter shared by every stream.
func heartbeatParam(p params) (time.Duration, error) {
	if !p.has("heartbeat") {
		return defaultHeartbeat, nil
	}
	v, _ := p.get("heartbeat")
	d, err := time.ParseDuration(v)
	if err != nil || d < minHeartbeat || d > maxHeartbeat {
		return 0, badRequest(fmt.Sprintf("heartbeat must be a duration from 100ms to 1h, such as 2s; got %q", v))
	}
	return d, nil
}

func (s *Server) serveLock(w http.ResponseWriter, r *http.Request, rawName string) {
	if !methodIs(w, r, http.MethodPost) {
		return
	}
	if err := s.lock(w, r, rawName); err != nil {
		s.writeAPIError(w, r, err)
	}
}

func (s *Server) lock(w http.ResponseWriter, r *http.Request, rawName string) error {
	hp, pm, err := s.holdRequest(r, rawName, "ttl", "wait", "heartbeat")
	if err != nil {
		return err
	}
	release, err := s.openStream(r)
	if err != nil {
		return err
	}
	defer release()
	ctx := r.Context()
	lock := s.etcd.Lock
	switch {
	case hp.hasWait && hp.wait == 0:
		lock = s.etcd.TryLock
	case hp.hasWait:
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, hp.wait)
		defer cancel()
	}
	h, err := lock(ctx, hp.name, hp.ttl, holderIdentity(r))
	if err != nil {
		return s.lockError(r, err)
	}
	s.hold(w, r, h, api.LineLocked, hp, pm)
	return nil
}

// holderIdentity is what a lock holder through this agent writes as its
// key's value: who it is, for those who find the lock held.
func holderIdentity(r *http.Request) string {
	peer, _ := peerFrom(r.Context())
	return fmt.Sprintf("%s pid %d on %s", peer, peer.PID, hostname)
}

// hostname names this host in lock holders' identities.
var hostname = func() string {
	h, err := os.Hostname()
	if err != nil {
		return "an unnamed host"
	}
	return h
}()

// lockError answers a lock that was not taken: 409 locked naming the
// holder when the wait ran out or a try found it held.
func (s *Server) lockError(r *http.Request, err error) error {
	var le *etcd.LockedError
	switch {
	case errors.As(err, &le) && le.Holder != "":
		return &apiError{body: api.Error{Code: api.CodeLocked, Key: le.Key, Revision: le.Revision, Holder: le.Holder,
			Error: fmt.Sprintf("the lock is held by %s (key %s, revision %d)", le.Holder, le.Key, le.Revision)}}
	case errors.As(err, &le):
		return &apiError{body: api.Error{Code: api.CodeLocked, Key: le.Key, Revision: le.Revision,
			Error: fmt.Sprintf("the lock is held by %s (revision %d; a holder that did not say who it is, such as etcdctl lock)", le.Key, le.Revision)}}
	case errors.Is(err, etcd.ErrLocked):
		return apiErr(api.CodeLocked, "the lock is held by another holder")
	}
	return err
}

func (s *Server) serveElection(w http.ResponseWriter, r *http.Request, rawName string) {
	var err error
	switch r.Method {
	case http.MethodPost:
		err = s.campaign(w, r, rawName)
	case http.MethodGet, http.MethodHead:
		err = s.leader(w, r, rawName)
	default:
		methodIs(w, r, http.MethodGet, http.MethodPost)
	}
	if err != nil {
		s.writeAPIError(w, r, err)
	}
}

func (s *Server) campaign(w http.ResponseWriter, r *http.Request, rawName string) error {
	hp, pm, err := s.holdRequest(r, rawName, "ttl", "heartbeat")
	if err != nil {
		return err
	}
	release, err := s.openStream(r)
	if err != nil {
		return err
	}
	defer release()
	value, err := s.readValue(w, r)
	if err != nil {
		return err
	}
	h, err := s.etcd.Campaign(r.Context(), hp.name, string(value), hp.ttl)
	if err != nil {
		return err
	}
	s.hold(w, r, h, api.LineElected, hp, pm)
	return nil
}

// leader answers GET /v1/election/NAME (the leader, 404 without one) and,
// with observe, streams the leader and each change.
func (s *Server) leader(w http.ResponseWriter, r *http.Request, rawName string) error {
	p, err := parseParams(r, "observe", "heartbeat")
	if err != nil {
		return err
	}
	name, err := s.key(rawName, false)
	if err != nil {
		return err
	}
	observe, err := p.flag("observe")
	if err != nil {
		return err
	}
	if p.has("heartbeat") && !observe {
		return badRequest("heartbeat applies only with observe")
	}
	pm, err := s.permit(r, access.Read, name+"/", true)
	if err != nil {
		return err
	}
	if observe {
		hb, err := heartbeatParam(p)
		if err != nil {
			return err
		}
		release, err := s.openStream(r)
		if err != nil {
			return err
		}
		defer release()
		return s.observe(w, r, name, hb, pm)
	}
	ctx, cancel := s.withTimeout(r)
	defer cancel()
	l, err := s.etcd.ElectionLeader(ctx, name)
	if errors.Is(err, etcd.ErrNoLeader) {
		return apiErr(api.CodeNotFound, fmt.Sprintf("the election %q has no leader", name))
	}
	if err != nil {
		return err
	}
	writeBody(w, http.StatusOK, "application/json", append(appendLeader(nil, "", l), '\n'))
	return nil
}

// appendLeader appends {"type":…,"key":…,"value":…,"revision":N} (no
// type when typ is "").
func appendLeader(b []byte, typ string, l etcd.Leader) []byte {
	b = append(b, '{')
	if typ != "" {
		b = append(b, `"type":"`...)
		b = append(b, typ...)
		b = append(b, `",`...)
	}
	b = api.AppendBytesField(b, "key", []byte(l.Key))
	b = append(b, ',')
	b = api.AppendBytesField(b, "value", l.Value)
	b = append(b, ',')
	b = appendIntField(b, "revision", l.Revision)
	return append(b, '}')
}

// hold streams a held lock or leadership until the client leaves (released
// at once), the lease is lost (LOST), the agent stops or the rules no
// longer allow it (ERROR; released). Every way out releases the hold.
//
// pm is the permit the request was granted before the lock was waited
// for, so that a reload at any moment since — during a lock wait that
// lasted minutes, or between LOCKED and this loop — makes the hold
// re-check its rules.
func (s *Server) hold(w http.ResponseWriter, r *http.Request, h *etcd.Hold, typ string, hp holdParams, pm *access.Permit) {
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), s.etcd.RequestTimeout())
		defer cancel()
		if err := h.Release(ctx); err != nil {
			s.log.Warn("releasing a lock or leadership failed; it ends with its lease", "key", h.Key, "error", err)
		}
	}()
	sw := startStream(w)
	first := []byte(`{"type":"` + typ + `",`)
	first = api.AppendBytesField(first, "key", []byte(h.Key))
	first = append(first, ',')
	first = appendIntField(first, "revision", h.Revision)
	if !sw.line(append(first, '}')) {
		return
	}
	hb := time.NewTicker(hp.heartbeat)
	defer hb.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-h.Lost():
			sw.event(api.LineLost, fmt.Sprintf("the lease (ttl %ds) could not be kept alive; the hold on %s has ended", hp.ttl, h.Key), "")
			return
		case <-s.stopping:
			sw.event(api.LineError, "the agent is shutting down; the hold is released", api.CodeUnavailable)
			return
		case <-pm.Changed():
			if err := pm.Recheck(); err != nil {
				sw.event(api.LineError, err.Error()+"; the hold is released", api.CodeForbidden)
				return
			}
		case <-hb.C:
			if !sw.progress(h.Revision) {
				return
			}
		}
	}
}

// observe streams the leader of name and each change as LEADER lines,
// with PROGRESS heartbeats; no line while the election has no leader.
func (s *Server) observe(w http.ResponseWriter, r *http.Request, name string, heartbeat time.Duration, pm *access.Permit) error {
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	ch, err := s.etcd.ObserveLeader(ctx, name)
	if err != nil {
		return err
	}
	sw := startStream(w)
	hb := time.NewTicker(heartbeat)
	defer hb.Stop()
	for {
		select {
		case <-r.Context().Done():
			return nil
		case <-s.stopping:
			sw.event(api.LineError, "the agent is shutting down; observe again", api.CodeUnavailable)
			return nil
		case <-pm.Changed():
			if err := pm.Recheck(); err != nil {
				sw.event(api.LineError, err.Error(), api.CodeForbidden)
				return nil
			}
		case l, ok := <-ch:
			if !ok {
				sw.event(api.LineError, "observing the election failed (etcd unreachable?); observe again", api.CodeUnavailable)
				return nil
			}
			if l.Key == "" {
				continue
			}
			if !sw.line(appendLeader(nil, api.LineLeader, l)) {
				return nil
			}
		case <-hb.C:
			if !sw.progress(-1) {
				return nil
			}
		}
	}
}
