package redisstore

import (
	"bytes"
	"context"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/journal"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/redistest"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/store"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/store/storetest"
	"github.com/redis/go-redis/v9"
)

// openRedisBackend returns a store.Backend on url under key prefixes of its
// own, whose keys are deleted when t ends. Its read and write timeouts are
// 10s, not 2s, so that a loaded test machine does not fail it.
func openRedisBackend(tb testing.TB, url string, o journal.Options) *Backend {
	tb.Helper()
	prefix := testPrefix()
	sep := "?"
	if strings.Contains(url, "?") {
		sep = "&"
	}
	b, err := New(url+sep+"read_timeout=10s&write_timeout=10s", prefix+"d:", prefix+"j:", o, store.Hooks{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		redistest.DeleteKeys(b.client, prefix)
		b.Close()
	})
	return b
}

func TestRedisBackend(t *testing.T) {
	url := redistest.URL(t)
	storetest.RunBackend(t, func(t *testing.T, o journal.Options) store.Backend { return openRedisBackend(t, url, o) })
}

func TestRedisClusterBackend(t *testing.T) {
	c := redistest.StartCluster(t)
	b := openRedisBackend(t, c.URL, journal.Options{})
	if _, ok := b.client.(*redis.ClusterClient); !ok {
		t.Fatalf("%s gave a %T", c.URL, b.client)
	}
	storetest.RunBackend(t, func(t *testing.T, o journal.Options) store.Backend { return openRedisBackend(t, c.URL, o) })

	// The suite's payments are spread over the masters.
	t.Run("Spread", func(t *testing.T) {
		b := openRedisBackend(t, c.URL, journal.Options{})
		ctx := context.Background()
		for i := range 30 {
			storetest.Record(t, b, journal.Event{Kind: journal.KindCallback, Verified: true, ProjectID: "1", PaymentID: "s" + strconv.Itoa(i),
				EventKey: "k" + strconv.Itoa(i), Body: []byte("x"), Result: "forwarded"})
		}
		var mu sync.Mutex
		perNode := map[string]int{}
		b.client.(*redis.ClusterClient).ForEachMaster(ctx, func(ctx context.Context, n *redis.Client) error {
			keys, err := n.Keys(ctx, b.jp+"{*").Result()
			mu.Lock()
			perNode[n.Options().Addr] = len(keys)
			mu.Unlock()
			return err
		})
		for addr, n := range perNode {
			if n == 0 {
				t.Errorf("no payment keys on %s: %v", addr, perNode)
			}
		}
	})
}

// A payment's keys share a slot whatever its project and payment IDs hold.
func TestRedisPaymentKeysOneSlot(t *testing.T) {
	b, err := New("redis://127.0.0.1:1/0", "", defaultJournalPrefix, journal.Options{}, store.Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	for _, id := range [][2]string{{"10", "p1"}, {"}", "x"}, {"{", "}"}, {"a:b", "c"}, {"a", "b:c"}, {"", ""}, {"%7D", "}{"}} {
		v, ev := b.payKeys(payMember(id[0], id[1]))
		if redisSlot(v) != redisSlot(ev) {
			t.Errorf("%q: %s and %s in slots %d and %d", id, v, ev, redisSlot(v), redisSlot(ev))
		}
		if !strings.HasPrefix(v, defaultJournalPrefix+"{") {
			t.Errorf("%q: view key %s", id, v)
		}
	}
	if payMember("a:b", "c") == payMember("a", "b:c") {
		t.Error("two payments share a name")
	}
}

// redisSlot is Redis Cluster's key slot: CRC16 of the hash tag, or of the
// key when it has none.
func redisSlot(key string) int {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			key = key[i+1 : i+1+j]
		}
	}
	var crc uint16
	for _, c := range []byte(key) {
		crc ^= uint16(c) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return int(crc % 16384)
}

func TestRedisSlotAgreesWithRedis(t *testing.T) {
	s := newTestRedisStore(t, redistest.URL(t), testPrefix())
	for _, k := range []string{"foo", "ecommpay:journal:{10:p1}:v", "a{}b", "{x}y", "x{y"} {
		// CLUSTER KEYSLOT works without cluster mode too.
		got, err := s.client.ClusterKeySlot(context.Background(), k).Result()
		if err != nil {
			t.Skipf("CLUSTER KEYSLOT: %v", err)
		}
		if int(got) != redisSlot(k) {
			t.Errorf("slot of %q: redis %d, ours %d", k, got, redisSlot(k))
		}
	}
}

