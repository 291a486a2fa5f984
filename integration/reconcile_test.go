package integration

import (
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"
)

// Reconciliation end to end: the platform loses a final callback, Caddy
// asks /v2/payment/status once the payment is overdue, and the shop gets
// the status as an event marked X-Ecommpay-Source: status.

// reconcileAfter is the tests' short `after`: the status endpoint is the
// fake on a loopback address, so the floor is 100ms, not ecommpay's 10s.
const reconcileAfter = 3 * time.Second

func reconcileBlock(fakePort int, after, every, giveUp time.Duration) string {
	return fmt.Sprintf("reconcile {\n\t\t\t\tafter %s\n\t\t\t\tevery %s\n\t\t\t\tgive_up %s\n\t\t\t\tstatus_url http://127.0.0.1:%d/v2/payment/status\n\t\t\t}",
		after, every, giveUp, fakePort)
}

// reconcileStack is a stack whose callback handler reconciles.
func reconcileStack(t *testing.T, every, giveUp time.Duration) *stack {
	return newStack(t, func(c *caddyConfig) { c.CallbackOptions = reconcileBlock(c.Fake, reconcileAfter, every, giveUp) })
}

// statusEvents are the shop's events for the payment that came from a
// status request.
func statusEvents(st shopState, paymentID string) []*shopEvent {
	var out []*shopEvent
	for _, e := range st.eventsFor(paymentID) {
		if e.ForwardedHeaders["X-Ecommpay-Source"] == "status" {
			out = append(out, e)
		}
	}
	return out
}

// waitStatusEvent waits for the shop to store a status event for the
// payment and returns it.
func waitStatusEvent(t *testing.T, s *stack, paymentID string, timeout time.Duration) *shopEvent {
	t.Helper()
	var found *shopEvent
	eventually(t, timeout, "a status event for "+paymentID, func() (bool, string) {
		evs := statusEvents(s.shop.state(t), paymentID)
		if len(evs) > 0 {
			found = evs[0]
			return true, ""
		}
		return false, fmt.Sprintf("%d status requests so far", len(s.fake.statusRequests(paymentID)))
	})
	return found
}

// checkStatusEvent asserts the status event reached the shop once, signed
// with the project's secret, after `after`, with ecommpay's answer in it.
func checkStatusEvent(t *testing.T, s *stack, paymentID string, signedAt time.Time) {
	t.Helper()
	// Long enough for a second delivery or request to show.
	time.Sleep(3 * time.Second)
	st := s.shop.state(t)
	evs := statusEvents(st, paymentID)
	if len(evs) != 1 {
		t.Fatalf("the shop stored %d status events for %s, want 1", len(evs), paymentID)
	}
	e := evs[0]
	if e.Count != 1 {
		t.Errorf("the status event reached the shop %d times", e.Count)
	}
	checkForwarded(t, e)
	reverify(t, e, s.secret)
	if e.PaymentStatus != "success" || str(jsonPath(e.Body, "operations", 0, "status")) != "success" ||
		str(jsonPath(e.Body, "operations", 0, "type")) != "sale" {
		t.Errorf("status event body: %v", e.Body)
	}
	if e.ForwardedHeaders["X-Ecommpay-Event-Key"] == "" {
		t.Errorf("status event without an event key")
	}
	if p := st.Payments[paymentID]; p == nil || p.LastStatus != "success" {
		t.Errorf("shop's payment: %+v", p)
	}
	reqs := s.fake.statusRequests(paymentID)
	if len(reqs) == 0 {
		t.Fatal("no status request reached the fake")
	}
	for _, r := range reqs {
		if !r.SigOK || r.Status != http.StatusOK {
			t.Errorf("status request: signature ok %v (%s), answered %d", r.SigOK, r.SigReason, r.Status)
		}
		body := gateBody(t, r)
		if str(jsonPath(body, "general", "project_id")) != fmt.Sprint(projectID) || str(jsonPath(body, "general", "payment_id")) != paymentID {
			t.Errorf("status request body %s", r.Body)
		}
	}
	if early := reqs[0].At.Sub(signedAt); early < reconcileAfter {
		t.Errorf("first status request %s after the sale, want at least %s", early.Round(time.Millisecond), reconcileAfter)
	}
}

// buyWithLostFinal starts a WeChat Gate sale whose final callback the
// platform loses.
func buyWithLostFinal(t *testing.T, s *stack, prefix string) (string, time.Time) {
	t.Helper()
	pid := newPaymentID(prefix)
	s.fake.dropFinalCallback(pid)
	signedAt := time.Now()
	checkGateAccepted(t, s, s.shop.call(t, "/buy", map[string]any{"method": "wechat", "payment_id": pid, "amount": 1000, "currency": "CNY"}),
		"/v2/payment/wallet/wechat/sale", pid)
	return pid, signedAt
}

