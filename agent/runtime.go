package agent

import (
	"os"
	"runtime"
	"runtime/debug"
	rtmetrics "runtime/metrics"
)

// Procs is how many Ps (GOMAXPROCS) the agent runs on unless the
// environment's GOMAXPROCS says otherwise. The agent relays: nearly every
// request is a read from one socket, a little work and a write to another.
// With two or more Ps a request's goroutines wake each other across Ps, and
// the runtime pays for that in futex wake-ups, spinning threads and extra
// epoll calls — 10–30% of the CPU a one-client request costs, less under
// load (docs/benchmarks.md, "Runtime settings"). On one P the same
// hand-offs are goroutine switches. It also holds the agent, which runs
// beside the host's real work, to one core under any load.
const Procs = 1

// GCPercent is the agent's GOGC unless the environment's GOGC says
// otherwise. The live heap is small (a few MiB, most of it the read cache),
// so at the default of 100 the collector runs often under load and a cached
// read pays for it; 200 halves the collections for 2–3 MiB more private
// memory under load and none at idle.
const GCPercent = 200

// TuneRuntime applies Procs and GCPercent, each unless its environment
// variable is set, so an operator's drop-in (Environment=GOMAXPROCS=2)
// still decides. cmd/endpointd calls it for `endpointd run` only, before
// anything starts; a library user's process keeps its own settings.
func TuneRuntime() {
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(Procs)
	}
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(GCPercent)
	}
}

// RuntimeSettings reports the process's GOMAXPROCS and GOGC as they are
// now, for the start-up log line.
func RuntimeSettings() (procs, gcPercent int) {
	s := []rtmetrics.Sample{{Name: "/gc/gogc:percent"}}
	rtmetrics.Read(s)
	// GOGC=off is stored as -1 and read back as its uint64 bits.
	return runtime.GOMAXPROCS(0), int(int64(s[0].Value.Uint64()))
}
