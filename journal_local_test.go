package ecommpay

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	bolt "go.etcd.io/bbolt"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

func openTestLocal(t *testing.T, path string, opts journalOptions) *localBackend {
	t.Helper()
	b, err := openLocalBackend(path, 0, opts, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Destruct() })
	return b
}

// storedBytes is the journal's byte count once everything queued is
// written; the flush orders the read after the writer's update.
func storedBytes(t *testing.T, b *localBackend) int64 {
	t.Helper()
	if err := b.flushWait(context.Background()); err != nil {
		t.Fatal(err)
	}
	return b.size
}

func TestLocalBackend(t *testing.T) {
	runBackendSuite(t, func(t *testing.T) backend {
		return openTestLocal(t, filepath.Join(t.TempDir(), "ecommpay.db"), backendSuiteOptions(t))
	})
}

func TestLocalSurvivesReopen(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "ecommpay.db")
	b := openTestLocal(t, path, journalOptions{})
	base := suiteBase()
	fixture(t, b, base)
	for i := range 50 {
		deliver(t, b, key(i), testTTL)
	}
	deliver(t, b, "short", 300*time.Millisecond)
	held := mustClaim(t, b, "held", Claimed)
	released := mustClaim(t, b, "released", Claimed)
	if err := b.Release(ctx, "released", released); err != nil {
		t.Fatal(err)
	}
	before := mustTimeline(t, b, "10", "p1")
	size := storedBytes(t, b)
	if err := b.Destruct(); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(ctx, "held", held, testTTL); !errors.Is(err, errLocalClosed) {
		t.Fatalf("Commit after Destruct = %v", err)
	}

	b = openTestLocal(t, path, journalOptions{})
	if got := storedBytes(t, b); got != size {
		t.Fatalf("size %d after reopening, was %d", got, size)
	}
	for i := range 50 {
		mustClaim(t, b, key(i), Delivered)
		mustClaim(t, b, key(i), Delivered) // now from memory
	}
	// Claims are not kept: a crash frees them like an expired lease.
	mustClaim(t, b, "held", Claimed)
	mustClaim(t, b, "released", Claimed)
	time.Sleep(400 * time.Millisecond)
	mustClaim(t, b, "short", Claimed)

	if got := opIDs(mustEvents(t, b, eventFilter{})); !slices.Equal(got, fixtureNewestFirst) {
		t.Fatalf("Events after reopening = %q", got)
	}
	if after := mustTimeline(t, b, "10", "p1"); !sameView(after.Payment, before.Payment) ||
		!slices.Equal(opIDs(after.Events), opIDs(before.Events)) {
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
	b, err := openLocalBackend(path, 0, journalOptions{}, nil)
	if err != nil {
		fmt.Println("error", err)
		return
	}
	ctx := context.Background()
	for i := 0; ; i++ {
		_, tok, err := b.Claim(ctx, key(i), testLease)
		if err == nil {
			err = b.Commit(ctx, key(i), tok, testTTL)
		}
		if err == nil {
			err = b.Record(ctx, journalEvent{Kind: kindCallback, Verified: true, ProjectID: "1",
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

	b := openTestLocal(t, path, journalOptions{})
	durable := -1
	for i := 0; i <= last; i++ {
		st, tok, err := b.Claim(context.Background(), key(i), testLease)
		if err != nil {
			t.Fatal(err)
		}
		if st == Delivered {
			if durable != i-1 {
				t.Fatalf("key %d is delivered but key %d is not", i, durable+1)
			}
			durable = i
		} else if err := b.Release(context.Background(), key(i), tok); err != nil {
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
	if evs := mustEvents(t, b, eventFilter{Limit: 1}); len(evs) == 0 {
		t.Fatal("no journal entry survived the kill")
	} else if n, _ := strconv.Atoi(evs[0].PaymentID); n < durable-localFlushBatch {
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
	b, err := openLocalBackend(path, 0, journalOptions{MaxSize: maxSize}, zap.New(core))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Destruct()
	pruned := testutil.ToFloat64(journalPrunedTotal.WithLabelValues(pruneSize))

	ctx := context.Background()
	body := bytes.Repeat([]byte("0123456789abcdef"), 100) // 1600 bytes
	for i := range 5000 {                                 // about 10 MiB
		if err := b.Record(ctx, journalEvent{Kind: kindCallback, Verified: true, ProjectID: "1",
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
	evs := mustEvents(t, b, eventFilter{Limit: 5000})
	if len(evs) < 100 || evs[0].PaymentID != "4999" {
		t.Fatalf("kept %d entries, newest %s", len(evs), evs[0].PaymentID)
	}
	if _, err := b.Body(ctx, "k4999"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Body(ctx, "k0"); !errors.Is(err, errNotFound) {
		t.Fatalf("the oldest body is still there: %v", err)
	}
	if got := testutil.ToFloat64(journalPrunedTotal.WithLabelValues(pruneSize)) - pruned; int(got) != 5000-len(evs) {
		t.Fatalf("size prunes counted %v, %d entries went", got, 5000-len(evs))
	}
	if err := b.Destruct(); err != nil {
		t.Fatal(err)
	}
	warns := logs.FilterLevelExact(zapcore.WarnLevel).All()
	if len(warns) == 0 || warns[0].ContextMap()[pruneSize] == int64(0) {
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

// checkLocalSize recounts the journal buckets of a closed file.
func checkLocalSize(t *testing.T, path string) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	_ = db.View(func(tx *bolt.Tx) error {
		var n int64
		for _, name := range journalBuckets {
			_ = tx.Bucket(name).ForEach(func(k, v []byte) error {
				n += cost(k, v)
				return nil
			})
		}
		if v := tx.Bucket(bktMeta).Get(metaSize); int64(binaryUint64(v)) != n {
			t.Fatalf("meta size %d, buckets hold %d", binaryUint64(v), n)
		}
		return nil
	})
}

func binaryUint64(v []byte) uint64 {
	var n uint64
	for _, c := range v {
		n = n<<8 | uint64(c)
	}
	return n
}

func TestLocalPrunesByAge(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ecommpay.db")
	core, logs := observer.New(zapcore.InfoLevel)
	b, err := openLocalBackend(path, 0, journalOptions{MaxAge: time.Hour}, zap.New(core))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Destruct()
	aged := testutil.ToFloat64(journalPrunedTotal.WithLabelValues(pruneAge))
	now := time.Now()
	for i := range 10 {
		record(t, b, journalEvent{Kind: kindCallback, Verified: true, ProjectID: "1", PaymentID: "old" + strconv.Itoa(i),
			Time: now.Add(-2 * time.Hour), EventKey: "o" + strconv.Itoa(i), Body: []byte("old")})
	}
	record(t, b, journalEvent{Kind: kindCallback, Time: now.Add(-2 * time.Hour), PaymentID: "stranger"})
	record(t, b, journalEvent{Kind: kindCallback, Verified: true, ProjectID: "1", PaymentID: "new", EventKey: "n", Body: []byte("new")})
	if err := b.sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	b.imu.RLock()
	payments, bodies := len(b.idx.slots), len(b.idx.bodies)
	b.imu.RUnlock()
	if payments != 1 || bodies != 1 {
		t.Fatalf("the index holds %d payments and %d bodies after pruning, want 1 and 1", payments, bodies)
	}
	if got := testutil.ToFloat64(journalPrunedTotal.WithLabelValues(pruneAge)) - aged; got != 11 {
		t.Fatalf("age prunes counted %v, want 11", got)
	}
	if err := b.Destruct(); err != nil {
		t.Fatal(err)
	}
	infos := logs.FilterLevelExact(zapcore.InfoLevel).All()
	if len(infos) != 1 || infos[0].ContextMap()[pruneAge] != int64(11) {
		t.Fatalf("age pruning logged %d lines: %v", len(infos), infos)
	}
	checkLocalSize(t, path)
	// Only the new entry's keys are left.
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	_ = db.View(func(tx *bolt.Tx) error {
		for _, name := range [][]byte{bktEntries, bktBodies} {
			if n := tx.Bucket(name).Stats().KeyN; n != 1 {
				t.Errorf("bucket %s holds %d keys, want 1", name, n)
			}
		}
		if n := tx.Bucket(bktStrangers).Stats().KeyN; n != 0 {
			t.Errorf("%d unverified entries left", n)
		}
		return nil
	})
}

func TestLocalSweepsExpiredMarks(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ecommpay.db")
	b := openTestLocal(t, path, journalOptions{})
	for i := range 20 {
		deliver(t, b, key(i), 50*time.Millisecond)
	}
	deliver(t, b, "kept", testTTL)
	time.Sleep(100 * time.Millisecond)
	deliver(t, b, key(0), testTTL) // delivered again: a new mark
	_ = b.Destruct()
	if n := len(b.marks); n != 2 {
		t.Errorf("%d delivered marks left in memory, want 2", n)
	}

	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	_ = db.View(func(tx *bolt.Tx) error {
		if n := tx.Bucket(bktDeliveredAt).Stats().KeyN; n != 2 {
			t.Errorf("%d delivered marks left, want 2", n)
		}
		return nil
	})
}

func TestLocalLockedFileErrorsQuickly(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ecommpay.db")
	openTestLocal(t, path, journalOptions{})
	start := time.Now()
	b, err := openLocalBackend(path, 0, journalOptions{}, nil)
	if err == nil {
		_ = b.Destruct()
		t.Fatal("a second open of a locked file succeeded")
	}
	if d := time.Since(start); d > 3*localLockTimeout {
		t.Fatalf("the second open took %v to fail", d)
	}
	if !strings.Contains(err.Error(), "in use by another process") || !strings.Contains(err.Error(), path) {
		t.Fatalf("unclear error: %v", err)
	}
}

func TestLocalQueriesSeeUnflushedRecords(t *testing.T) {
	b := openTestLocal(t, filepath.Join(t.TempDir(), "ecommpay.db"), journalOptions{})
	// Long enough after a flush that the next tick is far.
	for i := range 3 {
		record(t, b, journalEvent{Kind: kindGate, Verified: true, ProjectID: "1", PaymentID: strconv.Itoa(i)})
		if n := len(mustEvents(t, b, eventFilter{})); n != i+1 {
			t.Fatalf("listed %d entries right after recording %d", n, i+1)
		}
	}
}

// A file written by the first layout (JSON entries, bodies by event key,
// payment buckets) opens with its journal converted and nothing lost.
func TestLocalConvertsFirstLayout(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ecommpay.db")
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	first := []journalEvent{
		{Kind: kindPaymentPage, Verified: true, ProjectID: "1", PaymentID: "p", Amount: "100", Currency: "EUR", Result: "signed"},
		{Kind: kindCallback, Verified: true, ProjectID: "1", PaymentID: "p", EventKey: "k", PaymentStatus: "success", Result: "forwarded"},
		{Kind: kindCallback, Verified: true, ProjectID: "1", PaymentID: "p", EventKey: "k", PaymentStatus: "success", Result: "duplicate"},
	}
	err = db.Update(func(tx *bolt.Tx) error {
		ev, _ := tx.CreateBucket(oldEvents)
		bodies, _ := tx.CreateBucket(oldBodies)
		for _, name := range oldBuckets[3:] {
			pb, _ := tx.CreateBucket(name)
			_ = pb.Put([]byte("x"), []byte("{}"))
		}
		_, _ = tx.CreateBucket(oldUnverified)
		for i := range first {
			e := &first[i]
			e.Time = now.Add(time.Duration(i-10) * time.Second)
			e.ID = newEventID(e.Time)
			data, _ := json.Marshal(struct {
				journalEvent
				Ref bool `json:"body_ref,omitempty"`
			}{*e, e.EventKey != ""})
			_ = ev.Put([]byte(e.ID), data)
		}
		return bodies.Put([]byte("k"), append([]byte{0, 0, 0, 2}, `{"a":1}`...))
	})
	if err != nil {
		t.Fatal(err)
	}
	_ = db.Close()

	b := openTestLocal(t, path, journalOptions{})
	tl := mustTimeline(t, b, "1", "p")
	if len(tl.Events) != 3 || tl.Payment.Amount != "100" || tl.Payment.Status != "success" || !tl.Payment.Final ||
		tl.Payment.Callbacks != 2 || tl.Events[0].ID != first[0].ID {
		t.Fatalf("converted timeline = %+v", tl)
	}
	if got, err := b.Body(context.Background(), "k"); err != nil || string(got) != `{"a":1}` {
		t.Fatalf("converted body = %q, %v", got, err)
	}
	_ = b.db.View(func(tx *bolt.Tx) error {
		for _, name := range oldBuckets {
			if tx.Bucket(name) != nil {
				t.Errorf("bucket %s of the first layout is still there", name)
			}
		}
		return nil
	})
	// The body goes with the last entry that refers to it.
	b.setOptions(journalOptions{MaxAge: time.Second})
	if err := b.flushWait(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Body(context.Background(), "k"); !errors.Is(err, errNotFound) {
		t.Fatalf("body after its entries aged out: %v", err)
	}
	if got := storedBytes(t, b); got != 0 {
		t.Fatalf("an empty journal counts %d bytes", got)
	}
}

// The in-memory index stays small and holds few objects per payment: it
// has a view for every payment of the journal, and the garbage collector
// visits every object it holds on every cycle.
func TestLocalIndexIsCompact(t *testing.T) {
	if raceDetector {
		t.Skip("the race detector changes what allocations cost")
	}
	const n = 20000
	events := make([]journalEvent, n)
	now := time.Now().UTC()
	for i := range events {
		events[i] = journalEvent{Kind: kindPaymentPage, Verified: true, ProjectID: "238", Result: "signed",
			PaymentID: fmt.Sprintf("ORDER-%08d", i), Amount: strconv.Itoa(1000 + i), Currency: "EUR", Method: "card",
			Time: now, ID: newEventID(now)}
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	x := newLocalIndex()
	for i := range events {
		x.add(&events[i])
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	bytesPer := float64(after.HeapAlloc-before.HeapAlloc) / n
	objectsPer := float64(after.HeapObjects-before.HeapObjects) / n
	t.Logf("index: %.0f bytes and %.1f heap objects per payment", bytesPer, objectsPer)
	if bytesPer > 300 || objectsPer > 0.1 {
		t.Fatalf("index holds %.0f bytes and %.2f objects per payment, bound 300 and 0.1", bytesPer, objectsPer)
	}
	runtime.KeepAlive(x)
	runtime.KeepAlive(events)
}

// Entries and packed views read back as written.
func TestLocalRecordsRoundTrip(t *testing.T) {
	now := time.Now().UTC()
	e := journalEvent{ID: newEventID(now), Time: now, Kind: kindCallback, ProjectID: "238", PaymentID: "ORDER-1",
		OperationID: "17", OperationType: "sale", OperationStatus: "success", PaymentStatus: "success",
		EventKey: "k", Result: "forwarded", Status: 200, AppStatus: 500, AppLatencyMS: 1234, Verified: true,
		Path: "/v2/payment/card/sale", Amount: "1000", Currency: "EUR", Method: "card",
		EcommpayStatus: 502, Reason: "unreachable"}
	got, bodyID, err := decodeRecord([]byte(e.ID), appendRecord(nil, &e, "body-id"))
	if err != nil || bodyID != "body-id" || !reflect.DeepEqual(got, e) {
		t.Fatalf("decoded %+v, %q, %v; want %+v", got, bodyID, err, e)
	}
	// An entry written before ecommpay_status and reason existed still reads.
	old := e
	old.EcommpayStatus, old.Reason = 0, ""
	rec := appendRecord(nil, &old, "body-id")
	got, bodyID, err = decodeRecord([]byte(e.ID), rec[:len(rec)-2])
	if err != nil || bodyID != "body-id" || !reflect.DeepEqual(got, old) {
		t.Fatalf("decoded an older entry as %+v, %q, %v; want %+v", got, bodyID, err, old)
	}
	for n := range 10 { // every cut of a record is refused, never misread
		v := appendRecord(nil, &e, "")
		if _, _, err := decodeRecord([]byte(e.ID), v[:len(v)*n/10]); err == nil {
			t.Fatalf("a record cut to %d of %d bytes decoded", len(v)*n/10, len(v))
		}
	}
	x := newLocalIndex()
	var p localPayment
	v := paymentView{ProjectID: "238", PaymentID: "ORDER-1", Started: now, Updated: now.Add(time.Second),
		Mode: kindGate, Amount: "1000", Currency: "EUR", Method: "card", Status: "success", Final: true,
		Callbacks: 2, AppErrors: 1, Events: 3}
	x.pack(&p, &v)
	if back := x.view(&p); !sameView(back, v) || !back.Signed.IsZero() {
		t.Fatalf("packed view reads back as %+v, want %+v", back, v)
	}
}

// A payment's entry IDs stay in order as they move from inline to a slice
// and back, and views read earlier keep their strings when the arena is
// compacted.
func TestLocalIndexIDsAndArena(t *testing.T) {
	x := newLocalIndex()
	base := time.Now().UTC()
	var evs []journalEvent
	for _, sec := range []int{5, 1, 3, 2, 4} { // out of order
		at := base.Add(time.Duration(sec) * time.Second)
		evs = append(evs, journalEvent{ID: newEventID(at), Time: at, Kind: kindCallback, Verified: true,
			ProjectID: "1", PaymentID: "p", PaymentStatus: "status-" + strconv.Itoa(sec)})
		x.add(&evs[len(evs)-1])
	}
	sorted := func() bool {
		_, ids, _ := x.payment("1", "p")
		return slices.IsSorted(ids)
	}
	if _, ids, _ := x.payment("1", "p"); len(ids) != 5 || !sorted() {
		t.Fatalf("ids %q", ids)
	}
	early := x.views(func(*paymentView) bool { return true })
	for i := range evs[:4] {
		x.remove(&evs[i], "")
		if _, ids, _ := x.payment("1", "p"); len(ids) != 4-i || !sorted() {
			t.Fatalf("after %d removals: ids %q", i+1, ids)
		}
	}
	// Rewrite views until the arena compacts several times.
	p := x.at(x.slots[hashKey(payKey("1", "p"))])
	for i := range 3 * arenaChunk / 20 {
		v := x.view(p)
		v.Status = fmt.Sprintf("s%018d", i)
		x.pack(p, &v)
	}
	if len(early) != 1 || early[0].Status != "status-4" || early[0].PaymentID != "p" {
		t.Fatalf("a view read before compaction changed: %+v", early)
	}
	if x.arena.total > 8*arenaChunk {
		t.Fatalf("arena holds %d bytes for one payment", x.arena.total)
	}
	x.remove(&evs[4], "")
	if len(x.slots) != 0 || x.arena.live != 0 {
		t.Fatalf("%d payments, %d live arena bytes after removing everything", len(x.slots), x.arena.live)
	}
}

// Payments come and go, as in a journal at its size bound: the arena
// compacts while new payments are added, and every view keeps its own
// strings.
func TestLocalIndexChurn(t *testing.T) {
	x := newLocalIndex()
	now := time.Now().UTC()
	ev := func(i int) journalEvent {
		return journalEvent{ID: newEventID(now), Time: now, Kind: kindPaymentPage, Verified: true, ProjectID: "238",
			PaymentID: fmt.Sprintf("ORDER-%09d", i), Amount: strconv.Itoa(i), Currency: "EUR", Result: "signed"}
	}
	var live []journalEvent
	compactions, lastTotal := 0, 0
	for i := range 400_000 {
		e := ev(i)
		x.add(&e)
		live = append(live, e)
		if len(live) > 1000 { // the oldest goes, as pruning does
			x.remove(&live[0], "")
			live = live[1:]
		}
		if x.arena.total < lastTotal {
			compactions++
			// The payment added as the arena compacted reads back whole.
			if v, _, ok := x.payment(e.ProjectID, e.PaymentID); !ok || v.PaymentID != e.PaymentID || v.Amount != e.Amount {
				t.Fatalf("payment %s added during a compaction reads back as %+v", e.PaymentID, v)
			}
		}
		lastTotal = x.arena.total
	}
	if compactions == 0 {
		t.Fatal("the arena never compacted")
	}
	if len(x.slots) != len(live) {
		t.Fatalf("%d payments indexed, %d live", len(x.slots), len(live))
	}
	for _, e := range live {
		v, ids, ok := x.payment(e.ProjectID, e.PaymentID)
		if !ok || v.PaymentID != e.PaymentID || v.Amount != e.Amount || len(ids) != 1 || ids[0] != e.ID {
			t.Fatalf("payment %s reads back as %+v, %q", e.PaymentID, v, ids)
		}
	}
	t.Logf("%d compactions; arena %d bytes for %d payments", compactions, x.arena.total, len(x.slots))
}
