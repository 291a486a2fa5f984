package localstore

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/journal"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/sqlitestore"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/store"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/store/storetest"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

func openTestLocal(t *testing.T, path string, opts journal.Options) *Backend {
	t.Helper()
	b, err := Open(path, 0, opts, testMeter.hooks(nil))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

// storedBytes is the journal's byte count once everything queued is
// written; the flush orders the read after the writer's update.
func storedBytes(t *testing.T, b *Backend) int64 {
	t.Helper()
	if err := b.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	n, err := b.file.Size(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestLocalBackend(t *testing.T) {
	storetest.RunBackend(t, func(t *testing.T, o journal.Options) store.Backend {
		return openTestLocal(t, filepath.Join(t.TempDir(), "ecommpay.db"), o)
	})
}

func TestLocalSurvivesReopen(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "ecommpay.db")
	b := openTestLocal(t, path, journal.Options{})
	base := storetest.Base()
	storetest.Fixture(t, b, base)
	for i := range 50 {
		storetest.Deliver(t, b, storetest.Key(i), storetest.TTL)
	}
	storetest.Deliver(t, b, "short", 300*time.Millisecond)
	held := storetest.MustClaim(t, b, "held", store.Claimed)
	released := storetest.MustClaim(t, b, "released", store.Claimed)
	if err := b.Release(ctx, "released", released); err != nil {
		t.Fatal(err)
	}
	before := storetest.MustTimeline(t, b, "10", "p1")
	size := storedBytes(t, b)
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(ctx, "held", held, storetest.TTL); !errors.Is(err, sqlitestore.ErrClosed) {
		t.Fatalf("Commit after Destruct = %v", err)
	}

	b = openTestLocal(t, path, journal.Options{})
	if got := storedBytes(t, b); got != size {
		t.Fatalf("size %d after reopening, was %d", got, size)
	}
	for i := range 50 {
		storetest.MustClaim(t, b, storetest.Key(i), store.Delivered)
		storetest.MustClaim(t, b, storetest.Key(i), store.Delivered) // now from memory
	}
	// Claims are not kept: a crash frees them like an expired lease.
	storetest.MustClaim(t, b, "held", store.Claimed)
	storetest.MustClaim(t, b, "released", store.Claimed)
	time.Sleep(400 * time.Millisecond)
	storetest.MustClaim(t, b, "short", store.Claimed)

	if got := storetest.OpIDs(storetest.MustEvents(t, b, journal.EventFilter{})); !slices.Equal(got, storetest.FixtureNewestFirst) {
		t.Fatalf("Events after reopening = %q", got)
	}
	if after := storetest.MustTimeline(t, b, "10", "p1"); !storetest.SameView(after.Payment, before.Payment) ||
		!slices.Equal(storetest.OpIDs(after.Events), storetest.OpIDs(before.Events)) {
		t.Fatalf("p1 after reopening = %+v", after)
	}
	if got, err := b.Body(ctx, "k1"); err != nil || string(got) != `{"k":1}` {
		t.Fatalf("Body(k1) after reopening = %q, %v", got, err)
	}
}

// TestLocalKillHelper is the child of TestLocalDurableAfterKill: it
// delivers keys until killed, printing each one once Commit returned.
func TestLocalKillHelper(t *testing.T) {
	path := os.Getenv("ECOMMPAY_KILL_DB")
	if path == "" {
		t.Skip("run by TestLocalDurableAfterKill")
	}
	b, err := Open(path, 0, journal.Options{}, store.Hooks{})
	if err != nil {
		fmt.Println("error", err)
		return
	}
	ctx := context.Background()
	for i := 0; ; i++ {
		_, tok, err := b.Claim(ctx, storetest.Key(i), storetest.Lease)
		if err == nil {
			err = b.Commit(ctx, storetest.Key(i), tok, storetest.TTL)
		}
		if err == nil {
			err = b.Record(ctx, journal.Event{Kind: journal.KindCallback, Verified: true, ProjectID: "1",
				PaymentID: strconv.Itoa(i), Result: "forwarded"})
		}
		if err != nil {
			fmt.Println("error", err)
			return
		}
		fmt.Println(i, time.Now().UnixNano())
		time.Sleep(time.Millisecond)
	}
}

// A kill -9 loses at most the last flush interval of acknowledged
// deliveries: everything acknowledged a second before is on disk.
func TestLocalDurableAfterKill(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a child process")
	}
	path := filepath.Join(t.TempDir(), "ecommpay.db")
	cmd := exec.Command(os.Args[0], "-test.run=^TestLocalKillHelper$", "-test.count=1")
	cmd.Env = append(os.Environ(), "ECOMMPAY_KILL_DB="+path)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	acked := map[int]int64{} // key → when its Commit returned
	last := -1
	lines := bufio.NewScanner(out)
	var killedAt int64
	for lines.Scan() {
		f := strings.Fields(lines.Text())
		if len(f) == 2 && f[0] == "error" {
			t.Fatal(lines.Text())
		}
		if len(f) != 2 {
			continue
		}
		i, err1 := strconv.Atoi(f[0])
		at, err2 := strconv.ParseInt(f[1], 10, 64)
		if err1 != nil || err2 != nil {
			continue
		}
		acked[i], last = at, i
		if killedAt == 0 && time.Duration(at-acked[0]) > 1500*time.Millisecond {
			killedAt = time.Now().UnixNano()
			_ = cmd.Process.Kill() // SIGKILL: no flush, no close
		}
	}
	_ = cmd.Wait()
	if killedAt == 0 {
		t.Fatalf("child stopped after %d keys without being killed", last+1)
	}

	b := openTestLocal(t, path, journal.Options{})
	durable := -1
	for i := 0; i <= last; i++ {
		st, tok, err := b.Claim(context.Background(), storetest.Key(i), storetest.Lease)
		if err != nil {
			t.Fatal(err)
		}
		if st == store.Delivered {
			if durable != i-1 {
				t.Fatalf("key %d is delivered but key %d is not", i, durable+1)
			}
			durable = i
		} else if err := b.Release(context.Background(), storetest.Key(i), tok); err != nil {
			t.Fatal(err)
		}
	}
	if durable < 0 {
		t.Fatal("nothing acknowledged survived the kill")
	}
	window := time.Duration(killedAt - acked[durable])
	t.Logf("%d keys acknowledged, %d durable: the last durable one was acknowledged %v before the kill",
		last+1, durable+1, window.Round(time.Millisecond))
	if window > time.Second {
		t.Fatalf("deliveries acknowledged %v before a kill -9 were lost", window)
	}
	if evs := storetest.MustEvents(t, b, journal.EventFilter{Limit: 1}); len(evs) == 0 {
		t.Fatal("no journal entry survived the kill")
	} else if n, _ := strconv.Atoi(evs[0].PaymentID); n < durable-sqlitestore.FlushBatch {
		t.Fatalf("journal durable up to %d, delivered marks to %d", n, durable)
	}
}

// The file stays near MaxSize: pruned pages are reused.
func TestLocalFileStaysNearMaxSize(t *testing.T) {
	const maxSize = 1 << 20
	// The slack: pages hold about 1.3 times the bytes counted (headers,
	// partly filled pages), a transaction writes its changed pages afresh
	// before the old ones are freed, and under 16 MiB bbolt grows the file
	// by doubling. Measured: 2 MiB. Above 16 MiB it grows by 16 MiB steps.
	const slack = maxSize
	path := filepath.Join(t.TempDir(), "ecommpay.db")
	core, logs := observer.New(zapcore.InfoLevel)
	b, err := Open(path, 0, journal.Options{MaxSize: maxSize}, testMeter.hooks(zap.New(core)))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	pruned := testMeter.pruned(journal.PruneSize)

	ctx := context.Background()
	body := bytes.Repeat([]byte("0123456789abcdef"), 100) // 1600 bytes
	for i := range 5000 {                                 // about 10 MiB
		if err := b.Record(ctx, journal.Event{Kind: journal.KindCallback, Verified: true, ProjectID: "1",
			PaymentID: strconv.Itoa(i), EventKey: "k" + strconv.Itoa(i), Body: body,
			PaymentStatus: "success", Result: "forwarded"}); err != nil {
			t.Fatal(err)
		}
		if i%100 == 99 { // a busy 100 ms
			if got := storedBytes(t, b); got > maxSize {
				t.Fatalf("journal counts %d bytes after a write, bound %d", got, maxSize)
			}
		}
	}
	evs := storetest.MustEvents(t, b, journal.EventFilter{Limit: 5000})
	if len(evs) < 100 || evs[0].PaymentID != "4999" {
		t.Fatalf("kept %d entries, newest %s", len(evs), evs[0].PaymentID)
	}
	if _, err := b.Body(ctx, "k4999"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Body(ctx, "k0"); !errors.Is(err, journal.ErrNotFound) {
		t.Fatalf("the oldest body is still there: %v", err)
	}
	if got := testMeter.pruned(journal.PruneSize) - pruned; int(got) != 5000-len(evs) {
		t.Fatalf("size prunes counted %v, %d entries went", got, 5000-len(evs))
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	warns := logs.FilterLevelExact(zapcore.WarnLevel).All()
	if len(warns) == 0 || warns[0].ContextMap()[journal.PruneSize] == int64(0) {
		t.Fatalf("size pruning logged %v", warns)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("file %d KiB for a %d KiB bound after 10 MiB written", fi.Size()>>10, maxSize>>10)
	if fi.Size() > maxSize+slack {
		t.Fatalf("file is %d bytes, bound %d plus slack %d", fi.Size(), maxSize, slack)
	}
	// The count matches what the buckets hold.
	checkLocalSize(t, path)
}

// checkLocalSize recounts the journal's rows of a closed file.
func checkLocalSize(t *testing.T, path string) {
	t.Helper()
	var counted, rows int64
	sqlScan(t, path, "SELECT value FROM meta WHERE name = 'size'", &counted)
	sqlScan(t, path, "SELECT (SELECT coalesce(sum(size), 0) FROM events) + "+
		"(SELECT coalesce(sum(length(event_key) + length(body) + 32), 0) FROM bodies)", &rows)
	if counted != rows {
		t.Fatalf("meta size %d, rows hold %d", counted, rows)
	}
}

// sqlScan runs a one-row query on the file at path, as an operator's
// sqlite3 shell would.
func sqlScan(t *testing.T, path, query string, dest ...any) {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.QueryRow(query).Scan(dest...); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
}

func TestLocalPrunesByAge(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ecommpay.db")
	core, logs := observer.New(zapcore.InfoLevel)
	b, err := Open(path, 0, journal.Options{MaxAge: time.Hour}, testMeter.hooks(zap.New(core)))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	aged := testMeter.pruned(journal.PruneAge)
	now := time.Now()
	for i := range 10 {
		storetest.Record(t, b, journal.Event{Kind: journal.KindCallback, Verified: true, ProjectID: "1", PaymentID: "old" + strconv.Itoa(i),
			Time: now.Add(-2 * time.Hour), EventKey: "o" + strconv.Itoa(i), Body: []byte("old")})
	}
	storetest.Record(t, b, journal.Event{Kind: journal.KindCallback, Time: now.Add(-2 * time.Hour), PaymentID: "stranger"})
	storetest.Record(t, b, journal.Event{Kind: journal.KindCallback, Verified: true, ProjectID: "1", PaymentID: "new", EventKey: "n", Body: []byte("new")})
	if err := b.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := testMeter.pruned(journal.PruneAge) - aged; got != 11 {
		t.Fatalf("age prunes counted %v, want 11", got)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	infos := logs.FilterLevelExact(zapcore.InfoLevel).All()
	if len(infos) != 1 || infos[0].ContextMap()[journal.PruneAge] != int64(11) {
		t.Fatalf("age pruning logged %d lines: %v", len(infos), infos)
	}
	checkLocalSize(t, path)
	// Only the new entry, its body and its payment are left.
	var events, unverified, bodies, payments int
	sqlScan(t, path, "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM events WHERE verified = 0), "+
		"(SELECT count(*) FROM bodies), (SELECT count(*) FROM payments)", &events, &unverified, &bodies, &payments)
	if events != 1 || unverified != 0 || bodies != 1 || payments != 1 {
		t.Fatalf("left %d entries (%d unverified), %d bodies, %d payments; want 1, 0, 1, 1", events, unverified, bodies, payments)
	}
}

func TestLocalSweepsExpiredMarks(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ecommpay.db")
	b := openTestLocal(t, path, journal.Options{})
	for i := range 20 {
		storetest.Deliver(t, b, storetest.Key(i), 50*time.Millisecond)
	}
	storetest.Deliver(t, b, "kept", storetest.TTL)
	time.Sleep(100 * time.Millisecond)
	storetest.Deliver(t, b, storetest.Key(0), storetest.TTL) // delivered again: a new mark
	_ = b.Close()
	var n int
	sqlScan(t, path, "SELECT count(*) FROM delivered", &n)
	if n != 2 {
		t.Errorf("%d delivered marks left, want 2", n)
	}
}

func TestLocalQueriesSeeUnflushedRecords(t *testing.T) {
	b := openTestLocal(t, filepath.Join(t.TempDir(), "ecommpay.db"), journal.Options{})
	// Long enough after a flush that the next tick is far.
	for i := range 3 {
		storetest.Record(t, b, journal.Event{Kind: journal.KindGate, Verified: true, ProjectID: "1", PaymentID: strconv.Itoa(i)})
		if n := len(storetest.MustEvents(t, b, journal.EventFilter{})); n != i+1 {
			t.Fatalf("listed %d entries right after recording %d", n, i+1)
		}
	}
}

// A damaged file never stops the store: it is moved aside, a new one is
// started, the store says it is unhealthy, and an error line names the
// file. A directory that cannot hold a file runs the journal in memory.
func TestLocalDamagedFile(t *testing.T) {
	damages := map[string]func(t *testing.T, path string){
		"truncated": func(t *testing.T, path string) {
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(path, min(64<<10, fi.Size()/2)); err != nil {
				t.Fatal(err)
			}
		},
		"random first pages": func(t *testing.T, path string) {
			overwrite(t, path, func(b []byte) {
				for i := range b {
					b[i] = byte(i*7919 + 13)
				}
			})
		},
		"zeroed header": func(t *testing.T, path string) {
			overwrite(t, path, func(b []byte) { clear(b) })
		},
		"a directory in its place": func(t *testing.T, path string) {
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
			if err := os.Mkdir(path, 0o700); err != nil {
				t.Fatal(err)
			}
		},
	}
	for name, damage := range damages {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "ecommpay.db")
			b := openTestLocal(t, path, journal.Options{})
			storetest.Fixture(t, b, storetest.Base())
			for i := range 200 { // enough pages that truncation cuts some
				storetest.Record(t, b, journal.Event{Kind: journal.KindCallback, Verified: true, ProjectID: "1", PaymentID: strconv.Itoa(i),
					EventKey: "k" + strconv.Itoa(i), Body: bytes.Repeat([]byte("x"), 500)})
			}
			if err := b.Close(); err != nil {
				t.Fatal(err)
			}
			damage(t, path)

			core, logs := observer.New(zapcore.ErrorLevel)
			b, err := Open(path, 0, journal.Options{}, testMeter.hooks(zap.New(core)))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = b.Close() })
			checkWorks(t, b)
			if ok, why := b.Health(); ok || !strings.Contains(why, "moved aside") {
				t.Fatalf("healthy() = %v, %q", ok, why)
			}
			if v := testMeter.health(); v != 0 {
				t.Fatalf("store_healthy = %v", v)
			}
			errs := logs.All()
			if len(errs) != 1 || errs[0].ContextMap()["file"] != path || !strings.Contains(errs[0].Message, "lost") {
				t.Fatalf("logged %v", errs)
			}
			moved, _ := filepath.Glob(path + ".broken-*")
			if len(moved) != 1 || errs[0].ContextMap()["moved_to"] != moved[0] {
				t.Fatalf("moved aside: %q, logged %v", moved, errs[0].ContextMap())
			}
		})
	}

	t.Run("unwritable directory", func(t *testing.T) {
		notDir := filepath.Join(t.TempDir(), "file")
		if err := os.WriteFile(notDir, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(notDir, "ecommpay", "ecommpay.db")
		core, logs := observer.New(zapcore.ErrorLevel)
		b, err := Open(path, 0, journal.Options{}, testMeter.hooks(zap.New(core)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = b.Close() })
		checkWorks(t, b)
		if ok, why := b.Health(); ok || !strings.Contains(why, "in memory") {
			t.Fatalf("healthy() = %v, %q", ok, why)
		}
		if errs := logs.All(); len(errs) != 1 || errs[0].ContextMap()["file"] != path {
			t.Fatalf("logged %v", errs)
		}
	})

	t.Run("sound file", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "ecommpay.db")
		_ = openTestLocal(t, path, journal.Options{}).Close()
		b := openTestLocal(t, path, journal.Options{})
		if ok, why := b.Health(); !ok {
			t.Fatalf("a sound file reopened unhealthy: %s", why)
		}
		if v := testMeter.health(); v != 1 {
			t.Fatalf("store_healthy = %v", v)
		}
	})
}

