package access

import (
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Settings are the parts of the config the gate decides by; a reload
// (Gate.Set) replaces them whole.
type Settings struct {
	// AllowedUIDs and AllowedGIDs (socket.allowed_uids/allowed_gids), when
	// either is set, are checked before any rule: a peer in neither may not
	// use the sockets at all.
	AllowedUIDs []int
	AllowedGIDs []int
	// Policy holds the per-peer rules (nil: none, every admitted peer may
	// touch every key).
	Policy *Policy
	// Audit logs every allowed write with the peer and the rule (log.audit).
	Audit bool

	limited bool // some rule sets a budget (Set works it out)
}

// Gate is the agent's one access decision with its audit, for every surface
// that takes keys from a peer: both sockets ask it, and nothing else, whether
// this peer may use them (Admit) and these keys (Authorize, Permit). The
// agent owns it and hands it to the sockets; a reload replaces its Settings.
type Gate struct {
	log       *slog.Logger
	denied    *prometheus.CounterVec
	throttled *prometheus.CounterVec
	now       func() time.Time

	// settings is swapped whole by Set, and only then is changed closed and
	// replaced: a check that read the old settings has its channel closed
	// by the swap, so no reload can fall between a check and the wait for
	// the next one (see Permit).
	settings atomic.Pointer[Settings]
	changed  atomic.Pointer[chan struct{}]

	denials   denialLog
	throttles denialLog
	budgets   budgets
}

// NewGate builds the gate with its first settings, registering its metric
// (endpointd_access_denied_total) on reg when reg is not nil.
func NewGate(s Settings, reg prometheus.Registerer, log *slog.Logger) *Gate {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	g := &Gate{
		log: log,
		now: time.Now,
		denied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "endpointd_access_denied_total",
			Help: "Requests refused by the access rules, by operation (\"any\": the peer matches no rule).",
		}, []string{"op"}),
		throttled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "endpointd_throttled_total",
			Help: "Requests and streams refused by a budget (429), by the rule whose limit refused them and why (rate, streams, etcd_budget).",
		}, []string{"rule", "reason"}),
	}
	for _, op := range []string{"read", "write", "any"} {
		g.denied.WithLabelValues(op) // present at 0 from the start
	}
	if reg != nil {
		reg.MustRegister(g.denied, g.throttled)
	}
	g.Set(s)
	return g
}

// Set replaces the settings (a reload). New requests are decided by them at
// once; every open stream's Permit re-checks its keys.
func (g *Gate) Set(s Settings) {
	s.limited = s.Policy.limited()
	if s.Policy != nil {
		// Each limit's series is there at 0 from the start, so that rates
		// and alerts over it have a baseline.
		for _, r := range s.Policy.rules {
			if r.Rate > 0 {
				g.throttled.WithLabelValues(r.Name, "rate")
			}
			if r.MaxStreams > 0 {
				g.throttled.WithLabelValues(r.Name, "streams")
			}
		}
	}
	g.settings.Store(&s)
	next := make(chan struct{})
	if old := g.changed.Swap(&next); old != nil {
		close(*old)
	}
}

// Settings returns the settings in force.
func (g *Gate) Settings() Settings { return *g.settings.Load() }

// selfPID is the agent's own pid: its watchdog self-check asks /healthz
// through the socket, and must not be refused (nor logged as refused every
// few seconds) because no rule names the agent's user. It gains nothing on
// the key paths, which Authorize checks.
var selfPID = int32(os.Getpid())

// Admit is the check every request passes first, on either socket: the peer
// is in socket.allowed_uids/allowed_gids when those are set, and matches
// some access rule when there are rules (the agent's own process excepted).
// The error says why not.
func (g *Gate) Admit(peer Peer) error {
	s := g.settings.Load()
	if !s.allowed(peer) {
		g.log.Debug("peer refused", "uid", peer.UID, "gid", peer.GID, "pid", peer.PID)
		return fmt.Errorf("uid %d (gid %d) may not use this socket (socket.allowed_uids/allowed_gids)", peer.UID, peer.GID)
	}
	if !s.Policy.Matches(peer) && !(peer.Known && peer.PID == selfPID) {
		err := fmt.Errorf("%s matches no access rule", peer)
		g.refused(peer, 0, "", err)
		return err
	}
	return nil
}

func (s *Settings) allowed(p Peer) bool {
	if len(s.AllowedUIDs) == 0 && len(s.AllowedGIDs) == 0 {
		return true
	}
	if !p.Known {
		return false
	}
	for _, u := range s.AllowedUIDs {
		if int(p.UID) == u {
			return true
		}
	}
	for _, g := range s.AllowedGIDs {
		if int(p.GID) == g {
			return true
		}
	}
	return false
}

// Authorize is the access decision with its audit: may peer do op on the
// keys [key, end) (etcd's range form, see Policy.CheckRange; end "" the one
// key)? A refusal (an *Denied) is counted and logged; an allowed write is
// logged when Settings.Audit is on, with what asked (an HTTP or gRPC
// method).
func (g *Gate) Authorize(peer Peer, op Op, key, end, what string) error {
	s := g.settings.Load()
	rule, err := s.Policy.CheckRange(peer, op, key, end)
	if err != nil {
		g.refused(peer, op, key, err)
		return err
	}
	if op == Write && s.Audit {
		g.log.Info("audit: write allowed", "uid", peer.UID, "gid", peer.GID, "pid", peer.PID, "unit", peer.Unit,
			"key", key, "range_end", end, "method", what, "rule", rule)
	}
	return nil
}

