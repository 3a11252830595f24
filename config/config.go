// Package config loads and validates endpointd's two files: config.yaml (the
// agent's settings, owned by the administrator) and endpoints.yaml (the etcd
// endpoint list, owned by config management). See CONFIG.md.
//
// Decoding is strict and positional: unknown and duplicate keys, wrong types,
// extra documents, aliases and oversized files are errors, and every problem
// in a file is reported as `FILE:LINE:COL: message`. The package holds only
// the serializable settings; reading the files they name (TLS certificates,
// the password), loggers and clients are its callers' (agent.EtcdConfig).
// The names in them (users, groups) are resolved here, when a policy or a
// socket's group is asked for.
package config

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"udp_iaasd/access"
	"udp_iaasd/backoff"
	"udp_iaasd/endpoint"
)

// DefaultPath is where `endpointd run` looks for config.yaml.
const DefaultPath = "/etc/endpointd/config.yaml"

// Config is config.yaml. Build it with Default, Parse or Load; a Config from
// Parse or Load has passed Validate.
type Config struct {
	EndpointsFile  string
	MinClusterSize int
	Socket         Socket
	Etcd           Etcd
	Backoff        Backoff
	Watch          Watch
	Cache          Cache
	Limits         Limits
	Log            Log
	Metrics        Metrics
	// Access holds the per-peer rules (API.md "Access control"); empty:
	// socket.allowed_uids/allowed_gids alone decide.
	Access []AccessRule

	file string                // the path it was read from, for messages
	pos  map[string]*yaml.Node // value node of each key, by dotted path
}

// Socket is the unix socket the agent serves on.
type Socket struct {
	Path string
	// GRPCPath, when set, serves etcd's v3 gRPC API on a second socket with
	// the same mode, group and peer checks (API.md); "" is off.
	GRPCPath    string
	Mode        uint32 // permission bits
	Group       string // name or numeric gid; "" keeps the process's group
	AllowedUIDs []int
	AllowedGIDs []int
}

// GID turns Group into the gid the sockets are given: -1 for "" (keep the
// process's group), a number as it is, else the group's gid, looked up now.
func (s Socket) GID() (int, error) {
	if s.Group == "" {
		return -1, nil
	}
	if gid, err := strconv.Atoi(s.Group); err == nil {
		return gid, nil
	}
	gid, err := lookupGroup(s.Group)
	if err != nil {
		return 0, fmt.Errorf("socket.group: %w", err)
	}
	return int(gid), nil
}

// Etcd is how the agent talks to etcd.
type Etcd struct {
	DialTimeout      time.Duration
	RequestTimeout   time.Duration
	KeepaliveTime    time.Duration
	KeepaliveTimeout time.Duration
	// ProbeTimeout, SuspectAfter and StatusProbeInterval pace the member
	// probes that replace periodic polling (etcd.Config has the details).
	ProbeTimeout        time.Duration
	SuspectAfter        time.Duration
	StatusProbeInterval time.Duration
	// ConnectSpread spreads the connections an endpoint change opens
	// (etcd.Config.ConnectSpread); 0 applies changes at once.
	ConnectSpread time.Duration
	// RebalanceSpread re-places watch streams after a member returns
	// (etcd.Config.RebalanceSpread); 0 leaves them where they are.
	RebalanceSpread time.Duration
	// MaxRequestsPerSecond is the host budget toward etcd (unary requests
	// sent for peers, fair between them); 0 is no limit.
	MaxRequestsPerSecond int
	Username             string
	PasswordFile         string
	TLS                  TLS
}

// TLS names the files of the client's TLS setup.
type TLS struct {
	CAFile     string
	CertFile   string
	KeyFile    string
	ServerName string
}

// Enabled reports whether any TLS setting is given, which makes bare host:port
// endpoints https.
func (t TLS) Enabled() bool { return t != TLS{} }

// Backoff is the reconnection schedule.
type Backoff = backoff.Policy

// Watch paces reading the endpoints file.
type Watch struct {
	Debounce       time.Duration
	ResyncInterval time.Duration
}