// overwrite changes the first 8 KiB of the file at path.
func overwrite(t *testing.T, path string, change func([]byte)) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 8<<10)
	change(b)
	if _, err := f.WriteAt(b, 0); err != nil {
		t.Fatal(err)
	}
}

// checkWorks de-duplicates and journals with b.
func checkWorks(t *testing.T, b store.Backend) {
	t.Helper()
	storetest.Deliver(t, b, "after", storetest.TTL)
	storetest.MustClaim(t, b, "after", store.Delivered)
	storetest.Record(t, b, journal.Event{Kind: journal.KindCallback, Verified: true, ProjectID: "1", PaymentID: "after",
		EventKey: "after", Body: []byte("after"), Result: "forwarded"})
	if evs := storetest.MustEvents(t, b, journal.EventFilter{PaymentID: "after"}); len(evs) != 1 {
		t.Fatalf("listed %d entries after the damage", len(evs))
	}
	if got, err := b.Body(context.Background(), "after"); err != nil || string(got) != "after" {
		t.Fatalf("Body = %q, %v", got, err)
	}
}

// A write that fails while Caddy runs is counted, logged with the file,
// and makes the store unhealthy until a write succeeds again.
func TestLocalWriteFailureReported(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ecommpay.db")
	core, logs := observer.New(zapcore.ErrorLevel)
	b, err := Open(path, 0, journal.Options{}, testMeter.hooks(zap.New(core)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	before := testMeter.failed("write")
	b.wrote(errors.New("disk full"))
	if d := testMeter.failed("write") - before; d != 1 {
		t.Fatalf("store_errors_total{op=write} moved by %v", d)
	}
	if errs := logs.All(); len(errs) != 1 || errs[0].ContextMap()["file"] != path {
		t.Fatalf("logged %v", errs)
	}
	// The gauge follows the file's own view of its last write, which the
	// next transaction sets.
	storetest.Deliver(t, b, "after", storetest.TTL)
	if err := b.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if ok, why := b.Health(); !ok {
		t.Fatalf("unhealthy after a good write: %s", why)
	}
	if v := testMeter.health(); v != 1 {
		t.Fatalf("store_healthy = %v after a good write", v)
	}
}

// testMeter records what backends tell their hooks, as the module's
// metrics would: pruned entries and failed operations add up, health is
// the last report (1 or 0).
var testMeter = &meter{counts: map[string]float64{}}

type meter struct {
	mu      sync.Mutex
	counts  map[string]float64
	healthy float64
}

func (m *meter) hooks(logger *zap.Logger) store.Hooks {
	add := func(k string, n float64) {
		m.mu.Lock()
		m.counts[k] += n
		m.mu.Unlock()
	}
	return store.Hooks{
		Logger: logger,
		Pruned: func(reason string, n int) { add("pruned:"+reason, float64(n)) },
		Failed: func(op string) { add("failed:"+op, 1) },
		Healthy: func(ok bool) {
			m.mu.Lock()
			m.healthy = map[bool]float64{true: 1}[ok]
			m.mu.Unlock()
		},
	}
}

func (m *meter) get(k string) float64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.counts[k]
}

func (m *meter) pruned(reason string) float64 { return m.get("pruned:" + reason) }
func (m *meter) failed(op string) float64     { return m.get("failed:" + op) }

func (m *meter) health() float64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.healthy
}

func BenchmarkBackend(b *testing.B) {
	storetest.Bench(b, func(b *testing.B, o journal.Options) store.Backend {
		lb, err := Open(filepath.Join(b.TempDir(), "ecommpay.db"), 0, o, store.Hooks{})
		if err != nil {
			b.Fatal(err)
		}
		return lb
	})
}
