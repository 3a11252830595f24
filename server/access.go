package server

import (
	"context"
	"net"
	"net/http"
	"strconv"

	"udp_iaasd/access"
	"udp_iaasd/api"
	"udp_iaasd/etcd"
)

// Access control (API.md "Access control"). Who the peer is was read once,
// when its connection was accepted (connContext); every key a request
// touches goes through the agent's access.Gate — the one decision both
// sockets share — by authorize, or by permit for a stream that must end
// when its peer loses its rights.

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
	// The host budget's fair queue tells peers apart by (uid, unit), as
	// the per-peer budgets do; put once per connection, so a request costs
	// no allocation for it.
	ctx = etcd.WithPeerKey(ctx, strconv.FormatUint(uint64(p.UID), 10)+"/"+p.Unit)
	return context.WithValue(context.WithValue(ctx, peerKey{}, p), connKey{}, c)
}

// openStream takes one of the peer's max_streams for a stream that stays
// open (a watch, a held lock or campaign, an observation); release it when
// the stream ends. Past the limit: 429.
func (s *Server) openStream(r *http.Request) (release func(), err error) {
	peer, _ := peerFrom(r.Context())
	release, err = s.gate.OpenStream(peer)
	return release, throttled(err)
}

// connKey holds the connection a request came on (Server.started).
type connKey struct{}

// authorize checks op on key (every key under it, with prefix) for the
// request's peer; a refusal is 403 forbidden.
func (s *Server) authorize(r *http.Request, op access.Op, key string, prefix bool) error {
	peer, _ := peerFrom(r.Context())
	return forbidden(s.gate.Authorize(peer, op, key, rangeEnd(key, prefix), r.Method))
}

// permit is authorize for a stream: its Permit re-checks after a reload.
func (s *Server) permit(r *http.Request, op access.Op, key string, prefix bool) (*access.Permit, error) {
	peer, _ := peerFrom(r.Context())
	p, err := s.gate.Permit(peer, op, key, rangeEnd(key, prefix), r.Method)
	return p, forbidden(err)
}

func rangeEnd(key string, prefix bool) string {
	if prefix {
		return access.PrefixEnd(key)
	}
	return ""
}

func forbidden(err error) error {
	if err == nil {
		return nil
	}
	return apiErr(api.CodeForbidden, err.Error())
}