// Cache lists key prefixes served from memory.
type Cache struct {
	Prefixes []string
	// MaxStaleness is how long a cached prefix may go without word from its
	// watch (events or a progress notification) and still answer.
	MaxStaleness time.Duration
	// Dir is where each prefix's copy persists across restarts; "" keeps
	// the copies in memory only.
	Dir string
	// PersistInterval is how often at most a changed copy is written.
	PersistInterval time.Duration
	// StaleIfError is the stale-if-error of reads of cached prefixes that
	// do not ask for one; 0 answers nothing stale unless asked.
	StaleIfError time.Duration
}

// Limits protect the agent from misbehaving local clients.
type Limits struct {
	MaxKeyBytes   int
	MaxValueBytes int
	MaxTxnBytes   int
	// Beyond CONFIG.md's two keys (documented in examples/config.yaml):
	MaxHeaderBytes    int
	ReadHeaderTimeout time.Duration
	IdleTimeout       time.Duration
	MaxConnections    int
	MaxWatches        int
	ShutdownTimeout   time.Duration
}

// Log configures the agent's log.
// Metrics is where else /metrics is served.
type Metrics struct {
	// Listen, when set, is a TCP address ("127.0.0.1:9379") on which
	// GET /metrics — and nothing else — is served for Prometheus, which
	// cannot scrape a unix socket; "" serves it on the unix socket only.
	Listen string
}

type Log struct {
	Level  string
	Format string
	// Audit logs every write at info with the peer's identity and the rule
	// that allowed it.
	Audit bool
}

// AccessRule is one entry of access: — who it matches (any of the five
// lists), which keys it covers and what it allows there. Users and groups
// are names, resolved when the file is loaded (AccessPolicy).
type AccessRule struct {
	Name     string
	UIDs     []int
	Users    []string
	GIDs     []int
	Groups   []string
	Units    []string
	Prefixes []string
	Allow    []string
	// Rate (requests per second), Burst (default Rate) and MaxStreams are
	// the budget of each peer — each distinct (uid, unit) — the rule
	// matches; 0 is no limit (API.md "Budgets").
	Rate       int
	Burst      int
	MaxStreams int
}

// Default returns the settings CONFIG.md documents as defaults.
func Default() *Config {
	return &Config{
		EndpointsFile:  "/etc/endpointd/endpoints.yaml",
		MinClusterSize: 3,
		Socket:         Socket{Path: "/run/endpointd/endpointd.sock", Mode: 0o660},
		Etcd: Etcd{
			DialTimeout:         5 * time.Second,
			RequestTimeout:      5 * time.Second, // etcd.DefaultRequestTimeout, for a client built without config
			KeepaliveTime:       10 * time.Second,
			KeepaliveTimeout:    5 * time.Second,
			ProbeTimeout:        time.Second,
			SuspectAfter:        time.Second,
			StatusProbeInterval: 30 * time.Second,
			ConnectSpread:       2 * time.Second,
			RebalanceSpread:     10 * time.Second,
		},
		Backoff: backoff.DefaultPolicy(),
		Watch:   Watch{Debounce: 100 * time.Millisecond, ResyncInterval: 30 * time.Second},
		Cache:   Cache{MaxStaleness: time.Second, Dir: "/var/lib/endpointd/cache", PersistInterval: time.Second},
		Limits: Limits{
			MaxKeyBytes:       4096,
			MaxValueBytes:     1 << 20,
			MaxTxnBytes:       2 << 20,
			MaxHeaderBytes:    64 << 10,
			ReadHeaderTimeout: 5 * time.Second,
			IdleTimeout:       2 * time.Minute,
			MaxConnections:    1024,
			MaxWatches:        512,
			ShutdownTimeout:   10 * time.Second,
		},
		Log:  Log{Level: "info", Format: "text"},
		file: "config.yaml (defaults)",
	}
}

// File returns the path the config was read from.
func (c *Config) File() string { return c.file }

// Load reads and parses config.yaml at path.
func Load(path string) (*Config, error) {
	data, err := ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(path, data)
}

