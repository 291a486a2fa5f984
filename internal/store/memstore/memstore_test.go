package memstore

import (
	"bytes"
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/journal"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/store"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/store/storetest"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// fakeClock is a settable clock safe for concurrent use.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newTestMemoryStore(maxKeys int, logger *zap.Logger) (*Dedup, *fakeClock) {
	s := NewDedup(maxKeys, logger)
	clk := &fakeClock{t: s.epoch}
	s.now = clk.Now
	return s, clk
}

func TestMemoryStore(t *testing.T) {
	var clk *fakeClock
	storetest.RunStore(t, storetest.StoreSuite{
		New: func(t *testing.T) store.Store {
			var s *Dedup
			s, clk = newTestMemoryStore(0, nil)
			return s
		},
		Short:  time.Second,
		Elapse: func(d time.Duration) { clk.Advance(d) },
	})
}

// peek reports a key's state without claiming it.
func (s *Dedup) peek(key string) (st store.ClaimState, present bool) {
	h := store.HashKey(key)
	sh := s.shard(h)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	e, ok := sh.m[h]
	if !ok || e.exp <= s.clock() {
		return 0, false
	}
	if e.id == 0 {
		return store.Delivered, true
	}
	return store.InFlight, true
}

// entries counts map entries, live or expired, and checks the counter.
func (s *Dedup) entries(t *testing.T) int {
	t.Helper()
	n := 0
	for i := range s.shards {
		s.shards[i].mu.Lock()
		n += len(s.shards[i].m)
		s.shards[i].mu.Unlock()
	}
	if c := s.count.Load(); int64(n) != c {
		t.Fatalf("count = %d, maps hold %d", c, n)
	}
	return n
}

func TestMemoryLeaseBoundary(t *testing.T) {
	s, clk := newTestMemoryStore(0, nil)
	ctx := context.Background()
	if st, _, _ := s.Claim(ctx, "k", time.Second); st != store.Claimed {
		t.Fatal(st)
	}
	clk.Advance(time.Second - time.Nanosecond)
	storetest.MustClaim(t, s, "k", store.InFlight)
	clk.Advance(time.Nanosecond)
	storetest.MustClaim(t, s, "k", store.Claimed)
}

func TestMemoryBoundEvictsOldestDelivered(t *testing.T) {
	core, logs := observer.New(zapcore.WarnLevel)
	s, clk := newTestMemoryStore(10, zap.New(core))

	for i := range 10 {
		storetest.Deliver(t, s, storetest.Key(i), storetest.TTL)
		clk.Advance(time.Millisecond)
	}
	// Under (at) the bound nothing is dropped or logged.
	for i := range 10 {
		if st, ok := s.peek(storetest.Key(i)); !ok || st != store.Delivered {
			t.Fatalf("%s dropped while the store was within its bound", storetest.Key(i))
		}
	}
	if logs.Len() != 0 {
		t.Fatalf("logged %d entries before any eviction", logs.Len())
	}

	// Three new claims push out the three oldest deliveries, in commit order.
	for i := 10; i < 13; i++ {
		storetest.MustClaim(t, s, storetest.Key(i), store.Claimed)
		if got := s.entries(t); got > 10 {
			t.Fatalf("store holds %d entries, bound is 10", got)
		}
	}
	for i := range 13 {
		_, ok := s.peek(storetest.Key(i))
		if want := i >= 3; ok != want {
			t.Fatalf("%s present = %v, want %v", storetest.Key(i), ok, want)
		}
	}

	// The first eviction is logged at once, the next two wait for the minute.
	if logs.Len() != 1 {
		t.Fatalf("logged %d warnings, want 1", logs.Len())
	}
	if n := logs.All()[0].ContextMap()["evicted"]; n != int64(1) {
		t.Fatalf("first warning counts %v evictions, want 1", n)
	}
	clk.Advance(evictionLogEvery)
	storetest.Deliver(t, s, storetest.Key(13), storetest.TTL) // evicts key 3
	all := logs.TakeAll()
	if len(all) != 2 {
		t.Fatalf("logged %d warnings, want 2", len(all))
	}
	if all[1].Level != zapcore.WarnLevel || all[1].ContextMap()["evicted"] != int64(3) {
		t.Fatalf("second warning = %v %v, want Warn with evicted=3", all[1].Level, all[1].ContextMap())
	}
	if err := s.Close(); err != nil || logs.Len() != 0 {
		t.Fatalf("Destruct = %v and logged %d with nothing pending", err, logs.Len())
	}
}

