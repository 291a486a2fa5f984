package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/journal"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/store"
)

// The backend suite: one set of behaviour tests that every backend passes.
// For example:
//
//	storetest.RunBackend(t, func(t *testing.T, o journal.Options) store.Backend {
//		b := memstore.New(0, o, store.Hooks{})
//		t.Cleanup(func() { _ = b.Close() })
//		return b
//	})

// Base is the Fixture's "now": entries lie in the hour before it, well
// within the default MaxAge.
func Base() time.Time { return time.Now().UTC().Truncate(time.Millisecond) }

// Record records e and fails t on error.
func Record(t testing.TB, j journal.Journal, e journal.Event) {
	t.Helper()
	if err := j.Record(context.Background(), e); err != nil {
		t.Fatalf("Record(%s): %v", e.OperationID, err)
	}
}

// Fixture records three payments and one stranger's callback. Each entry's
// OperationID names it, so that tests can compare lists by name.
//
//	p1 (project 10): signed, processing, app error on k2, k2 retried: success
//	p2 (project 10): gate, declined
//	p3 (project 20): signed only, still open
//	u1: an unverified callback claiming p1
func Fixture(t *testing.T, j journal.Journal, base time.Time) {
	t.Helper()
	at := func(m int) time.Time { return base.Add(time.Duration(m) * time.Minute) }
	for _, e := range []journal.Event{
		{OperationID: "p1-sign", Kind: journal.KindPaymentPage, Time: at(-50), ProjectID: "10", PaymentID: "p1",
			Verified: true, Result: "signed", Amount: "1000", Currency: "EUR", Method: "card", Path: "/pay"},
		{OperationID: "p2-gate", Kind: journal.KindGate, Time: at(-45), ProjectID: "10", PaymentID: "p2",
			Verified: true, Result: "signed", Amount: "500", Currency: "USD", Method: "sbp"},
		{OperationID: "p1-cb1", Kind: journal.KindCallback, Time: at(-40), ProjectID: "10", PaymentID: "p1",
			Verified: true, Result: "forwarded", Status: 200, AppStatus: 200, EventKey: "k1",
			PaymentStatus: "processing", OperationStatus: "processing", Body: []byte(`{"k":1}`)},
		{OperationID: "p1-cb2", Kind: journal.KindCallback, Time: at(-30), ProjectID: "10", PaymentID: "p1",
			Verified: true, Result: "app_error", Status: 500, AppStatus: 500, EventKey: "k2",
			PaymentStatus: "success", OperationStatus: "success", Body: []byte(`{"k":2}`)},
		{OperationID: "p1-cb3", Kind: journal.KindCallback, Time: at(-29), ProjectID: "10", PaymentID: "p1",
			Verified: true, Result: "forwarded", Status: 200, AppStatus: 200, EventKey: "k2",
			PaymentStatus: "success", OperationStatus: "success", Body: []byte(`{"k":2,"retry":true}`)},
		{OperationID: "u1", Kind: journal.KindCallback, Time: at(-25), ProjectID: "10", PaymentID: "p1",
			Verified: false, Result: "bad_signature", Status: 400, EventKey: "ku",
			PaymentStatus: "success", Body: []byte(`forged`)},
		{OperationID: "p2-cb1", Kind: journal.KindCallback, Time: at(-20), ProjectID: "10", PaymentID: "p2",
			Verified: true, Result: "forwarded", Status: 200, AppStatus: 200, EventKey: "k3",
			PaymentStatus: "decline", Body: []byte(`{"k":3}`)},
		{OperationID: "p3-sign", Kind: journal.KindPaymentPage, Time: at(-10), ProjectID: "20", PaymentID: "p3",
			Verified: true, Result: "signed", Amount: "700", Currency: "EUR", Method: "card"},
	} {
		Record(t, j, e)
	}
}

// FixtureNewestFirst is every Fixture entry, newest first.
var FixtureNewestFirst = []string{"p3-sign", "p2-cb1", "u1", "p1-cb3", "p1-cb2", "p1-cb1", "p2-gate", "p1-sign"}

// OpIDs are the events' OperationIDs, by which the fixture names them.
func OpIDs(evs []journal.Event) []string {
	out := make([]string, len(evs))
	for i, e := range evs {
		out[i] = e.OperationID
	}
	return out
}

func payIDs(vs []journal.PaymentView) []string {
	out := make([]string, len(vs))
	for i, v := range vs {
		out[i] = v.PaymentID
	}
	return out
}

