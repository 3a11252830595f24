// Package devcluster runs real etcd clusters in-process, on loopback ports
// and in a directory of their own: the cluster `endpointd dev` starts, and
// the base of the test kit (internal/etcdtest), which adds its hooks through
// Options.
//
// It owns the members' lifecycles (start, stop, restart with their data)
// and their configuration, and nothing else: no clients, no test helpers,
// no package testing. Members are go.etcd.io/etcd/server/v3/embed servers,
// the same code as the etcd binary. Builds with the nodev tag leave this
// package, and with it the etcd server, out of the endpointd binary.
package devcluster

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"google.golang.org/grpc"
)

// Options shape a cluster. The zero value is a three-member cluster under a
// new temporary directory, tuned for quick elections.
type Options struct {
	Members int    // default 3
	Dir     string // default: a new directory under os.TempDir(), removed by Close
	// Fsync keeps etcd's fsyncs; tests turn them off for speed, which loses
	// nothing in-process (a member stopped here is closed, never torn).
	Fsync bool
	// StartTimeout bounds waiting for the cluster to elect a leader.
	StartTimeout time.Duration // default 30s
	// TLS, when set, makes every member also serve clients over TLS on a
	// second port (Member.TLSClientURL), with these files.
	TLS *TLSFiles
	// MaxTxnOps is etcd's --max-txn-ops; default etcd's (128).
	MaxTxnOps uint
	// UnixSockets makes every member also serve clients on a unix socket
	// in its data directory's parent (Member.UnixClientURL).
	UnixSockets bool

	// GRPCServerOptions, when set, adds gRPC server options to member
	// index's server each time it starts (the test kit's interceptors).
	GRPCServerOptions func(index int) []grpc.ServerOption
	// BeforeStop, when set, runs before member index is stopped.
	BeforeStop func(index int)
}

// Cluster is a running set of members.
type Cluster struct {
	Members []*Member

	dir     string
	ownsDir bool
	token   string
}

// Member is one etcd server of a Cluster.
type Member struct {
	Name      string
	Dir       string
	ClientURL url.URL
	PeerURL   url.URL
	// TLSClientURL is the member's https client URL when Options.TLS is set.
	TLSClientURL url.URL
	tls          *TLSFiles
	// UnixClientURL is the member's unix:///path client URL when
	// Options.UnixSockets is set.
	UnixClientURL url.URL
	// Index is the member's position in Cluster.Members.
	Index int

	cluster   *Cluster
	fsync     bool
	maxTxnOps uint
	opts      *Options

	mu   sync.Mutex // guards etcd
	etcd *embed.Etcd
}

// Start starts a cluster and waits until it has a leader.
func Start(opts Options) (*Cluster, error) {
	if opts.Members <= 0 {
		opts.Members = 3
	}
	if opts.StartTimeout <= 0 {
		opts.StartTimeout = 30 * time.Second
	}
	c := &Cluster{dir: opts.Dir, token: fmt.Sprintf("devcluster-%d", time.Now().UnixNano())}
	if c.dir == "" {
		d, err := os.MkdirTemp("", "devcluster-")
		if err != nil {
			return nil, fmt.Errorf("devcluster: %w", err)
		}
		c.dir, c.ownsDir = d, true
	}
	// A port picked here can be taken by another process before etcd binds
	// it; such a start fails fast with "address already in use" and is tried
	// again on fresh ports.
	var err error
	for try := 0; try < 5; try++ {
		if err = c.start(opts); err == nil {
			return c, nil
		}
		c.stopAll()
		if !strings.Contains(err.Error(), "address already in use") {
			break
		}
	}
	c.Close()
	return nil, err
}

