package ecommpay

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
	"go.uber.org/zap"
)

// The local backend: de-dup state and journal in one bbolt file.
//
// Claims live in memory only (a crash frees them, as an expired lease
// would). Delivered marks and journal entries are written by one goroutine
// that groups everything queued into one transaction, and so one fsync,
// every localFlushEvery or sooner when the queue is long: an accepted
// Commit or Record is on disk within about localFlushEvery plus the time of
// that transaction.
//
// The journal's buckets are keyed by entry ID, which sorts by time, so a
// transaction appends to their ends and pruning takes from their starts:
// it dirties few pages however large the file. What would need keys in
// another order (payment views, each payment's entries, which entry holds
// an event key's body) is an index in memory, rebuilt from the entries
// when the file is opened.

const (
	localFlushEvery = 100 * time.Millisecond
	// localFlushBatch queued writes start a flush before the tick.
	localFlushBatch = 1024
	// localMaxQueued writes may wait for the disk; beyond that Commit and
	// Record wait for a flush.
	localMaxQueued = 50_000
	// localSweepEvery is how often an idle backend still writes, to drop
	// expired delivered marks and entries past their age.
	localSweepEvery = time.Minute
	// localSweepMax bounds the expired marks dropped in one transaction.
	localSweepMax = 10_000
	// localLockTimeout is how long Open waits for another process's lock.
	localLockTimeout = 500 * time.Millisecond
	// localMemoryKeys bounds the in-memory set of recent deliveries: the
	// file has them all, so this is only a cache.
	localMemoryKeys = 100_000
	// boltElemOverhead is bbolt's per-key leaf header, counted in the size.
	boltElemOverhead = 16
	// localErrLogEvery rate-limits the failed-write error log.
	localErrLogEvery = 10 * time.Second
)

// Buckets. Expiry times are big-endian Unix nanoseconds so that keys sort
// by time.
var (
	bktDeliveredAt = []byte("delivered_exp") // exp ‖ keyHash → "", every delivered mark
	bktEntries     = []byte("entries")       // ID → record (journal_codec.go)
	bktStrangers   = []byte("strangers")     // ID → record, unverified callbacks
	bktBodies      = []byte("entry_bodies")  // ID of the first entry of an event key → body
	bktMeta        = []byte("meta")          // "size" → journal bytes (uint64)
	// journalBuckets hold what MaxSize bounds.
	journalBuckets = [][]byte{bktEntries, bktStrangers, bktBodies}
	metaSize       = []byte("size")
	// The buckets of the first layout (one JSON entry per ID, payment
	// views and indexes by payment key), converted at open.
	oldEvents, oldUnverified, oldBodies = []byte("events"), []byte("unverified"), []byte("bodies")
	// oldDelivered held the marks by key hash too; delivered_exp has them.
	oldDelivered = []byte("delivered")
	oldBuckets   = [][]byte{oldEvents, oldUnverified, oldBodies,
		[]byte("payment_events"), []byte("payments"), []byte("payments_updated"), []byte("payments_open")}
)

var errLocalClosed = errors.New("ecommpay: the local store is closed")

// localBackend implements backend on a bbolt file.
type localBackend struct {
	mem    *memoryStore
	db     *bolt.DB
	path   string
	logger *zap.Logger
	now    func() time.Time // wall clock: delivered marks outlive the process
	opts   atomic.Pointer[journalOptions]
	prune  pruneLog

	mu sync.Mutex
	// marks are the delivered marks, written or not (key hash → expiry):
	// a claim of a new key, the common case, is a map lookup.
	marks    map[keyHash]int64
	pending  map[keyHash]int64 // delivered marks not yet written: exp
	records  []journalEvent    // entries not yet written
	flushing bool              // records are in the transaction under way
	closed   bool

	wake    chan struct{}
	syncReq chan chan error
	stop    chan struct{}
	done    chan struct{}
	close   sync.Once
	lastErr error // the final flush's, for Destruct

	// idx is written by the writer goroutine under imu, read by queries.
	imu sync.RWMutex
	idx *localIndex

	// Owned by the writer goroutine.
	size        int64 // bytes of the journal buckets, as counted by cost
	unverifiedN int
	lastSweep   time.Time
	lastErrLog  time.Time
}