// MustEvents lists events and fails t on error.
func MustEvents(t *testing.T, j journal.Journal, f journal.EventFilter) []journal.Event {
	t.Helper()
	evs, err := j.Events(context.Background(), f)
	if err != nil {
		t.Fatalf("Events(%+v): %v", f, err)
	}
	return evs
}

func wantEvents(t *testing.T, j journal.Journal, f journal.EventFilter, want ...string) {
	t.Helper()
	if got := OpIDs(MustEvents(t, j, f)); !slices.Equal(got, want) {
		t.Fatalf("Events(%+v) = %q, want %q", f, got, want)
	}
}

func wantPayments(t *testing.T, j journal.Journal, f journal.PaymentFilter, want ...string) {
	t.Helper()
	vs, err := j.Payments(context.Background(), f)
	if err != nil {
		t.Fatalf("Payments(%+v): %v", f, err)
	}
	if got := payIDs(vs); !slices.Equal(got, want) {
		t.Fatalf("Payments(%+v) = %q, want %q", f, got, want)
	}
}

// MustTimeline reads a timeline and fails t on error.
func MustTimeline(t *testing.T, j journal.Journal, project, payment string) journal.Timeline {
	t.Helper()
	tl, err := j.Timeline(context.Background(), project, payment)
	if err != nil {
		t.Fatalf("Timeline(%s, %s): %v", project, payment, err)
	}
	return tl
}

