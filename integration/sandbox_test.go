package integration

// The sandbox as a Caddy site (ecommpay sandbox), in front of the Python
// shop: Gate sales and refunds through Caddy, reconciliation from its
// status endpoint, the wrong-signature page, and caddy ecommpay trigger.

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// sandboxStack is a shop and a Caddy whose Payment Page base_url and Gate
// upstream are an `ecommpay sandbox` site of the same Caddy.
type sandboxStack struct {
	secret string
	shop   *shopProc
	caddy  *caddyProc
	url    string // the sandbox site
}

// sandboxGateProxy strips the forwarding headers Caddy's reverse_proxy
// adds: the sandbox, like the signing modes, refuses proxied requests.
const sandboxGateProxy = "header_up -X-Forwarded-For\n\t\t\theader_up -X-Forwarded-Proto\n\t\t\theader_up -X-Forwarded-Host\n\t\t\theader_up -Via"

func newSandboxStack(t *testing.T, sandboxLines string, mutate func(*caddyConfig)) *sandboxStack {
	t.Helper()
	requireCaddy(t)
	secret := newSecret()
	port := freePort(t)
	cfg := newCaddyConfig(t, port, 0)
	shop := startShop(t, fmt.Sprintf("http://127.0.0.1:%d", cfg.Internal), secret, 0)
	cfg.App = shop.port
	cfg.GateProxy = sandboxGateProxy
	pagesPort := freePort(t)
	cfg.ExtraSites = fmt.Sprintf(`# the sandbox plays ecommpay
http://127.0.0.1:%d {
	ecommpay sandbox {
		project %d {env.ECOMMPAY_SECRET}
		callback http://127.0.0.1:%d/ecommpay/callback
		%s
	}
}
# the shop's result pages
http://127.0.0.1:%d {
	respond /success "Thank you! Payment {query.payment_id} succeeded." 200
	respond /fail "Payment {query.payment_id} failed." 200
}`, port, projectID, cfg.Public, sandboxLines, pagesPort)
	cfg.ExtraPorts = []int{port, pagesPort}
	if mutate != nil {
		mutate(&cfg)
	}
	caddy := startCaddy(t, "caddy", cfg, secret)
	return &sandboxStack{secret: secret, shop: shop, caddy: caddy, url: fmt.Sprintf("http://127.0.0.1:%d", port)}
}

func (s *sandboxStack) pagesURL() string {
	return fmt.Sprintf("http://127.0.0.1:%d", s.caddy.cfg.ExtraPorts[1])
}

// shopEvents counts the shop's events for a payment by type/status.
func shopEvents(t testing.TB, shop *shopProc, paymentID string) map[string]int {
	out := map[string]int{}
	for _, e := range shop.state(t).eventsFor(paymentID) {
		out[e.OperationType+"/"+e.OperationStatus+"/"+e.PaymentStatus] += e.Count
	}
	return out
}

func TestSandboxGateSalesFollowTestProjectRules(t *testing.T) {
	s := newSandboxStack(t, "pay_after 200ms", nil)
	cases := []struct {
		method, currency string
		amount           int64
		final            string
	}{
		{"wechat", "CNY", 1000, "success"},
		{"alipay", "CNY", 2000, "success"},
		{"mbway", "EUR", 1500, "success"},
		{"wechat", "CNY", 40000, "decline"},
		{"alipay", "USD", 40400, "decline"},
		{"mbway", "EUR", 40000, "decline"},
	}
	ids := make([]string, len(cases))
	for i, c := range cases {
		ids[i] = newPaymentID(c.method)
		out := s.shop.call(t, "/buy", map[string]any{"method": c.method, "payment_id": ids[i], "amount": c.amount, "currency": c.currency})
		if out.Status != http.StatusOK || str(jsonPath(out.Answer, "status")) != "success" || str(jsonPath(out.Answer, "payment_id")) != ids[i] {
			t.Fatalf("%s sale through Caddy to the sandbox: %d %v", c.method, out.Status, out.Answer)
		}
	}
	for i, c := range cases {
		e := waitShopEvent(t, s.shop, ids[i], "sale", c.final, settleTimeout)
		if e.PaymentStatus != c.final || e.Count != 1 {
			t.Errorf("%s %d: final %s/%s count %d", c.method, c.amount, e.OperationStatus, e.PaymentStatus, e.Count)
		}
		st := s.shop.state(t).Payments[ids[i]]
		switch c.method {
		case "wechat":
			if st.QRData == "" && st.QR == nil {
				t.Errorf("%s: the shop got no QR", ids[i])
			}
		default:
			if !strings.HasPrefix(str(jsonPath(st.Redirect, "url")), s.url+"/sandbox/provider/"+c.method+"/") {
				t.Errorf("%s: redirect_data %v", ids[i], st.Redirect)
			}
		}
	}

	// A refund of 50000 is declined; of anything else, done.
	pid := newPaymentID("refund")
	s.shop.call(t, "/buy", map[string]any{"method": "alipay", "payment_id": pid, "amount": 80000, "currency": "CNY"})
	waitShopEvent(t, s.shop, pid, "sale", "success", settleTimeout)
	out := s.shop.call(t, "/refund", map[string]any{"method": "alipay", "payment_id": pid, "amount": 50000, "currency": "CNY"})
	if out.Status != http.StatusOK {
		t.Fatalf("refund through Caddy: %d %v", out.Status, out.Answer)
	}
	if e := waitShopEvent(t, s.shop, pid, "refund", "decline", settleTimeout); e.PaymentStatus != "success" {
		t.Errorf("declined refund: payment status %s, want success", e.PaymentStatus)
	}
	s.shop.call(t, "/refund", map[string]any{"method": "alipay", "payment_id": pid, "amount": 80000, "currency": "CNY"})
	if e := waitShopEvent(t, s.shop, pid, "refund", "success", settleTimeout); e.PaymentStatus != "refunded" {
		t.Errorf("refund: payment status %s, want refunded", e.PaymentStatus)
	}
}