func (c *Cluster) start(opts Options) error {
	ports, err := FreePorts(3 * opts.Members)
	if err != nil {
		return err
	}
	c.Members = make([]*Member, opts.Members)
	var initial []string
	for i := range c.Members {
		name := fmt.Sprintf("m%d", i)
		m := &Member{
			Name:         name,
			Dir:          filepath.Join(c.dir, fmt.Sprintf("%s-%d", name, ports[3*i])),
			ClientURL:    url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", ports[3*i])},
			PeerURL:      url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", ports[3*i+1])},
			TLSClientURL: url.URL{Scheme: "https", Host: fmt.Sprintf("127.0.0.1:%d", ports[3*i+2])},
			Index:        i,
			cluster:      c,
			opts:         &opts,
			fsync:        opts.Fsync,
			maxTxnOps:    opts.MaxTxnOps,
			tls:          opts.TLS,
		}
		if opts.UnixSockets {
			// A socket path is limited to 107 bytes: keep it short.
			m.UnixClientURL = url.URL{Scheme: "unix", Path: filepath.Join(c.dir, fmt.Sprintf("%s-%d.sock", name, ports[3*i]))}
		}
		c.Members[i] = m
		initial = append(initial, name+"="+m.PeerURL.String())
	}
	errc := make(chan error, len(c.Members))
	for _, m := range c.Members {
		go func() { errc <- m.start(strings.Join(initial, ","), embed.ClusterStateFlagNew) }()
	}
	var errs []error
	for range c.Members {
		errs = append(errs, <-errc)
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return c.waitReady(opts.StartTimeout)
}

func (c *Cluster) waitReady(timeout time.Duration) error {
	deadline := time.After(timeout)
	for _, m := range c.Members {
		e := m.server()
		select {
		case <-e.Server.ReadyNotify():
		case err := <-e.Err():
			return fmt.Errorf("devcluster: member %s: %w", m.Name, err)
		case <-deadline:
			return fmt.Errorf("devcluster: cluster not ready after %v", timeout)
		}
	}
	return nil
}

func (m *Member) start(initialCluster, state string) error {
	spec := MemberSpec{Name: m.Name, Dir: m.Dir, ClientURL: m.ClientURL.String(),
		PeerURL: m.PeerURL.String(), InitialCluster: initialCluster, State: state, Token: m.cluster.token, Fsync: m.fsync,
		MaxTxnOps: m.maxTxnOps, UnixClientURL: m.UnixClientURL.String()}
	if m.UnixClientURL.Path == "" {
		spec.UnixClientURL = ""
	}
	if m.tls != nil {
		spec.TLSClientURL, spec.TLS = m.TLSClientURL.String(), *m.tls
	}
	cfg := MemberConfig(spec)
	if m.opts.GRPCServerOptions != nil {
		cfg.GRPCAdditionalServerOptions = append(cfg.GRPCAdditionalServerOptions, m.opts.GRPCServerOptions(m.Index)...)
	}
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return fmt.Errorf("devcluster: start member %s: %w", m.Name, err)
	}
	m.mu.Lock()
	m.etcd = e
	m.mu.Unlock()
	return nil
}

// MemberSpec is everything a member needs to start, in-process or in a
// process of its own (where it travels as JSON).
type MemberSpec struct {
	Name, Dir          string
	ClientURL, PeerURL string
	InitialCluster     string
	State              string // embed.ClusterStateFlagNew or Existing
	Token              string
	Fsync              bool
	MaxTxnOps          uint     // etcd's --max-txn-ops; 0: etcd's default
	UnixClientURL      string   // also serve clients on this unix:///path, when set
	TLSClientURL       string   // also serve clients over TLS here, when set
	TLS                TLSFiles // the server certificate for TLSClientURL
}

// MemberConfig is etcd's configuration for a member: quick elections, no
// gRPC gateway, bcrypt's lowest cost, no logs.
func MemberConfig(s MemberSpec) *embed.Config {
	curl, _ := url.Parse(s.ClientURL)
	purl, _ := url.Parse(s.PeerURL)
	cfg := embed.NewConfig()
	cfg.Name = s.Name
	cfg.Dir = s.Dir
	cfg.ListenClientUrls = []url.URL{*curl}
	cfg.AdvertiseClientUrls = []url.URL{*curl}
	if s.TLSClientURL != "" {
		turl, _ := url.Parse(s.TLSClientURL)
		cfg.ListenClientUrls = append(cfg.ListenClientUrls, *turl)
		cfg.AdvertiseClientUrls = append(cfg.AdvertiseClientUrls, *turl)
		cfg.ClientTLSInfo.CertFile, cfg.ClientTLSInfo.KeyFile = s.TLS.CertFile, s.TLS.KeyFile
	}
	if s.UnixClientURL != "" {
		uurl, _ := url.Parse(s.UnixClientURL)
		cfg.ListenClientUrls = append(cfg.ListenClientUrls, *uurl)
		cfg.AdvertiseClientUrls = append(cfg.AdvertiseClientUrls, *uurl)
	}
	cfg.ListenPeerUrls = []url.URL{*purl}
	cfg.AdvertisePeerUrls = []url.URL{*purl}
	cfg.InitialCluster = s.InitialCluster
	cfg.InitialClusterToken = s.Token
	cfg.ClusterState = s.State
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	cfg.UnsafeNoFsync = !s.Fsync
	// Elections in a few hundred milliseconds keep member-loss tests short;
	// still 5 heartbeats per election timeout, as etcd recommends.
	cfg.TickMs = 50
	cfg.ElectionMs = 500
	cfg.EnableGRPCGateway = false
	cfg.SnapshotCount = 10000
	// bcrypt's lowest cost: at etcd's default each Authenticate costs tens of
	// milliseconds of CPU, and seconds under the race detector.
	cfg.BcryptCost = 4
	if s.MaxTxnOps > 0 {
		cfg.MaxTxnOps = s.MaxTxnOps
	}
	return cfg
}

