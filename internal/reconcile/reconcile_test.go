package reconcile

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/canon"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/journal"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/reconcile/reconciletest"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/store"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/store/memstore"
	"github.com/caddy-ecommpay/caddy-ecommpay/signature"
)

const testSecret = "secret"

// statusSuccess is a status answer with literals a float round trip would
// change.
const statusSuccess = `{"project_id":210,"payment":{"id":"%s","type":"purchase","status":"success","method":"wechat","sum":{"amount":1000,"currency":"CNY"}},"operations":[{"id":9227000002916,"type":"sale","status":"success","code":"0","rate":1.50,"big":123456789012345678901}],"errors":[]}`

// counts are the metric hooks, counted.
type counts struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *counts) add(k string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n[k]++
}
func (c *counts) get(k string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[k]
}
func (c *counts) Asked(result string)  { c.add("asked " + result) }
func (c *counts) Delivered(final bool) { c.add(fmt.Sprint("delivered final=", final)) }
func (c *counts) GaveUp(result string) { c.add("gave up " + result) }

// env is a reconciler whose loop the test drives with a clock it moves,
// on a memory backend, delivering to an app that records what it gets
// and journals it as the callback handler does.
type env struct {
	t      *testing.T
	clock  time.Time
	base   time.Time
	rc     *Reconciler
	b      *memstore.Backend
	status *reconciletest.Status
	counts *counts
	scans  int

	appStatus atomic.Int32 // what the app answers
	mu        sync.Mutex
	got       [][]byte // every status event sent to the app
}

func newEnv(t *testing.T, s Settings, b *memstore.Backend) *env {
	t.Helper()
	old := statusPacer
	statusPacer = &pacer{}
	t.Cleanup(func() { statusPacer = old })
	e := &env{t: t, base: time.Now(), counts: &counts{n: map[string]int{}}}
	e.clock = e.base
	e.appStatus.Store(http.StatusOK)
	e.status = reconciletest.NewStatus(t, testSecret, func() time.Time { return e.clock })
	s.StatusURL, _ = url.Parse(e.status.URL)
	if s.Floor == 0 {
		s.Floor = time.Second
	}
	if b == nil {
		b = memstore.New(0, journal.Options{}, store.Hooks{})
	}
	e.b = b
	b.Dedup.SetClock(func() time.Time { return e.clock }) // leases follow the test's clock
	key := canon.NewKey(testSecret)
	rc, err := New(Config{
		Settings: s, Journal: b, Store: b, MaxBody: 1 << 20, Metrics: e.counts,
		Key: func(id string) *canon.Key {
			if id == "210" {
				return key
			}
			return nil
		},
		Deliver: e.deliver,
		Now:     func() time.Time { return e.clock },
	})
	if err != nil {
		t.Fatal(err)
	}
	e.rc = rc
	return e
}

// deliver is the app behind the callback route: it checks the event's
// signature and journals the delivery as the callback handler does.
func (e *env) deliver(ctx context.Context, body []byte) (journal.Event, error) {
	if err := signature.VerifyCallback(body, testSecret); err != nil {
		e.t.Errorf("the app cannot verify the status event %s: %v", body, err)
	}
	d, err := canon.Parse(body, canon.Limits{})
	if err != nil {
		return journal.Event{}, err
	}
	defer d.Release()
	e.mu.Lock()
	e.got = append(e.got, append([]byte(nil), body...))
	e.mu.Unlock()
	ev := journal.Event{Time: e.clock, Kind: journal.KindStatus, ProjectID: d.TextAt(d.Root(), "project_id"),
		PaymentID: d.TextAt(d.Root(), "payment", "id"), PaymentStatus: d.TextAt(d.Root(), "payment", "status"),
		AppStatus: int(e.appStatus.Load()), Verified: true, Result: "forwarded", EventKey: "k"}
	if ev.AppStatus != http.StatusOK {
		ev.Result = "app_error"
	}
	return ev, e.b.Record(ctx, ev)
}

func (e *env) received() [][]byte {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([][]byte(nil), e.got...)
}

