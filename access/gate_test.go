package access

import (
	"testing"
	"time"
)

// Refusals are logged at most once per interval per (uid, unit) — not per
// process, so a client forking per request is one peer — saying how many
// were left out.
func TestDenialLogRateLimit(t *testing.T) {
	var d denialLog
	p := Peer{Known: true, UID: 5, PID: 77, Unit: "a.service"}
	forked := Peer{Known: true, UID: 5, PID: 78, Unit: "a.service"}
	otherUnit := Peer{Known: true, UID: 5, PID: 79, Unit: "b.service"}
	otherUID := Peer{Known: true, UID: 6, PID: 80, Unit: "a.service"}
	t0 := time.Unix(1000, 0)
	if _, ok := d.allow(p, t0); !ok {
		t.Fatal("first refusal not logged")
	}
	for i := range 5 {
		if _, ok := d.allow(p, t0.Add(time.Duration(i)*time.Second)); ok {
			t.Fatal("a refusal within the interval was logged")
		}
		if _, ok := d.allow(forked, t0.Add(time.Duration(i)*time.Second)); ok {
			t.Fatal("another process of the same uid and unit was logged within the interval")
		}
	}
	for _, o := range []Peer{otherUnit, otherUID} {
		if _, ok := d.allow(o, t0.Add(time.Second)); !ok {
			t.Fatalf("%s: its refusal was held back by another peer's", o)
		}
	}
	n, ok := d.allow(p, t0.Add(deniedLogEvery))
	if !ok || n != 10 {
		t.Fatalf("after the interval: logged %v, suppressed %d; want true, 10", ok, n)
	}
}

// However many peers are refused at once, the log remembers a bounded
// number, and the newcomers past it share one line per interval.
func TestDenialLogBounded(t *testing.T) {
	var d denialLog
	t0 := time.Unix(1000, 0)
	logged := 0
	const peers = 3 * deniedLogPeers
	for i := range peers {
		if _, ok := d.allow(Peer{Known: true, UID: uint32(10000 + i)}, t0); ok {
			logged++
		}
	}
	if len(d.seen) > deniedLogPeers+1 {
		t.Fatalf("%d peers remembered, want at most %d", len(d.seen), deniedLogPeers+1)
	}
	if logged != deniedLogPeers+1 {
		t.Fatalf("%d lines logged for %d peers, want %d (one per remembered peer, one for the rest)", logged, peers, deniedLogPeers+1)
	}
	// Once they are quiet, a new peer is remembered again.
	later := t0.Add(deniedLogEvery)
	if _, ok := d.allow(Peer{Known: true, UID: 1}, later); !ok {
		t.Fatal("a new peer after the interval was not logged")
	}
	if _, ok := d.allow(Peer{Known: true, UID: 1}, later); ok {
		t.Fatal("the new peer's second refusal was logged")
	}
	if len(d.seen) > deniedLogPeers+1 {
		t.Fatalf("%d peers remembered, want at most %d", len(d.seen), deniedLogPeers+1)
	}
}

// A lease grant needs write in some rule that matches the peer.
func TestCheckWriter(t *testing.T) {
	p, err := NewPolicy([]Rule{
		{Name: "readers", UIDs: []uint32{1}, Prefixes: []string{"a/"}, Read: true},
		{Name: "writers", UIDs: []uint32{2}, Prefixes: []string{"b/"}, Read: true, Write: true},
	})
	if err != nil {
		t.Fatal(err)
	}
	if rule, err := p.CheckWriter(Peer{Known: true, UID: 2}); err != nil || rule != "writers" {
		t.Fatalf("writer: %q, %v", rule, err)
	}
	for _, peer := range []Peer{{Known: true, UID: 1}, {Known: true, UID: 3}, {UID: 2}} {
		_, err := p.CheckWriter(peer)
		if d, ok := err.(*Denied); !ok || !d.Lease {
			t.Fatalf("%s: %v, want a lease refusal", peer, err)
		}
	}
	if got := (&Denied{Peer: Peer{Known: true, UID: 1}, Op: Write, Lease: true}).Error(); got != "uid 1 may not grant leases: no access rule that matches it allows write" {
		t.Fatalf("message: %q", got)
	}
	var none *Policy
	if _, err := none.CheckWriter(Peer{}); err != nil {
		t.Fatalf("without rules: %v", err)
	}
}
