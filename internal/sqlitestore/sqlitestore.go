// Package sqlitestore keeps a journal of payment events, a view of each
// payment and the delivered marks of callback de-duplication in one SQLite
// file, through modernc.org/sqlite (pure Go, so Caddy builds without cgo).
//
// The file is in WAL mode, so that reads never wait for the writer. Writes
// are queued and written by one goroutine, grouped into one transaction
// (one fsync) every FlushEvery or sooner when FlushBatch writes wait.
// Pruning by age, by size and of unverified entries runs in the same
// transactions, a bounded number of rows at a time.
//
// The schema (Schema) is a public interface: operators read the file with
// the sqlite3 shell. Its version is PRAGMA user_version; Open migrates older
// files forward and leaves newer ones alone.
//
// The store does not know the caller's types: an entry comes with its
// indexed fields, its whole encoded form (Data, JSON) and a Value that the
// caller's Fold turns into the payment's new row.
package sqlitestore

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bits-and-blooms/bloom/v3"
	_ "modernc.org/sqlite" // the "sqlite" driver
)

// SchemaVersion is the PRAGMA user_version of files this package writes.
const SchemaVersion = 1

// Schema creates version 1 of the file. Times are Unix nanoseconds (UTC).
const Schema = `
CREATE TABLE events (
  id         TEXT PRIMARY KEY, -- 16 hex digits of Unix ns, 8 random: sorts by time
  time       INTEGER NOT NULL,
  kind       TEXT NOT NULL,    -- callback, replay, status, status_request, payment_page, gate
  project_id TEXT NOT NULL,
  payment_id TEXT NOT NULL,
  event_key  TEXT NOT NULL,    -- the de-dup key: retries of one callback share it
  result     TEXT NOT NULL,
  verified   INTEGER NOT NULL, -- 0 for callbacks whose signature was not verified
  size       INTEGER NOT NULL, -- bytes counted against the size bound
  data       TEXT NOT NULL     -- the whole entry: the console API's event object (JSON)
);
CREATE INDEX events_payment ON events(payment_id, project_id, id);
CREATE INDEX events_key ON events(event_key, id);
CREATE INDEX events_result ON events(result, id);
CREATE INDEX events_unverified ON events(id) WHERE verified = 0;

CREATE TABLE bodies (          -- once per event key
  event_key TEXT PRIMARY KEY,
  body      BLOB NOT NULL
);

CREATE TABLE payments (
  project_id TEXT NOT NULL,
  payment_id TEXT NOT NULL,
  started    INTEGER NOT NULL, -- the first entry
  updated    INTEGER NOT NULL, -- the last entry
  signed     INTEGER,          -- the first signing request; NULL if none
  status     TEXT NOT NULL,    -- the last payment status a verified callback carried
  method     TEXT NOT NULL,
  final      INTEGER NOT NULL, -- 1 once the status is final
  data       TEXT NOT NULL     -- the whole view: the console API's payment object (JSON)
);
CREATE UNIQUE INDEX payments_id ON payments(project_id, payment_id);
CREATE INDEX payments_updated ON payments(updated, project_id, payment_id);
CREATE INDEX payments_status ON payments(status, updated, project_id, payment_id);
CREATE INDEX payments_method ON payments(method, updated, project_id, payment_id);
CREATE INDEX payments_open ON payments(final, signed, project_id, payment_id);
CREATE INDEX payments_final ON payments(final, updated, project_id, payment_id);

CREATE TABLE delivered (       -- callbacks the app acknowledged
  key_hash BLOB PRIMARY KEY,   -- first 16 bytes of SHA-256 of the event key
  expires  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX delivered_expires ON delivered(expires);

CREATE TABLE meta (
  name  TEXT PRIMARY KEY,
  value INTEGER NOT NULL       -- "size": bytes counted against the size bound
) WITHOUT ROWID;
`

// Tuning.
const (
	FlushEvery = 100 * time.Millisecond
	// FlushBatch queued writes start a flush before the tick.
	FlushBatch = 1024
	// MaxQueued writes may wait; beyond that writers wait for a flush.
	MaxQueued = 50_000
	// SweepEvery is how often an idle store still writes, to drop expired
	// marks and entries past their age.
	SweepEvery = time.Minute
	// pruneMax bounds the rows one transaction prunes, so that a backlog
	// never holds the writer long; the next flush goes on.
	pruneMax = 20_000
	// sweepMax bounds the expired marks one transaction drops.
	sweepMax = 10_000
	// filterMin is the least number of marks the filter is sized for.
	filterMin = 1_000_000
	// filterFP is the filter's false-positive rate: the share of new
	// callbacks whose claim asks the file.
	filterFP = 0.01
	// entryOverhead and bodyOverhead are counted per row beyond its bytes.
	entryOverhead = 64
	bodyOverhead  = 32
)

// ErrClosed is returned by writes after Close.
var ErrClosed = errors.New("sqlitestore: closed")

// ErrNotFound is returned for an unknown payment or body.
var ErrNotFound = errors.New("sqlitestore: not found")

// Key is the hash of a de-dup key.
type Key [16]byte

