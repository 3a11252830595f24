// Package floor is the performance floor the agent's HTTP path is measured
// against: the least a net/http server on a unix socket can do for a
// request — answer a fixed 16-byte value with three headers. bench/ runs it
// as a fourth column beside direct clientv3, endpointd and grpc-proxy, and
// server's BenchmarkRequest runs it beside the agent's own handlers.
package floor

import (
	"net/http"
)

// Value is what every request is answered with.
var Value = []byte("0123456789abcdef")

// Handler answers every request with Value, Content-Type, Content-Length
// and one header of the kind the agent sends (a revision).
func Handler() http.Handler {
	contentType := []string{"application/octet-stream"}
	length := []string{"16"}
	revision := []string{"42"}
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		h := w.Header()
		h["Content-Type"] = contentType
		h["Content-Length"] = length
		h["X-Etcd-Revision"] = revision
		w.Write(Value)
	})
}