// Parse decodes config.yaml's bytes over the defaults and validates the
// result. file names the source in messages; a relative endpoints_file is
// resolved against file's directory. The error is an Errors.
func Parse(file string, data []byte) (*Config, error) {
	c := Default()
	c.file = file
	c.pos = map[string]*yaml.Node{}
	d := &decoder{file: file}
	root := d.parse(data)
	if root == nil { // not YAML: nothing was decoded to check further
		return nil, d.probs.sorted()
	}
	d.mapping(root, "", c.fields())
	if c.EndpointsFile != "" && !filepath.IsAbs(c.EndpointsFile) {
		c.EndpointsFile = filepath.Join(filepath.Dir(file), c.EndpointsFile)
	}
	// The checks run even when some keys could not be decoded (those keep
	// their defaults), so that one pass reports every problem: fixing three
	// must not reveal a fourth.
	probs := d.probs
	var checked Errors
	if errors.As(c.Validate(), &checked) {
		probs = append(probs, checked...)
	}
	if len(probs) > 0 {
		return nil, probs.sorted()
	}
	return c, nil
}

// fields is the schema of config.yaml: every key, where its value goes, and
// (through at) where in the file it was.
func (c *Config) fields() map[string]field {
	at := func(f field) field {
		return func(d *decoder, path string, n *yaml.Node) {
			c.pos[path] = n
			f(d, path, n)
		}
	}
	section := func(fields map[string]field) field {
		for k, f := range fields {
			fields[k] = at(f)
		}
		return at(func(d *decoder, path string, n *yaml.Node) { d.mapping(n, path, fields) })
	}
	return map[string]field{
		"endpoints_file":   at(str(&c.EndpointsFile)),
		"min_cluster_size": at(integer(&c.MinClusterSize)),
		"socket": section(map[string]field{
			"path":         str(&c.Socket.Path),
			"grpc_path":    str(&c.Socket.GRPCPath),
			"mode":         fileMode(&c.Socket.Mode),
			"group":        text(&c.Socket.Group),
			"allowed_uids": intList(&c.Socket.AllowedUIDs),
			"allowed_gids": intList(&c.Socket.AllowedGIDs),
		}),
		"etcd": section(map[string]field{
			"dial_timeout":            duration(&c.Etcd.DialTimeout),
			"request_timeout":         duration(&c.Etcd.RequestTimeout),
			"max_requests_per_second": integer(&c.Etcd.MaxRequestsPerSecond),
			"keepalive_time":          duration(&c.Etcd.KeepaliveTime),
			"keepalive_timeout":       duration(&c.Etcd.KeepaliveTimeout),
			"probe_timeout":           duration(&c.Etcd.ProbeTimeout),
			"suspect_after":           duration(&c.Etcd.SuspectAfter),
			"status_probe_interval":   duration(&c.Etcd.StatusProbeInterval),
			"connect_spread":          duration(&c.Etcd.ConnectSpread),
			"rebalance_spread":        duration(&c.Etcd.RebalanceSpread),
			"username":                str(&c.Etcd.Username),
			"password_file":           str(&c.Etcd.PasswordFile),
			"tls": section(map[string]field{
				"ca_file":     str(&c.Etcd.TLS.CAFile),
				"cert_file":   str(&c.Etcd.TLS.CertFile),
				"key_file":    str(&c.Etcd.TLS.KeyFile),
				"server_name": str(&c.Etcd.TLS.ServerName),
			}),
		}),
		"backoff": section(map[string]field{
			"initial":    duration(&c.Backoff.Initial),
			"max":        duration(&c.Backoff.Max),
			"multiplier": number(&c.Backoff.Multiplier),
			"jitter":     number(&c.Backoff.Jitter),
		}),
		"watch": section(map[string]field{
			"debounce":        duration(&c.Watch.Debounce),
			"resync_interval": duration(&c.Watch.ResyncInterval),
		}),
		"cache": section(map[string]field{
			"prefixes":         stringList(&c.Cache.Prefixes),
			"max_staleness":    duration(&c.Cache.MaxStaleness),
			"dir":              str(&c.Cache.Dir),
			"persist_interval": duration(&c.Cache.PersistInterval),
			"stale_if_error":   duration(&c.Cache.StaleIfError),
		}),
		"limits": section(map[string]field{
			"max_key_bytes":       integer(&c.Limits.MaxKeyBytes),
			"max_value_bytes":     integer(&c.Limits.MaxValueBytes),
			"max_txn_bytes":       integer(&c.Limits.MaxTxnBytes),
			"max_header_bytes":    integer(&c.Limits.MaxHeaderBytes),
			"read_header_timeout": duration(&c.Limits.ReadHeaderTimeout),
			"idle_timeout":        duration(&c.Limits.IdleTimeout),
			"max_connections":     integer(&c.Limits.MaxConnections),
			"max_watches":         integer(&c.Limits.MaxWatches),
			"shutdown_timeout":    duration(&c.Limits.ShutdownTimeout),
		}),
		"metrics": section(map[string]field{
			"listen": str(&c.Metrics.Listen),
		}),
		"log": section(map[string]field{
			"level":  str(&c.Log.Level),
			"format": str(&c.Log.Format),
			"audit":  boolean(&c.Log.Audit),
		}),
		"access": at(func(d *decoder, path string, n *yaml.Node) {
			items := d.list(n, path)
			c.Access = make([]AccessRule, len(items))
			for i, it := range items {
				r := &c.Access[i]
				p := fmt.Sprintf("access[%d]", i)
				c.pos[p] = it
				// Lists record where each entry is, so that an unknown user
				// is reported at its own line and column.
				list := func(f field) field {
					return at(func(d *decoder, path string, n *yaml.Node) {
						if n.Kind == yaml.SequenceNode {
							for j, e := range n.Content {
								c.pos[fmt.Sprintf("%s[%d]", path, j)] = e
							}
						}
						f(d, path, n)
					})
				}
				d.mapping(it, p, map[string]field{
					"name":        at(str(&r.Name)),
					"uids":        list(intList(&r.UIDs)),
					"users":       list(stringList(&r.Users)),
					"gids":        list(intList(&r.GIDs)),
					"groups":      list(stringList(&r.Groups)),
					"units":       list(stringList(&r.Units)),
					"prefixes":    list(stringList(&r.Prefixes)),
					"allow":       list(stringList(&r.Allow)),
					"rate":        at(integer(&r.Rate)),
					"burst":       at(integer(&r.Burst)),
					"max_streams": at(integer(&r.MaxStreams)),
				})
			}
		}),
	}
}