// at sets the clock to base+d and scans once.
func (e *env) at(d time.Duration) {
	e.clock = e.base.Add(d)
	e.scans++
	e.rc.Scan(context.Background(), e.scans)
}

// started records the signing request that starts a payment, ago before
// the base time.
func (e *env) started(kind, paymentID, method string, ago time.Duration, appStatus int, path string) {
	e.t.Helper()
	reconciletest.Started(e.t, e.b, e.base.Add(-ago), kind, paymentID, method, appStatus, path)
}

func (e *env) timeline(paymentID string) []journal.Event {
	e.t.Helper()
	return reconciletest.Timeline(e.t, e.b, paymentID)
}

// An overdue Gate sale is asked about once; the app gets ecommpay's
// answer once, signed, with its literals kept.
func TestDeliversAnOverdueStatusOnce(t *testing.T) {
	e := newEnv(t, Settings{}, nil)
	e.started(journal.KindGate, "WX-1", "wechat", 2*time.Hour+time.Minute, 200, "/v2/payment/wallet/wechat/sale")
	e.status.Set("WX-1", 200, statusSuccess)
	e.at(0)
	e.at(time.Hour)
	e.at(30 * time.Hour)
	if got := e.status.Requests(); len(got) != 1 {
		t.Fatalf("status requests %v, want one", got)
	}
	got := e.received()
	if len(got) != 1 {
		t.Fatalf("the app got %d deliveries, want 1", len(got))
	}
	body := string(got[0])
	if !strings.Contains(body, `"rate":1.50`) || !strings.Contains(body, `123456789012345678901`) || !strings.Contains(body, `"operations":[`) {
		t.Errorf("the status event lost ecommpay's literals: %s", body)
	}
	tl := e.timeline("WX-1")
	if reconciletest.CountKind(tl, journal.KindStatusRequest, ResultFound) != 1 {
		t.Fatalf("timeline: %+v", tl)
	}
	for _, ev := range tl {
		if ev.Kind == journal.KindStatusRequest && (ev.AppStatus != 200 || ev.EcommpayStatus != 200 || ev.PaymentStatus != "success" ||
			ev.Method != "wechat" || !ev.Verified || !ev.Time.Equal(e.base)) {
			t.Errorf("status_request entry: %+v", ev)
		}
	}
	if e.counts.get("asked found") != 1 || e.counts.get("delivered final=true") != 1 {
		t.Errorf("metrics: %v", e.counts.n)
	}
}

// Only started payments are asked about, and only once overdue by their
// method.
func TestWhichPaymentsAndWhen(t *testing.T) {
	e := newEnv(t, Settings{}, nil)
	e.started(journal.KindGate, "WX-early", "wechat", time.Hour, 200, "/v2/payment/wallet/wechat/sale")
	e.started(journal.KindGate, "MB-late", "mbway", 5*time.Minute, 200, "/v2/payment/wallet/mbway/sale")
	e.started(journal.KindGate, "AL-refused", "alipay", 2*time.Hour, 400, "/v2/payment/wallet/alipay/sale")
	e.started(journal.KindGate, "AL-refund", "alipay", 2*time.Hour, 200, "/v2/payment/wallet/alipay/refund")
	e.started(journal.KindPaymentPage, "PP-early", "", 20*time.Minute, 0, "")
	e.started(journal.KindPaymentPage, "PP-late", "card", 31*time.Minute, 0, "")
	for _, id := range []string{"WX-early", "MB-late", "PP-late"} {
		e.status.Set(id, 200, `{"project_id":210,"payment":{"id":"%s","status":"awaiting customer"}}`)
	}
	e.at(0)
	got := strings.Join(e.status.Requests(), " ")
	if got != "MB-late PP-late" && got != "PP-late MB-late" {
		t.Fatalf("asked about %q, want MB-late and PP-late", got)
	}
	e.at(time.Hour + time.Second)
	if n := strings.Count(strings.Join(e.status.Requests(), " "), "WX-early"); n != 1 {
		t.Errorf("WX-early asked %d times once overdue", n)
	}
	// An intermediate status the app has not had is delivered, once.
	if n := len(e.received()); n != 3 {
		t.Errorf("the app got %d status events, want one per payment", n)
	}
	if e.counts.get("delivered final=false") != 3 {
		t.Errorf("metrics: %v", e.counts.n)
	}
}

