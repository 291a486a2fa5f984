package ecommpay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/canon"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/store"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/store/memstore"
	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// statusSuccess is a status answer with literals a float round trip would
// change.
const statusSuccess = `{"project_id":210,"payment":{"id":"%s","type":"purchase","status":"success","method":"wechat","sum":{"amount":1000,"currency":"CNY"}},"operations":[{"id":9227000002916,"type":"sale","status":"success","code":"0","rate":1.50,"big":123456789012345678901}],"errors":[]}`

// fakeStatus is ecommpay's status endpoint: it checks each request's
// signature and answers from a table.
type fakeStatus struct {
	t   *testing.T
	srv *httptest.Server

	mu     sync.Mutex
	answer map[string]func() (int, string) // by payment_id; else not found
	asked  []string                        // payment_ids, in order
	at     []time.Time
	clock  func() time.Time
}

func newFakeStatus(t *testing.T, clock func() time.Time) *fakeStatus {
	f := &fakeStatus{t: t, answer: map[string]func() (int, string){}, clock: clock}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		d, err := canon.Parse(body, canon.Limits{})
		if err != nil {
			t.Errorf("status request is not JSON: %s", body)
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		defer d.Release()
		general := d.Get(d.Root(), "general")
		sig := textAt(d, general, "signature")
		pid := d.Get(general, "project_id")
		if pid == canon.None || d.Kind(pid) != canon.Number || d.Text(pid) != "210" {
			t.Errorf("status request general.project_id: %s", body)
		}
		d.Delete(general, "signature")
		if !canon.NewKey(testSecret).Verify(d.Canonical(nil, false), sig) || r.URL.Path != "/v2/payment/status" {
			t.Errorf("status request %s %s: signature does not verify", r.URL.Path, body)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		id := textAt(d, general, "payment_id")
		f.mu.Lock()
		f.asked = append(f.asked, id)
		f.at = append(f.at, f.clock())
		fn := f.answer[id]
		f.mu.Unlock()
		status, answer := http.StatusBadRequest, `{"status":"error","code":"3061","message":"Payment not found"}`
		if fn != nil {
			status, answer = fn()
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = io.WriteString(w, answer)
	}))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeStatus) set(paymentID string, status int, body string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.answer[paymentID] = func() (int, string) { return status, strings.ReplaceAll(body, "%s", paymentID) }
}

func (f *fakeStatus) requests() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.asked...)
}

// recEnv is a callback handler with reconcile whose loop the test drives:
// a clock it moves, a memory backend, and an app behind reverse_proxy.
type recEnv struct {
	t      *testing.T
	clock  time.Time
	base   time.Time
	h      *Handler
	rc     *reconciler
	b      *memstore.Backend
	app    *testApp
	status *fakeStatus
	scans  int
}

func newRecEnv(t *testing.T, cfg ReconcileConfig, b *memstore.Backend) *recEnv {
	t.Helper()
	oldFloor, oldPacer := reconcileFloor, statusPacer
	reconcileFloor, statusPacer = time.Second, &pacer{}
	t.Cleanup(func() { reconcileFloor, statusPacer = oldFloor, oldPacer })
	e := &recEnv{t: t, base: time.Now()}
	e.clock = e.base
	e.status = newFakeStatus(t, func() time.Time { return e.clock })
	cfg.StatusURL = e.status.srv.URL + "/v2/payment/status"
	e.h = callbackHandler(t, func(h *Handler) { h.Store = "memory"; h.Reconcile = &cfg })
	e.h.reconciler.stop() // the test runs the scans
	if b == nil {
		b = newMemoryBackend()
	}
	e.b = b
	b.Dedup.SetClock(func() time.Time { return e.clock }) // leases follow the test's clock
	e.h.store, e.h.journal = b, b
	e.app = newTestApp(t)
	next := proxyTo(t, e.app.srv.URL)
	e.rc = e.h.reconciler
	e.rc.now = func() time.Time { return e.clock }
	e.rc.deliver = func(ctx context.Context, d *dispatched) error {
		d.target = e.h
		serve(e.h, post("/cb", nil).WithContext(context.WithValue(ctx, dispatchKey{}, d)), next)
		if !d.reached {
			return errors.New("not reached")
		}
		return nil
	}
	return e
}

// at sets the clock to base+d and scans once.
func (e *recEnv) at(d time.Duration) {
	e.clock = e.base.Add(d)
	e.scans++
	e.rc.scan(context.Background(), e.scans)
}