// Validate checks every value's range and the settings' consistency, and
// reports each problem at the position of the key that holds it.
func (c *Config) Validate() error {
	v := &checks{c: c}
	if c.EndpointsFile == "" {
		v.bad("endpoints_file", "must name a file")
	}
	v.atLeast("min_cluster_size", c.MinClusterSize, 1)
	v.socket(c.Socket)
	v.etcd(c.Etcd)
	v.backoff(c.Backoff)
	v.notNegative("watch.debounce", c.Watch.Debounce)
	v.positive("watch.resync_interval", c.Watch.ResyncInterval)
	v.positive("cache.max_staleness", c.Cache.MaxStaleness)
	v.positive("cache.persist_interval", c.Cache.PersistInterval)
	v.notNegative("cache.stale_if_error", c.Cache.StaleIfError)
	if c.Cache.Dir != "" && !filepath.IsAbs(c.Cache.Dir) {
		v.bad("cache.dir", "%q is relative; give an absolute directory, or \"\" to keep copies in memory only", c.Cache.Dir)
	}
	for _, p := range c.Cache.Prefixes {
		if p == "" {
			v.bad("cache.prefixes", "an empty prefix would cache the whole keyspace; list real prefixes")
		}
	}
	v.limits(c.Limits)
	v.oneOf("log.level", c.Log.Level, "debug", "info", "warn", "error")
	v.oneOf("log.format", c.Log.Format, "text", "json")
	v.access(c.Access)
	if c.Metrics.Listen != "" {
		if _, port, err := net.SplitHostPort(c.Metrics.Listen); err != nil || port == "" {
			v.bad("metrics.listen", "%q is not a TCP address such as 127.0.0.1:9379", c.Metrics.Listen)
		}
	}
	if len(v.probs) > 0 {
		return v.probs.sorted()
	}
	return nil
}

// checks collects Validate's problems, each at its key's position.
type checks struct {
	c     *Config
	probs Errors
}