// defaultLocalPath is the database file when none is configured.
func defaultLocalPath() string {
	return filepath.Join(caddy.AppDataDir(), "ecommpay", "ecommpay.db")
}

// openLocalBackend opens (creating if need be) the database at path, or at
// defaultLocalPath if path is empty. A file locked by another process is
// an error after localLockTimeout.
func openLocalBackend(path string, maxKeys int, opts journalOptions, logger *zap.Logger) (*localBackend, error) {
	if logger == nil {
		logger = zap.NewNop()
	}
	if path == "" {
		path = defaultLocalPath()
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("ecommpay: local store: %w", err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{
		Timeout: localLockTimeout,
		// The map freelist is fast on large files; not syncing it saves a
		// write per transaction and costs a page scan at open.
		FreelistType:   bolt.FreelistMapType,
		NoFreelistSync: true,
		// Growing the map copies every node a transaction holds, so map
		// room for a full journal at once (twice its bound: pages hold
		// more than the bytes counted).
		InitialMmapSize: int(2 * opts.withDefaults().MaxSize),
		// A commit writes each dirty page with its own system call;
		// pages of 16 KiB quarter the calls for the appended entries and
		// bodies. (A file keeps the page size it was created with.)
		PageSize: 16 << 10,
	})
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, fmt.Errorf("ecommpay: local store %s is in use by another process "+
			"(another Caddy with the same data directory?); give each its own file", path)
	}
	if err != nil {
		return nil, fmt.Errorf("ecommpay: local store %s: %w", path, err)
	}
	if maxKeys <= 0 {
		maxKeys = localMemoryKeys
	}
	b := &localBackend{
		// Evictions from this cache lose nothing, so they are not logged.
		mem:     newMemoryStore(maxKeys, zap.NewNop()),
		db:      db,
		path:    path,
		logger:  logger,
		now:     time.Now,
		prune:   pruneLog{logger: logger},
		marks:   make(map[keyHash]int64),
		pending: make(map[keyHash]int64),
		wake:    make(chan struct{}, 1),
		syncReq: make(chan chan error),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	o := opts.withDefaults()
	b.opts.Store(&o)
	err = db.Update(func(tx *bolt.Tx) error {
		for _, name := range append([][]byte{bktDeliveredAt, bktMeta}, journalBuckets...) {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		if tx.Bucket(oldEvents) != nil {
			if err := convertFirstLayout(tx); err != nil {
				return fmt.Errorf("converting the journal to the current layout: %w", err)
			}
		}
		if tx.Bucket(oldDelivered) != nil {
			if err := tx.DeleteBucket(oldDelivered); err != nil {
				return err
			}
		}
		b.loadMarks(tx)
		return b.reindex(tx)
	})
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("ecommpay: local store %s: %w", path, err)
	}
	go b.run()
	return b, nil
}

// setOptions changes the journal's bounds in place; the next write applies
// them.
func (b *localBackend) setOptions(opts journalOptions) {
	o := opts.withDefaults()
	b.opts.Store(&o)
}

// Claim implements Store: the claims in memory, then the delivered marks,
// which the file has too, so that a restart still answers Delivered.
func (b *localBackend) Claim(ctx context.Context, key string, lease time.Duration) (ClaimState, string, error) {
	st, tok, err := b.mem.Claim(ctx, key, lease)
	if err != nil || st != Claimed {
		return st, tok, err
	}
	b.mu.Lock()
	exp := b.marks[hashKey(key)]
	b.mu.Unlock()
	if left := time.Duration(exp - b.now().UnixNano()); left > 0 {
		// Keep it in memory so that the next duplicate stops there.
		_ = b.mem.Commit(ctx, key, tok, left)
		return Delivered, "", nil
	}
	return Claimed, tok, nil
}

// loadMarks reads the unexpired delivered marks into memory.
func (b *localBackend) loadMarks(tx *bolt.Tx) {
	now := uint64(b.now().UnixNano())
	_ = tx.Bucket(bktDeliveredAt).ForEach(func(k, _ []byte) error {
		if len(k) != 8+len(keyHash{}) {
			return nil
		}
		if exp := binary.BigEndian.Uint64(k[:8]); exp > now {
			b.marks[keyHash(k[8:])] = int64(exp) // keys in time order: the last is the latest
		}
		return nil
	})
}

// Commit implements Store. The mark is on disk within a flush.
func (b *localBackend) Commit(ctx context.Context, key, token string, ttl time.Duration) error {
	if err := b.mem.Commit(ctx, key, token, ttl); err != nil {
		return err
	}
	exp := b.now().Add(ttl).UnixNano()
	if err := b.makeRoom(ctx); err != nil {
		return err
	}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return errLocalClosed
	}
	h := hashKey(key)
	b.pending[h] = exp
	b.marks[h] = exp
	n := len(b.pending) + len(b.records)
	b.mu.Unlock()
	if n >= localFlushBatch {
		b.kick()
	}
	return nil
}

