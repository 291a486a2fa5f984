package ecommpay

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/journal"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/sqlitestore"
)

// The backend suite: one set of behaviour tests that every backend passes.
//
// open must return an empty backend built with backendSuiteOptions(t),
// which is how the suite sets the journal's bounds for a subtest, and
// release it in t.Cleanup. For example:
//
//	runBackendSuite(t, func(t *testing.T) backend {
//		b := newMemoryBackend(0, backendSuiteOptions(t), nil)
//		t.Cleanup(func() { b.Destruct() })
//		return b
//	})

// suiteOptions holds the options the suite chose, by subtest.
var suiteOptions sync.Map // *testing.T → journalOptions

// backendSuiteOptions is the journal options that the suite wants for
// the backend that open(t) returns: zero unless a subtest sets bounds.
func backendSuiteOptions(t *testing.T) journalOptions {
	if o, ok := suiteOptions.Load(t); ok {
		return o.(journalOptions)
	}
	return journalOptions{}
}

// openWith opens a backend with options o.
func openWith(t *testing.T, open func(t *testing.T) backend, o journalOptions) backend {
	suiteOptions.Store(t, o)
	t.Cleanup(func() { suiteOptions.Delete(t) })
	return open(t)
}

// suiteBase is the fixture's "now": entries lie in the hour before it, well
// within the default MaxAge.
func suiteBase() time.Time { return time.Now().UTC().Truncate(time.Millisecond) }

func record(t testing.TB, j journal.Journal, e journalEvent) {
	t.Helper()
	if err := j.Record(context.Background(), e); err != nil {
		t.Fatalf("Record(%s): %v", e.OperationID, err)
	}
}

// fixture records three payments and one stranger's callback. Each entry's
// OperationID names it, so that tests can compare lists by name.
//
//	p1 (project 10): signed, processing, app error on k2, k2 retried: success
//	p2 (project 10): gate, declined
//	p3 (project 20): signed only, still open
//	u1: an unverified callback claiming p1
func fixture(t *testing.T, j journal.Journal, base time.Time) {
	t.Helper()
	at := func(m int) time.Time { return base.Add(time.Duration(m) * time.Minute) }
	for _, e := range []journalEvent{
		{OperationID: "p1-sign", Kind: kindPaymentPage, Time: at(-50), ProjectID: "10", PaymentID: "p1",
			Verified: true, Result: "signed", Amount: "1000", Currency: "EUR", Method: "card", Path: "/pay"},
		{OperationID: "p2-gate", Kind: kindGate, Time: at(-45), ProjectID: "10", PaymentID: "p2",
			Verified: true, Result: "signed", Amount: "500", Currency: "USD", Method: "sbp"},
		{OperationID: "p1-cb1", Kind: kindCallback, Time: at(-40), ProjectID: "10", PaymentID: "p1",
			Verified: true, Result: "forwarded", Status: 200, AppStatus: 200, EventKey: "k1",
			PaymentStatus: "processing", OperationStatus: "processing", Body: []byte(`{"k":1}`)},
		{OperationID: "p1-cb2", Kind: kindCallback, Time: at(-30), ProjectID: "10", PaymentID: "p1",
			Verified: true, Result: "app_error", Status: 500, AppStatus: 500, EventKey: "k2",
			PaymentStatus: "success", OperationStatus: "success", Body: []byte(`{"k":2}`)},
		{OperationID: "p1-cb3", Kind: kindCallback, Time: at(-29), ProjectID: "10", PaymentID: "p1",
			Verified: true, Result: "forwarded", Status: 200, AppStatus: 200, EventKey: "k2",
			PaymentStatus: "success", OperationStatus: "success", Body: []byte(`{"k":2,"retry":true}`)},
		{OperationID: "u1", Kind: kindCallback, Time: at(-25), ProjectID: "10", PaymentID: "p1",
			Verified: false, Result: "bad_signature", Status: 400, EventKey: "ku",
			PaymentStatus: "success", Body: []byte(`forged`)},
		{OperationID: "p2-cb1", Kind: kindCallback, Time: at(-20), ProjectID: "10", PaymentID: "p2",
			Verified: true, Result: "forwarded", Status: 200, AppStatus: 200, EventKey: "k3",
			PaymentStatus: "decline", Body: []byte(`{"k":3}`)},
		{OperationID: "p3-sign", Kind: kindPaymentPage, Time: at(-10), ProjectID: "20", PaymentID: "p3",
			Verified: true, Result: "signed", Amount: "700", Currency: "EUR", Method: "card"},
	} {
		record(t, j, e)
	}
}

// fixtureNewestFirst is every fixture entry, newest first.
var fixtureNewestFirst = []string{"p3-sign", "p2-cb1", "u1", "p1-cb3", "p1-cb2", "p1-cb1", "p2-gate", "p1-sign"}

func opIDs(evs []journalEvent) []string {
	out := make([]string, len(evs))
	for i, e := range evs {
		out[i] = e.OperationID
	}
	return out
}

func payIDs(vs []paymentView) []string {
	out := make([]string, len(vs))
	for i, v := range vs {
		out[i] = v.PaymentID
	}
	return out
}

func mustEvents(t *testing.T, j journal.Journal, f eventFilter) []journalEvent {
	t.Helper()
	evs, err := j.Events(context.Background(), f)
	if err != nil {
		t.Fatalf("Events(%+v): %v", f, err)
	}
	return evs
}

