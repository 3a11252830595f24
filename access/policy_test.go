package access

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
)

func mustPolicy(t *testing.T, rules ...Rule) *Policy {
	t.Helper()
	p, err := NewPolicy(rules)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCheck(t *testing.T) {
	p := mustPolicy(t,
		Rule{Name: "billing", UIDs: []uint32{1001}, Prefixes: []string{"billing/"}, Read: true, Write: true},
		Rule{Name: "readers", GIDs: []uint32{2000}, Prefixes: []string{"shared/", "billing/public/"}, Read: true},
		Rule{Name: "unit", Units: []string{"web-*.service"}, Prefixes: []string{"web/"}, Read: true, Write: true},
		Rule{Name: "root", UIDs: []uint32{0}, Prefixes: []string{""}, Read: true, Write: true},
	)
	billing := Peer{Known: true, UID: 1001, GID: 1001}
	reader := Peer{Known: true, UID: 1500, GID: 1500, Groups: []uint32{7, 2000}}
	web := Peer{Known: true, UID: 61234, GID: 61234, Unit: "web-frontend.service"}
	stranger := Peer{Known: true, UID: 4242, GID: 4242}
	for _, tc := range []struct {
		name   string
		peer   Peer
		op     Op
		key    string
		prefix bool
		rule   string // "" = denied
	}{
		{"own key", billing, Write, "billing/x", false, "billing"},
		{"own prefix", billing, Read, "billing/", true, "billing"},
		{"deeper prefix", billing, Read, "billing/a/b", true, "billing"},
		{"the prefix without its slash", billing, Read, "billing", true, ""},
		{"a shorter prefix covers more than the rule", billing, Read, "bill", true, ""},
		{"everything", billing, Read, "", true, ""},
		{"other key", billing, Read, "shared/x", false, ""},
		{"supplementary group reads", reader, Read, "shared/x", false, "readers"},
		{"supplementary group may not write", reader, Write, "shared/x", false, ""},
		{"second prefix of a rule", reader, Read, "billing/public/rates", false, "readers"},
		{"unit glob", web, Write, "web/sessions", false, "unit"},
		{"unit glob, other prefix", web, Read, "billing/x", false, ""},
		{"no rule matches", stranger, Read, "shared/x", false, ""},
		{"empty prefix rule covers all", Peer{Known: true}, Write, "", true, "root"},
		{"unknown peer", Peer{}, Read, "shared/x", false, ""},
		{"unknown peer with uid 0 fields", Peer{UID: 0}, Read, "x", false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rule, err := p.Check(tc.peer, tc.op, tc.key, tc.prefix)
			if tc.rule == "" {
				var d *Denied
				if !errors.As(err, &d) {
					t.Fatalf("allowed by %q, want denied", rule)
				}
				msg := err.Error()
				if !strings.Contains(msg, tc.op.String()) || !strings.Contains(msg, tc.key) {
					t.Errorf("message %q does not name the operation and key", msg)
				}
				for _, leak := range []string{"shared/", "web/", "billing/public"} {
					if !strings.HasPrefix(tc.key, leak) && strings.Contains(msg, leak) {
						t.Errorf("message %q names another rule's prefix %q", msg, leak)
					}
				}
				return
			}
			if err != nil || rule != tc.rule {
				t.Fatalf("got rule %q, err %v; want rule %q", rule, err, tc.rule)
			}
		})
	}
}

func TestNoPolicyAllows(t *testing.T) {
	for _, p := range []*Policy{nil, mustPolicy(t)} {
		if _, err := p.Check(Peer{}, Write, "anything", true); err != nil || !p.Matches(Peer{}) || p.Enabled() {
			t.Fatalf("a policy without rules must allow everything: %v", err)
		}
	}
}

func TestMatches(t *testing.T) {
	p := mustPolicy(t, Rule{Name: "a", UIDs: []uint32{5}, Prefixes: []string{"a/"}, Read: true})
	if !p.Matches(Peer{Known: true, UID: 5}) || p.Matches(Peer{Known: true, UID: 6}) || p.Matches(Peer{UID: 5}) {
		t.Fatal("Matches")
	}
}

