// Package server is endpointd's local HTTP API: HTTP/1.1 over a unix socket
// — the KV, watch, transaction, lock and election paths, /v1/status,
// /healthz, /readyz and /metrics — with JSON errors and limits against
// misbehaving local clients.
//
// It owns request handling, encoding (the wire vocabulary is package api's;
// stream.go is the one NDJSON writer) and the socket's listener. It does
// not own the etcd client (it is handed one; watches follow etcd.Follow),
// the access decision (the agent's access.Gate, shared with the gRPC
// socket), the endpoint files or the process: the agent wires those
// together and supplies the status it reports.
package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"udp_iaasd/access"
	"udp_iaasd/api"
	"udp_iaasd/cache"
	"udp_iaasd/etcd"
)

// Limits are the settings a SIGHUP may change while the server runs.
type Limits struct {
	MaxKeyBytes   int
	MaxValueBytes int
	MaxWatches    int
	MaxTxnBytes   int
	// StaleIfError is the stale-if-error of reads of cached prefixes that
	// send none (cache.stale_if_error); 0: nothing stale unless asked.
	StaleIfError time.Duration
}

// DefaultMaxTxnBytes is limits.max_txn_bytes's default (CONFIG.md).
const DefaultMaxTxnBytes = 2 << 20

// Options configure New.
type Options struct {
	Etcd *etcd.EtcdClient
	// Cache, when set, answers serializable reads under its prefixes.
	Cache  *cache.Cache
	Limits Limits
	// Gate is the access decision every request asks (the agent's, shared
	// with the gRPC socket); nil admits every peer to every key.
	Gate *access.Gate
	// Status reports the agent's state for /v1/status and /readyz.
	Status func() api.Status
	// Registry receives the server's metrics and is served on /metrics.
	Registry *prometheus.Registry
	Logger   *slog.Logger

	// HTTP server protections (see config.Limits).
	MaxHeaderBytes    int
	ReadHeaderTimeout time.Duration
	IdleTimeout       time.Duration
	MaxConnections    int
	ShutdownTimeout   time.Duration
}

// Server serves the local API. Build it with New.
type Server struct {
	etcd    *etcd.EtcdClient
	cache   *cache.Cache
	status  func() api.Status
	log     *slog.Logger
	opts    Options
	gate    *access.Gate
	limits  atomic.Pointer[Limits]
	metrics *metrics
	promh   http.Handler

	watchers atomic.Int64
	newConns atomic.Int64 // connections accepted whose first request is not read yet
	fresh    sync.Map     // those connections (net.Conn → struct{})
	settled  changes      // told when newConns falls or an Accept ends
	// stopping is closed when shutdown begins, so open watch streams end
	// with an ERROR line instead of holding the drain to its deadline.
	stopping     chan struct{}
	stoppingOnce sync.Once
}

// New builds a server. It does not listen; call Serve.
func New(opts Options) *Server {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Registry == nil {
		opts.Registry = prometheus.NewRegistry()
	}
	if opts.ShutdownTimeout <= 0 {
		opts.ShutdownTimeout = 10 * time.Second
	}
	s := &Server{
		etcd:     opts.Etcd,
		cache:    opts.Cache,
		status:   opts.Status,
		log:      opts.Logger,
		opts:     opts,
		gate:     opts.Gate,
		stopping: make(chan struct{}),
	}
	if s.gate == nil {
		s.gate = access.NewGate(access.Settings{}, opts.Registry, opts.Logger)
	}
	s.SetLimits(opts.Limits)
	s.metrics = newMetrics(opts.Registry, &s.watchers)
	s.promh = promhttp.HandlerFor(opts.Registry, promhttp.HandlerOpts{ErrorLog: slogPrinter{s.log}})
	return s
}

// SetLimits replaces the live limits (SIGHUP).
func (s *Server) SetLimits(l Limits) {
	if l.MaxTxnBytes <= 0 {
		l.MaxTxnBytes = DefaultMaxTxnBytes
	}
	s.limits.Store(&l)
}

// Serve serves on ln until ctx ends, then stops accepting, ends open watch
// streams, lets in-flight requests finish within the shutdown budget, and
// returns. It closes ln.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: s.opts.ReadHeaderTimeout,
		MaxHeaderBytes:    s.opts.MaxHeaderBytes,
		IdleTimeout:       s.opts.IdleTimeout,
		ConnContext:       connContext,
		ConnState:         s.countNew,
		ErrorLog:          slogLogger(s.log),
	}
	srv.RegisterOnShutdown(s.beginStopping)
	ll := limitListener(ln, s.opts.MaxConnections, s.accepted, s.settled.notify)
	ln = ll

	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("server: %w", err)
	case <-ctx.Done():
	}
	// Stop taking connections, then let those already taken deliver their
	// request before shutting down: net/http closes, unanswered, a
	// connection whose request it reads after Shutdown began, and its
	// client sees EOF. Connections still queued stay in the socket's
	// backlog — for the next agent when systemd holds the socket.
	ll.stopAccepting()
	s.awaitNoNewConns(ll, max(s.opts.ReadHeaderTimeout, time.Second))
	sctx, cancel := context.WithTimeout(context.Background(), s.opts.ShutdownTimeout)
	defer cancel()
	err := srv.Shutdown(sctx)
	if errors.Is(err, context.DeadlineExceeded) {
		s.log.Warn("shutdown budget spent; closing the remaining connections", "budget", s.opts.ShutdownTimeout)
		err = srv.Close()
	}
	if serr := <-errc; serr != nil && !errors.Is(serr, http.ErrServerClosed) && !errors.Is(serr, errStopped) {
		return fmt.Errorf("server: %w", serr)
	}
	return err
}

