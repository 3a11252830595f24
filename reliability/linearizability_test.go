package reliability

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"udp_iaasd/client"
	"udp_iaasd/internal/etcdtest"
)

// The model is one register per key, as etcd's own robustness tests model
// KV: a value and the mod_revision that wrote it. Operations go through the
// agent's socket; their outcomes are what clients saw.

type opKind int

const (
	opGet opKind = iota
	opPut
	opCAS // PUT with If-Match: "<rev>"
)

type lInput struct {
	kind     opKind
	key      string
	value    string // put, cas
	expected int64  // cas: the mod_revision it requires
}

type lOutput struct {
	unknown bool   // timeout or broken connection: may or may not have happened
	ok      bool   // put/cas applied; get found the key
	value   string // get
	rev     int64  // get: mod_revision; put/cas: the new revision; failed cas: current_mod_revision
}

// lState is a register; rev -1 means "written by an operation whose outcome
// was unknown", so its revision was never seen.
type lState struct {
	exists bool
	value  string
	rev    int64
}

var registerModel = porcupine.NondeterministicModel{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[string][]porcupine.Operation{}
		var order []string
		for _, op := range history {
			k := op.Input.(lInput).key
			if _, ok := byKey[k]; !ok {
				order = append(order, k)
			}
			byKey[k] = append(byKey[k], op)
		}
		out := make([][]porcupine.Operation, 0, len(order))
		for _, k := range order {
			out = append(out, byKey[k])
		}
		return out
	},
	Init: func() []any { return []any{lState{}} },
	Step: func(st, in, out any) []any {
		s, i, o := st.(lState), in.(lInput), out.(lOutput)
		revMatches := func(r int64) bool { return s.rev == -1 || s.rev == r }
		switch i.kind {
		case opGet:
			if !o.ok {
				if !s.exists {
					return []any{s}
				}
				return nil
			}
			if s.exists && s.value == o.value && revMatches(o.rev) {
				return []any{lState{true, o.value, o.rev}} // learn an unknown revision
			}
			return nil
		case opPut:
			if o.unknown {
				return []any{s, lState{true, i.value, -1}}
			}
			if o.rev > 0 && (s.rev == -1 || o.rev > s.rev) {
				return []any{lState{true, i.value, o.rev}}
			}
			return nil
		case opCAS:
			holds := s.exists && revMatches(i.expected)
			switch {
			case o.unknown:
				if holds {
					return []any{s, lState{true, i.value, -1}}
				}
				return []any{s}
			case o.ok:
				if holds && (s.rev == -1 || o.rev > s.rev) {
					return []any{lState{true, i.value, o.rev}}
				}
				return nil
			default: // 412 with current_mod_revision (0: absent)
				if !s.exists && o.rev == 0 {
					return []any{s}
				}
				if s.exists && o.rev != i.expected && revMatches(o.rev) {
					return []any{lState{s.exists, s.value, o.rev}}
				}
				return nil
			}
		}
		return nil
	},
	Equal: func(a, b any) bool { return a.(lState) == b.(lState) },
	DescribeOperation: func(in, out any) string {
		i, o := in.(lInput), out.(lOutput)
		names := map[opKind]string{opGet: "get", opPut: "put", opCAS: "cas"}
		return fmt.Sprintf("%s(%s %q @%d) -> ok=%v unknown=%v %q rev=%d", names[i.kind], i.key, i.value, i.expected, o.ok, o.unknown, o.value, o.rev)
	},
}

// recorder collects a concurrent history with monotonic timestamps.
type recorder struct {
	start time.Time
	mu    sync.Mutex
	ops   []porcupine.Operation
	stats map[string]int
}

func (r *recorder) now() int64 { return int64(time.Since(r.start)) }

func (r *recorder) add(client int, in lInput, call int64, out lOutput, ret int64, outcome string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stats[outcome]++
	if outcome == "dropped" {
		return
	}
	if out.unknown {
		// Like etcd's robustness tests: an operation whose outcome is unknown
		// may take effect at any point after its call.
		ret = math.MaxInt64
	}
	r.ops = append(r.ops, porcupine.Operation{ClientId: client, Input: in, Call: call, Output: out, Return: ret})
}