// Entry is one journal entry.
type Entry struct {
	ID        string // unique, sorts by time
	Time      time.Time
	Kind      string
	ProjectID string
	PaymentID string
	EventKey  string
	Result    string
	// Unverified entries are bounded by count on their own, keep no body
	// and join no payment.
	Unverified bool
	// Data is the whole entry as the caller encodes it.
	Data []byte
	// Body is stored once per event key.
	Body []byte
	// Duplicate entries are counted on the first verified entry of their
	// event key of kind callback, through Config.Count, instead of being
	// stored; when the journal no longer has it, they are stored.
	Duplicate bool
	// Value is the caller's own form of the entry, handed to Fold and
	// Count; it is not stored.
	Value any
}

// Payment is a payment's row.
type Payment struct {
	ProjectID, PaymentID     string
	Started, Updated, Signed time.Time // Signed is zero if never signed
	Status, Method           string
	Final                    bool
	Data                     []byte // the whole view as the caller encodes it
}

// Fold returns a payment's row after entry e. prev is the row's Data, nil
// for a payment not yet in the file.
type Fold func(prev []byte, e *Entry) (Payment, error)

// Count returns the Data of first, the first entry of dup's event key,
// with dup counted on it.
type Count func(first []byte, dup *Entry) ([]byte, error)

// Options bound the journal.
type Options struct {
	MaxAge        time.Duration
	MaxSize       int64 // bytes
	MaxUnverified int
	NoBodies      bool
}

// Pruned counts entries pruned by reason.
type Pruned struct{ Age, Size, Unverified int }

// Config is what Open needs besides the path.
type Config struct {
	Options Options
	Fold    Fold
	Count   Count
	// Now is the wall clock (time.Now if nil).
	Now func() time.Time
	// OnPrune is told what each transaction pruned.
	OnPrune func(Pruned)
	// OnWrite is told how each transaction went: nil, or the error for
	// which what it held is lost.
	OnWrite func(error)
}

// Store is an open file.
type Store struct {
	path    string
	db      *sql.DB
	cfg     Config
	opts    atomic.Pointer[Options]
	healthy atomic.Bool

	mu       sync.Mutex
	marks    map[Key]int64 // delivered marks not yet written
	writing  map[Key]int64 // marks in the transaction under way
	records  []Entry       // entries not yet written
	flushing bool
	closed   bool
	filter   *bloom.BloomFilter // every mark written or queued since it was built; nil until the first is built
	filterN  uint               // marks added to it
	filterOf uint               // marks it was sized for
	// building says a filter is being built; marks queued meanwhile are
	// kept in built, to be added to it.
	building bool
	built    []Key

	wake    chan struct{}
	syncReq chan chan error
	stop    chan struct{}
	done    chan struct{}
	close   sync.Once
	lastErr error

	// Owned by the writer goroutine.
	size        int64
	unverifiedN int
	lastSweep   time.Time
}

// Open opens the file at path, creating it and its directory if need be.
// A file that cannot be opened, read or written is moved aside to
// path.broken-<time> and a new one started: broken names where it went
// and why (empty when nothing was moved). An error means no file could be
// used at all (an unwritable directory, a file of a newer version).
func Open(path string, cfg Config) (s *Store, broken string, why error, err error) {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Fold == nil || cfg.Count == nil {
		return nil, "", nil, errors.New("sqlitestore: no Fold or Count")
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, "", nil, err
	}
	s, err = open(path, cfg)
	if err == nil || errors.Is(err, errNewer) {
		return s, "", nil, err
	}
	why = err
	broken = path + ".broken-" + cfg.Now().UTC().Format("20060102T150405Z")
	if rerr := os.Rename(path, broken); rerr != nil {
		if errors.Is(rerr, os.ErrNotExist) {
			return nil, "", nil, err // nothing to move: the directory is the trouble
		}
		return nil, "", nil, fmt.Errorf("%w; moving it aside: %w", err, rerr)
	}
	for _, ext := range []string{"-wal", "-shm"} {
		if rerr := os.Rename(path+ext, broken+ext); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
			_ = os.Remove(path + ext)
		}
	}
	s, err = open(path, cfg)
	if err != nil {
		return nil, broken, why, err
	}
	return s, broken, why, nil
}

var errNewer = errors.New("sqlitestore: the file was written by a newer version")