func wantEvents(t *testing.T, j journal.Journal, f eventFilter, want ...string) {
	t.Helper()
	if got := opIDs(mustEvents(t, j, f)); !slices.Equal(got, want) {
		t.Fatalf("Events(%+v) = %q, want %q", f, got, want)
	}
}

func wantPayments(t *testing.T, j journal.Journal, f paymentFilter, want ...string) {
	t.Helper()
	vs, err := j.Payments(context.Background(), f)
	if err != nil {
		t.Fatalf("Payments(%+v): %v", f, err)
	}
	if got := payIDs(vs); !slices.Equal(got, want) {
		t.Fatalf("Payments(%+v) = %q, want %q", f, got, want)
	}
}

func mustTimeline(t *testing.T, j journal.Journal, project, payment string) timeline {
	t.Helper()
	tl, err := j.Timeline(context.Background(), project, payment)
	if err != nil {
		t.Fatalf("Timeline(%s, %s): %v", project, payment, err)
	}
	return tl
}

func runBackendSuite(t *testing.T, open func(t *testing.T) backend) {
	ctx := context.Background()

	t.Run("Store", func(t *testing.T) {
		runStoreSuite(t, storeSuite{
			newStore: func(t *testing.T) Store { return openWith(t, open, journalOptions{}) },
			short:    150 * time.Millisecond,
			elapse:   time.Sleep,
		})
	})

	t.Run("HundredClaimersOneWinner", func(t *testing.T) {
		b := openWith(t, open, journalOptions{})
		for i := range 5 {
			claimRace(t, []Store{b}, "hundred:"+strconv.Itoa(i), 100)
		}
	})

	t.Run("RecordAssignsIDAndTime", func(t *testing.T) {
		b := openWith(t, open, journalOptions{})
		before := time.Now()
		for i := range 20 {
			record(t, b, journalEvent{OperationID: strconv.Itoa(i), Kind: kindCallback, Verified: true, Result: "forwarded"})
		}
		evs := mustEvents(t, b, eventFilter{})
		if len(evs) != 20 {
			t.Fatalf("listed %d entries, want 20", len(evs))
		}
		for i, e := range evs {
			if e.ID == "" || e.Time.Before(before.Add(-time.Second)) || e.Time.After(time.Now()) {
				t.Fatalf("entry %d: ID %q, Time %v", i, e.ID, e.Time)
			}
			if e.Time.Location() != time.UTC {
				t.Fatalf("entry %d: Time in %v, want UTC", i, e.Time.Location())
			}
			if i > 0 && e.ID >= evs[i-1].ID {
				t.Fatalf("IDs not strictly newest first: %s then %s", evs[i-1].ID, e.ID)
			}
			// Entries of one nanosecond's tick may tie on time; the order
			// must still follow recording when the clock moves.
			if i > 0 && e.Time.After(evs[i-1].Time) {
				t.Fatalf("entry %d is newer than the one listed before it", i)
			}
		}
	})

	t.Run("EventsNewestFirstWithoutBodies", func(t *testing.T) {
		b := openWith(t, open, journalOptions{})
		fixture(t, b, suiteBase())
		evs := mustEvents(t, b, eventFilter{})
		if got := opIDs(evs); !slices.Equal(got, fixtureNewestFirst) {
			t.Fatalf("Events = %q, want %q", got, fixtureNewestFirst)
		}
		for _, e := range evs {
			if e.Body != nil {
				t.Fatalf("%s listed with its body", e.OperationID)
			}
		}
		// Fields come back as recorded.
		e := evs[slices.Index(opIDs(evs), "p1-cb2")]
		if e.Kind != kindCallback || e.ProjectID != "10" || e.PaymentID != "p1" || e.Result != "app_error" ||
			e.Status != 500 || e.AppStatus != 500 || e.EventKey != "k2" || e.PaymentStatus != "success" ||
			e.OperationStatus != "success" || !e.Verified {
			t.Fatalf("p1-cb2 came back as %+v", e)
		}
		if s := evs[slices.Index(opIDs(evs), "p1-sign")]; s.Amount != "1000" || s.Currency != "EUR" ||
			s.Method != "card" || s.Path != "/pay" {
			t.Fatalf("p1-sign came back as %+v", s)
		}
	})

	t.Run("EventsFilters", func(t *testing.T) {
		b := openWith(t, open, journalOptions{})
		base := suiteBase()
		fixture(t, b, base)
		at := func(m int) time.Time { return base.Add(time.Duration(m) * time.Minute) }
		wantEvents(t, b, eventFilter{ProjectID: "20"}, "p3-sign")
		// A stranger's entry for a payment shows among that payment's events.
		wantEvents(t, b, eventFilter{ProjectID: "10", PaymentID: "p1"}, "u1", "p1-cb3", "p1-cb2", "p1-cb1", "p1-sign")
		wantEvents(t, b, eventFilter{PaymentID: "p2"}, "p2-cb1", "p2-gate")
		wantEvents(t, b, eventFilter{ProjectID: "20", PaymentID: "p1"})
		wantEvents(t, b, eventFilter{Result: "app_error"}, "p1-cb2")
		wantEvents(t, b, eventFilter{Result: "bad_signature"}, "u1")
		wantEvents(t, b, eventFilter{Kind: kindGate}, "p2-gate")
		wantEvents(t, b, eventFilter{Kind: kindCallback, ProjectID: "10", Result: "forwarded"}, "p2-cb1", "p1-cb3", "p1-cb1")
		wantEvents(t, b, eventFilter{EventKey: "k2"}, "p1-cb3", "p1-cb2")
		// Since is inclusive, Until exclusive.
		wantEvents(t, b, eventFilter{Since: at(-45), Until: at(-29)}, "p1-cb2", "p1-cb1", "p2-gate")
		wantEvents(t, b, eventFilter{Since: at(-20)}, "p3-sign", "p2-cb1")
		wantEvents(t, b, eventFilter{Until: at(-45)}, "p1-sign")
		wantEvents(t, b, eventFilter{Since: at(-5)})
		wantEvents(t, b, eventFilter{Limit: 2, Kind: kindCallback}, "p2-cb1", "u1")
	})

	t.Run("EventsPaging", func(t *testing.T) {
		b := openWith(t, open, journalOptions{})
		fixture(t, b, suiteBase())
		var got []string
		before := ""
		for range 10 {
			page := mustEvents(t, b, eventFilter{Before: before, Limit: 3})
			if len(page) == 0 {
				break
			}
			if len(page) > 3 {
				t.Fatalf("page of %d with Limit 3", len(page))
			}
			got = append(got, opIDs(page)...)
			before = page[len(page)-1].ID
		}
		if !slices.Equal(got, fixtureNewestFirst) {
			t.Fatalf("pages = %q, want %q", got, fixtureNewestFirst)
		}
		// Before with a filter.
		evs := mustEvents(t, b, eventFilter{PaymentID: "p1", ProjectID: "10", Limit: 2})
		wantEvents(t, b, eventFilter{PaymentID: "p1", ProjectID: "10", Before: evs[1].ID}, "p1-cb2", "p1-cb1", "p1-sign")
	})

	t.Run("EventsDefaultLimit", func(t *testing.T) {
		b := openWith(t, open, journalOptions{})
		base := suiteBase().Add(-time.Hour)
		for i := range 120 {
			record(t, b, journalEvent{OperationID: strconv.Itoa(i), Kind: kindCallback, Verified: true,
				Time: base.Add(time.Duration(i) * time.Second), ProjectID: "1", PaymentID: "x"})
		}
		evs := mustEvents(t, b, eventFilter{})
		if len(evs) != journal.DefaultListLimit || evs[0].OperationID != "119" {
			t.Fatalf("Events without Limit: %d entries starting with %s, want 100 from 119", len(evs), evs[0].OperationID)
		}
		if n := len(mustEvents(t, b, eventFilter{Limit: 500})); n != 120 {
			t.Fatalf("Limit 500 listed %d of 120", n)
		}
	})

	t.Run("Payments", func(t *testing.T) {
		b := openWith(t, open, journalOptions{})
		base := suiteBase()
		fixture(t, b, base)
		at := func(m int) time.Time { return base.Add(time.Duration(m) * time.Minute) }
		// Updated: p3 -10, p2 -20, p1 -29 (the stranger's -25 does not count).
		wantPayments(t, b, paymentFilter{}, "p3", "p2", "p1")
		wantPayments(t, b, paymentFilter{ProjectID: "10"}, "p2", "p1")
		wantPayments(t, b, paymentFilter{PaymentID: "p2"}, "p2")
		wantPayments(t, b, paymentFilter{ProjectID: "10", PaymentID: "p1"}, "p1")
		wantPayments(t, b, paymentFilter{ProjectID: "20", PaymentID: "p1"})
		wantPayments(t, b, paymentFilter{ProjectID: "10", PaymentID: "p1", Open: true})
		wantPayments(t, b, paymentFilter{ProjectID: "10", PaymentID: "p1", Until: at(-30)})
		wantPayments(t, b, paymentFilter{Status: "success"}, "p1")
		wantPayments(t, b, paymentFilter{Method: "card"}, "p3", "p1")
		wantPayments(t, b, paymentFilter{Open: true}, "p3")
		wantPayments(t, b, paymentFilter{Open: true, ProjectID: "10"})
		wantPayments(t, b, paymentFilter{Since: at(-20)}, "p3", "p2")
		wantPayments(t, b, paymentFilter{Until: at(-20)}, "p1")
		wantPayments(t, b, paymentFilter{Limit: 2}, "p3", "p2")
		wantPayments(t, b, paymentFilter{ProjectID: "nope"})
	})

	t.Run("Timeline", func(t *testing.T) {
		b := openWith(t, open, journalOptions{})
		base := suiteBase()
		fixture(t, b, base)
		at := func(m int) time.Time { return base.Add(time.Duration(m) * time.Minute) }
		tl := mustTimeline(t, b, "10", "p1")
		if got, want := opIDs(tl.Events), []string{"p1-sign", "p1-cb1", "p1-cb2", "p1-cb3"}; !slices.Equal(got, want) {
			t.Fatalf("timeline = %q, want %q (oldest first, no strangers)", got, want)
		}
		for _, e := range tl.Events {
			if e.Body != nil {
				t.Fatalf("timeline entry %s carries its body", e.OperationID)
			}
		}
		v := tl.Payment
		want := paymentView{ProjectID: "10", PaymentID: "p1", Started: at(-50), Updated: at(-29), Signed: at(-50),
			Mode: kindPaymentPage, Amount: "1000", Currency: "EUR", Method: "card", Status: "success", Final: true,
			Callbacks: 3, AppErrors: 1, Events: 4}
		if !sameView(v, want) {
			t.Fatalf("p1 view = %+v\nwant %+v", v, want)
		}
		v2 := mustTimeline(t, b, "10", "p2").Payment
		if v2.Mode != kindGate || !v2.Signed.Equal(at(-45)) || v2.Status != "decline" || !v2.Final ||
			v2.Callbacks != 1 || v2.Events != 2 || v2.Method != "sbp" {
			t.Fatalf("p2 view = %+v", v2)
		}
		v3 := mustTimeline(t, b, "20", "p3").Payment
		if v3.Status != "" || v3.Final || v3.Callbacks != 0 || v3.Events != 1 || !v3.Started.Equal(at(-10)) {
			t.Fatalf("p3 view = %+v", v3)
		}
		// The payment list shows the same views.
		vs, err := b.Payments(ctx, paymentFilter{PaymentID: "p1"})
		if err != nil || len(vs) != 1 || !sameView(vs[0], want) {
			t.Fatalf("Payments(p1) = %+v, %v", vs, err)
		}
		for _, id := range [][2]string{{"10", "nope"}, {"20", "p1"}, {"", ""}} {
			if _, err := b.Timeline(ctx, id[0], id[1]); !errors.Is(err, errNotFound) {
				t.Fatalf("Timeline(%q, %q) = %v, want errNotFound", id[0], id[1], err)
			}
		}
	})

	t.Run("FinalStatus", func(t *testing.T) {
		b := openWith(t, open, journalOptions{})
		base := suiteBase().Add(-time.Hour)
		record(t, b, journalEvent{Kind: kindPaymentPage, Time: base, ProjectID: "1", PaymentID: "f", Verified: true})
		for i, st := range []struct {
			status string
			final  bool
		}{{"processing", false}, {"success", true}, {"partially refunded", false}, {"refunded", true},
			{"awaiting 3ds result", false}, {"decline", true}, {"", true}} {
			// An entry without a status leaves the last one standing.
			record(t, b, journalEvent{Kind: kindCallback, Time: base.Add(time.Duration(i+1) * time.Minute),
				ProjectID: "1", PaymentID: "f", Verified: true, PaymentStatus: st.status, Result: "forwarded"})
			v := mustTimeline(t, b, "1", "f").Payment
			if v.Final != st.final || (st.status != "" && v.Status != st.status) {
				t.Fatalf("after %q: status %q final %v, want final %v", st.status, v.Status, v.Final, st.final)
			}
		}
		// A reconciled status counts like a callback's.
		record(t, b, journalEvent{Kind: kindStatus, Time: base.Add(time.Hour), ProjectID: "1", PaymentID: "g",
			Verified: true, PaymentStatus: "success"})
		if v := mustTimeline(t, b, "1", "g").Payment; !v.Final || v.Callbacks != 0 {
			t.Fatalf("status entry gave %+v", v)
		}
	})

	t.Run("OpenPayments", func(t *testing.T) {
		b := openWith(t, open, journalOptions{})
		base := suiteBase()
		fixture(t, b, base)
		at := func(m int) time.Time { return base.Add(time.Duration(m) * time.Minute) }
		// p4: signed long ago, still processing; p5: callbacks only, never signed here.
		record(t, b, journalEvent{OperationID: "p4-sign", Kind: kindGate, Time: at(-55), ProjectID: "20",
			PaymentID: "p4", Verified: true})
		record(t, b, journalEvent{OperationID: "p4-cb", Kind: kindCallback, Time: at(-5), ProjectID: "20",
			PaymentID: "p4", Verified: true, PaymentStatus: "processing"})
		record(t, b, journalEvent{OperationID: "p5-cb", Kind: kindCallback, Time: at(-58), ProjectID: "20",
			PaymentID: "p5", Verified: true, PaymentStatus: "processing"})
		open := func(cut time.Time, limit int, want ...string) {
			t.Helper()
			vs, err := b.OpenPayments(ctx, cut, limit)
			if err != nil {
				t.Fatal(err)
			}
			if got := payIDs(vs); !slices.Equal(got, want) {
				t.Fatalf("OpenPayments(%v, %d) = %q, want %q", base.Sub(cut), limit, got, want)
			}
		}
		open(base, 0, "p4", "p3")
		open(at(-10), 0, "p4") // p3 was signed at exactly -10: not before
		open(at(-9), 0, "p4", "p3")
		open(base, 1, "p4")
		open(at(-56), 0)
	})

	t.Run("Body", func(t *testing.T) {
		b := openWith(t, open, journalOptions{})
		fixture(t, b, suiteBase())
		for key, want := range map[string]string{"k1": `{"k":1}`, "k2": `{"k":2}`, "k3": `{"k":3}`} {
			got, err := b.Body(ctx, key)
			if err != nil || string(got) != want {
				t.Fatalf("Body(%s) = %q, %v; want %q (the first stored)", key, got, err, want)
			}
		}
		for _, key := range []string{"ku", "nope", ""} {
			if got, err := b.Body(ctx, key); !errors.Is(err, errNotFound) {
				t.Fatalf("Body(%q) = %q, %v; want errNotFound", key, got, err)
			}
		}
		// The journal keeps its own copy of a body.
		buf := []byte(`{"mine":1}`)
		record(t, b, journalEvent{Kind: kindCallback, ProjectID: "1", PaymentID: "b", Verified: true, EventKey: "kb", Body: buf})
		copy(buf, "XXXXXXXXXX")
		if got, err := b.Body(ctx, "kb"); err != nil || string(got) != `{"mine":1}` {
			t.Fatalf("Body(kb) after the caller reused its buffer = %q, %v", got, err)
		}
		got, _ := b.Body(ctx, "kb")
		copy(got, "YYYY")
		if again, _ := b.Body(ctx, "kb"); string(again) != `{"mine":1}` {
			t.Fatalf("Body(kb) after the reader changed its copy = %q", again)
		}
		// A replay has its body too.
		record(t, b, journalEvent{Kind: kindReplay, ProjectID: "1", PaymentID: "b", Verified: true, EventKey: "kr",
			Body: []byte("replayed")})
		if got, err := b.Body(ctx, "kr"); err != nil || string(got) != "replayed" {
			t.Fatalf("Body(kr) = %q, %v", got, err)
		}
	})

	t.Run("NoBodies", func(t *testing.T) {
		b := openWith(t, open, journalOptions{NoBodies: true})
		fixture(t, b, suiteBase())
		if got := opIDs(mustEvents(t, b, eventFilter{})); !slices.Equal(got, fixtureNewestFirst) {
			t.Fatalf("Events = %q", got)
		}
		for _, key := range []string{"k1", "k2", "k3"} {
			if got, err := b.Body(ctx, key); !errors.Is(err, errNotFound) {
				t.Fatalf("Body(%s) with NoBodies = %q, %v", key, got, err)
			}
		}
		if v := mustTimeline(t, b, "10", "p1").Payment; v.Events != 4 || !v.Final {
			t.Fatalf("p1 view with NoBodies = %+v", v)
		}
	})

	t.Run("UnverifiedTruncatedAndApart", func(t *testing.T) {
		b := openWith(t, open, journalOptions{})
		fixture(t, b, suiteBase())
		before := mustTimeline(t, b, "10", "p1").Payment
		long := strings.Repeat("é", 100) // two bytes each: the cut must not split one
		record(t, b, journalEvent{Kind: kindCallback, Verified: false, ProjectID: long, PaymentID: long,
			OperationID: long, OperationType: long, OperationStatus: long, PaymentStatus: long, EventKey: long,
			Result: "bad_signature", Body: []byte(long)})
		record(t, b, journalEvent{Kind: kindCallback, Verified: false, ProjectID: "10", PaymentID: "p1",
			PaymentStatus: "decline", Result: "bad_signature", OperationID: "u2"})
		record(t, b, journalEvent{Kind: kindCallback, Verified: false, ProjectID: "10", PaymentID: "ghost",
			PaymentStatus: "success", Result: "bad_signature", OperationID: "u3", Amount: "1"})
		evs := mustEvents(t, b, eventFilter{Result: "bad_signature"})
		if got := len(evs); got != 4 {
			t.Fatalf("%d unverified entries listed, want 4", got)
		}
		var e journalEvent
		for _, ev := range evs {
			if len(ev.ProjectID) > 10 {
				e = ev
			}
		}
		for _, f := range []string{e.ProjectID, e.PaymentID, e.OperationID, e.OperationType, e.OperationStatus,
			e.PaymentStatus, e.EventKey} {
			if len(f) > journal.UnverifiedFieldMax+len("…") || !strings.HasSuffix(f, "…") || !strings.HasPrefix(long, strings.TrimSuffix(f, "…")) {
				t.Fatalf("unverified field kept as %q (%d bytes)", f, len(f))
			}
		}
		if e.Verified {
			t.Fatal("unverified entry listed as verified")
		}
		if _, err := b.Body(ctx, e.EventKey); !errors.Is(err, errNotFound) {
			t.Fatalf("an unverified body was stored: %v", err)
		}
		// Strangers neither change a payment nor make one.
		if after := mustTimeline(t, b, "10", "p1").Payment; !sameView(after, before) {
			t.Fatalf("unverified callbacks changed p1:\n%+v\nwas %+v", after, before)
		}
		if _, err := b.Timeline(ctx, "10", "ghost"); !errors.Is(err, errNotFound) {
			t.Fatalf("Timeline(ghost) = %v, want errNotFound", err)
		}
		if _, err := b.Timeline(ctx, e.ProjectID, e.PaymentID); !errors.Is(err, errNotFound) {
			t.Fatalf("Timeline of the long stranger = %v, want errNotFound", err)
		}
		wantPayments(t, b, paymentFilter{}, "p3", "p2", "p1")
		// Verified entries of other kinds are never cut.
		record(t, b, journalEvent{Kind: kindPaymentPage, Verified: true, ProjectID: "30", PaymentID: long, OperationID: "long-sign"})
		if tl := mustTimeline(t, b, "30", long); tl.Payment.PaymentID != long {
			t.Fatal("a verified payment id was cut")
		}
	})

	t.Run("UnverifiedOwnBound", func(t *testing.T) {
		b := openWith(t, open, journalOptions{MaxUnverified: 5})
		base := suiteBase().Add(-time.Hour)
		for i := range 20 {
			e := journalEvent{Kind: kindCallback, Time: base.Add(time.Duration(i) * time.Second),
				OperationID: fmt.Sprint(i), ProjectID: "1", PaymentID: "p" + strconv.Itoa(i%3)}
			if i%4 == 0 { // 5 genuine among 15 strangers
				e.Verified, e.Result = true, "forwarded"
			} else {
				e.Result = "bad_signature"
			}
			record(t, b, e)
		}
		wantEvents(t, b, eventFilter{Result: "forwarded"}, "16", "12", "8", "4", "0")
		wantEvents(t, b, eventFilter{Result: "bad_signature"}, "19", "18", "17", "15", "14")
		if n := len(mustEvents(t, b, eventFilter{})); n != 10 {
			t.Fatalf("%d entries in all, want 10", n)
		}
	})

	t.Run("MaxAge", func(t *testing.T) {
		b := openWith(t, open, journalOptions{MaxAge: time.Hour})
		now := time.Now().UTC()
		record(t, b, journalEvent{OperationID: "old-sign", Kind: kindPaymentPage, Time: now.Add(-2 * time.Hour),
			ProjectID: "1", PaymentID: "old", Verified: true})
		record(t, b, journalEvent{OperationID: "old-cb", Kind: kindCallback, Time: now.Add(-90 * time.Minute),
			ProjectID: "1", PaymentID: "mixed", Verified: true, EventKey: "ko", Body: []byte("old")})
		record(t, b, journalEvent{OperationID: "old-u", Kind: kindCallback, Time: now.Add(-90 * time.Minute),
			ProjectID: "1", PaymentID: "x"})
		record(t, b, journalEvent{OperationID: "new-cb", Kind: kindCallback, Time: now.Add(-10 * time.Minute),
			ProjectID: "1", PaymentID: "mixed", Verified: true, EventKey: "kn", Body: []byte("new")})
		wantEvents(t, b, eventFilter{}, "new-cb")
		wantPayments(t, b, paymentFilter{}, "mixed")
		if _, err := b.Timeline(ctx, "1", "old"); !errors.Is(err, errNotFound) {
			t.Fatalf("Timeline of an aged-out payment = %v", err)
		}
		if got := opIDs(mustTimeline(t, b, "1", "mixed").Events); !slices.Equal(got, []string{"new-cb"}) {
			t.Fatalf("timeline of a half-aged payment = %q", got)
		}
		if _, err := b.Body(ctx, "ko"); !errors.Is(err, errNotFound) {
			t.Fatalf("body of an aged-out entry = %v", err)
		}
		if got, err := b.Body(ctx, "kn"); err != nil || string(got) != "new" {
			t.Fatalf("Body(kn) = %q, %v", got, err)
		}
		if vs, err := b.OpenPayments(ctx, now, 0); err != nil || len(vs) != 0 {
			t.Fatalf("OpenPayments lists aged-out payments: %+v, %v", vs, err)
		}
	})

	t.Run("EveryFieldKept", func(t *testing.T) {
		b := openWith(t, open, journalOptions{})
		at := suiteBase().Add(-time.Minute)
		want := []journalEvent{
			{Kind: kindCallback, Time: at, ProjectID: "10", PaymentID: "f1", OperationID: "7", OperationType: "sale",
				OperationStatus: "decline", PaymentStatus: "decline", EventKey: "kf", Result: "app_error",
				Status: 502, AppStatus: 502, AppLatencyMS: 3, Reason: "unreachable", Verified: true,
				Amount: "1000", Currency: "KWD", Method: "card"},
			{Kind: kindGate, Time: at.Add(time.Second), ProjectID: "10", PaymentID: "f1", Result: "signed",
				Status: 200, EcommpayStatus: 200, Verified: true, Path: "/v2/payment/card/sale",
				Amount: "1000", Currency: "KWD", Method: "card"},
			{Kind: kindStatusRequest, Time: at.Add(2 * time.Second), ProjectID: "10", PaymentID: "f1",
				Result: "error", AppStatus: 500, EcommpayStatus: 500, Reason: "HTTP 500", Verified: true, Method: "card"},
		}
		for _, e := range want {
			record(t, b, e)
		}
		got := mustEvents(t, b, eventFilter{PaymentID: "f1"})
		if len(got) != len(want) {
			t.Fatalf("%d entries, want %d", len(got), len(want))
		}
		for i, w := range want {
			g := got[len(got)-1-i]
			if !g.Time.Equal(w.Time) || g.ID == "" {
				t.Fatalf("entry %d: time %v, id %q", i, g.Time, g.ID)
			}
			g.ID, g.Time, w.Time = "", time.Time{}, time.Time{}
			if !reflect.DeepEqual(g, w) {
				t.Fatalf("entry %d reads back as\n%+v\nwant\n%+v", i, g, w)
			}
		}
	})

	t.Run("CallbackFirstPaymentTakesAmountAndMethod", func(t *testing.T) {
		b := openWith(t, open, journalOptions{})
		at := suiteBase().Add(-time.Minute)
		// Seen only through callbacks: the first one with a sum says it.
		record(t, b, journalEvent{Kind: kindCallback, Time: at, ProjectID: "10", PaymentID: "c1", Verified: true,
			Result: "forwarded", EventKey: "c1a", PaymentStatus: "processing", Amount: "1000", Currency: "CNY", Method: "wechat"})
		record(t, b, journalEvent{Kind: kindCallback, Time: at.Add(time.Second), ProjectID: "10", PaymentID: "c1", Verified: true,
			Result: "forwarded", EventKey: "c1b", PaymentStatus: "success", Amount: "999", Currency: "USD", Method: "card"})
		v := mustTimeline(t, b, "10", "c1").Payment
		if v.Amount != "1000" || v.Currency != "CNY" || v.Method != "wechat" || v.Status != "success" {
			t.Fatalf("callback-first view = %+v, want 1000 CNY by wechat, success", v)
		}
		// A signing request says what was asked for, whatever came first.
		record(t, b, journalEvent{Kind: kindCallback, Time: at, ProjectID: "10", PaymentID: "c2", Verified: true,
			Result: "forwarded", EventKey: "c2a", PaymentStatus: "processing", Amount: "1", Currency: "EUR", Method: "card"})
		record(t, b, journalEvent{Kind: kindPaymentPage, Time: at.Add(time.Second), ProjectID: "10", PaymentID: "c2", Verified: true,
			Result: "signed", Amount: "500", Currency: "JPY"})
		v = mustTimeline(t, b, "10", "c2").Payment
		if v.Amount != "500" || v.Currency != "JPY" || v.Method != "card" {
			t.Fatalf("signed view = %+v, want 500 JPY, method card from the callback", v)
		}
		vs, err := b.Payments(ctx, paymentFilter{Method: "wechat"})
		if err != nil || len(vs) != 1 || vs[0].PaymentID != "c1" {
			t.Fatalf("Payments(method wechat) = %+v, %v", vs, err)
		}
	})

	t.Run("DuplicatesFoldIntoFirst", func(t *testing.T) {
		b := openWith(t, open, journalOptions{})
		base := suiteBase().Add(-time.Hour)
		at := func(m int) time.Time { return base.Add(time.Duration(m) * time.Minute) }
		record(t, b, journalEvent{OperationID: "first", Kind: kindCallback, Verified: true, ProjectID: "1",
			PaymentID: "d", EventKey: "kd", Result: "forwarded", PaymentStatus: "success", Time: at(0), Body: []byte("first")})
		for i := range 5 {
			result := "duplicate"
			if i == 2 {
				result = "in_flight"
			}
			record(t, b, journalEvent{OperationID: "dup", Kind: kindCallback, Verified: true, ProjectID: "1",
				PaymentID: "d", EventKey: "kd", Result: result, PaymentStatus: "success", Time: at(i + 1), Body: []byte("dup")})
		}
		// A replay is an entry of its own, and is not where duplicates count.
		record(t, b, journalEvent{OperationID: "replay", Kind: kindReplay, Verified: true, ProjectID: "1",
			PaymentID: "d", EventKey: "kd", Result: "forwarded", Time: at(10)})
		record(t, b, journalEvent{OperationID: "dup", Kind: kindCallback, Verified: true, ProjectID: "1",
			PaymentID: "d", EventKey: "kd", Result: "duplicate", Time: at(11)})
		evs := mustEvents(t, b, eventFilter{EventKey: "kd"})
		if got := opIDs(evs); !slices.Equal(got, []string{"replay", "first"}) {
			t.Fatalf("entries of kd = %q, want the replay and the first callback only", got)
		}
		if f := evs[1]; f.Duplicates != 6 || !f.LastSeen.Equal(at(11)) || f.Result != "forwarded" {
			t.Fatalf("first entry counts %d duplicates, last seen %v (want 6, %v), result %s", f.Duplicates, f.LastSeen, at(11), f.Result)
		}
		if got, err := b.Body(ctx, "kd"); err != nil || string(got) != "first" {
			t.Fatalf("Body(kd) = %q, %v", got, err)
		}
		if v := mustTimeline(t, b, "1", "d").Payment; v.Callbacks != 1 || v.Events != 2 {
			t.Fatalf("view counts %d callbacks and %d events, want 1 and 2", v.Callbacks, v.Events)
		}
		// Without a first entry in the journal, a duplicate is entered.
		record(t, b, journalEvent{OperationID: "orphan", Kind: kindCallback, Verified: true, ProjectID: "1",
			PaymentID: "o", EventKey: "ko", Result: "duplicate", Time: at(12)})
		wantEvents(t, b, eventFilter{EventKey: "ko"}, "orphan")
	})

	t.Run("FloodKeepsGenuine", func(t *testing.T) {
		// Strangers' forgeries and retries of one genuine callback, 20,000
		// each, at a journal of 1 MiB: an older genuine entry and its body
		// are still there.
		b := openWith(t, open, journalOptions{MaxSize: 1 << 20})
		base := suiteBase().Add(-time.Hour)
		record(t, b, journalEvent{OperationID: "old", Kind: kindCallback, Verified: true, ProjectID: "1", PaymentID: "old",
			EventKey: "k-old", Result: "forwarded", Time: base, Body: bytes.Repeat([]byte("o"), 1000)})
		record(t, b, journalEvent{OperationID: "dup-first", Kind: kindCallback, Verified: true, ProjectID: "1",
			PaymentID: "retried", EventKey: "k-dup", Result: "forwarded", Time: base.Add(time.Millisecond), Body: []byte("d")})
		const n = 20_000
		for i := range n {
			at := base.Add(time.Duration(i+2) * time.Millisecond)
			record(t, b, journalEvent{Kind: kindCallback, ProjectID: "1", PaymentID: "forged-" + strconv.Itoa(i),
				EventKey: "forged-" + strconv.Itoa(i), Result: "invalid_signature", Time: at, Body: bytes.Repeat([]byte("f"), 1000)})
			record(t, b, journalEvent{OperationID: "dup", Kind: kindCallback, Verified: true, ProjectID: "1",
				PaymentID: "retried", EventKey: "k-dup", Result: "duplicate", Time: at, Body: []byte("d")})
		}
		wantEvents(t, b, eventFilter{EventKey: "k-old"}, "old")
		if got, err := b.Body(ctx, "k-old"); err != nil || len(got) != 1000 {
			t.Fatalf("Body(k-old) after the flood: %d bytes, %v", len(got), err)
		}
		evs := mustEvents(t, b, eventFilter{EventKey: "k-dup"})
		if len(evs) != 1 || evs[0].Duplicates != n {
			t.Fatalf("k-dup: %d entries, the first counting %d duplicates; want 1 counting %d", len(evs), evs[0].Duplicates, n)
		}
		// Within their own bound; the size bound takes them first.
		if got := len(mustEvents(t, b, eventFilter{Result: "invalid_signature", Limit: 2 * n})); got == 0 || got > journal.DefaultMaxUnverified {
			t.Fatalf("%d forged entries kept, want some, at most %d", got, journal.DefaultMaxUnverified)
		}
	})

	t.Run("ConcurrentRecords", func(t *testing.T) {
		b := openWith(t, open, journalOptions{})
		var wg sync.WaitGroup
		for g := range 8 {
			wg.Go(func() {
				for i := range 50 {
					record(t, b, journalEvent{Kind: kindCallback, Verified: true, ProjectID: "1",
						PaymentID: "p" + strconv.Itoa(g), OperationID: fmt.Sprintf("%d-%d", g, i), EventKey: fmt.Sprintf("k%d", i),
						Body: []byte("b"), Result: "forwarded"})
				}
			})
		}
		wg.Wait()
		evs := mustEvents(t, b, eventFilter{Limit: 1000})
		seen := map[string]bool{}
		for _, e := range evs {
			seen[e.ID] = true
		}
		if len(evs) != 400 || len(seen) != 400 {
			t.Fatalf("%d entries with %d distinct IDs, want 400", len(evs), len(seen))
		}
		for g := range 8 {
			if v := mustTimeline(t, b, "1", "p"+strconv.Itoa(g)).Payment; v.Events != 50 || v.Callbacks != 50 {
				t.Fatalf("p%d view counts %d events, %d callbacks; want 50", g, v.Events, v.Callbacks)
			}
		}
	})
}