func TestReconcileLostFinalCallback(t *testing.T) {
	s := reconcileStack(t, time.Second, time.Minute)
	pid, signedAt := buyWithLostFinal(t, s, "rc-wx")
	waitShopEvent(t, s.shop, pid, "sale", "awaiting customer", settleTimeout)
	waitStatusEvent(t, s, pid, 20*time.Second)
	checkStatusEvent(t, s, pid, signedAt)
	// The intermediate callback went as usual; the lost one never went.
	checkExactlyOnce(t, s.fake, s.shop.state(t), pid)
	if n := len(s.fake.callbacksFor(pid)); n != 1 {
		t.Errorf("the fake sent %d callbacks, want the intermediate one only", n)
	}
	// Once the app has the final status, nobody asks again.
	n := len(s.fake.statusRequests(pid))
	time.Sleep(3 * time.Second)
	if m := len(s.fake.statusRequests(pid)); m != n {
		t.Errorf("%d more status requests after the final status was delivered", m-n)
	}
	m := scrape(t, s.caddy)
	if m[`caddy_ecommpay_reconcile_requests_total{outcome="found"}`] < 1 || m[`caddy_ecommpay_reconcile_delivered_total{final="true"}`] != 1 {
		t.Errorf("metrics: %v", m)
	}
	// The journal has the status requests in the payment's timeline.
	tl := consoleTimeline(t, s, pid)
	kinds := map[string]int{}
	for _, e := range tl.Events {
		kinds[e.Kind+"/"+e.Result]++
		if e.Kind == "status_request" && e.AppStatus != http.StatusOK {
			t.Errorf("status_request entry with ecommpay's status %d", e.AppStatus)
		}
	}
	if kinds["status_request/found"] < 1 || kinds["status/forwarded"] != 1 || !tl.Payment.Final {
		t.Errorf("timeline: %v, final %v", kinds, tl.Payment.Final)
	}
}

func TestReconcileAppDownAtFirst(t *testing.T) {
	s := reconcileStack(t, time.Second, time.Minute)
	s.shop.admin(t, "down")
	pid, signedAt := buyWithLostFinal(t, s, "rc-down")
	// The status event is refused at least once while the shop is down.
	eventually(t, 20*time.Second, "a status request while the shop is down", func() (bool, string) {
		return len(s.fake.statusRequests(pid)) > 0, ""
	})
	time.Sleep(1500 * time.Millisecond)
	if evs := statusEvents(s.shop.state(t), pid); len(evs) != 0 {
		t.Fatalf("a status event was stored while the shop was down")
	}
	downAnswers := s.shop.state(t).AnsweredDown
	s.shop.admin(t, "up")
	waitStatusEvent(t, s, pid, 30*time.Second)
	checkStatusEvent(t, s, pid, signedAt)
	waitSettled(t, s.fake, 1, settleTimeout)
	checkExactlyOnce(t, s.fake, s.shop.state(t), pid)
	if downAnswers < 2 {
		t.Errorf("the shop refused only %d deliveries while down", downAnswers)
	}
}

func TestReconcileAbandonedPaymentPage(t *testing.T) {
	const giveUp = 8 * time.Second
	s := reconcileStack(t, time.Second, giveUp)
	pid := newPaymentID("rc-pp")
	out := s.shop.call(t, "/checkout", map[string]any{"payment_id": pid, "amount": 1000, "currency": "CNY", "method": "alipay"})
	if out.Status != 200 {
		t.Fatalf("payment-page: %d %v", out.Status, out.Answer)
	}
	// The customer never opens the page.
	eventually(t, 30*time.Second, "the payment marked abandoned", func() (bool, string) {
		return s.caddy.logContains(`"result":"abandoned"`), fmt.Sprintf("%d status requests", len(s.fake.statusRequests(pid)))
	})
	reqs := s.fake.statusRequests(pid)
	if len(reqs) < 2 {
		t.Errorf("%d status requests before giving up, want some", len(reqs))
	}
	for _, r := range reqs {
		if !r.SigOK || r.Status != http.StatusNotFound {
			t.Errorf("status request: signature ok %v, answered %d %s", r.SigOK, r.Status, r.Answer)
		}
	}
	time.Sleep(2 * time.Second)
	if n := len(s.fake.statusRequests(pid)); n != len(reqs) {
		t.Errorf("%d status requests after giving up", n-len(reqs))
	}
	if evs := s.shop.state(t).eventsFor(pid); len(evs) != 0 {
		t.Errorf("the shop got %d events for a payment never opened", len(evs))
	}
	m := scrape(t, s.caddy)
	if m[`caddy_ecommpay_reconcile_abandoned_total`] != 1 || m[`caddy_ecommpay_reconcile_unresolved_total`] != 0 ||
		m[`caddy_ecommpay_reconcile_requests_total{outcome="not_found"}`] != float64(len(reqs)) {
		t.Errorf("metrics: %v", m)
	}
	tl := consoleTimeline(t, s, pid)
	abandoned := 0
	for _, e := range tl.Events {
		if e.Kind == "status_request" && e.Result == "abandoned" {
			abandoned++
		}
	}
	if abandoned != 1 {
		t.Errorf("the timeline has %d abandoned entries, want 1: %+v", abandoned, tl.Events)
	}
}

