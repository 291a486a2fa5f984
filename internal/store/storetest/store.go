// Package storetest is the behaviour suite that every backend passes: the
// de-dup contract (RunStore) and, for backends of de-dup state and journal
// together, every journal query and bound (RunBackend), with the helpers
// that backend packages' own tests share.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/store"
)

// StoreSuite describes one store.Store implementation for RunStore.
type StoreSuite struct {
	// New returns an empty store; two calls may share state (redis).
	New func(t *testing.T) store.Store
	// Short is a lease/ttl that the tests let run out.
	Short time.Duration
	// Elapse lets d of store time pass (fake clock or real sleep).
	Elapse func(d time.Duration)
}

// Lease and TTL are the suite's claim lease and delivered TTL.
const (
	Lease = time.Minute
	TTL   = 10 * time.Minute
)

// MustClaim claims key and fails t unless the answer is want; it returns
// the token.
func MustClaim(t *testing.T, s store.Store, key string, want store.ClaimState) string {
	t.Helper()
	got, token, err := s.Claim(context.Background(), key, Lease)
	if err != nil {
		t.Fatalf("Claim(%q): %v", key, err)
	}
	if got != want {
		t.Fatalf("Claim(%q) = %v, want %v", key, got, want)
	}
	if (token != "") != (want == store.Claimed) {
		t.Fatalf("Claim(%q) = %v with token %q", key, got, token)
	}
	return token
}

