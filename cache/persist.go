package cache

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
)

// A copy on disk is one file per prefix, written whole and renamed into
// place, so that a crash at any instant leaves the previous file or the
// new one. The cache holds each copy whole in memory anyway, so a snapshot
// file costs one sequential write per persist and one sequential read at
// start, with no second structure to keep in step (docs/reliability.md has
// the figures and why not bbolt).
//
//	magic     "endpointd-cache\n" (16 bytes)
//	version   uint32, big-endian (formatVersion)
//	prefix    uvarint length, bytes
//	revision  varint
//	confirmed varint, unix nanoseconds
//	count     uvarint
//	count ×   uvarint length, mvccpb.KeyValue (protobuf), sorted by key
//	crc       uint32, big-endian: CRC-32C of everything before it
const (
	magic         = "endpointd-cache\n"
	formatVersion = 1
	fileSuffix    = ".copy"
	// confirmPersistEvery bounds how often a copy whose data did not
	// change is written again only to record a newer confirmation time: a
	// large quiet prefix read stale continuously would otherwise be
	// rewritten every persist interval. A copy loaded after a crash may
	// therefore say it is up to this much older than it was; never younger.
	confirmPersistEvery = time.Minute
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// marshal is deterministic so that one copy always encodes to one file.
var marshal = proto.MarshalOptions{Deterministic: true}

// fileName is the file of prefix's copy: the prefix with every byte outside
// [A-Za-z0-9_-] escaped as %XX (readable for ordinary prefixes, never "."
// or ".."), or a hash of it when that would be too long for a file name.
// The prefix itself is inside the file; a name is only where to look.
func fileName(prefix string) string {
	var b strings.Builder
	for i := 0; i < len(prefix); i++ {
		c := prefix[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	if b.Len() > 200 {
		return fmt.Sprintf("sha-%08x%08x", crc32.Checksum([]byte(prefix), castagnoli), crc32.ChecksumIEEE([]byte(prefix))) + fileSuffix
	}
	return b.String() + fileSuffix
}

// snapshot is a copy as written to disk.
type snapshot struct {
	prefix    string
	rev       int64
	confirmed time.Time
	kvs       []*mvccpb.KeyValue // sorted by key
}

// encode writes s to w in the file format.
func (s *snapshot) encode(w io.Writer) error {
	crc := crc32.New(castagnoli)
	bw := bufio.NewWriterSize(io.MultiWriter(w, crc), 1<<20)
	var buf []byte
	buf = append(buf, magic...)
	buf = binary.BigEndian.AppendUint32(buf, formatVersion)
	buf = binary.AppendUvarint(buf, uint64(len(s.prefix)))
	buf = append(buf, s.prefix...)
	buf = binary.AppendVarint(buf, s.rev)
	buf = binary.AppendVarint(buf, s.confirmed.UnixNano())
	buf = binary.AppendUvarint(buf, uint64(len(s.kvs)))
	if _, err := bw.Write(buf); err != nil {
		return err
	}
	var msg []byte
	for _, kv := range s.kvs {
		var err error
		if msg, err = marshal.MarshalAppend(msg[:0], kv); err != nil {
			return err
		}
		buf = binary.AppendUvarint(buf[:0], uint64(len(msg)))
		if _, err := bw.Write(buf); err != nil {
			return err
		}
		if _, err := bw.Write(msg); err != nil {
			return err
		}
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	_, err := w.Write(binary.BigEndian.AppendUint32(nil, crc.Sum32()))
	return err
}

// decode parses a whole file. Every check a torn, truncated or foreign file
// could fail is made before anything is used.
func decode(b []byte) (*snapshot, error) {
	if len(b) < len(magic)+4+4 {
		return nil, fmt.Errorf("%d bytes: too short to be a copy (truncated?)", len(b))
	}
	if string(b[:len(magic)]) != magic {
		return nil, errors.New("not an endpointd cache copy (bad magic)")
	}
	if v := binary.BigEndian.Uint32(b[len(magic):]); v != formatVersion {
		return nil, fmt.Errorf("format version %d, this agent reads %d", v, formatVersion)
	}
	body, sum := b[:len(b)-4], binary.BigEndian.Uint32(b[len(b)-4:])
	if got := crc32.Checksum(body, castagnoli); got != sum {
		return nil, fmt.Errorf("checksum %08x, file says %08x (truncated or corrupt)", got, sum)
	}
	r := body[len(magic)+4:]
	bad := func(what string) (*snapshot, error) { return nil, errors.New("malformed " + what) }
	n, k := binary.Uvarint(r)
	if k <= 0 || n > uint64(len(r)-k) {
		return bad("prefix")
	}
	s := &snapshot{prefix: string(r[k : k+int(n)])}
	r = r[k+int(n):]
	var nanos int64
	if s.rev, k = binary.Varint(r); k <= 0 || s.rev < 1 {
		return bad("revision")
	}
	r = r[k:]
	if nanos, k = binary.Varint(r); k <= 0 {
		return bad("confirmation time")
	}
	s.confirmed = time.Unix(0, nanos)
	r = r[k:]
	count, k := binary.Uvarint(r)
	if k <= 0 || count > uint64(len(r)) {
		return bad("key count")
	}
	r = r[k:]
	s.kvs = make([]*mvccpb.KeyValue, 0, count)
	for i := uint64(0); i < count; i++ {
		n, k := binary.Uvarint(r)
		if k <= 0 || n > uint64(len(r)-k) {
			return bad(fmt.Sprintf("entry %d", i))
		}
		kv := &mvccpb.KeyValue{}
		if err := proto.Unmarshal(r[k:k+int(n)], kv); err != nil {
			return nil, fmt.Errorf("entry %d: %w", i, err)
		}
		r = r[k+int(n):]
		key := string(kv.Key)
		if !strings.HasPrefix(key, s.prefix) || kv.ModRevision > s.rev ||
			(len(s.kvs) > 0 && key <= string(s.kvs[len(s.kvs)-1].Key)) {
			return bad(fmt.Sprintf("entry %d (%q: outside the prefix, out of order or after the revision)", i, key))
		}
		s.kvs = append(s.kvs, kv)
	}
	if len(r) != 0 {
		return bad("end (trailing bytes)")
	}
	return s, nil
}

// writeFile replaces path with s atomically: a temporary file in the same
// directory, written and fsynced, renamed over path, and the directory
// fsynced so that the rename itself survives a power loss.
func writeFile(path string, s *snapshot) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err = f.Chmod(0o600); err != nil {
		return err
	}
	if err = s.encode(f); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if err = os.Rename(f.Name(), path); err != nil {
		return err
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// ensureDir makes the copies' directory, private: the copies hold data
// that access rules protect.
func ensureDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	return os.Chmod(dir, 0o700)
}

// Load reads the persisted copies of the configured prefixes, before the
// sockets answer. A copy that cannot be used (unreadable, truncated,
// corrupt, another format version, another prefix) is logged at warn and
// removed; so are the files of prefixes no longer configured and the
// temporary files of an interrupted write. Nothing here is fatal: a prefix
// without a copy is listed when etcd answers.
func (c *Cache) Load() {
	if c == nil || c.opts.Dir == "" {
		return
	}
	dir := c.opts.Dir
	entries, err := os.ReadDir(dir)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			c.log.Warn("cache: cannot read the copies' directory; starting without copies", "dir", dir, "error", err)
		}
		return
	}
	wanted := map[string]*prefixCache{}
	for _, p := range c.prefixes {
		wanted[fileName(p.prefix)] = p
	}
	for _, e := range entries {
		name := e.Name()
		path := filepath.Join(dir, name)
		p, ok := wanted[name]
		switch {
		case strings.Contains(name, fileSuffix+".tmp-"):
			c.log.Info("cache: removing an interrupted write", "file", path)
			os.Remove(path)
			continue
		case !strings.HasSuffix(name, fileSuffix) || e.IsDir():
			continue // not ours
		case !ok:
			c.log.Warn("cache: removing the copy of a prefix no longer cached", "file", path)
			os.Remove(path)
			continue
		}
		if err := p.load(path); err != nil {
			c.log.Warn("cache: discarding an unusable copy; the prefix is listed when etcd answers",
				"prefix", p.prefix, "file", path, "error", err)
			c.metrics.loadErrors.Inc()
			os.Remove(path)
		}
	}
}

// load installs the copy in path, unconfirmed.
func (p *prefixCache) load(path string) error {
	var s *snapshot
	err := readMapped(path, func(b []byte) (err error) {
		s, err = decode(b) // copies what it keeps: b is unmapped after
		return err
	})
	if err != nil {
		return err
	}
	if s.prefix != p.prefix {
		return fmt.Errorf("the file holds prefix %q", s.prefix)
	}
	data := make(map[string]*mvccpb.KeyValue, len(s.kvs))
	keys := make([]string, len(s.kvs))
	for i, kv := range s.kvs {
		keys[i] = string(kv.Key)
		data[keys[i]] = kv
	}
	p.mu.Lock()
	p.data, p.keys, p.rev, p.confirmed, p.present, p.synced = data, keys, s.rev, s.confirmed, true, false
	p.persistedRev = s.rev
	if st, err := os.Stat(path); err == nil {
		p.persistedAt = st.ModTime()
	}
	p.mu.Unlock()
	p.log.Info("cache: loaded the persisted copy; unconfirmed until its watch catches up",
		"prefix", p.prefix, "keys", len(keys), "revision", s.rev, "age", p.cache.now().Sub(s.confirmed).Round(time.Second))
	return nil
}

// readMapped hands fn the file at path mapped read-only, so that a copy is
// decoded straight from the page cache instead of first being read into a
// buffer of fresh heap as large as the file: for a 100,000-key × 1 KiB copy
// loaded by a process just started, 0.5 s against 0.84 s read whole, and
// half the transient memory (this machine; docs/reliability.md). fn must
// not keep b. The file is ours (0600, in a 0700 directory) and replaced
// only by rename, so the mapped inode does not change; should someone
// truncate it anyway, the fault is returned as an error, not a crash.
func readMapped(path string, fn func(b []byte) error) (err error) {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if st.Size() == 0 {
		return fn(nil) // nothing to map; decode says what is wrong
	}
	b, err := unix.Mmap(int(f.Fd()), 0, int(st.Size()), unix.PROT_READ, unix.MAP_PRIVATE)
	if err != nil {
		return fmt.Errorf("map the file: %w", err)
	}
	defer unix.Munmap(b)
	defer func() {
		if r := recover(); r != nil {
			if _, fault := r.(interface{ Addr() uintptr }); !fault {
				panic(r)
			}
			err = fmt.Errorf("the file faulted while being read (truncated under the agent?): %v", r)
		}
	}()
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	return fn(b)
}

// wake tells the persister that a copy changed.
func (c *Cache) wake() {
	select {
	case c.dirty <- struct{}{}:
	default:
	}
}

// persistLoop writes changed copies, at most once per PersistInterval; it
// sleeps while nothing changes.
func (c *Cache) persistLoop(ctx context.Context) {
	if err := ensureDir(c.opts.Dir); err != nil {
		c.persistFailed(nil, err)
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.dirty:
		}
		c.persistAll(false)
		t := time.NewTimer(c.opts.PersistInterval)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// persistAll writes every copy that changed; final (a clean stop) also
// writes copies whose confirmation time alone changed.
func (c *Cache) persistAll(final bool) {
	for _, p := range c.prefixes {
		p.persist(final)
	}
}

func (p *prefixCache) persist(final bool) {
	c := p.cache
	p.mu.RLock()
	since := c.now().Sub(p.persistedAt)
	p.mu.RUnlock()
	dataChanged := p.changed.Load()
	if !dataChanged && !(p.confirmedChanged.Load() && (final || since >= confirmPersistEvery)) {
		return
	}
	// The snapshot shares the copy's values (a *KeyValue is never changed
	// once in the copy: apply replaces it), so holding the lock costs a
	// pass over the keys, not a copy of the data.
	p.mu.RLock()
	if !p.present {
		p.mu.RUnlock()
		return
	}
	s := &snapshot{prefix: p.prefix, rev: p.rev, confirmed: p.confirmed, kvs: make([]*mvccpb.KeyValue, len(p.keys))}
	for i, k := range p.keys {
		s.kvs[i] = p.data[k]
	}
	p.changed.Store(false)
	p.confirmedChanged.Store(false)
	p.mu.RUnlock()

	start := time.Now()
	err := ensureDir(c.opts.Dir)
	if err == nil {
		err = writeFile(filepath.Join(c.opts.Dir, fileName(p.prefix)), s)
	}
	if err != nil {
		// Written again at the next change or stop; the copy in memory
		// and the one on disk are as they were.
		p.changed.Store(p.changed.Load() || dataChanged)
		p.confirmedChanged.Store(true)
		c.persistFailed(p, err)
		return
	}
	c.metrics.persistSeconds.Observe(time.Since(start).Seconds())
	p.mu.Lock()
	p.persistedRev, p.persistedAt = s.rev, c.now()
	failing := p.persistFailing
	p.persistFailing = false
	p.mu.Unlock()
	if failing {
		c.log.Info("cache: persisting the copy again", "prefix", p.prefix, "dir", c.opts.Dir)
	}
}

// persistFailed counts a failed write, and logs the first of a run of them
// per prefix (an unwritable directory fails every write).
func (c *Cache) persistFailed(p *prefixCache, err error) {
	c.metrics.persistErrors.Inc()
	if p == nil {
		c.log.Warn("cache: cannot use the copies' directory; copies stay in memory only", "dir", c.opts.Dir, "error", err)
		return
	}
	p.mu.Lock()
	first := !p.persistFailing
	p.persistFailing = true
	p.mu.Unlock()
	if first {
		c.log.Warn("cache: cannot persist the copy; keeping the previous one on disk", "prefix", p.prefix, "dir", c.opts.Dir, "error", err)
	}
}
