package sandbox

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// A Scenario is a realistic sequence of signed callbacks for one payment,
// sent straight to a callback route without a sandbox ("caddy ecommpay
// trigger"). The bodies are the ones the sandbox's own flows send.
type Scenario struct {
	Name    string
	Summary string
	method  string
	amount  int64 // the default amount
	steps   func(o op, p Params) []step
}

// Params choose the payment a scenario reports on; zero values take the
// scenario's defaults.
type Params struct {
	ProjectID string
	PaymentID string
	Amount    int64
	Currency  string
	// Now is the clock for dates; default time.Now.
	Now func() time.Time
}

type step struct {
	name string
	body map[string]any
}

// Scenarios lists every scenario, in the order --list shows them.
func Scenarios() []Scenario {
	sale := func(final outcome, intermediate func(o op, now time.Time) map[string]any) func(o op, p Params) []step {
		return func(o op, p Params) []step {
			now := p.Now()
			return []step{
				{"sale intermediate", intermediate(o, now)},
				{"sale final", o.body(final, now)},
			}
		}
	}
	qr := func(o op, now time.Time) map[string]any { return withQR(o.body(pendingQR, now), newQR(), "600") }
	redirect := func(o op, now time.Time) map[string]any {
		return withRedirect(o.body(pendingRedirect, now), "https://example.invalid/provider/"+o.method+"/"+o.paymentID)
	}
	refund := func(declined bool) func(o op, p Params) []step {
		return func(o op, p Params) []step {
			now := p.Now()
			r := o
			r.opType, r.opID, r.requestID = "refund", o.opID+1, randHex(21)
			out := outcome{payStatus: "refunded", opStatus: "success", code: "0", message: "Success"}
			if declined {
				out = refundDeclined
				out.payStatus = "success"
				r.remaining = o.amount
			}
			return []step{
				{"sale final", o.body(saleSuccess, now)},
				{"refund final", r.body(out, now)},
			}
		}
	}
	return []Scenario{
		{Name: "wechat.success", Summary: "WeChat Pay: QR shown (awaiting customer), then paid", method: "wechat", amount: 10000, steps: sale(saleSuccess, qr)},
		{Name: "wechat.decline", Summary: "WeChat Pay: QR shown, then declined (insufficient funds)", method: "wechat", amount: 40000, steps: sale(saleInsufficent, qr)},
		{Name: "alipay.success", Summary: "Alipay: redirect step (awaiting redirect result), then paid", method: "alipay", amount: 10000, steps: sale(saleSuccess, redirect)},
		{Name: "mbway.expired", Summary: "MBWay: redirect step, then declined when the customer did not confirm within 4 minutes", method: "mbway", amount: 1000, steps: sale(saleExpired, redirect)},
		{Name: "refund.success", Summary: "Alipay: a paid purchase, then refunded in full", method: "alipay", amount: 10000, steps: refund(false)},
		{Name: "refund.decline", Summary: "Alipay: a paid purchase, then a refund of it declined", method: "alipay", amount: 50000, steps: refund(true)},
	}
}

// LookupScenario finds a scenario by name.
func LookupScenario(name string) (Scenario, bool) {
	for _, sc := range Scenarios() {
		if sc.Name == name {
			return sc, true
		}
	}
	return Scenario{}, false
}

// TriggerResult is one callback a trigger sent and the answer it got.
type TriggerResult struct {
	Name   string
	Body   []byte
	Status int
	Answer string
}

// Trigger signs the scenario's callbacks with secret and posts each once to
// target, in order, stopping at the first answer that is not 200. report,
// when set, is called after each one.
func Trigger(ctx context.Context, client *http.Client, signer Signer, secret, target string, sc Scenario, p Params, report func(TriggerResult)) ([]TriggerResult, error) {
	if err := checkCallbackURL(target); err != nil {
		return nil, err
	}
	if p.Now == nil {
		p.Now = time.Now
	}
	if p.ProjectID == "" {
		return nil, fmt.Errorf("a project ID is required")
	}
	if p.PaymentID == "" {
		p.PaymentID = "trigger-" + randHex(6)
	}
	if p.Amount == 0 {
		p.Amount = sc.amount
	}
	if p.Currency == "" {
		p.Currency = "EUR"
		if sc.method == "wechat" || sc.method == "alipay" {
			p.Currency = "CNY"
		}
	}
	o := op{projectID: p.ProjectID, paymentID: p.PaymentID, method: sc.method, amount: p.Amount, currency: p.Currency,
		customerID: "customer-" + p.PaymentID, opType: "sale", opID: newOpID(), requestID: randHex(21), created: p.Now()}
	var results []TriggerResult
	for _, st := range sc.steps(o, p) {
		body, err := signCallback(signer, st.body, secret, false)
		if err != nil {
			return results, err
		}
		res := TriggerResult{Name: st.name, Body: body}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, strings.NewReader(string(body)))
		if err != nil {
			return results, err
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("User-Agent", "caddy-ecommpay-trigger/1")
		resp, err := client.Do(req)
		if err != nil {
			return results, err
		}
		ans, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		res.Status, res.Answer = resp.StatusCode, string(ans)
		results = append(results, res)
		if report != nil {
			report(res)
		}
		if res.Status != http.StatusOK {
			return results, fmt.Errorf("%s: the callback route answered %d %s", st.name, res.Status, strings.TrimSpace(res.Answer))
		}
	}
	return results, nil
}
