package ecommpay

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/journal"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/redistest"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/store"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/store/localstore"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/store/memstore"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/store/redisstore"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/store/storetest"
	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// newMemoryBackend is an empty memory backend with default bounds.
func newMemoryBackend() *memstore.Backend { return memstore.New(0, journal.Options{}, store.Hooks{}) }

func TestAcquireMemoryBackendSurvivesReload(t *testing.T) {
	core, logs := observer.New(zapcore.InfoLevel)
	logger := zap.New(core)
	ctx := context.Background()

	old, releaseOld, err := acquireBackend(backendOptions{Kind: "memory", MaxKeys: 100}, logger)
	if err != nil {
		t.Fatal(err)
	}
	tok := storetest.MustClaim(t, old, "k", store.Claimed)

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
	storetest.MustClaim(t, cur, "k", store.InFlight)
	if err := cur.Commit(ctx, "k", tok, storetest.TTL); err != nil {
		t.Fatal(err)
	}
	storetest.MustClaim(t, cur, "k", store.Delivered)
	if logs.Len() != 0 {
		t.Fatalf("same bound logged: %v", logs.All()[0].Message)
	}

	// A different bound is applied in place.
	again, releaseAgain, err := acquireBackend(backendOptions{Kind: "memory", MaxKeys: 200}, logger)
	if err != nil {
		t.Fatal(err)
	}
	if again != cur || cur.(*memstore.Backend).MaxKeys() != 200 {
		t.Fatal("new bound not applied to the shared store")
	}
	if logs.FilterLevelExact(zapcore.InfoLevel).Len() != 1 {
		t.Fatalf("bound change logged %d times at Info, want 1", logs.Len())
	}
	storetest.MustClaim(t, again, "k", store.Delivered)

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
	storetest.MustClaim(t, fresh, "k", store.Claimed)
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
		if lb, ok := a.(*localstore.Backend); !ok || lb.Path() != want {
			t.Fatalf("default backend %T at %v, want local at %s", a, a, want)
		}
		tok := storetest.MustClaim(t, a, "k", store.Claimed)
		// A reload acquires before it releases; the same file by its
		// relative name is the same backend.
		rel, err := filepath.Rel(mustGetwd(t), want)
		if err != nil {
			t.Fatal(err)
		}
		b, releaseB, err := acquireBackend(backendOptions{Kind: "local", Path: rel,
			Journal: journal.Options{MaxAge: time.Hour}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if b != a {
			t.Fatal("the same file gave two backends")
		}
		if got := b.(*localstore.Backend).Options().MaxAge; got != time.Hour {
			t.Fatalf("reload's MaxAge not applied: %v", got)
		}
		if err := releaseA(); err != nil {
			t.Fatal(err)
		}
		_ = releaseA()
		storetest.MustClaim(t, b, "k", store.InFlight)
		if err := b.Commit(ctx, "k", tok, storetest.TTL); err != nil {
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
		storetest.MustClaim(t, c, "k", store.Delivered)
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
		storetest.Deliver(t, a, "k", storetest.TTL)
		storetest.MustClaim(t, b, "k", store.Claimed)
	})

	t.Run("MemorySharedWithBoundsInPlace", func(t *testing.T) {
		a, ra, err := acquireBackend(backendOptions{Kind: "memory", MaxKeys: 100}, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, rb, err := acquireBackend(backendOptions{Kind: "memory", MaxKeys: 200,
			Journal: journal.Options{NoBodies: true}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		mb := a.(*memstore.Backend)
		if b != a || mb.MaxKeys() != 200 || !mb.Options().NoBodies {
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

func TestAcquireRedisBackend(t *testing.T) {
	url := redistest.URL(t)
	opts := backendOptions{Kind: "redis", RedisURL: url, Journal: journal.Options{MaxUnverified: 7}}
	a, releaseA, err := acquireBackend(opts, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, releaseB, err := acquireBackend(opts, nil)
	if err != nil {
		t.Fatal(err)
	}
	rb, ok := a.(*redisstore.Backend)
	if !ok || a != b {
		t.Fatalf("acquired %T and %T, want one *redisstore.Backend", a, b)
	}
	if rb.Options().MaxUnverified != 7 {
		t.Fatalf("backend built with %+v", rb.Options())
	}
	tok := storetest.MustClaim(t, a, "acquire:"+rand.Text(), store.Claimed)
	if tok == "" {
		t.Fatal("no token")
	}
	releaseA()
	releaseB()
	if err := a.Record(context.Background(), journal.Event{Kind: journal.KindCallback, Verified: true}); err == nil {
		t.Fatal("Record after the last release worked")
	}
}

func mustGetwd(t *testing.T) string {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	return wd
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

// What a backend reports through its hooks reaches the module's metrics.
func TestStoreHooksFeedMetrics(t *testing.T) {
	h := storeHooks("local", nil)
	pruned := testutil.ToFloat64(journalPrunedTotal.WithLabelValues(journal.PruneSize))
	failed := testutil.ToFloat64(storeErrorsTotal.WithLabelValues("write"))
	h.Pruned(journal.PruneSize, 3)
	h.Failed("write")
	if d := testutil.ToFloat64(journalPrunedTotal.WithLabelValues(journal.PruneSize)) - pruned; d != 3 {
		t.Fatalf("journal_pruned_total{reason=size} grew by %v, want 3", d)
	}
	if d := testutil.ToFloat64(storeErrorsTotal.WithLabelValues("write")) - failed; d != 1 {
		t.Fatalf("store_errors_total{op=write} grew by %v, want 1", d)
	}
	for _, ok := range []bool{false, true} {
		h.Healthy(ok)
		if v := testutil.ToFloat64(storeHealthy.WithLabelValues("local")); v != map[bool]float64{true: 1}[ok] {
			t.Fatalf("after Healthy(%v) store_healthy{store=local} = %v", ok, v)
		}
	}
	// A local store that cannot keep its file says so at once.
	notDir := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(notDir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	_, release, err := acquireBackend(backendOptions{Path: filepath.Join(notDir, "ecommpay.db")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	if v := testutil.ToFloat64(storeHealthy.WithLabelValues("local")); v != 0 {
		t.Fatalf("store_healthy{store=local} = %v for a store without its file", v)
	}
}

// The journal names a signing request's entry after its handler's mode:
// the console and metrics read one as the other.
func TestSigningKindsAreModes(t *testing.T) {
	if journal.KindPaymentPage != modePaymentPage || journal.KindGate != modeGate {
		t.Fatalf("kinds %q, %q; modes %q, %q", journal.KindPaymentPage, journal.KindGate, modePaymentPage, modeGate)
	}
}