func open(path string, cfg Config) (*Store, error) {
	if err := checkHeader(path); err != nil {
		return nil, err
	}
	// Pages are read through a map of the file (the kernel's cache, not
	// the heap), and each connection caches 8 MiB of them.
	q := url.Values{"_pragma": {"busy_timeout(5000)", "synchronous(FULL)", "foreign_keys(OFF)",
		"mmap_size(1073741824)", "cache_size(-8192)", "wal_autocheckpoint(10000)"}}
	db, err := sql.Open("sqlite", "file:"+path+"?"+q.Encode())
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(4) // the writer and three readers
	s := &Store{
		path: path, db: db, cfg: cfg,
		marks:   make(map[Key]int64),
		wake:    make(chan struct{}, 1),
		syncReq: make(chan chan error),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	o := cfg.Options
	s.opts.Store(&o)
	if err := s.prepare(); err != nil {
		_ = db.Close()
		return nil, err
	}
	s.healthy.Store(true)
	// Reading every mark takes a while on a large file: until the filter
	// is built, claims ask the file.
	s.building = true
	go func() { _ = s.rebuildFilter(context.Background(), s.db) }()
	go s.run()
	return s, nil
}

// checkHeader finds what SQLite would only find later: a file that is not
// a database, or shorter than its header says.
func checkHeader(path string) error {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if st.Size() == 0 {
		return nil // SQLite starts an empty file afresh
	}
	var h [100]byte
	if _, err := io.ReadFull(f, h[:]); err != nil {
		return fmt.Errorf("not a database: %w", err)
	}
	if !bytes.Equal(h[:16], []byte("SQLite format 3\x00")) {
		return errors.New("not a database (bad header)")
	}
	pageSize := int64(binary.BigEndian.Uint16(h[16:18]))
	if pageSize == 1 {
		pageSize = 65536
	}
	if pageSize < 512 || pageSize&(pageSize-1) != 0 {
		return errors.New("not a database (bad page size)")
	}
	pages := int64(binary.BigEndian.Uint32(h[28:32]))
	// The count is valid when the change counter matches version-valid-for;
	// a checkpoint cut short may have written page 1 before the pages that
	// lengthen the file, which the WAL still holds.
	wal, _ := os.Stat(path + "-wal")
	if pages > 0 && bytes.Equal(h[24:28], h[92:96]) && pages*pageSize > st.Size() && (wal == nil || wal.Size() == 0) {
		return fmt.Errorf("truncated: %d bytes, its header says %d", st.Size(), pages*pageSize)
	}
	return nil
}

// prepare sets the file up and reads what the writer keeps in memory. It
// writes once, so that a read-only file is found here.
func (s *Store) prepare() error {
	ctx := context.Background()
	var mode string
	if err := s.db.QueryRowContext(ctx, "PRAGMA journal_mode=WAL").Scan(&mode); err != nil {
		return err
	}
	if mode != "wal" {
		return fmt.Errorf("journal_mode is %s, not wal", mode)
	}
	var version int
	if err := s.db.QueryRowContext(ctx, "PRAGMA user_version").Scan(&version); err != nil {
		return err
	}
	if version > SchemaVersion {
		return fmt.Errorf("%w (schema %d; this one knows %d)", errNewer, version, SchemaVersion)
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback() }()
	if version == 0 {
		if _, err := tx.ExecContext(ctx, Schema); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version=%d", SchemaVersion)); err != nil {
			return err
		}
	}
	// Later versions migrate here, one step at a time.
	if _, err := tx.ExecContext(ctx, "INSERT INTO meta(name, value) VALUES('opened', ?) "+
		"ON CONFLICT(name) DO UPDATE SET value = excluded.value", s.cfg.Now().UnixNano()); err != nil {
		return err
	}
	if err := tx.QueryRowContext(ctx, "SELECT coalesce((SELECT value FROM meta WHERE name = 'size'), 0)").Scan(&s.size); err != nil {
		return err
	}
	if err := tx.QueryRowContext(ctx, "SELECT count(*) FROM events WHERE verified = 0").Scan(&s.unverifiedN); err != nil {
		return err
	}
	return tx.Commit()
}

type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// rebuildFilter builds the filter afresh from the unexpired marks in the
// file and those queued, sized for twice their number.
func (s *Store) rebuildFilter(ctx context.Context, q querier) (err error) {
	s.mu.Lock()
	s.building, s.built = true, nil
	s.mu.Unlock()
	defer func() {
		if err != nil {
			s.mu.Lock()
			s.building, s.built = false, nil
			s.mu.Unlock()
		}
	}()
	var n int
	if err := q.QueryRowContext(ctx, "SELECT count(*) FROM delivered").Scan(&n); err != nil {
		return err
	}
	s.mu.Lock()
	queued := len(s.marks) + len(s.writing)
	s.mu.Unlock()
	size := uint(max(filterMin, 2*(n+queued)))
	f := bloom.NewWithEstimates(size, filterFP)
	rows, err := q.QueryContext(ctx, "SELECT key_hash FROM delivered WHERE expires > ?", s.cfg.Now().UnixNano())
	if err != nil {
		return err
	}
	added := uint(0)
	for rows.Next() {
		var k []byte
		if err := rows.Scan(&k); err != nil {
			rows.Close()
			return err
		}
		f.Add(k)
		added++
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	for _, k := range s.built {
		f.Add(k[:])
		added++
	}
	for k := range s.marks {
		f.Add(k[:])
		added++
	}
	for k := range s.writing {
		f.Add(k[:])
		added++
	}
	s.filter, s.filterN, s.filterOf = f, added, size
	s.building, s.built = false, nil
	s.mu.Unlock()
	return nil
}

// FilterBytes is the memory the filter of delivered marks takes.
func (s *Store) FilterBytes() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.filter == nil {
		return 0
	}
	return int(s.filter.Cap() / 8)
}

// Path is the file's path.
func (s *Store) Path() string { return s.path }

