package access

import (
	"testing"
	"time"
)

// Refusals are logged at most once per interval per peer, saying how many
// were left out.
func TestDenialLogRateLimit(t *testing.T) {
	var d denialLog
	p := Peer{Known: true, UID: 5, PID: 77}
	other := Peer{Known: true, UID: 5, PID: 78}
	t0 := time.Unix(1000, 0)
	if _, ok := d.allow(p, t0); !ok {
		t.Fatal("first refusal not logged")
	}
	for i := range 5 {
		if _, ok := d.allow(p, t0.Add(time.Duration(i)*time.Second)); ok {
			t.Fatal("a refusal within the interval was logged")
		}
	}
	if _, ok := d.allow(other, t0.Add(time.Second)); !ok {
		t.Fatal("another peer's refusal was held back")
	}
	n, ok := d.allow(p, t0.Add(deniedLogEvery))
	if !ok || n != 5 {
		t.Fatalf("after the interval: logged %v, suppressed %d; want true, 5", ok, n)
	}
}