// started records the signing request that starts a payment, ago before
// the base time.
func (e *recEnv) started(kind, paymentID, method string, ago time.Duration, appStatus int, path string) {
	e.t.Helper()
	ev := journalEvent{Time: e.base.Add(-ago), Kind: kind, ProjectID: "210", PaymentID: paymentID, Result: "signed",
		Method: method, Status: appStatus, EcommpayStatus: appStatus, Path: path, Verified: true}
	if err := e.b.Record(context.Background(), ev); err != nil {
		e.t.Fatal(err)
	}
}

func (e *recEnv) timeline(paymentID string) []journalEvent {
	e.t.Helper()
	tl, err := e.b.Timeline(context.Background(), "210", paymentID)
	if err != nil {
		e.t.Fatal(err)
	}
	return tl.Events
}

func countKind(events []journalEvent, kind, result string) int {
	n := 0
	for _, ev := range events {
		if ev.Kind == kind && (result == "" || ev.Result == result) {
			n++
		}
	}
	return n
}

// An overdue Gate sale is asked about once; the app gets ecommpay's answer
// once, signed, marked as a status, with its literals kept.
func TestReconcileDeliversAnOverdueStatusOnce(t *testing.T) {
	e := newRecEnv(t, ReconcileConfig{}, nil)
	e.started(kindGate, "WX-1", "wechat", 2*time.Hour+time.Minute, 200, "/v2/payment/wallet/wechat/sale")
	e.status.set("WX-1", 200, statusSuccess)
	found0 := testutil.ToFloat64(statusRequestsTotal.WithLabelValues(statusFound))
	rec0 := testutil.ToFloat64(reconciledTotal.WithLabelValues("true"))

	e.at(0)
	e.at(time.Hour)
	e.at(30 * time.Hour)
	if got := e.status.requests(); len(got) != 1 {
		t.Fatalf("status requests %v, want one", got)
	}
	got := e.app.received()
	if len(got) != 1 {
		t.Fatalf("the app got %d deliveries, want 1", len(got))
	}
	body := string(got[0].body)
	if got[0].header.Get(HeaderSource) != "status" || got[0].header.Get(HeaderEventKey) == "" || got[0].header.Get(HeaderProjectID) != "210" {
		t.Errorf("headers: %v", got[0].header)
	}
	if !verifies(got[0].body, testSecret) {
		t.Errorf("the app cannot verify the status event: %s", body)
	}
	if !strings.Contains(body, `"rate":1.50`) || !strings.Contains(body, `123456789012345678901`) || !strings.Contains(body, `"operations":[`) {
		t.Errorf("the status event lost ecommpay's literals: %s", body)
	}
	tl := e.timeline("WX-1")
	if countKind(tl, kindStatusRequest, statusFound) != 1 || countKind(tl, kindStatus, "forwarded") != 1 {
		t.Fatalf("timeline: %+v", tl)
	}
	for _, ev := range tl {
		if ev.Kind == kindStatusRequest && (ev.AppStatus != 200 || ev.PaymentStatus != "success") {
			t.Errorf("status_request entry: %+v", ev)
		}
	}
	if d := testutil.ToFloat64(statusRequestsTotal.WithLabelValues(statusFound)) - found0; d != 1 {
		t.Errorf("reconcile_requests_total{found} moved by %v", d)
	}
	if d := testutil.ToFloat64(reconciledTotal.WithLabelValues("true")) - rec0; d != 1 {
		t.Errorf("reconcile_delivered_total moved by %v", d)
	}
}