// The size bound counts approximate bytes and prunes the oldest entries
// with their payments and bodies.
func TestRedisJournalSizeBound(t *testing.T) {
	const bound = 128 << 10
	url := redistest.URL(t)
	b := openRedisBackend(t, url, journal.Options{MaxSize: bound})
	ctx := context.Background()
	body := bytes.Repeat([]byte("x"), 1000)
	base := time.Now().Add(-time.Hour)
	for i := range 300 {
		storetest.Record(t, b, journal.Event{Kind: journal.KindCallback, Verified: true, ProjectID: "1", PaymentID: strconv.Itoa(i),
			Time: base.Add(time.Duration(i) * time.Second), EventKey: "k" + strconv.Itoa(i), Body: body, Result: "forwarded"})
	}
	// Records woke the pruner: let it, or this test, finish. Pruning stops
	// at nine tenths of the bound and does not start again below it.
	eventuallyRedis(t, func() bool {
		if err := b.pruneOnce(ctx); err != nil {
			t.Fatal(err)
		}
		size, _ := b.client.Get(ctx, b.key("bytes")).Int64()
		return size <= bound*9/10 && b.client.Exists(ctx, b.key("prune")).Val() == 0
	})
	evs := storetest.MustEvents(t, b, journal.EventFilter{Limit: 1000})
	// An entry with its payment and body counts about 3.4 KB: the journal
	// keeps 35 or so.
	if len(evs) < 25 || len(evs) > 45 || evs[0].PaymentID != "299" {
		t.Fatalf("kept %d entries, newest %s", len(evs), evs[0].PaymentID)
	}
	oldest, _ := strconv.Atoi(evs[len(evs)-1].PaymentID)
	if _, err := b.Timeline(ctx, "1", strconv.Itoa(oldest-1)); err != journal.ErrNotFound {
		t.Fatalf("the payment of a pruned entry: %v", err)
	}
	if _, err := b.Body(ctx, "k"+strconv.Itoa(oldest-1)); err != journal.ErrNotFound {
		t.Fatalf("the body of a pruned entry: %v", err)
	}
	if got, err := b.Body(ctx, "k"+strconv.Itoa(oldest)); err != nil || !bytes.Equal(got, body) {
		t.Fatalf("the body of a kept entry: %v", err)
	}
	vs, err := b.Payments(ctx, journal.PaymentFilter{Limit: 1000})
	if err != nil || len(vs) != len(evs) {
		t.Fatalf("%d payments for %d entries: %v", len(vs), len(evs), err)
	}
	// The count is what is left: pruning everything brings it to zero.
	tiny, err := New(url, "", b.jp, journal.Options{MaxSize: 1}, store.Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	defer tiny.Close()
	eventuallyRedis(t, func() bool {
		if err := tiny.pruneOnce(ctx); err != nil {
			t.Fatal(err)
		}
		return b.client.Get(ctx, b.key("bytes")).Val() == "0" && b.client.ZCard(ctx, b.key("pay")).Val() == 0 &&
			b.client.Exists(ctx, b.key("prune")).Val() == 0
	})
	if n := b.client.ZCard(ctx, b.key("ev")).Val(); n != 0 {
		t.Fatalf("%d entries left", n)
	}
}

// eventuallyRedis polls cond for up to 10 seconds.
func eventuallyRedis(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("timed out")
		}
	}
}