// Healthy reports whether the last transaction succeeded.
func (s *Store) Healthy() bool { return s.healthy.Load() }

// SetOptions changes the bounds; the next transaction applies them.
func (s *Store) SetOptions(o Options) { s.opts.Store(&o) }

// Options returns the bounds in force.
func (s *Store) Options() Options { return *s.opts.Load() }

// Delivered returns the expiry (Unix ns) of k's delivered mark, 0 if it
// has none. A key the filter has never seen, as new callbacks are, costs
// no disk read.
func (s *Store) Delivered(ctx context.Context, k Key) (int64, error) {
	s.mu.Lock()
	if exp, ok := s.marks[k]; ok {
		s.mu.Unlock()
		return exp, nil
	}
	if exp, ok := s.writing[k]; ok {
		s.mu.Unlock()
		return exp, nil
	}
	maybe := s.filter == nil || s.filter.Test(k[:])
	s.mu.Unlock()
	if !maybe {
		return 0, nil
	}
	var exp int64
	err := s.db.QueryRowContext(ctx, "SELECT expires FROM delivered WHERE key_hash = ?", k[:]).Scan(&exp)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	return exp, err
}

// Mark queues a delivered mark of k until exp (Unix ns).
func (s *Store) Mark(ctx context.Context, k Key, exp int64) error {
	if err := s.makeRoom(ctx); err != nil {
		return err
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	s.marks[k] = exp
	if s.filter != nil {
		s.filter.Add(k[:])
		s.filterN++
	}
	if s.building {
		s.built = append(s.built, k)
	}
	n := len(s.marks) + len(s.records)
	s.mu.Unlock()
	if n >= FlushBatch {
		s.kick()
	}
	return nil
}

// Record queues an entry. Its Body is copied.
func (s *Store) Record(ctx context.Context, e Entry) error {
	if len(e.Body) > 0 {
		if e.Unverified || s.opts.Load().NoBodies {
			e.Body = nil
		} else {
			e.Body = bytes.Clone(e.Body)
		}
	}
	if err := s.makeRoom(ctx); err != nil {
		return err
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	s.records = append(s.records, e)
	n := len(s.marks) + len(s.records)
	s.mu.Unlock()
	if n >= FlushBatch {
		s.kick()
	}
	return nil
}

// makeRoom waits for a flush when MaxQueued writes wait: a disk slower
// than the callbacks slows them down rather than let the queue eat the
// heap.
func (s *Store) makeRoom(ctx context.Context) error {
	s.mu.Lock()
	full := len(s.marks)+len(s.records) >= MaxQueued
	s.mu.Unlock()
	if !full {
		return nil
	}
	return s.Flush(ctx)
}

func (s *Store) kick() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// run is the writer goroutine.
func (s *Store) run() {
	defer close(s.done)
	tick := time.NewTicker(FlushEvery)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			s.flush()
		case <-s.wake:
			s.flush()
		case ch := <-s.syncReq:
			ch <- s.flush()
		case <-s.stop:
			s.lastErr = s.flush()
			return
		}
	}
}