// Only started payments are asked about, and only once overdue by their
// method; after is never below the floor.
func TestReconcileWhichPaymentsAndWhen(t *testing.T) {
	e := newRecEnv(t, ReconcileConfig{}, nil)
	e.started(kindGate, "WX-early", "wechat", time.Hour, 200, "/v2/payment/wallet/wechat/sale")
	e.started(kindGate, "MB-late", "mbway", 5*time.Minute, 200, "/v2/payment/wallet/mbway/sale")
	e.started(kindGate, "AL-refused", "alipay", 2*time.Hour, 400, "/v2/payment/wallet/alipay/sale")
	e.started(kindGate, "AL-refund", "alipay", 2*time.Hour, 200, "/v2/payment/wallet/alipay/refund")
	e.started(kindPaymentPage, "PP-early", "", 20*time.Minute, 0, "")
	e.started(kindPaymentPage, "PP-late", "card", 31*time.Minute, 0, "")
	for _, id := range []string{"WX-early", "MB-late", "PP-late"} {
		e.status.set(id, 200, `{"project_id":210,"payment":{"id":"%s","status":"awaiting customer"}}`)
	}
	e.at(0)
	got := strings.Join(e.status.requests(), " ")
	if got != "MB-late PP-late" && got != "PP-late MB-late" {
		t.Fatalf("asked about %q, want MB-late and PP-late", got)
	}
	e.at(time.Hour + time.Second)
	if n := strings.Count(strings.Join(e.status.requests(), " "), "WX-early"); n != 1 {
		t.Errorf("WX-early asked %d times once overdue", n)
	}
	// An intermediate status the app has not had is delivered, once.
	if n := len(e.app.received()); n != 3 {
		t.Errorf("the app got %d status events, want one per payment", n)
	}

	for _, after := range []time.Duration{time.Millisecond, 500 * time.Millisecond} {
		h := &Handler{Mode: ModeCallback, Projects: []Project{{ID: "210", Secrets: []string{testSecret}}}, Store: "memory",
			Reconcile: &ReconcileConfig{After: caddy.Duration(after)}}
		if err := h.Provision(testContext(t)); err == nil || !strings.Contains(err.Error(), "not to query status sooner") {
			t.Errorf("after %s: %v", after, err)
		}
		_ = h.Cleanup()
	}
}

// While the app refuses the status event, it is asked about and delivered
// again, with backoff; once the app takes it, nothing more.
func TestReconcileRetriesWhileTheAppFails(t *testing.T) {
	e := newRecEnv(t, ReconcileConfig{After: caddy.Duration(time.Minute), Every: caddy.Duration(10 * time.Second)}, nil)
	e.started(kindGate, "WX-2", "wechat", 2*time.Minute, 200, "/v2/payment/wallet/wechat/sale")
	e.status.set("WX-2", 200, statusSuccess)
	e.app.status.Store(http.StatusInternalServerError)
	e.at(0)
	e.at(5 * time.Second) // before every
	if n := len(e.status.requests()); n != 1 {
		t.Fatalf("%d status requests before every passed", n)
	}
	e.at(12 * time.Second)
	if n := len(e.status.requests()); n != 2 {
		t.Fatalf("%d status requests after every, want 2", n)
	}
	e.at(25 * time.Second) // the second wait is 20s (+10%)
	if n := len(e.status.requests()); n != 2 {
		t.Fatalf("%d status requests before the backed-off wait, want 2", n)
	}
	e.app.status.Store(http.StatusOK)
	e.at(40 * time.Second)
	e.at(10 * time.Minute)
	if n := len(e.status.requests()); n != 3 {
		t.Errorf("%d status requests, want 3", n)
	}
	got := e.app.received()
	if len(got) != 3 {
		t.Fatalf("the app was sent %d status events, want 3 (two refused)", len(got))
	}
	tl := e.timeline("WX-2")
	if countKind(tl, kindStatus, "app_error") != 2 || countKind(tl, kindStatus, "forwarded") != 1 {
		t.Errorf("timeline: %+v", tl)
	}
}

// A Payment Page never opened is not found until give_up, then abandoned;
// the app hears nothing.
func TestReconcileAbandonsAPaymentNeverOpened(t *testing.T) {
	e := newRecEnv(t, ReconcileConfig{After: caddy.Duration(time.Minute), Every: caddy.Duration(time.Minute), GiveUp: caddy.Duration(time.Hour)}, nil)
	e.started(kindPaymentPage, "PP-gone", "", 2*time.Minute, 0, "")
	ab0 := testutil.ToFloat64(abandonedTotal)
	for m := 0; m <= 120; m++ {
		e.at(time.Duration(m) * time.Minute)
	}
	asked := e.status.requests()
	// 1, 2, 4, 8, 16, 32 minutes apart, then give_up at 58 minutes in.
	if len(asked) < 5 || len(asked) > 8 {
		t.Errorf("%d status requests in an hour with backoff", len(asked))
	}
	if n := len(e.app.received()); n != 0 {
		t.Errorf("the app got %d events", n)
	}
	tl := e.timeline("PP-gone")
	if countKind(tl, kindStatusRequest, statusAbandoned) != 1 || countKind(tl, kindStatusRequest, statusNotFound) != len(asked) {
		t.Errorf("timeline: %+v", tl)
	}
	if d := testutil.ToFloat64(abandonedTotal) - ab0; d != 1 {
		t.Errorf("reconcile_abandoned_total moved by %v", d)
	}
	// A new process (its memory empty) reads the journal and stays quiet.
	e.rc.seen = map[string]*recState{}
	e.at(3 * time.Hour)
	if n := len(e.status.requests()); n != len(asked) {
		t.Errorf("asked again after abandoning")
	}
}

