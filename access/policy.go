// Package access decides which local peers may touch which etcd keys: who a
// peer is (Identify, read from the kernel once per connection), what the
// rules allow it (Policy), and the agent's one decision with its audit
// (Gate). Every surface that takes keys from a peer — KV, watch,
// transactions, locks, elections, the gRPC socket — asks the Gate, and
// nothing else, so that one place holds the rule; a stream holds a Permit,
// which re-checks its keys after every reload.
//
// It does not own the sockets or the request formats: the server and
// grpcapi packages turn a refusal into their own 403 or PermissionDenied.
package access

import (
	"fmt"
	"strconv"
	"strings"
)

// Op is what a request does with its keys.
type Op uint8

const (
	// Read: GET, HEAD, watch, a transaction's compares and reads.
	Read Op = iota + 1
	// Write: PUT, DELETE (with conditions and TTL), a transaction's writes,
	// locks and elections.
	Write
)

func (o Op) String() string {
	switch o {
	case Read:
		return "read"
	case Write:
		return "write"
	}
	return "op(" + strconv.Itoa(int(o)) + ")"
}

// Rule grants the peers it matches some operations on key prefixes. A peer
// matches when any of UIDs, GIDs (primary or supplementary) or Units matches
// it. Names (users, groups) are resolved by the caller before the rule is
// built, so that a policy never looks anything up on the request path.
type Rule struct {
	Name  string
	UIDs  []uint32
	GIDs  []uint32
	Units []string // systemd unit names; '*' matches any run of characters
	// Prefixes the rule covers; "" covers every key.
	Prefixes []string
	Read     bool
	Write    bool
	// Rate (requests per second), Burst and MaxStreams limit each peer the
	// rule matches, each distinct (uid, unit) on its own (budget.go); 0 is
	// no limit.
	Rate       int
	Burst      int
	MaxStreams int
}

// limited: the rule sets a budget.
func (r *Rule) limited() bool { return r.Rate > 0 || r.MaxStreams > 0 }

// Policy is an immutable set of rules. The nil or empty Policy allows
// everything (no access: section).
type Policy struct {
	rules []Rule
}

// NewPolicy builds a policy from rules, refusing a rule that could never
// match or never allow anything (the config loader reports these with their
// positions first; this is the last line).
func NewPolicy(rules []Rule) (*Policy, error) {
	names := map[string]bool{}
	for i, r := range rules {
		switch {
		case r.Name == "":
			return nil, fmt.Errorf("access: rule %d has no name", i+1)
		case names[r.Name]:
			return nil, fmt.Errorf("access: rule %q is defined twice", r.Name)
		case len(r.UIDs)+len(r.GIDs)+len(r.Units) == 0:
			return nil, fmt.Errorf("access: rule %q matches no peer (no uids, users, gids, groups or units)", r.Name)
		case len(r.Prefixes) == 0:
			return nil, fmt.Errorf("access: rule %q covers no keys (no prefixes)", r.Name)
		case !r.Read && !r.Write:
			return nil, fmt.Errorf("access: rule %q allows nothing", r.Name)
		}
		names[r.Name] = true
	}
	return &Policy{rules: append([]Rule(nil), rules...)}, nil
}

// Enabled: the policy has rules, so peers are checked against them.
func (p *Policy) Enabled() bool { return p != nil && len(p.rules) > 0 }

// Rules returns the number of rules (metrics, logs).
func (p *Policy) Rules() int {
	if p == nil {
		return 0
	}
	return len(p.rules)
}

// Matches reports whether some rule matches the peer: such a peer may use
// the agent's own paths (/v1/status, /healthz, /readyz, /metrics). Without
// rules every peer does.
func (p *Policy) Matches(peer Peer) bool {
	if !p.Enabled() {
		return true
	}
	for i := range p.rules {
		if p.rules[i].matches(peer) {
			return true
		}
	}
	return false
}

// Check is the one access decision: may peer do op on key (with prefix, on
// every key under key)? It returns the name of the rule that allows it (""
// without rules), or a *Denied.
//
// A range is allowed only when it lies wholly inside a rule's prefix: a
// single key must start with one of the prefixes, and so must a prefix
// request's prefix — the keys under "bill" include "billing/…" and "bills",
// so a rule for "billing/" does not cover the prefix "bill". Either way the
// test is the same: key starts with an allowed prefix.
func (p *Policy) Check(peer Peer, op Op, key string, prefix bool) (string, error) {
	end := ""
	if prefix {
		end = PrefixEnd(key)
	}
	return p.CheckRange(peer, op, key, end)
}