func TestMemoryBoundKeepsInFlight(t *testing.T) {
	s, clk := newTestMemoryStore(10, nil)
	ctx := context.Background()
	held := map[string]string{}
	for i := range 5 {
		held[storetest.Key(i)] = storetest.MustClaim(t, s, storetest.Key(i), store.Claimed)
	}
	for i := 5; i < 10; i++ {
		storetest.Deliver(t, s, storetest.Key(i), storetest.TTL)
		clk.Advance(time.Millisecond)
	}
	// 10 more claims than fit: deliveries go, claims are never refused.
	for i := 10; i < 20; i++ {
		storetest.MustClaim(t, s, storetest.Key(i), store.Claimed)
	}
	for i := 5; i < 10; i++ {
		if _, ok := s.peek(storetest.Key(i)); ok {
			t.Fatalf("delivered %s kept while in-flight keys were over the bound", storetest.Key(i))
		}
	}
	if got := s.entries(t); got != 15 {
		t.Fatalf("store holds %d entries, want the 15 in-flight ones", got)
	}
	for k, tok := range held {
		storetest.MustClaim(t, s, k, store.InFlight)
		if err := s.Commit(ctx, k, tok, storetest.TTL); err != nil {
			t.Fatalf("Commit of in-flight %s after evictions: %v", k, err)
		}
	}
}

func TestMemoryBoundDropsExpiredBeforeLive(t *testing.T) {
	core, logs := observer.New(zapcore.WarnLevel)
	s, clk := newTestMemoryStore(10, zap.New(core))
	for i := range 5 {
		storetest.Deliver(t, s, storetest.Key(i), time.Second)
	}
	for i := 5; i < 10; i++ {
		storetest.Deliver(t, s, storetest.Key(i), storetest.TTL)
	}
	clk.Advance(2 * time.Second)
	// Five live keys plus five new ones fit: no live key may go.
	for i := 10; i < 15; i++ {
		storetest.MustClaim(t, s, storetest.Key(i), store.Claimed)
	}
	for i := 5; i < 10; i++ {
		if st, ok := s.peek(storetest.Key(i)); !ok || st != store.Delivered {
			t.Fatalf("live %s evicted while expired keys could go", storetest.Key(i))
		}
	}
	if logs.Len() != 0 {
		t.Fatalf("dropping expired keys was logged as eviction: %v", logs.All()[0].ContextMap())
	}
}

func TestMemoryExpiredEntriesAreFreed(t *testing.T) {
	s, clk := newTestMemoryStore(0, nil)
	ctx := context.Background()

	// store.Delivered keys leave through the commit queue.
	for i := range 1000 {
		storetest.Deliver(t, s, storetest.Key(i), time.Second)
	}
	clk.Advance(2 * time.Second)
	storetest.Deliver(t, s, "fresh", time.Second)
	if got := s.entries(t); got != 1 {
		t.Fatalf("%d entries after 1000 deliveries expired, want 1", got)
	}
	if q := s.order.n; q != 1 {
		t.Fatalf("commit queue holds %d, want 1", q)
	}

	// Claims never committed nor released leave through the shard sweep.
	for i := range 1000 {
		if st, _, err := s.Claim(ctx, "leak:"+strconv.Itoa(i), time.Second); err != nil || st != store.Claimed {
			t.Fatal(st, err)
		}
	}
	clk.Advance(2 * time.Second)
	for i := range 10000 {
		if st, _, err := s.Claim(ctx, "new:"+strconv.Itoa(i), time.Minute); err != nil || st != store.Claimed {
			t.Fatal(st, err)
		}
	}
	if got := s.entries(t); got != 10000 {
		t.Fatalf("%d entries, want the 10000 live claims only", got)
	}
}

