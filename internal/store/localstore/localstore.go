// Package localstore is the local backend, the default: de-dup state and
// journal in one SQLite file (internal/sqlitestore), or the journal in
// memory (internal/store/memstore) when no file can be used: the journal is
// a record, and losing it never takes payments down. It adapts
// sqlitestore's rows to the journal's model, with the one payment-view
// fold of internal/journal.
package localstore

import (
	"cmp"
	"context"
	"encoding/json"
	"sync"
	"time"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/journal"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/sqlitestore"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/store"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/store/memstore"
	"go.uber.org/zap"
)

// Claims live in memory only (a crash frees them, as an expired lease
// would). Delivered marks and journal entries are queued and written in
// one transaction every 100 ms or per batch: an accepted Commit or Record
// is on disk within about that.

const (
	// memoryKeys bounds the in-memory set of recent deliveries: the
	// file has them all, so this is only a cache.
	memoryKeys = 100_000
	// localErrLogEvery rate-limits the failed-write error log.
	localErrLogEvery = 10 * time.Second
)

// Backend is the local backend.
type Backend struct {
	journal.Journal // the file's, or memory's when no file could be used
	mem             *memstore.Dedup
	file            *sqlitestore.Store // nil when the journal is in memory
	memJ            *memstore.Journal  // non-nil when the journal is in memory
	path            string
	logger          *zap.Logger
	hooks           store.Hooks
	now             func() time.Time // wall clock: delivered marks outlive the process
	prune           *journal.PruneLog
	// problem says what was lost when the file could not be used as it
	// was; "" when it could.
	problem string

	errMu      sync.Mutex
	lastErrLog time.Time
}

// Open opens (creating if need be) the database at path; maxKeys bounds
// the recent deliveries kept in memory (0: 100,000), opts the journal. It
// never fails for the state of the file or its directory: a file that
// cannot be used is moved aside and a new one started, and when none can
// be written the journal runs in memory. Either way it logs an error
// naming the file, and the store reports itself unhealthy.
func Open(path string, maxKeys int, opts journal.Options, hooks store.Hooks) (*Backend, error) {
	logger := hooks.Log()
	if maxKeys <= 0 {
		maxKeys = memoryKeys
	}
	b := &Backend{
		// Evictions from this cache lose nothing, so they are not logged.
		mem:    memstore.NewDedup(maxKeys, zap.NewNop()),
		path:   path,
		logger: logger,
		hooks:  hooks,
		now:    time.Now,
		prune:  hooks.PruneLog(),
	}
	file, broken, why, err := sqlitestore.Open(path, sqlitestore.Config{
		Options: opts.WithDefaults(),
		Fold:    foldPayment,
		Count:   countDuplicate,
		Now:     func() time.Time { return b.now() },
		OnPrune: func(n sqlitestore.Pruned) {
			now := b.now()
			b.prune.Add(journal.PruneAge, n.Age, now)
			b.prune.Add(journal.PruneSize, n.Size, now)
			b.prune.Add(journal.PruneUnverified, n.Unverified, now)
		},
		OnWrite: b.wrote,
	})
	switch {
	case err != nil:
		b.problem = "the journal runs in memory: it and the delivered marks are lost at restart"
		logger.Error("local store: cannot use the database file; "+b.problem+
			" (a redelivered callback may reach the app again: its idempotency on X-Ecommpay-Event-Key stops it)",
			zap.String("file", path), zap.Error(err))
		b.memJ = memstore.NewJournal(opts, hooks)
		b.Journal = b.memJ
	default:
		b.file = file
		b.Journal = &sqliteJournal{file: file, now: b.now}
		if broken != "" {
			b.problem = "the database file could not be used and was moved aside to " + broken +
				"; a new one was started: the journal and delivered marks in it are lost here"
			logger.Error("local store: "+b.problem+
				" (a redelivered callback may reach the app again: its idempotency on X-Ecommpay-Event-Key stops it)",
				zap.String("file", path), zap.String("moved_to", broken), zap.NamedError("cause", why))
		}
	}
	b.setHealth()
	return b, nil
}

// Health implements store.Backend: whether the store has its file, as it
// was, and its last write succeeded.
func (b *Backend) Health() (bool, string) {
	if b.problem != "" {
		return false, b.problem
	}
	if !b.file.Healthy() {
		return false, "writes to the database file " + b.path + " are failing: new journal entries and delivered marks are lost"
	}
	return true, ""
}