// waitClaimed polls Claim until it succeeds; real-time stores need a moment
// past the expiry. The bound keeps a broken store from hanging the test.
func waitClaimed(t *testing.T, s store.Store, key string) string {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		st, token, err := s.Claim(context.Background(), key, Lease)
		if err != nil {
			t.Fatalf("Claim(%q): %v", key, err)
		}
		if st == store.Claimed {
			return token
		}
		if time.Now().After(deadline) {
			t.Fatalf("Claim(%q) still %v after expiry", key, st)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// RunStore runs the de-dup contract against ss.
func RunStore(t *testing.T, ss StoreSuite) {
	ctx := context.Background()

	t.Run("CommitThenDuplicateIsDelivered", func(t *testing.T) {
		s := ss.New(t)
		tok := MustClaim(t, s, "p1:a", store.Claimed)
		if err := s.Commit(ctx, "p1:a", tok, TTL); err != nil {
			t.Fatal(err)
		}
		MustClaim(t, s, "p1:a", store.Delivered)
		MustClaim(t, s, "p1:a", store.Delivered)
		// Keys are independent.
		MustClaim(t, s, "p2:a", store.Claimed)
	})

	t.Run("ClaimWhileHeldIsInFlight", func(t *testing.T) {
		s := ss.New(t)
		tok := MustClaim(t, s, "k", store.Claimed)
		MustClaim(t, s, "k", store.InFlight)
		// The owner is unaffected by the refused claim.
		if err := s.Commit(ctx, "k", tok, TTL); err != nil {
			t.Fatal(err)
		}
		MustClaim(t, s, "k", store.Delivered)
	})

	t.Run("ReleaseLetsRetryThrough", func(t *testing.T) {
		s := ss.New(t)
		tok1 := MustClaim(t, s, "k", store.Claimed)
		if err := s.Release(ctx, "k", tok1); err != nil {
			t.Fatal(err)
		}
		tok2 := MustClaim(t, s, "k", store.Claimed)
		if tok2 == tok1 {
			t.Fatal("a new claim reused the released token")
		}
		if err := s.Release(ctx, "k", tok1); !errors.Is(err, store.ErrNotOwner) {
			t.Fatalf("second Release with old token = %v, want ErrNotOwner", err)
		}
		MustClaim(t, s, "k", store.InFlight)
		if err := s.Commit(ctx, "k", tok2, TTL); err != nil {
			t.Fatal(err)
		}
		MustClaim(t, s, "k", store.Delivered)
	})

	t.Run("LeaseExpiryAllowsNewClaim", func(t *testing.T) {
		s := ss.New(t)
		st, old, err := s.Claim(ctx, "k", ss.Short)
		if err != nil || st != store.Claimed {
			t.Fatalf("Claim = %v, %v", st, err)
		}
		MustClaim(t, s, "k", store.InFlight)
		ss.Elapse(ss.Short + ss.Short/4)
		tok := waitClaimed(t, s, "k")
		// The crashed owner wakes up: it must not touch the new claim.
		if err := s.Commit(ctx, "k", old, TTL); !errors.Is(err, store.ErrNotOwner) {
			t.Fatalf("Commit after lease expiry = %v, want ErrNotOwner", err)
		}
		if err := s.Release(ctx, "k", old); !errors.Is(err, store.ErrNotOwner) {
			t.Fatalf("Release after lease expiry = %v, want ErrNotOwner", err)
		}
		MustClaim(t, s, "k", store.InFlight)
		if err := s.Commit(ctx, "k", tok, TTL); err != nil {
			t.Fatal(err)
		}
		MustClaim(t, s, "k", store.Delivered)
	})

	t.Run("ExpiredLeaseCannotCommit", func(t *testing.T) {
		s := ss.New(t)
		st, tok, err := s.Claim(ctx, "k", ss.Short)
		if err != nil || st != store.Claimed {
			t.Fatalf("Claim = %v, %v", st, err)
		}
		ss.Elapse(ss.Short + ss.Short/4)
		// Nobody else claimed it, but the lease is gone all the same.
		if err := s.Commit(ctx, "k", tok, TTL); !errors.Is(err, store.ErrNotOwner) {
			t.Fatalf("Commit of an expired lease = %v, want ErrNotOwner", err)
		}
		waitClaimed(t, s, "k")
	})

	t.Run("CommitTTLExpiry", func(t *testing.T) {
		s := ss.New(t)
		tok := MustClaim(t, s, "k", store.Claimed)
		if err := s.Commit(ctx, "k", tok, ss.Short); err != nil {
			t.Fatal(err)
		}
		MustClaim(t, s, "k", store.Delivered)
		ss.Elapse(ss.Short + ss.Short/4)
		waitClaimed(t, s, "k")
	})

	t.Run("WrongOrStaleTokenIsNotOwner", func(t *testing.T) {
		s := ss.New(t)
		tok := MustClaim(t, s, "k", store.Claimed)
		other := MustClaim(t, s, "other", store.Claimed)
		for _, bad := range []string{"", "bogus", "1", other, tok + "0"} {
			if err := s.Commit(ctx, "k", bad, TTL); !errors.Is(err, store.ErrNotOwner) {
				t.Fatalf("Commit with token %q = %v, want ErrNotOwner", bad, err)
			}
			if err := s.Release(ctx, "k", bad); !errors.Is(err, store.ErrNotOwner) {
				t.Fatalf("Release with token %q = %v, want ErrNotOwner", bad, err)
			}
		}
		MustClaim(t, s, "k", store.InFlight)
		if err := s.Commit(ctx, "k", tok, TTL); err != nil {
			t.Fatalf("owner's Commit after wrong tokens: %v", err)
		}
		// A spent token neither re-commits nor releases the delivered key.
		if err := s.Release(ctx, "k", tok); !errors.Is(err, store.ErrNotOwner) {
			t.Fatalf("Release after Commit = %v, want ErrNotOwner", err)
		}
		if err := s.Commit(ctx, "k", tok, TTL); !errors.Is(err, store.ErrNotOwner) {
			t.Fatalf("second Commit = %v, want ErrNotOwner", err)
		}
		MustClaim(t, s, "k", store.Delivered)
	})

	t.Run("NonPositiveDurationsRejected", func(t *testing.T) {
		s := ss.New(t)
		if st, tok, err := s.Claim(ctx, "k", 0); err == nil || st == store.Claimed || tok != "" {
			t.Fatalf("Claim with zero lease = %v, %q, %v", st, tok, err)
		}
		tok := MustClaim(t, s, "k", store.Claimed)
		if err := s.Commit(ctx, "k", tok, 0); err == nil {
			t.Fatal("Commit with zero ttl succeeded")
		}
		MustClaim(t, s, "k", store.InFlight)
	})

	t.Run("ConcurrentClaimsExactlyOneWins", func(t *testing.T) {
		s := ss.New(t)
		// Several rounds, as a lost race shows up only now and then.
		for i := range 10 {
			ClaimRace(t, []store.Store{s}, "race:"+strconv.Itoa(i), 200)
		}
	})
}

// ClaimRace has n goroutines claim one key across stores and checks that
// exactly one wins and that, once it commits, everyone sees store.Delivered.
func ClaimRace(t *testing.T, stores []store.Store, key string, n int) {
	t.Helper()
	ctx := context.Background()
	var (
		wg      sync.WaitGroup
		start   = make(chan struct{})
		claimed atomic.Int32
		mu      sync.Mutex
		winner  store.Store
		token   string
		errs    = make(chan error, n)
	)
	for i := range n {
		s := stores[i%len(stores)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			st, tok, err := s.Claim(ctx, key, Lease)
			switch {
			case err != nil:
				errs <- err
			case st == store.Claimed:
				claimed.Add(1)
				mu.Lock()
				winner, token = s, tok
				mu.Unlock()
			case st != store.InFlight:
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
	if err := winner.Commit(ctx, key, token, TTL); err != nil {
		t.Fatal(err)
	}
	for _, s := range stores {
		MustClaim(t, s, key, store.Delivered)
	}
}

// Deliver claims and commits key for ttl.
func Deliver(t *testing.T, s store.Store, key string, ttl time.Duration) {
	t.Helper()
	tok := MustClaim(t, s, key, store.Claimed)
	if err := s.Commit(context.Background(), key, tok, ttl); err != nil {
		t.Fatal(err)
	}
}

// key is the i-th test key.
func Key(i int) string { return "project:" + strconv.Itoa(i) }
