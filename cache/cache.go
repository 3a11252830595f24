// Package cache keeps chosen key prefixes of etcd in memory (the informer
// pattern: list at a revision, then follow a watch from the next one) so
// that serializable reads under them can be answered without a round trip,
// and keeps a copy of each on disk so that a host can go on reading them,
// labelled stale, while etcd is away and across an agent restart.
//
// It owns the cached copies and their consistency rules; it does not decide
// which requests may use them (the server does). A prefix's copy is a
// snapshot of that prefix at the revision it reports — every event up to
// that revision applied, none after — which is exactly what a serializable
// read from an etcd member promises. It follows the watch, so writers
// elsewhere never leave it behind for longer than event delivery.
//
// A copy is either confirmed (its watch has caught up with etcd: the list
// it came from, or a progress notification at or beyond its revision) or
// not (loaded from disk, or its watch ended and is being resumed). Fresh
// reads (Fresh) use only a confirmed copy that heard from its watch within
// maxStaleness; stale reads (Any) use any copy there is and say its age.
//
// It runs on no timer in the steady state. A prefix nobody reads costs etcd
// its watch and nothing else; freshness is confirmed on demand: a read that
// finds the copy has heard nothing from its watch for longer than
// maxStaleness asks etcd for a progress notification (one in flight at a
// time for the whole cache) and is answered by etcd itself meanwhile.
// Recovery resumes: a copy whose watch ended (etcd away, endpoints
// replaced) or that was loaded from disk resumes its watch from its own
// revision, and lists again only when etcd has compacted that revision.
package cache

import (
	"context"
	"errors"
	"log/slog"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/etcd/api/v3/mvccpb"

	"udp_iaasd/backoff"
	"udp_iaasd/etcd"
)

// Options configure a cache.
type Options struct {
	// Prefixes are the key prefixes to cache.
	Prefixes []string
	// MaxStaleness is how long a copy may go without hearing from its
	// watch (events or progress) and still answer fresh reads. Past it a
	// read asks for progress and falls through to etcd; with etcd away no
	// progress comes, so fresh reads keep falling through and fail fast.
	MaxStaleness time.Duration
	// Dir is where copies persist ("" keeps them in memory only).
	Dir string
	// PersistInterval is how often at most a changed copy is written.
	PersistInterval time.Duration
	// Registerer, when set, gets the cache's metrics.
	Registerer prometheus.Registerer
	Logger     *slog.Logger
	// Now is the clock (time.Now when nil).
	Now func() time.Time
}

// Cache is a set of cached prefixes. A nil *Cache caches nothing.
type Cache struct {
	prefixes []*prefixCache
	ec       *etcd.EtcdClient
	log      *slog.Logger
	opts     Options
	now      func() time.Time
	metrics  *metrics
	// dirty wakes the persister when a copy changed (persist.go).
	dirty chan struct{}
}

// Mode says which copies a read may use.
type Mode int

const (
	// Fresh: only a confirmed copy that heard from its watch within
	// MaxStaleness, and that has caught up with this agent's own writes.
	Fresh Mode = iota
	// Any: whatever copy there is, confirmed or not, of any age.
	Any
)

// Info describes the copy an answer came from.
type Info struct {
	// Rev is the copy's revision: every event up to it applied.
	Rev int64
	// Age is how long ago the copy was last confirmed current by its watch
	// (the list it came from, a progress notification, or events that
	// brought it level with etcd). A copy loaded from disk keeps the time
	// persisted with it.
	Age time.Duration
	// Stale: not confirmed within MaxStaleness.
	Stale bool
}

// New returns a cache fed through ec. Load reads persisted copies; Run
// keeps the copies current.
func New(ec *etcd.EtcdClient, o Options) *Cache {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	c := &Cache{ec: ec, log: o.Logger, opts: o, now: o.Now, dirty: make(chan struct{}, 1)}
	for _, p := range o.Prefixes {
		c.prefixes = append(c.prefixes, &prefixCache{cache: c, prefix: p, ec: ec, log: o.Logger})
	}
	// Longest first, so a key under nested prefixes uses the closest one.
	sort.Slice(c.prefixes, func(i, j int) bool { return len(c.prefixes[i].prefix) > len(c.prefixes[j].prefix) })
	c.metrics = newMetrics(c, o.Registerer)
	return c
}

