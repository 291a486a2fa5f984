package sqlitestore

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/journal"
)

// Record queues an entry. Its Body is copied.
func (s *Store) Record(ctx context.Context, e Entry) error {
	if len(e.Body) > 0 {
		if e.Unverified || s.opts.Load().NoBodies {
			e.Body = nil
		} else {
			e.Body = bytes.Clone(e.Body)
		}
	}
	return s.enqueue(ctx, func() { s.records = append(s.records, e) })
}

// enqueue runs add under the lock, once there is room and unless the
// store is closed, and starts a flush when a batch is full.
func (s *Store) enqueue(ctx context.Context, add func()) error {
	if err := s.makeRoom(ctx); err != nil {
		return err
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	add()
	n := len(s.marks) + len(s.records)
	s.mu.Unlock()
	if n >= FlushBatch {
		s.kick()
	}
	return nil
}

// makeRoom waits for a flush when maxQueued writes wait: a disk slower
// than the callbacks slows them down rather than let the queue eat the
// heap.
func (s *Store) makeRoom(ctx context.Context) error {
	s.mu.Lock()
	full := len(s.marks)+len(s.records) >= maxQueued
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
	tick := time.NewTicker(flushEvery)
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
	if len(marks) > 0 || len(records) > 0 || now.Sub(s.lastSweep) >= sweepEvery {
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
		_ = s.rebuildFilter(context.Background())
	}
	return nil
}

// tx is one transaction of the writer.
type tx struct {
	*sql.Tx
	s        *Store
	ctx      context.Context
	opts     journal.Options
	size     int64
	unverN   int
	pruned   Pruned
	payments map[[2]string]*Payment
	order    [][2]string
	// stored holds the rows in the file of the payments the transaction's
	// entries fold into, read before the first.
	stored map[[2]string][]byte
	// gone holds the payments whose rows pruning may have deleted.
	gone  map[[2]string]bool
	stmts map[string]*sql.Stmt
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
		payments: map[[2]string]*Payment{}, gone: map[[2]string]bool{}, stmts: map[string]*sql.Stmt{}}
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
	// The rows written below are what the file holds once this commits;
	// rows pruned below are forgotten by the cache as they go.
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
	for _, id := range w.order {
		if !w.gone[id] {
			s.views.put(id, w.payments[id].Data)
		}
	}
	s.size, s.unverifiedN = w.size, w.unverN
	if w.pruned != (Pruned{}) && s.cfg.OnPrune != nil {
		s.cfg.OnPrune(w.pruned)
	}
	return nil
}

func (w *tx) writeMarks(marks map[Key]int64, now time.Time) error {
	if len(marks) > 0 {
		st, err := w.stmt("INSERT INTO delivered(key_hash, expires) VALUES(?, ?) " +
			"ON CONFLICT(key_hash) DO UPDATE SET expires = excluded.expires")
		if err != nil {
			return err
		}
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

func entryCost(e *Entry) int64 { return rowCost(e.ID, e.Data) }

// rowCost is what an entry row of this ID and data counts against MaxSize.
func rowCost(id string, data []byte) int64 { return int64(len(data)+len(id)) + entryOverhead }

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
	cost := rowCost(id, data)
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
		if data, ok := w.s.views.get(id); ok {
			w.stored[id] = data
			continue
		}
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
	st, err := w.stmt("INSERT INTO payments(project_id, payment_id, started, updated, signed, " +
		"status, method, final, data) VALUES(?,?,?,?,?,?,?,?,?) ON CONFLICT(project_id, payment_id) DO UPDATE SET " +
		"started = excluded.started, updated = excluded.updated, signed = excluded.signed, status = excluded.status, " +
		"method = excluded.method, final = excluded.final, data = excluded.data")
	if err != nil {
		return err
	}
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
		floor := journal.SizePruneFloor(w.opts.MaxSize)
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

// prune deletes up to limit entries selected by where (which orders them),
// while more() holds, and what only they held: bodies and payment rows.
// Each batch takes one statement per table, whatever its length: a
// statement per row costs several times more.
func (w *tx) prune(where string, limit int, more func() bool, args ...any) (int, error) {
	const batch = 256
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
		// The victims are the first rows that leave more() true, each
		// counted as it goes, before any is deleted.
		var ids, keys []string
		var pays [][2]string
		seenKey := map[string]bool{}
		seenPay := map[[2]string]bool{}
		for _, v := range vs {
			if more != nil && !more() {
				break
			}
			ids = append(ids, v.id)
			w.size -= v.size
			done++
			if !v.verified {
				w.unverN--
				continue
			}
			if p := [2]string{v.project, v.payment}; v.payment != "" && !seenPay[p] {
				seenPay[p] = true
				pays = append(pays, p)
			}
			if v.key != "" && !seenKey[v.key] {
				seenKey[v.key] = true
				keys = append(keys, v.key)
			}
		}
		if _, err := w.exec(pruneEventsSQL(len(ids)), padded(ids)...); err != nil {
			return done, err
		}
		// Bodies and payments that no entry holds any more.
		if len(keys) > 0 {
			if err := w.pruneBodies(keys); err != nil {
				return done, err
			}
		}
		if len(pays) > 0 {
			args := make([]any, 0, 2*len(pays))
			for _, p := range pays {
				// Forgotten whether or not the row goes, and even if the
				// transaction fails: the file is what counts.
				w.s.views.forget(p)
				w.gone[p] = true
				args = append(args, p[0], p[1])
			}
			if _, err := w.exec(prunePaymentsSQL(len(pays)), padTo(args, 2*paramsFor(len(pays)))...); err != nil {
				return done, err
			}
		}
	}
	return done, nil
}

// pruneBodies deletes the bodies of keys that no verified entry holds any
// more, and uncounts them.
func (w *tx) pruneBodies(keys []string) error {
	st, err := w.stmt(pruneBodiesSQL(len(keys)))
	if err != nil {
		return err
	}
	rows, err := st.QueryContext(w.ctx, padded(keys)...)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var k string
		var n int
		if err := rows.Scan(&k, &n); err != nil {
			return err
		}
		w.size -= bodyCost(k, n)
	}
	return rows.Err()
}

