package ecommpay

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// testRedisURL returns ECOMMPAY_TEST_REDIS_URL, or starts a throwaway
// redis-server on a free loopback port that is killed when tb ends. Without
// redis-server the test is skipped, except under CI=true where it fails.
func testRedisURL(tb testing.TB) string {
	tb.Helper()
	if u := os.Getenv("ECOMMPAY_TEST_REDIS_URL"); u != "" {
		return u
	}
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		msg := "redis-server not in PATH and ECOMMPAY_TEST_REDIS_URL unset: " +
			"install redis-server or point ECOMMPAY_TEST_REDIS_URL at a Redis"
		if os.Getenv("CI") == "true" {
			tb.Fatal(msg)
		}
		tb.Skip("skipping Redis tests: " + msg)
	}
	// The free port can be taken before redis binds it; try a few.
	var lastOut string
	for range 3 {
		if u, out, ok := startRedis(tb, bin); ok {
			return u
		} else {
			lastOut = out
		}
	}
	tb.Fatalf("redis-server did not start:\n%s", lastOut)
	return ""
}

func startRedis(tb testing.TB, bin string) (url, output string, ok bool) {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	ln.Close()

	var out bytes.Buffer
	cmd := exec.Command(bin, "--port", port, "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", tb.TempDir(), "--loglevel", "warning")
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	stop := func() {
		cmd.Process.Kill()
		<-exited
	}

	url = "redis://127.0.0.1:" + port + "/0"
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:" + port, MaxRetries: -1})
	defer c.Close()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		select {
		case <-exited:
			return "", out.String(), false
		default:
		}
		if c.Ping(context.Background()).Err() == nil {
			tb.Cleanup(stop)
			return url, "", true
		}
		time.Sleep(10 * time.Millisecond)
	}
	stop()
	return "", out.String(), false
}

// newTestRedisStore returns a store on url under a prefix of its own, so
// tests never see each other's keys, and deletes those keys afterwards.
func newTestRedisStore(tb testing.TB, url, prefix string) *redisStore {
	tb.Helper()
	s, err := newRedisStore(url, prefix)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		ctx := context.Background()
		iter := s.client.Scan(ctx, 0, prefix+"*", 100).Iterator()
		for iter.Next(ctx) {
			s.client.Del(ctx, iter.Val())
		}
		s.Destruct()
	})
	return s
}

func testPrefix() string { return "ecommpay-test:" + rand.Text() + ":" }

func TestRedisStore(t *testing.T) {
	url := testRedisURL(t)
	runStoreSuite(t, storeSuite{
		newStore: func(t *testing.T) Store { return newTestRedisStore(t, url, testPrefix()) },
		short:    200 * time.Millisecond,
		elapse:   time.Sleep,
	})
}

func TestRedisTwoInstancesOneWinner(t *testing.T) {
	url := testRedisURL(t)
	prefix := testPrefix()
	a := newTestRedisStore(t, url, prefix)
	b := newTestRedisStore(t, url, prefix)
	if a.client == b.client {
		t.Fatal("instances share a client")
	}
	claimRace(t, []Store{a, b}, "race", 200)

	// The claim lives in Redis, so either instance can finish it.
	ctx := context.Background()
	tok := mustClaim(t, a, "handover", Claimed)
	mustClaim(t, b, "handover", InFlight)
	if err := b.Commit(ctx, "handover", tok, testTTL); err != nil {
		t.Fatal(err)
	}
	mustClaim(t, a, "handover", Delivered)
}