// Run keeps every prefix current until ctx ends, persisting changed copies
// meanwhile and once more at the end.
func (c *Cache) Run(ctx context.Context) {
	// Every prefix watches on one gRPC stream of the cache's own (stream):
	// etcd answers a progress request only when every watcher of its stream
	// is synced, so an API watch from the current revision + 1 on a quiet
	// key must not share it (watchableStore.progressIfSync).
	var wg sync.WaitGroup
	for _, p := range c.prefixes {
		wg.Go(func() { p.run(ctx) })
	}
	if c.opts.Dir != "" {
		wg.Go(func() { c.persistLoop(ctx) })
	}
	wg.Wait()
	if c.opts.Dir != "" {
		// Every writer of the copies has returned: this is their last state.
		c.persistAll(true)
	}
}

// covering returns the cached prefix that holds every key starting with key,
// or nil.
func (c *Cache) covering(key string) *prefixCache {
	if c == nil {
		return nil
	}
	for _, p := range c.prefixes {
		if strings.HasPrefix(key, p.prefix) {
			return p
		}
	}
	return nil
}

// Covers reports whether key (or every key under the prefix key) lies in a
// cached prefix.
func (c *Cache) Covers(key string) bool { return c.covering(key) != nil }

// Wrote tells the cache that a write through this agent got revision rev on
// key, so that fresh reads wait for it (read-your-writes through the agent).
func (c *Cache) Wrote(key string, rev int64) {
	if p := c.covering(key); p != nil {
		for {
			cur := p.minRev.Load()
			if rev <= cur || p.minRev.CompareAndSwap(cur, rev) {
				return
			}
		}
	}
}

// Get answers a read of key from its copy. ok is false when the key is not
// under a cached prefix or its copy may not answer in mode: ask etcd then
// (or, for Any, answer that there is no copy).
func (c *Cache) Get(key string, mode Mode) (kv *mvccpb.KeyValue, info Info, ok bool) {
	p := c.covering(key)
	if p == nil {
		return nil, Info{}, false
	}
	p.mu.RLock()
	defer p.mu.RUnlock()
	if !p.answers(mode) {
		return nil, Info{}, false
	}
	return p.data[key], p.info(), true
}

// List answers a prefix listing from its copy, sorted by key, with the
// total count and whether limit cut it. ok as for Get.
func (c *Cache) List(prefix string, limit int64, mode Mode) (kvs []*mvccpb.KeyValue, count int64, more bool, info Info, ok bool) {
	p := c.covering(prefix)
	if p == nil {
		return nil, 0, false, Info{}, false
	}
	p.mu.RLock()
	defer p.mu.RUnlock()
	if !p.answers(mode) {
		return nil, 0, false, Info{}, false
	}
	i := sort.SearchStrings(p.keys, prefix)
	for ; i < len(p.keys) && strings.HasPrefix(p.keys[i], prefix); i++ {
		count++
		if limit > 0 && int64(len(kvs)) >= limit {
			more = true
			continue
		}
		kvs = append(kvs, p.data[p.keys[i]])
	}
	return kvs, count, more, p.info(), true
}

// CountStale counts an answer given from a copy because the request asked
// for one (reason "stale") or because etcd could not answer
// ("stale_if_error").
func (c *Cache) CountStale(reason string) {
	if c != nil {
		c.metrics.stale.WithLabelValues(reason).Inc()
	}
}

// askProgress asks etcd for a progress notification on the cache's stream,
// so that a quiet prefix can answer again; at most once per maxStaleness for
// the whole cache, however many reads find a copy stale. A request returns
// once it is sent, not answered, so "one in flight" is kept as "one per
// maxStaleness": an answer takes a round trip, and a copy confirmed by it
// stays fresh for maxStaleness.
func (c *Cache) askProgress() {
	if c.ec == nil {
		return // a cache only loaded from disk (tests)
	}
	c.ec.AskWatchProgress(stream, c.opts.MaxStaleness)
}