func (s *Server) beginStopping() { s.stoppingOnce.Do(func() { close(s.stopping) }) }

// Handler returns the API's handler. Routing is done on the raw request path:
// keys are arbitrary bytes, and http.ServeMux would clean and redirect
// paths such as /v1/kv//a//b/.
func (s *Server) Handler() http.Handler {
	return http.HandlerFunc(s.serveHTTP)
}

const (
	kvPrefix    = "/v1/kv/"
	watchPrefix = "/v1/watch/"
)

func (s *Server) serveHTTP(rw http.ResponseWriter, r *http.Request) {
	start := time.Now()
	if c, ok := r.Context().Value(connKey{}).(net.Conn); ok {
		s.started(c)
	}
	w := &statusWriter{ResponseWriter: rw}
	defer func() { s.metrics.observe(r.Method, w.status(), time.Since(start)) }()

	peer, _ := peerFrom(r.Context())
	if err := s.gate.Admit(peer); err != nil {
		writeError(w, api.Error{Code: api.CodeForbidden, Error: err.Error()})
		return
	}

	path := rawPath(r)
	if budgeted(path) {
		if err := s.gate.Spend(peer); err != nil {
			s.writeAPIError(w, r, throttled(err))
			return
		}
	}
	switch {
	case strings.HasPrefix(path, kvPrefix):
		s.serveKV(w, r, path[len(kvPrefix):])
	case strings.HasPrefix(path, watchPrefix):
		if !methodIs(w, r, http.MethodGet) {
			return
		}
		s.serveWatch(w, r, path[len(watchPrefix):])
	case strings.HasPrefix(path, lockPrefix):
		s.serveLock(w, r, path[len(lockPrefix):])
	case strings.HasPrefix(path, electionPrefix):
		s.serveElection(w, r, path[len(electionPrefix):])
	case path == "/v1/txn":
		if methodIs(w, r, http.MethodPost) {
			s.serveTxn(w, r)
		}
	case path == "/healthz":
		if methodIs(w, r, http.MethodGet, http.MethodHead) && noQuery(w, r) {
			writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
		}
	case path == "/readyz":
		if methodIs(w, r, http.MethodGet, http.MethodHead) && noQuery(w, r) {
			s.serveReady(w)
		}
	case path == "/v1/status":
		if methodIs(w, r, http.MethodGet, http.MethodHead) && noQuery(w, r) {
			// The members' part of the status is probed on demand, at most
			// once per etcd.StatusProbeInterval however often it is asked.
			if s.etcd != nil {
				s.etcd.CheckHealth(r.Context())
			}
			writeJSON(w, http.StatusOK, s.status())
		}
	case path == "/metrics":
		if methodIs(w, r, http.MethodGet, http.MethodHead) {
			s.promh.ServeHTTP(w, r)
		}
	default:
		writeError(w, api.Error{Code: api.CodeNotFound, Error: fmt.Sprintf("no such path %q", path)})
	}
}

// budgeted: requests on path spend the peer's rate (API.md "What rate
// counts"); the agent's own paths never do.
func budgeted(path string) bool {
	return strings.HasPrefix(path, kvPrefix) || strings.HasPrefix(path, watchPrefix) || path == "/v1/txn" ||
		strings.HasPrefix(path, lockPrefix) || strings.HasPrefix(path, electionPrefix)
}

// rawPath is the request's path exactly as the client sent it, still
// percent-encoded (a request-target in absolute form is reduced to its path).
func rawPath(r *http.Request) string {
	p := r.RequestURI
	if i := strings.Index(p, "://"); i >= 0 && !strings.HasPrefix(p, "/") {
		rest := p[i+3:]
		if j := strings.IndexByte(rest, '/'); j >= 0 {
			p = rest[j:]
		} else {
			p = "/"
		}
	}
	if i := strings.IndexByte(p, '?'); i >= 0 {
		p = p[:i]
	}
	return p
}

func (s *Server) serveReady(w http.ResponseWriter) {
	st := s.status()
	if st.Ready {
		writeJSON(w, http.StatusOK, map[string]any{"ready": true})
		return
	}
	writeJSON(w, http.StatusServiceUnavailable, map[string]any{"ready": false, "reason": st.NotReadyReason()})
}

// methodIs answers 405 with an Allow header unless r's method is one of
// allowed.
func methodIs(w http.ResponseWriter, r *http.Request, allowed ...string) bool {
	for _, m := range allowed {
		if r.Method == m {
			return true
		}
	}
	w.Header().Set("Allow", strings.Join(allowed, ", "))
	writeError(w, api.Error{Code: api.CodeMethodNotAllowed,
		Error: fmt.Sprintf("method %s is not allowed here; use %s", r.Method, strings.Join(allowed, " or "))})
	return false
}

func noQuery(w http.ResponseWriter, r *http.Request) bool {
	if r.URL.RawQuery != "" {
		writeError(w, api.Error{Code: api.CodeInvalidArgument, Error: "this path takes no query parameters"})
		return false
	}
	return true
}

// writeJSON writes v as the response body.
func writeJSON(w http.ResponseWriter, code int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		code = http.StatusInternalServerError
		body = []byte(`{"error":"encoding the response failed","code":"internal"}`)
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(body)+1))
	w.WriteHeader(code)
	w.Write(append(body, '\n'))
}

// writeError writes an error answer with its code's HTTP status (API.md).
func writeError(w http.ResponseWriter, e api.Error) {
	writeJSON(w, api.HTTPStatus(e.Code), e)
}

// statusWriter records the status code for metrics and passes flushes
// through, so watch streams reach the client line by line.
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(p []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return w.ResponseWriter.Write(p)
}

func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *statusWriter) status() int {
	if w.code == 0 {
		return http.StatusOK
	}
	return w.code
}