// sameView compares views with time.Time.Equal.
func sameView(a, b paymentView) bool {
	if !a.Started.Equal(b.Started) || !a.Updated.Equal(b.Updated) || !a.Signed.Equal(b.Signed) {
		return false
	}
	a.Started, a.Updated, a.Signed = b.Started, b.Updated, b.Signed
	return a == b
}

func TestMemoryBackend(t *testing.T) {
	runBackendSuite(t, func(t *testing.T) backend {
		b := newMemoryBackend(0, backendSuiteOptions(t), nil)
		t.Cleanup(func() { _ = b.Destruct() })
		return b
	})
}

// The size bound of the memory journal counts estimated bytes.
func TestMemoryJournalSizeBound(t *testing.T) {
	j := newMemoryJournal(journalOptions{MaxSize: 64 << 10}, nil)
	body := bytes.Repeat([]byte("x"), 1000)
	for i := range 1000 {
		record(t, j, journalEvent{Kind: kindCallback, Verified: true, ProjectID: "1", PaymentID: strconv.Itoa(i),
			EventKey: "k" + strconv.Itoa(i), Body: body})
		if j.size > 64<<10 {
			t.Fatalf("after %d entries the journal holds %d bytes, bound 64 KiB", i+1, j.size)
		}
	}
	evs := mustEvents(t, j, eventFilter{Limit: 1000})
	if len(evs) < 40 || evs[0].PaymentID != "999" {
		t.Fatalf("kept %d entries, newest %s", len(evs), evs[0].PaymentID)
	}
	// What went took its payment and body along.
	oldest := evs[len(evs)-1].PaymentID
	if n, _ := strconv.Atoi(oldest); len(j.payments) != 1000-n || len(j.bodies) != 1000-n {
		t.Fatalf("%d payments and %d bodies for %d entries", len(j.payments), len(j.bodies), 1000-n)
	}
	// Dropping everything brings the estimate back to zero.
	j.setOptions(journalOptions{MaxSize: 1})
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
			ma := newMemEvent(&slab, &journalEvent{ID: a}, nil)
			mb := newMemEvent(&slab, &journalEvent{ID: b}, nil)
			if got, want := compareID(ma, mb), strings.Compare(a, b); got != want {
				t.Errorf("compareID(%q, %q) = %d, want %d", a, b, got, want)
			}
		}
	}
}

// A full journal prunes in batches, a tenth of a small bound but at most a
// sixty-fourth of a large one, so no batch holds the writer for long.
func TestSizePruneFloor(t *testing.T) {
	for _, c := range []struct{ max, floor int64 }{
		{256 << 20, 252 << 20}, // the default: 4 MiB at a time
		{32 << 20, 31 << 20},   // 1 MiB
		{4 << 20, 4<<20 - (4<<20)/10},
		{1000, 900},
	} {
		if got := sqlitestore.SizePruneFloor(c.max); got != c.floor {
			t.Errorf("SizePruneFloor(%d) = %d, want %d", c.max, got, c.floor)
		}
	}
}
