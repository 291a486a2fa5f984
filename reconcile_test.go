package ecommpay

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/journal"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/reconcile"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/reconcile/reconciletest"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/store/memstore"
	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// statusSuccess is a status answer with literals a float round trip would
// change.
const statusSuccess = `{"project_id":210,"payment":{"id":"%s","type":"purchase","status":"success","method":"wechat","sum":{"amount":1000,"currency":"CNY"}},"operations":[{"id":9227000002916,"type":"sale","status":"success","code":"0","rate":1.50,"big":123456789012345678901}],"errors":[]}`

// recEnv is a callback handler with reconcile whose loop the test drives:
// a clock it moves, a memory backend, and an app behind reverse_proxy.
type recEnv struct {
	t      *testing.T
	clock  time.Time
	base   time.Time
	h      *Handler
	rc     *reconcile.Reconciler
	b      *memstore.Backend
	app    *testApp
	status *reconciletest.Status
	scans  int
}

func newRecEnv(t *testing.T, cfg ReconcileConfig) *recEnv {
	t.Helper()
	e := &recEnv{t: t, base: time.Now()}
	e.clock = e.base
	e.status = reconciletest.NewStatus(t, testSecret, func() time.Time { return e.clock })
	cfg.StatusURL = e.status.URL
	e.h = callbackHandler(t, func(h *Handler) { h.Store = "memory"; h.Reconcile = &cfg })
	e.h.reconciler.Stop() // the test runs the scans
	e.b = newMemoryBackend()
	e.b.Dedup.SetClock(func() time.Time { return e.clock }) // leases follow the test's clock
	e.h.store, e.h.journal = e.b, e.b
	e.app = newTestApp(t)
	next := proxyTo(t, e.app.srv.URL)
	c := e.h.reconcileConfig(*e.h.reconcileSettings)
	c.Now = func() time.Time { return e.clock }
	// What h.dispatch does, through the test's reverse_proxy.
	c.Deliver = func(ctx context.Context, body []byte) (journal.Event, error) {
		d := &dispatched{kind: journal.KindStatus, body: body, target: e.h}
		serve(e.h, post("/cb", nil).WithContext(context.WithValue(ctx, dispatchKey{}, d)), next)
		if !d.reached {
			return d.ev, errors.New("not reached")
		}
		return d.ev, nil
	}
	rc, err := reconcile.New(c)
	if err != nil {
		t.Fatal(err)
	}
	e.rc = rc
	return e
}

// at sets the clock to base+d and scans once.
func (e *recEnv) at(d time.Duration) {
	e.clock = e.base.Add(d)
	e.scans++
	e.rc.Scan(context.Background(), e.scans)
}

// started records the signing request that starts a payment, ago before
// the base time.
func (e *recEnv) started(kind, paymentID, method string, ago time.Duration, appStatus int, path string) {
	e.t.Helper()
	reconciletest.Started(e.t, e.b, e.base.Add(-ago), kind, paymentID, method, appStatus, path)
}

func (e *recEnv) timeline(paymentID string) []journal.Event {
	e.t.Helper()
	return reconciletest.Timeline(e.t, e.b, paymentID)
}