func (v *checks) bad(path, format string, args ...any) {
	p := &Problem{File: v.c.file, Msg: path + ": " + fmt.Sprintf(format, args...)}
	if n := v.c.pos[path]; n != nil {
		p.Line, p.Col = n.Line, n.Column
	}
	v.probs = append(v.probs, p)
}

func (v *checks) positive(path string, d time.Duration) {
	if d <= 0 {
		v.bad(path, "must be a positive duration, got %v", d)
	}
}

func (v *checks) notNegative(path string, d time.Duration) {
	if d < 0 {
		v.bad(path, "must not be negative, got %v", d)
	}
}

func (v *checks) atLeast(path string, n, lo int) {
	if n < lo {
		v.bad(path, "must be at least %d, got %d", lo, n)
	}
}

func (v *checks) oneOf(path, got string, allowed ...string) {
	if !slices.Contains(allowed, got) {
		v.bad(path, "%q is not one of %s", got, strings.Join(allowed, ", "))
	}
}

func (v *checks) socket(s Socket) {
	if s.Path == "" {
		v.bad("socket.path", "must name a file")
	}
	for key, p := range map[string]string{"socket.path": s.Path, "socket.grpc_path": s.GRPCPath} {
		switch {
		case p == "":
		case !filepath.IsAbs(p):
			v.bad(key, "must be an absolute path, got %q", p)
		case strings.HasPrefix(p, "@"):
			v.bad(key, "abstract sockets are not allowed")
		case len(p) > 107:
			v.bad(key, "is %d bytes, longer than a unix socket path may be (107)", len(p))
		}
	}
	if s.GRPCPath != "" && filepath.Clean(s.GRPCPath) == filepath.Clean(s.Path) {
		v.bad("socket.grpc_path", "must differ from socket.path")
	}
	for _, id := range s.AllowedUIDs {
		if id < 0 {
			v.bad("socket.allowed_uids", "uid %d is negative", id)
		}
	}
	for _, id := range s.AllowedGIDs {
		if id < 0 {
			v.bad("socket.allowed_gids", "gid %d is negative", id)
		}
	}
}

func (v *checks) etcd(e Etcd) {
	v.positive("etcd.dial_timeout", e.DialTimeout)
	v.positive("etcd.request_timeout", e.RequestTimeout)
	v.positive("etcd.keepalive_time", e.KeepaliveTime)
	v.positive("etcd.keepalive_timeout", e.KeepaliveTimeout)
	v.positive("etcd.probe_timeout", e.ProbeTimeout)
	v.positive("etcd.suspect_after", e.SuspectAfter)
	v.positive("etcd.status_probe_interval", e.StatusProbeInterval)
	v.notNegative("etcd.connect_spread", e.ConnectSpread)
	v.notNegative("etcd.rebalance_spread", e.RebalanceSpread)
	if e.MaxRequestsPerSecond < 0 {
		v.bad("etcd.max_requests_per_second", "%d is negative; give requests per second, or 0 for no limit", e.MaxRequestsPerSecond)
	}
	if (e.Username == "") != (e.PasswordFile == "") {
		v.bad("etcd.username", "username and password_file go together: set both or neither")
	}
	if (e.TLS.CertFile == "") != (e.TLS.KeyFile == "") {
		v.bad("etcd.tls", "cert_file and key_file go together: set both or neither")
	}
}

func (v *checks) backoff(b Backoff) {
	v.positive("backoff.initial", b.Initial)
	v.positive("backoff.max", b.Max)
	if b.Max > 0 && b.Max < b.Initial {
		v.bad("backoff.max", "%v is less than backoff.initial %v", b.Max, b.Initial)
	}
	if b.Multiplier < 1 {
		v.bad("backoff.multiplier", "must be at least 1, got %v", b.Multiplier)
	}
	if b.Jitter < 0 || b.Jitter > 1 {
		v.bad("backoff.jitter", "must be a fraction within 0..1, got %v", b.Jitter)
	}
}

func (v *checks) limits(l Limits) {
	v.atLeast("limits.max_key_bytes", l.MaxKeyBytes, 1)
	v.atLeast("limits.max_value_bytes", l.MaxValueBytes, 1)
	v.atLeast("limits.max_txn_bytes", l.MaxTxnBytes, 1)
	v.atLeast("limits.max_header_bytes", l.MaxHeaderBytes, 1024)
	v.positive("limits.read_header_timeout", l.ReadHeaderTimeout)
	v.positive("limits.idle_timeout", l.IdleTimeout)
	v.atLeast("limits.max_connections", l.MaxConnections, 1)
	v.atLeast("limits.max_watches", l.MaxWatches, 1)
	v.positive("limits.shutdown_timeout", l.ShutdownTimeout)
}