func (b *Backend) setHealth() {
	ok, _ := b.Health()
	b.hooks.SetHealthy(ok)
}

// wrote is told how each transaction went.
func (b *Backend) wrote(err error) {
	b.setHealth()
	if err == nil {
		return
	}
	b.hooks.Fail("write")
	b.errMu.Lock()
	due := b.now().Sub(b.lastErrLog) >= localErrLogEvery
	if due {
		b.lastErrLog = b.now()
	}
	b.errMu.Unlock()
	if due {
		b.logger.Error("local store: a write failed: the journal entries and delivered marks it held are lost "+
			"(callbacks still go through)", zap.String("file", b.path), zap.Error(err))
	}
}

// Configure implements store.Backend; the next write applies the
// journal's bounds.
func (b *Backend) Configure(maxKeys int, opts journal.Options) {
	b.mem.SetMaxKeys(cmp.Or(maxKeys, memoryKeys))
	if b.file != nil {
		b.file.SetOptions(opts.WithDefaults())
		return
	}
	b.memJ.SetOptions(opts)
}

// Path is the database file.
func (b *Backend) Path() string { return b.path }

// Options returns the journal's bounds in force.
func (b *Backend) Options() journal.Options {
	if b.file == nil {
		return b.memJ.Options()
	}
	return b.file.Options()
}

// Claim implements store.Store: the claims in memory, then the delivered marks,
// which the file has too, so that a restart still answers store.Delivered.
func (b *Backend) Claim(ctx context.Context, key string, lease time.Duration) (store.ClaimState, string, error) {
	st, tok, err := b.mem.Claim(ctx, key, lease)
	if err != nil || st != store.Claimed || b.file == nil {
		return st, tok, err
	}
	exp, err := b.file.Delivered(ctx, sqlitestore.Key(store.HashKey(key)))
	if err != nil {
		// The app's idempotency covers a rare second delivery; a failing
		// file must not stop the callbacks.
		b.hooks.Fail("read")
		return store.Claimed, tok, nil
	}
	if left := time.Duration(exp - b.now().UnixNano()); left > 0 {
		// Keep it in memory so that the next duplicate stops there.
		_ = b.mem.Commit(ctx, key, tok, left)
		return store.Delivered, "", nil
	}
	return store.Claimed, tok, nil
}

// Commit implements store.Store. The mark is on disk within a flush.
func (b *Backend) Commit(ctx context.Context, key, token string, ttl time.Duration) error {
	if err := b.mem.Commit(ctx, key, token, ttl); err != nil {
		return err
	}
	if b.file == nil {
		return nil
	}
	return b.file.Mark(ctx, sqlitestore.Key(store.HashKey(key)), b.now().Add(ttl).UnixNano())
}

// Release implements store.Store; claims are never on disk.
func (b *Backend) Release(ctx context.Context, key, token string) error {
	return b.mem.Release(ctx, key, token)
}

// Flush writes what is queued now.
func (b *Backend) Flush(ctx context.Context) error {
	if b.file == nil {
		return nil
	}
	return b.file.Flush(ctx)
}

// Close implements store.Backend: it writes what is queued and closes the
// file.
func (b *Backend) Close() error {
	var err error
	if b.file != nil {
		err = b.file.Close()
	}
	b.prune.Flush(b.now())
	_ = b.mem.Close()
	return err
}

// sqliteJournal is the journal on the file.
type sqliteJournal struct {
	file *sqlitestore.Store
	now  func() time.Time
}

// Record implements journal.Journal. The entry is on disk within a flush.
func (j *sqliteJournal) Record(ctx context.Context, e journal.Event) error {
	e.Prepare(j.now())
	if len(e.ID) != 24 {
		e.ID = journal.NewEventID(e.Time) // IDs sort by time: the file keeps them in that order
	}
	data, err := json.Marshal(&e)
	if err != nil {
		return err
	}
	return j.file.Record(ctx, sqlitestore.Entry{
		ID: e.ID, Time: e.Time, Kind: e.Kind, ProjectID: e.ProjectID, PaymentID: e.PaymentID,
		EventKey: e.EventKey, Result: e.Result, Unverified: e.IsUnverified(), Duplicate: e.FoldsIntoFirst(),
		Data: data, Body: e.Body, Value: &e,
	})
}

