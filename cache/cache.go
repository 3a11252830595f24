// Package cache keeps chosen key prefixes of etcd in memory (the informer
// pattern: list at a revision, then follow a watch from the next one) so
// that serializable reads under them can be answered without a round trip.
//
// It owns the cached copies and their consistency rules; it does not decide
// which requests may use them (the server does: serializable reads without a
// revision). A prefix's copy is a snapshot of that prefix at the revision it
// reports — every event up to that revision applied, none after — which is
// exactly what a serializable read from an etcd member promises. It follows
// the watch, so writers elsewhere never leave it behind for longer than event
// delivery; it is never used while it is not synced.
//
// It runs on no timer. A prefix nobody reads costs etcd its watch and
// nothing else; freshness is confirmed on demand: a read that finds the copy
// has heard nothing from its watch for longer than maxStaleness asks etcd
// for a progress notification (one in flight at a time for the whole
// cache) and is answered by etcd itself meanwhile.
package cache

import (
	"context"
	"errors"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"

	"udp_iaasd/backoff"
	"udp_iaasd/etcd"
)

// Cache is a set of cached prefixes. The zero value caches nothing.
type Cache struct {
	prefixes []*prefixCache
	ec       *etcd.EtcdClient
	log      *slog.Logger
	// maxStaleness is how long a prefix may go without hearing from its
	// watch (events or progress) and still answer. Past it a read asks for
	// progress and falls through to etcd; with etcd away no progress comes,
	// so reads keep falling through and fail fast rather than serve an ever
	// older copy.
	maxStaleness time.Duration
}

// New returns a cache of prefixes, fed through ec, whose answers are at most
// maxStaleness behind their watch. Run starts it.
func New(ec *etcd.EtcdClient, prefixes []string, maxStaleness time.Duration, log *slog.Logger) *Cache {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Cache{ec: ec, log: log, maxStaleness: maxStaleness}
	for _, p := range prefixes {
		c.prefixes = append(c.prefixes, &prefixCache{cache: c, prefix: p, ec: ec, log: log})
	}
	// Longest first, so a key under nested prefixes uses the closest one.
	sort.Slice(c.prefixes, func(i, j int) bool { return len(c.prefixes[i].prefix) > len(c.prefixes[j].prefix) })
	return c
}

