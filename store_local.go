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

// Buckets. Times are big-endian Unix nanoseconds so that keys sort by time;
// pk is the payment key (boltPayKey).
var (
	bktDelivered   = []byte("delivered")        // keyHash → exp
	bktDeliveredAt = []byte("delivered_exp")    // exp ‖ keyHash → ""
	bktEvents      = []byte("events")           // ID → storedEvent JSON
	bktUnverified  = []byte("unverified")       // ID → storedEvent JSON
	bktPayEvents   = []byte("payment_events")   // pk ‖ ID → ""
	bktPayments    = []byte("payments")         // pk → paymentView JSON
	bktPayUpdated  = []byte("payments_updated") // Updated ‖ pk → ""
	bktPayOpen     = []byte("payments_open")    // Signed ‖ pk → "", signed and not final
	bktBodies      = []byte("bodies")           // event key → refs (uint32) ‖ body
	bktMeta        = []byte("meta")             // "size" → journal bytes (uint64)
	// journalBuckets hold what MaxSize bounds.
	journalBuckets = [][]byte{bktEvents, bktUnverified, bktPayEvents, bktPayments, bktPayUpdated, bktPayOpen, bktBodies}
	metaSize       = []byte("size")
)

var errLocalClosed = errors.New("ecommpay: the local store is closed")

// storedEvent is an entry as stored: Ref says that it holds a reference on
// the body of its event key.
type storedEvent struct {
	journalEvent
	Ref bool `json:"body_ref,omitempty"`
}

