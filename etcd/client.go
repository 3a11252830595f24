// Package etcd is the seed's etcd client package (import "udp_iaasd/etcd"):
// a process-wide client with simple Put/Get/Delete, endpoint management that
// validates before it applies, and connection management that probes the
// members, reconnects with backoff and never lets a request hang.
//
// It owns the *clientv3.Client and the endpoint list it dials; no clientv3
// type leaves it but the protocol's messages (events, key-values) and the
// gRPC connection grpcapi forwards on (Conn). On top of that client it
// provides what the agent's sockets need, each once: typed reads and writes
// with read and write batching (kv.go, batch.go, writebatch.go),
// transactions, the one watch follower (Follow, StartFollow) over shared
// watches (Subscribe), the one throttled progress requester
// (AskWatchProgress), locks and elections on shared leases, KindOf (what an
// error means), and its Prometheus metrics (Collector). The endpoint set
// has one writer, endpoints.go; health.go keeps the connection's health
// without polling. It reads no config file and serves nothing.
package etcd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	gbackoff "google.golang.org/grpc/backoff"
	"google.golang.org/grpc/connectivity"

	"udp_iaasd/backoff"
	"udp_iaasd/endpoint"
)

// Errors callers can test for with errors.Is.
var (
	// ErrKeyNotFound is returned by Get for an absent key.
	ErrKeyNotFound = errors.New("etcd: key not found")
	// ErrClosed is returned by every call after Close; a closed client,
	// GetClient's included, stays closed.
	ErrClosed = errors.New("etcd: client closed")
	// ErrNoEndpoints is returned while no endpoint set has been applied.
	ErrNoEndpoints = errors.New("etcd: no endpoints configured")
	// ErrUnavailable is returned at once, without waiting for a timeout, while
	// the health loop finds no member reachable.
	ErrUnavailable = errors.New("etcd: no endpoint reachable")
	// ErrEndpointNotFound is returned by RemoveEndpoint for an endpoint that is
	// not in the list.
	ErrEndpointNotFound = errors.New("etcd: endpoint not in the list")
	// ErrNoHealthyEndpoint is returned by RemoveEndpoint when no endpoint
	// that would remain answers: removing one then could leave the client
	// with nothing that works.
	ErrNoHealthyEndpoint = errors.New("etcd: no remaining endpoint is healthy")
	// errListChanged: the list changed while RemoveEndpoint probed.
	errListChanged = errors.New("etcd: the endpoint list changed meanwhile; try again")
)

// DefaultRequestTimeout bounds a call whose context has no deadline, unless
// Config.RequestTimeout says otherwise; the agent's etcd.request_timeout
// defaults to it too.
const DefaultRequestTimeout = 5 * time.Second

// EnvEndpoints names the environment variable GetClient reads its endpoints
// from (comma-separated); DefaultEndpoint is used when it is unset or empty.
const (
	EnvEndpoints    = "ETCD_ENDPOINTS"
	DefaultEndpoint = "127.0.0.1:2379"
)