// Two nodes pruning the same journal lower its byte count once.
func TestRedisJournalPruneTwice(t *testing.T) {
	url := redistest.URL(t)
	a := openRedisBackend(t, url, journal.Options{})
	b, err := New(url, "", a.jp, journal.Options{}, store.Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx := context.Background()
	for i := range 10 {
		storetest.Record(t, a, journal.Event{Kind: journal.KindCallback, Verified: true, ProjectID: "1", PaymentID: "p",
			EventKey: "k", Body: []byte("body"), Result: "forwarded", OperationID: strconv.Itoa(i)})
	}
	before, _ := a.client.Get(ctx, a.key("bytes")).Int64()
	ids := a.client.ZRange(ctx, a.key("ev"), 0, 4).Val()
	var wg sync.WaitGroup
	for _, n := range []*Backend{a, b} {
		wg.Go(func() {
			if err := n.drop(ctx, ids, journal.PruneSize); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	after, _ := a.client.Get(ctx, a.key("bytes")).Int64()
	evs := storetest.MustEvents(t, a, journal.EventFilter{})
	if len(evs) != 5 {
		t.Fatalf("%d entries left, want 5", len(evs))
	}
	if before-after <= 0 || after <= 0 {
		t.Fatalf("bytes %d → %d", before, after)
	}
	// The rest goes: the count comes to zero, once.
	if err := b.drop(ctx, a.client.ZRange(ctx, a.key("ev"), 0, -1).Val(), journal.PruneSize); err != nil {
		t.Fatal(err)
	}
	if n, _ := a.client.Get(ctx, a.key("bytes")).Int64(); n != 0 {
		t.Fatalf("bytes %d after dropping everything", n)
	}
	if _, err := a.Body(ctx, "k"); err != journal.ErrNotFound {
		t.Fatalf("body after its entries went: %v", err)
	}
}

// BenchmarkRedisBackend measures what a callback costs the store.Backend, on
// one server and on a three-master Cluster: Claim and Commit, and the
// Record of its entry with a 1 KB body (a new payment each time).
func BenchmarkRedisBackend(b *testing.B) {
	for _, target := range []string{"single", "cluster"} {
		b.Run(target, func(b *testing.B) {
			url := ""
			if target == "single" {
				url = redistest.URL(b)
			} else {
				url = redistest.StartCluster(b).URL
			}
			be := openRedisBackend(b, url, journal.Options{})
			ctx := context.Background()
			body := bytes.Repeat([]byte("x"), 1024)
			b.Run("ClaimCommit", func(b *testing.B) {
				b.ReportAllocs()
				i := 0
				for b.Loop() {
					i++
					claimCommit(b, be, ctx, "bench:"+strconv.Itoa(i))
				}
			})
			b.Run("Record", func(b *testing.B) {
				b.ReportAllocs()
				i := 0
				for b.Loop() {
					i++
					k := strconv.Itoa(i)
					if err := be.Record(ctx, journal.Event{Kind: journal.KindCallback, Verified: true, ProjectID: "1", PaymentID: "p" + k,
						EventKey: "k" + k, Body: body, Result: "forwarded", PaymentStatus: "success"}); err != nil {
						b.Fatal(err)
					}
				}
			})
		})
	}
}

// After a restart or failover Redis has forgotten the scripts: Record
// sends them again.
func TestRedisJournalAfterScriptFlush(t *testing.T) {
	b := openRedisBackend(t, redistest.URL(t), journal.Options{})
	ctx := context.Background()
	for i := range 3 {
		if err := b.client.ScriptFlush(ctx).Err(); err != nil {
			t.Fatal(err)
		}
		storetest.Record(t, b, journal.Event{Kind: journal.KindCallback, Verified: true, ProjectID: "1", PaymentID: "f",
			EventKey: "k" + strconv.Itoa(i), Body: []byte("body"), PaymentStatus: "success", Result: "forwarded"})
	}
	if v := storetest.MustTimeline(t, b, "1", "f").Payment; v.Events != 3 || v.Status != "success" {
		t.Fatalf("view after script flushes: %+v", v)
	}
	if got, err := b.Body(ctx, "k2"); err != nil || string(got) != "body" {
		t.Fatalf("Body = %q, %v", got, err)
	}
}

// The payment script is journal.PaymentView.apply in Lua: random entries give the
// same view both ways.
func TestRedisPaymentScriptIsApply(t *testing.T) {
	b := openRedisBackend(t, redistest.URL(t), journal.Options{})
	rnd := rand.New(rand.NewPCG(1, 2))
	pick := func(s ...string) string { return s[rnd.IntN(len(s))] }
	base := time.Now().Add(-time.Hour).Truncate(time.Millisecond)
	for p := range 40 {
		id := "r" + strconv.Itoa(p)
		var want journal.PaymentView
		for range 1 + rnd.IntN(8) {
			e := journal.Event{
				Kind: pick(journal.KindCallback, journal.KindCallback, journal.KindStatus, journal.KindPaymentPage, journal.KindGate, journal.KindReplay, journal.KindStatusRequest),
				Time: base.Add(time.Duration(rnd.IntN(3600)) * time.Second), ProjectID: "7", PaymentID: id, Verified: true,
				Result:        pick("forwarded", "app_error", "duplicate", "signed", ""),
				PaymentStatus: pick("", "processing", "success", "decline", "partially refunded", "refunded"),
				Amount:        pick("", "100", "250"), Currency: pick("", "EUR", "USD"), Method: pick("", "card", "sbp"),
			}
			storetest.Record(t, b, e)
			e.Prepare(time.Now())
			want.Apply(&e)
		}
		if got := storetest.MustTimeline(t, b, "7", id).Payment; !storetest.SameView(got, want) {
			t.Fatalf("payment %s:\nredis %+v\napply %+v", id, got, want)
		}
	}
}

// Empty prefixes are the defaults.
func TestNewDefaultPrefixes(t *testing.T) {
	b, err := New("redis://127.0.0.1:1/0", "", "", journal.Options{MaxUnverified: 7}, store.Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if b.jp != defaultJournalPrefix || b.prefix != defaultDedupPrefix || b.Options().MaxUnverified != 7 {
		t.Fatalf("built with %+v, prefixes %q and %q", b.Options(), b.prefix, b.jp)
	}
}