// Allows answers the access decision without counting or logging a
// refusal: for filtering what a peer is shown of a list it may ask for (the
// keys attached to its own lease), never for letting a request through.
func (g *Gate) Allows(peer Peer, op Op, key, end string) bool {
	_, err := g.settings.Load().Policy.CheckRange(peer, op, key, end)
	return err == nil
}

// AuthorizeLease is Authorize for granting a lease (what: the method): a
// lease lives in the shared cluster's lease table until its TTL, so only a
// peer that some rule lets write may grant one.
func (g *Gate) AuthorizeLease(peer Peer, what string) error {
	s := g.settings.Load()
	rule, err := s.Policy.CheckWriter(peer)
	if err != nil {
		g.refused(peer, Write, "", err)
		return err
	}
	if s.Audit {
		g.log.Info("audit: lease grant allowed", "uid", peer.UID, "gid", peer.GID, "pid", peer.PID, "unit", peer.Unit,
			"method", what, "rule", rule)
	}
	return nil
}

// Permit is a long-lived stream's standing authorization: a watch, a held
// lock or leadership, an observation. The stream selects on Changed and,
// when it fires, calls Recheck; an error from Recheck means the peer lost
// its rights and the stream must end (releasing what it holds).
//
// A Permit is used by the one goroutine that runs its stream.
type Permit struct {
	g              *Gate
	peer           Peer
	op             Op
	key, end, what string
	changed        <-chan struct{}
}

// Permit authorizes a stream as Authorize does and returns its standing
// authorization. The reload channel is taken before the rules are consulted,
// so a reload at any moment after this check — during a lock wait that lasts
// minutes, or before the stream's loop starts — makes Changed fire.
func (g *Gate) Permit(peer Peer, op Op, key, end, what string) (*Permit, error) {
	p := &Permit{g: g, peer: peer, op: op, key: key, end: end, what: what, changed: g.Changed()}
	if err := g.Authorize(peer, op, key, end, what); err != nil {
		return nil, err
	}
	return p, nil
}

// Changed is closed when the settings may have changed since the last check.
func (p *Permit) Changed() <-chan struct{} { return p.changed }

// Recheck checks the stream's keys again under the settings now in force,
// taking the next reload channel first. A nil *Permit (a stream that needs
// no keys checked) always passes.
func (p *Permit) Recheck() error {
	if p == nil {
		return nil
	}
	p.changed = p.g.Changed()
	return p.g.Authorize(p.peer, p.op, p.key, p.end, p.what)
}

// Changed is closed by the next Set. Prefer Permit for a stream: it takes
// the channel and checks in the order that loses no reload.
func (g *Gate) Changed() <-chan struct{} { return *g.changed.Load() }

// refused counts a refusal (op 0: the peer matches no rule) and logs it, at
// most once per deniedLogEvery per (uid, unit), so that a client looping on
// a forbidden key, or forking a process per request, cannot flood the
// journal; the next line says how many were not logged.
func (g *Gate) refused(peer Peer, op Op, key string, err error) {
	label := "any" // the peer matches no rule: refused whatever it asks
	if op != 0 {
		label = op.String()
	}
	g.denied.WithLabelValues(label).Inc()
	if n, ok := g.denials.allow(peer, time.Now()); ok {
		g.log.Warn("access denied", "uid", peer.UID, "gid", peer.GID, "pid", peer.PID, "unit", peer.Unit,
			"op", label, "key", key, "not_logged_before", n, "error", err.Error())
	}
}

const (
	deniedLogEvery = 10 * time.Second
	// deniedLogPeers bounds the peers remembered: past it, quiet ones are
	// forgotten, and while all are recent the newcomers share one entry.
	deniedLogPeers = 4096
)

// denialLog rate-limits refusal log lines per (uid, unit) — not per
// process, so that a client forking per request is one peer — in bounded
// memory.
type denialLog struct {
	mu   sync.Mutex // guards seen
	seen map[denialKey]*denialState
}

// denialKey is a peer as the rules see it. overflow is the one entry that
// every peer shares while the map is full of recent ones.
type denialKey struct {
	uid      uint32
	unit     string
	overflow bool
}

type denialState struct {
	last       time.Time
	suppressed int
}

// allow reports whether a refusal by peer may be logged now, and how many
// were suppressed since the last line.
func (d *denialLog) allow(peer Peer, now time.Time) (int, bool) {
	k := denialKey{uid: peer.UID, unit: peer.Unit}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.seen == nil {
		d.seen = map[denialKey]*denialState{}
	}
	st := d.seen[k]
	if st == nil && len(d.seen) >= deniedLogPeers {
		for k, v := range d.seen { // many peers: forget the quiet ones
			if now.Sub(v.last) >= deniedLogEvery {
				delete(d.seen, k)
			}
		}
		if len(d.seen) >= deniedLogPeers {
			k = denialKey{overflow: true}
			st = d.seen[k]
		}
	}
	if st != nil && now.Sub(st.last) < deniedLogEvery {
		st.suppressed++
		return 0, false
	}
	n := 0
	if st != nil {
		n = st.suppressed
	}
	d.seen[k] = &denialState{last: now}
	return n, true
}
