package access

import (
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// budgetGate is a gate over rules with a clock the test moves.
func budgetGate(t *testing.T, rules ...Rule) (*Gate, *time.Time) {
	t.Helper()
	p, err := NewPolicy(rules)
	if err != nil {
		t.Fatal(err)
	}
	g := NewGate(Settings{Policy: p}, prometheus.NewRegistry(), nil)
	now := time.Unix(1000, 0)
	g.now = func() time.Time { return now }
	return g, &now
}

func throttledBy(t *testing.T, err error, reason string) *Throttled {
	t.Helper()
	var th *Throttled
	if !errors.As(err, &th) || th.Reason != reason {
		t.Fatalf("err = %v, want a %s refusal", err, reason)
	}
	return th
}

// A peer's bucket: burst at once, then the rate; a refusal says when to
// come back. Each (uid, unit) has its own bucket; a peer of another rule
// is unaffected; the counter names the rule and the reason.
func TestRateBuckets(t *testing.T) {
	g, now := budgetGate(t,
		Rule{Name: "limited", UIDs: []uint32{10}, Prefixes: []string{""}, Read: true, Rate: 5, Burst: 5},
		Rule{Name: "free", UIDs: []uint32{20}, Prefixes: []string{""}, Read: true})
	a := Peer{Known: true, UID: 10, Unit: "a.service"}
	aForked := Peer{Known: true, UID: 10, PID: 99, Unit: "a.service"}
	aOtherUnit := Peer{Known: true, UID: 10, Unit: "b.service"}
	free := Peer{Known: true, UID: 20}
	for i := range 5 {
		if err := g.Spend(a); err != nil {
			t.Fatalf("request %d within the burst: %v", i, err)
		}
	}
	th := throttledBy(t, g.Spend(aForked), "rate") // another process of the same peer shares the bucket
	if th.Rule != "limited" || th.RetryAfter != time.Second {
		t.Fatalf("refusal %+v, want rule limited, retry after 1s", th)
	}
	if err := g.Spend(aOtherUnit); err != nil {
		t.Fatalf("the same uid in another unit has its own bucket: %v", err)
	}
	for range 100 {
		if err := g.Spend(free); err != nil {
			t.Fatalf("a peer of a rule without limits was throttled: %v", err)
		}
	}
	*now = now.Add(200 * time.Millisecond) // one token back at 5/s
	if err := g.Spend(a); err != nil {
		t.Fatalf("a token was back: %v", err)
	}
	throttledBy(t, g.Spend(a), "rate")
	if n := testutil.ToFloat64(g.throttled.WithLabelValues("limited", "rate")); n != 2 {
		t.Fatalf("endpointd_throttled_total{rule=limited,reason=rate} = %v, want 2", n)
	}
}

// max_streams: the next stream past the limit is refused at once, and
// closing one lets the next in.
func TestStreamLimit(t *testing.T) {
	g, _ := budgetGate(t, Rule{Name: "s", UIDs: []uint32{10}, Prefixes: []string{""}, Read: true, MaxStreams: 2})
	p := Peer{Known: true, UID: 10}
	r1, err := g.OpenStream(p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.OpenStream(p); err != nil {
		t.Fatal(err)
	}
	throttledBy(t, func() error { _, err := g.OpenStream(p); return err }(), "streams")
	r1()
	r1() // a second release gives nothing back twice
	if _, err := g.OpenStream(p); err != nil {
		t.Fatalf("after closing one: %v", err)
	}
	throttledBy(t, func() error { _, err := g.OpenStream(p); return err }(), "streams")
}

// A reload applies to the next request: a lowered rate at once, with the
// open streams kept (never cut) but counted against a lowered limit; a
// raised one frees the next request.
func TestBudgetReload(t *testing.T) {
	rule := Rule{Name: "r", UIDs: []uint32{10}, Prefixes: []string{""}, Read: true, Rate: 100, Burst: 100, MaxStreams: 3}
	g, now := budgetGate(t, rule)
	p := Peer{Known: true, UID: 10}
	for range 3 {
		if _, err := g.OpenStream(p); err != nil {
			t.Fatal(err)
		}
	}
	for range 10 {
		if err := g.Spend(p); err != nil {
			t.Fatal(err)
		}
	}
	lower := rule
	lower.Rate, lower.Burst, lower.MaxStreams = 1, 1, 1
	pol, _ := NewPolicy([]Rule{lower})
	g.Set(Settings{Policy: pol})
	*now = now.Add(time.Millisecond)
	// The bucket keeps its tokens (90) but may hold no more than the new
	// burst: one request, then refusals.
	if err := g.Spend(p); err != nil {
		t.Fatalf("first request after lowering: %v", err)
	}
	throttledBy(t, g.Spend(p), "rate")
	throttledBy(t, func() error { _, err := g.OpenStream(p); return err }(), "streams")

	pol, _ = NewPolicy([]Rule{rule})
	g.Set(Settings{Policy: pol})
	g.Spend(p) // the next request takes the new rate: time from here accrues at 100/s
	*now = now.Add(20 * time.Millisecond)
	if err := g.Spend(p); err != nil {
		t.Fatalf("after raising: %v", err)
	}
	if _, err := g.OpenStream(p); err == nil {
		t.Fatal("a fourth stream with three open and max_streams 3")
	}

	// Without limits anywhere, nothing is counted or refused.
	pol, _ = NewPolicy([]Rule{{Name: "r", UIDs: []uint32{10}, Prefixes: []string{""}, Read: true}})
	g.Set(Settings{Policy: pol})
	for range 1000 {
		if err := g.Spend(p); err != nil {
			t.Fatal(err)
		}
	}
}

// The first matching rule that sets limits decides; the host budget's
// refusals are named after the peer's first matching rule.
func TestLimitsRuleChoice(t *testing.T) {
	g, _ := budgetGate(t,
		Rule{Name: "reads", UIDs: []uint32{10}, Prefixes: []string{"a/"}, Read: true},
		Rule{Name: "limit", UIDs: []uint32{10}, Prefixes: []string{"b/"}, Write: true, Rate: 1, Burst: 1},
		Rule{Name: "looser", UIDs: []uint32{10}, Prefixes: []string{"c/"}, Write: true, Rate: 1000})
	p := Peer{Known: true, UID: 10}
	g.Spend(p)
	if th := throttledBy(t, g.Spend(p), "rate"); th.Rule != "limit" {
		t.Fatalf("limited by %q, want the first rule with limits", th.Rule)
	}
	if th := g.RefusedByEtcdBudget(p, 1500*time.Millisecond); th.Rule != "reads" || th.RetryAfter != 2*time.Second {
		t.Fatalf("host budget refusal %+v, want rule reads, retry after 2s", th)
	}
}

// The steady state of a budget that is not exceeded allocates nothing.
func TestSpendAllocations(t *testing.T) {
	g, _ := budgetGate(t, Rule{Name: "r", UIDs: []uint32{10}, Prefixes: []string{""}, Read: true, Rate: 1 << 30, Burst: 1 << 30})
	g.now = time.Now
	p := Peer{Known: true, UID: 10, Unit: "x.service"}
	g.Spend(p)
	if n := testing.AllocsPerRun(1000, func() { g.Spend(p) }); n != 0 {
		t.Fatalf("Spend allocates %v times per request", n)
	}
}