// Release implements Store; claims are never on disk.
func (b *localBackend) Release(ctx context.Context, key, token string) error {
	return b.mem.Release(ctx, key, token)
}

// Record implements journal. The entry is on disk within a flush.
func (b *localBackend) Record(ctx context.Context, e journalEvent) error {
	e.prepare(b.now())
	if _, ok := parseEntryID(e.ID); !ok {
		e.ID = newEventID(e.Time) // the index keeps IDs of this form
	}
	if len(e.Body) > 0 {
		if e.isUnverified() || b.opts.Load().NoBodies {
			e.Body = nil
		} else {
			e.Body = bytes.Clone(e.Body) // the caller may reuse its buffer
		}
	}
	if err := b.makeRoom(ctx); err != nil {
		return err
	}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return errLocalClosed
	}
	b.records = append(b.records, e)
	n := len(b.pending) + len(b.records)
	b.mu.Unlock()
	if n >= localFlushBatch {
		b.kick()
	}
	return nil
}

// makeRoom waits for a flush when localMaxQueued writes are waiting: a
// disk slower than the callbacks slows them down rather than let the
// queue eat the heap.
func (b *localBackend) makeRoom(ctx context.Context) error {
	b.mu.Lock()
	full := len(b.pending)+len(b.records) >= localMaxQueued
	b.mu.Unlock()
	if !full {
		return nil
	}
	return b.flushWait(ctx)
}

func (b *localBackend) kick() {
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

// run is the writer goroutine.
func (b *localBackend) run() {
	defer close(b.done)
	tick := time.NewTicker(localFlushEvery)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			b.flush()
		case <-b.wake:
			b.flush()
		case ch := <-b.syncReq:
			ch <- b.flush()
		case <-b.stop:
			b.lastErr = b.flush()
			return
		}
	}
}

// sync waits until the entries recorded so far are written, so that reads
// see them.
func (b *localBackend) sync(ctx context.Context) error {
	b.mu.Lock()
	idle := len(b.records) == 0 && !b.flushing
	b.mu.Unlock()
	if idle {
		return nil
	}
	return b.flushWait(ctx)
}

