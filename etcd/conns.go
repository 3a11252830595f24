package etcd

import (
	"context"
	"net"
	"net/url"
	"strings"
	"sync"
	"time"
)

// connTracker dials the client's connections (as gRPC's context dialer)
// and remembers them by the address gRPC asked for, so that ejecting a hung
// member can close its connections. Removing an address from gRPC's list
// alone drains its connection gracefully, waiting for the requests on it,
// which a hung member never answers; closing the connection makes them fail
// with Unavailable at once — clientv3 then retries reads on another member,
// and a write's outcome is unknown, as with any connection lost mid-write.
//
// It dials as gRPC's default dialer does (tcp for host:port, unix for
// unix:PATH and unix://PATH addresses), without gRPC's HTTP CONNECT proxy
// support: the agent talks to its cluster directly.
//
// It also tells the client when a member returns (rebalance.go): an address
// whose connections had all closed is dialled again, or an address is first
// dialled more than settle after the client's first connection (a member
// added later, rather than one of the list the client started with).
type connTracker struct {
	onReturn func() // set before the first dial; must not block
	settle   time.Duration

	mu     sync.Mutex
	byAddr map[string]map[*trackedConn]struct{}
	seen   map[string]bool // addresses ever connected
	first  time.Time       // the first connection
}

type trackedConn struct {
	net.Conn
	t    *connTracker
	addr string
	once sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() { c.t.forget(c) })
	return c.Conn.Close()
}

func (t *connTracker) dial(ctx context.Context, addr string) (net.Conn, error) {
	network, target := "tcp", addr
	if rest, ok := strings.CutPrefix(addr, "unix://"); ok {
		network, target = "unix", rest
	} else if rest, ok := strings.CutPrefix(addr, "unix:"); ok {
		network, target = "unix", rest
	}
	conn, err := (&net.Dialer{}).DialContext(ctx, network, target)
	if err != nil {
		return nil, err
	}
	tc := &trackedConn{Conn: conn, t: t, addr: addr}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.byAddr == nil {
		t.byAddr = map[string]map[*trackedConn]struct{}{}
		t.seen = map[string]bool{}
		t.first = time.Now()
	}
	if t.byAddr[addr] == nil {
		t.byAddr[addr] = map[*trackedConn]struct{}{}
		if (t.seen[addr] || time.Since(t.first) > t.settle) && t.onReturn != nil {
			t.onReturn()
		}
		t.seen[addr] = true
	}
	t.byAddr[addr][tc] = struct{}{}
	return tc, nil
}

func (t *connTracker) forget(c *trackedConn) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.byAddr[c.addr], c)
	if len(t.byAddr[c.addr]) == 0 {
		delete(t.byAddr, c.addr)
	}
}

// closeEndpoint closes every connection dialled to a normalized endpoint
// and returns how many it closed.
func (t *connTracker) closeEndpoint(ep string) int {
	addr := dialAddr(ep)
	t.mu.Lock()
	conns := make([]*trackedConn, 0, len(t.byAddr[addr]))
	for c := range t.byAddr[addr] {
		conns = append(conns, c)
	}
	t.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
	return len(conns)
}

// dialAddr is the address gRPC dials for a normalized endpoint, as clientv3
// translates it (client/v3/internal/endpoint): host:port for http and
// https, unix://PATH for unix and unixs.
func dialAddr(ep string) string {
	u, err := url.Parse(ep)
	if err != nil {
		return ep
	}
	switch u.Scheme {
	case "http", "https":
		return u.Host
	case "unix", "unixs":
		return "unix://" + u.Path
	}
	return ep
}