func (m *Member) server() *embed.Etcd {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.etcd
}

// Endpoint returns the member's client URL, e.g. http://127.0.0.1:41234.
func (m *Member) Endpoint() string { return m.ClientURL.String() }

// Running reports whether the member is started.
func (m *Member) Running() bool { return m.server() != nil }

// Stop closes the member gracefully (a leader hands over leadership first),
// keeping its data directory. A kill -9 needs a member in another process.
func (m *Member) Stop() { m.stop(false) }

// stop closes the member; hard skips the leadership transfer, which only costs
// time when every member is going away.
func (m *Member) stop(hard bool) {
	m.mu.Lock()
	e := m.etcd
	m.etcd = nil
	m.mu.Unlock()
	if e == nil {
		return
	}
	if m.opts.BeforeStop != nil {
		m.opts.BeforeStop(m.Index)
	}
	if hard {
		e.Server.HardStop()
	}
	e.Close()
}

// Restart starts a stopped member again from its data directory, on the same
// ports, and waits until it serves.
func (m *Member) Restart() error {
	if m.Running() {
		return fmt.Errorf("devcluster: member %s is running", m.Name)
	}
	var initial []string
	for _, o := range m.cluster.Members {
		initial = append(initial, o.Name+"="+o.PeerURL.String())
	}
	var err error
	// The ports were ours a moment ago; a socket in TIME_WAIT or a probe
	// racing us can hold them briefly.
	for try := 0; try < 50; try++ {
		if err = m.start(strings.Join(initial, ","), embed.ClusterStateFlagExisting); err == nil {
			break
		}
		if !strings.Contains(err.Error(), "address already in use") {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return err
	}
	e := m.server()
	select {
	case <-e.Server.ReadyNotify():
		return nil
	case err := <-e.Err():
		return fmt.Errorf("devcluster: member %s: %w", m.Name, err)
	case <-time.After(30 * time.Second):
		return fmt.Errorf("devcluster: member %s not ready after restart", m.Name)
	}
}

// Endpoints returns every member's client URL, in member order.
func (c *Cluster) Endpoints() []string {
	eps := make([]string, len(c.Members))
	for i, m := range c.Members {
		eps[i] = m.Endpoint()
	}
	return eps
}

// StopAll stops every member at once, keeping their data: a whole-cluster
// outage.
func (c *Cluster) StopAll() { c.stopAll() }

// RestartAll restarts every stopped member concurrently: a lone member of a
// three-member cluster cannot become ready without a quorum.
func (c *Cluster) RestartAll() error {
	errc := make(chan error, len(c.Members))
	n := 0
	for _, m := range c.Members {
		if m.Running() {
			continue
		}
		n++
		go func() { errc <- m.Restart() }()
	}
	var errs []error
	for range n {
		errs = append(errs, <-errc)
	}
	return errors.Join(errs...)
}

func (c *Cluster) stopAll() {
	var wg sync.WaitGroup
	for _, m := range c.Members {
		wg.Go(func() { m.stop(true) })
	}
	wg.Wait()
}

// Close stops every member and removes the data directory if Start made it.
func (c *Cluster) Close() {
	c.stopAll()
	if c.ownsDir {
		os.RemoveAll(c.dir)
	}
}

// Dir is the directory holding the members' data.
func (c *Cluster) Dir() string { return c.dir }

// FreePorts returns n loopback ports free at the time of the call.
func FreePorts(n int) ([]int, error) {
	ls := make([]net.Listener, 0, n)
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("devcluster: pick a free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// TLSFiles is a throwaway CA and a server certificate for 127.0.0.1 and
// localhost, written as PEM files, for members that serve TLS.
type TLSFiles struct {
	CAFile, CertFile, KeyFile string
}

// NewTLSFiles writes a fresh CA and server certificate under dir.
func NewTLSFiles(dir string) (*TLSFiles, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "etcdtest CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "etcdtest member"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	f := &TLSFiles{CAFile: filepath.Join(dir, "ca.pem"), CertFile: filepath.Join(dir, "member.pem"), KeyFile: filepath.Join(dir, "member-key.pem")}
	for path, block := range map[string]*pem.Block{
		f.CAFile:   {Type: "CERTIFICATE", Bytes: caDER},
		f.CertFile: {Type: "CERTIFICATE", Bytes: der},
		f.KeyFile:  {Type: "EC PRIVATE KEY", Bytes: keyDER},
	} {
		if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
			return nil, err
		}
	}
	return f, nil
}

// ClientConfig is a TLS config that trusts the CA.
func (f *TLSFiles) ClientConfig() (*tls.Config, error) {
	pem, err := os.ReadFile(f.CAFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("devcluster: no certificate in %s", f.CAFile)
	}
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, nil
}