// A key delivered, expired and claimed again must not be dropped when its
// old commit leaves the queue.
func TestMemoryReclaimedKeySurvivesItsOldCommit(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		pop  func(s *Dedup)
	}{
		{"trim", func(s *Dedup) { storetest.Deliver(t, s, "other", storetest.TTL) }},
		{"evict", func(s *Dedup) {
			s.SetMaxKeys(1)
			storetest.MustClaim(t, s, "other", store.Claimed)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, clk := newTestMemoryStore(0, nil)
			storetest.Deliver(t, s, "k", time.Second)
			clk.Advance(2 * time.Second)
			tok := storetest.MustClaim(t, s, "k", store.Claimed)
			tc.pop(s)
			if st, ok := s.peek("k"); !ok || st != store.InFlight {
				t.Fatalf("re-claimed key dropped with its old commit (%v, %v)", st, ok)
			}
			if err := s.Commit(ctx, "k", tok, storetest.TTL); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestMemoryRedeliveredKeySurvivesItsOldCommit(t *testing.T) {
	s, clk := newTestMemoryStore(0, nil)
	storetest.Deliver(t, s, "k", time.Second)
	clk.Advance(2 * time.Second)
	storetest.Deliver(t, s, "k", storetest.TTL) // its commit trims the old one
	if st, ok := s.peek("k"); !ok || st != store.Delivered {
		t.Fatalf("redelivered key dropped with its old commit (%v, %v)", st, ok)
	}
}

func TestMemoryTokenFromAnotherClaimIsRejected(t *testing.T) {
	s, _ := newTestMemoryStore(0, nil)
	ctx := context.Background()
	a := storetest.MustClaim(t, s, "a", store.Claimed)
	storetest.MustClaim(t, s, "b", store.Claimed)
	if err := s.Commit(ctx, "b", a, storetest.TTL); !errors.Is(err, store.ErrNotOwner) {
		t.Fatalf("Commit of b with a's token = %v", err)
	}
	if err := s.Release(ctx, "b", a); !errors.Is(err, store.ErrNotOwner) {
		t.Fatalf("Release of b with a's token = %v", err)
	}
	storetest.MustClaim(t, s, "b", store.InFlight)
}

func BenchmarkMemoryClaimCommit(b *testing.B) {
	s := NewDedup(defaultMaxKeys, nil)
	ctx := context.Background()
	var n atomic.Int64
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			k := storetest.Key(int(n.Add(1)))
			st, tok, err := s.Claim(ctx, k, time.Minute)
			if err != nil || st != store.Claimed {
				b.Fatal(st, err)
			}
			if err := s.Commit(ctx, k, tok, 14*24*time.Hour); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func TestMemoryBackend(t *testing.T) {
	storetest.RunBackend(t, func(t *testing.T, o journal.Options) store.Backend {
		b := New(0, o, store.Hooks{})
		t.Cleanup(func() { _ = b.Close() })
		return b
	})
}

// The size bound of the memory journal counts estimated bytes.
func TestMemoryJournalSizeBound(t *testing.T) {
	j := NewJournal(journal.Options{MaxSize: 64 << 10}, store.Hooks{})
	body := bytes.Repeat([]byte("x"), 1000)
	for i := range 1000 {
		storetest.Record(t, j, journal.Event{Kind: journal.KindCallback, Verified: true, ProjectID: "1", PaymentID: strconv.Itoa(i),
			EventKey: "k" + strconv.Itoa(i), Body: body})
		if j.size > 64<<10 {
			t.Fatalf("after %d entries the journal holds %d bytes, bound 64 KiB", i+1, j.size)
		}
	}
	evs := storetest.MustEvents(t, j, journal.EventFilter{Limit: 1000})
	if len(evs) < 40 || evs[0].PaymentID != "999" {
		t.Fatalf("kept %d entries, newest %s", len(evs), evs[0].PaymentID)
	}
	// What went took its payment and body along.
	oldest := evs[len(evs)-1].PaymentID
	if n, _ := strconv.Atoi(oldest); len(j.payments) != 1000-n || len(j.bodies) != 1000-n {
		t.Fatalf("%d payments and %d bodies for %d entries", len(j.payments), len(j.bodies), 1000-n)
	}
	// Dropping everything brings the estimate back to zero.
	j.SetOptions(journal.Options{MaxSize: 1})
	if j.size != 0 || len(j.payments) != 0 || len(j.bodies) != 0 {
		t.Fatalf("empty journal holds %d bytes, %d payments, %d bodies", j.size, len(j.payments), len(j.bodies))
	}
}

// Entries order by ID as the IDs compare, whatever their length.
func TestMemEventCompareID(t *testing.T) {
	ids := []string{"", "a", "ab", "ab\x00", "ab\x00\x00c", "0123456789abcdef", "0123456789abcdef0",
		"0123456789abcdef1", "0123456789abcdee9", "18a6b2c4d5e6f7a8", "18a6b2c4d5e6f7a8deadbeef", "18a6b2c4d5e6f7a8deadbeee"}
	var slab memSlab
	for _, a := range ids {
		for _, b := range ids {
			ma := newMemEvent(&slab, &journal.Event{ID: a}, nil)
			mb := newMemEvent(&slab, &journal.Event{ID: b}, nil)
			if got, want := compareID(ma, mb), strings.Compare(a, b); got != want {
				t.Errorf("compareID(%q, %q) = %d, want %d", a, b, got, want)
			}
		}
	}
}

func BenchmarkBackend(b *testing.B) {
	storetest.Bench(b, func(b *testing.B, o journal.Options) store.Backend { return New(0, o, store.Hooks{}) })
}