// Config configures New. Only Endpoints is required to talk to etcd; every
// other field has a default (see withDefaults).
type Config struct {
	// Endpoints in any form package endpoint accepts. May be empty: the client
	// then answers ErrNoEndpoints until UpdateEndpoints applies a set.
	Endpoints []string
	// MinClusterSize is the fewest endpoints a list may have. Default 1.
	MinClusterSize int

	DialTimeout      time.Duration // default 5s
	RequestTimeout   time.Duration // bound of a call whose context has no deadline; default 5s
	KeepAliveTime    time.Duration // default 10s
	KeepAliveTimeout time.Duration // default 5s

	// TLS, when set, is used for TLS endpoints, and makes bare host:port
	// entries https. TLS endpoints without it use the system roots.
	TLS      *tls.Config
	Username string
	Password string

	// Backoff paces reconnection while no member answers (gRPC's own
	// reconnect schedule follows it), and probe rounds while a member is
	// ejected or a client waits to be built. Default: backoff.DefaultPolicy().
	Backoff backoff.Policy
	// ProbeTimeout bounds one probe of one member. Default 1s. A member that
	// does not answer within it, while another does, is ejected until it
	// answers again.
	ProbeTimeout time.Duration
	// SuspectAfter is how long a connection may have requests in flight
	// with none completing before the members are probed (see outcome.go).
	// With ProbeTimeout it bounds how long a hung member keeps receiving
	// requests. Default 1s.
	SuspectAfter time.Duration
	// StatusProbeInterval is the youngest a member probe round may be before
	// CheckHealth (GET /v1/status) probes again. Default 30s.
	StatusProbeInterval time.Duration
	// ConnectSpread, when positive, spreads the connections an endpoint
	// change opens: while the client is connected, addresses that a new
	// list adds join the live client after a random delay in
	// [0, ConnectSpread), so that a fleet of clients given a new list at
	// once does not dial the new members at the same instant. Endpoints
	// reports the new list at once; addresses it drops are dropped at once,
	// unless none of the old ones stays, in which case the old connections
	// serve until the new addresses join. Default 0: applied at once.
	ConnectSpread time.Duration
	// RebalanceSpread, when positive, re-places the client's watch streams
	// after a member returns (restarted, reachable again, or added): at a
	// random time in [RebalanceSpread/2, RebalanceSpread) every WatchKV
	// watch reopens on a fresh gRPC stream from the revision after its last
	// delivered one, so that a fleet's streams spread over the members again
	// instead of staying where a rolling restart left them (rebalance.go).
	// Default 0: streams stay where clientv3 placed them.
	RebalanceSpread time.Duration
	// WatchBuffer is how many responses a Subscribe subscriber may lag
	// behind its shared watch before it is detached to watch on its own.
	// Default 256.
	WatchBuffer int

	// Logger receives connection state changes (info) and attempts (debug).
	// Default: discard.
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.MinClusterSize <= 0 {
		c.MinClusterSize = 1
	}
	if c.DialTimeout <= 0 {
		c.DialTimeout = 5 * time.Second
	}
	if c.RequestTimeout <= 0 {
		c.RequestTimeout = DefaultRequestTimeout
	}
	if c.KeepAliveTime <= 0 {
		c.KeepAliveTime = 10 * time.Second
	}
	if c.KeepAliveTimeout <= 0 {
		c.KeepAliveTimeout = 5 * time.Second
	}
	if c.Backoff == (backoff.Policy{}) {
		c.Backoff = backoff.DefaultPolicy()
	}
	if c.ProbeTimeout <= 0 {
		c.ProbeTimeout = time.Second
	}
	if c.SuspectAfter <= 0 {
		c.SuspectAfter = time.Second
	}
	if c.WatchBuffer <= 0 {
		c.WatchBuffer = 256
	}
	if c.StatusProbeInterval <= 0 {
		c.StatusProbeInterval = 30 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// EtcdClient is a managed etcd client. Its methods are safe for concurrent
// use. The zero value is not usable; build one with New, GetClient or
// NewCustomClient.
type EtcdClient struct {
	cfg     Config // read-only after New
	log     *slog.Logger
	initErr error // a construction error, returned by every call

	minSize    int          // fewest endpoints UpdateEndpoints and RemoveEndpoint accept; read-only after New
	reqTimeout atomic.Int64 // RequestTimeout in nanoseconds; SetRequestTimeout changes it
	budget     fairBudget   // the host budget toward etcd (budget.go); off until SetRequestBudget

	mu        sync.RWMutex
	gen       *generation     // the live client (the seed's `client`) with its in-flight count; nil until one is built
	pending   *pendingClient  // a client still to be built; set only while gen is nil
	endpoints []string        // normalized, in the order given
	ejected   map[string]bool // endpoints left out of the live client's list: silent while others answer (health.go)
	joining   *joining        // a change whose new addresses wait to join the live client (ConnectSpread)
	username  string          // credentials for clients built from now on (SetCredentials)
	password  string
	closed    bool

	rand     func() float64                               // ConnectSpread's delays; tests replace it
	reads    *batcher[clientv3.Op, *clientv3.GetResponse] // batches concurrent linearizable reads (batch.go)
	writes   *batcher[putRequest, WriteResult]            // batches concurrent plain puts (writebatch.go)
	health   *healthLoop
	hubs     hubs           // shared watches (watch.go)
	progress progressAsks   // throttled progress requests (watch.go)
	sessions sessionPool    // leases of locks and elections (lock.go)
	streams  *rebalancer    // watch stream placement (rebalance.go)
	outcomes *outcomes      // watches request outcomes for hung members (outcome.go)
	conns    connTracker    // dials every connection, so an ejected member's can be closed (conns.go)
	retired  sync.WaitGroup // clients replaced by UpdateEndpoints, closing
}

// generation is one underlying clientv3 client together with the requests
// running on it, so that a replaced client is closed only after they end.
type generation struct {
	cli      *clientv3.Client
	tls      bool
	inflight sync.WaitGroup
}

// pendingClient is an applied endpoint set whose client could not be built
// yet. With credentials, clientv3 authenticates while it builds a client, so
// building needs an answering etcd; until one answers (or while it refuses
// the credentials) requests get ErrUnavailable and the health loop tries
// again on its backoff schedule.
type pendingClient struct {
	urls []string
	tls  bool
	err  error // why the last attempt failed; written under EtcdClient.mu
}

// New builds a client from cfg. It does not wait for etcd: a client whose
// members are down is built, reports disconnected, and connects when they
// return.
func New(cfg Config) (*EtcdClient, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Backoff.Validate(); err != nil {
		return nil, fmt.Errorf("etcd: %w", err)
	}
	c := &EtcdClient{cfg: cfg, log: cfg.Logger, minSize: cfg.MinClusterSize, username: cfg.Username, password: cfg.Password}
	c.reads, c.writes = newReader(c), newWriter(c)
	c.hubs = hubs{c: c, m: map[hubKey]*hub{}}
	c.sessions.c = c
	c.reqTimeout.Store(int64(cfg.RequestTimeout))
	c.rand = rand.Float64
	c.outcomes = newOutcomes(cfg.SuspectAfter, func() { c.health.suspect() })
	c.streams = newRebalancer(cfg.RebalanceSpread, func() float64 { return c.rand() }, func(epoch uint64) {
		c.log.Info("etcd: a member returned; moving watch streams to spread them over the members", "epoch", epoch)
	})
	c.conns.settle = cfg.RebalanceSpread
	c.conns.onReturn = c.streams.schedule
	if len(cfg.Endpoints) > 0 {
		eps, err := endpoint.ParseList(cfg.Endpoints, cfg.TLS != nil, cfg.MinClusterSize)
		if err != nil {
			return nil, fmt.Errorf("etcd: endpoints: %w", err)
		}
		if err := c.ApplyEndpoints(eps); err != nil {
			return nil, err
		}
	}
	c.health = newHealthLoop(c)
	c.health.start()
	return c, nil
}

var (
	singletonOnce sync.Once
	singleton     *EtcdClient
)

// GetClient returns the process-wide client, built on first use from the
// ETCD_ENDPOINTS environment variable (comma-separated; default
// 127.0.0.1:2379). If it cannot be built, every method returns why.
//
// Its lifecycle is the process's: it is built once and never rebuilt, so
// Close it only when the process is done with etcd (at exit). After Close
// every method of it returns ErrClosed, and GetClient keeps returning the
// same closed client. A component with a shorter life builds its own with
// New or NewCustomClient.
func GetClient() *EtcdClient {
	singletonOnce.Do(func() {
		var eps []string
		for ep := range strings.SplitSeq(os.Getenv(EnvEndpoints), ",") {
			if ep = strings.TrimSpace(ep); ep != "" {
				eps = append(eps, ep)
			}
		}
		if len(eps) == 0 {
			eps = []string{DefaultEndpoint}
		}
		singleton = newOrBroken(Config{Endpoints: eps})
	})
	return singleton
}

// NewCustomClient builds a client of endpoints whose dial and request timeouts
// are timeout. If it cannot be built, every method returns why.
func NewCustomClient(endpoints []string, timeout time.Duration) *EtcdClient {
	return newOrBroken(Config{Endpoints: endpoints, DialTimeout: timeout, RequestTimeout: timeout})
}

// newOrBroken returns New's client, or one that carries New's error: the seed's
// signatures have no error result, and a nil client would panic at first use.
func newOrBroken(cfg Config) *EtcdClient {
	c, err := New(cfg)
	if err != nil {
		c := &EtcdClient{cfg: cfg.withDefaults(), log: slog.New(slog.DiscardHandler), initErr: err}
		c.reads, c.writes = newReader(c), newWriter(c)
		return c
	}
	return c
}

// Err returns the error that kept the client from being built, or nil.
func (c *EtcdClient) Err() error { return c.initErr }

// Put sets key to value.
func (c *EtcdClient) Put(ctx context.Context, key, value string) error {
	return c.do(ctx, func(ctx context.Context, cli *clientv3.Client) error {
		if _, err := cli.Put(ctx, key, value); err != nil {
			return fmt.Errorf("etcd: put %q: %w", key, err)
		}
		return nil
	})
}

// Get returns key's value, or an error wrapping ErrKeyNotFound.
func (c *EtcdClient) Get(ctx context.Context, key string) (string, error) {
	resp, err := c.rangeKeys(ctx, key)
	if err != nil {
		return "", fmt.Errorf("etcd: get %q: %w", key, err)
	}
	if len(resp.Kvs) == 0 {
		return "", fmt.Errorf("etcd: get %q: %w", key, ErrKeyNotFound)
	}
	return string(resp.Kvs[0].Value), nil
}

// Delete removes key. Deleting an absent key is not an error.
func (c *EtcdClient) Delete(ctx context.Context, key string) error {
	return c.do(ctx, func(ctx context.Context, cli *clientv3.Client) error {
		if _, err := cli.Delete(ctx, key); err != nil {
			return fmt.Errorf("etcd: delete %q: %w", key, err)
		}
		return nil
	})
}

// do runs fn with the live client, for the parts of the etcd API that Put, Get
// and Delete do not cover (ranges, transactions, leases, status). ctx is
// bounded by RequestTimeout when it has no deadline, so fn cannot hang. While
// no member is reachable Do returns ErrUnavailable without calling fn. The
// client passed to fn stays open until fn returns, even if UpdateEndpoints
// replaces it meanwhile; fn must not keep it.
func (c *EtcdClient) do(ctx context.Context, fn func(ctx context.Context, cli *clientv3.Client) error) error {
	ctx, cancel := c.bound(ctx)
	defer cancel()
	if err := c.takeBudget(ctx); err != nil {
		return err
	}
	return c.onLive(ctx, fn)
}

// unary is Do for fn that makes unary calls only, and so leaves nothing
// running that a cancel would have to stop: a ctx with a deadline of its
// own (every request the agent serves has one) is passed as it is. It
// saves the hot path a context and its cancel — five allocations a request.
func (c *EtcdClient) unary(ctx context.Context, fn func(ctx context.Context, cli *clientv3.Client) error) error {
	if _, ok := ctx.Deadline(); !ok {
		return c.do(ctx, fn)
	}
	if err := c.takeBudget(ctx); err != nil {
		return err
	}
	return c.onLive(ctx, fn)
}

// onLive runs fn with the live client pinned, or answers ErrUnavailable
// while no member is reachable.
func (c *EtcdClient) onLive(ctx context.Context, fn func(ctx context.Context, cli *clientv3.Client) error) error {
	g, err := c.acquire()
	if err != nil {
		return err
	}
	defer g.inflight.Done()
	if !c.reachable(ctx, g) {
		return ErrUnavailable
	}
	return fn(ctx, g.cli)
}

// watch watches key on the live client with clientv3's semantics (opts such
// as clientv3.WithPrefix and clientv3.WithRev). Unlike Do it does not pin the
// client: when UpdateEndpoints has to replace it (plain ↔ TLS), the returned
// channel closes once the old client is closed, and the caller resumes from
// the last revision it saw. Cancel ctx to stop the watch.
func (c *EtcdClient) watch(ctx context.Context, key string, opts ...clientv3.OpOption) (clientv3.WatchChan, error) {
	g, err := c.acquire()
	if err != nil {
		return nil, err
	}
	defer g.inflight.Done()
	return g.cli.Watch(ctx, key, opts...), nil
}

// requestProgress asks etcd for a progress notification on the watches of
// the live client that share ctx's metadata (clientv3 groups watches into
// streams by it: pass a context built the way the watches' was, e.g. with
// clientv3.WithRequireLeader). Watchers receive it as a WatchResponse for
// which IsProgressNotify holds.
func (c *EtcdClient) requestProgress(ctx context.Context) error {
	g, err := c.acquire()
	if err != nil {
		return err
	}
	defer g.inflight.Done()
	ctx, cancel := c.bound(ctx)
	defer cancel()
	return g.cli.RequestProgress(ctx)
}

// acquire returns the live generation with its in-flight count raised; the
// caller must call g.inflight.Done.
func (c *EtcdClient) acquire() (*generation, error) {
	if c.initErr != nil {
		return nil, c.initErr
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	if err := c.usableLocked(); err != nil {
		return nil, err
	}
	c.gen.inflight.Add(1)
	return c.gen, nil
}

// usableLocked says why there is no live client to use, or nil. c.mu held.
func (c *EtcdClient) usableLocked() error {
	switch {
	case c.closed:
		return ErrClosed
	case c.pending != nil:
		return fmt.Errorf("%w: %v", ErrUnavailable, c.pending.err)
	case c.gen == nil:
		return ErrNoEndpoints
	}
	return nil
}

// reachable reports whether a request is worth sending: not while every
// member's connection has failed (gRPC's own state, so a returning cluster
// is used the moment a connection is up again), nor while the latest probe
// round found every member silent behind open connections.
//
// While the connection is being made — the first attempt after the client
// is built, or after it lost every member — it waits for that attempt's
// outcome, bounded by ctx: clientv3's calls wait for a ready connection
// until their deadline, so a request sent then to a cluster that refuses
// every connection would cost its caller the whole timeout (a 504) instead
// of ErrUnavailable as soon as gRPC knows (a 503). A ready connection, the
// hot path, costs one state read. When ctx ends first the request is sent
// and fails the way an expired request does.
func (c *EtcdClient) reachable(ctx context.Context, g *generation) bool {
	if c.health != nil && c.health.down.Load() {
		return false
	}
	conn := g.cli.ActiveConnection()
	switch conn.GetState() {
	case connectivity.Ready:
		return true
	case connectivity.TransientFailure, connectivity.Shutdown:
		return false
	}
	return waitReady(ctx, conn) || ctx.Err() != nil
}

// bound gives ctx the request timeout when it has no deadline of its own.
func (c *EtcdClient) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, c.requestTimeout())
}

// requestTimeout bounds a call whose context has no deadline.
func (c *EtcdClient) requestTimeout() time.Duration { return time.Duration(c.reqTimeout.Load()) }

// RequestTimeout is the bound of a call whose context has no deadline
// (Config.RequestTimeout, or SetRequestTimeout's latest): the one
// etcd.request_timeout every part of the agent uses.
func (c *EtcdClient) RequestTimeout() time.Duration { return c.requestTimeout() }

// SetRequestTimeout changes RequestTimeout for calls from now on (a config
// reload: etcd.request_timeout is live). A non-positive d is ignored.
func (c *EtcdClient) SetRequestTimeout(d time.Duration) {
	if d > 0 {
		c.reqTimeout.Store(int64(d))
	}
}

// rebuildLocked replaces the client with one for urls, built with the
// current credentials; the old one is retired after its in-flight requests.
// Without credentials clientv3 builds a client without waiting for etcd, so
// that happens here. With them it must authenticate first, which can take
// up to DialTimeout: that is left pending for the health loop, off c.mu —
// except in New, before anyone else can use the client. Requests get
// ErrUnavailable while a build is pending. c.mu must be held for writing.
func (c *EtcdClient) rebuildLocked(urls []string, useTLS bool) {
	if old := c.gen; old != nil {
		c.retire(old)
		c.log.Info("etcd client replaced", "endpoints", urls, "tls", useTLS)
	}
	c.gen = nil
	c.endpoints = urls
	c.pending = &pendingClient{urls: urls, tls: useTLS, err: errNotBuilt}
	if c.username == "" || c.health == nil {
		cli, err := c.newClientv3(urls, useTLS, c.username, c.password)
		c.installLocked(c.pending, cli, err)
	}
	c.health.kick()
}

// errNotBuilt is a pending client's reason before its first attempt.
var errNotBuilt = errors.New("etcd: client not built yet")

// installLocked records the outcome of building p's client. c.mu must be
// held for writing, and p must still be c.pending.
func (c *EtcdClient) installLocked(p *pendingClient, cli *clientv3.Client, err error) {
	if err != nil {
		if p.err == errNotBuilt || p.err.Error() != err.Error() {
			c.log.Warn("etcd client not built; requests get 503 until it is", "endpoints", p.urls, "error", err)
		} else {
			c.log.Debug("etcd client still not built", "endpoints", p.urls, "error", err)
		}
		p.err = err
		return
	}
	c.gen = &generation{cli: cli, tls: p.tls}
	c.pending = nil
}

// buildPending builds a pending client; the health loop calls it before
// each round of probes. It returns why there is still no client, or nil.
// The build runs without c.mu, and its result is dropped if the settings
// changed meanwhile.
func (c *EtcdClient) buildPending() error {
	c.mu.RLock()
	p, user, pass := c.pending, c.username, c.password
	c.mu.RUnlock()
	if p == nil {
		return nil
	}
	cli, err := c.newClientv3(p.urls, p.tls, user, pass)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pending != p || c.closed || c.username != user || c.password != pass {
		if cli != nil {
			cli.Close()
		}
		return errNotBuilt // superseded; the next round builds for the new settings
	}
	c.installLocked(p, cli, err)
	return err
}

// SetCredentials changes the user and password the client authenticates
// with (a config reload after a password rotation). A client already built
// is replaced by one with the new credentials, after its in-flight requests
// end; if etcd refuses them or does not answer, requests get ErrUnavailable
// until the health loop succeeds. Unchanged credentials change nothing.
func (c *EtcdClient) SetCredentials(username, password string) {
	if c.initErr != nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || (username == c.username && password == c.password) {
		return
	}
	c.username, c.password = username, password
	switch {
	case c.gen != nil:
		c.rebuildLocked(c.endpoints, c.gen.tls)
	case c.pending != nil:
		c.rebuildLocked(c.pending.urls, c.pending.tls)
	}
}

// retire closes a replaced client once its in-flight requests have ended.
func (c *EtcdClient) retire(g *generation) {
	c.retired.Go(func() {
		g.inflight.Wait()
		g.cli.Close()
	})
}

func (c *EtcdClient) newClientv3(urls []string, useTLS bool, username, password string) (*clientv3.Client, error) {
	var tlsCfg *tls.Config
	if useTLS {
		tlsCfg = c.cfg.TLS
		if tlsCfg == nil {
			tlsCfg = &tls.Config{MinVersion: tls.VersionTLS12}
		}
	}
	bp := c.cfg.Backoff
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:            urls,
		DialTimeout:          c.cfg.DialTimeout,
		DialKeepAliveTime:    c.cfg.KeepAliveTime,
		DialKeepAliveTimeout: c.cfg.KeepAliveTimeout,
		TLS:                  tlsCfg,
		Username:             username,
		Password:             password,
		Logger:               zap.NewNop(),
		// gRPC's own reconnect schedule (up to 120s by default) would hide a
		// returning cluster; make it follow our policy, and let the health
		// loop reset it on each of its attempts.
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: gbackoff.Config{
				BaseDelay:  bp.Initial,
				Multiplier: bp.Multiplier,
				Jitter:     bp.Jitter,
				MaxDelay:   bp.Max,
			},
			MinConnectTimeout: c.cfg.DialTimeout,
		}),
			// clientv3's resolver writes its endpoint list in SetEndpoints and
			// reads it in Build without a lock (v3.7.3 internal/resolver), and
			// gRPC calls Build whenever the channel leaves idle. Never going
			// idle, and leaving idle here (Connect returns after Build), keeps
			// Build from ever running beside SetEndpoints.
			grpc.WithIdleTimeout(0),
			grpc.WithStatsHandler(c.outcomes),
			grpc.WithContextDialer(c.conns.dial),
		},
	})
	if err != nil {
		return nil, fmt.Errorf("etcd: connect to %s: %w", strings.Join(urls, ", "), err)
	}
	cli.ActiveConnection().Connect()
	return cli, nil
}