// ReadFile reads a file for one of the loaders, at most MaxFileBytes+1 bytes,
// so that an enormous file is refused without being read whole.
func ReadFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, MaxFileBytes+1))
}

// Endpoints is a valid endpoints.yaml.
type Endpoints struct {
	List []endpoint.Endpoint
}

// Strings returns the normalized endpoints, in file order.
func (e *Endpoints) Strings() []string { return endpoint.Strings(e.List) }

// ParseEndpoints decodes and validates endpoints.yaml's bytes (CONFIG.md rules
// 1–5): defaultTLS is whether etcd.tls is set, minSize is min_cluster_size.
// The error is an Errors naming each problem's position.
func ParseEndpoints(file string, data []byte, defaultTLS bool, minSize int) (*Endpoints, error) {
	d := &decoder{file: file}
	root := d.parse(data)
	var (
		raws  []string
		items []*yaml.Node
		key   *yaml.Node
	)
	if root != nil {
		d.mapping(root, "", map[string]field{
			"endpoints": func(d *decoder, path string, n *yaml.Node) {
				key = n
				if isNull(n) {
					d.addf(n, "endpoints must be a list of endpoints, got nothing (null)")
					return
				}
				items = d.list(n, "endpoints")
				for _, it := range items {
					// A non-string entry is reported here, and ParseList is
					// then never reached, so raws need not stay aligned.
					if v, ok := d.scalar(it, "each endpoint", "a string", "!!str"); ok {
						raws = append(raws, v)
					}
				}
			},
		})
		if key == nil && len(d.probs) == 0 {
			d.addf(root, `missing key "endpoints" (a list of etcd endpoints)`)
		}
	}
	if len(d.probs) > 0 {
		return nil, d.probs.sorted()
	}
	eps, err := endpoint.ParseList(raws, defaultTLS, minSize)
	for _, e := range endpoint.Errors(err) {
		if e.Index >= 0 {
			d.addf(items[e.Index], "%s", e.Error())
		} else {
			d.addf(key, "%s", e.Error())
		}
	}
	if len(d.probs) > 0 {
		return nil, d.probs.sorted()
	}
	return &Endpoints{List: eps}, nil
}