func TestNewPolicyRefuses(t *testing.T) {
	for _, rules := range [][]Rule{
		{{UIDs: []uint32{1}, Prefixes: []string{""}, Read: true}},
		{{Name: "a", Prefixes: []string{""}, Read: true}},
		{{Name: "a", UIDs: []uint32{1}, Read: true}},
		{{Name: "a", UIDs: []uint32{1}, Prefixes: []string{""}}},
		{{Name: "a", UIDs: []uint32{1}, Prefixes: []string{""}, Read: true}, {Name: "a", UIDs: []uint32{2}, Prefixes: []string{""}, Read: true}},
	} {
		if _, err := NewPolicy(rules); err == nil {
			t.Errorf("NewPolicy(%+v) accepted", rules)
		}
	}
}

func TestGlob(t *testing.T) {
	for _, tc := range []struct {
		pat, name string
		want      bool
	}{
		{"billing.service", "billing.service", true},
		{"billing.service", "billing.services", false},
		{"billing-*.service", "billing-eu.service", true},
		{"billing-*.service", "billing-.service", true},
		{"billing-*.service", "billing.service", false},
		{"*", "", true},
		{"*", "anything.scope", true},
		{"a*b*c", "aXXbYYc", true},
		{"a*b*c", "aXXcYYb", false},
		{"*.service", "x.service.d", false},
		{"run-*.scope", "run-u12.scope", true},
		{"?.service", "a.service", false}, // only * is special
		{"[ab].service", "a.service", false},
	} {
		if got := Glob(tc.pat, tc.name); got != tc.want {
			t.Errorf("Glob(%q, %q) = %v, want %v", tc.pat, tc.name, got, tc.want)
		}
	}
}

// The property: Check allows a prefix request exactly when every key etcd's
// range for that prefix could return is covered by the peer's rules for the
// operation — checked against a brute-force reference over every key of a
// small alphabet that includes '/', 0x00 and 0xff, the bytes where prefix
// arithmetic goes wrong. etcd's range for prefix P is [P, end(P)), end(P)
// being P with its last non-0xff byte incremented (and the rest dropped), or
// everything from P when P is all 0xff, or every key when P is empty.
func TestPrefixRangeProperty(t *testing.T) {
	alphabet := []byte{'a', 'b', '/', 0x00, 0xff}
	var universe []string
	var gen func(string, int)
	gen = func(s string, n int) {
		universe = append(universe, s)
		if n == 0 {
			return
		}
		for _, c := range alphabet {
			gen(s+string([]byte{c}), n-1)
		}
	}
	gen("", 4)

	rng := rand.New(rand.NewPCG(1, 2))
	randKey := func(maxLen int) string {
		b := make([]byte, rng.IntN(maxLen+1))
		for i := range b {
			b[i] = alphabet[rng.IntN(len(alphabet))]
		}
		return string(b)
	}
	peer := Peer{Known: true, UID: 1}
	for round := range 300 {
		var prefixes []string
		for range 1 + rng.IntN(3) {
			prefixes = append(prefixes, randKey(3))
		}
		p := mustPolicy(t, Rule{Name: "r", UIDs: []uint32{1}, Prefixes: prefixes, Read: true})
		for range 40 {
			q := randKey(3)
			_, err := p.Check(peer, Read, q, true)
			want := true
			for _, k := range universe {
				if inPrefixRange(k, q) && !coveredBy(k, prefixes) {
					want = false
					break
				}
			}
			if got := err == nil; got != want {
				t.Fatalf("round %d: rules %q, prefix %q: Check allows=%v, reference=%v", round, prefixes, q, got, want)
			}
			// A single key is allowed exactly when it is covered.
			_, err = p.Check(peer, Read, q, false)
			if got := err == nil; got != coveredBy(q, prefixes) {
				t.Fatalf("round %d: rules %q, key %q: Check allows=%v", round, prefixes, q, got)
			}
		}
	}
}