// RunBackend runs the de-dup contract and the journal's against the
// backends open returns. open(t, o) must return an empty backend whose
// journal is bounded by o, and close it in t.Cleanup.
func RunBackend(t *testing.T, open func(t *testing.T, o journal.Options) store.Backend) {
	ctx := context.Background()

	t.Run("Store", func(t *testing.T) {
		RunStore(t, StoreSuite{
			New:    func(t *testing.T) store.Store { return open(t, journal.Options{}) },
			Short:  150 * time.Millisecond,
			Elapse: time.Sleep,
		})
	})

	t.Run("HundredClaimersOneWinner", func(t *testing.T) {
		b := open(t, journal.Options{})
		for i := range 5 {
			ClaimRace(t, []store.Store{b}, "hundred:"+strconv.Itoa(i), 100)
		}
	})

	t.Run("RecordAssignsIDAndTime", func(t *testing.T) {
		b := open(t, journal.Options{})
		before := time.Now()
		for i := range 20 {
			Record(t, b, journal.Event{OperationID: strconv.Itoa(i), Kind: journal.KindCallback, Verified: true, Result: "forwarded"})
		}
		evs := MustEvents(t, b, journal.EventFilter{})
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
		b := open(t, journal.Options{})
		Fixture(t, b, Base())
		evs := MustEvents(t, b, journal.EventFilter{})
		if got := OpIDs(evs); !slices.Equal(got, FixtureNewestFirst) {
			t.Fatalf("Events = %q, want %q", got, FixtureNewestFirst)
		}
		for _, e := range evs {
			if e.Body != nil {
				t.Fatalf("%s listed with its body", e.OperationID)
			}
		}
		// Fields come back as recorded.
		e := evs[slices.Index(OpIDs(evs), "p1-cb2")]
		if e.Kind != journal.KindCallback || e.ProjectID != "10" || e.PaymentID != "p1" || e.Result != "app_error" ||
			e.Status != 500 || e.AppStatus != 500 || e.EventKey != "k2" || e.PaymentStatus != "success" ||
			e.OperationStatus != "success" || !e.Verified {
			t.Fatalf("p1-cb2 came back as %+v", e)
		}
		if s := evs[slices.Index(OpIDs(evs), "p1-sign")]; s.Amount != "1000" || s.Currency != "EUR" ||
			s.Method != "card" || s.Path != "/pay" {
			t.Fatalf("p1-sign came back as %+v", s)
		}
	})

	t.Run("EventsFilters", func(t *testing.T) {
		b := open(t, journal.Options{})
		base := Base()
		Fixture(t, b, base)
		at := func(m int) time.Time { return base.Add(time.Duration(m) * time.Minute) }
		wantEvents(t, b, journal.EventFilter{ProjectID: "20"}, "p3-sign")
		// A stranger's entry for a payment shows among that payment's events.
		wantEvents(t, b, journal.EventFilter{ProjectID: "10", PaymentID: "p1"}, "u1", "p1-cb3", "p1-cb2", "p1-cb1", "p1-sign")
		wantEvents(t, b, journal.EventFilter{PaymentID: "p2"}, "p2-cb1", "p2-gate")
		wantEvents(t, b, journal.EventFilter{ProjectID: "20", PaymentID: "p1"})
		wantEvents(t, b, journal.EventFilter{Result: "app_error"}, "p1-cb2")
		wantEvents(t, b, journal.EventFilter{Result: "bad_signature"}, "u1")
		wantEvents(t, b, journal.EventFilter{Kind: journal.KindGate}, "p2-gate")
		wantEvents(t, b, journal.EventFilter{Kind: journal.KindCallback, ProjectID: "10", Result: "forwarded"}, "p2-cb1", "p1-cb3", "p1-cb1")
		wantEvents(t, b, journal.EventFilter{EventKey: "k2"}, "p1-cb3", "p1-cb2")
		// Since is inclusive, Until exclusive.
		wantEvents(t, b, journal.EventFilter{Since: at(-45), Until: at(-29)}, "p1-cb2", "p1-cb1", "p2-gate")
		wantEvents(t, b, journal.EventFilter{Since: at(-20)}, "p3-sign", "p2-cb1")
		wantEvents(t, b, journal.EventFilter{Until: at(-45)}, "p1-sign")
		wantEvents(t, b, journal.EventFilter{Since: at(-5)})
		wantEvents(t, b, journal.EventFilter{Limit: 2, Kind: journal.KindCallback}, "p2-cb1", "u1")
	})

	t.Run("EventsPaging", func(t *testing.T) {
		b := open(t, journal.Options{})
		Fixture(t, b, Base())
		var got []string
		before := ""
		for range 10 {
			page := MustEvents(t, b, journal.EventFilter{Before: before, Limit: 3})
			if len(page) == 0 {
				break
			}
			if len(page) > 3 {
				t.Fatalf("page of %d with Limit 3", len(page))
			}
			got = append(got, OpIDs(page)...)
			before = page[len(page)-1].ID
		}
		if !slices.Equal(got, FixtureNewestFirst) {
			t.Fatalf("pages = %q, want %q", got, FixtureNewestFirst)
		}
		// Before with a filter.
		evs := MustEvents(t, b, journal.EventFilter{PaymentID: "p1", ProjectID: "10", Limit: 2})
		wantEvents(t, b, journal.EventFilter{PaymentID: "p1", ProjectID: "10", Before: evs[1].ID}, "p1-cb2", "p1-cb1", "p1-sign")
	})

	t.Run("EventsDefaultLimit", func(t *testing.T) {
		b := open(t, journal.Options{})
		base := Base().Add(-time.Hour)
		for i := range 120 {
			Record(t, b, journal.Event{OperationID: strconv.Itoa(i), Kind: journal.KindCallback, Verified: true,
				Time: base.Add(time.Duration(i) * time.Second), ProjectID: "1", PaymentID: "x"})
		}
		evs := MustEvents(t, b, journal.EventFilter{})
		if len(evs) != journal.DefaultListLimit || evs[0].OperationID != "119" {
			t.Fatalf("Events without Limit: %d entries starting with %s, want 100 from 119", len(evs), evs[0].OperationID)
		}
		if n := len(MustEvents(t, b, journal.EventFilter{Limit: 500})); n != 120 {
			t.Fatalf("Limit 500 listed %d of 120", n)
		}
	})

	t.Run("Payments", func(t *testing.T) {
		b := open(t, journal.Options{})
		base := Base()
		Fixture(t, b, base)
		at := func(m int) time.Time { return base.Add(time.Duration(m) * time.Minute) }
		// Updated: p3 -10, p2 -20, p1 -29 (the stranger's -25 does not count).
		wantPayments(t, b, journal.PaymentFilter{}, "p3", "p2", "p1")
		wantPayments(t, b, journal.PaymentFilter{ProjectID: "10"}, "p2", "p1")
		wantPayments(t, b, journal.PaymentFilter{PaymentID: "p2"}, "p2")
		wantPayments(t, b, journal.PaymentFilter{ProjectID: "10", PaymentID: "p1"}, "p1")
		wantPayments(t, b, journal.PaymentFilter{ProjectID: "20", PaymentID: "p1"})
		wantPayments(t, b, journal.PaymentFilter{ProjectID: "10", PaymentID: "p1", Open: true})
		wantPayments(t, b, journal.PaymentFilter{ProjectID: "10", PaymentID: "p1", Until: at(-30)})
		wantPayments(t, b, journal.PaymentFilter{Status: "success"}, "p1")
		wantPayments(t, b, journal.PaymentFilter{Method: "card"}, "p3", "p1")
		wantPayments(t, b, journal.PaymentFilter{Open: true}, "p3")
		wantPayments(t, b, journal.PaymentFilter{Open: true, ProjectID: "10"})
		wantPayments(t, b, journal.PaymentFilter{Since: at(-20)}, "p3", "p2")
		wantPayments(t, b, journal.PaymentFilter{Until: at(-20)}, "p1")
		wantPayments(t, b, journal.PaymentFilter{Limit: 2}, "p3", "p2")
		wantPayments(t, b, journal.PaymentFilter{ProjectID: "nope"})
	})

	t.Run("Timeline", func(t *testing.T) {
		b := open(t, journal.Options{})
		base := Base()
		Fixture(t, b, base)
		at := func(m int) time.Time { return base.Add(time.Duration(m) * time.Minute) }
		tl := MustTimeline(t, b, "10", "p1")
		if got, want := OpIDs(tl.Events), []string{"p1-sign", "p1-cb1", "p1-cb2", "p1-cb3"}; !slices.Equal(got, want) {
			t.Fatalf("timeline = %q, want %q (oldest first, no strangers)", got, want)
		}
		for _, e := range tl.Events {
			if e.Body != nil {
				t.Fatalf("timeline entry %s carries its body", e.OperationID)
			}
		}
		v := tl.Payment
		want := journal.PaymentView{ProjectID: "10", PaymentID: "p1", Started: at(-50), Updated: at(-29), Signed: at(-50),
			Mode: journal.KindPaymentPage, Amount: "1000", Currency: "EUR", Method: "card", Status: "success", Final: true,
			Callbacks: 3, AppErrors: 1, Events: 4}
		if !SameView(v, want) {
			t.Fatalf("p1 view = %+v\nwant %+v", v, want)
		}
		v2 := MustTimeline(t, b, "10", "p2").Payment
		if v2.Mode != journal.KindGate || !v2.Signed.Equal(at(-45)) || v2.Status != "decline" || !v2.Final ||
			v2.Callbacks != 1 || v2.Events != 2 || v2.Method != "sbp" {
			t.Fatalf("p2 view = %+v", v2)
		}
		v3 := MustTimeline(t, b, "20", "p3").Payment
		if v3.Status != "" || v3.Final || v3.Callbacks != 0 || v3.Events != 1 || !v3.Started.Equal(at(-10)) {
			t.Fatalf("p3 view = %+v", v3)
		}
		// The payment list shows the same views.
		vs, err := b.Payments(ctx, journal.PaymentFilter{PaymentID: "p1"})
		if err != nil || len(vs) != 1 || !SameView(vs[0], want) {
			t.Fatalf("Payments(p1) = %+v, %v", vs, err)
		}
		for _, id := range [][2]string{{"10", "nope"}, {"20", "p1"}, {"", ""}} {
			if _, err := b.Timeline(ctx, id[0], id[1]); !errors.Is(err, journal.ErrNotFound) {
				t.Fatalf("Timeline(%q, %q) = %v, want errNotFound", id[0], id[1], err)
			}
		}
	})

	t.Run("FinalStatus", func(t *testing.T) {
		b := open(t, journal.Options{})
		base := Base().Add(-time.Hour)
		Record(t, b, journal.Event{Kind: journal.KindPaymentPage, Time: base, ProjectID: "1", PaymentID: "f", Verified: true})
		for i, st := range []struct {
			status string
			final  bool
		}{{"processing", false}, {"success", true}, {"partially refunded", false}, {"refunded", true},
			{"awaiting 3ds result", false}, {"decline", true}, {"", true}} {
			// An entry without a status leaves the last one standing.
			Record(t, b, journal.Event{Kind: journal.KindCallback, Time: base.Add(time.Duration(i+1) * time.Minute),
				ProjectID: "1", PaymentID: "f", Verified: true, PaymentStatus: st.status, Result: "forwarded"})
			v := MustTimeline(t, b, "1", "f").Payment
			if v.Final != st.final || (st.status != "" && v.Status != st.status) {
				t.Fatalf("after %q: status %q final %v, want final %v", st.status, v.Status, v.Final, st.final)
			}
		}
		// A reconciled status counts like a callback's.
		Record(t, b, journal.Event{Kind: journal.KindStatus, Time: base.Add(time.Hour), ProjectID: "1", PaymentID: "g",
			Verified: true, PaymentStatus: "success"})
		if v := MustTimeline(t, b, "1", "g").Payment; !v.Final || v.Callbacks != 0 {
			t.Fatalf("status entry gave %+v", v)
		}
	})

	t.Run("OpenPayments", func(t *testing.T) {
		b := open(t, journal.Options{})
		base := Base()
		Fixture(t, b, base)
		at := func(m int) time.Time { return base.Add(time.Duration(m) * time.Minute) }
		// p4: signed long ago, still processing; p5: callbacks only, never signed here.
		Record(t, b, journal.Event{OperationID: "p4-sign", Kind: journal.KindGate, Time: at(-55), ProjectID: "20",
			PaymentID: "p4", Verified: true})
		Record(t, b, journal.Event{OperationID: "p4-cb", Kind: journal.KindCallback, Time: at(-5), ProjectID: "20",
			PaymentID: "p4", Verified: true, PaymentStatus: "processing"})
		Record(t, b, journal.Event{OperationID: "p5-cb", Kind: journal.KindCallback, Time: at(-58), ProjectID: "20",
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
		b := open(t, journal.Options{})
		Fixture(t, b, Base())
		for key, want := range map[string]string{"k1": `{"k":1}`, "k2": `{"k":2}`, "k3": `{"k":3}`} {
			got, err := b.Body(ctx, key)
			if err != nil || string(got) != want {
				t.Fatalf("Body(%s) = %q, %v; want %q (the first stored)", key, got, err, want)
			}
		}
		for _, key := range []string{"ku", "nope", ""} {
			if got, err := b.Body(ctx, key); !errors.Is(err, journal.ErrNotFound) {
				t.Fatalf("Body(%q) = %q, %v; want errNotFound", key, got, err)
			}
		}
		// The journal keeps its own copy of a body.
		buf := []byte(`{"mine":1}`)
		Record(t, b, journal.Event{Kind: journal.KindCallback, ProjectID: "1", PaymentID: "b", Verified: true, EventKey: "kb", Body: buf})
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
		Record(t, b, journal.Event{Kind: journal.KindReplay, ProjectID: "1", PaymentID: "b", Verified: true, EventKey: "kr",
			Body: []byte("replayed")})
		if got, err := b.Body(ctx, "kr"); err != nil || string(got) != "replayed" {
			t.Fatalf("Body(kr) = %q, %v", got, err)
		}
	})

	t.Run("NoBodies", func(t *testing.T) {
		b := open(t, journal.Options{NoBodies: true})
		Fixture(t, b, Base())
		if got := OpIDs(MustEvents(t, b, journal.EventFilter{})); !slices.Equal(got, FixtureNewestFirst) {
			t.Fatalf("Events = %q", got)
		}
		for _, key := range []string{"k1", "k2", "k3"} {
			if got, err := b.Body(ctx, key); !errors.Is(err, journal.ErrNotFound) {
				t.Fatalf("Body(%s) with NoBodies = %q, %v", key, got, err)
			}
		}
		if v := MustTimeline(t, b, "10", "p1").Payment; v.Events != 4 || !v.Final {
			t.Fatalf("p1 view with NoBodies = %+v", v)
		}
	})

	t.Run("UnverifiedTruncatedAndApart", func(t *testing.T) {
		b := open(t, journal.Options{})
		Fixture(t, b, Base())
		before := MustTimeline(t, b, "10", "p1").Payment
		long := strings.Repeat("é", 100) // two bytes each: the cut must not split one
		Record(t, b, journal.Event{Kind: journal.KindCallback, Verified: false, ProjectID: long, PaymentID: long,
			OperationID: long, OperationType: long, OperationStatus: long, PaymentStatus: long, EventKey: long,
			Result: "bad_signature", Body: []byte(long)})
		Record(t, b, journal.Event{Kind: journal.KindCallback, Verified: false, ProjectID: "10", PaymentID: "p1",
			PaymentStatus: "decline", Result: "bad_signature", OperationID: "u2"})
		Record(t, b, journal.Event{Kind: journal.KindCallback, Verified: false, ProjectID: "10", PaymentID: "ghost",
			PaymentStatus: "success", Result: "bad_signature", OperationID: "u3", Amount: "1"})
		evs := MustEvents(t, b, journal.EventFilter{Result: "bad_signature"})
		if got := len(evs); got != 4 {
			t.Fatalf("%d unverified entries listed, want 4", got)
		}
		var e journal.Event
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
		if _, err := b.Body(ctx, e.EventKey); !errors.Is(err, journal.ErrNotFound) {
			t.Fatalf("an unverified body was stored: %v", err)
		}
		// Strangers neither change a payment nor make one.
		if after := MustTimeline(t, b, "10", "p1").Payment; !SameView(after, before) {
			t.Fatalf("unverified callbacks changed p1:\n%+v\nwas %+v", after, before)
		}
		if _, err := b.Timeline(ctx, "10", "ghost"); !errors.Is(err, journal.ErrNotFound) {
			t.Fatalf("Timeline(ghost) = %v, want errNotFound", err)
		}
		if _, err := b.Timeline(ctx, e.ProjectID, e.PaymentID); !errors.Is(err, journal.ErrNotFound) {
			t.Fatalf("Timeline of the long stranger = %v, want errNotFound", err)
		}
		wantPayments(t, b, journal.PaymentFilter{}, "p3", "p2", "p1")
		// Verified entries of other kinds are never cut.
		Record(t, b, journal.Event{Kind: journal.KindPaymentPage, Verified: true, ProjectID: "30", PaymentID: long, OperationID: "long-sign"})
		if tl := MustTimeline(t, b, "30", long); tl.Payment.PaymentID != long {
			t.Fatal("a verified payment id was cut")
		}
	})

	t.Run("UnverifiedOwnBound", func(t *testing.T) {
		b := open(t, journal.Options{MaxUnverified: 5})
		base := Base().Add(-time.Hour)
		for i := range 20 {
			e := journal.Event{Kind: journal.KindCallback, Time: base.Add(time.Duration(i) * time.Second),
				OperationID: fmt.Sprint(i), ProjectID: "1", PaymentID: "p" + strconv.Itoa(i%3)}
			if i%4 == 0 { // 5 genuine among 15 strangers
				e.Verified, e.Result = true, "forwarded"
			} else {
				e.Result = "bad_signature"
			}
			Record(t, b, e)
		}
		wantEvents(t, b, journal.EventFilter{Result: "forwarded"}, "16", "12", "8", "4", "0")
		wantEvents(t, b, journal.EventFilter{Result: "bad_signature"}, "19", "18", "17", "15", "14")
		if n := len(MustEvents(t, b, journal.EventFilter{})); n != 10 {
			t.Fatalf("%d entries in all, want 10", n)
		}
	})

	t.Run("MaxAge", func(t *testing.T) {
		b := open(t, journal.Options{MaxAge: time.Hour})
		now := time.Now().UTC()
		Record(t, b, journal.Event{OperationID: "old-sign", Kind: journal.KindPaymentPage, Time: now.Add(-2 * time.Hour),
			ProjectID: "1", PaymentID: "old", Verified: true})
		Record(t, b, journal.Event{OperationID: "old-cb", Kind: journal.KindCallback, Time: now.Add(-90 * time.Minute),
			ProjectID: "1", PaymentID: "mixed", Verified: true, EventKey: "ko", Body: []byte("old")})
		Record(t, b, journal.Event{OperationID: "old-u", Kind: journal.KindCallback, Time: now.Add(-90 * time.Minute),
			ProjectID: "1", PaymentID: "x"})
		Record(t, b, journal.Event{OperationID: "new-cb", Kind: journal.KindCallback, Time: now.Add(-10 * time.Minute),
			ProjectID: "1", PaymentID: "mixed", Verified: true, EventKey: "kn", Body: []byte("new")})
		wantEvents(t, b, journal.EventFilter{}, "new-cb")
		wantPayments(t, b, journal.PaymentFilter{}, "mixed")
		if _, err := b.Timeline(ctx, "1", "old"); !errors.Is(err, journal.ErrNotFound) {
			t.Fatalf("Timeline of an aged-out payment = %v", err)
		}
		if got := OpIDs(MustTimeline(t, b, "1", "mixed").Events); !slices.Equal(got, []string{"new-cb"}) {
			t.Fatalf("timeline of a half-aged payment = %q", got)
		}
		if _, err := b.Body(ctx, "ko"); !errors.Is(err, journal.ErrNotFound) {
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
		b := open(t, journal.Options{})
		at := Base().Add(-time.Minute)
		want := []journal.Event{
			{Kind: journal.KindCallback, Time: at, ProjectID: "10", PaymentID: "f1", OperationID: "7", OperationType: "sale",
				OperationStatus: "decline", PaymentStatus: "decline", EventKey: "kf", Result: "app_error",
				Status: 502, AppStatus: 502, AppLatencyMS: 3, Reason: "unreachable", Verified: true,
				Amount: "1000", Currency: "KWD", Method: "card"},
			{Kind: journal.KindGate, Time: at.Add(time.Second), ProjectID: "10", PaymentID: "f1", Result: "signed",
				Status: 200, EcommpayStatus: 200, Verified: true, Path: "/v2/payment/card/sale",
				Amount: "1000", Currency: "KWD", Method: "card"},
			{Kind: journal.KindStatusRequest, Time: at.Add(2 * time.Second), ProjectID: "10", PaymentID: "f1",
				Result: "error", AppStatus: 500, EcommpayStatus: 500, Reason: "HTTP 500", Verified: true, Method: "card"},
		}
		for _, e := range want {
			Record(t, b, e)
		}
		got := MustEvents(t, b, journal.EventFilter{PaymentID: "f1"})
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
		b := open(t, journal.Options{})
		at := Base().Add(-time.Minute)
		// Seen only through callbacks: the first one with a sum says it.
		Record(t, b, journal.Event{Kind: journal.KindCallback, Time: at, ProjectID: "10", PaymentID: "c1", Verified: true,
			Result: "forwarded", EventKey: "c1a", PaymentStatus: "processing", Amount: "1000", Currency: "CNY", Method: "wechat"})
		Record(t, b, journal.Event{Kind: journal.KindCallback, Time: at.Add(time.Second), ProjectID: "10", PaymentID: "c1", Verified: true,
			Result: "forwarded", EventKey: "c1b", PaymentStatus: "success", Amount: "999", Currency: "USD", Method: "card"})
		v := MustTimeline(t, b, "10", "c1").Payment
		if v.Amount != "1000" || v.Currency != "CNY" || v.Method != "wechat" || v.Status != "success" {
			t.Fatalf("callback-first view = %+v, want 1000 CNY by wechat, success", v)
		}
		// A signing request says what was asked for, whatever came first.
		Record(t, b, journal.Event{Kind: journal.KindCallback, Time: at, ProjectID: "10", PaymentID: "c2", Verified: true,
			Result: "forwarded", EventKey: "c2a", PaymentStatus: "processing", Amount: "1", Currency: "EUR", Method: "card"})
		Record(t, b, journal.Event{Kind: journal.KindPaymentPage, Time: at.Add(time.Second), ProjectID: "10", PaymentID: "c2", Verified: true,
			Result: "signed", Amount: "500", Currency: "JPY"})
		v = MustTimeline(t, b, "10", "c2").Payment
		if v.Amount != "500" || v.Currency != "JPY" || v.Method != "card" {
			t.Fatalf("signed view = %+v, want 500 JPY, method card from the callback", v)
		}
		vs, err := b.Payments(ctx, journal.PaymentFilter{Method: "wechat"})
		if err != nil || len(vs) != 1 || vs[0].PaymentID != "c1" {
			t.Fatalf("Payments(method wechat) = %+v, %v", vs, err)
		}
	})

	t.Run("DuplicatesFoldIntoFirst", func(t *testing.T) {
		b := open(t, journal.Options{})
		base := Base().Add(-time.Hour)
		at := func(m int) time.Time { return base.Add(time.Duration(m) * time.Minute) }
		Record(t, b, journal.Event{OperationID: "first", Kind: journal.KindCallback, Verified: true, ProjectID: "1",
			PaymentID: "d", EventKey: "kd", Result: "forwarded", PaymentStatus: "success", Time: at(0), Body: []byte("first")})
		for i := range 5 {
			result := "duplicate"
			if i == 2 {
				result = "in_flight"
			}
			Record(t, b, journal.Event{OperationID: "dup", Kind: journal.KindCallback, Verified: true, ProjectID: "1",
				PaymentID: "d", EventKey: "kd", Result: result, PaymentStatus: "success", Time: at(i + 1), Body: []byte("dup")})
		}
		// A replay is an entry of its own, and is not where duplicates count.
		Record(t, b, journal.Event{OperationID: "replay", Kind: journal.KindReplay, Verified: true, ProjectID: "1",
			PaymentID: "d", EventKey: "kd", Result: "forwarded", Time: at(10)})
		Record(t, b, journal.Event{OperationID: "dup", Kind: journal.KindCallback, Verified: true, ProjectID: "1",
			PaymentID: "d", EventKey: "kd", Result: "duplicate", Time: at(11)})
		evs := MustEvents(t, b, journal.EventFilter{EventKey: "kd"})
		if got := OpIDs(evs); !slices.Equal(got, []string{"replay", "first"}) {
			t.Fatalf("entries of kd = %q, want the replay and the first callback only", got)
		}
		if f := evs[1]; f.Duplicates != 6 || !f.LastSeen.Equal(at(11)) || f.Result != "forwarded" {
			t.Fatalf("first entry counts %d duplicates, last seen %v (want 6, %v), result %s", f.Duplicates, f.LastSeen, at(11), f.Result)
		}
		if got, err := b.Body(ctx, "kd"); err != nil || string(got) != "first" {
			t.Fatalf("Body(kd) = %q, %v", got, err)
		}
		if v := MustTimeline(t, b, "1", "d").Payment; v.Callbacks != 1 || v.Events != 2 {
			t.Fatalf("view counts %d callbacks and %d events, want 1 and 2", v.Callbacks, v.Events)
		}
		// Without a first entry in the journal, a duplicate is entered.
		Record(t, b, journal.Event{OperationID: "orphan", Kind: journal.KindCallback, Verified: true, ProjectID: "1",
			PaymentID: "o", EventKey: "ko", Result: "duplicate", Time: at(12)})
		wantEvents(t, b, journal.EventFilter{EventKey: "ko"}, "orphan")
	})

	t.Run("FloodKeepsGenuine", func(t *testing.T) {
		// Strangers' forgeries and retries of one genuine callback, 20,000
		// each, at a journal of 1 MiB: an older genuine entry and its body
		// are still there.
		b := open(t, journal.Options{MaxSize: 1 << 20})
		base := Base().Add(-time.Hour)
		Record(t, b, journal.Event{OperationID: "old", Kind: journal.KindCallback, Verified: true, ProjectID: "1", PaymentID: "old",
			EventKey: "k-old", Result: "forwarded", Time: base, Body: bytes.Repeat([]byte("o"), 1000)})
		Record(t, b, journal.Event{OperationID: "dup-first", Kind: journal.KindCallback, Verified: true, ProjectID: "1",
			PaymentID: "retried", EventKey: "k-dup", Result: "forwarded", Time: base.Add(time.Millisecond), Body: []byte("d")})
		const n = 20_000
		for i := range n {
			at := base.Add(time.Duration(i+2) * time.Millisecond)
			Record(t, b, journal.Event{Kind: journal.KindCallback, ProjectID: "1", PaymentID: "forged-" + strconv.Itoa(i),
				EventKey: "forged-" + strconv.Itoa(i), Result: "invalid_signature", Time: at, Body: bytes.Repeat([]byte("f"), 1000)})
			Record(t, b, journal.Event{OperationID: "dup", Kind: journal.KindCallback, Verified: true, ProjectID: "1",
				PaymentID: "retried", EventKey: "k-dup", Result: "duplicate", Time: at, Body: []byte("d")})
		}
		wantEvents(t, b, journal.EventFilter{EventKey: "k-old"}, "old")
		if got, err := b.Body(ctx, "k-old"); err != nil || len(got) != 1000 {
			t.Fatalf("Body(k-old) after the flood: %d bytes, %v", len(got), err)
		}
		evs := MustEvents(t, b, journal.EventFilter{EventKey: "k-dup"})
		if len(evs) != 1 || evs[0].Duplicates != n {
			t.Fatalf("k-dup: %d entries, the first counting %d duplicates; want 1 counting %d", len(evs), evs[0].Duplicates, n)
		}
		// Within their own bound; the size bound takes them first.
		if got := len(MustEvents(t, b, journal.EventFilter{Result: "invalid_signature", Limit: 2 * n})); got == 0 || got > journal.DefaultMaxUnverified {
			t.Fatalf("%d forged entries kept, want some, at most %d", got, journal.DefaultMaxUnverified)
		}
	})

	t.Run("ConcurrentRecords", func(t *testing.T) {
		b := open(t, journal.Options{})
		var wg sync.WaitGroup
		for g := range 8 {
			wg.Go(func() {
				for i := range 50 {
					Record(t, b, journal.Event{Kind: journal.KindCallback, Verified: true, ProjectID: "1",
						PaymentID: "p" + strconv.Itoa(g), OperationID: fmt.Sprintf("%d-%d", g, i), EventKey: fmt.Sprintf("k%d", i),
						Body: []byte("b"), Result: "forwarded"})
				}
			})
		}
		wg.Wait()
		evs := MustEvents(t, b, journal.EventFilter{Limit: 1000})
		seen := map[string]bool{}
		for _, e := range evs {
			seen[e.ID] = true
		}
		if len(evs) != 400 || len(seen) != 400 {
			t.Fatalf("%d entries with %d distinct IDs, want 400", len(evs), len(seen))
		}
		for g := range 8 {
			if v := MustTimeline(t, b, "1", "p"+strconv.Itoa(g)).Payment; v.Events != 50 || v.Callbacks != 50 {
				t.Fatalf("p%d view counts %d events, %d callbacks; want 50", g, v.Events, v.Callbacks)
			}
		}
	})
}

// SameView compares views with time.Time.Equal.
func SameView(a, b journal.PaymentView) bool {
	if !a.Started.Equal(b.Started) || !a.Updated.Equal(b.Updated) || !a.Signed.Equal(b.Signed) {
		return false
	}
	a.Started, a.Updated, a.Signed = b.Started, b.Updated, b.Signed
	return a == b
}