// restartOnly lists the settings a reload cannot apply to a running agent,
// each with how to keep the running value. Every other setting is live. It
// is the one table of that rule: Diff uses it, and the example config marks
// the same settings [restart] (a test compares them).
var restartOnly = []struct {
	name string
	keep func(live, running *Config)
}{
	{"socket.path", func(l, r *Config) { l.Socket.Path = r.Socket.Path }},
	{"socket.grpc_path", func(l, r *Config) { l.Socket.GRPCPath = r.Socket.GRPCPath }},
	{"socket.mode", func(l, r *Config) { l.Socket.Mode = r.Socket.Mode }},
	{"socket.group", func(l, r *Config) { l.Socket.Group = r.Socket.Group }},
	{"etcd.dial_timeout", func(l, r *Config) { l.Etcd.DialTimeout = r.Etcd.DialTimeout }},
	{"etcd.keepalive_time", func(l, r *Config) { l.Etcd.KeepaliveTime = r.Etcd.KeepaliveTime }},
	{"etcd.keepalive_timeout", func(l, r *Config) { l.Etcd.KeepaliveTimeout = r.Etcd.KeepaliveTimeout }},
	{"etcd.probe_timeout", func(l, r *Config) { l.Etcd.ProbeTimeout = r.Etcd.ProbeTimeout }},
	{"etcd.suspect_after", func(l, r *Config) { l.Etcd.SuspectAfter = r.Etcd.SuspectAfter }},
	{"etcd.status_probe_interval", func(l, r *Config) { l.Etcd.StatusProbeInterval = r.Etcd.StatusProbeInterval }},
	{"etcd.connect_spread", func(l, r *Config) { l.Etcd.ConnectSpread = r.Etcd.ConnectSpread }},
	{"etcd.rebalance_spread", func(l, r *Config) { l.Etcd.RebalanceSpread = r.Etcd.RebalanceSpread }},
	{"etcd.tls", func(l, r *Config) { l.Etcd.TLS = r.Etcd.TLS }},
	{"backoff", func(l, r *Config) { l.Backoff = r.Backoff }},
	{"cache.prefixes", func(l, r *Config) { l.Cache.Prefixes = r.Cache.Prefixes }},
	{"cache.max_staleness", func(l, r *Config) { l.Cache.MaxStaleness = r.Cache.MaxStaleness }},
	{"cache.dir", func(l, r *Config) { l.Cache.Dir = r.Cache.Dir }},
	{"cache.persist_interval", func(l, r *Config) { l.Cache.PersistInterval = r.Cache.PersistInterval }},
	{"log.format", func(l, r *Config) { l.Log.Format = r.Log.Format }},
	{"limits.max_header_bytes", func(l, r *Config) { l.Limits.MaxHeaderBytes = r.Limits.MaxHeaderBytes }},
	{"limits.read_header_timeout", func(l, r *Config) { l.Limits.ReadHeaderTimeout = r.Limits.ReadHeaderTimeout }},
	{"limits.idle_timeout", func(l, r *Config) { l.Limits.IdleTimeout = r.Limits.IdleTimeout }},
	{"limits.max_connections", func(l, r *Config) { l.Limits.MaxConnections = r.Limits.MaxConnections }},
	{"limits.shutdown_timeout", func(l, r *Config) { l.Limits.ShutdownTimeout = r.Limits.ShutdownTimeout }},
	{"metrics.listen", func(l, r *Config) { l.Metrics.Listen = r.Metrics.Listen }},
}

// Diff compares the running config with a newly loaded one. live is next
// with the running value of every restart-only setting; changed names the
// restart-only settings whose new value waits for a restart.
func Diff(running, next *Config) (live *Config, changed []string) {
	c := *next
	for _, s := range restartOnly {
		var a, b Config
		s.keep(&a, running)
		s.keep(&b, next)
		if !reflect.DeepEqual(a, b) {
			changed = append(changed, s.name)
			s.keep(&c, running)
		}
	}
	return &c, changed
}

// RestartOnly names the settings a reload cannot apply (for documentation
// and its test).
func RestartOnly() []string {
	names := make([]string, len(restartOnly))
	for i, s := range restartOnly {
		names[i] = s.name
	}
	return names
}

// EndpointsYAML renders an endpoints.yaml listing eps, which ParseEndpoints
// reads back: what `endpointd dev`, the tests and the benchmarks write.
func EndpointsYAML(eps []string) []byte {
	b := []byte("endpoints:\n")
	for _, ep := range eps {
		b = append(b, "  - "...)
		b = append(b, ep...)
		b = append(b, '\n')
	}
	return b
}