// Another handler's project is left alone.
func TestOtherProjectsAreNotAskedAbout(t *testing.T) {
	e := newEnv(t, Settings{After: time.Minute}, nil)
	ev := journal.Event{Time: e.base.Add(-time.Hour), Kind: journal.KindPaymentPage, ProjectID: "211", PaymentID: "PP-211",
		Result: "signed", Verified: true}
	if err := e.b.Record(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	e.at(0)
	if got := e.status.Requests(); len(got) != 0 {
		t.Errorf("asked about %v", got)
	}
}

// While the app refuses the status event, it is asked about and delivered
// again, with backoff; once the app takes it, nothing more.
func TestRetriesWhileTheAppFails(t *testing.T) {
	e := newEnv(t, Settings{After: time.Minute, Every: 10 * time.Second}, nil)
	e.started(journal.KindGate, "WX-2", "wechat", 2*time.Minute, 200, "/v2/payment/wallet/wechat/sale")
	e.status.Set("WX-2", 200, statusSuccess)
	e.appStatus.Store(http.StatusInternalServerError)
	e.at(0)
	e.at(5 * time.Second) // before every
	if n := len(e.status.Requests()); n != 1 {
		t.Fatalf("%d status requests before every passed", n)
	}
	e.at(12 * time.Second)
	if n := len(e.status.Requests()); n != 2 {
		t.Fatalf("%d status requests after every, want 2", n)
	}
	e.at(25 * time.Second) // the second wait is 20s (+10%)
	if n := len(e.status.Requests()); n != 2 {
		t.Fatalf("%d status requests before the backed-off wait, want 2", n)
	}
	e.appStatus.Store(http.StatusOK)
	e.at(40 * time.Second)
	e.at(10 * time.Minute)
	if n := len(e.status.Requests()); n != 3 {
		t.Errorf("%d status requests, want 3", n)
	}
	if n := len(e.received()); n != 3 {
		t.Fatalf("the app was sent %d status events, want 3 (two refused)", n)
	}
	tl := e.timeline("WX-2")
	if reconciletest.CountKind(tl, journal.KindStatus, "app_error") != 2 || reconciletest.CountKind(tl, journal.KindStatus, "forwarded") != 1 {
		t.Errorf("timeline: %+v", tl)
	}
	if e.counts.get("delivered final=true") != 1 {
		t.Errorf("metrics: %v", e.counts.n)
	}
}

// A Payment Page never opened is not found until give_up, then abandoned;
// the app hears nothing.
func TestAbandonsAPaymentNeverOpened(t *testing.T) {
	e := newEnv(t, Settings{After: time.Minute, Every: time.Minute, GiveUp: time.Hour}, nil)
	e.started(journal.KindPaymentPage, "PP-gone", "", 2*time.Minute, 0, "")
	for m := 0; m <= 120; m++ {
		e.at(time.Duration(m) * time.Minute)
	}
	asked := e.status.Requests()
	// 1, 2, 4, 8, 16, 32 minutes apart, then give_up at 58 minutes in.
	if len(asked) < 5 || len(asked) > 8 {
		t.Errorf("%d status requests in an hour with backoff", len(asked))
	}
	if n := len(e.received()); n != 0 {
		t.Errorf("the app got %d events", n)
	}
	tl := e.timeline("PP-gone")
	if reconciletest.CountKind(tl, journal.KindStatusRequest, ResultAbandoned) != 1 || reconciletest.CountKind(tl, journal.KindStatusRequest, ResultNotFound) != len(asked) {
		t.Errorf("timeline: %+v", tl)
	}
	if e.counts.get("gave up abandoned") != 1 || e.counts.get("asked not_found") != len(asked) {
		t.Errorf("metrics: %v", e.counts.n)
	}
	// A new process (its memory empty) reads the journal and stays quiet.
	e.rc.seen = map[string]*payState{}
	e.at(3 * time.Hour)
	if n := len(e.status.Requests()); n != len(asked) {
		t.Errorf("asked again after abandoning")
	}
}

// Errors are retried with backoff; a payment that never reaches a final
// status is unresolved at give_up.
func TestErrorsThenUnresolved(t *testing.T) {
	e := newEnv(t, Settings{After: time.Minute, Every: time.Minute, GiveUp: 30 * time.Minute}, nil)
	e.started(journal.KindGate, "WX-3", "wechat", 2*time.Minute, 200, "/v2/payment/wallet/wechat/sale")
	e.status.Set("WX-3", http.StatusBadGateway, `<html>bad gateway</html>`)
	for m := 0; m <= 60; m++ {
		e.at(time.Duration(m) * time.Minute)
	}
	tl := e.timeline("WX-3")
	errs := reconciletest.CountKind(tl, journal.KindStatusRequest, ResultError)
	if errs < 3 || errs > 6 || reconciletest.CountKind(tl, journal.KindStatusRequest, ResultUnresolved) != 1 {
		t.Errorf("timeline: %d errors, %d unresolved: %+v", errs, reconciletest.CountKind(tl, journal.KindStatusRequest, ResultUnresolved), tl)
	}
	for _, ev := range tl {
		if ev.Kind == journal.KindStatusRequest && ev.Result == ResultError && (ev.AppStatus != http.StatusBadGateway ||
			ev.EcommpayStatus != http.StatusBadGateway || ev.Reason != "HTTP 502 with a body that is not a JSON object") {
			t.Errorf("status_request entry without ecommpay's HTTP status and the reason: %+v", ev)
		}
	}
	if e.counts.get("gave up unresolved") != 1 || e.counts.get("asked error") != errs {
		t.Errorf("metrics: %v", e.counts.n)
	}
	if n := len(e.received()); n != 0 {
		t.Errorf("the app got %d events", n)
	}
}

// Two nodes on one store: one status request per interval in total.
func TestTwoNodesAskOncePerInterval(t *testing.T) {
	shared := memstore.New(0, journal.Options{}, store.Hooks{})
	s := Settings{After: time.Minute, Every: time.Minute}
	a := newEnv(t, s, shared)
	b := newEnv(t, s, shared)
	b.rc.c.StatusURL = a.rc.c.StatusURL
	b.base, b.clock = a.base, a.clock
	a.started(journal.KindPaymentPage, "PP-2", "", 2*time.Minute, 0, "")
	// Both nodes scan every second for 8 minutes: requests at 0, 1, 3 and 7
	// minutes, one per interval (1, 2, 4 minutes).
	scanBoth := func(d time.Duration) {
		a.at(d)
		b.clock = a.clock
		b.scans++
		b.rc.Scan(context.Background(), b.scans)
	}
	for s := 0; s < 8*60; s++ {
		scanBoth(time.Duration(s) * time.Second)
	}
	at := a.status.Times()
	if len(at) != 4 {
		t.Fatalf("two nodes made %d status requests, want 4", len(at))
	}
	for i := 1; i < len(at); i++ {
		if gap, want := at[i].Sub(at[i-1]), time.Minute<<(i-1); gap < want {
			t.Errorf("requests %d and %d %s apart, want at least %s", i, i+1, gap, want)
		}
	}
	// A node takes the lease of the next request and dies: the other asks
	// once the lease expires, and not before.
	b.clock = a.base.Add(16 * time.Minute)
	if st, _, err := shared.Claim(context.Background(), "reconcile:210:PP-2", 8*time.Minute); err != nil || st != store.Claimed {
		t.Fatalf("claim: %v %v", st, err)
	}
	for s := 16 * 60; s < 30*60; s += 10 {
		b.clock = a.base.Add(time.Duration(s) * time.Second)
		a.clock = b.clock
		b.scans++
		b.rc.Scan(context.Background(), b.scans)
	}
	at = a.status.Times()
	if len(at) != 5 || at[4].Sub(a.base) < 24*time.Minute {
		t.Errorf("after a node died holding the lease: requests at %v", at)
	}
}

// Stop ends a started loop at once.
func TestStop(t *testing.T) {
	e := newEnv(t, Settings{}, nil)
	e.rc.Start()
	start := time.Now()
	e.rc.Stop()
	select {
	case <-e.rc.Done():
	default:
		t.Fatal("the loop is still running")
	}
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Errorf("Stop took %s", d)
	}
	var none *Reconciler
	none.Start()
	none.Stop()
}