// flushWait has the writer flush now and waits for it.
func (b *localBackend) flushWait(ctx context.Context) error {
	ch := make(chan error, 1)
	select {
	case b.syncReq <- ch:
	case <-b.done:
		return errLocalClosed
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-ch:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// flush writes what is queued in one transaction, with the sweeps and
// pruning that are due. On failure the queue is kept for the next try.
func (b *localBackend) flush() error {
	now := b.now()
	sweep := now.Sub(b.lastSweep) >= localSweepEvery
	b.mu.Lock()
	marks, records := b.pending, b.records
	if len(marks) == 0 && len(records) == 0 && !sweep {
		b.mu.Unlock()
		return nil
	}
	b.flushing = len(records) > 0
	b.pending, b.records = make(map[keyHash]int64), nil
	b.mu.Unlock()

	w := ltx{b: b, opts: *b.opts.Load(), idx: b.idx}
	// The index changes with the transaction; queries wait for the flush
	// (sync), so holding it for the commit's fsync delays nobody else.
	b.imu.Lock()
	err := b.db.Update(func(tx *bolt.Tx) error {
		w.tx, w.n = tx, pruneCounts{}
		w.size, w.unverifiedN = b.size, b.unverifiedN
		return w.write(marks, records, now)
	})
	b.imu.Unlock()
	if err != nil {
		// The index has what the failed transaction did not write: read it
		// again from the file.
		if rerr := b.db.View(b.reindex); rerr != nil {
			err = errors.Join(err, rerr)
		}
	}

	b.mu.Lock()
	b.flushing = false
	if err != nil {
		for h, exp := range marks {
			if cur, ok := b.pending[h]; !ok || cur < exp {
				b.pending[h] = exp
			}
		}
		b.records = append(records, b.records...)
	}
	b.mu.Unlock()

	if err != nil {
		if now.Sub(b.lastErrLog) >= localErrLogEvery {
			b.lastErrLog = now
			b.logger.Error("could not write to the local store; will retry",
				zap.String("path", b.path), zap.Int("records", len(records)), zap.Int("marks", len(marks)), zap.Error(err))
		}
		return err
	}
	b.size, b.unverifiedN = w.size, w.unverifiedN
	b.lastSweep = now
	b.prune.add(pruneAge, w.n.age, now)
	b.prune.add(pruneSize, w.n.size, now)
	b.prune.add(pruneUnverified, w.n.unverified, now)
	return nil
}

// ltx is one write transaction and the counts it changes.
type ltx struct {
	tx          *bolt.Tx
	b           *localBackend
	idx         *localIndex
	opts        journalOptions
	size        int64
	unverifiedN int
	n           pruneCounts
	// arena holds the encoded entries: bbolt keeps the slices given to
	// Put until the commit, so none is reused.
	arena []byte
}

// encode returns e's record in the transaction's arena.
func (w *ltx) encode(e *journalEvent, bodyID string) []byte {
	need := 2 + 8 + 3*binary.MaxVarintLen64 + 14*binary.MaxVarintLen64 + len(bodyID) + len(e.Kind) +
		len(e.ProjectID) + len(e.PaymentID) + len(e.OperationID) + len(e.OperationType) + len(e.OperationStatus) +
		len(e.PaymentStatus) + len(e.EventKey) + len(e.Result) + len(e.Path) + len(e.Amount) + len(e.Currency) + len(e.Method)
	if cap(w.arena)-len(w.arena) < need {
		w.arena = make([]byte, 0, max(64<<10, need))
	}
	start := len(w.arena)
	w.arena = appendRecord(w.arena, e, bodyID)
	return w.arena[start:len(w.arena):len(w.arena)]
}

func cost(k, v []byte) int64 { return int64(len(k) + len(v) + boltElemOverhead) }

// putNew writes k=v in a journal bucket, keeping the size count; keys are
// IDs, which are unique.
func (w *ltx) putNew(bk *bolt.Bucket, k, v []byte) error {
	w.size += cost(k, v)
	return bk.Put(k, v)
}

// del deletes k=v from a journal bucket, keeping the size count.
func (w *ltx) del(bk *bolt.Bucket, k, v []byte) error {
	w.size -= cost(k, v)
	return bk.Delete(k)
}

func (w *ltx) write(marks map[keyHash]int64, records []journalEvent, now time.Time) error {
	if err := w.writeMarks(marks); err != nil {
		return err
	}
	if err := w.sweepMarks(now); err != nil {
		return err
	}
	// Keys come in time order: full pages suit appends.
	for _, name := range [][]byte{bktEntries, bktStrangers, bktBodies, bktDeliveredAt} {
		w.tx.Bucket(name).FillPercent = 0.95
	}
	if err := w.applyBounds(now); err != nil {
		return err
	}
	// In ID order, so that each put lands at the end of its bucket.
	slices.SortFunc(records, func(a, b journalEvent) int { return strings.Compare(a.ID, b.ID) })
	for i := range records {
		if err := w.record(&records[i]); err != nil {
			return err
		}
		// Pruning as it goes keeps a large batch from growing the file.
		if w.size > w.opts.MaxSize {
			if err := w.pruneSize(); err != nil {
				return err
			}
		}
	}
	if err := w.applyBounds(now); err != nil {
		return err
	}
	var v [8]byte
	binary.BigEndian.PutUint64(v[:], uint64(max(w.size, 0)))
	return w.tx.Bucket(bktMeta).Put(metaSize, v[:])
}

func timeKey(ns int64) []byte { return binary.BigEndian.AppendUint64(make([]byte, 0, 40), uint64(ns)) }

func (w *ltx) writeMarks(marks map[keyHash]int64) error {
	at := w.tx.Bucket(bktDeliveredAt)
	// In key order: with one ttl, expiries follow time and the puts land
	// at the end of the bucket.
	sorted := make([]mark, 0, len(marks))
	for h, exp := range marks {
		sorted = append(sorted, mark{h, exp})
	}
	slices.SortFunc(sorted, func(a, b mark) int { return cmp.Or(cmp.Compare(a.exp, b.exp), bytes.Compare(a.h[:], b.h[:])) })
	for _, m := range sorted {
		if err := at.Put(append(timeKey(m.exp), m.h[:]...), nil); err != nil {
			return err
		}
	}
	return nil
}

// mark is a delivered mark on its way to the file.
type mark struct {
	h   keyHash
	exp int64
}

// sweepMarks drops expired delivered marks, oldest first, from the file
// and from memory (unless a later delivery replaced them).
func (w *ltx) sweepMarks(now time.Time) error {
	at := w.tx.Bucket(bktDeliveredAt)
	cut := uint64(now.UnixNano())
	var gone [][]byte
	c := at.Cursor()
	for k, _ := c.First(); k != nil && len(gone) < localSweepMax && binary.BigEndian.Uint64(k[:8]) <= cut; k, _ = c.Next() {
		gone = append(gone, bytes.Clone(k))
	}
	if len(gone) == 0 {
		return nil
	}
	w.b.mu.Lock()
	for _, k := range gone {
		if h := keyHash(k[8:]); w.b.marks[h] == int64(binary.BigEndian.Uint64(k[:8])) {
			delete(w.b.marks, h)
		}
	}
	w.b.mu.Unlock()
	for _, k := range gone {
		if err := at.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// record writes e and adds it to the index.
func (w *ltx) record(e *journalEvent) error {
	if e.isUnverified() {
		w.unverifiedN++
		return w.putNew(w.tx.Bucket(bktStrangers), []byte(e.ID), w.encode(e, ""))
	}
	var bodyID string
	if e.EventKey != "" {
		var own string // e's ID, when e brings a body to store
		if len(e.Body) > 0 && !w.opts.NoBodies {
			own = e.ID
		}
		// One lookup: the body stored already, or e's. A failed put fails
		// the transaction, and the index is read again from the file.
		if bodyID = w.idx.refBody(e.EventKey, own); bodyID != "" && bodyID == own {
			if err := w.putNew(w.tx.Bucket(bktBodies), []byte(e.ID), e.Body); err != nil {
				return err
			}
		}
	}
	if err := w.putNew(w.tx.Bucket(bktEntries), []byte(e.ID), w.encode(e, bodyID)); err != nil {
		return err
	}
	w.idx.add(e)
	return nil
}

// applyBounds prunes by age, by the unverified count and by size, oldest
// first.
func (w *ltx) applyBounds(now time.Time) error {
	ev, un := w.tx.Bucket(bktEntries), w.tx.Bucket(bktStrangers)
	cut := []byte(idBound(now.Add(-w.opts.MaxAge)))
	for _, bk := range []*bolt.Bucket{ev, un} {
		for {
			old := oldest(bk, pruneBatch, cut)
			if len(old) == 0 {
				break
			}
			for _, kv := range old {
				if err := w.drop(bk, kv); err != nil {
					return err
				}
			}
			w.n.age += len(old)
		}
	}
	if excess := w.unverifiedN - w.opts.MaxUnverified; excess > 0 {
		for _, kv := range oldest(un, excess, nil) {
			if err := w.drop(un, kv); err != nil {
				return err
			}
			w.n.unverified++
		}
	}
	if w.size <= w.opts.MaxSize {
		return nil
	}
	return w.pruneSize()
}

// pruneBatch is how many entries a prune reads before deleting: a cursor
// over deleted keys walks their emptied nodes until the commit, so
// seeking the oldest afresh for every entry would be quadratic.
const pruneBatch = 256

// pruneSize drops the oldest entries, genuine or not, until the journal is
// at sizePruneFloor.
func (w *ltx) pruneSize() error {
	ev, un := w.tx.Bucket(bktEntries), w.tx.Bucket(bktStrangers)
	floor := sizePruneFloor(w.opts.MaxSize)
	for w.size > floor {
		es, us := oldest(ev, pruneBatch, nil), oldest(un, pruneBatch, nil)
		if len(es) == 0 && len(us) == 0 {
			return nil
		}
		for w.size > floor && (len(es) > 0 || len(us) > 0) {
			var err error
			if len(us) == 0 || (len(es) > 0 && bytes.Compare(es[0].k, us[0].k) < 0) {
				err, es = w.drop(ev, es[0]), es[1:]
			} else {
				err, us = w.drop(un, us[0]), us[1:]
			}
			if err != nil {
				return err
			}
			w.n.size++
		}
	}
	return nil
}

type kv struct{ k, v []byte }

// oldest returns copies of bk's first n entries, only those before cut if
// cut is set. The copies share a few large buffers, which nothing changes
// afterwards.
func oldest(bk *bolt.Bucket, n int, cut []byte) []kv {
	var out []kv
	var slab []byte
	c := bk.Cursor()
	for k, v := c.First(); k != nil && len(out) < n && (cut == nil || bytes.Compare(k, cut) < 0); k, v = c.Next() {
		if cap(slab)-len(slab) < len(k)+len(v) {
			slab = make([]byte, 0, max(64<<10, len(k)+len(v)))
		}
		at := len(slab)
		slab = append(append(slab, k...), v...)
		mid := at + len(k)
		out = append(out, kv{slab[at:mid:mid], slab[mid:len(slab):len(slab)]})
	}
	return out
}

// drop deletes the entry e of bk and what only it held.
func (w *ltx) drop(bk *bolt.Bucket, e kv) error {
	// e is a copy that lives through the call, and the index keeps none
	// of the entry's strings.
	ev, bodyID, err := decodeRecordBorrowed(e.k, e.v)
	if err != nil {
		return fmt.Errorf("journal entry %s: %w", e.k, err)
	}
	if err := w.del(bk, e.k, e.v); err != nil {
		return err
	}
	if ev.isUnverified() {
		w.unverifiedN--
		return nil
	}
	if id := w.idx.remove(&ev, bodyID); id != "" {
		// One seek finds and deletes the body.
		c := w.tx.Bucket(bktBodies).Cursor()
		if k, v := c.Seek([]byte(id)); k != nil && string(k) == id {
			w.size -= cost(k, v)
			return c.Delete()
		}
	}
	return nil
}

// reindex rebuilds the index and the counts from the file.
func (b *localBackend) reindex(tx *bolt.Tx) error {
	idx := newLocalIndex()
	var size int64
	err := tx.Bucket(bktEntries).ForEach(func(k, v []byte) error {
		size += cost(k, v)
		// The index copies what it keeps.
		e, bodyID, err := decodeRecordBorrowed(k, v)
		if err != nil {
			return fmt.Errorf("journal entry %s: %w", k, err)
		}
		if bodyID != "" {
			idx.refBody(e.EventKey, bodyID)
		}
		idx.add(&e)
		return nil
	})
	if err != nil {
		return err
	}
	for _, name := range [][]byte{bktStrangers, bktBodies} {
		_ = tx.Bucket(name).ForEach(func(k, v []byte) error {
			size += cost(k, v)
			return nil
		})
	}
	unverified := tx.Bucket(bktStrangers).Stats().KeyN
	b.imu.Lock()
	b.idx = idx
	b.imu.Unlock()
	b.size, b.unverifiedN = size, unverified
	return nil
}

// convertFirstLayout rewrites a journal of the first layout (JSON entries,
// bodies by event key) in the current one and drops the old buckets.
func convertFirstLayout(tx *bolt.Tx) error {
	type firstEntry struct {
		journalEvent
		Ref bool `json:"body_ref,omitempty"`
	}
	oldB := tx.Bucket(oldBodies)
	bodyIDs := map[string]string{} // event key → ID of the entry holding its body
	for _, pair := range [][2][]byte{{oldEvents, bktEntries}, {oldUnverified, bktStrangers}} {
		from, to := tx.Bucket(pair[0]), tx.Bucket(pair[1])
		if from == nil {
			continue
		}
		err := from.ForEach(func(k, v []byte) error {
			var fe firstEntry
			if err := json.Unmarshal(v, &fe); err != nil {
				return fmt.Errorf("journal entry %s: %w", k, err)
			}
			var bodyID string
			if fe.Ref && oldB != nil {
				if id, ok := bodyIDs[fe.EventKey]; ok {
					bodyID = id
				} else if body := oldB.Get([]byte(fe.EventKey)); len(body) >= 4 {
					if err := tx.Bucket(bktBodies).Put(bytes.Clone(k), bytes.Clone(body[4:])); err != nil {
						return err
					}
					bodyID = string(k)
					bodyIDs[fe.EventKey] = bodyID
				}
			}
			return to.Put(bytes.Clone(k), appendRecord(nil, &fe.journalEvent, bodyID))
		})
		if err != nil {
			return err
		}
	}
	for _, name := range oldBuckets {
		if tx.Bucket(name) != nil {
			if err := tx.DeleteBucket(name); err != nil {
				return err
			}
		}
	}
	return nil
}

// seekBefore moves c to the last key before k.
func seekBefore(c *bolt.Cursor, k []byte) ([]byte, []byte) {
	if key, _ := c.Seek(k); key == nil {
		return c.Last()
	}
	return c.Prev()
}

// scanBucket returns up to limit entries of an ID-keyed bucket matching f,
// newest first.
func scanBucket(bk *bolt.Bucket, f *eventFilter, limit int) ([]journalEvent, error) {
	c := bk.Cursor()
	var k, v []byte
	if start := f.startID(); start != "" {
		k, v = seekBefore(c, []byte(start))
	} else {
		k, v = c.Last()
	}
	stop := []byte(f.stopID())
	var out []journalEvent
	for ; k != nil && len(out) < limit && bytes.Compare(k, stop) >= 0; k, v = c.Prev() {
		e, _, err := decodeRecord(k, v)
		if err != nil {
			return nil, err
		}
		if f.match(&e) {
			out = append(out, e)
		}
	}
	return out, nil
}

// scanIDs is scanBucket over the given IDs (in ID order) of bk.
func scanIDs(bk *bolt.Bucket, ids []string, f *eventFilter, limit int) ([]journalEvent, error) {
	var out []journalEvent
	for i := len(ids) - 1; i >= 0 && len(out) < limit; i-- {
		v := bk.Get([]byte(ids[i]))
		if v == nil {
			continue
		}
		e, _, err := decodeRecord([]byte(ids[i]), v)
		if err != nil {
			return nil, err
		}
		if f.match(&e) {
			out = append(out, e)
		}
	}
	return out, nil
}

// paymentIDs returns a payment's view and its entries' IDs.
func (b *localBackend) paymentIDs(projectID, paymentID string) (paymentView, []string, bool) {
	b.imu.RLock()
	defer b.imu.RUnlock()
	return b.idx.payment(projectID, paymentID)
}

// Events implements journal.
func (b *localBackend) Events(ctx context.Context, f eventFilter) ([]journalEvent, error) {
	if err := b.sync(ctx); err != nil {
		return nil, err
	}
	limit := limitOr(f.Limit)
	f.Since = b.ageCut(f.Since)
	var ids []string
	onePayment := f.ProjectID != "" && f.PaymentID != ""
	if onePayment {
		_, ids, _ = b.paymentIDs(f.ProjectID, f.PaymentID)
	}
	var out []journalEvent
	err := b.db.View(func(tx *bolt.Tx) error {
		var genuine []journalEvent
		var err error
		if onePayment {
			genuine, err = scanIDs(tx.Bucket(bktEntries), ids, &f, limit)
		} else {
			genuine, err = scanBucket(tx.Bucket(bktEntries), &f, limit)
		}
		if err != nil {
			return err
		}
		strangers, err := scanBucket(tx.Bucket(bktStrangers), &f, limit)
		out = mergeNewest(genuine, strangers, limit)
		return err
	})
	return out, err
}

// ageCut raises since to the age bound: entries past it may wait for the
// next sweep, but are not listed.
func (b *localBackend) ageCut(since time.Time) time.Time {
	if cut := b.now().Add(-b.opts.Load().MaxAge); since.Before(cut) {
		return cut
	}
	return since
}

// views returns copies of the views that keep keeps.
func (b *localBackend) views(keep func(*paymentView) bool) []paymentView {
	b.imu.RLock()
	defer b.imu.RUnlock()
	return b.idx.views(keep)
}

// Payments implements journal.
func (b *localBackend) Payments(ctx context.Context, f paymentFilter) ([]paymentView, error) {
	if err := b.sync(ctx); err != nil {
		return nil, err
	}
	f.Since = b.ageCut(f.Since)
	var out []paymentView
	if f.ProjectID != "" && f.PaymentID != "" { // one payment: no scan
		if v, _, ok := b.paymentIDs(f.ProjectID, f.PaymentID); ok && f.match(&v) {
			out = append(out, v)
		}
		return out, nil
	}
	out = b.views(f.match)
	slices.SortFunc(out, newestUpdatedFirst)
	return out[:min(len(out), limitOr(f.Limit))], nil
}

// Timeline implements journal.
func (b *localBackend) Timeline(ctx context.Context, projectID, paymentID string) (timeline, error) {
	if err := b.sync(ctx); err != nil {
		return timeline{}, err
	}
	cut := idBound(b.ageCut(time.Time{}))
	view, ids, ok := b.paymentIDs(projectID, paymentID)
	if !ok {
		return timeline{}, errNotFound
	}
	tl := timeline{Payment: view}
	err := b.db.View(func(tx *bolt.Tx) error {
		ev := tx.Bucket(bktEntries)
		for _, id := range ids {
			if id < cut {
				continue
			}
			if v := ev.Get([]byte(id)); v != nil {
				e, _, err := decodeRecord([]byte(id), v)
				if err != nil {
					return err
				}
				tl.Events = append(tl.Events, e)
			}
		}
		return nil
	})
	if err == nil && len(tl.Events) == 0 {
		err = errNotFound // all past their age, awaiting the sweep
	}
	return tl, err
}

// OpenPayments implements journal.
func (b *localBackend) OpenPayments(ctx context.Context, startedBefore time.Time, limit int) ([]paymentView, error) {
	if err := b.sync(ctx); err != nil {
		return nil, err
	}
	since := b.ageCut(time.Time{})
	out := b.views(func(v *paymentView) bool {
		// Those past their age await the sweep.
		return v.isOpenSince(startedBefore) && !v.Updated.Before(since)
	})
	slices.SortFunc(out, oldestSignedFirst)
	return out[:min(len(out), limitOr(limit))], nil
}

// Body implements journal.
func (b *localBackend) Body(ctx context.Context, eventKey string) ([]byte, error) {
	if err := b.sync(ctx); err != nil {
		return nil, err
	}
	b.imu.RLock()
	id, ok := b.idx.bodyOf(eventKey)
	b.imu.RUnlock()
	if !ok {
		return nil, errNotFound
	}
	var body []byte
	err := b.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bktBodies).Get([]byte(id))
		if v == nil {
			return errNotFound
		}
		body = bytes.Clone(v)
		return nil
	})
	return body, err
}

// Destruct implements caddy.Destructor: it writes what is queued and
// closes the file.
func (b *localBackend) Destruct() error {
	var err error
	b.close.Do(func() {
		b.mu.Lock()
		b.closed = true
		b.mu.Unlock()
		close(b.stop)
		<-b.done
		b.prune.flush(b.now())
		_ = b.mem.Destruct()
		err = errors.Join(b.lastErr, b.db.Close())
	})
	return err
}

// Interface guards
var (
	_ backend          = (*localBackend)(nil)
	_ caddy.Destructor = (*localBackend)(nil)
)