// pruneEventsSQL deletes the entries of n IDs.
func pruneEventsSQL(n int) string {
	return "DELETE FROM events WHERE id IN (" + params(n, "?") + ")"
}

// pruneBodiesSQL deletes the bodies of n event keys that no verified entry
// holds.
func pruneBodiesSQL(n int) string {
	return "DELETE FROM bodies WHERE event_key IN (" + params(n, "?") + ") AND NOT EXISTS " +
		"(SELECT 1 FROM events WHERE events.event_key = bodies.event_key AND verified = 1) " +
		"RETURNING event_key, length(body)"
}

// prunePaymentsSQL deletes the rows of n payments (project and payment ID)
// that no verified entry holds.
func prunePaymentsSQL(n int) string {
	return "DELETE FROM payments WHERE (project_id, payment_id) IN (VALUES " + params(n, "(?,?)") + ") " +
		"AND NOT EXISTS (SELECT 1 FROM events WHERE events.project_id = payments.project_id " +
		"AND events.payment_id = payments.payment_id AND verified = 1)"
}

// paramsFor is how many places a statement of a list of n items has: the
// next power of two from 8, so that a few prepared statements serve every
// batch; the places beyond n are NULL, which matches nothing.
func paramsFor(n int) int {
	c := 8
	for c < n {
		c *= 2
	}
	return c
}

// params is the list of paramsFor(n) places, each one.
func params(n int, one string) string {
	return one + strings.Repeat(","+one, paramsFor(n)-1)
}

// padded is v as arguments for the places of params(len(v), "?").
func padded(v []string) []any {
	args := make([]any, paramsFor(len(v)))
	for i, s := range v {
		args[i] = s
	}
	return args
}

// padTo is args with NULLs up to n.
func padTo(args []any, n int) []any { return append(args, make([]any, n-len(args))...) }

// viewCache holds the payment rows of the writer's last transactions, as
// written: most payments take several entries, and each would otherwise
// read its row back. Only the writer goroutine uses it. It is bounded by
// two generations: a full young one becomes the old one, and the old one
// is dropped.
type viewCache struct {
	young, old map[[2]string][]byte
}

func (c *viewCache) get(id [2]string) ([]byte, bool) {
	if d, ok := c.young[id]; ok {
		return d, true
	}
	d, ok := c.old[id]
	return d, ok
}

func (c *viewCache) put(id [2]string, data []byte) {
	if c.young == nil || len(c.young) >= viewsKept {
		c.old, c.young = c.young, make(map[[2]string][]byte, viewsKept)
	}
	delete(c.old, id)
	c.young[id] = data
}

func (c *viewCache) forget(id [2]string) {
	delete(c.young, id)
	delete(c.old, id)
}