// Flush has the writer write what is queued now and waits for it.
func (s *Store) Flush(ctx context.Context) error {
	ch := make(chan error, 1)
	select {
	case s.syncReq <- ch:
	case <-s.done:
		return ErrClosed
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

// sync waits until the entries recorded so far are written, so that reads
// see them.
func (s *Store) sync(ctx context.Context) error {
	s.mu.Lock()
	idle := len(s.records) == 0 && !s.flushing
	s.mu.Unlock()
	if idle {
		return nil
	}
	return s.Flush(ctx)
}

func (s *Store) flush() error {
	s.mu.Lock()
	marks, records := s.marks, s.records
	if len(marks) > 0 {
		s.marks = make(map[Key]int64)
	} else {
		marks = nil // s.marks stays, and is not ours to read
	}
	s.writing, s.records, s.flushing = marks, nil, true
	s.mu.Unlock()

	now := s.cfg.Now()
	var err error
	if len(marks) > 0 || len(records) > 0 || now.Sub(s.lastSweep) >= SweepEvery {
		err = s.write(marks, records, now)
		if err == nil && len(marks) == 0 && len(records) == 0 {
			s.lastSweep = now
		}
	}

	s.mu.Lock()
	s.writing, s.flushing = nil, false
	rebuild := s.filterN > s.filterOf
	s.mu.Unlock()
	s.healthy.Store(err == nil)
	if (err != nil || len(marks) > 0 || len(records) > 0) && s.cfg.OnWrite != nil {
		s.cfg.OnWrite(err)
	}
	if err != nil {
		return err
	}
	if rebuild {
		// The filter holds more than it was sized for (expired marks
		// included): start it again from the file.
		_ = s.rebuildFilter(context.Background(), s.db)
	}
	return nil
}

// tx is one transaction of the writer.
type tx struct {
	*sql.Tx
	s        *Store
	ctx      context.Context
	opts     Options
	size     int64
	unverN   int
	pruned   Pruned
	payments map[[2]string]*Payment
	order    [][2]string
	// stored holds the rows in the file of the payments the transaction's
	// entries fold into, read before the first.
	stored map[[2]string][]byte
	stmts  map[string]*sql.Stmt
}

// stmt is query prepared once per transaction.
func (w *tx) stmt(query string) (*sql.Stmt, error) {
	if st, ok := w.stmts[query]; ok {
		return st, nil
	}
	st, err := w.PrepareContext(w.ctx, query)
	if err != nil {
		return nil, err
	}
	w.stmts[query] = st
	return st, nil
}

func (w *tx) exec(query string, args ...any) (sql.Result, error) {
	st, err := w.stmt(query)
	if err != nil {
		return nil, err
	}
	return st.ExecContext(w.ctx, args...)
}

func (w *tx) queryRow(query string, args ...any) *sql.Row {
	st, err := w.stmt(query)
	if err != nil {
		// A Row cannot carry the error: the query again gives it.
		return w.QueryRowContext(w.ctx, query, args...)
	}
	return st.QueryRowContext(w.ctx, args...)
}

func (s *Store) write(marks map[Key]int64, records []Entry, now time.Time) (err error) {
	ctx := context.Background()
	sqlTx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = sqlTx.Rollback()
		}
	}()
	w := &tx{Tx: sqlTx, s: s, ctx: ctx, opts: *s.opts.Load(), size: s.size, unverN: s.unverifiedN,
		payments: map[[2]string]*Payment{}, stmts: map[string]*sql.Stmt{}}
	defer func() {
		for _, st := range w.stmts {
			_ = st.Close()
		}
	}()
	if err := w.writeMarks(marks, now); err != nil {
		return err
	}
	slices.SortFunc(records, func(a, b Entry) int { return strings.Compare(a.ID, b.ID) })
	if err := w.readPayments(records); err != nil {
		return err
	}
	for i := range records {
		if err := w.record(&records[i]); err != nil {
			return err
		}
	}
	if err := w.writePayments(); err != nil {
		return err
	}
	if err := w.applyBounds(now); err != nil {
		return err
	}
	if _, err := w.ExecContext(ctx, "INSERT INTO meta(name, value) VALUES('size', ?) "+
		"ON CONFLICT(name) DO UPDATE SET value = excluded.value", max(w.size, 0)); err != nil {
		return err
	}
	if err := sqlTx.Commit(); err != nil {
		return err
	}
	s.size, s.unverifiedN = w.size, w.unverN
	if w.pruned != (Pruned{}) && s.cfg.OnPrune != nil {
		s.cfg.OnPrune(w.pruned)
	}
	return nil
}

func (w *tx) writeMarks(marks map[Key]int64, now time.Time) error {
	if len(marks) > 0 {
		st, err := w.PrepareContext(w.ctx, "INSERT INTO delivered(key_hash, expires) VALUES(?, ?) "+
			"ON CONFLICT(key_hash) DO UPDATE SET expires = excluded.expires")
		if err != nil {
			return err
		}
		defer st.Close()
		for k, exp := range marks {
			if _, err := st.ExecContext(w.ctx, k[:], exp); err != nil {
				return err
			}
		}
	}
	_, err := w.ExecContext(w.ctx, "DELETE FROM delivered WHERE key_hash IN "+
		"(SELECT key_hash FROM delivered WHERE expires <= ? ORDER BY expires LIMIT ?)", now.UnixNano(), sweepMax)
	return err
}

func entryCost(e *Entry) int64 { return int64(len(e.Data)+len(e.ID)) + entryOverhead }

func bodyCost(key string, n int) int64 { return int64(len(key)+n) + bodyOverhead }

func (w *tx) record(e *Entry) error {
	if e.Duplicate && !e.Unverified && e.EventKey != "" {
		if counted, err := w.countDuplicate(e); counted || err != nil {
			return err
		}
	}
	cost := entryCost(e)
	verified := 1
	if e.Unverified {
		verified = 0
		w.unverN++
	} else if e.EventKey != "" && len(e.Body) > 0 && !w.opts.NoBodies {
		res, err := w.exec("INSERT INTO bodies(event_key, body) VALUES(?, ?) ON CONFLICT DO NOTHING",
			e.EventKey, e.Body)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n > 0 {
			w.size += bodyCost(e.EventKey, len(e.Body))
		}
	}
	if _, err := w.exec("INSERT INTO events(id, time, kind, project_id, payment_id, event_key, result, verified, "+
		"size, data) VALUES(?,?,?,?,?,?,?,?,?,?)", e.ID, e.Time.UnixNano(), e.Kind, e.ProjectID, e.PaymentID,
		e.EventKey, e.Result, verified, cost, e.Data); err != nil {
		return err
	}
	w.size += cost
	if e.Unverified || e.PaymentID == "" {
		return nil
	}
	return w.fold(e)
}

// countDuplicate counts e on the first entry of its key, if there is one.
func (w *tx) countDuplicate(e *Entry) (bool, error) {
	var id string
	var data []byte
	var size int64
	err := w.queryRow("SELECT id, data, size FROM events WHERE event_key = ? AND verified = 1 "+
		"AND kind = 'callback' ORDER BY id LIMIT 1", e.EventKey).Scan(&id, &data, &size)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	data, err = w.s.cfg.Count(data, e)
	if err != nil {
		return false, err
	}
	cost := int64(len(data)+len(id)) + entryOverhead
	if _, err := w.exec("UPDATE events SET data = ?, size = ? WHERE id = ?", data, cost, id); err != nil {
		return false, err
	}
	w.size += cost - size
	return true, nil
}