// foldPayment applies an entry to its payment's view: the same apply as
// every backend's.
func foldPayment(prev []byte, en *sqlitestore.Entry) (sqlitestore.Payment, error) {
	var v journal.PaymentView
	if prev != nil {
		if err := json.Unmarshal(prev, &v); err != nil {
			return sqlitestore.Payment{}, err
		}
	}
	v.Apply(en.Value.(*journal.Event))
	data, err := json.Marshal(&v)
	if err != nil {
		return sqlitestore.Payment{}, err
	}
	return sqlitestore.Payment{ProjectID: v.ProjectID, PaymentID: v.PaymentID, Started: v.Started,
		Updated: v.Updated, Signed: v.Signed, Status: v.Status, Method: v.Method, Final: v.Final, Data: data}, nil
}

// countDuplicate counts a duplicate on the first entry of its key.
func countDuplicate(first []byte, dup *sqlitestore.Entry) ([]byte, error) {
	var e journal.Event
	if err := json.Unmarshal(first, &e); err != nil {
		return nil, err
	}
	e.CountDuplicate(dup.Value.(*journal.Event))
	return json.Marshal(&e)
}

// ageCut raises since to the age bound: entries past it may wait for the
// next sweep, but are not listed.
func (j *sqliteJournal) ageCut(since time.Time) time.Time {
	if cut := j.now().Add(-j.file.Options().MaxAge); since.Before(cut) {
		return cut
	}
	return since
}

func decodeAll[T any](raw [][]byte) ([]T, error) {
	out := make([]T, len(raw))
	for i, d := range raw {
		if err := json.Unmarshal(d, &out[i]); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// Events implements journal.Journal.
func (j *sqliteJournal) Events(ctx context.Context, f journal.EventFilter) ([]journal.Event, error) {
	raw, err := j.file.Events(ctx, sqlitestore.EventQuery{ProjectID: f.ProjectID, PaymentID: f.PaymentID,
		Result: f.Result, Kind: f.Kind, EventKey: f.EventKey, Since: j.ageCut(f.Since), Until: f.Until,
		Before: f.Before, Limit: journal.LimitOr(f.Limit)})
	if err != nil {
		return nil, err
	}
	return decodeAll[journal.Event](raw)
}

// Payments implements journal.Journal.
func (j *sqliteJournal) Payments(ctx context.Context, f journal.PaymentFilter) ([]journal.PaymentView, error) {
	raw, err := j.file.Payments(ctx, sqlitestore.PaymentQuery{ProjectID: f.ProjectID, PaymentID: f.PaymentID,
		Status: f.Status, Method: f.Method, Since: j.ageCut(f.Since), Until: f.Until, Open: f.Open,
		Limit: journal.LimitOr(f.Limit)})
	if err != nil {
		return nil, err
	}
	return decodeAll[journal.PaymentView](raw)
}

// Timeline implements journal.Journal.
func (j *sqliteJournal) Timeline(ctx context.Context, projectID, paymentID string) (journal.Timeline, error) {
	view, raw, err := j.file.Timeline(ctx, projectID, paymentID, j.ageCut(time.Time{}))
	if err != nil {
		return journal.Timeline{}, err
	}
	var tl journal.Timeline
	if err := json.Unmarshal(view, &tl.Payment); err != nil {
		return journal.Timeline{}, err
	}
	tl.Events, err = decodeAll[journal.Event](raw)
	return tl, err
}

// OpenPayments implements journal.Journal.
func (j *sqliteJournal) OpenPayments(ctx context.Context, startedBefore time.Time, limit int) ([]journal.PaymentView, error) {
	raw, err := j.file.OpenPayments(ctx, startedBefore, j.ageCut(time.Time{}), journal.LimitOr(limit))
	if err != nil {
		return nil, err
	}
	return decodeAll[journal.PaymentView](raw)
}

// Body implements journal.Journal.
func (j *sqliteJournal) Body(ctx context.Context, eventKey string) ([]byte, error) {
	return j.file.Body(ctx, eventKey)
}

// Interface guards
var _ store.Backend = (*Backend)(nil)