// Errors are retried with backoff; a payment that never reaches a final
// status is unresolved at give_up.
func TestReconcileErrorsThenUnresolved(t *testing.T) {
	e := newRecEnv(t, ReconcileConfig{After: caddy.Duration(time.Minute), Every: caddy.Duration(time.Minute), GiveUp: caddy.Duration(30 * time.Minute)}, nil)
	e.started(kindGate, "WX-3", "wechat", 2*time.Minute, 200, "/v2/payment/wallet/wechat/sale")
	e.status.set("WX-3", http.StatusBadGateway, `<html>bad gateway</html>`)
	un0 := testutil.ToFloat64(unresolvedTotal)
	for m := 0; m <= 60; m++ {
		e.at(time.Duration(m) * time.Minute)
	}
	tl := e.timeline("WX-3")
	errs := countKind(tl, kindStatusRequest, statusError)
	if errs < 3 || errs > 6 || countKind(tl, kindStatusRequest, statusUnresolved) != 1 {
		t.Errorf("timeline: %d errors, %d unresolved: %+v", errs, countKind(tl, kindStatusRequest, statusUnresolved), tl)
	}
	for _, ev := range tl {
		if ev.Kind == kindStatusRequest && ev.Result == statusError && (ev.AppStatus != http.StatusBadGateway ||
			ev.EcommpayStatus != http.StatusBadGateway || ev.Reason != "HTTP 502 with a body that is not a JSON object") {
			t.Errorf("status_request entry without ecommpay's HTTP status and the reason: %+v", ev)
		}
	}
	if d := testutil.ToFloat64(unresolvedTotal) - un0; d != 1 {
		t.Errorf("reconcile_unresolved_total moved by %v", d)
	}
	if n := len(e.app.received()); n != 0 {
		t.Errorf("the app got %d events", n)
	}
}

// Two nodes on one store: one status request per interval in total.
func TestReconcileTwoNodesAskOncePerInterval(t *testing.T) {
	shared := newMemoryBackend()
	cfg := ReconcileConfig{After: caddy.Duration(time.Minute), Every: caddy.Duration(time.Minute)}
	a := newRecEnv(t, cfg, shared)
	b := newRecEnv(t, cfg, shared)
	b.status, b.rc.statusURL = a.status, a.rc.statusURL
	b.base, b.clock = a.base, a.clock
	a.started(kindPaymentPage, "PP-2", "", 2*time.Minute, 0, "")
	// Both nodes scan every second for 8 minutes: requests at 0, 1, 3 and 7
	// minutes, one per interval (1, 2, 4 minutes).
	scanBoth := func(d time.Duration) {
		a.at(d)
		b.clock = a.clock
		b.scans++
		b.rc.scan(context.Background(), b.scans)
	}
	for s := 0; s < 8*60; s++ {
		scanBoth(time.Duration(s) * time.Second)
	}
	a.status.mu.Lock()
	at := append([]time.Time(nil), a.status.at...)
	a.status.mu.Unlock()
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
		b.rc.scan(context.Background(), b.scans)
	}
	a.status.mu.Lock()
	at = append([]time.Time(nil), a.status.at...)
	a.status.mu.Unlock()
	if len(at) != 5 || at[4].Sub(a.base) < 24*time.Minute {
		t.Errorf("after a node died holding the lease: requests at %v", at)
	}
}

// Cleanup stops the loop at once.
func TestReconcileStopsOnCleanup(t *testing.T) {
	h := &Handler{Mode: ModeCallback, Projects: []Project{{ID: "210", Secrets: []string{testSecret}}}, Store: "memory",
		Reconcile: &ReconcileConfig{}}
	if err := h.Provision(testContext(t)); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := h.Cleanup(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-h.reconciler.done:
	default:
		t.Fatal("the loop is still running")
	}
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Errorf("Cleanup took %s", d)
	}
}