// Run keeps every prefix synced until ctx ends.
func (c *Cache) Run(ctx context.Context) {
	// Every prefix watches on one gRPC stream of the cache's own (stream):
	// etcd answers a progress request only when every watcher of its stream
	// is synced, so an API watch from the current revision + 1 on a quiet
	// key must not share it (watchableStore.progressIfSync).
	var wg sync.WaitGroup
	for _, p := range c.prefixes {
		wg.Go(func() { p.run(ctx) })
	}
	wg.Wait()
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

// Wrote tells the cache that a write through this agent got revision rev on
// key, so that cached reads wait for it (read-your-writes through the agent).
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

// Get answers a serializable read of key from memory. ok is false when the
// key is not under a cached prefix, or its prefix is not synced or has not
// caught up with this agent's writes: ask etcd then.
func (c *Cache) Get(key string) (kv *mvccpb.KeyValue, rev int64, ok bool) {
	p := c.covering(key)
	if p == nil {
		return nil, 0, false
	}
	p.mu.RLock()
	defer p.mu.RUnlock()
	if !p.usable() {
		return nil, 0, false
	}
	return p.data[key], p.rev, true
}

// askProgress asks etcd for a progress notification on the cache's stream,
// so that a quiet prefix can answer again; at most once per maxStaleness for
// the whole cache, however many reads find a copy stale. A request returns
// once it is sent, not answered, so "one in flight" is kept as "one per
// maxStaleness": an answer takes a round trip, and a copy confirmed by it
// stays fresh for maxStaleness.
func (c *Cache) askProgress() {
	c.ec.AskWatchProgress(stream, c.maxStaleness)
}

// List answers a serializable prefix listing from memory, sorted by key,
// with the total count and whether limit cut it. ok as for Get.
func (c *Cache) List(prefix string, limit int64) (kvs []*mvccpb.KeyValue, count int64, more bool, rev int64, ok bool) {
	p := c.covering(prefix)
	if p == nil {
		return nil, 0, false, 0, false
	}
	p.mu.RLock()
	defer p.mu.RUnlock()
	if !p.usable() {
		return nil, 0, false, 0, false
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
	return kvs, count, more, p.rev, true
}

// Synced reports whether every prefix is synced (for tests and status).
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

// prefixCache is one prefix's copy. run's goroutine is its only writer.
type prefixCache struct {
	cache  *Cache
	prefix string
	ec     *etcd.EtcdClient
	log    *slog.Logger
	minRev atomic.Int64 // highest revision written through this agent under the prefix
	heard  atomic.Int64 // unix nanoseconds of the watch's last events or progress

	mu     sync.RWMutex
	synced bool
	rev    int64                       // every event up to rev is applied
	data   map[string]*mvccpb.KeyValue // key → its current value
	keys   []string                    // sorted keys of data
}

// usable: synced, recently heard from, and caught up with this agent's own
// writes. A synced copy that has not heard from its watch recently asks for
// progress, so that the reads after this one can use it. p.mu held.
func (p *prefixCache) usable() bool {
	if !p.synced || p.rev < p.minRev.Load() {
		return false
	}
	if time.Since(time.Unix(0, p.heard.Load())) < p.cache.maxStaleness {
		return true
	}
	p.cache.askProgress()
	return false
}

func (p *prefixCache) run(ctx context.Context) {
	// A relist retries sooner than a reconnection may wait: reads fall
	// through to etcd meanwhile.
	b := backoff.Backoff{Policy: backoff.DefaultPolicy().WithMax(5 * time.Second)}
	for ctx.Err() == nil {
		err := p.syncOnce(ctx)
		p.mu.Lock()
		p.synced = false
		p.mu.Unlock()
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, etcd.ErrNoEndpoints) {
			// Start-up: the first endpoints file is not applied yet.
			p.log.Debug("cache: waiting for endpoints", "prefix", p.prefix)
		} else {
			p.log.Warn("cache: prefix out of sync; relisting", "prefix", p.prefix, "error", err)
		}
		if b.Wait(ctx, b.Next()) != nil {
			return
		}
	}
}

// syncOnce lists the prefix, then follows its watch until the watch fails.
func (p *prefixCache) syncOnce(ctx context.Context) error {
	resp, err := p.ec.Read(ctx, p.prefix, etcd.ReadOptions{Prefix: true})
	if err != nil {
		return err
	}
	data := make(map[string]*mvccpb.KeyValue, len(resp.KVs))
	keys := make([]string, 0, len(resp.KVs))
	for _, kv := range resp.KVs {
		data[string(kv.Key)] = kv
		keys = append(keys, string(kv.Key))
	}
	p.mu.Lock()
	p.data, p.keys, p.rev, p.synced = data, keys, resp.Revision, true
	p.heard.Store(time.Now().UnixNano())
	p.mu.Unlock()
	p.log.Info("cache: prefix synced", "prefix", p.prefix, "keys", len(keys), "revision", resp.Revision)

	// The watch starts at the listed revision, not the one after it: etcd
	// answers a progress request only once every watcher's start revision
	// is at or below the store's (watchableStore.progressIfSync), so a watch
	// from rev+1 on a quiet cluster would never hear progress, and the copy
	// could never be confirmed fresh. Events at rev itself are already in
	// the list; applying them again changes nothing. The watch runs on the
	// cache's own stream (Run).
	//
	// No timer watches the watch: a dead connection under it is found by
	// gRPC keepalive (etcd accepts pings on a connection with a stream), a
	// member that loses its leader cancels it (WithRequireLeader), and until
	// then a silent copy only stops answering (usable).
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wch, err := p.ec.WatchKV(wctx, p.prefix, etcd.WatchOptions{Prefix: true, Rev: resp.Revision, Stream: stream})
	if err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case wr, ok := <-wch:
			if !ok {
				return errWatchClosed
			}
			if wr.Err != nil {
				return wr.Err
			}
			if wr.CompactRevision != 0 {
				return errWatchClosed
			}
			p.apply(wr)
		}
	}
}

type cacheError string

func (e cacheError) Error() string { return string(e) }

const errWatchClosed = cacheError("cache: watch closed")

// stream is the name of the cache's own gRPC watch stream (Run).
const stream = "cache"

// apply folds one watch response into the copy.
func (p *prefixCache) apply(wr etcd.WatchResponse) {
	p.mu.Lock()
	defer p.mu.Unlock()
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
	// Only a progress notification says every event up to its header's
	// revision has been sent; an event batch's header may be ahead of events
	// still to come.
	if wr.Progress && wr.Revision > p.rev {
		p.rev = wr.Revision
	}
	p.heard.Store(time.Now().UnixNano())
}