// Synced reports whether every prefix's copy is confirmed (for tests and
// readiness).
func (c *Cache) Synced() bool {
	for _, p := range c.prefixes {
		p.mu.RLock()
		s := p.synced
		p.mu.RUnlock()
		if !s {
			return false
		}
	}
	return true
}

// PrefixStatus is one cached prefix as /v1/status shows it.
type PrefixStatus struct {
	Prefix string
	// Present: there is a copy (listed, resumed or loaded from disk).
	Present   bool
	Revision  int64
	Keys      int
	Age       time.Duration
	Confirmed bool
	// PersistedRevision and PersistedAt describe the last copy written to
	// disk (zero: none this run, and none loaded).
	PersistedRevision int64
	PersistedAt       time.Time
}

// Status describes every cached prefix, sorted by prefix.
func (c *Cache) Status() []PrefixStatus {
	if c == nil {
		return nil
	}
	out := make([]PrefixStatus, 0, len(c.prefixes))
	for _, p := range c.prefixes {
		p.mu.RLock()
		s := PrefixStatus{Prefix: p.prefix, Present: p.present, Confirmed: p.synced}
		if p.present {
			s.Revision, s.Keys, s.Age = p.rev, len(p.keys), p.age()
		}
		s.PersistedRevision, s.PersistedAt = p.persistedRev, p.persistedAt
		p.mu.RUnlock()
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Prefix < out[j].Prefix })
	return out
}

// prefixCache is one prefix's copy. run's goroutine is its only writer of
// the copy (Load runs before it); the persister writes the persisted* fields.
type prefixCache struct {
	cache  *Cache
	prefix string
	ec     *etcd.EtcdClient
	log    *slog.Logger
	minRev atomic.Int64 // highest revision written through this agent under the prefix
	heard  atomic.Int64 // unix nanoseconds of the watch's last events or progress
	// changed: the copy's data or revision changed since it was last
	// persisted; confirmedChanged: only its confirmation time did.
	changed, confirmedChanged atomic.Bool

	mu sync.RWMutex
	// present: data, keys and rev hold a copy (listed, resumed or loaded).
	present bool
	// synced: the copy's watch has caught up with etcd (confirmed).
	synced    bool
	rev       int64                       // every event up to rev is applied
	data      map[string]*mvccpb.KeyValue // key → its current value
	keys      []string                    // sorted keys of data
	confirmed time.Time                   // when the copy was last confirmed current
	// persistedRev and persistedAt: the last copy on disk (persist.go).
	persistedRev   int64
	persistedAt    time.Time
	persistFailing bool // the last write failed (its error was logged)
}

// answers reports whether the copy may answer a read in mode. A copy that
// would answer fresh reads but has not heard from its watch recently asks
// for progress, so that the reads after this one can use it; so does a
// stale read of a copy older than MaxStaleness, so that a quiet prefix does
// not look older than it is. p.mu held.
func (p *prefixCache) answers(mode Mode) bool {
	if !p.present {
		return false
	}
	if mode == Any {
		if p.age() >= p.cache.opts.MaxStaleness {
			p.cache.askProgress()
		}
		return true
	}
	if !p.synced || p.rev < p.minRev.Load() {
		return false
	}
	if p.cache.now().Sub(time.Unix(0, p.heard.Load())) < p.cache.opts.MaxStaleness {
		return true
	}
	p.cache.askProgress()
	return false
}

// info describes the copy. p.mu held.
func (p *prefixCache) info() Info {
	age := p.age()
	return Info{Rev: p.rev, Age: age, Stale: !p.synced || age > p.cache.opts.MaxStaleness}
}

// age is how long ago the copy was confirmed. p.mu held.
func (p *prefixCache) age() time.Duration {
	return max(0, p.cache.now().Sub(p.confirmed))
}