// localBackend implements backend on a bbolt file.
type localBackend struct {
	mem    *memoryStore
	db     *bolt.DB
	path   string
	logger *zap.Logger
	now    func() time.Time // wall clock: delivered marks outlive the process
	opts   atomic.Pointer[journalOptions]
	prune  pruneLog

	mu       sync.Mutex
	pending  map[keyHash]int64 // delivered marks not yet written: exp
	writing  map[keyHash]int64 // those in the transaction under way
	records  []journalEvent    // entries not yet written
	flushing bool              // records are in the transaction under way
	closed   bool

	wake    chan struct{}
	syncReq chan chan error
	stop    chan struct{}
	done    chan struct{}
	close   sync.Once
	lastErr error // the final flush's, for Destruct

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
		pending: make(map[keyHash]int64),
		wake:    make(chan struct{}, 1),
		syncReq: make(chan chan error),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	o := opts.withDefaults()
	b.opts.Store(&o)
	err = db.Update(func(tx *bolt.Tx) error {
		for _, name := range append([][]byte{bktDelivered, bktDeliveredAt, bktMeta}, journalBuckets...) {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		if v := tx.Bucket(bktMeta).Get(metaSize); len(v) == 8 {
			b.size = int64(binary.BigEndian.Uint64(v))
		}
		b.unverifiedN = tx.Bucket(bktUnverified).Stats().KeyN
		return nil
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

// Claim implements Store: memory first, then the marks not yet written,
// then the file, so that a restart still answers Delivered.
func (b *localBackend) Claim(ctx context.Context, key string, lease time.Duration) (ClaimState, string, error) {
	st, tok, err := b.mem.Claim(ctx, key, lease)
	if err != nil || st != Claimed {
		return st, tok, err
	}
	exp, err := b.deliveredUntil(hashKey(key))
	if err != nil {
		_ = b.mem.Release(ctx, key, tok)
		return InFlight, "", fmt.Errorf("ecommpay: local store: %w", err)
	}
	if left := time.Duration(exp - b.now().UnixNano()); left > 0 {
		// Keep it in memory so that the next duplicate stops there.
		_ = b.mem.Commit(ctx, key, tok, left)
		return Delivered, "", nil
	}
	return Claimed, tok, nil
}

// deliveredUntil returns the expiry of h's delivered mark, 0 if none.
func (b *localBackend) deliveredUntil(h keyHash) (int64, error) {
	b.mu.Lock()
	exp, ok := b.pending[h]
	if !ok {
		exp, ok = b.writing[h]
	}
	b.mu.Unlock()
	if ok {
		return exp, nil
	}
	// Checked after the queues: a mark leaves them only once committed.
	err := b.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bktDelivered).Get(h[:]); len(v) == 8 {
			exp = int64(binary.BigEndian.Uint64(v))
		}
		return nil
	})
	return exp, err
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
	b.pending[hashKey(key)] = exp
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
	b.writing, b.flushing = marks, len(records) > 0
	b.pending, b.records = make(map[keyHash]int64), nil
	b.mu.Unlock()

	w := ltx{opts: *b.opts.Load(), size: b.size, unverifiedN: b.unverifiedN}
	err := b.db.Update(func(tx *bolt.Tx) error {
		w.tx, w.n = tx, pruneCounts{}
		w.size, w.unverifiedN = b.size, b.unverifiedN
		return w.write(marks, records, now)
	})

	b.mu.Lock()
	b.writing, b.flushing = nil, false
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
	opts        journalOptions
	size        int64
	unverifiedN int
	n           pruneCounts
}

func cost(k, v []byte) int64 { return int64(len(k) + len(v) + boltElemOverhead) }

// lookup is Get that tells an empty value from a missing key.
func lookup(bk *bolt.Bucket, k []byte) (v []byte, ok bool) {
	found, v := bk.Cursor().Seek(k)
	return v, found != nil && bytes.Equal(found, k)
}

// put writes k=v in a journal bucket, keeping the size count.
func (w *ltx) put(bk *bolt.Bucket, k, v []byte) error {
	if old, ok := lookup(bk, k); ok {
		w.size -= cost(k, old)
	}
	w.size += cost(k, v)
	return bk.Put(k, v)
}

// putNew is put for a key known to be new: IDs are unique.
func (w *ltx) putNew(bk *bolt.Bucket, k, v []byte) error {
	w.size += cost(k, v)
	return bk.Put(k, v)
}

// del deletes k from a journal bucket, keeping the size count.
func (w *ltx) del(bk *bolt.Bucket, k []byte) error {
	old, ok := lookup(bk, k)
	if !ok {
		return nil
	}
	w.size -= cost(k, old)
	return bk.Delete(k)
}

func (w *ltx) write(marks map[keyHash]int64, records []journalEvent, now time.Time) error {
	if err := w.writeMarks(marks); err != nil {
		return err
	}
	if err := w.sweepMarks(now); err != nil {
		return err
	}
	// Entries come in time order: filling pages to 90% instead of bbolt's
	// half suits appends, and nearly halves those buckets.
	for _, name := range [][]byte{bktEvents, bktUnverified, bktPayUpdated, bktDeliveredAt} {
		w.tx.Bucket(name).FillPercent = 0.9
	}
	if err := w.applyBounds(now); err != nil {
		return err
	}
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
	d, at := w.tx.Bucket(bktDelivered), w.tx.Bucket(bktDeliveredAt)
	// Put keys in order: bbolt inserts into a node by shifting what
	// follows, so a batch put in random order costs the square of its size
	// in the node that takes it (the last one, for the expiry index).
	sorted := make([]mark, 0, len(marks))
	for h, exp := range marks {
		sorted = append(sorted, mark{h, exp})
	}
	slices.SortFunc(sorted, func(a, b mark) int { return bytes.Compare(a.h[:], b.h[:]) })
	for _, m := range sorted {
		// A key delivered again after its mark expired replaces the mark.
		if old := d.Get(m.h[:]); len(old) == 8 {
			if err := at.Delete(append(bytes.Clone(old), m.h[:]...)); err != nil {
				return err
			}
		}
		if err := d.Put(m.h[:], timeKey(m.exp)); err != nil {
			return err
		}
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

// sweepMarks drops expired delivered marks, oldest first.
func (w *ltx) sweepMarks(now time.Time) error {
	d, at := w.tx.Bucket(bktDelivered), w.tx.Bucket(bktDeliveredAt)
	cut := uint64(now.UnixNano())
	var gone [][]byte
	c := at.Cursor()
	for k, _ := c.First(); k != nil && len(gone) < localSweepMax && binary.BigEndian.Uint64(k[:8]) <= cut; k, _ = c.Next() {
		gone = append(gone, bytes.Clone(k))
	}
	for _, k := range gone {
		// The mark may have been replaced by a later delivery.
		if v := d.Get(k[8:]); bytes.Equal(v, k[:8]) {
			if err := d.Delete(k[8:]); err != nil {
				return err
			}
		}
		if err := at.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// boltPayKey is a payment's key: both ids length-prefixed, so no payment's
// key is a prefix of another's.
func boltPayKey(projectID, paymentID string) []byte {
	k := make([]byte, 0, len(projectID)+len(paymentID)+4+24)
	k = binary.AppendUvarint(k, uint64(len(projectID)))
	k = append(k, projectID...)
	k = binary.AppendUvarint(k, uint64(len(paymentID)))
	return append(k, paymentID...)
}

func (w *ltx) record(e *journalEvent) error {
	se := storedEvent{journalEvent: *e}
	se.Body = nil
	if e.isUnverified() {
		data, err := json.Marshal(&se)
		if err != nil {
			return err
		}
		w.unverifiedN++
		return w.putNew(w.tx.Bucket(bktUnverified), []byte(e.ID), data)
	}
	if e.EventKey != "" {
		bodies := w.tx.Bucket(bktBodies)
		if old := bodies.Get([]byte(e.EventKey)); len(old) >= 4 {
			v := bytes.Clone(old)
			binary.BigEndian.PutUint32(v, binary.BigEndian.Uint32(v)+1)
			if err := w.put(bodies, []byte(e.EventKey), v); err != nil {
				return err
			}
			se.Ref = true
		} else if len(e.Body) > 0 && !w.opts.NoBodies {
			v := binary.BigEndian.AppendUint32(make([]byte, 0, 4+len(e.Body)), 1)
			if err := w.put(bodies, []byte(e.EventKey), append(v, e.Body...)); err != nil {
				return err
			}
			se.Ref = true
		}
	}
	data, err := json.Marshal(&se)
	if err != nil {
		return err
	}
	if err := w.putNew(w.tx.Bucket(bktEvents), []byte(e.ID), data); err != nil {
		return err
	}
	if !e.joinsPayment() {
		return nil
	}
	pk := boltPayKey(e.ProjectID, e.PaymentID)
	if err := w.putNew(w.tx.Bucket(bktPayEvents), append(bytes.Clone(pk), e.ID...), nil); err != nil {
		return err
	}
	var v paymentView
	if err := w.loadView(pk, &v); err != nil {
		return err
	}
	if v.Events > 0 {
		if err := w.unindexView(pk, &v); err != nil {
			return err
		}
	}
	v.apply(e)
	return w.storeView(pk, &v)
}

func (w *ltx) loadView(pk []byte, v *paymentView) error {
	if data := w.tx.Bucket(bktPayments).Get(pk); data != nil {
		return json.Unmarshal(data, v)
	}
	return nil
}

func (w *ltx) storeView(pk []byte, v *paymentView) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if err := w.put(w.tx.Bucket(bktPayments), pk, data); err != nil {
		return err
	}
	if err := w.put(w.tx.Bucket(bktPayUpdated), append(timeKey(v.Updated.UnixNano()), pk...), nil); err != nil {
		return err
	}
	if !v.Final && !v.Signed.IsZero() {
		return w.put(w.tx.Bucket(bktPayOpen), append(timeKey(v.Signed.UnixNano()), pk...), nil)
	}
	return nil
}

// unindexView removes the index keys of v as stored.
func (w *ltx) unindexView(pk []byte, v *paymentView) error {
	if err := w.del(w.tx.Bucket(bktPayUpdated), append(timeKey(v.Updated.UnixNano()), pk...)); err != nil {
		return err
	}
	if !v.Final && !v.Signed.IsZero() {
		return w.del(w.tx.Bucket(bktPayOpen), append(timeKey(v.Signed.UnixNano()), pk...))
	}
	return nil
}

// applyBounds prunes by age, by the unverified count and by size, oldest
// first.
func (w *ltx) applyBounds(now time.Time) error {
	ev, un := w.tx.Bucket(bktEvents), w.tx.Bucket(bktUnverified)
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
// at nine tenths of MaxSize.
func (w *ltx) pruneSize() error {
	ev, un := w.tx.Bucket(bktEvents), w.tx.Bucket(bktUnverified)
	for w.size > w.opts.MaxSize*9/10 {
		es, us := oldest(ev, pruneBatch, nil), oldest(un, pruneBatch, nil)
		if len(es) == 0 && len(us) == 0 {
			return nil
		}
		for w.size > w.opts.MaxSize*9/10 && (len(es) > 0 || len(us) > 0) {
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
// cut is set.
func oldest(bk *bolt.Bucket, n int, cut []byte) []kv {
	var out []kv
	c := bk.Cursor()
	for k, v := c.First(); k != nil && len(out) < n && (cut == nil || bytes.Compare(k, cut) < 0); k, v = c.Next() {
		out = append(out, kv{bytes.Clone(k), bytes.Clone(v)})
	}
	return out
}

// drop deletes the entry e of bk and what only it held: its payment when
// it was the last entry, its body when it was the last reference.
func (w *ltx) drop(bk *bolt.Bucket, e kv) error {
	var se storedEvent
	if err := json.Unmarshal(e.v, &se); err != nil {
		return fmt.Errorf("journal entry %s: %w", e.k, err)
	}
	if err := w.del(bk, e.k); err != nil {
		return err
	}
	if se.isUnverified() {
		w.unverifiedN--
		return nil
	}
	if se.Ref {
		bodies := w.tx.Bucket(bktBodies)
		if v := bodies.Get([]byte(se.EventKey)); len(v) >= 4 {
			if refs := binary.BigEndian.Uint32(v); refs > 1 {
				v = bytes.Clone(v)
				binary.BigEndian.PutUint32(v, refs-1)
				if err := w.put(bodies, []byte(se.EventKey), v); err != nil {
					return err
				}
			} else if err := w.del(bodies, []byte(se.EventKey)); err != nil {
				return err
			}
		}
	}
	if !se.joinsPayment() {
		return nil
	}
	pk := boltPayKey(se.ProjectID, se.PaymentID)
	pe := w.tx.Bucket(bktPayEvents)
	at := append(bytes.Clone(pk), se.ID...)
	if err := w.del(pe, at); err != nil {
		return err
	}
	// Entries go oldest first, so the payment's others sort after this
	// one: seeking from here skips the leaves emptied before it, which a
	// seek from the payment's start would walk again each time.
	if k, _ := pe.Cursor().Seek(at); k != nil && bytes.HasPrefix(k, pk) {
		return nil // the payment has entries left
	}
	var v paymentView
	if err := w.loadView(pk, &v); err != nil {
		return err
	}
	if err := w.unindexView(pk, &v); err != nil {
		return err
	}
	return w.del(w.tx.Bucket(bktPayments), pk)
}

// seekBefore moves c to the last key before k.
func seekBefore(c *bolt.Cursor, k []byte) ([]byte, []byte) {
	if key, _ := c.Seek(k); key == nil {
		return c.Last()
	}
	return c.Prev()
}

func decodeEvent(data []byte) (journalEvent, error) {
	var se storedEvent
	err := json.Unmarshal(data, &se)
	return se.journalEvent, err
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
		e, err := decodeEvent(v)
		if err != nil {
			return nil, err
		}
		if f.match(&e) {
			out = append(out, e)
		}
	}
	return out, nil
}

// scanPayment is scanBucket over one payment's entries.
func scanPayment(tx *bolt.Tx, pk []byte, f *eventFilter, limit int) ([]journalEvent, error) {
	ev := tx.Bucket(bktEvents)
	c := tx.Bucket(bktPayEvents).Cursor()
	end := append(bytes.Clone(pk), 0xff) // above every ID, which is hex
	if start := f.startID(); start != "" {
		end = append(bytes.Clone(pk), start...)
	}
	var out []journalEvent
	for k, _ := seekBefore(c, end); k != nil && len(out) < limit && bytes.HasPrefix(k, pk); k, _ = c.Prev() {
		data := ev.Get(k[len(pk):])
		if data == nil {
			continue
		}
		e, err := decodeEvent(data)
		if err != nil {
			return nil, err
		}
		if f.match(&e) {
			out = append(out, e)
		}
	}
	return out, nil
}

// Events implements journal.
func (b *localBackend) Events(ctx context.Context, f eventFilter) ([]journalEvent, error) {
	if err := b.sync(ctx); err != nil {
		return nil, err
	}
	limit := limitOr(f.Limit)
	f.Since = b.ageCut(f.Since)
	var out []journalEvent
	err := b.db.View(func(tx *bolt.Tx) error {
		var genuine []journalEvent
		var err error
		if f.ProjectID != "" && f.PaymentID != "" {
			genuine, err = scanPayment(tx, boltPayKey(f.ProjectID, f.PaymentID), &f, limit)
		} else {
			genuine, err = scanBucket(tx.Bucket(bktEvents), &f, limit)
		}
		if err != nil {
			return err
		}
		strangers, err := scanBucket(tx.Bucket(bktUnverified), &f, limit)
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

// Payments implements journal.
func (b *localBackend) Payments(ctx context.Context, f paymentFilter) ([]paymentView, error) {
	if err := b.sync(ctx); err != nil {
		return nil, err
	}
	limit := limitOr(f.Limit)
	f.Since = b.ageCut(f.Since)
	var out []paymentView
	err := b.db.View(func(tx *bolt.Tx) error {
		pays := tx.Bucket(bktPayments)
		if f.ProjectID != "" && f.PaymentID != "" { // one payment: no scan
			var v paymentView
			if data := pays.Get(boltPayKey(f.ProjectID, f.PaymentID)); data != nil {
				if err := json.Unmarshal(data, &v); err != nil {
					return err
				}
				if f.match(&v) {
					out = append(out, v)
				}
			}
			return nil
		}
		c := tx.Bucket(bktPayUpdated).Cursor()
		var k []byte
		if !f.Until.IsZero() {
			k, _ = seekBefore(c, timeKey(f.Until.UnixNano()))
		} else {
			k, _ = c.Last()
		}
		stop := timeKey(f.Since.UnixNano())
		for ; k != nil && len(out) < limit && bytes.Compare(k[:8], stop) >= 0; k, _ = c.Prev() {
			data := pays.Get(k[8:])
			if data == nil {
				continue
			}
			var v paymentView
			if err := json.Unmarshal(data, &v); err != nil {
				return err
			}
			if f.match(&v) {
				out = append(out, v)
			}
		}
		return nil
	})
	return out, err
}

// Timeline implements journal.
func (b *localBackend) Timeline(ctx context.Context, projectID, paymentID string) (timeline, error) {
	if err := b.sync(ctx); err != nil {
		return timeline{}, err
	}
	cut := idBound(b.ageCut(time.Time{}))
	var tl timeline
	err := b.db.View(func(tx *bolt.Tx) error {
		pk := boltPayKey(projectID, paymentID)
		data := tx.Bucket(bktPayments).Get(pk)
		if data == nil {
			return errNotFound
		}
		if err := json.Unmarshal(data, &tl.Payment); err != nil {
			return err
		}
		ev := tx.Bucket(bktEvents)
		c := tx.Bucket(bktPayEvents).Cursor()
		for k, _ := c.Seek(pk); k != nil && bytes.HasPrefix(k, pk); k, _ = c.Next() {
			id := k[len(pk):]
			if string(id) < cut {
				continue
			}
			if data := ev.Get(id); data != nil {
				e, err := decodeEvent(data)
				if err != nil {
					return err
				}
				tl.Events = append(tl.Events, e)
			}
		}
		if len(tl.Events) == 0 {
			return errNotFound // all past their age, awaiting the sweep
		}
		return nil
	})
	return tl, err
}

// OpenPayments implements journal.
func (b *localBackend) OpenPayments(ctx context.Context, startedBefore time.Time, limit int) ([]paymentView, error) {
	if err := b.sync(ctx); err != nil {
		return nil, err
	}
	limit = limitOr(limit)
	since := b.ageCut(time.Time{})
	var out []paymentView
	err := b.db.View(func(tx *bolt.Tx) error {
		pays := tx.Bucket(bktPayments)
		c := tx.Bucket(bktPayOpen).Cursor()
		end := timeKey(startedBefore.UnixNano())
		for k, _ := c.First(); k != nil && len(out) < limit && bytes.Compare(k[:8], end) < 0; k, _ = c.Next() {
			data := pays.Get(k[8:])
			if data == nil {
				continue
			}
			var v paymentView
			if err := json.Unmarshal(data, &v); err != nil {
				return err
			}
			if v.Updated.Before(since) {
				continue // past its age, awaiting the sweep
			}
			out = append(out, v)
		}
		return nil
	})
	return out, err
}

// Body implements journal.
func (b *localBackend) Body(ctx context.Context, eventKey string) ([]byte, error) {
	if err := b.sync(ctx); err != nil {
		return nil, err
	}
	var body []byte
	err := b.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bktBodies).Get([]byte(eventKey))
		if len(v) < 4 {
			return errNotFound
		}
		body = bytes.Clone(v[4:])
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
