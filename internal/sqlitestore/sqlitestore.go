// Package sqlitestore keeps a journal of payment events, a view of each
// payment and the delivered marks of callback de-duplication in one SQLite
// file, through modernc.org/sqlite (pure Go, so Caddy builds without cgo).
//
// The file is in WAL mode, so that reads never wait for the writer. Writes
// are queued and written by one goroutine, grouped into one transaction
// (one fsync) every 100 ms (flushEvery) or sooner when FlushBatch writes wait.
// Pruning by age, by size and of unverified entries runs in the same
// transactions, a bounded number of rows at a time. The writer keeps the
// payment rows of its last transactions (bounded), so that a payment's
// next entry folds without reading its row back: it assumes it is the
// file's only writer.
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
	"sync"
	"sync/atomic"
	"time"

	"github.com/bits-and-blooms/bloom/v3"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/journal"
	_ "modernc.org/sqlite" // the "sqlite" driver
)

// schemaVersion is the PRAGMA user_version of files this package writes.
const schemaVersion = 2

// Schema creates version 2 of the file. Times are Unix nanoseconds (UTC).
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
CREATE INDEX payments_open ON payments(signed, project_id, payment_id) WHERE final = 0 AND signed IS NOT NULL;
CREATE INDEX payments_open_updated ON payments(updated, project_id, payment_id) WHERE final = 0;

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

// migrations[v-1] takes a file of version v to v+1.
var migrations = []string{
	// 1 to 2: the indexes of open payments keep only those (most payments
	// end final, and each entry costs every write of its payment):
	// payments_open the signed ones that reconciliation asks for,
	// payments_open_updated (in place of payments_final) those the open
	// filter lists.
	`DROP INDEX IF EXISTS payments_open;
DROP INDEX IF EXISTS payments_final;
CREATE INDEX payments_open ON payments(signed, project_id, payment_id) WHERE final = 0 AND signed IS NOT NULL;
CREATE INDEX payments_open_updated ON payments(updated, project_id, payment_id) WHERE final = 0;`,
}

// Tuning.
const (
	flushEvery = 100 * time.Millisecond
	// FlushBatch queued writes start a flush before the tick.
	FlushBatch = 1024
	// maxQueued writes may wait; beyond that writers wait for a flush.
	maxQueued = 50_000
	// sweepEvery is how often an idle store still writes, to drop expired
	// marks and entries past their age.
	sweepEvery = time.Minute
	// viewsKept bounds the payment rows the writer keeps from its last
	// transactions (between viewsKept and twice as many), so that a
	// payment's next entry folds without reading its row.
	viewsKept = 4096
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

// Pruned counts entries pruned by reason.
type Pruned struct{ Age, Size, Unverified int }

// Config is what Open needs besides the path.
type Config struct {
	// Options bound the journal, as given: the caller applies
	// journal.Options.WithDefaults.
	Options journal.Options
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
	opts    atomic.Pointer[journal.Options]
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

	// reads holds the read statements prepared so far, by query: the
	// queries are built from a fixed set of shapes, values go as
	// arguments.
	reads sync.Map // string -> *sql.Stmt

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
	views       viewCache
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
	go func() { _ = s.rebuildFilter(context.Background()) }()
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
	if version > schemaVersion {
		return fmt.Errorf("%w (schema %d; this one knows %d)", errNewer, version, schemaVersion)
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
		if _, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version=%d", schemaVersion)); err != nil {
			return err
		}
		version = schemaVersion
	}
	for v := version; v < schemaVersion; v++ {
		if _, err := tx.ExecContext(ctx, migrations[v-1]); err != nil {
			return fmt.Errorf("migrating the schema from version %d: %w", v, err)
		}
		if _, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version=%d", v+1)); err != nil {
			return err
		}
	}
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

// Close writes what is queued and closes the file.
func (s *Store) Close() error {
	var err error
	s.close.Do(func() {
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		close(s.stop)
		<-s.done
		s.reads.Range(func(_, st any) bool {
			_ = st.(*sql.Stmt).Close()
			return true
		})
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
	if version == 0 || version > schemaVersion {
		return fmt.Errorf("%s is not a store file of schema %d (user_version %d)", src, schemaVersion, version)
	}
	_, err = db.ExecContext(ctx, "VACUUM INTO ?", dst)
	return err
}