func TestRedisKeyLayout(t *testing.T) {
	url := testRedisURL(t)
	prefix := testPrefix()
	s := newTestRedisStore(t, url, prefix)
	ctx := context.Background()
	raw := s.client

	tok := mustClaim(t, s, "p:k", Claimed)
	if v := raw.Get(ctx, prefix+"p:k").Val(); v != "i:"+tok {
		t.Fatalf("in-flight value = %q, want %q", v, "i:"+tok)
	}
	if ttl := raw.PTTL(ctx, prefix+"p:k").Val(); ttl <= testLease-5*time.Second || ttl > testLease {
		t.Fatalf("in-flight PTTL = %v, want about %v", ttl, testLease)
	}
	if err := s.Commit(ctx, "p:k", tok, testTTL); err != nil {
		t.Fatal(err)
	}
	if v := raw.Get(ctx, prefix+"p:k").Val(); v != "d" {
		t.Fatalf("delivered value = %q, want \"d\"", v)
	}
	if ttl := raw.PTTL(ctx, prefix+"p:k").Val(); ttl <= testTTL-5*time.Second || ttl > testTTL {
		t.Fatalf("delivered PTTL = %v, want about %v", ttl, testTTL)
	}

	tok = mustClaim(t, s, "p:r", Claimed)
	if err := s.Release(ctx, "p:r", tok); err != nil {
		t.Fatal(err)
	}
	if n := raw.Exists(ctx, prefix+"p:r").Val(); n != 0 {
		t.Fatal("released key still exists")
	}

	// The default prefix.
	d := newTestRedisStore(t, url, "")
	if d.prefix != DefaultRedisPrefix || DefaultRedisPrefix != "ecommpay:dedupe:" {
		t.Fatalf("default prefix = %q", d.prefix)
	}
}

// closedPort returns a loopback address nothing listens on.
func closedPort(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func TestRedisUnreachableFailsFast(t *testing.T) {
	s, err := newRedisStore("redis://"+closedPort(t)+"/0", "")
	if err != nil {
		t.Fatalf("construction needed the network: %v", err)
	}
	defer s.Destruct()
	ctx := context.Background()

	start := time.Now()
	st, tok, err := s.Claim(ctx, "k", testLease)
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("Claim took %v against an unreachable Redis", took)
	}
	if err == nil || st == Claimed || tok != "" {
		t.Fatalf("Claim = %v, %q, %v; want an error and no claim", st, tok, err)
	}
	if err := s.Commit(ctx, "k", "t", testTTL); err == nil || errors.Is(err, ErrNotOwner) {
		t.Fatalf("Commit = %v, want a connection error", err)
	}
	if err := s.Release(ctx, "k", "t"); err == nil || errors.Is(err, ErrNotOwner) {
		t.Fatalf("Release = %v, want a connection error", err)
	}
}

func TestRedisBadURL(t *testing.T) {
	for _, u := range []string{
		"http://127.0.0.1:6379",
		"redis://:s3cret@127.0.0.1:6379/notadb",
		"redis://:s3cret@127.0.0.1:6379/0?bogus=1",
		"redis://:s3cret@[::1",
	} {
		_, err := newRedisStore(u, "")
		if err == nil {
			t.Errorf("%s accepted", u)
		} else if strings.Contains(err.Error(), "s3cret") {
			t.Errorf("error reveals the password: %v", err)
		}
	}
}

func TestAcquireRedisStore(t *testing.T) {
	url := "redis://" + closedPort(t) + "/0" // pooling needs no server
	a, releaseA, err := acquireStore("redis", url, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, releaseB, err := acquireStore("redis", url, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if a != b {
		t.Fatal("same URL gave two stores")
	}
	if err := releaseA(); err != nil {
		t.Fatal(err)
	}
	if err := releaseB(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := a.Claim(context.Background(), "k", testLease); !errors.Is(err, redis.ErrClosed) {
		t.Fatalf("Claim after the last release = %v, want a closed client", err)
	}

	if _, _, err := acquireStore("redis", "redis://h/x", 0, nil); err == nil {
		t.Fatal("bad URL accepted")
	}
	if _, ok := storePool.References("redis|redis://h/x"); ok {
		t.Fatal("failed construction left a pool entry")
	}
}

func BenchmarkRedisClaimCommit(b *testing.B) {
	s := newTestRedisStore(b, testRedisURL(b), testPrefix())
	ctx := context.Background()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		claimCommit(b, s, ctx, key(i))
	}
}

func BenchmarkRedisClaimCommitParallel(b *testing.B) {
	s := newTestRedisStore(b, testRedisURL(b), testPrefix())
	ctx := context.Background()
	var n atomic.Int64
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			claimCommit(b, s, ctx, key(int(n.Add(1))))
		}
	})
}

func claimCommit(b *testing.B, s Store, ctx context.Context, k string) {
	st, tok, err := s.Claim(ctx, k, time.Minute)
	if err != nil || st != Claimed {
		b.Fatal(st, err)
	}
	if err := s.Commit(ctx, k, tok, time.Minute); err != nil {
		b.Fatal(err)
	}
}