// An overdue Gate sale is asked about once; the app gets ecommpay's answer
// once, signed, marked as a status, with its literals kept.
func TestReconcileDeliversAnOverdueStatusOnce(t *testing.T) {
	e := newRecEnv(t, ReconcileConfig{})
	e.started(journal.KindGate, "WX-1", "wechat", 2*time.Hour+time.Minute, 200, "/v2/payment/wallet/wechat/sale")
	e.status.Set("WX-1", 200, statusSuccess)
	found0 := testutil.ToFloat64(statusRequestsTotal.WithLabelValues(reconcile.ResultFound))
	rec0 := testutil.ToFloat64(reconciledTotal.WithLabelValues("true"))

	e.at(0)
	e.at(time.Hour)
	e.at(30 * time.Hour)
	if got := e.status.Requests(); len(got) != 1 {
		t.Fatalf("status requests %v, want one", got)
	}
	got := e.app.received()
	if len(got) != 1 {
		t.Fatalf("the app got %d deliveries, want 1", len(got))
	}
	body := string(got[0].body)
	if got[0].header.Get(headerSource) != "status" || got[0].header.Get(headerEventKey) == "" || got[0].header.Get(headerProjectID) != "210" {
		t.Errorf("headers: %v", got[0].header)
	}
	if !verifies(got[0].body, testSecret) {
		t.Errorf("the app cannot verify the status event: %s", body)
	}
	if !strings.Contains(body, `"rate":1.50`) || !strings.Contains(body, `123456789012345678901`) || !strings.Contains(body, `"operations":[`) {
		t.Errorf("the status event lost ecommpay's literals: %s", body)
	}
	tl := e.timeline("WX-1")
	if reconciletest.CountKind(tl, journal.KindStatusRequest, reconcile.ResultFound) != 1 || reconciletest.CountKind(tl, journal.KindStatus, "forwarded") != 1 {
		t.Fatalf("timeline: %+v", tl)
	}
	for _, ev := range tl {
		if ev.Kind == journal.KindStatusRequest && (ev.AppStatus != 200 || ev.PaymentStatus != "success") {
			t.Errorf("status_request entry: %+v", ev)
		}
	}
	if d := testutil.ToFloat64(statusRequestsTotal.WithLabelValues(reconcile.ResultFound)) - found0; d != 1 {
		t.Errorf("reconcile_requests_total{found} moved by %v", d)
	}
	if d := testutil.ToFloat64(reconciledTotal.WithLabelValues("true")) - rec0; d != 1 {
		t.Errorf("reconcile_delivered_total moved by %v", d)
	}
}

// A status_url on this machine (the sandbox, a local stand-in) lowers the
// floor of after and every from ecommpay's 10s to 100ms; ecommpay's own
// endpoint keeps it.
func TestReconcileFloorByStatusURL(t *testing.T) {
	for _, c := range []struct {
		statusURL    string
		after, every time.Duration
		wantErr      string
	}{
		{"", time.Millisecond, 0, "reconcile after: ecommpay asks not to query status sooner than 10s after the payment request"},
		{"", 500 * time.Millisecond, 0, "not to query status sooner than 10s"},
		{"https://api.ecommpay.com/v2/payment/status", 0, time.Second, "reconcile every: at least 10s"},
		{"https://api.ecommpay.com/v2/payment/status", time.Second, time.Minute, "not to query status sooner than 10s"},
		{"http://127.0.0.1:9/v2/payment/status", time.Second, time.Second, ""},
		{"http://localhost:9/v2/payment/status", 0, time.Second, ""},
		{"http://[::1]:9/v2/payment/status", 0, 50 * time.Millisecond, "reconcile every: at least 100ms"},
	} {
		h := &Handler{Mode: modeCallback, Projects: []Project{{ID: "210", Secrets: []string{testSecret}}}, Store: "memory",
			Reconcile: &ReconcileConfig{StatusURL: c.statusURL, After: caddy.Duration(c.after), Every: caddy.Duration(c.every)}}
		err := provisionErr(t, h)
		if c.wantErr == "" && err != nil || c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)) {
			t.Errorf("status_url %q, after %s, every %s: %v, want %q", c.statusURL, c.after, c.every, err, c.wantErr)
		}
	}
}

// Cleanup stops the loop at once.
func TestReconcileStopsOnCleanup(t *testing.T) {
	h := &Handler{Mode: modeCallback, Projects: []Project{{ID: "210", Secrets: []string{testSecret}}}, Store: "memory",
		Reconcile: &ReconcileConfig{}}
	if err := h.Provision(testContext(t)); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := h.Cleanup(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-h.reconciler.Done():
	default:
		t.Fatal("the loop is still running")
	}
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Errorf("Cleanup took %s", d)
	}
}