// The status request is signed like a Gate request; the event for the app
// like a callback, with ecommpay's signature replaced; answers are read
// as found only when about the payment and project asked for.
func TestSigningAndClassify(t *testing.T) {
	key := canon.NewKey(testSecret)
	body := statusBody("210", key, "ORDER-9")
	d, err := canon.Parse(body, canon.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	general := d.Get(d.Root(), "general")
	sig := d.TextAt(general, "signature")
	d.Delete(general, "signature")
	if !key.Verify(d.Canonical(nil, false), sig) || !strings.HasPrefix(string(body), `{"general":{"project_id":210,"payment_id":"ORDER-9"`) {
		t.Errorf("status request %s", body)
	}
	d.Release()
	if want, err := signature.SignGate([]byte(`{"general":{"project_id":210,"payment_id":"ORDER-9"}}`), testSecret); err != nil || string(want) != string(body) {
		t.Errorf("status request %s, the public signer makes %s (%v)", body, want, err)
	}
	ev, err := signedStatusEvent("210", key, []byte(`{"payment":{"id":"O","status":"decline"},"signature":"forged","general":{"signature":"x"},"n":1.0}`), canon.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if signature.VerifyCallback(ev, testSecret) != nil || strings.Contains(string(ev), "forged") || !strings.Contains(string(ev), `"n":1.0`) ||
		!strings.Contains(string(ev), `"project_id":210`) {
		t.Errorf("status event %s", ev)
	}
	for _, c := range []struct {
		status int
		body   string
		want   string
	}{
		{200, `{"payment":{"id":"ORDER-9","status":"success"}}`, ResultFound},
		{200, `{"project_id":210,"payment":{"id":"ORDER-9","status":"success"}}`, ResultFound},
		{200, `{"general":{"project_id":210},"payment":{"id":"ORDER-9","status":"success"}}`, ResultFound},
		{200, `{"payment":{"status":"success"}}`, ResultMismatch},
		{200, `{"payment":{"id":"ORDER-1","status":"success"}}`, ResultMismatch},
		{200, `{"project_id":211,"payment":{"id":"ORDER-9","status":"success"}}`, ResultMismatch},
		{200, `{"general":{"project_id":"211"},"payment":{"id":"ORDER-9","status":"success"}}`, ResultMismatch},
		{200, `{"project_id":210,"general":{"project_id":211},"payment":{"id":"ORDER-9","status":"success"}}`, ResultMismatch},
		{200, `{"project_id":210,"general":{"project_id":"210"},"payment":{"id":"ORDER-9","status":"success"}}`, ResultFound},
		{400, `{"status":"error","code":"3061","message":"Payment not found"}`, ResultNotFound},
		{200, `{"errors":[{"code":"3061","message":"Transaction not found"}]}`, ResultNotFound},
		{404, `not json`, ResultNotFound},
		{500, `{"message":"not found"}`, ResultError},
		{401, `{"message":"Wrong signature"}`, ResultError},
		{200, `[]`, ResultError},
	} {
		a := statusAnswer{httpStatus: c.status, body: []byte(c.body)}
		a.classify(canon.Limits{}, "210", "ORDER-9")
		if a.result != c.want {
			t.Errorf("%d %s: %s, want %s", c.status, c.body, a.result, c.want)
		}
	}
}

// Abandoned payments, which the journal keeps listing oldest first, do not
// crowd out a new one.
func TestOldPaymentsDoNotCrowdOutNewOnes(t *testing.T) {
	e := newEnv(t, Settings{After: time.Minute}, nil)
	for i := 0; i < scanLimit; i++ {
		id := "OLD-" + fmt.Sprintf("%04d", i)
		e.started(journal.KindPaymentPage, id, "", 48*time.Hour, 0, "")
		if err := e.b.Record(context.Background(), journal.Event{Time: e.base.Add(-24 * time.Hour), Kind: journal.KindStatusRequest,
			ProjectID: "210", PaymentID: id, Result: ResultAbandoned, Verified: true}); err != nil {
			t.Fatal(err)
		}
	}
	e.started(journal.KindGate, "NEW-1", "wechat", 2*time.Minute, 200, "/v2/payment/wallet/wechat/sale")
	e.status.Set("NEW-1", 200, statusSuccess)
	e.at(0)
	if got := e.status.Requests(); len(got) != 1 || got[0] != "NEW-1" {
		t.Fatalf("status requests %v, want NEW-1 only", got)
	}
}

// A Gate sale recorded before ecommpay_status existed kept ecommpay's
// answer in app_status: it still starts a payment.
func TestFactsOfOlderGateEntry(t *testing.T) {
	at := time.Now().UTC()
	for _, e := range []journal.Event{
		{Kind: journal.KindGate, Time: at, Result: "signed", Path: "/v2/payment/wallet/wechat/sale", Method: "wechat", AppStatus: 200},
		{Kind: journal.KindGate, Time: at, Result: "signed", Path: "/v2/payment/wallet/wechat/sale", Method: "wechat", EcommpayStatus: 200},
	} {
		if f := factsOf(journal.Timeline{Events: []journal.Event{e}}); !f.started.Equal(at) || f.method != "wechat" {
			t.Errorf("%+v does not start the payment: %+v", e, f)
		}
	}
	refused := journal.Event{Kind: journal.KindGate, Time: at, Result: "signed", Path: "/v2/payment/wallet/wechat/sale", EcommpayStatus: 400}
	if f := factsOf(journal.Timeline{Events: []journal.Event{refused}}); !f.started.IsZero() {
		t.Errorf("a refused sale starts the payment: %+v", f)
	}
}

// The floor is ecommpay's 10 s for its endpoint and 100 ms for a status
// endpoint on this machine; a test may set its own. A status_url that is
// not https is refused unless it is on this machine.
func TestSettingsCheck(t *testing.T) {
	mustURL := func(s string) *url.URL {
		u, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		return u
	}
	for _, c := range []struct {
		s         Settings
		floor     time.Duration
		wantError string
	}{
		{Settings{}, ecommpayFloor, ""},
		{Settings{StatusURL: mustURL("https://api.ecommpay.com/v2/payment/status"), Every: time.Second}, 0, "reconcile every: at least 10s"},
		{Settings{StatusURL: mustURL("https://api.ecommpay.com/v2/payment/status"), After: 9 * time.Second}, 0,
			"reconcile after: ecommpay asks not to query status sooner than 10s after the payment request"},
		{Settings{StatusURL: mustURL("https://127.0.0.1:9/status"), Every: time.Second, After: time.Second}, loopbackFloor, ""},
		{Settings{StatusURL: mustURL("http://localhost:9/status"), Every: 100 * time.Millisecond}, loopbackFloor, ""},
		{Settings{StatusURL: mustURL("http://[::1]:9/status"), Every: 50 * time.Millisecond}, 0, "reconcile every: at least 100ms"},
		{Settings{StatusURL: mustURL("http://127.0.0.1:9/status"), Every: time.Second, Floor: 2 * time.Second}, 0, "reconcile every: at least 2s"},
		{Settings{StatusURL: mustURL("http://api.ecommpay.com/status")}, 0, "must be https, or a loopback address"},
		{Settings{StatusURL: mustURL("http://127.0.0.1.evil.example/status")}, 0, "must be https, or a loopback address"},
		{Settings{After: time.Minute, GiveUp: time.Minute}, 0, "reconcile give_up must be longer than after"},
	} {
		got, err := c.s.Check()
		if c.wantError != "" {
			if err == nil || !strings.Contains(err.Error(), c.wantError) {
				t.Errorf("%+v: %v, want %q", c.s, err, c.wantError)
			}
			continue
		}
		if err != nil || got.Floor != c.floor || got.Every == 0 || got.GiveUp != defaultGiveUp {
			t.Errorf("%+v: %+v %v, want floor %s", c.s, got, err, c.floor)
		}
	}
}