// inPrefixRange is etcd's range for a prefix (clientv3.GetPrefixRangeEnd).
func inPrefixRange(k, prefix string) bool {
	if prefix == "" {
		return true
	}
	if k < prefix {
		return false
	}
	end := []byte(prefix)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] < 0xff {
			end[i]++
			end = end[:i+1]
			return k < string(end)
		}
	}
	return true // all 0xff: every key from prefix on ("\x00" end)
}

func coveredBy(k string, prefixes []string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(k, p) {
			return true
		}
	}
	return false
}

// BenchmarkCheck: 20 rules, the allowing one last, a peer with groups and a
// unit (so every matcher runs on every rule).
func BenchmarkCheck(b *testing.B) {
	var rules []Rule
	for i := range 19 {
		rules = append(rules, Rule{Name: fmt.Sprint(i), UIDs: []uint32{uint32(50000 + i)}, GIDs: []uint32{uint32(60000 + i)},
			Units: []string{fmt.Sprintf("svc-%d-*.service", i)}, Prefixes: []string{fmt.Sprintf("svc%d/", i)}, Read: true})
	}
	rules = append(rules, Rule{Name: "last", Units: []string{"web-*.service"}, Prefixes: []string{"web/"}, Read: true})
	p, err := NewPolicy(rules)
	if err != nil {
		b.Fatal(err)
	}
	peer := Peer{Known: true, UID: 1000, GID: 1000, Groups: []uint32{4, 24, 27}, Unit: "web-frontend.service"}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := p.Check(peer, Read, "web/sessions/abc", false); err != nil {
			b.Fatal(err)
		}
	}
}

// CheckRange against a brute-force reference: a range is allowed exactly
// when one rule prefix holds every key in it. The universe of keys holds
// every short key of the alphabet plus each prefix's own range end — the
// first key past a prefix, the witness that a range runs over its end.
func TestRangeProperty(t *testing.T) {
	alphabet := []byte{'a', 'b', '/', 0x00, 0xff}
	rng := rand.New(rand.NewPCG(3, 4))
	randKey := func(maxLen int) string {
		b := make([]byte, rng.IntN(maxLen+1))
		for i := range b {
			b[i] = alphabet[rng.IntN(len(alphabet))]
		}
		return string(b)
	}
	var base []string
	var gen func(string, int)
	gen = func(s string, n int) {
		base = append(base, s)
		if n == 0 {
			return
		}
		for _, c := range alphabet {
			gen(s+string([]byte{c}), n-1)
		}
	}
	gen("", 3)
	inRange := func(k, key, end string) bool {
		switch end {
		case "":
			return k == key
		case "\x00":
			return k >= key
		}
		return k >= key && k < end
	}
	peer := Peer{Known: true, UID: 1}
	for round := range 300 {
		var prefixes []string
		for range 1 + rng.IntN(3) {
			prefixes = append(prefixes, randKey(2))
		}
		p := mustPolicy(t, Rule{Name: "r", UIDs: []uint32{1}, Prefixes: prefixes, Read: true})
		universe := append([]string(nil), base...)
		for _, pre := range prefixes {
			if e := PrefixEnd(pre); e != "\x00" {
				universe = append(universe, e)
			}
		}
		for range 40 {
			key := randKey(3)
			var end string
			switch rng.IntN(4) {
			case 0:
				end = ""
			case 1:
				end = "\x00"
			case 2:
				end = PrefixEnd(key)
			default:
				end = randKey(3)
				if end <= key || end == "\x00" {
					continue // empty ranges are refused, not checked against the reference
				}
			}
			universe := append(universe, key)
			want := false
			for _, pre := range prefixes {
				all := true
				for _, k := range universe {
					if inRange(k, key, end) && !strings.HasPrefix(k, pre) {
						all = false
						break
					}
				}
				want = want || all
			}
			_, err := p.CheckRange(peer, Read, key, end)
			if got := err == nil; got != want {
				t.Fatalf("round %d: prefixes %q, range [%q, %q): CheckRange allows=%v, reference=%v", round, prefixes, key, end, got, want)
			}
		}
	}
}
