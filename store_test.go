package ecommpay

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// storeSuite describes one Store implementation for the shared behaviour
// tests.
type storeSuite struct {
	// newStore returns an empty store; two calls may share state (redis).
	newStore func(t *testing.T) Store
	// short is a lease/ttl that the tests let run out.
	short time.Duration
	// elapse lets d of store time pass (fake clock or real sleep).
	elapse func(d time.Duration)
}

const (
	testLease = time.Minute
	testTTL   = 10 * time.Minute
)

func mustClaim(t *testing.T, s Store, key string, want ClaimState) string {
	t.Helper()
	got, token, err := s.Claim(context.Background(), key, testLease)
	if err != nil {
		t.Fatalf("Claim(%q): %v", key, err)
	}
	if got != want {
		t.Fatalf("Claim(%q) = %v, want %v", key, got, want)
	}
	if (token != "") != (want == Claimed) {
		t.Fatalf("Claim(%q) = %v with token %q", key, got, token)
	}
	return token
}

// waitClaimed polls Claim until it succeeds; real-time stores need a moment
// past the expiry. The bound keeps a broken store from hanging the test.
func waitClaimed(t *testing.T, s Store, key string) string {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		st, token, err := s.Claim(context.Background(), key, testLease)
		if err != nil {
			t.Fatalf("Claim(%q): %v", key, err)
		}
		if st == Claimed {
			return token
		}
		if time.Now().After(deadline) {
			t.Fatalf("Claim(%q) still %v after expiry", key, st)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func runStoreSuite(t *testing.T, ss storeSuite) {
	ctx := context.Background()

	t.Run("CommitThenDuplicateIsDelivered", func(t *testing.T) {
		s := ss.newStore(t)
		tok := mustClaim(t, s, "p1:a", Claimed)
		if err := s.Commit(ctx, "p1:a", tok, testTTL); err != nil {
			t.Fatal(err)
		}
		mustClaim(t, s, "p1:a", Delivered)
		mustClaim(t, s, "p1:a", Delivered)
		// Keys are independent.
		mustClaim(t, s, "p2:a", Claimed)
	})

	t.Run("ClaimWhileHeldIsInFlight", func(t *testing.T) {
		s := ss.newStore(t)
		tok := mustClaim(t, s, "k", Claimed)
		mustClaim(t, s, "k", InFlight)
		// The owner is unaffected by the refused claim.
		if err := s.Commit(ctx, "k", tok, testTTL); err != nil {
			t.Fatal(err)
		}
		mustClaim(t, s, "k", Delivered)
	})

	t.Run("ReleaseLetsRetryThrough", func(t *testing.T) {
		s := ss.newStore(t)
		tok1 := mustClaim(t, s, "k", Claimed)
		if err := s.Release(ctx, "k", tok1); err != nil {
			t.Fatal(err)
		}
		tok2 := mustClaim(t, s, "k", Claimed)
		if tok2 == tok1 {
			t.Fatal("a new claim reused the released token")
		}
		if err := s.Release(ctx, "k", tok1); !errors.Is(err, ErrNotOwner) {
			t.Fatalf("second Release with old token = %v, want ErrNotOwner", err)
		}
		mustClaim(t, s, "k", InFlight)
		if err := s.Commit(ctx, "k", tok2, testTTL); err != nil {
			t.Fatal(err)
		}
		mustClaim(t, s, "k", Delivered)
	})

	t.Run("LeaseExpiryAllowsNewClaim", func(t *testing.T) {
		s := ss.newStore(t)
		st, old, err := s.Claim(ctx, "k", ss.short)
		if err != nil || st != Claimed {
			t.Fatalf("Claim = %v, %v", st, err)
		}
		mustClaim(t, s, "k", InFlight)
		ss.elapse(ss.short + ss.short/4)
		tok := waitClaimed(t, s, "k")
		// The crashed owner wakes up: it must not touch the new claim.
		if err := s.Commit(ctx, "k", old, testTTL); !errors.Is(err, ErrNotOwner) {
			t.Fatalf("Commit after lease expiry = %v, want ErrNotOwner", err)
		}
		if err := s.Release(ctx, "k", old); !errors.Is(err, ErrNotOwner) {
			t.Fatalf("Release after lease expiry = %v, want ErrNotOwner", err)
		}
		mustClaim(t, s, "k", InFlight)
		if err := s.Commit(ctx, "k", tok, testTTL); err != nil {
			t.Fatal(err)
		}
		mustClaim(t, s, "k", Delivered)
	})

	t.Run("ExpiredLeaseCannotCommit", func(t *testing.T) {
		s := ss.newStore(t)
		st, tok, err := s.Claim(ctx, "k", ss.short)
		if err != nil || st != Claimed {
			t.Fatalf("Claim = %v, %v", st, err)
		}
		ss.elapse(ss.short + ss.short/4)
		// Nobody else claimed it, but the lease is gone all the same.
		if err := s.Commit(ctx, "k", tok, testTTL); !errors.Is(err, ErrNotOwner) {
			t.Fatalf("Commit of an expired lease = %v, want ErrNotOwner", err)
		}
		waitClaimed(t, s, "k")
	})

	t.Run("CommitTTLExpiry", func(t *testing.T) {
		s := ss.newStore(t)
		tok := mustClaim(t, s, "k", Claimed)
		if err := s.Commit(ctx, "k", tok, ss.short); err != nil {
			t.Fatal(err)
		}
		mustClaim(t, s, "k", Delivered)
		ss.elapse(ss.short + ss.short/4)
		waitClaimed(t, s, "k")
	})

	t.Run("WrongOrStaleTokenIsNotOwner", func(t *testing.T) {
		s := ss.newStore(t)
		tok := mustClaim(t, s, "k", Claimed)
		other := mustClaim(t, s, "other", Claimed)
		for _, bad := range []string{"", "bogus", "1", other, tok + "0"} {
			if err := s.Commit(ctx, "k", bad, testTTL); !errors.Is(err, ErrNotOwner) {
				t.Fatalf("Commit with token %q = %v, want ErrNotOwner", bad, err)
			}
			if err := s.Release(ctx, "k", bad); !errors.Is(err, ErrNotOwner) {
				t.Fatalf("Release with token %q = %v, want ErrNotOwner", bad, err)
			}
		}
		mustClaim(t, s, "k", InFlight)
		if err := s.Commit(ctx, "k", tok, testTTL); err != nil {
			t.Fatalf("owner's Commit after wrong tokens: %v", err)
		}
		// A spent token neither re-commits nor releases the delivered key.
		if err := s.Release(ctx, "k", tok); !errors.Is(err, ErrNotOwner) {
			t.Fatalf("Release after Commit = %v, want ErrNotOwner", err)
		}
		if err := s.Commit(ctx, "k", tok, testTTL); !errors.Is(err, ErrNotOwner) {
			t.Fatalf("second Commit = %v, want ErrNotOwner", err)
		}
		mustClaim(t, s, "k", Delivered)
	})

	t.Run("NonPositiveDurationsRejected", func(t *testing.T) {
		s := ss.newStore(t)
		if st, tok, err := s.Claim(ctx, "k", 0); err == nil || st == Claimed || tok != "" {
			t.Fatalf("Claim with zero lease = %v, %q, %v", st, tok, err)
		}
		tok := mustClaim(t, s, "k", Claimed)
		if err := s.Commit(ctx, "k", tok, 0); err == nil {
			t.Fatal("Commit with zero ttl succeeded")
		}
		mustClaim(t, s, "k", InFlight)
	})

	t.Run("ConcurrentClaimsExactlyOneWins", func(t *testing.T) {
		s := ss.newStore(t)
		// Several rounds, as a lost race shows up only now and then.
		for i := range 10 {
			claimRace(t, []Store{s}, "race:"+strconv.Itoa(i), 200)
		}
	})
}

// claimRace has n goroutines claim one key across stores and checks that
// exactly one wins and that, once it commits, everyone sees Delivered.
func claimRace(t *testing.T, stores []Store, key string, n int) {
	t.Helper()
	ctx := context.Background()
	var (
		wg      sync.WaitGroup
		start   = make(chan struct{})
		claimed atomic.Int32
		mu      sync.Mutex
		winner  Store
		token   string
		errs    = make(chan error, n)
	)
	for i := range n {
		s := stores[i%len(stores)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			st, tok, err := s.Claim(ctx, key, testLease)
			switch {
			case err != nil:
				errs <- err
			case st == Claimed:
				claimed.Add(1)
				mu.Lock()
				winner, token = s, tok
				mu.Unlock()
			case st != InFlight:
				errs <- fmt.Errorf("Claim = %v, want InFlight", st)
			}
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := claimed.Load(); got != 1 {
		t.Fatalf("%d of %d concurrent claims won, want exactly 1", got, n)
	}
	if err := winner.Commit(ctx, key, token, testTTL); err != nil {
		t.Fatal(err)
	}
	for _, s := range stores {
		mustClaim(t, s, key, Delivered)
	}
}

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

func newTestMemoryStore(maxKeys int, logger *zap.Logger) (*memoryStore, *fakeClock) {
	s := newMemoryStore(maxKeys, logger)
	clk := &fakeClock{t: s.epoch}
	s.now = clk.Now
	return s, clk
}

func TestMemoryStore(t *testing.T) {
	var clk *fakeClock
	runStoreSuite(t, storeSuite{
		newStore: func(t *testing.T) Store {
			var s *memoryStore
			s, clk = newTestMemoryStore(0, nil)
			return s
		},
		short:  time.Second,
		elapse: func(d time.Duration) { clk.Advance(d) },
	})
}

// peek reports a key's state without claiming it.
func (s *memoryStore) peek(key string) (st ClaimState, present bool) {
	h := hashKey(key)
	sh := s.shard(h)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	e, ok := sh.m[h]
	if !ok || e.exp <= s.clock() {
		return 0, false
	}
	if e.id == 0 {
		return Delivered, true
	}
	return InFlight, true
}

// entries counts map entries, live or expired, and checks the counter.
func (s *memoryStore) entries(t *testing.T) int {
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

func deliver(t *testing.T, s Store, key string, ttl time.Duration) {
	t.Helper()
	tok := mustClaim(t, s, key, Claimed)
	if err := s.Commit(context.Background(), key, tok, ttl); err != nil {
		t.Fatal(err)
	}
}

func key(i int) string { return "project:" + strconv.Itoa(i) }

func TestMemoryLeaseBoundary(t *testing.T) {
	s, clk := newTestMemoryStore(0, nil)
	ctx := context.Background()
	if st, _, _ := s.Claim(ctx, "k", time.Second); st != Claimed {
		t.Fatal(st)
	}
	clk.Advance(time.Second - time.Nanosecond)
	mustClaim(t, s, "k", InFlight)
	clk.Advance(time.Nanosecond)
	mustClaim(t, s, "k", Claimed)
}

func TestMemoryBoundEvictsOldestDelivered(t *testing.T) {
	core, logs := observer.New(zapcore.WarnLevel)
	s, clk := newTestMemoryStore(10, zap.New(core))

	for i := range 10 {
		deliver(t, s, key(i), testTTL)
		clk.Advance(time.Millisecond)
	}
	// Under (at) the bound nothing is dropped or logged.
	for i := range 10 {
		if st, ok := s.peek(key(i)); !ok || st != Delivered {
			t.Fatalf("%s dropped while the store was within its bound", key(i))
		}
	}
	if logs.Len() != 0 {
		t.Fatalf("logged %d entries before any eviction", logs.Len())
	}

	// Three new claims push out the three oldest deliveries, in commit order.
	for i := 10; i < 13; i++ {
		mustClaim(t, s, key(i), Claimed)
		if got := s.entries(t); got > 10 {
			t.Fatalf("store holds %d entries, bound is 10", got)
		}
	}
	for i := range 13 {
		_, ok := s.peek(key(i))
		if want := i >= 3; ok != want {
			t.Fatalf("%s present = %v, want %v", key(i), ok, want)
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
	deliver(t, s, key(13), testTTL) // evicts key 3
	all := logs.TakeAll()
	if len(all) != 2 {
		t.Fatalf("logged %d warnings, want 2", len(all))
	}
	if all[1].Level != zapcore.WarnLevel || all[1].ContextMap()["evicted"] != int64(3) {
		t.Fatalf("second warning = %v %v, want Warn with evicted=3", all[1].Level, all[1].ContextMap())
	}
	if err := s.Destruct(); err != nil || logs.Len() != 0 {
		t.Fatalf("Destruct = %v and logged %d with nothing pending", err, logs.Len())
	}
}

func TestMemoryBoundKeepsInFlight(t *testing.T) {
	s, clk := newTestMemoryStore(10, nil)
	ctx := context.Background()
	held := map[string]string{}
	for i := range 5 {
		held[key(i)] = mustClaim(t, s, key(i), Claimed)
	}
	for i := 5; i < 10; i++ {
		deliver(t, s, key(i), testTTL)
		clk.Advance(time.Millisecond)
	}
	// 10 more claims than fit: deliveries go, claims are never refused.
	for i := 10; i < 20; i++ {
		mustClaim(t, s, key(i), Claimed)
	}
	for i := 5; i < 10; i++ {
		if _, ok := s.peek(key(i)); ok {
			t.Fatalf("delivered %s kept while in-flight keys were over the bound", key(i))
		}
	}
	if got := s.entries(t); got != 15 {
		t.Fatalf("store holds %d entries, want the 15 in-flight ones", got)
	}
	for k, tok := range held {
		mustClaim(t, s, k, InFlight)
		if err := s.Commit(ctx, k, tok, testTTL); err != nil {
			t.Fatalf("Commit of in-flight %s after evictions: %v", k, err)
		}
	}
}

func TestMemoryBoundDropsExpiredBeforeLive(t *testing.T) {
	core, logs := observer.New(zapcore.WarnLevel)
	s, clk := newTestMemoryStore(10, zap.New(core))
	for i := range 5 {
		deliver(t, s, key(i), time.Second)
	}
	for i := 5; i < 10; i++ {
		deliver(t, s, key(i), testTTL)
	}
	clk.Advance(2 * time.Second)
	// Five live keys plus five new ones fit: no live key may go.
	for i := 10; i < 15; i++ {
		mustClaim(t, s, key(i), Claimed)
	}
	for i := 5; i < 10; i++ {
		if st, ok := s.peek(key(i)); !ok || st != Delivered {
			t.Fatalf("live %s evicted while expired keys could go", key(i))
		}
	}
	if logs.Len() != 0 {
		t.Fatalf("dropping expired keys was logged as eviction: %v", logs.All()[0].ContextMap())
	}
}

func TestMemoryExpiredEntriesAreFreed(t *testing.T) {
	s, clk := newTestMemoryStore(0, nil)
	ctx := context.Background()

	// Delivered keys leave through the commit queue.
	for i := range 1000 {
		deliver(t, s, key(i), time.Second)
	}
	clk.Advance(2 * time.Second)
	deliver(t, s, "fresh", time.Second)
	if got := s.entries(t); got != 1 {
		t.Fatalf("%d entries after 1000 deliveries expired, want 1", got)
	}
	if q := s.order.n; q != 1 {
		t.Fatalf("commit queue holds %d, want 1", q)
	}

	// Claims never committed nor released leave through the shard sweep.
	for i := range 1000 {
		if st, _, err := s.Claim(ctx, "leak:"+strconv.Itoa(i), time.Second); err != nil || st != Claimed {
			t.Fatal(st, err)
		}
	}
	clk.Advance(2 * time.Second)
	for i := range 10000 {
		if st, _, err := s.Claim(ctx, "new:"+strconv.Itoa(i), time.Minute); err != nil || st != Claimed {
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
		pop  func(s *memoryStore)
	}{
		{"trim", func(s *memoryStore) { deliver(t, s, "other", testTTL) }},
		{"evict", func(s *memoryStore) {
			s.setMaxKeys(1)
			mustClaim(t, s, "other", Claimed)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, clk := newTestMemoryStore(0, nil)
			deliver(t, s, "k", time.Second)
			clk.Advance(2 * time.Second)
			tok := mustClaim(t, s, "k", Claimed)
			tc.pop(s)
			if st, ok := s.peek("k"); !ok || st != InFlight {
				t.Fatalf("re-claimed key dropped with its old commit (%v, %v)", st, ok)
			}
			if err := s.Commit(ctx, "k", tok, testTTL); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestMemoryRedeliveredKeySurvivesItsOldCommit(t *testing.T) {
	s, clk := newTestMemoryStore(0, nil)
	deliver(t, s, "k", time.Second)
	clk.Advance(2 * time.Second)
	deliver(t, s, "k", testTTL) // its commit trims the old one
	if st, ok := s.peek("k"); !ok || st != Delivered {
		t.Fatalf("redelivered key dropped with its old commit (%v, %v)", st, ok)
	}
}

func TestMemoryTokenFromAnotherClaimIsRejected(t *testing.T) {
	s, _ := newTestMemoryStore(0, nil)
	ctx := context.Background()
	a := mustClaim(t, s, "a", Claimed)
	mustClaim(t, s, "b", Claimed)
	if err := s.Commit(ctx, "b", a, testTTL); !errors.Is(err, ErrNotOwner) {
		t.Fatalf("Commit of b with a's token = %v", err)
	}
	if err := s.Release(ctx, "b", a); !errors.Is(err, ErrNotOwner) {
		t.Fatalf("Release of b with a's token = %v", err)
	}
	mustClaim(t, s, "b", InFlight)
}

func TestAcquireMemoryBackendSurvivesReload(t *testing.T) {
	core, logs := observer.New(zapcore.InfoLevel)
	logger := zap.New(core)
	ctx := context.Background()

	old, releaseOld, err := acquireBackend(backendOptions{Kind: "memory", MaxKeys: 100}, logger)
	if err != nil {
		t.Fatal(err)
	}
	tok := mustClaim(t, old, "k", Claimed)

	// A reload provisions the new config before cleaning up the old one.
	cur, releaseCur, err := acquireBackend(backendOptions{Kind: "memory", MaxKeys: 100}, logger)
	if err != nil {
		t.Fatal(err)
	}
	if cur != old {
		t.Fatal("second acquire returned a different store")
	}
	if err := releaseOld(); err != nil {
		t.Fatal(err)
	}
	if err := releaseOld(); err != nil { // a repeated release is harmless
		t.Fatal(err)
	}
	if refs, ok := storePool.References("backend|memory"); !ok || refs != 1 {
		t.Fatalf("pool references = %d, %v; want 1", refs, ok)
	}
	mustClaim(t, cur, "k", InFlight)
	if err := cur.Commit(ctx, "k", tok, testTTL); err != nil {
		t.Fatal(err)
	}
	mustClaim(t, cur, "k", Delivered)
	if logs.Len() != 0 {
		t.Fatalf("same bound logged: %v", logs.All()[0].Message)
	}

	// A different bound is applied in place.
	again, releaseAgain, err := acquireBackend(backendOptions{Kind: "memory", MaxKeys: 200}, logger)
	if err != nil {
		t.Fatal(err)
	}
	if again != cur || cur.(*memoryBackend).maxKeys.Load() != 200 {
		t.Fatal("new bound not applied to the shared store")
	}
	if logs.FilterLevelExact(zapcore.InfoLevel).Len() != 1 {
		t.Fatalf("bound change logged %d times at Info, want 1", logs.Len())
	}
	mustClaim(t, again, "k", Delivered)

	if err := releaseAgain(); err != nil {
		t.Fatal(err)
	}
	if err := releaseCur(); err != nil {
		t.Fatal(err)
	}
	if _, ok := storePool.References("backend|memory"); ok {
		t.Fatal("store still pooled after the last release")
	}

	// The next acquire starts afresh.
	fresh, release, err := acquireBackend(backendOptions{Kind: "memory", MaxKeys: 0}, logger)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	if fresh == cur {
		t.Fatal("released store was reused")
	}
	mustClaim(t, fresh, "k", Claimed)
}

func BenchmarkMemoryClaimCommit(b *testing.B) {
	s := newMemoryStore(DefaultMemoryMaxKeys, nil)
	ctx := context.Background()
	var n atomic.Int64
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			k := key(int(n.Add(1)))
			st, tok, err := s.Claim(ctx, k, time.Minute)
			if err != nil || st != Claimed {
				b.Fatal(st, err)
			}
			if err := s.Commit(ctx, k, tok, 14*24*time.Hour); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func TestAcquireBackend(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	t.Setenv("XDG_DATA_HOME", dir)

	t.Run("LocalDefaultPathSharedAndReloaded", func(t *testing.T) {
		a, releaseA, err := acquireBackend(backendOptions{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		want := filepath.Join(dir, "caddy", "ecommpay", "ecommpay.db")
		if lb, ok := a.(*localBackend); !ok || lb.path != want {
			t.Fatalf("default backend %T at %v, want local at %s", a, a, want)
		}
		tok := mustClaim(t, a, "k", Claimed)
		// A reload acquires before it releases; the same file by its
		// relative name is the same backend.
		rel, err := filepath.Rel(mustGetwd(t), want)
		if err != nil {
			t.Fatal(err)
		}
		b, releaseB, err := acquireBackend(backendOptions{Kind: "local", Path: rel,
			Journal: journalOptions{MaxAge: time.Hour}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if b != a {
			t.Fatal("the same file gave two backends")
		}
		if got := b.(*localBackend).options().MaxAge; got != time.Hour {
			t.Fatalf("reload's MaxAge not applied: %v", got)
		}
		if err := releaseA(); err != nil {
			t.Fatal(err)
		}
		_ = releaseA()
		mustClaim(t, b, "k", InFlight)
		if err := b.Commit(ctx, "k", tok, testTTL); err != nil {
			t.Fatal(err)
		}
		if err := releaseB(); err != nil {
			t.Fatal(err)
		}
		// The last release closed the file: a new acquire reopens it.
		c, releaseC, err := acquireBackend(backendOptions{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer releaseC()
		if c == a {
			t.Fatal("a released backend was reused")
		}
		mustClaim(t, c, "k", Delivered)
	})

	t.Run("LocalPathsApart", func(t *testing.T) {
		a, ra, err := acquireBackend(backendOptions{Path: filepath.Join(dir, "a.db")}, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer ra()
		b, rb, err := acquireBackend(backendOptions{Path: filepath.Join(dir, "b.db")}, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer rb()
		deliver(t, a, "k", testTTL)
		mustClaim(t, b, "k", Claimed)
	})

	t.Run("MemorySharedWithBoundsInPlace", func(t *testing.T) {
		a, ra, err := acquireBackend(backendOptions{Kind: "memory", MaxKeys: 100}, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, rb, err := acquireBackend(backendOptions{Kind: "memory", MaxKeys: 200,
			Journal: journalOptions{NoBodies: true}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		mb := a.(*memoryBackend)
		if b != a || mb.maxKeys.Load() != 200 || !mb.memoryJournal.opts.NoBodies {
			t.Fatal("memory backend not shared or its bounds not applied")
		}
		_ = ra()
		_ = rb()
		c, rc, err := acquireBackend(backendOptions{Kind: "memory"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer rc()
		if c == a {
			t.Fatal("a released memory backend was reused")
		}
	})

	t.Run("Errors", func(t *testing.T) {
		if _, _, err := acquireBackend(backendOptions{Kind: "bbolt"}, nil); err == nil {
			t.Fatal("unknown kind accepted")
		}
		if _, _, err := acquireBackend(backendOptions{Kind: "redis", RedisURL: "redis://localhost/x"}, nil); err == nil {
			t.Fatal("a bad redis URL gave no error")
		}
		if _, ok := storePool.References("backend|redis|redis://localhost/x"); ok {
			t.Fatal("a failed construction stayed pooled")
		}
	})
}

func mustGetwd(t *testing.T) string {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	return wd
}

// BenchmarkBackend measures a delivery (Claim then Commit of a new key) and
// a journal Record per backend.
func BenchmarkBackend(b *testing.B) {
	for _, kind := range []string{"memory", "local"} {
		open := func(b *testing.B, o journalOptions) backend {
			if kind == "memory" {
				return newMemoryBackend(0, o, nil)
			}
			lb, err := openLocalBackend(filepath.Join(b.TempDir(), "ecommpay.db"), 0, o, nil)
			if err != nil {
				b.Fatal(err)
			}
			return lb
		}
		b.Run(kind+"/ClaimCommit", func(b *testing.B) {
			be := open(b, journalOptions{})
			defer destructible(be).Destruct()
			ctx := context.Background()
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				k := key(i)
				st, tok, err := be.Claim(ctx, k, time.Minute)
				if err != nil || st != Claimed {
					b.Fatal(st, err)
				}
				if err := be.Commit(ctx, k, tok, 14*24*time.Hour); err != nil {
					b.Fatal(err)
				}
			}
			waitWritten(b, be)
		})
		b.Run(kind+"/Record", func(b *testing.B) {
			be := open(b, journalOptions{})
			defer destructible(be).Destruct()
			ctx := context.Background()
			body := bytes.Repeat([]byte("x"), 1000)
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				if err := be.Record(ctx, journalEvent{Kind: kindCallback, Verified: true, ProjectID: "1",
					PaymentID: strconv.Itoa(i % 1000), EventKey: "k" + strconv.Itoa(i), Body: body,
					PaymentStatus: "success", Result: "forwarded"}); err != nil {
					b.Fatal(err)
				}
			}
			waitWritten(b, be)
		})
		// A full journal prunes an entry for each one recorded.
		b.Run(kind+"/RecordFull", func(b *testing.B) {
			be := open(b, journalOptions{MaxSize: 4 << 20})
			defer destructible(be).Destruct()
			ctx := context.Background()
			body := bytes.Repeat([]byte("x"), 1000)
			rec := func(i int) {
				if err := be.Record(ctx, journalEvent{Kind: kindCallback, Verified: true, ProjectID: "1",
					PaymentID: strconv.Itoa(i % 1000), EventKey: "k" + strconv.Itoa(i), Body: body,
					PaymentStatus: "success", Result: "forwarded"}); err != nil {
					b.Fatal(err)
				}
			}
			for i := range 5000 { // fill it
				rec(-i)
			}
			waitWritten(b, be)
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				rec(i + 1)
			}
			waitWritten(b, be)
		})
	}
}

// waitWritten counts the disk writes in a local benchmark's figure: Commit
// and Record only queue them.
func waitWritten(b *testing.B, be backend) {
	if lb, ok := be.(*localBackend); ok {
		if err := lb.flushWait(context.Background()); err != nil {
			b.Fatal(err)
		}
	}
}

// Handlers of one config that share a store and set different journal
// settings are refused at load, naming both; one without settings takes
// the other's, whichever is provisioned first.
func TestJournalSettingsAgreeAcrossHandlers(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ecommpay.db")
	site := func(callbackJournal, consoleJournal string) []byte {
		return []byte(`{
	admin off
}
:0 {
	handle_path /console/* {
		ecommpay console {
			store local ` + path + `
			` + consoleJournal + `
		}
	}
	handle /callback {
		ecommpay callback {
			project 1 secret
			store local ` + path + `
			` + callbackJournal + `
		}
		respond 200
	}
}`)
	}
	validate := func(body []byte) error {
		var cfg caddy.Config
		if err := json.Unmarshal(adapt(t, body), &cfg); err != nil {
			t.Fatal(err)
		}
		return caddy.Validate(&cfg)
	}
	err := validate(site("journal {\n max_age 3s\n}", "journal {\n max_age 1h\n}"))
	if err == nil || !strings.Contains(err.Error(), "disagree on its journal") ||
		!strings.Contains(err.Error(), "max_age 3s") || !strings.Contains(err.Error(), "max_age 1h0m0s") ||
		!strings.Contains(err.Error(), "the console handler") || !strings.Contains(err.Error(), "the callback handler") {
		t.Fatalf("conflicting journal blocks: %v", err)
	}
	for _, ok := range [][2]string{
		{"journal {\n max_age 3s\n}", ""},
		{"", "journal {\n max_age 3s\n}"},
		{"journal {\n max_age 3s\n}", "journal {\n max_age 3s\n}"},
		{"", ""},
	} {
		if err := validate(site(ok[0], ok[1])); err != nil {
			t.Fatalf("callback %q, console %q: %v", ok[0], ok[1], err)
		}
	}
	// The setting reaches the shared store whichever handler carries it.
	for _, c := range [][2]string{{"journal {\n max_age 3s\n}", ""}, {"", "journal {\n max_age 3s\n}"}} {
		if err := validate(site(c[0], c[1])); err != nil {
			t.Fatal(err)
		}
		journalChoices.Lock()
		got := journalChoices.m["backend|local|"+path].opts.MaxAge
		journalChoices.Unlock()
		if got != 3*time.Second {
			t.Fatalf("callback %q, console %q: the store got max_age %v", c[0], c[1], got)
		}
	}
}