// access checks the rules, resolving user and group names as the agent will
// (an unknown name is an error at its own position).
func (v *checks) access(rules []AccessRule) {
	first := map[string]int{}
	for i, r := range rules {
		p := fmt.Sprintf("access[%d]", i)
		switch j, dup := first[r.Name]; {
		case r.Name == "":
			v.bad(p, "every rule needs a name")
		case dup:
			v.bad(p+".name", "duplicate rule name %q (first used by access[%d])", r.Name, j)
		default:
			first[r.Name] = i
		}
		if len(r.UIDs)+len(r.Users)+len(r.GIDs)+len(r.Groups)+len(r.Units) == 0 {
			v.bad(p, "rule %q matches no peer: give at least one of uids, users, gids, groups, units", r.Name)
		}
		if len(r.Prefixes) == 0 {
			v.bad(p, "rule %q covers no keys: give prefixes (\"\" covers every key)", r.Name)
		}
		if len(r.Allow) == 0 {
			v.bad(p, "rule %q allows nothing: give allow: [read], [write] or [read, write]", r.Name)
		}
		switch {
		case r.Rate < 0:
			v.bad(p+".rate", "rate %d is negative; give requests per second, or 0 for no limit", r.Rate)
		case r.Burst < 0 || (r.Rate > 0 && r.Burst == 0 && v.c.pos[p+".burst"] != nil):
			v.bad(p+".burst", "burst %d is below 1; give at least 1 (it defaults to rate)", r.Burst)
		case r.Burst > 0 && r.Rate == 0:
			v.bad(p+".burst", "burst without a rate limits nothing; give rate too")
		}
		if r.MaxStreams < 0 {
			v.bad(p+".max_streams", "max_streams %d is negative; give a count, or 0 for no limit", r.MaxStreams)
		}
		for j, a := range r.Allow {
			if a != "read" && a != "write" {
				v.bad(fmt.Sprintf("%s.allow[%d]", p, j), "%q is not read or write", a)
			}
		}
		for j, id := range r.UIDs {
			if id < 0 || id > math.MaxUint32-1 {
				v.bad(fmt.Sprintf("%s.uids[%d]", p, j), "uid %d is out of range", id)
			}
		}
		for j, id := range r.GIDs {
			if id < 0 || id > math.MaxUint32-1 {
				v.bad(fmt.Sprintf("%s.gids[%d]", p, j), "gid %d is out of range", id)
			}
		}
		for j, name := range r.Users {
			if _, err := lookupUser(name); err != nil {
				v.bad(fmt.Sprintf("%s.users[%d]", p, j), "%v", err)
			}
		}
		for j, name := range r.Groups {
			if _, err := lookupGroup(name); err != nil {
				v.bad(fmt.Sprintf("%s.groups[%d]", p, j), "%v", err)
			}
		}
		for j, u := range r.Units {
			if u == "" || strings.ContainsAny(u, "/\x00") {
				v.bad(fmt.Sprintf("%s.units[%d]", p, j), "%q is not a unit name (such as billing.service or web-*.service)", u)
			}
		}
	}
}

func lookupUser(name string) (uint32, error) {
	u, err := user.Lookup(name)
	if errors.As(err, new(user.UnknownUserError)) {
		return 0, fmt.Errorf("unknown user %q (not in the user database)", name)
	}
	if err != nil {
		return 0, fmt.Errorf("user %q: %w", name, err)
	}
	id, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("user %q has uid %q, not a number", name, u.Uid)
	}
	return uint32(id), nil
}

func lookupGroup(name string) (uint32, error) {
	g, err := user.LookupGroup(name)
	if errors.As(err, new(user.UnknownGroupError)) {
		return 0, fmt.Errorf("unknown group %q (not in the group database)", name)
	}
	if err != nil {
		return 0, fmt.Errorf("group %q: %w", name, err)
	}
	id, err := strconv.ParseUint(g.Gid, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("group %q has gid %q, not a number", name, g.Gid)
	}
	return uint32(id), nil
}

// AccessPolicy builds the access rules, resolving user and group names now
// (at start and on every reload). A config without access: gives a policy
// that allows every peer the socket lets in.
func (c *Config) AccessPolicy() (*access.Policy, error) {
	rules := make([]access.Rule, 0, len(c.Access))
	for _, r := range c.Access {
		ar := access.Rule{Name: r.Name, Units: r.Units, Prefixes: r.Prefixes,
			Read: slices.Contains(r.Allow, "read"), Write: slices.Contains(r.Allow, "write"),
			Rate: r.Rate, Burst: cmp.Or(r.Burst, r.Rate), MaxStreams: r.MaxStreams}
		for _, id := range r.UIDs {
			ar.UIDs = append(ar.UIDs, uint32(id))
		}
		for _, id := range r.GIDs {
			ar.GIDs = append(ar.GIDs, uint32(id))
		}
		for _, name := range r.Users {
			id, err := lookupUser(name)
			if err != nil {
				return nil, fmt.Errorf("access rule %q: %w", r.Name, err)
			}
			ar.UIDs = append(ar.UIDs, id)
		}
		for _, name := range r.Groups {
			id, err := lookupGroup(name)
			if err != nil {
				return nil, fmt.Errorf("access rule %q: %w", r.Name, err)
			}
			ar.GIDs = append(ar.GIDs, id)
		}
		rules = append(rules, ar)
	}
	return access.NewPolicy(rules)
}
