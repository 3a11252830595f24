// Package reliability is endpointd's proof under faults: fault-injection and
// linearizability tests that run the whole agent in front of etcd members in
// separate processes (so kill -9 is real), and, in reliability/soak, a soak
// program. It has no code of its own beyond tests; see docs/reliability.md.
package reliability
