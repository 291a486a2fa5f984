package sqlitestore

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/journal"
)

func openTest(t *testing.T, path string) *Store {
	t.Helper()
	s, broken, _, err := Open(path, Config{
		Options: journal.Options{MaxAge: time.Hour, MaxSize: 1 << 30, MaxUnverified: 100},
		Fold: func(prev []byte, e *Entry) (Payment, error) {
			return Payment{ProjectID: e.ProjectID, PaymentID: e.PaymentID, Started: e.Time, Updated: e.Time,
				Status: e.Result, Data: []byte(`{}`)}, nil
		},
		Count: func(first []byte, _ *Entry) ([]byte, error) { return first, nil },
	})
	if err != nil || broken != "" {
		t.Fatalf("Open: %v, moved to %q", err, broken)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// The console's and the API's queries walk an index in the order they
// answer in: none gathers and sorts rows, which is what made them grow
// with the journal.
func TestQueriesNeedNoSort(t *testing.T) {
	s := openTest(t, filepath.Join(t.TempDir(), "ecommpay.db"))
	since := time.Now().Add(-time.Hour)
	events := map[string]EventQuery{
		"newest":                 {Since: since, Limit: 100},
		"one project":            {ProjectID: "1", Since: since, Limit: 100},
		"one payment":            {ProjectID: "1", PaymentID: "p", Since: since, Limit: 100},
		"by result":              {Result: "app_error", Since: since, Limit: 100},
		"by kind":                {Kind: "callback", Since: since, Limit: 100},
		"by key":                 {EventKey: "k", Since: since, Limit: 1000},
		"a page on":              {Before: "18ee8b529819896cc4a78150", Since: since, Limit: 100},
		"by result, one project": {ProjectID: "1", Result: "app_error", Since: since, Limit: 100},
	}
	for name, q := range events {
		query, args := eventsSQL(q)
		checkPlan(t, s.db, name, query, args)
	}
	payments := map[string]PaymentQuery{
		"newest":      {Since: since, Limit: 100},
		"one project": {ProjectID: "1", Since: since, Limit: 100},
		"by status":   {Status: "success", Since: since, Limit: 100},
		"by method":   {Method: "wechat", Since: since, Limit: 100},
		"open":        {Open: true, Since: since, Limit: 100},
		"one payment": {ProjectID: "1", PaymentID: "p", Since: since, Limit: 100},
		"payment id":  {PaymentID: "p", Since: since, Limit: 100},
	}
	for name, q := range payments {
		query, args := paymentsSQL(q)
		if name == "payment id" {
			// At most a payment per project: a sort of nothing.
			checkPlan(t, s.db, name, query, args, "events_payment")
			continue
		}
		checkPlan(t, s.db, name, query, args)
	}
	checkPlan(t, s.db, "open payments", openPaymentsSQL, []any{1, 1, 100}, "payments_open ")
	// A rare status, method or open payment among many is found by its
	// index, not by reading every payment.
	for name, want := range map[string]string{"by status": "payments_status", "by method": "payments_method",
		"open": "payments_open_updated"} {
		query, args := paymentsSQL(payments[name])
		checkPlan(t, s.db, name, query, args, want)
	}
}

// Pruning finds each row it deletes, and checks that no verified entry
// holds a body or payment row, by an index: a batch's cost does not grow
// with the journal.
func TestPruneUsesTheIndexes(t *testing.T) {
	s := openTest(t, filepath.Join(t.TempDir(), "ecommpay.db"))
	for _, n := range []int{1, 256} {
		one := make([]any, paramsFor(n))
		two := make([]any, 2*paramsFor(n))
		for i := range two {
			two[i] = strconv.Itoa(i)
		}
		copy(one, two)
		for _, c := range []struct {
			query string
			args  []any
			want  []string
		}{
			{pruneEventsSQL(n), one, []string{"INDEX sqlite_autoindex_events_1 (id=?)"}},
			{pruneBodiesSQL(n), one, []string{"INDEX sqlite_autoindex_bodies_1 (event_key=?)",
				"INDEX events_key (event_key=?)"}},
			{prunePaymentsSQL(n), two, []string{"INDEX payments_id (project_id=? AND payment_id=?)", "INDEX events_payment (payment_id=? AND project_id=?)"}},
		} {
			for _, want := range c.want {
				checkPlan(t, s.db, fmt.Sprintf("%d: %s", n, c.query[:30]), c.query, c.args, want)
			}
		}
	}
}

func checkPlan(t *testing.T, db *sql.DB, name, query string, args []any, wantIndex ...string) {
	t.Helper()
	rows, err := db.Query("EXPLAIN QUERY PLAN "+query, args...)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	defer rows.Close()
	var plan []string
	for rows.Next() {
		var id, parent, unused int
		var detail string
		if err := rows.Scan(&id, &parent, &unused, &detail); err != nil {
			t.Fatal(err)
		}
		plan = append(plan, detail)
	}
	all := strings.Join(plan, "; ")
	if len(wantIndex) > 0 {
		if !strings.Contains(all, wantIndex[0]) {
			t.Errorf("%s: plan %q does not use %s", name, all, wantIndex[0])
		}
		return
	}
	if strings.Contains(all, "TEMP B-TREE") {
		t.Errorf("%s: %s\n  sorts: %s", name, query, all)
	}
}

// A file of a newer schema is left alone: Open fails without moving it,
// and the caller runs without it.
func TestNewerFileLeftAlone(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ecommpay.db")
	s := openTest(t, path)
	if _, err := s.db.Exec("PRAGMA user_version = 99"); err != nil {
		t.Fatal(err)
	}
	_ = s.Close()
	_, broken, _, err := Open(path, Config{Fold: func([]byte, *Entry) (Payment, error) { return Payment{}, nil },
		Count: func(b []byte, _ *Entry) ([]byte, error) { return b, nil }})
	if !errors.Is(err, errNewer) || broken != "" {
		t.Fatalf("Open of a newer file = %v, moved to %q", err, broken)
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatal(err)
	}
}

// Entries keep every field of their Data, whatever the caller adds.
func TestDataKeepsUnknownFields(t *testing.T) {
	s := openTest(t, filepath.Join(t.TempDir(), "ecommpay.db"))
	ctx := context.Background()
	data := []byte(`{"id":"x","a_field_added_later":{"nested":[1,2]}}`)
	now := time.Now()
	// IDs begin with their time: an older one would be pruned by age.
	if err := s.Record(ctx, Entry{ID: fmt.Sprintf("%016x%08x", now.UnixNano(), 0), Time: now, Kind: "callback", ProjectID: "1",
		PaymentID: "p", EventKey: "k", Result: "forwarded", Data: data}); err != nil {
		t.Fatal(err)
	}
	got, err := s.Events(ctx, EventQuery{Limit: 10})
	if err != nil || len(got) != 1 {
		t.Fatalf("Events = %d, %v", len(got), err)
	}
	var v map[string]any
	if err := json.Unmarshal(got[0], &v); err != nil || v["a_field_added_later"] == nil {
		t.Fatalf("came back as %s", got[0])
	}
}

// A disk that fills up while the store runs: the failed transaction is
// reported and lost, the store says it is unhealthy, reads go on, and the
// next transaction that fits makes it healthy again.
func TestWriteFailsAtRunTime(t *testing.T) {
	s := openTest(t, filepath.Join(t.TempDir(), "ecommpay.db"))
	var failures []error
	s.cfg.OnWrite = func(err error) {
		if err != nil {
			failures = append(failures, err)
		}
	}
	ctx := context.Background()
	// One connection, so that its page limit holds for the writer too.
	s.db.SetMaxOpenConns(1)
	var pages int
	if err := s.db.QueryRow("PRAGMA page_count").Scan(&pages); err != nil {
		t.Fatal(err)
	}
	if _, err := s.db.Exec("PRAGMA max_page_count = " + strconv.Itoa(pages)); err != nil {
		t.Fatal(err)
	}
	body := make([]byte, 64<<10)
	for i := range 4 {
		if err := s.Record(ctx, Entry{ID: fmt.Sprintf("%016x%08x", time.Now().UnixNano(), i), Time: time.Now(),
			Kind: "callback", ProjectID: "1", PaymentID: "p", EventKey: "k" + strconv.Itoa(i), Result: "forwarded",
			Data: []byte(`{}`), Body: body}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Flush(ctx); err == nil || !strings.Contains(err.Error(), "full") {
		t.Fatalf("Flush on a full disk = %v", err)
	}
	if s.Healthy() || len(failures) != 1 {
		t.Fatalf("healthy %v after a failed write, %d failures reported", s.Healthy(), len(failures))
	}
	if _, err := s.Delivered(ctx, Key{1}); err != nil {
		t.Fatalf("a read on a full disk: %v", err)
	}
	if _, err := s.db.Exec("PRAGMA max_page_count = 1000000"); err != nil {
		t.Fatal(err)
	}
	if err := s.Mark(ctx, Key{2}, time.Now().Add(time.Hour).UnixNano()); err != nil {
		t.Fatal(err)
	}
	if err := s.Flush(ctx); err != nil || !s.Healthy() {
		t.Fatalf("after room was made: %v, healthy %v", err, s.Healthy())
	}
	if exp, err := s.Delivered(ctx, Key{2}); err != nil || exp == 0 {
		t.Fatalf("the mark written after the failure: %d, %v", exp, err)
	}
}

// The writer reads the payments of a transaction's entries through their
// unique index, many to a statement.
func TestPaymentsReadUsesTheIndex(t *testing.T) {
	s := openTest(t, filepath.Join(t.TempDir(), "ecommpay.db"))
	for _, n := range []int{1, paymentsPerRead} {
		args := make([]any, 2*n)
		for i := range args {
			args[i] = strconv.Itoa(i)
		}
		checkPlan(t, s.db, fmt.Sprintf("%d payments", n), paymentsReadSQL(n), args, "USING INDEX payments_id")
	}
}

// A payment's entries in one transaction and in the next fold into one
// row, each from the row the one before left.
func TestFoldAcrossTransactions(t *testing.T) {
	var prevs []string
	s, _, _, err := Open(filepath.Join(t.TempDir(), "ecommpay.db"), Config{
		Options: journal.Options{MaxAge: time.Hour, MaxSize: 1 << 30, MaxUnverified: 100},
		Fold: func(prev []byte, e *Entry) (Payment, error) {
			prevs = append(prevs, e.PaymentID+":"+string(prev))
			return Payment{ProjectID: e.ProjectID, PaymentID: e.PaymentID, Started: e.Time, Updated: e.Time,
				Status: e.Result, Data: []byte(string(prev) + e.Result)}, nil
		},
		Count: func(first []byte, _ *Entry) ([]byte, error) { return first, nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	n := 0
	record := func(payment, result string) {
		now := time.Now()
		n++
		if err := s.Record(ctx, Entry{ID: fmt.Sprintf("%016x%08x", now.UnixNano(), n), Time: now, Kind: "callback",
			ProjectID: "1", PaymentID: payment, EventKey: fmt.Sprint("k", n), Result: result, Data: []byte(`{}`)}); err != nil {
			t.Fatal(err)
		}
	}
	record("a", "1")
	record("b", "x")
	record("a", "2")
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	record("a", "3")
	record("c", "y")
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	want := []string{"a:", "b:", "a:1", "a:12", "c:"}
	if strings.Join(prevs, " ") != strings.Join(want, " ") {
		t.Fatalf("folded from %q, want %q", prevs, want)
	}
	got, err := s.Payments(ctx, PaymentQuery{ProjectID: "1", PaymentID: "a", Limit: 1})
	if err != nil || len(got) != 1 || string(got[0]) != "123" {
		t.Fatalf("payment a = %q, %v", got, err)
	}
}

// schemaV1 is version 1 of the file, as the first release wrote it.
const schemaV1 = `
CREATE TABLE events (id TEXT PRIMARY KEY, time INTEGER NOT NULL, kind TEXT NOT NULL, project_id TEXT NOT NULL,
  payment_id TEXT NOT NULL, event_key TEXT NOT NULL, result TEXT NOT NULL, verified INTEGER NOT NULL,
  size INTEGER NOT NULL, data TEXT NOT NULL);
CREATE INDEX events_payment ON events(payment_id, project_id, id);
CREATE INDEX events_key ON events(event_key, id);
CREATE INDEX events_result ON events(result, id);
CREATE INDEX events_unverified ON events(id) WHERE verified = 0;
CREATE TABLE bodies (event_key TEXT PRIMARY KEY, body BLOB NOT NULL);
CREATE TABLE payments (project_id TEXT NOT NULL, payment_id TEXT NOT NULL, started INTEGER NOT NULL,
  updated INTEGER NOT NULL, signed INTEGER, status TEXT NOT NULL, method TEXT NOT NULL, final INTEGER NOT NULL,
  data TEXT NOT NULL);
CREATE UNIQUE INDEX payments_id ON payments(project_id, payment_id);
CREATE INDEX payments_updated ON payments(updated, project_id, payment_id);
CREATE INDEX payments_status ON payments(status, updated, project_id, payment_id);
CREATE INDEX payments_method ON payments(method, updated, project_id, payment_id);
CREATE INDEX payments_open ON payments(final, signed, project_id, payment_id);
CREATE INDEX payments_final ON payments(final, updated, project_id, payment_id);
CREATE TABLE delivered (key_hash BLOB PRIMARY KEY, expires INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX delivered_expires ON delivered(expires);
CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
PRAGMA user_version = 1;
`

// A file of version 1 is migrated forward on open: its rows stay, and its
// indexes become those a new file has.
func TestMigrateFromVersion1(t *testing.T) {
	dir := t.TempDir()
	old := filepath.Join(dir, "old.db")
	db, err := sql.Open("sqlite", "file:"+old)
	if err != nil {
		t.Fatal(err)
	}
	signed := time.Now().Add(-time.Hour).UnixNano()
	for _, q := range []string{schemaV1,
		fmt.Sprintf(`INSERT INTO payments VALUES('1', 'open', %d, %d, %d, 'awaiting customer', 'wechat', 0, '{"open":1}')`, signed, signed, signed),
		fmt.Sprintf(`INSERT INTO payments VALUES('1', 'paid', %d, %d, %d, 'success', 'wechat', 1, '{"paid":1}')`, signed, signed, signed),
		fmt.Sprintf(`INSERT INTO events VALUES('%016x00000000', %d, 'callback', '1', 'open', 'k', 'forwarded', 1, 100, '{}')`, signed, signed),
	} {
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	_ = db.Close()

	s := openTest(t, old)
	var version int
	if err := s.db.QueryRow("PRAGMA user_version").Scan(&version); err != nil || version != schemaVersion {
		t.Fatalf("user_version = %d, %v; want %d", version, err, schemaVersion)
	}
	fresh := openTest(t, filepath.Join(dir, "new.db"))
	if got, want := schemaOf(t, s.db), schemaOf(t, fresh.db); got != want {
		t.Errorf("migrated schema:\n%s\nnew file's:\n%s", got, want)
	}
	open, err := s.OpenPayments(context.Background(), time.Now(), time.Now().Add(-2*time.Hour), 10)
	if err != nil || len(open) != 1 || string(open[0]) != `{"open":1}` {
		t.Errorf("open payments after the migration = %q, %v", open, err)
	}
	paid, err := s.Payments(context.Background(), PaymentQuery{Status: "success", Limit: 10})
	if err != nil || len(paid) != 1 || string(paid[0]) != `{"paid":1}` {
		t.Errorf("payments by status after the migration = %q, %v", paid, err)
	}
}

// schemaOf lists a file's tables and their columns, and its indexes as
// created.
func schemaOf(t *testing.T, db *sql.DB) string {
	t.Helper()
	rows, err := db.Query("SELECT CASE type WHEN 'index' THEN sql ELSE name || '(' || (SELECT group_concat(" +
		"name || ' ' || type || ' ' || \"notnull\" || ' ' || pk, ', ') FROM pragma_table_info(m.name)) || ')' END " +
		"FROM sqlite_master m WHERE sql IS NOT NULL ORDER BY name")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var q string
		if err := rows.Scan(&q); err != nil {
			t.Fatal(err)
		}
		out = append(out, q)
	}
	return strings.Join(out, "\n")
}

// The writer keeps recent payment rows to fold the next entry on, and
// forgets a row that pruning deletes: a payment whose entries all went
// starts again from nothing, as the file says.
func TestKeptViewsFollowPruning(t *testing.T) {
	s, _, _, err := Open(filepath.Join(t.TempDir(), "ecommpay.db"), Config{
		Options: journal.Options{MaxAge: time.Hour, MaxSize: 1 << 30, MaxUnverified: 100},
		Fold: func(prev []byte, e *Entry) (Payment, error) {
			return Payment{ProjectID: e.ProjectID, PaymentID: e.PaymentID, Started: e.Time, Updated: e.Time,
				Data: append(bytes.Clone(prev), 'x')}, nil
		},
		Count: func(first []byte, _ *Entry) ([]byte, error) { return first, nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	record := func(payment string) {
		t.Helper()
		now := time.Now()
		if err := s.Record(ctx, Entry{ID: fmt.Sprintf("%016x%08x", now.UnixNano(), 0), Time: now, Kind: "callback",
			ProjectID: "1", PaymentID: payment, EventKey: payment + strconv.FormatInt(now.UnixNano(), 10),
			Result: "forwarded", Data: []byte(`{}`)}); err != nil {
			t.Fatal(err)
		}
		if err := s.Flush(ctx); err != nil {
			t.Fatal(err)
		}
	}
	view := func(payment string) string {
		t.Helper()
		got, err := s.Payments(ctx, PaymentQuery{ProjectID: "1", PaymentID: payment, Limit: 1})
		if err != nil {
			t.Fatal(err)
		}
		if len(got) == 0 {
			return ""
		}
		return string(got[0])
	}
	record("P")
	record("P")
	if got := view("P"); got != "xx" {
		t.Fatalf("after two entries: %q, want xx", got)
	}
	// Every entry of P goes by age.
	s.SetOptions(journal.Options{MaxAge: time.Millisecond, MaxSize: 1 << 30, MaxUnverified: 100})
	time.Sleep(5 * time.Millisecond)
	record("Q")
	if got := view("P"); got != "" {
		t.Fatalf("after pruning: %q, want no row", got)
	}
	s.SetOptions(journal.Options{MaxAge: time.Hour, MaxSize: 1 << 30, MaxUnverified: 100})
	record("P")
	if got := view("P"); got != "x" {
		t.Fatalf("a new entry after pruning folds on %q, want x (a new row)", got)
	}
}

// Pruning takes the entries it selects and, of their bodies and payment
// rows, only those no remaining verified entry holds; the size counted is
// what the rows left hold. Over 600 victims, it spans several batches.
func TestPruneKeepsWhatRemainingEntriesHold(t *testing.T) {
	var pruned Pruned
	s, _, _, err := Open(filepath.Join(t.TempDir(), "ecommpay.db"), Config{
		Options: journal.Options{MaxAge: 24 * time.Hour, MaxSize: 1 << 30, MaxUnverified: 1000},
		Fold: func(prev []byte, e *Entry) (Payment, error) {
			return Payment{ProjectID: e.ProjectID, PaymentID: e.PaymentID, Started: e.Time, Updated: e.Time,
				Data: []byte(`{}`)}, nil
		},
		Count:   func(first []byte, _ *Entry) ([]byte, error) { return first, nil },
		OnPrune: func(p Pruned) { pruned.Age += p.Age; pruned.Size += p.Size; pruned.Unverified += p.Unverified },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	now := time.Now()
	old := now.Add(-2 * time.Hour)
	record := func(at time.Time, n int, e Entry) {
		t.Helper()
		e.ID, e.Time, e.Kind, e.Result = fmt.Sprintf("%016x%08x", at.UnixNano(), n), at, "callback", "forwarded"
		e.Data = []byte(`{}`)
		if err := s.Record(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	const n = 600
	for i := range n {
		p, k := fmt.Sprintf("P%d", i), fmt.Sprintf("k%d", i)
		record(old, i, Entry{ProjectID: "1", PaymentID: p, EventKey: k, Body: []byte("body of " + k)})
		if i%2 == 0 {
			// A later entry of the same payment and event key (a replay).
			record(now, i, Entry{ProjectID: "1", PaymentID: p, EventKey: k, Body: []byte("body of " + k)})
		}
	}
	for i := range 50 {
		record(old, n+i, Entry{ProjectID: "1", PaymentID: "P1", EventKey: "k1", Unverified: true})
	}
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	s.SetOptions(journal.Options{MaxAge: time.Hour, MaxSize: 1 << 30, MaxUnverified: 1000})
	record(time.Now(), 0, Entry{ProjectID: "1", PaymentID: "trigger", EventKey: "t"})
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if pruned != (Pruned{Age: n + 50}) {
		t.Fatalf("pruned %+v, want %d by age", pruned, n+50)
	}
	for i := range n {
		p, k := fmt.Sprintf("P%d", i), fmt.Sprintf("k%d", i)
		body, err := s.Body(ctx, k)
		rows, perr := s.Payments(ctx, PaymentQuery{ProjectID: "1", PaymentID: p, Limit: 1})
		if perr != nil {
			t.Fatal(perr)
		}
		if i%2 == 0 && (err != nil || string(body) != "body of "+k || len(rows) != 1) {
			t.Fatalf("%s, held by a remaining entry: body %q (%v), %d payment rows", p, body, err, len(rows))
		}
		if i%2 == 1 && (!errors.Is(err, journal.ErrNotFound) || len(rows) != 0) {
			t.Fatalf("%s, held by no entry: body %q (%v), %d payment rows", p, body, err, len(rows))
		}
	}
	var events, unverified, bodies, payments int
	var counted, held int64
	if err := s.db.QueryRow("SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM events WHERE verified = 0), "+
		"(SELECT count(*) FROM bodies), (SELECT count(*) FROM payments), (SELECT value FROM meta WHERE name = 'size'), "+
		"(SELECT coalesce(sum(size), 0) FROM events) + (SELECT coalesce(sum(length(event_key) + length(body) + 32), 0) FROM bodies)").
		Scan(&events, &unverified, &bodies, &payments, &counted, &held); err != nil {
		t.Fatal(err)
	}
	if events != n/2+1 || unverified != 0 || bodies != n/2 || payments != n/2+1 {
		t.Fatalf("left %d entries (%d unverified), %d bodies, %d payments; want %d, 0, %d, %d",
			events, unverified, bodies, payments, n/2+1, n/2, n/2+1)
	}
	if counted != held || s.size != held || s.unverifiedN != 0 {
		t.Fatalf("size counted %d in the file and %d by the writer, rows hold %d; %d unverified counted",
			counted, s.size, held, s.unverifiedN)
	}
}