func (p *prefixCache) run(ctx context.Context) {
	// A resume or relist retries sooner than a reconnection may wait:
	// reads fall through to etcd (or the copy) meanwhile.
	b := backoff.Backoff{Policy: backoff.DefaultPolicy().WithMax(5 * time.Second)}
	for ctx.Err() == nil {
		err := p.syncOnce(ctx)
		p.mu.Lock()
		p.synced = false
		p.mu.Unlock()
		if ctx.Err() != nil {
			return
		}
		switch {
		case errors.Is(err, etcd.ErrNoEndpoints):
			// Start-up: the first endpoints file is not applied yet.
			p.log.Debug("cache: waiting for endpoints", "prefix", p.prefix)
		case errors.Is(err, errRelist):
			p.log.Warn("cache: listing the prefix again", "prefix", p.prefix, "reason", err)
			continue // at once: the copy was dropped, fresh reads go to etcd
		default:
			p.log.Warn("cache: prefix's watch ended; resuming it", "prefix", p.prefix, "revision", p.revision(), "error", err)
		}
		if b.Wait(ctx, b.Next()) != nil {
			return
		}
	}
}

func (p *prefixCache) revision() int64 {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.rev
}

// syncOnce lists the prefix when there is no copy to resume, then follows
// its watch from the copy's revision until the watch fails.
func (p *prefixCache) syncOnce(ctx context.Context) error {
	// Only while the client is connected: a watch opened with every member
	// away would wait silently under a copy that looks confirmed, and a
	// disconnection that came before this point would never be seen below
	// (the channel taken here is for the next change).
	changed := p.ec.ConnectionChanged()
	for !p.ec.Health().Connected {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
			changed = p.ec.ConnectionChanged()
		}
	}
	p.mu.RLock()
	present, from := p.present, p.rev+1
	p.mu.RUnlock()
	if !present {
		rev, err := p.list(ctx)
		if err != nil {
			return err
		}
		from = rev + 1
	}

	// No timer watches the watch: a dead connection under it is found by
	// gRPC keepalive (etcd accepts pings on a connection with a stream), a
	// member that loses its leader cancels it (WithRequireLeader), and until
	// then a silent copy only stops answering fresh reads (answers). WatchKV
	// opens it one revision early, so that progress requests are answered
	// (see etcd's kvWatch.early); the repeated revision is dropped there.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wch, err := p.ec.WatchKV(wctx, p.prefix, etcd.WatchOptions{Prefix: true, Rev: from, Stream: stream, CreatedNotify: true})
	if err != nil {
		return err
	}
	// A resumed copy is confirmed by the first progress notification at or
	// beyond etcd's revision. One is asked for once the watch is set up,
	// and again, less and less often, until one comes: etcd answers only
	// when every watcher of the stream has caught up.
	var (
		ask      <-chan time.Time
		askTimer *time.Timer
		askEvery = time.Second
	)
	defer func() {
		if askTimer != nil {
			askTimer.Stop()
		}
	}()
	// A watch whose members are all gone does not end: clientv3 waits for
	// a connection under it. The copy is not confirmed meanwhile, so the
	// watch is ended when the client loses etcd and resumed (its first
	// progress confirming the copy again) when it is back.
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
			if changed = p.ec.ConnectionChanged(); !p.ec.Health().Connected {
				return errDisconnected
			}
		case <-ask:
			if p.isSynced() {
				ask = nil
				continue
			}
			_ = p.ec.RequestWatchProgress(ctx, stream) // on failure the watch ends too
			askEvery = min(2*askEvery, 30*time.Second)
			askTimer.Reset(askEvery)
		case wr, ok := <-wch:
			if !ok {
				return errWatchClosed
			}
			// Compaction first: clientv3 reports it as an Err too.
			if wr.CompactRevision != 0 {
				p.drop()
				return relistError("etcd compacted the copy's revision " + strconv.FormatInt(from-1, 10))
			}
			if wr.Err != nil {
				return wr.Err
			}
			if wr.Created {
				if !p.isSynced() {
					_ = p.ec.RequestWatchProgress(ctx, stream)
					askTimer = time.NewTimer(askEvery)
					ask = askTimer.C
				}
				continue
			}
			if wr.Progress && wr.Revision < p.revision() {
				// A member behind the copy (catching up after a restart, or a
				// cluster restored from an older backup) confirms nothing.
				p.log.Debug("cache: progress behind the copy", "prefix", p.prefix, "progress", wr.Revision, "revision", p.revision())
				continue
			}
			p.apply(wr)
		}
	}
}