// The status request is signed like a Gate request; the event for the app
// like a callback, with ecommpay's signature replaced.
func TestReconcileSigning(t *testing.T) {
	p := &project{id: "210", keys: []*canon.Key{canon.NewKey(testSecret), canon.NewKey("older")}}
	body := statusBody(p, "ORDER-9")
	d, err := canon.Parse(body, canon.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	general := d.Get(d.Root(), "general")
	sig := textAt(d, general, "signature")
	d.Delete(general, "signature")
	if !p.keys[0].Verify(d.Canonical(nil, false), sig) || !strings.HasPrefix(string(body), `{"general":{"project_id":210,"payment_id":"ORDER-9"`) {
		t.Errorf("status request %s", body)
	}
	d.Release()
	ev, err := signedStatusEvent(p, []byte(`{"payment":{"id":"O","status":"decline"},"signature":"forged","general":{"signature":"x"},"n":1.0}`), canon.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if !verifies(ev, testSecret) || strings.Contains(string(ev), "forged") || !strings.Contains(string(ev), `"n":1.0`) ||
		!strings.Contains(string(ev), `"project_id":210`) {
		t.Errorf("status event %s", ev)
	}
	for _, c := range []struct {
		status int
		body   string
		want   string
	}{
		{200, `{"payment":{"id":"ORDER-9","status":"success"}}`, statusFound},
		{200, `{"project_id":210,"payment":{"id":"ORDER-9","status":"success"}}`, statusFound},
		{200, `{"general":{"project_id":210},"payment":{"id":"ORDER-9","status":"success"}}`, statusFound},
		{200, `{"payment":{"status":"success"}}`, statusMismatch},
		{200, `{"payment":{"id":"ORDER-1","status":"success"}}`, statusMismatch},
		{200, `{"project_id":211,"payment":{"id":"ORDER-9","status":"success"}}`, statusMismatch},
		{200, `{"general":{"project_id":"211"},"payment":{"id":"ORDER-9","status":"success"}}`, statusMismatch},
		{200, `{"project_id":210,"general":{"project_id":211},"payment":{"id":"ORDER-9","status":"success"}}`, statusMismatch},
		{200, `{"project_id":210,"general":{"project_id":"210"},"payment":{"id":"ORDER-9","status":"success"}}`, statusFound},
		{400, `{"status":"error","code":"3061","message":"Payment not found"}`, statusNotFound},
		{200, `{"errors":[{"code":"3061","message":"Transaction not found"}]}`, statusNotFound},
		{404, `not json`, statusNotFound},
		{500, `{"message":"not found"}`, statusError},
		{401, `{"message":"Wrong signature"}`, statusError},
		{200, `[]`, statusError},
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
func TestReconcileOldPaymentsDoNotCrowdOutNewOnes(t *testing.T) {
	e := newRecEnv(t, ReconcileConfig{After: caddy.Duration(time.Minute)}, nil)
	for i := 0; i < reconcileScanLimit; i++ {
		id := "OLD-" + fmt.Sprintf("%04d", i)
		e.started(kindPaymentPage, id, "", 48*time.Hour, 0, "")
		if err := e.b.Record(context.Background(), journalEvent{Time: e.base.Add(-24 * time.Hour), Kind: kindStatusRequest,
			ProjectID: "210", PaymentID: id, Result: statusAbandoned, Verified: true}); err != nil {
			t.Fatal(err)
		}
	}
	e.started(kindGate, "NEW-1", "wechat", 2*time.Minute, 200, "/v2/payment/wallet/wechat/sale")
	e.status.set("NEW-1", 200, statusSuccess)
	e.at(0)
	if got := e.status.requests(); len(got) != 1 || got[0] != "NEW-1" {
		t.Fatalf("status requests %v, want NEW-1 only", got)
	}
}

// A Gate sale recorded before ecommpay_status existed kept ecommpay's
// answer in app_status: it still starts a payment.
func TestFactsOfOlderGateEntry(t *testing.T) {
	at := time.Now().UTC()
	for _, e := range []journalEvent{
		{Kind: kindGate, Time: at, Result: "signed", Path: "/v2/payment/wallet/wechat/sale", Method: "wechat", AppStatus: 200},
		{Kind: kindGate, Time: at, Result: "signed", Path: "/v2/payment/wallet/wechat/sale", Method: "wechat", EcommpayStatus: 200},
	} {
		if f := factsOf(timeline{Events: []journalEvent{e}}); !f.started.Equal(at) || f.method != "wechat" {
			t.Errorf("%+v does not start the payment: %+v", e, f)
		}
	}
	refused := journalEvent{Kind: kindGate, Time: at, Result: "signed", Path: "/v2/payment/wallet/wechat/sale", EcommpayStatus: 400}
	if f := factsOf(timeline{Events: []journalEvent{refused}}); !f.started.IsZero() {
		t.Errorf("a refused sale starts the payment: %+v", f)
	}
}