// Reads, writes and compare-and-swaps through the socket while members are
// killed with SIGKILL and restarted; porcupine must find the history
// linearizable.
func TestLinearizability(t *testing.T) {
	if testing.Short() {
		t.Skip("runs member processes")
	}
	cluster := etcdtest.NewProc(t, 3)
	run := startAgent(t, cluster)
	c := run.Client
	rec := &recorder{start: time.Now(), stats: map[string]int{}}
	keys := []string{"lin/a", "lin/b", "lin/c", "lin/d"}
	duration := faultDuration(t, 12*time.Second)

	ctx := context.Background()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 42))
			lastRev := map[string]int64{}
			for seq := 0; ; seq++ {
				select {
				case <-stop:
					return
				default:
				}
				key := keys[rng.IntN(len(keys))]
				in := lInput{key: key, value: fmt.Sprintf("w%d-%d", w, seq)}
				switch p := rng.IntN(10); {
				case p < 4:
					in.kind = opGet
				case p < 7:
					in.kind = opPut
				default:
					in.kind, in.expected = opCAS, lastRev[key]
					if in.expected == 0 {
						in.kind = opPut
					}
				}
				call := rec.now()
				out, outcome := do(ctx, c, in)
				ret := rec.now()
				rec.add(w, in, call, out, ret, outcome)
				if out.ok && !out.unknown {
					lastRev[key] = out.rev
				} else if in.kind == opCAS && !out.unknown && out.rev > 0 {
					lastRev[key] = out.rev
				}
			}
		})
	}
	step := duration / 5
	time.Sleep(step)
	for _, m := range cluster.Members {
		m.Kill()
		time.Sleep(step / 3)
		if err := m.Restart(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(step)
	}
	close(stop)
	wg.Wait()

	res, info := porcupine.CheckOperationsVerbose(registerModel.ToModel(), rec.ops, 60*time.Second)
	t.Logf("LINEARIZABILITY: %d operations recorded (%v), verdict %s", len(rec.ops), rec.stats, res)
	if res != porcupine.Ok {
		out := filepath.Join(os.TempDir(), fmt.Sprintf("endpointd-linearizability-%d.html", time.Now().Unix()))
		if f, err := os.Create(out); err == nil {
			porcupine.Visualize(registerModel.ToModel(), info, f)
			f.Close()
			t.Logf("visualization: %s", out)
		}
		t.Fatalf("porcupine: %s", res)
	}
}

// do runs one operation and classifies its outcome: "ok" and "failed" are
// definite; "unknown" may or may not have taken effect; "dropped" (a failed
// read, or a write refused with 503 before reaching etcd) is left out of the
// history, having had no effect.
func do(ctx context.Context, c *client.Client, in lInput) (lOutput, string) {
	var err error
	var out lOutput
	switch in.kind {
	case opGet:
		var kv *client.KV
		kv, err = c.Get(ctx, in.key)
		if err == nil {
			return lOutput{ok: true, value: string(kv.Value), rev: kv.ModRevision}, "ok"
		}
		if errors.Is(err, client.ErrNotFound) {
			return lOutput{}, "ok"
		}
		return lOutput{}, "dropped"
	case opPut:
		out.rev, err = c.Put(ctx, in.key, []byte(in.value))
	case opCAS:
		out.rev, err = c.Put(ctx, in.key, []byte(in.value), client.IfModRevision(in.expected))
	}
	var apiErr *client.Error
	switch {
	case err == nil:
		out.ok = true
		return out, "ok"
	case errors.Is(err, client.ErrPreconditionFailed) && errors.As(err, &apiErr):
		return lOutput{rev: apiErr.CurrentModRevision}, "failed"
	case errors.Is(err, client.ErrUnavailable) && errors.As(err, &apiErr):
		// The API's promise: 503 means not sent to etcd, or refused before a
		// proposal. Trusting it here lets porcupine check it.
		return lOutput{}, "dropped"
	}
	return lOutput{unknown: true}, "unknown"
}

