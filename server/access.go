package server

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"udp_iaasd/access"
	"udp_iaasd/api"
)

// Access control (API.md "Access control"). Who the peer is was read once,
// when its connection was accepted (connContext); every key a request
// touches goes through authorize, which asks access.Policy.Check — the one
// decision every surface shares.

type peerKey struct{}

func peerFrom(ctx context.Context) (access.Peer, bool) {
	p, ok := ctx.Value(peerKey{}).(access.Peer)
	return p, ok
}

// connContext records the peer's identity on every connection's context. A
// peer that cannot be identified is recorded as not Known, which no rule
// and no allowed_uids/allowed_gids entry matches.
func connContext(ctx context.Context, c net.Conn) context.Context {
	p, err := access.IdentifyConn(c)
	if err != nil {
		p = access.Peer{}
	}
	return context.WithValue(context.WithValue(ctx, peerKey{}, p), connKey{}, c)
}

// connKey holds the connection a request came on (Server.started).
type connKey struct{}

// selfPID is the agent's own pid: its watchdog self-check asks /healthz
// through the socket, and must not be refused (nor logged as refused every
// few seconds) because no rule names the agent's user. It gains nothing on
// the key paths, which authorize checks.
var selfPID = int32(os.Getpid())

func isSelf(p access.Peer) bool { return p.Known && p.PID == selfPID }

// authorize checks op on key (every key under it, with prefix) for the
// request's peer. A refusal is audited and returned as 403 forbidden; an
// allowed write is logged when log.audit is on.
func (s *Server) authorize(r *http.Request, op access.Op, key string, prefix bool) error {
	peer, _ := peerFrom(r.Context())
	end := ""
	if prefix {
		end = access.PrefixEnd(key)
	}
	if err := s.AuthorizeRange(peer, op, key, end, r.Method); err != nil {
		return &apiError{code: api.CodeForbidden, msg: err.Error()}
	}
	return nil
}

// AuthorizeRange is the access decision for every surface of the agent —
// the HTTP API here, the gRPC socket (grpcapi) — with its audit: may peer
// do op on the keys [key, end) (etcd's range form; end "" the one key)? A
// refusal (an *access.Denied) is counted and logged; an allowed write is
// logged when log.audit is on, with what (the HTTP method or gRPC method).
func (s *Server) AuthorizeRange(peer access.Peer, op access.Op, key, end, what string) error {
	l := s.limits.Load()
	rule, err := l.Access.CheckRange(peer, op, key, end)
	if err != nil {
		s.denied(peer, op, key, err)
		return err
	}
	if op == access.Write && l.Audit {
		s.log.Info("audit: write allowed", "uid", peer.UID, "gid", peer.GID, "pid", peer.PID, "unit", peer.Unit,
			"key", key, "range_end", end, "method", what, "rule", rule)
	}
	return nil
}

// Admit is the check every request passes first, on either socket: the
// peer is in socket.allowed_uids/allowed_gids when those are set, and
// matches some access rule when there are rules (the agent's own process
// excepted). The error says why not.
func (s *Server) Admit(peer access.Peer) error {
	if !s.allowed(peer) {
		s.log.Debug("peer refused", "uid", peer.UID, "gid", peer.GID, "pid", peer.PID)
		return fmt.Errorf("uid %d (gid %d) may not use this socket (socket.allowed_uids/allowed_gids)", peer.UID, peer.GID)
	}
	if !s.limits.Load().Access.Matches(peer) && !isSelf(peer) {
		err := fmt.Errorf("%s matches no access rule", peer)
		s.denied(peer, 0, "", err)
		return err
	}
	return nil
}

// Changed is closed by the next SetLimits (a reload): open streams re-check
// their keys then. A stream takes it before it first consults the rules, so
// that no reload can fall between that check and the wait for the next.
func (s *Server) Changed() <-chan struct{} { return s.changed() }

// denied counts a refusal (op 0: the peer matches no rule) and logs it, at most once per deniedLogEvery per
// peer, so that a client looping on a forbidden key cannot flood the
// journal; the next line says how many were not logged.
func (s *Server) denied(peer access.Peer, op access.Op, key string, err error) {
	label := "any" // the peer matches no rule: refused whatever it asks
	if op != 0 {
		label = op.String()
	}
	s.metrics.denied.WithLabelValues(label).Inc()
	if n, ok := s.denials.allow(peer, time.Now()); ok {
		s.log.Warn("access denied", "uid", peer.UID, "gid", peer.GID, "pid", peer.PID, "unit", peer.Unit,
			"op", label, "key", key, "not_logged_before", n, "error", err.Error())
	}
}

const deniedLogEvery = 10 * time.Second

// denialLog rate-limits refusal log lines per peer.
type denialLog struct {
	mu   sync.Mutex // guards seen
	seen map[denialKey]*denialState
}

type denialKey struct {
	pid, uid int64
	unit     string
}

type denialState struct {
	last       time.Time
	suppressed int
}

// allow reports whether a refusal by peer may be logged now, and how many
// were suppressed since the last line.
func (d *denialLog) allow(peer access.Peer, now time.Time) (int, bool) {
	k := denialKey{pid: int64(peer.PID), uid: int64(peer.UID), unit: peer.Unit}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.seen == nil {
		d.seen = map[denialKey]*denialState{}
	}
	st := d.seen[k]
	if st != nil && now.Sub(st.last) < deniedLogEvery {
		st.suppressed++
		return 0, false
	}
	if len(d.seen) >= 4096 { // many peers: forget the quiet ones
		for k, v := range d.seen {
			if now.Sub(v.last) >= deniedLogEvery {
				delete(d.seen, k)
			}
		}
	}
	n := 0
	if st != nil {
		n = st.suppressed
	}
	d.seen[k] = &denialState{last: now}
	return n, true
}