// CheckRange is Check for etcd's range form, the one etcd's gRPC API
// speaks: end "" is the single key, "\x00" every key from key on, else the
// keys in [key, end). A range is allowed when one allowed prefix P covers
// all of it: key starts with P, and end is at most P's own range end — so
// Check's prefix requests are the case end = PrefixEnd(key).
func (p *Policy) CheckRange(peer Peer, op Op, key, end string) (string, error) {
	if !p.Enabled() {
		return "", nil
	}
	if peer.Known {
		for i := range p.rules {
			r := &p.rules[i]
			if !r.allows(op) || !r.matches(peer) {
				continue
			}
			for _, pre := range r.Prefixes {
				if covers(pre, key, end) {
					return r.Name, nil
				}
			}
		}
	}
	d := &Denied{Peer: peer, Op: op, Key: key}
	switch end {
	case "":
	case PrefixEnd(key):
		d.Prefix = true
	default:
		d.End, d.Range = end, true
	}
	return "", d
}

// CheckWriter is the decision for what writes no key by itself but lets
// keys be written — granting a lease: may peer write anywhere? It returns
// the name of the first rule that matches the peer and allows write (""
// without rules), or a *Denied.
func (p *Policy) CheckWriter(peer Peer) (string, error) {
	if !p.Enabled() {
		return "", nil
	}
	if peer.Known {
		for i := range p.rules {
			if r := &p.rules[i]; r.Write && r.matches(peer) {
				return r.Name, nil
			}
		}
	}
	return "", &Denied{Peer: peer, Op: Write, Lease: true}
}

// covers: every key of the range [key, end) (see CheckRange) starts with
// pre.
func covers(pre, key, end string) bool {
	if !strings.HasPrefix(key, pre) {
		return false
	}
	if end == "" {
		return true
	}
	limit := PrefixEnd(pre) // "\x00": pre is empty or all 0xff, every key from pre on
	if limit == "\x00" {
		return true
	}
	return end != "\x00" && end <= limit
}

// PrefixEnd is etcd's range end for the keys starting with prefix
// (clientv3.GetPrefixRangeEnd): prefix with its last byte below 0xff
// incremented and the rest dropped, or "\x00" (every key from prefix on)
// when there is none.
func PrefixEnd(prefix string) string {
	b := []byte(prefix)
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] < 0xff {
			b[i]++
			return string(b[:i+1])
		}
	}
	return "\x00"
}

func (r *Rule) allows(op Op) bool {
	return (op == Read && r.Read) || (op == Write && r.Write)
}

func (r *Rule) matches(peer Peer) bool {
	if !peer.Known {
		return false
	}
	for _, u := range r.UIDs {
		if peer.UID == u {
			return true
		}
	}
	for _, g := range r.GIDs {
		if peer.inGroup(g) {
			return true
		}
	}
	if peer.Unit != "" {
		for _, pat := range r.Units {
			if Glob(pat, peer.Unit) {
				return true
			}
		}
	}
	return false
}

// Denied is Check's refusal. Its message names the peer, the operation and
// the key — never the prefixes some other rule would have allowed.
type Denied struct {
	Peer   Peer
	Op     Op
	Key    string
	Prefix bool
	// Range: the keys from Key up to End (not a prefix's range).
	Range bool
	End   string
	// Lease: a lease grant, which needs write in some rule (CheckWriter).
	Lease bool
}

func (d *Denied) Error() string {
	switch {
	case d.Lease:
		return fmt.Sprintf("%s may not grant leases: no access rule that matches it allows write", d.Peer)
	case d.Range && d.End == "\x00":
		return fmt.Sprintf("%s may not %s the keys from %q on (access rules)", d.Peer, d.Op, d.Key)
	case d.Range:
		return fmt.Sprintf("%s may not %s the keys from %q to %q (access rules)", d.Peer, d.Op, d.Key, d.End)
	case d.Prefix:
		return fmt.Sprintf("%s may not %s keys under prefix %q (access rules)", d.Peer, d.Op, d.Key)
	}
	return fmt.Sprintf("%s may not %s key %q (access rules)", d.Peer, d.Op, d.Key)
}

// Glob matches name against pattern, in which '*' matches any run of
// characters (none included) and every other character only itself.
func Glob(pattern, name string) bool {
	// Greedy with backtracking to the last star: linear in practice, and
	// never exponential.
	p, n := 0, 0
	star, mark := -1, 0
	for n < len(name) {
		switch {
		case p < len(pattern) && pattern[p] == '*':
			star, mark = p, n
			p++
		case p < len(pattern) && pattern[p] == name[n]:
			p++
			n++
		case star >= 0:
			p = star + 1
			mark++
			n = mark
		default:
			return false
		}
	}
	for p < len(pattern) && pattern[p] == '*' {
		p++
	}
	return p == len(pattern)
}