// list replaces the copy with a fresh listing of the prefix (linearizable,
// so the copy is confirmed at once) and returns its revision.
func (p *prefixCache) list(ctx context.Context) (int64, error) {
	resp, err := p.ec.Read(ctx, p.prefix, etcd.ReadOptions{Prefix: true})
	if err != nil {
		return 0, err
	}
	data := make(map[string]*mvccpb.KeyValue, len(resp.KVs))
	keys := make([]string, 0, len(resp.KVs))
	for _, kv := range resp.KVs {
		data[string(kv.Key)] = kv
		keys = append(keys, string(kv.Key))
	}
	now := p.cache.now()
	p.mu.Lock()
	p.data, p.keys, p.rev, p.synced, p.present, p.confirmed = data, keys, resp.Revision, true, true, now
	p.heard.Store(now.UnixNano())
	p.mu.Unlock()
	p.changed.Store(true)
	p.cache.wake()
	p.log.Info("cache: prefix listed", "prefix", p.prefix, "keys", len(keys), "revision", resp.Revision)
	return resp.Revision, nil
}

// drop discards the copy (compacted, or from a cluster behind it): fresh
// and stale reads alike go without it until the next list.
func (p *prefixCache) drop() {
	p.mu.Lock()
	p.present, p.synced, p.data, p.keys = false, false, nil, nil
	p.mu.Unlock()
}

func (p *prefixCache) isSynced() bool {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.synced
}

type cacheError string

func (e cacheError) Error() string { return string(e) }

const (
	errWatchClosed  = cacheError("cache: watch closed")
	errDisconnected = cacheError("cache: etcd unreachable")
)

// errRelist marks the errors after which the copy was dropped and must be
// listed again.
const errRelist = cacheError("cache: relist")

type relistError string

func (e relistError) Error() string        { return string(e) }
func (e relistError) Is(target error) bool { return target == errRelist }

// stream is the name of the cache's own gRPC watch stream (Run).
const stream = "cache"

// apply folds one watch response into the copy.
func (p *prefixCache) apply(wr etcd.WatchResponse) {
	now := p.cache.now()
	p.mu.Lock()
	defer p.mu.Unlock()
	before := p.rev
	for _, ev := range wr.Events {
		k := string(ev.Kv.Key)
		_, had := p.data[k]
		switch ev.Type {
		case mvccpb.Event_PUT:
			p.data[k] = ev.Kv
			if !had {
				i := sort.SearchStrings(p.keys, k)
				p.keys = append(p.keys, "")
				copy(p.keys[i+1:], p.keys[i:])
				p.keys[i] = k
			}
		case mvccpb.Event_DELETE:
			if had {
				delete(p.data, k)
				i := sort.SearchStrings(p.keys, k)
				p.keys = append(p.keys[:i], p.keys[i+1:]...)
			}
		}
		p.rev = max(p.rev, ev.Kv.ModRevision)
	}
	switch {
	case wr.Progress && wr.Revision >= p.rev:
		// Only a progress notification says every event up to its header's
		// revision has been sent; an event batch's header may be ahead of
		// events still to come. It is what confirms a resumed copy.
		p.rev = wr.Revision
		p.synced, p.confirmed = true, now
		p.confirmedChanged.Store(true)
	case p.synced && len(wr.Events) > 0 && wr.Revision == p.rev:
		// Events that bring a confirmed copy level with etcd's revision.
		p.confirmed = now
		p.confirmedChanged.Store(true)
	}
	if p.rev != before || len(wr.Events) > 0 {
		p.changed.Store(true)
	}
	p.heard.Store(now.UnixNano())
	p.cache.wake()
}
