package access

import (
	"fmt"
	"math"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Budgets (API.md "Budgets"): an access rule may carry rate, burst and
// max_streams, and each peer it matches — each distinct (uid, unit), so that
// a client forking a process per request is one peer, and two services
// sharing a user are two — has its own token bucket and stream count. The
// first matching rule that sets limits decides. Every surface spends a
// peer's budget through the gate (Spend, OpenStream), beside the access
// decision, so HTTP and gRPC share one budget per peer.
//
// The host budget toward etcd (etcd.max_requests_per_second) is spent where
// requests leave for etcd (etcd's fair queue); the gate only counts and logs
// its refusals (RefusedByEtcdBudget), under the peer's first matching rule.

// limited reports whether some rule sets a budget (a cheap test that
// keeps the request path free of budget work when none does).
func (p *Policy) limited() bool {
	if p == nil {
		return false
	}
	for i := range p.rules {
		if p.rules[i].limited() {
			return true
		}
	}
	return false
}

// limitsFor returns the first rule matching peer that sets a budget.
func (p *Policy) limitsFor(peer Peer) *Rule {
	if p == nil {
		return nil
	}
	for i := range p.rules {
		if r := &p.rules[i]; r.limited() && r.matches(peer) {
			return r
		}
	}
	return nil
}

// firstMatch names the first rule matching peer ("none").
func (p *Policy) firstMatch(peer Peer) string {
	if p != nil {
		for i := range p.rules {
			if p.rules[i].matches(peer) {
				return p.rules[i].Name
			}
		}
	}
	return "none"
}

// Throttled is a request or stream refused by a budget: 429
// too_many_requests over HTTP, ResourceExhausted over gRPC.
type Throttled struct {
	Peer Peer
	// Rule is the rule whose limit refused it (for the host budget, the
	// first rule matching the peer; "none" without one).
	Rule string
	// Reason is "rate", "streams" or "etcd_budget".
	Reason string
	// RetryAfter is when a retry may succeed; at least a second, in whole
	// seconds (Retry-After).
	RetryAfter time.Duration
	limit      int
}

func (t *Throttled) Error() string {
	switch t.Reason {
	case "streams":
		return fmt.Sprintf("%s has %d streams open, the most access rule %q allows (max_streams); close one first",
			t.Peer, t.limit, t.Rule)
	case "etcd_budget":
		return fmt.Sprintf("the host's budget toward etcd (etcd.max_requests_per_second) cannot send this request before its deadline; retry in %s",
			t.RetryAfter)
	}
	return fmt.Sprintf("%s is over its rate of %d requests/s (access rule %q); retry in %s", t.Peer, t.limit, t.Rule, t.RetryAfter)
}

// RetryAfterSeconds is Retry-After's value: whole seconds, at least 1.
func RetryAfterSeconds(d time.Duration) int64 {
	return max(1, int64(math.Ceil(d.Seconds())))
}

// budgets holds each peer's bucket and stream count, in bounded memory.
type budgets struct {
	mu    sync.Mutex // guards peers
	peers map[denialKey]*peerBudget
}

// peerBudget is one peer's budget under the settings it was resolved by.
// Its fields are guarded by budgets.mu.
type peerBudget struct {
	settings   *Settings // the settings it was resolved by; a reload re-resolves
	rule       string
	lim        *rate.Limiter // nil: no rate
	ratePerSec int
	maxStreams int
	streams    int
}

// maxBudgetPeers bounds the peers remembered; past it, those with nothing
// open are forgotten (their buckets start full again).
const maxBudgetPeers = 4096

// budgetFor resolves peer's budget under s. b.mu held.
func (b *budgets) budgetFor(s *Settings, peer Peer, now time.Time) *peerBudget {
	k := denialKey{uid: peer.UID, unit: peer.Unit}
	pb := b.peers[k]
	if pb == nil {
		if b.peers == nil {
			b.peers = map[denialKey]*peerBudget{}
		}
		if len(b.peers) >= maxBudgetPeers {
			for k, v := range b.peers {
				if v.streams == 0 {
					delete(b.peers, k)
				}
			}
		}
		pb = &peerBudget{}
		b.peers[k] = pb
	}
	if pb.settings != s {
		// A reload: the new limits apply from this request on; the tokens
		// and the open streams are kept, so a lowered budget never cuts a
		// running stream and a raised one frees the next request.
		pb.settings, pb.rule, pb.ratePerSec, pb.maxStreams = s, "", 0, 0
		if r := s.Policy.limitsFor(peer); r != nil {
			pb.rule, pb.ratePerSec, pb.maxStreams = r.Name, r.Rate, r.MaxStreams
			if r.Rate > 0 {
				burst := max(1, r.Burst)
				if pb.lim == nil {
					pb.lim = rate.NewLimiter(rate.Limit(r.Rate), burst)
				} else {
					pb.lim.SetLimitAt(now, rate.Limit(r.Rate))
					pb.lim.SetBurstAt(now, burst)
				}
			}
		}
		if pb.ratePerSec == 0 {
			pb.lim = nil
		}
	}
	return pb
}

// Spend takes one request from peer's rate (API.md "What rate counts":
// every request on the key paths, every watch, lock or election opened,
// every gRPC call or stream — answers from the cache included). It returns
// nil, or a *Throttled that is counted and logged, rate-limited.
func (g *Gate) Spend(peer Peer) error {
	s := g.settings.Load()
	if !s.limited {
		return nil
	}
	now := g.now()
	g.budgets.mu.Lock()
	pb := g.budgets.budgetFor(s, peer, now)
	if pb.lim == nil || pb.lim.AllowN(now, 1) {
		g.budgets.mu.Unlock()
		return nil
	}
	// The wait until one token is back: what is missing, at the rate.
	missing := 1 - pb.lim.TokensAt(now)
	t := &Throttled{Peer: peer, Rule: pb.rule, Reason: "rate", limit: pb.ratePerSec,
		RetryAfter: time.Duration(RetryAfterSeconds(time.Duration(missing/float64(pb.ratePerSec)*float64(time.Second)))) * time.Second}
	g.budgets.mu.Unlock()
	g.throttle(t)
	return t
}

// OpenStream takes one of peer's max_streams for a watch, lock or election
// stream (on gRPC, a Watch, LeaseKeepAlive or Observe stream); release
// gives it back when the stream ends. Past the limit it returns a
// *Throttled at once.
func (g *Gate) OpenStream(peer Peer) (release func(), err error) {
	s := g.settings.Load()
	if !s.limited {
		return func() {}, nil
	}
	g.budgets.mu.Lock()
	pb := g.budgets.budgetFor(s, peer, g.now())
	if pb.maxStreams > 0 && pb.streams >= pb.maxStreams {
		t := &Throttled{Peer: peer, Rule: pb.rule, Reason: "streams", limit: pb.maxStreams, RetryAfter: time.Second}
		g.budgets.mu.Unlock()
		g.throttle(t)
		return nil, t
	}
	pb.streams++
	g.budgets.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			g.budgets.mu.Lock()
			pb.streams--
			g.budgets.mu.Unlock()
		})
	}, nil
}

// RefusedByEtcdBudget counts and logs a request of peer that the host
// budget could not send before its deadline, and returns its *Throttled.
func (g *Gate) RefusedByEtcdBudget(peer Peer, retryAfter time.Duration) *Throttled {
	t := &Throttled{Peer: peer, Rule: g.settings.Load().Policy.firstMatch(peer), Reason: "etcd_budget",
		RetryAfter: time.Duration(RetryAfterSeconds(retryAfter)) * time.Second}
	g.throttle(t)
	return t
}

// throttle counts a refusal by a budget and logs it, at most once per
// deniedLogEvery per (uid, unit), like an access refusal.
func (g *Gate) throttle(t *Throttled) {
	g.throttled.WithLabelValues(t.Rule, t.Reason).Inc()
	if n, ok := g.throttles.allow(t.Peer, g.now()); ok {
		g.log.Warn("request throttled", "uid", t.Peer.UID, "pid", t.Peer.PID, "unit", t.Peer.Unit, "rule", t.Rule,
			"reason", t.Reason, "retry_after", t.RetryAfter, "not_logged_before", n)
	}
}