func TestSandboxDroppedFinalIsReconciled(t *testing.T) {
	s := newSandboxStack(t, "pay_after 200ms\n\t\tdrop_final", func(c *caddyConfig) {
		c.CallbackOptions = reconcileBlock(c.Fake, reconcileAfter, time.Second, time.Minute)
	})
	pid := newPaymentID("drop")
	s.shop.call(t, "/buy", map[string]any{"method": "wechat", "payment_id": pid, "amount": 1000, "currency": "CNY"})
	waitShopEvent(t, s.shop, pid, "sale", "awaiting customer", settleTimeout)
	// The reconciler forwards the sandbox's status answer, once.
	eventually(t, reconcileAfter+settleTimeout, "the final status from reconciliation", func() (bool, string) {
		evs := statusEvents(s.shop.state(t), pid)
		return len(evs) == 1 && evs[0].PaymentStatus == "success" && evs[0].Count == 1, fmt.Sprintf("%d status events", len(evs))
	})
	time.Sleep(1500 * time.Millisecond) // a second status request would come within a second
	if evs := statusEvents(s.shop.state(t), pid); len(evs) != 1 || evs[0].Count != 1 {
		t.Errorf("the final status reached the shop %d times", len(evs))
	}
}

func TestSandboxWrongSignaturePage(t *testing.T) {
	s := newSandboxStack(t, "", nil)
	if !s.caddy.logContains("give it only a test project's secret") {
		t.Error("the sandbox loaded without its warning")
	}
	out := s.shop.call(t, "/checkout", map[string]any{"payment_id": "sig-1", "amount": 1000, "currency": "CNY", "method": "wechat"})
	signed := str(jsonPath(out.Answer, "url"))
	if out.Status != 200 || !strings.HasPrefix(signed, s.url+"/payment?") {
		t.Fatalf("payment-page: %d %v", out.Status, out.Answer)
	}
	get := func(u string) (int, string) {
		t.Helper()
		resp, err := testClient.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, page := get(signed); code != 200 || !strings.Contains(page, "10.00 CNY") {
		t.Fatalf("the signed URL: %d\n%s", code, page)
	}
	// The shop adds a parameter after Caddy signed.
	code, page := get(signed + "&payment_description=late")
	if code != http.StatusUnauthorized || !strings.Contains(page, "Wrong signature") ||
		!strings.Contains(page, "The parameter payment_description is in the URL but not in the string that was signed") ||
		!strings.Contains(page, `in parameter <b id="diff-param">payment_description</b>`) ||
		!strings.Contains(page, "payment_description:late") {
		t.Errorf("tampered URL: %d\n%s", code, page)
	}
	// The shop changes a signed value.
	code, page = get(strings.Replace(signed, "payment_amount=1000", "payment_amount=100", 1))
	if code != http.StatusUnauthorized || !strings.Contains(page, `<pre id="canonical">`) || !strings.Contains(page, "payment_amount:100;") {
		t.Errorf("changed amount: %d\n%s", code, page)
	}
}

func TestSandboxTriggerEachScenarioOnce(t *testing.T) {
	s := newStack(t, nil)
	want := map[string][]string{
		"wechat.success": {"sale/awaiting customer/awaiting customer", "sale/success/success"},
		"wechat.decline": {"sale/awaiting customer/awaiting customer", "sale/decline/decline"},
		"alipay.success": {"sale/awaiting redirect result/awaiting redirect result", "sale/success/success"},
		"mbway.expired":  {"sale/awaiting redirect result/awaiting redirect result", "sale/decline/decline"},
		"refund.success": {"sale/success/success", "refund/success/refunded"},
		"refund.decline": {"sale/success/success", "refund/decline/success"},
	}
	list, err := exec.Command(caddyBin, "ecommpay", "trigger", "--list").CombinedOutput()
	if err != nil {
		t.Fatalf("trigger --list: %v\n%s", err, list)
	}
	for name := range want {
		if !strings.Contains(string(list), name) {
			t.Errorf("--list lacks %s:\n%s", name, list)
		}
	}
	trigger := func(secret string, args ...string) (string, error) {
		cmd := exec.Command(caddyBin, append([]string{"ecommpay", "trigger"}, args...)...)
		cmd.Env = append(filterEnv(os.Environ(), "ECOMMPAY_SECRET"), "ECOMMPAY_SECRET="+secret)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	for name, events := range want {
		pid := newPaymentID("trig")
		out, err := trigger(s.secret, name, "--to", s.caddy.callbackURL(), "--payment-id", pid)
		if err != nil || strings.Count(out, "← 200") != 2 {
			t.Errorf("trigger %s: %v\n%s", name, err, out)
			continue
		}
		got := shopEvents(t, s.shop, pid)
		for _, e := range events {
			if got[e] != 1 {
				t.Errorf("trigger %s: the shop has %v, want %s once", name, got, e)
			}
		}
		if len(got) != len(events) {
			t.Errorf("trigger %s: the shop has %v, want %v", name, got, events)
		}
	}
	out, err := trigger("not-the-secret", "wechat.success", "--to", s.caddy.callbackURL())
	if err == nil || !strings.Contains(out, "← 403") || !strings.Contains(out, "answered 403") {
		t.Errorf("trigger with a wrong secret: %v\n%s", err, out)
	}
}