// The model is not vacuous: histories that break linearizability are
// rejected, and the ambiguous ones it must allow are allowed.
func TestRegisterModel(t *testing.T) {
	op := func(c int, in lInput, call int64, out lOutput, ret int64) porcupine.Operation {
		if out.unknown {
			ret = math.MaxInt64
		}
		return porcupine.Operation{ClientId: c, Input: in, Call: call, Output: out, Return: ret}
	}
	put := func(v string) lInput { return lInput{kind: opPut, key: "k", value: v} }
	get := lInput{kind: opGet, key: "k"}
	cas := func(exp int64, v string) lInput { return lInput{kind: opCAS, key: "k", value: v, expected: exp} }
	tests := []struct {
		name string
		ops  []porcupine.Operation
		want porcupine.CheckResult
	}{
		{"stale read after a write returned", []porcupine.Operation{
			op(0, put("a"), 0, lOutput{ok: true, rev: 5}, 10),
			op(1, put("b"), 20, lOutput{ok: true, rev: 6}, 30),
			op(2, get, 40, lOutput{ok: true, value: "a", rev: 5}, 50),
		}, porcupine.Illegal},
		{"read of a value never written", []porcupine.Operation{
			op(0, put("a"), 0, lOutput{ok: true, rev: 5}, 10),
			op(1, get, 20, lOutput{ok: true, value: "zzz", rev: 5}, 30),
		}, porcupine.Illegal},
		{"two CAS winners on one revision", []porcupine.Operation{
			op(0, put("a"), 0, lOutput{ok: true, rev: 5}, 10),
			op(1, cas(5, "x"), 20, lOutput{ok: true, rev: 6}, 30),
			op(2, cas(5, "y"), 20, lOutput{ok: true, rev: 7}, 30),
		}, porcupine.Illegal},
		{"lost acknowledged write", []porcupine.Operation{
			op(0, put("a"), 0, lOutput{ok: true, rev: 5}, 10),
			op(1, get, 20, lOutput{}, 30),
		}, porcupine.Illegal},
		{"concurrent write and read: either order", []porcupine.Operation{
			op(0, put("a"), 0, lOutput{ok: true, rev: 5}, 10),
			op(1, put("b"), 20, lOutput{ok: true, rev: 6}, 40),
			op(2, get, 25, lOutput{ok: true, value: "a", rev: 5}, 30),
		}, porcupine.Ok},
		{"unknown write seen later", []porcupine.Operation{
			op(0, put("a"), 0, lOutput{unknown: true}, 0),
			op(1, get, 100, lOutput{ok: true, value: "a", rev: 9}, 110),
		}, porcupine.Ok},
		{"unknown write never applied", []porcupine.Operation{
			op(0, put("a"), 0, lOutput{ok: true, rev: 5}, 10),
			op(0, put("b"), 20, lOutput{unknown: true}, 0),
			op(1, get, 100, lOutput{ok: true, value: "a", rev: 5}, 110),
		}, porcupine.Ok},
		{"failed CAS reports the current revision", []porcupine.Operation{
			op(0, put("a"), 0, lOutput{ok: true, rev: 5}, 10),
			op(1, cas(4, "x"), 20, lOutput{rev: 5}, 30),
		}, porcupine.Ok},
		{"failed CAS with a wrong current revision", []porcupine.Operation{
			op(0, put("a"), 0, lOutput{ok: true, rev: 5}, 10),
			op(1, cas(4, "x"), 20, lOutput{rev: 7}, 30),
		}, porcupine.Illegal},
	}
	for _, tt := range tests {
		if got := porcupine.CheckOperationsTimeout(registerModel.ToModel(), tt.ops, 10*time.Second); got != tt.want {
			t.Errorf("%s: %s, want %s", tt.name, got, tt.want)
		}
	}
}