// Close stops the health loop and closes the client after requests in
// flight end. Calls after Close return ErrClosed. Close is idempotent.
func (c *EtcdClient) Close() error {
	if c.initErr != nil {
		return nil
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	g := c.gen
	c.gen = nil
	c.mu.Unlock()

	c.budget.close()
	c.health.stop()
	c.streams.stop()
	c.sessions.closing.Wait() // their leases are revoked on g's client
	if g != nil {
		c.retire(g)
	}
	c.retired.Wait()
	c.outcomes.stop()
	return nil
}

// Conn is the live client's gRPC connection, for serving etcd's own API
// through the agent (grpcapi): calls on it go to the members the client
// follows. It does not pin the client: a client replaced by UpdateEndpoints
// (plain ↔ TLS, new credentials) closes, and calls on its connection fail;
// take Conn again for each call or stream. ErrUnavailable while no member
// is reachable; while the connection is being made it waits, bounded by
// ctx, to tell which (see reachable).
func (c *EtcdClient) Conn(ctx context.Context) (*grpc.ClientConn, error) {
	g, err := c.acquire()
	if err != nil {
		return nil, err
	}
	defer g.inflight.Done()
	if !c.reachable(ctx, g) {
		return nil, ErrUnavailable
	}
	return g.cli.ActiveConnection(), nil
}
