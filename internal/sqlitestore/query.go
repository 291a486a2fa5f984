package sqlitestore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/journal"
)

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

// read prepares query once: parsing and planning cost about as much as
// running the console's small queries.
func (s *Store) read(ctx context.Context, query string) (*sql.Stmt, error) {
	if st, ok := s.reads.Load(query); ok {
		return st.(*sql.Stmt), nil
	}
	st, err := s.db.PrepareContext(ctx, query)
	if err != nil {
		return nil, err
	}
	if prev, loaded := s.reads.LoadOrStore(query, st); loaded {
		_ = st.Close()
		return prev.(*sql.Stmt), nil
	}
	return st, nil
}

// queryRow is QueryRowContext through a prepared statement.
func (s *Store) queryRow(ctx context.Context, query string, args ...any) *sql.Row {
	st, err := s.read(ctx, query)
	if err != nil {
		// A Row cannot carry the error: the query again gives it.
		return s.db.QueryRowContext(ctx, query, args...)
	}
	return st.QueryRowContext(ctx, args...)
}

func (s *Store) list(ctx context.Context, query string, args ...any) ([][]byte, error) {
	st, err := s.read(ctx, query)
	if err != nil {
		return nil, err
	}
	rows, err := st.QueryContext(ctx, args...)
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
// since, oldest first; journal.ErrNotFound when it has none.
func (s *Store) Timeline(ctx context.Context, projectID, paymentID string, since time.Time) ([]byte, [][]byte, error) {
	if err := s.sync(ctx); err != nil {
		return nil, nil, err
	}
	var view []byte
	err := s.queryRow(ctx, "SELECT data FROM payments WHERE project_id = ? AND payment_id = ?",
		projectID, paymentID).Scan(&view)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil, journal.ErrNotFound
	}
	if err != nil {
		return nil, nil, err
	}
	evs, err := s.list(ctx, "SELECT data FROM events WHERE project_id = ? AND payment_id = ? AND verified = 1 "+
		"AND time >= ? ORDER BY id", projectID, paymentID, since.UnixNano())
	if err == nil && len(evs) == 0 {
		err = journal.ErrNotFound // all past their age, awaiting the sweep
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
	return s.list(ctx, openPaymentsSQL, signedBefore.UnixNano(), since.UnixNano(), limit)
}

// openPaymentsSQL is the query for OpenPayments: its WHERE implies
// payments_open's, so that SQLite walks that index.
const openPaymentsSQL = "SELECT data FROM payments WHERE final = 0 AND signed IS NOT NULL AND signed < ? " +
	"AND updated >= ? ORDER BY signed, project_id, payment_id LIMIT ?"

// Body returns the body stored for an event key, or journal.ErrNotFound.
func (s *Store) Body(ctx context.Context, eventKey string) ([]byte, error) {
	if err := s.sync(ctx); err != nil {
		return nil, err
	}
	var body []byte
	err := s.queryRow(ctx, "SELECT body FROM bodies WHERE event_key = ?", eventKey).Scan(&body)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, journal.ErrNotFound
	}
	return body, err
}

// Size is the journal's bytes as counted against MaxSize, once what is
// queued is written.
func (s *Store) Size(ctx context.Context) (int64, error) {
	var n int64
	err := s.queryRow(ctx, "SELECT coalesce((SELECT value FROM meta WHERE name = 'size'), 0)").Scan(&n)
	return n, err
}