// Two nodes on one Redis ask about a payment once per interval in all.
func TestReconcileClusterAsksOncePerInterval(t *testing.T) {
	requireCaddy(t)
	redis := startRedis(t)
	const every = 2 * time.Second
	secret, fake, shop, nodeA, nodeB := startTwoNodes(t, func(c *caddyConfig) {
		c.Dedupe = "redis " + redis.url
		c.Store = "redis " + redis.url
		c.TTL = "10m"
		c.CallbackOptions = reconcileBlock(c.Fake, reconcileAfter, every, time.Minute)
	})
	t.Cleanup(fake.stopDeliveries)
	s := &stack{t: t, secret: secret, fake: fake, shop: shop, caddy: nodeA}

	// A Payment Page never opened keeps both nodes asking: 2, 4, 8 s apart.
	pp := newPaymentID("rc-cl-pp")
	if out := shop.call(t, "/checkout", map[string]any{"payment_id": pp, "amount": 1000, "currency": "CNY", "method": "alipay"}); out.Status != 200 {
		t.Fatalf("payment-page: %d %v", out.Status, out.Answer)
	}
	wx, signedAt := buyWithLostFinal(t, s, "rc-cl-wx")
	waitStatusEvent(t, s, wx, 20*time.Second)
	checkStatusEvent(t, s, wx, signedAt)
	time.Sleep(reconcileAfter + 12*time.Second)
	reqs := fake.statusRequests(pp)
	if len(reqs) < 2 || len(reqs) > 4 {
		t.Errorf("two nodes made %d status requests about one payment in about 15 s, want 3 (2, 4 and 8 s apart)", len(reqs))
	}
	for i := 1; i < len(reqs); i++ {
		// Jitter only lengthens a wait; allow some for the scan period.
		if gap, want := reqs[i].At.Sub(reqs[i-1].At), every<<(i-1); gap < want-300*time.Millisecond {
			t.Errorf("status requests %d and %d came %s apart, want at least %s", i, i+1, gap.Round(time.Millisecond), want)
		}
	}
	a, b := scrape(t, nodeA), scrape(t, nodeB)
	t.Logf("not_found requests by node: A %v, B %v", a[`caddy_ecommpay_reconcile_requests_total{outcome="not_found"}`], b[`caddy_ecommpay_reconcile_requests_total{outcome="not_found"}`])
}

// consoleTimeline reads a payment's timeline from the console's API.
type consoleTimelineAnswer struct {
	Payment struct {
		Final  bool   `json:"final"`
		Status string `json:"status"`
	} `json:"payment"`
	Events []struct {
		Kind      string `json:"kind"`
		Result    string `json:"result"`
		AppStatus int    `json:"app_status"`
	} `json:"events"`
}

func consoleTimeline(t *testing.T, s *stack, paymentID string) consoleTimelineAnswer {
	t.Helper()
	var tl consoleTimelineAnswer
	// The journal may take a second to make what it accepted durable.
	eventually(t, 5*time.Second, "the payment's timeline", func() (bool, string) {
		resp, err := testClient.Get(fmt.Sprintf("%s/ecommpay/api/payments/%d/%s", s.caddy.internalURL(), projectID, paymentID))
		if err != nil {
			return false, err.Error()
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return false, resp.Status
		}
		tl = consoleTimelineAnswer{}
		if err := json.NewDecoder(resp.Body).Decode(&tl); err != nil {
			return false, err.Error()
		}
		return true, ""
	})
	return tl
}

// A config reload stops the old loop and starts a new one: the lost
// status still reaches the shop once, and nobody asks twice per interval.
func TestReconcileAcrossReload(t *testing.T) {
	s := reconcileStack(t, time.Second, time.Minute)
	pid, signedAt := buyWithLostFinal(t, s, "rc-reload")
	reload(t, s.caddy)
	time.Sleep(reconcileAfter / 2)
	reload(t, s.caddy)
	waitStatusEvent(t, s, pid, 20*time.Second)
	checkStatusEvent(t, s, pid, signedAt)
	reqs := s.fake.statusRequests(pid)
	for i := 1; i < len(reqs); i++ {
		if gap := reqs[i].At.Sub(reqs[i-1].At); gap < 900*time.Millisecond {
			t.Errorf("status requests %d and %d came %s apart, want at least every (1s)", i, i+1, gap.Round(time.Millisecond))
		}
	}
}