// fold applies e to its payment's row, read once per transaction.
func (w *tx) fold(e *Entry) error {
	id := [2]string{e.ProjectID, e.PaymentID}
	p, ok := w.payments[id]
	var prev []byte
	if ok {
		prev = p.Data
	} else {
		prev = w.stored[id]
		w.order = append(w.order, id)
	}
	next, err := w.s.cfg.Fold(prev, e)
	if err != nil {
		return err
	}
	w.payments[id] = &next
	return nil
}

// paymentsPerRead is the most payments one statement of readPayments asks
// for.
const paymentsPerRead = 64

// paymentsReadSQL is the statement of readPayments for n payments.
func paymentsReadSQL(n int) string {
	return "SELECT project_id, payment_id, data FROM payments WHERE (project_id, payment_id) IN (VALUES (?,?)" +
		strings.Repeat(",(?,?)", n-1) + ")"
}

// readPayments reads the rows of the payments that records may fold into,
// many to a statement: a statement per payment costs several times more.
func (w *tx) readPayments(records []Entry) error {
	w.stored = map[[2]string][]byte{}
	seen := map[[2]string]bool{}
	var args []any
	for i := range records {
		e := &records[i]
		id := [2]string{e.ProjectID, e.PaymentID}
		if e.Unverified || e.PaymentID == "" || seen[id] {
			continue
		}
		seen[id] = true
		args = append(args, e.ProjectID, e.PaymentID)
	}
	for len(args) > 0 {
		n := min(len(args)/2, paymentsPerRead)
		st, err := w.stmt(paymentsReadSQL(n))
		if err != nil {
			return err
		}
		rows, err := st.QueryContext(w.ctx, args[:2*n]...)
		if err != nil {
			return err
		}
		args = args[2*n:]
		for rows.Next() {
			var id [2]string
			var data []byte
			if err := rows.Scan(&id[0], &id[1], &data); err != nil {
				rows.Close()
				return err
			}
			w.stored[id] = data
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
	}
	return nil
}

func (w *tx) writePayments() error {
	if len(w.order) == 0 {
		return nil
	}
	st, err := w.PrepareContext(w.ctx, "INSERT INTO payments(project_id, payment_id, started, updated, signed, "+
		"status, method, final, data) VALUES(?,?,?,?,?,?,?,?,?) ON CONFLICT(project_id, payment_id) DO UPDATE SET "+
		"started = excluded.started, updated = excluded.updated, signed = excluded.signed, status = excluded.status, "+
		"method = excluded.method, final = excluded.final, data = excluded.data")
	if err != nil {
		return err
	}
	defer st.Close()
	for _, id := range w.order {
		p := w.payments[id]
		var signed any
		if !p.Signed.IsZero() {
			signed = p.Signed.UnixNano()
		}
		if _, err := st.ExecContext(w.ctx, id[0], id[1], p.Started.UnixNano(), p.Updated.UnixNano(), signed,
			p.Status, p.Method, p.Final, p.Data); err != nil {
			return err
		}
	}
	return nil
}

// applyBounds prunes by age, by the unverified count and by size, oldest
// first, at most pruneMax rows.
func (w *tx) applyBounds(now time.Time) error {
	budget := pruneMax
	// IDs begin with their time (schema): the oldest are first by ID.
	cut := fmt.Sprintf("%016x", now.Add(-w.opts.MaxAge).UnixNano())
	n, err := w.prune("WHERE id < ? ORDER BY id", budget, nil, cut)
	w.pruned.Age += n
	budget -= n
	if err != nil || budget <= 0 {
		return err
	}
	if excess := w.unverN - w.opts.MaxUnverified; excess > 0 {
		n, err = w.prune("WHERE verified = 0 ORDER BY id", min(excess, budget), nil)
		w.pruned.Unverified += n
		budget -= n
		if err != nil || budget <= 0 {
			return err
		}
	}
	if w.size > w.opts.MaxSize {
		// Unverified entries go first: strangers cannot push genuine
		// ones out.
		floor := sizePruneFloor(w.opts.MaxSize)
		over := func() bool { return w.size > floor }
		for _, where := range []string{"WHERE verified = 0 ORDER BY id", "ORDER BY id"} {
			n, err = w.prune(where, budget, over)
			w.pruned.Size += n
			budget -= n
			if err != nil || budget <= 0 || !over() {
				return err
			}
		}
	}
	return err
}

// sizePruneFloor is what a journal over maxSize is pruned down to, so that
// a full journal prunes in batches rather than on every write.
func sizePruneFloor(maxSize int64) int64 {
	return maxSize - max(maxSize/64, min(maxSize/10, 1<<20))
}

// prune deletes up to limit entries selected by where (which orders them),
// while more() holds, and what only they held: bodies and payment rows.
func (w *tx) prune(where string, limit int, more func() bool, args ...any) (int, error) {
	const batch = 256
	pays := map[[2]string]bool{}
	keys := map[string]bool{}
	done := 0
	for done < limit && (more == nil || more()) {
		rows, err := w.QueryContext(w.ctx, "SELECT id, project_id, payment_id, event_key, verified, size FROM events "+
			where+" LIMIT ?", append(args, min(batch, limit-done))...)
		if err != nil {
			return done, err
		}
		type victim struct {
			id, project, payment, key string
			verified                  bool
			size                      int64
		}
		var vs []victim
		for rows.Next() {
			var v victim
			if err := rows.Scan(&v.id, &v.project, &v.payment, &v.key, &v.verified, &v.size); err != nil {
				rows.Close()
				return done, err
			}
			vs = append(vs, v)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return done, err
		}
		if len(vs) == 0 {
			break
		}
		for _, v := range vs {
			if more != nil && !more() {
				break
			}
			if _, err := w.exec("DELETE FROM events WHERE id = ?", v.id); err != nil {
				return done, err
			}
			w.size -= v.size
			done++
			if !v.verified {
				w.unverN--
				continue
			}
			if v.payment != "" {
				pays[[2]string{v.project, v.payment}] = true
			}
			if v.key != "" {
				keys[v.key] = true
			}
		}
		// Bodies and payments that no entry holds any more.
		for k := range keys {
			var n int64
			err := w.queryRow("DELETE FROM bodies WHERE event_key = ? AND NOT EXISTS "+
				"(SELECT 1 FROM events WHERE event_key = ? AND verified = 1) RETURNING length(body)", k, k).Scan(&n)
			if err == nil {
				w.size -= bodyCost(k, int(n))
			} else if !errors.Is(err, sql.ErrNoRows) {
				return done, err
			}
			delete(keys, k)
		}
		for p := range pays {
			if _, err := w.exec("DELETE FROM payments WHERE project_id = ? AND payment_id = ? AND "+
				"NOT EXISTS (SELECT 1 FROM events WHERE project_id = ? AND payment_id = ? AND verified = 1)",
				p[0], p[1], p[0], p[1]); err != nil {
				return done, err
			}
			delete(pays, p)
		}
	}
	return done, nil
}

// EventQuery selects entries; zero fields match everything.
type EventQuery struct {
	ProjectID, PaymentID, Result, Kind, EventKey string
	Since, Until                                 time.Time // Since inclusive, Until exclusive
	Before                                       string    // only IDs before it
	Limit                                        int
}

// Events returns the Data of entries matching q, newest first.
func (s *Store) Events(ctx context.Context, q EventQuery) ([][]byte, error) {
	if err := s.sync(ctx); err != nil {
		return nil, err
	}
	query, args := eventsSQL(q)
	return s.list(ctx, query, args...)
}

// eventsSQL is the query for Events.
func eventsSQL(q EventQuery) (string, []any) {
	var where []string
	var args []any
	add := func(cond string, v any) {
		where = append(where, cond)
		args = append(args, v)
	}
	// A project alone matches most entries of a shop: walking the IDs
	// newest first and filtering beats gathering and sorting them ("+"
	// keeps SQLite from choosing an index for it).
	project := "project_id = ?"
	if q.PaymentID == "" {
		project = "+project_id = ?"
	}
	for _, f := range []struct {
		col, v string
	}{{project, q.ProjectID}, {"payment_id = ?", q.PaymentID}, {"result = ?", q.Result}, {"kind = ?", q.Kind}, {"event_key = ?", q.EventKey}} {
		if f.v != "" {
			add(f.col, f.v)
		}
	}
	// IDs begin with their time: bounds on them keep the walk in ID order
	// short, where an index on time would have the rows sorted.
	if !q.Since.IsZero() {
		add("+time >= ?", q.Since.UnixNano())
		add("id >= ?", fmt.Sprintf("%016x", q.Since.UnixNano()))
	}
	if !q.Until.IsZero() {
		add("+time < ?", q.Until.UnixNano())
		add("id < ?", fmt.Sprintf("%016x", q.Until.UnixNano()+1))
	}
	if q.Before != "" {
		add("id < ?", q.Before)
	}
	query := "SELECT data FROM events"
	if len(where) > 0 {
		query += " WHERE " + strings.Join(where, " AND ")
	}
	return query + " ORDER BY id DESC LIMIT ?", append(args, q.Limit)
}

func (s *Store) list(ctx context.Context, query string, args ...any) ([][]byte, error) {
	rows, err := s.db.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out [][]byte
	for rows.Next() {
		var d []byte
		if err := rows.Scan(&d); err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, rows.Err()
}

// PaymentQuery selects payments; zero fields match everything.
type PaymentQuery struct {
	ProjectID, PaymentID, Status, Method string
	Since, Until                         time.Time // bound Updated
	Open                                 bool
	Limit                                int
}

// Payments returns the Data of payments matching q, most recently updated
// first (ties in descending project and payment id).
func (s *Store) Payments(ctx context.Context, q PaymentQuery) ([][]byte, error) {
	if err := s.sync(ctx); err != nil {
		return nil, err
	}
	query, args := paymentsSQL(q)
	return s.list(ctx, query, args...)
}

// paymentsSQL is the query for Payments.
func paymentsSQL(q PaymentQuery) (string, []any) {
	var where []string
	var args []any
	add := func(cond string, v any) {
		where = append(where, cond)
		args = append(args, v)
	}
	project, payment := "project_id = ?", "payment_id = ?" // as in eventsSQL
	switch {
	case q.PaymentID == "":
		project = "+project_id = ?"
	case q.ProjectID == "":
		// The entries' index finds the projects that have this payment id.
		payment = "(project_id, payment_id) IN (SELECT project_id, payment_id FROM events WHERE payment_id = ?)"
	}
	for _, f := range []struct {
		col, v string
	}{{project, q.ProjectID}, {payment, q.PaymentID}, {"status = ?", q.Status}, {"method = ?", q.Method}} {
		if f.v != "" {
			add(f.col, f.v)
		}
	}
	if !q.Since.IsZero() {
		add("updated >= ?", q.Since.UnixNano())
	}
	if !q.Until.IsZero() {
		add("updated < ?", q.Until.UnixNano())
	}
	if q.Open {
		where = append(where, "final = 0")
	}
	query := "SELECT data FROM payments"
	if len(where) > 0 {
		query += " WHERE " + strings.Join(where, " AND ")
	}
	// Indexes on updated ascend, so that a new payment's entries append to
	// them; read backwards, they give ties in descending order too.
	return query + " ORDER BY updated DESC, project_id DESC, payment_id DESC LIMIT ?", append(args, q.Limit)
}

// Timeline returns a payment's Data and its verified entries' Data since
// since, oldest first.
func (s *Store) Timeline(ctx context.Context, projectID, paymentID string, since time.Time) ([]byte, [][]byte, error) {
	if err := s.sync(ctx); err != nil {
		return nil, nil, err
	}
	var view []byte
	err := s.db.QueryRowContext(ctx, "SELECT data FROM payments WHERE project_id = ? AND payment_id = ?",
		projectID, paymentID).Scan(&view)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil, ErrNotFound
	}
	if err != nil {
		return nil, nil, err
	}
	evs, err := s.list(ctx, "SELECT data FROM events WHERE project_id = ? AND payment_id = ? AND verified = 1 "+
		"AND time >= ? ORDER BY id", projectID, paymentID, since.UnixNano())
	if err == nil && len(evs) == 0 {
		err = ErrNotFound // all past their age, awaiting the sweep
	}
	return view, evs, err
}

// OpenPayments returns the Data of payments first signed before
// signedBefore, updated since since, without a final status, oldest
// signed first.
func (s *Store) OpenPayments(ctx context.Context, signedBefore, since time.Time, limit int) ([][]byte, error) {
	if err := s.sync(ctx); err != nil {
		return nil, err
	}
	return s.list(ctx, "SELECT data FROM payments WHERE final = 0 AND signed IS NOT NULL AND signed < ? "+
		"AND updated >= ? ORDER BY signed, project_id, payment_id LIMIT ?",
		signedBefore.UnixNano(), since.UnixNano(), limit)
}

// Body returns the body stored for an event key.
func (s *Store) Body(ctx context.Context, eventKey string) ([]byte, error) {
	if err := s.sync(ctx); err != nil {
		return nil, err
	}
	var body []byte
	err := s.db.QueryRowContext(ctx, "SELECT body FROM bodies WHERE event_key = ?", eventKey).Scan(&body)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
	}
	return body, err
}

// Size is the journal's bytes as counted against MaxSize, once what is
// queued is written.
func (s *Store) Size(ctx context.Context) (int64, error) {
	var n int64
	err := s.db.QueryRowContext(ctx, "SELECT coalesce((SELECT value FROM meta WHERE name = 'size'), 0)").Scan(&n)
	return n, err
}

// Close writes what is queued and closes the file.
func (s *Store) Close() error {
	var err error
	s.close.Do(func() {
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		close(s.stop)
		<-s.done
		err = errors.Join(s.lastErr, s.db.Close())
	})
	return err
}

// Backup writes a consistent copy of the store file at src to dst, which
// must not exist, with VACUUM INTO: a Caddy using src may keep running.
func Backup(ctx context.Context, src, dst string) error {
	if _, err := os.Stat(src); err != nil {
		return fmt.Errorf("no store file: %w", err)
	}
	if _, err := os.Stat(dst); err == nil {
		return fmt.Errorf("%s exists: give a new file", dst)
	}
	q := url.Values{"_pragma": {"busy_timeout(5000)"}}
	db, err := sql.Open("sqlite", "file:"+src+"?"+q.Encode())
	if err != nil {
		return err
	}
	defer db.Close()
	var version int
	if err := db.QueryRowContext(ctx, "PRAGMA user_version").Scan(&version); err != nil {
		return fmt.Errorf("%s: %w", src, err)
	}
	if version == 0 || version > SchemaVersion {
		return fmt.Errorf("%s is not a store file of schema %d (user_version %d)", src, SchemaVersion, version)
	}
	_, err = db.ExecContext(ctx, "VACUUM INTO ?", dst)
	return err
}
