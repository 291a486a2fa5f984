package integration

import (
	"encoding/base64"
	"fmt"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/sandbox"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

const settleTimeout = 30 * time.Second

// checkGateAccepted asserts the Gate answer the shop got through Caddy and
// what the fake saw: one request on path, signature valid, project filled.
func checkGateAccepted(t *testing.T, s *stack, out shopOutgoing, path, paymentID string) map[string]any {
	t.Helper()
	if out.Status != 200 {
		t.Fatalf("Gate %s through Caddy: status %d, answer %v", path, out.Status, out.Answer)
	}
	if str(jsonPath(out.Answer, "status")) != "success" || str(jsonPath(out.Answer, "payment_id")) != paymentID ||
		str(jsonPath(out.Answer, "project_id")) != fmt.Sprint(projectID) || str(jsonPath(out.Answer, "request_id")) == "" {
		t.Errorf("Gate answer %v, want status success, payment_id %s, project_id %d and a request_id", out.Answer, paymentID, projectID)
	}
	var reqs []fakeRequest
	for _, r := range s.fake.requestsTo(path) {
		if strings.Contains(string(r.Body), paymentID) {
			reqs = append(reqs, r)
		}
	}
	if len(reqs) != 1 {
		t.Fatalf("fake saw %d requests on %s for %s, want 1", len(reqs), path, paymentID)
	}
	r := reqs[0]
	if !r.SigOK || r.Status != 200 {
		t.Errorf("fake: %s signature ok=%v (%s), answered %d", path, r.SigOK, r.SigReason, r.Status)
	}
	body := gateBody(t, r)
	if got := str(jsonPath(body, "general", "project_id")); got != fmt.Sprint(projectID) {
		t.Errorf("Gate body general.project_id = %q, want %d (Caddy fills it)", got, projectID)
	}
	if got := str(jsonPath(body, "general", "payment_id")); got != paymentID {
		t.Errorf("Gate body general.payment_id = %q, want %s", got, paymentID)
	}
	if sig := str(jsonPath(body, "general", "signature")); len(sig) != 88 {
		t.Errorf("Gate body general.signature = %q, want a base64 HMAC-SHA512", sig)
	}
	return body
}

func TestWeChatQRSale(t *testing.T) {
	s := newStack(t, nil)
	pid := newPaymentID("wx")
	out := s.shop.call(t, "/buy", map[string]any{"method": "wechat", "payment_id": pid, "amount": 1000, "currency": "CNY"})
	body := checkGateAccepted(t, s, out, "/v2/payment/wallet/wechat/sale", pid)
	if str(jsonPath(body, "payment", "amount")) != "1000" || str(jsonPath(body, "payment", "currency")) != "CNY" {
		t.Errorf("Gate body payment = %v", jsonPath(body, "payment"))
	}

	waitShopEvent(t, s.shop, pid, "sale", "success", settleTimeout)
	waitSettled(t, s.fake, 2, settleTimeout)
	st := s.shop.state(t)
	matched := checkExactlyOnce(t, s.fake, st, pid)
	cbs := s.fake.callbacksFor(pid)
	if len(cbs) != 2 {
		t.Fatalf("fake produced %d callbacks, want 2", len(cbs))
	}
	qr := s.fake.payment(pid).QR
	if !strings.HasPrefix(qr, "weixin://wxpay/bizpayurl?pr=") {
		t.Fatalf("fake QR string %q", qr)
	}
	for _, cb := range cbs {
		e := matched[cb.Seq]
		if e == nil {
			continue
		}
		checkForwarded(t, e)
		reverify(t, e, s.secret)
		sameContent(t, cb, e, "display_data")
	}

	// The intermediate callback: qr_data became qr_img with the source kept.
	inter := matched[cbs[0].Seq]
	if inter == nil {
		t.Fatal("intermediate callback not stored")
	}
	dd, _ := jsonPath(inter.Body, "display_data").([]any)
	if len(dd) != 2 {
		t.Fatalf("display_data = %v, want 2 entries", jsonPath(inter.Body, "display_data"))
	}
	if typ := str(jsonPath(dd[0], "type")); typ != "qr_img" {
		t.Errorf("display_data[0].type = %q, want qr_img", typ)
	}
	if src := str(jsonPath(dd[0], "source")); src != qr {
		t.Errorf("display_data[0].source = %q, want the original %q", src, qr)
	}
	if title := str(jsonPath(dd[0], "title")); title != "QR code" {
		t.Errorf("display_data[0].title = %q, want it kept", title)
	}
	if str(jsonPath(dd[1], "type")) != "add_info" || str(jsonPath(dd[1], "title")) != "QR Code Timeout" || str(jsonPath(dd[1], "data")) != "600" {
		t.Errorf("display_data[1] = %v, want the add_info entry unchanged", dd[1])
	}
	b64 := str(jsonPath(dd[0], "data"))
	fromBody, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		t.Fatalf("qr_img data is not base64: %v", err)
	}

	png := s.shop.qrPNG(t, pid)
	if string(png) != string(fromBody) {
		t.Errorf("the shop's /qr PNG differs from the qr_img data")
	}
	b := pngBounds(t, png)
	t.Logf("QR PNG: %d bytes, %dx%d (qr_size 256)", len(png), b.Dx(), b.Dy())
	if b.Dx() != b.Dy() || b.Dx() < 64 {
		t.Errorf("QR PNG is %v, want a square of a usable size", b)
	}
	if got := decodeQRGozxing(t, png); got != qr {
		t.Errorf("gozxing decoded %q, want %q", got, qr)
	}
	if got := decodeQRZbar(t, png); got != qr {
		t.Errorf("zbarimg decoded %q, want %q", got, qr)
	}

	// The final callback is not rewritten: same content as sent.
	final := matched[cbs[1].Seq]
	if final != nil {
		sameContent(t, cbs[1], final)
		sameBytes(t, cbs[1], final)
		if final.PaymentStatus != "success" || str(jsonPath(final.Body, "operation", "code")) != "0" {
			t.Errorf("final event: payment %s, code %v", final.PaymentStatus, jsonPath(final.Body, "operation", "code"))
		}
	}
	if p := st.Payments[pid]; p == nil || p.LastStatus != "success" {
		t.Errorf("shop's payment %s: %+v, want last status success", pid, p)
	}
}

func TestAlipayRedirectSale(t *testing.T) {
	s := newStack(t, nil)
	// The shop acknowledges with 202 and then 204: any 2xx must reach the
	// platform as exactly 200, or it would retry.
	s.shop.admin(t, "ok?status=202")
	s.fake.configure(func(k *sandbox.Knobs) { k.PayAfter = 700 * time.Millisecond })
	pid := newPaymentID("ali")
	out := s.shop.call(t, "/buy", map[string]any{"method": "alipay", "payment_id": pid, "amount": 12000, "currency": "CNY"})
	checkGateAccepted(t, s, out, "/v2/payment/wallet/alipay/sale", pid)

	waitShopEvent(t, s.shop, pid, "sale", "awaiting redirect result", settleTimeout)
	s.shop.admin(t, "ok?status=204")
	waitShopEvent(t, s.shop, pid, "sale", "success", settleTimeout)
	waitSettled(t, s.fake, 2, settleTimeout)
	st := s.shop.state(t)
	matched := checkExactlyOnce(t, s.fake, st, pid)
	cbs := s.fake.callbacksFor(pid)
	for _, cb := range cbs {
		if e := matched[cb.Seq]; e != nil {
			checkForwarded(t, e)
			reverify(t, e, s.secret)
			sameContent(t, cb, e) // nothing to rewrite: content unchanged
			sameBytes(t, cb, e)
		}
	}
	for _, d := range s.fake.deliveriesOf(nil) {
		if len(d.Attempts) != 1 || d.Attempts[0].Status != 200 {
			t.Errorf("%s: attempts %+v; want one attempt answered 200", d.CB.Identity(), d.Attempts)
		}
	}
	p := st.Payments[pid]
	if p == nil || p.Redirect == nil {
		t.Fatalf("shop has no redirect_data for %s: %+v", pid, p)
	}
	if p.Redirect["method"] != "GET" || p.Redirect["url"] != s.fake.payment(pid).Redirect {
		t.Errorf("redirect_data = %v, want GET %s", p.Redirect, s.fake.payment(pid).Redirect)
	}
	if body, ok := p.Redirect["body"].([]any); !ok || len(body) != 0 {
		t.Errorf("redirect_data.body = %#v, want the empty array kept", p.Redirect["body"])
	}
	if p.LastStatus != "success" || len(p.Statuses) != 2 || p.Statuses[0] != "awaiting redirect result" {
		t.Errorf("shop's payment statuses %v, want [awaiting redirect result success]", p.Statuses)
	}
}

func TestMBWaySaleAndRefund(t *testing.T) {
	s := newStack(t, nil)
	pid := newPaymentID("mbw")
	// The shop sends project_id itself this time and a stale signature:
	// Caddy must keep the one and replace the other.
	out := s.shop.call(t, "/buy", map[string]any{"method": "mbway", "payment_id": pid, "amount": 1000, "currency": "EUR",
		"include_project_id": true, "stale_signature": true})
	body := checkGateAccepted(t, s, out, "/v2/payment/wallet/mbway/sale", pid)
	if str(jsonPath(body, "general", "signature")) == "c3RhbGUgc2lnbmF0dXJl" {
		t.Errorf("Caddy forwarded the shop's stale general.signature")
	}
	waitShopEvent(t, s.shop, pid, "sale", "success", settleTimeout)

	// Partial refund, then the rest, both through /v2/payment/refund.
	out = s.shop.call(t, "/refund", map[string]any{"method": "mbway", "payment_id": pid, "amount": 400, "currency": "EUR", "generic": true})
	if out.Status != 200 {
		t.Fatalf("refund through Caddy: %d %v", out.Status, out.Answer)
	}
	waitShopEvent(t, s.shop, pid, "refund", "success", settleTimeout)
	out = s.shop.call(t, "/refund", map[string]any{"method": "mbway", "payment_id": pid, "amount": 600, "currency": "EUR", "generic": true})
	if out.Status != 200 {
		t.Fatalf("second refund through Caddy: %d %v", out.Status, out.Answer)
	}
	eventually(t, settleTimeout, "payment refunded in the shop", func() (bool, string) {
		p := s.shop.state(t).Payments[pid]
		if p == nil {
			return false, "no payment"
		}
		return p.LastStatus == "refunded", fmt.Sprint(p.Statuses)
	})
	waitSettled(t, s.fake, 4, settleTimeout)

	refunds := s.fake.requestsTo("/v2/payment/refund")
	if len(refunds) != 2 {
		t.Fatalf("fake saw %d refund requests, want 2", len(refunds))
	}
	for _, r := range refunds {
		if !r.SigOK || r.Status != 200 {
			t.Errorf("refund request: signature ok=%v (%s), answered %d %s", r.SigOK, r.SigReason, r.Status, r.Answer)
		}
		if got := str(jsonPath(gateBody(t, r), "general", "project_id")); got != fmt.Sprint(projectID) {
			t.Errorf("refund body general.project_id = %q", got)
		}
	}

	st := s.shop.state(t)
	matched := checkExactlyOnce(t, s.fake, st, pid)
	cbs := s.fake.callbacksFor(pid)
	if len(cbs) != 4 {
		t.Fatalf("fake produced %d callbacks, want 4", len(cbs))
	}
	for _, cb := range cbs {
		if e := matched[cb.Seq]; e != nil {
			checkForwarded(t, e)
			reverify(t, e, s.secret)
			sameContent(t, cb, e)
			sameBytes(t, cb, e)
		}
	}
	// Refund callbacks carry their signature at general.signature.
	for _, cb := range cbs[2:] {
		e := matched[cb.Seq]
		if e == nil {
			continue
		}
		if str(jsonPath(e.Body, "general", "signature")) == "" {
			t.Errorf("refund callback reached the shop without general.signature: %v", e.Body["general"])
		}
	}
	p := st.Payments[pid]
	want := []string{"awaiting redirect result", "success", "partially refunded", "refunded"}
	if p == nil || strings.Join(p.Statuses, ",") != strings.Join(want, ",") {
		t.Errorf("shop's payment statuses %v, want %v", p, want)
	}
	if fp := s.fake.payment(pid); fp.Status != "refunded" || fp.Refunded != 1000 {
		t.Errorf("fake's payment: status %s refunded %d", fp.Status, fp.Refunded)
	}
}

func TestDeclines(t *testing.T) {
	s := newStack(t, nil)

	t.Run("purchase", func(t *testing.T) {
		for _, amount := range []int{40000, 40400} {
			pid := newPaymentID(fmt.Sprintf("dec%d", amount))
			out := s.shop.call(t, "/buy", map[string]any{"method": "alipay", "payment_id": pid, "amount": amount, "currency": "USD"})
			checkGateAccepted(t, s, out, "/v2/payment/wallet/alipay/sale", pid)
			e := waitShopEvent(t, s.shop, pid, "sale", "decline", settleTimeout)
			checkForwarded(t, e)
			reverify(t, e, s.secret)
			if e.PaymentStatus != "decline" || str(jsonPath(e.Body, "operation", "code")) != "20105" {
				t.Errorf("declined purchase event: payment %s, code %v", e.PaymentStatus, jsonPath(e.Body, "operation", "code"))
			}
			if fp := s.fake.payment(pid); fp.Status != "decline" {
				t.Errorf("fake's payment status %s, want decline", fp.Status)
			}
			// A declined payment cannot be refunded: the fake refuses it, and
			// Caddy hands the Gate error back unchanged.
			out = s.shop.call(t, "/refund", map[string]any{"method": "alipay", "payment_id": pid})
			if out.Status != 400 || str(jsonPath(out.Answer, "status")) != "error" {
				t.Errorf("refund of a declined payment: %d %v, want the fake's 400 error", out.Status, out.Answer)
			}
		}
	})

	t.Run("refund", func(t *testing.T) {
		pid := newPaymentID("decref")
		out := s.shop.call(t, "/buy", map[string]any{"method": "wechat", "payment_id": pid, "amount": 60000, "currency": "EUR"})
		checkGateAccepted(t, s, out, "/v2/payment/wallet/wechat/sale", pid)
		waitShopEvent(t, s.shop, pid, "sale", "success", settleTimeout)
		for _, amount := range []int{50000, 50500} {
			out = s.shop.call(t, "/refund", map[string]any{"method": "wechat", "payment_id": pid, "amount": amount})
			if out.Status != 200 {
				t.Fatalf("refund %d: %d %v", amount, out.Status, out.Answer)
			}
		}
		eventually(t, settleTimeout, "two declined refunds in the shop", func() (bool, string) {
			n := 0
			for _, e := range s.shop.state(t).eventsFor(pid) {
				if e.OperationType == "refund" && e.OperationStatus == "decline" {
					n++
				}
			}
			return n == 2, fmt.Sprintf("%d declined refunds", n)
		})
		// A refund of another amount succeeds.
		out = s.shop.call(t, "/refund", map[string]any{"method": "wechat", "payment_id": pid, "amount": 1000})
		if out.Status != 200 {
			t.Fatalf("refund 1000: %d %v", out.Status, out.Answer)
		}
		waitShopEvent(t, s.shop, pid, "refund", "success", settleTimeout)
		if reqs := s.fake.requestsTo("/v2/payment/wallet/wechat/refund"); len(reqs) != 3 {
			t.Errorf("fake saw %d wallet refund requests, want 3", len(reqs))
		}
		for _, e := range s.shop.state(t).eventsFor(pid) {
			if e.OperationType == "refund" && e.OperationStatus == "decline" {
				if e.PaymentStatus != "success" || str(jsonPath(e.Body, "operation", "code")) != "3283" {
					t.Errorf("declined refund event: payment status %s, code %v", e.PaymentStatus, jsonPath(e.Body, "operation", "code"))
				}
			}
		}
		if fp := s.fake.payment(pid); fp.Refunded != 1000 || fp.Status != "partially refunded" {
			t.Errorf("fake's payment: refunded %d status %s, want 1000 partially refunded", fp.Refunded, fp.Status)
		}
	})

	waitSettled(t, s.fake, 1, settleTimeout)
	checkExactlyOnce(t, s.fake, s.shop.state(t))
}

// openPaymentPage asks Caddy (through the shop) for a Payment Page URL,
// checks it, and opens it at the fake as the customer's browser would.
func openPaymentPage(t *testing.T, s *stack, pid, method, currency string, amount int, extra ...string) *url.URL {
	t.Helper()
	extras := map[string]string{"language_code": "zh"}
	for i := 0; i+1 < len(extra); i += 2 {
		extras[extra[i]] = extra[i+1]
	}
	out := s.shop.call(t, "/checkout", map[string]any{"payment_id": pid, "amount": amount, "currency": currency, "method": method, "extra": extras})
	if out.Status != 200 {
		t.Fatalf("payment-page through Caddy: %d %v", out.Status, out.Answer)
	}
	rawURL := str(jsonPath(out.Answer, "url"))
	sig := str(jsonPath(out.Answer, "signature"))
	u, err := url.Parse(rawURL)
	if err != nil || rawURL == "" {
		t.Fatalf("payment-page answer %v: bad url: %v", out.Answer, err)
	}
	if u.Scheme+"://"+u.Host != s.fake.base || u.Path != "/payment" {
		t.Fatalf("payment page URL %s, want %s/payment?...", rawURL, s.fake.base)
	}
	q := u.Query()
	if q.Get("signature") != sig || len(sig) != 88 {
		t.Errorf("URL signature %q vs answer signature %q", q.Get("signature"), sig)
	}
	if !strings.Contains(u.RawQuery, "signature="+url.QueryEscape(sig)) {
		t.Errorf("signature is not URL-encoded in %s", u.RawQuery)
	}
	wantParams := map[string]string{
		"project_id": fmt.Sprint(projectID), "payment_id": pid, "payment_amount": fmt.Sprint(amount),
		"payment_currency": currency, "customer_id": "customer123",
	}
	for k, v := range extras {
		wantParams[k] = v
	}
	if method != "" {
		wantParams["force_payment_method"] = method
	}
	for k, v := range wantParams {
		if q.Get(k) != v {
			t.Errorf("payment page URL %s = %q, want %q", k, q.Get(k), v)
		}
	}
	if err := mustLoopbackURL(rawURL); err != nil {
		t.Fatal(err)
	}
	resp, err := testClient.Get(rawURL)
	if err != nil {
		t.Fatalf("open payment page: %v", err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("fake Payment Page refused the URL: %d %s", resp.StatusCode, page)
	}
	return u
}

func TestPaymentPagePurchase(t *testing.T) {
	s := newStack(t, nil)
	// Extra parameters are signed and passed on; frame_mode is passed on
	// but left out of the signature (the fake checks both).
	cases := []struct {
		method, currency string
		extra            []string
	}{
		{"wechat", "CNY", nil},
		{"alipay", "CNY", []string{"payment_description", "Заказ #7 & 2 items = 25,00", "best_before", "2030-01-01T00:00:00+00:00"}},
		{"mbway", "EUR", []string{"frame_mode", "iframe", "customer_phone", "351912345678"}},
	}
	for _, c := range cases {
		t.Run(c.method, func(t *testing.T) {
			pid := newPaymentID("pp-" + c.method)
			u := openPaymentPage(t, s, pid, c.method, c.currency, 2500, c.extra...)
			var seen *fakeRequest
			for _, r := range s.fake.requestsTo("/payment") {
				if r.Query.Get("payment_id") == pid {
					seen = &r
				}
			}
			if seen == nil || !seen.SigOK {
				t.Fatalf("fake did not accept the signed URL: %+v", seen)
			}
			e := waitShopEvent(t, s.shop, pid, "sale", "success", settleTimeout)
			checkForwarded(t, e)
			reverify(t, e, s.secret)
			if fp := s.fake.payment(pid); fp.Source != "payment_page" || fp.Method != c.method || fp.Amount != 2500 {
				t.Errorf("fake's payment %+v", fp)
			}
			if c.method == "wechat" {
				png := s.shop.qrPNG(t, pid)
				if got := decodeQRGozxing(t, png); got != s.fake.payment(pid).QR {
					t.Errorf("QR decodes to %q, want %q", got, s.fake.payment(pid).QR)
				}
			}
			// A tampered URL is refused by the platform: proves the fake checks.
			q := u.Query()
			q.Set("payment_amount", "1")
			bad := *u
			bad.RawQuery = q.Encode()
			resp, err := testClient.Get(bad.String())
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusUnauthorized {
				t.Errorf("tampered Payment Page URL: fake answered %d, want 401", resp.StatusCode)
			}
		})
	}

	t.Run("missing fields", func(t *testing.T) {
		for _, field := range []string{"payment_id", "payment_amount", "payment_currency"} {
			out := s.shop.call(t, "/checkout", map[string]any{"payment_id": "pp-missing", "amount": 100, "currency": "EUR", "drop": []string{field}})
			if out.Status != 400 {
				t.Errorf("without %s: status %d, want 400", field, out.Status)
			}
			if _, isJSON := out.Answer.(map[string]any); !isJSON || !strings.Contains(fmt.Sprint(out.Answer), field) {
				t.Errorf("without %s: answer %v, want a JSON error naming the field", field, out.Answer)
			}
		}
	})

	waitSettled(t, s.fake, 1, settleTimeout)
	checkExactlyOnce(t, s.fake, s.shop.state(t))
}

func TestPaymentPageRedirectMode(t *testing.T) {
	s := newStack(t, func(c *caddyConfig) { c.PPRedirect = true })
	pid := newPaymentID("ppr")
	target := fmt.Sprintf("%s/payment-page/go?payment_id=%s&payment_amount=700&payment_currency=EUR&customer_id=c1&force_payment_method=mbway",
		s.caddy.internalURL(), pid)
	resp, err := noRedirectClient.Get(target)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("redirect mode: status %d, want 303", resp.StatusCode)
	}
	loc := resp.Header.Get("Location")
	if !strings.HasPrefix(loc, s.fake.base+"/payment?") {
		t.Fatalf("Location %q, want %s/payment?...", loc, s.fake.base)
	}
	if err := mustLoopbackURL(loc); err != nil {
		t.Fatal(err)
	}
	resp, err = testClient.Get(loc)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("fake refused the redirected URL: %d", resp.StatusCode)
	}
	waitShopEvent(t, s.shop, pid, "sale", "success", settleTimeout)
}

// TestDuplicateCallbacks: the platform sends every callback several times at
// once, while the shop is slow; then sends a delivered one again.
func TestDuplicateCallbacks(t *testing.T) {
	s := newStack(t, nil)
	s.shop.admin(t, "slow?ms=700")
	s.fake.configure(func(k *sandbox.Knobs) { k.Copies = 5 })
	pid := newPaymentID("dup")
	out := s.shop.call(t, "/buy", map[string]any{"method": "wechat", "payment_id": pid, "amount": 1000, "currency": "EUR"})
	checkGateAccepted(t, s, out, "/v2/payment/wallet/wechat/sale", pid)
	waitShopEvent(t, s.shop, pid, "sale", "success", settleTimeout)
	waitSettled(t, s.fake, 10, settleTimeout)
	s.shop.admin(t, "slow?ms=0")

	st := s.shop.state(t)
	checkExactlyOnce(t, s.fake, st, pid)
	if n := len(st.eventsFor(pid)); n != 2 {
		t.Errorf("shop stored %d events, want 2", n)
	}
	if st.CallbackPosts != 2 {
		t.Errorf("shop received %d callback POSTs, want 2 (duplicates must not be forwarded)", st.CallbackPosts)
	}
	inFlight, dupes := 0, 0
	for _, d := range s.fake.deliveriesOf(nil) {
		for _, a := range d.Attempts {
			if a.Status == 409 {
				inFlight++
			}
			if a.Status == 200 && a.Duplicate {
				dupes++
			}
		}
	}
	t.Logf("concurrent copies: %d answers 409 (in flight), %d answers 200 duplicate", inFlight, dupes)
	if inFlight == 0 {
		t.Errorf("no copy sent while the first was being forwarded got 409")
	}
	if dupes < 8 {
		t.Errorf("%d duplicate answers, want at least 8 (4 extra copies of each of 2 callbacks)", dupes)
	}
	// The QR was rendered once and reached the shop.
	if got := decodeQRGozxing(t, s.shop.qrPNG(t, pid)); got != s.fake.payment(pid).QR {
		t.Errorf("QR decodes to %q", got)
	}

	// The platform repeats a delivered callback later.
	for _, cb := range s.fake.callbacksFor(pid) {
		code, hdr, ans, err := s.fake.postRaw(s.caddy.callbackURL(), cb.Body, nil)
		if err != nil {
			t.Fatal(err)
		}
		if code != 200 || hdr.Get("X-Ecommpay-Duplicate") != "1" {
			t.Errorf("repeat of %s: %d dup=%q %s, want 200 with X-Ecommpay-Duplicate: 1", cb.Identity(), code, hdr.Get("X-Ecommpay-Duplicate"), ans)
		}
	}
	if st2 := s.shop.state(t); st2.CallbackPosts != 2 {
		t.Errorf("shop received %d callback POSTs after the repeats, want 2", st2.CallbackPosts)
	}
}

// TestAppDown: the shop answers 500 for a while, then is unreachable for a
// while; no callback is lost and each reaches it exactly once.
// waitRefused waits until the fake has n callbacks, each tried at least 4 times.
func waitRefused(t *testing.T, f *fakeEcommpay, n int) {
	t.Helper()
	eventually(t, settleTimeout, fmt.Sprintf("%d callbacks refused at least 4 times", n), func() (bool, string) {
		ds := f.deliveriesOf(nil)
		if len(ds) < n {
			return false, fmt.Sprintf("%d deliveries", len(ds))
		}
		for _, d := range ds {
			if len(d.Attempts) < 4 {
				return false, fmt.Sprintf("%s has %d attempts", d.CB.Identity(), len(d.Attempts))
			}
		}
		return true, ""
	})
}

// checkAttempts asserts Caddy answered every delivery attempt so far with status.
func checkAttempts(t *testing.T, f *fakeEcommpay, status int, when string) {
	t.Helper()
	for _, d := range f.deliveriesOf(nil) {
		for _, a := range d.Attempts {
			if a.Status != status {
				t.Errorf("%s %s: Caddy answered %d %q, want %d", d.CB.Identity(), when, a.Status, a.Answer, status)
				break
			}
		}
	}
}

func TestAppDown(t *testing.T) {
	requireCaddy(t)
	t.Run("answers 500", func(t *testing.T) {
		s := newStack(t, nil)
		s.shop.admin(t, "down")
		wx, ali := newPaymentID("down-wx"), newPaymentID("down-ali")
		checkGateAccepted(t, s, s.shop.call(t, "/buy", map[string]any{"method": "wechat", "payment_id": wx, "amount": 1000, "currency": "CNY"}), "/v2/payment/wallet/wechat/sale", wx)
		checkGateAccepted(t, s, s.shop.call(t, "/buy", map[string]any{"method": "alipay", "payment_id": ali, "amount": 1000, "currency": "CNY"}), "/v2/payment/wallet/alipay/sale", ali)
		waitRefused(t, s.fake, 4)
		checkAttempts(t, s.fake, 500, "while the shop answers 500")
		s.shop.admin(t, "up")
		upAt := time.Now()
		waitSettled(t, s.fake, 4, settleTimeout)
		checkPromptAfter(t, s.fake, upAt, 5*time.Second)
		st := s.shop.state(t)
		if st.AnsweredDown < 8 {
			t.Errorf("shop answered 500 only %d times", st.AnsweredDown)
		}
		checkExactlyOnce(t, s.fake, st)
		if len(st.Events) != 4 {
			t.Errorf("shop stored %d events, want 4", len(st.Events))
		}
		if got := decodeQRGozxing(t, s.shop.qrPNG(t, wx)); got != s.fake.payment(wx).QR {
			t.Errorf("QR decodes to %q", got)
		}
	})

	t.Run("unreachable", func(t *testing.T) {
		s := newStack(t, nil)
		// The platform waits a little before its first callback (callback.delay),
		// so the shop is gone by then.
		s.fake.configure(func(k *sandbox.Knobs) { k.FirstDelay = 400 * time.Millisecond })
		pid := newPaymentID("gone")
		checkGateAccepted(t, s, s.shop.call(t, "/buy", map[string]any{"method": "mbway", "payment_id": pid, "amount": 1000, "currency": "EUR"}), "/v2/payment/wallet/mbway/sale", pid)
		s.shop.stop()
		waitRefused(t, s.fake, 2)
		checkAttempts(t, s.fake, http.StatusBadGateway, "while the shop is unreachable")
		s.shop.restart()
		upAt := time.Now()
		waitSettled(t, s.fake, 2, settleTimeout)
		checkPromptAfter(t, s.fake, upAt, 5*time.Second)
		st := s.shop.state(t)
		if st.Restarts != 1 {
			t.Errorf("shop restarts = %d", st.Restarts)
		}
		checkExactlyOnce(t, s.fake, st)
		// After an outage the callbacks may arrive in any order.
		if p := st.Payments[pid]; p == nil || len(p.Statuses) != 2 || (p.Statuses[0] != "success" && p.Statuses[1] != "success") {
			t.Errorf("shop's payment after the outage: %+v", p)
		}
	})
}

// checkPromptAfter asserts every delivery succeeded within limit of the app
// coming back: a failed forward must not leave the callback blocked.
func checkPromptAfter(t *testing.T, f *fakeEcommpay, upAt time.Time, limit time.Duration) {
	t.Helper()
	for _, d := range f.deliveriesOf(nil) {
		if n := len(d.Attempts); n > 0 && d.Done {
			if late := d.Attempts[n-1].At.Sub(upAt); late > limit {
				t.Errorf("%s delivered %s after the shop came back, want within %s", d.CB.Identity(), late.Round(time.Millisecond), limit)
			}
		}
	}
}

// TestForgedCallback: nothing that fails verification reaches the shop.
func TestForgedCallback(t *testing.T) {
	s := newStack(t, nil)
	pid := newPaymentID("real")
	checkGateAccepted(t, s, s.shop.call(t, "/buy", map[string]any{"method": "mbway", "payment_id": pid, "amount": 1000, "currency": "EUR"}), "/v2/payment/wallet/mbway/sale", pid)
	waitShopEvent(t, s.shop, pid, "sale", "success", settleTimeout)
	waitSettled(t, s.fake, 2, settleTimeout)
	before := s.shop.state(t).CallbackPosts
	final := s.fake.callbacksFor(pid)[1]

	forgedBody := func(mut func(m map[string]any), secret string, inGeneral bool) []byte {
		m := map[string]any{
			"project_id": projectID,
			"payment": map[string]any{"id": "forged-" + randHex(4), "type": "purchase", "status": "success",
				"date": platformDate(time.Now()), "method": "MBWay", "sum": sum(100000, "EUR")},
			"operation": map[string]any{"id": 123456789, "type": "sale", "status": "success", "code": "0", "message": "Success"},
		}
		if inGeneral {
			m["general"] = map[string]any{"project_id": projectID, "payment_id": "forged"}
		}
		if mut != nil {
			mut(m)
		}
		return signJSONWithSignatureAt(m, secret, inGeneral)
	}
	tampered := strings.Replace(string(final.Body), `"amount":1000`, `"amount":100000`, 1)
	if tampered == string(final.Body) {
		t.Fatal("could not tamper with the final callback")
	}
	unsigned := strings.Replace(string(final.Body), `"signature":`, `"not_signature":`, 1)
	cases := []struct {
		name string
		body []byte
		want int
	}{
		{"signed with another secret", forgedBody(nil, "not-the-secret", false), 403},
		{"general.signature with another secret", forgedBody(nil, "not-the-secret", true), 403},
		{"real callback, amount changed", []byte(tampered), 403},
		{"no signature", []byte(unsigned), 403},
		{"unknown project", forgedBody(func(m map[string]any) { m["project_id"] = 999 }, s.secret, false), 403},
		{"malformed JSON", []byte(`{"project_id":210,"payment":`), 400},
		{"too large", append(append([]byte(`{"project_id":210,"pad":"`), []byte(strings.Repeat("x", 33<<20))...), []byte(`"}`)...), 413},
	}
	for _, c := range cases {
		code, _, ans, err := s.fake.postRaw(s.caddy.callbackURL(), c.body, nil)
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if code != c.want {
			t.Errorf("%s: Caddy answered %d %q, want %d", c.name, code, ans, c.want)
		}
	}
	st := s.shop.state(t)
	if st.CallbackPosts != before {
		t.Errorf("forged callbacks reached the shop: %d POSTs, was %d; rejected: %v", st.CallbackPosts, before, st.Rejected)
	}
	for id := range st.Payments {
		if strings.HasPrefix(id, "forged") {
			t.Errorf("shop stored forged payment %s", id)
		}
	}

	// A genuine callback with the trusted headers set by the sender: Caddy
	// replaces them.
	spoofed := s.fake.signedCallback(pid, "refund", "success")
	hdr := http.Header{}
	hdr.Set("X-Ecommpay-Event-Key", "spoofed-key")
	hdr.Set("X-Ecommpay-Project-Id", "999")
	code, _, ans, err := s.fake.postRaw(s.caddy.callbackURL(), spoofed, hdr)
	if err != nil || code != 200 {
		t.Fatalf("genuine callback with spoofed headers: %d %q %v", code, ans, err)
	}
	st = s.shop.state(t)
	if _, ok := st.Events["spoofed-key"]; ok {
		t.Errorf("the sender's X-Ecommpay-Event-Key reached the shop")
	}
	for _, e := range st.eventsFor(pid) {
		checkForwarded(t, e)
		if strings.Contains(e.ForwardedHeaders["X-Ecommpay-Event-Key"], "spoofed") {
			t.Errorf("forwarded headers carry the spoofed key: %v", e.ForwardedHeaders)
		}
	}
	if len(st.Rejected) > 0 {
		t.Errorf("shop rejected: %v", st.Rejected)
	}
}

// TestSigningEndpointsAllow: with allow set to a range without 127.0.0.1,
// the signing endpoints refuse the shop and nothing reaches the platform.
func TestSigningEndpointsAllow(t *testing.T) {
	requireCaddy(t)
	t.Run("payment_page", func(t *testing.T) {
		s := newStack(t, func(c *caddyConfig) { c.PPAllow = "10.0.0.0/8" })
		out := s.shop.call(t, "/checkout", map[string]any{"payment_id": "deny-1", "amount": 100, "currency": "EUR"})
		if out.Status != http.StatusForbidden {
			t.Errorf("payment-page from 127.0.0.1 with allow 10.0.0.0/8: %d %v, want 403", out.Status, out.Answer)
		}
		if strings.Contains(fmt.Sprint(out.Answer), "signature") && jsonPath(out.Answer, "url") != nil {
			t.Errorf("a refused client got a signed URL: %v", out.Answer)
		}
		// The Gate endpoint, without allow, still serves the shop.
		pid := newPaymentID("allowed")
		checkGateAccepted(t, s, s.shop.call(t, "/buy", map[string]any{"method": "alipay", "payment_id": pid, "amount": 1000, "currency": "EUR"}), "/v2/payment/wallet/alipay/sale", pid)
	})
	t.Run("gate", func(t *testing.T) {
		s := newStack(t, func(c *caddyConfig) { c.GateAllow = "10.0.0.0/8" })
		out := s.shop.call(t, "/buy", map[string]any{"method": "alipay", "payment_id": "deny-2", "amount": 1000, "currency": "EUR"})
		if out.Status != http.StatusForbidden {
			t.Errorf("Gate sale from 127.0.0.1 with allow 10.0.0.0/8: %d %v, want 403", out.Status, out.Answer)
		}
		for _, r := range s.fake.allRequests() {
			if strings.HasPrefix(r.Path, "/v2/") {
				t.Errorf("a refused Gate request reached the platform: %s %s", r.Path, r.Body)
			}
		}
		// The Payment Page endpoint, without allow, still serves the shop.
		u := openPaymentPage(t, s, newPaymentID("pp-allowed"), "alipay", "EUR", 1500)
		_ = u
	})
}

// TestSecretRotation: Caddy holds the current and an older secret. Callbacks
// signed with either are accepted and reach the shop verifiable with the key
// the platform used (a rewritten one is re-signed with that key); a callback
// signed with any other secret is refused.
func TestSecretRotation(t *testing.T) {
	older := newSecret()
	s := newStackVerifying(t, func(c *caddyConfig) { c.OldSecret = older }, older)

	// Callbacks still signed with the older secret, one of them rewritten (QR).
	s.fake.configure(func(k *sandbox.Knobs) { k.SignSecret = older })
	wx := newPaymentID("rot-wx")
	checkGateAccepted(t, s, s.shop.call(t, "/buy", map[string]any{"method": "wechat", "payment_id": wx, "amount": 1000, "currency": "CNY"}), "/v2/payment/wallet/wechat/sale", wx)
	waitShopEvent(t, s.shop, wx, "sale", "success", settleTimeout)

	// Callbacks signed with the current secret.
	s.fake.configure(func(k *sandbox.Knobs) { k.SignSecret = "" })
	ali := newPaymentID("rot-ali")
	checkGateAccepted(t, s, s.shop.call(t, "/buy", map[string]any{"method": "alipay", "payment_id": ali, "amount": 1000, "currency": "CNY"}), "/v2/payment/wallet/alipay/sale", ali)
	waitShopEvent(t, s.shop, ali, "sale", "success", settleTimeout)
	waitSettled(t, s.fake, 4, settleTimeout)

	st := s.shop.state(t)
	checkExactlyOnce(t, s.fake, st)
	for _, e := range st.eventsFor(wx) {
		checkForwarded(t, e)
		reverify(t, e, older)
		if e.SecretIndex != 1 {
			t.Errorf("%s: the shop verified it with secret #%d, want the older one (#1)", e.Key, e.SecretIndex)
		}
	}
	for _, e := range st.eventsFor(ali) {
		checkForwarded(t, e)
		reverify(t, e, s.secret)
		if e.SecretIndex != 0 {
			t.Errorf("%s: the shop verified it with secret #%d, want the current one (#0)", e.Key, e.SecretIndex)
		}
	}
	if got := decodeQRGozxing(t, s.shop.qrPNG(t, wx)); got != s.fake.payment(wx).QR {
		t.Errorf("QR decodes to %q", got)
	}

	before := st.CallbackPosts
	s.fake.configure(func(k *sandbox.Knobs) { k.SignSecret = newSecret() })
	code, _, ans, err := s.fake.postRaw(s.caddy.callbackURL(), s.fake.signedCallback(ali, "refund", "success"), nil)
	if err != nil || code != http.StatusForbidden {
		t.Errorf("callback signed with a third secret: %d %q %v, want 403", code, ans, err)
	}
	if after := s.shop.state(t).CallbackPosts; after != before {
		t.Errorf("a callback signed with an unknown secret reached the shop")
	}
}

// TestPlatformRefusesWrongSecret: when Caddy holds a secret the platform does
// not, the platform refuses the signed Gate request and Payment Page URL, and
// Caddy hands its error back to the shop unchanged. This also proves that
// the fake's checks are real.
func TestPlatformRefusesWrongSecret(t *testing.T) {
	requireCaddy(t)
	secret := newSecret()
	fake := startFake(t, newSecret()) // the platform knows another secret
	cfg := newCaddyConfig(t, fake.port(), 0)
	shop := startShop(t, fmt.Sprintf("http://127.0.0.1:%d", cfg.Internal), secret, 0)
	cfg.App = shop.port
	caddy := startCaddy(t, "caddy", cfg, secret)
	fake.setCallbackURLs(caddy.callbackURL())
	t.Cleanup(fake.stopDeliveries)

	out := shop.call(t, "/buy", map[string]any{"method": "wechat", "payment_id": "wrong-secret", "amount": 1000, "currency": "CNY"})
	if out.Status != http.StatusUnauthorized || str(jsonPath(out.Answer, "status")) != "error" || str(jsonPath(out.Answer, "code")) == "" {
		t.Errorf("Gate sale signed with a secret the platform does not know: %d %v, want the platform's 401 error", out.Status, out.Answer)
	}
	reqs := fake.requestsTo("/v2/payment/wallet/wechat/sale")
	if len(reqs) != 1 || reqs[0].SigOK || reqs[0].SigReason != "signature mismatch" {
		t.Errorf("fake's view of the request: %+v", reqs)
	}

	out = shop.call(t, "/checkout", map[string]any{"payment_id": "wrong-secret-pp", "amount": 100, "currency": "EUR", "method": "alipay"})
	rawURL := str(jsonPath(out.Answer, "url"))
	if out.Status != 200 || mustLoopbackURL(rawURL) != nil {
		t.Fatalf("payment-page: %d %v", out.Status, out.Answer)
	}
	resp, err := testClient.Get(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("Payment Page URL signed with another secret: fake answered %d, want 401", resp.StatusCode)
	}
	time.Sleep(300 * time.Millisecond)
	if cbs := fake.allCallbacks(); len(cbs) != 0 {
		t.Errorf("the platform sent %d callbacks for refused requests", len(cbs))
	}
}

// TestHostedQRExpires: with `qr url`, the link lives as long as the
// callback's "QR Code Timeout" says, then answers 404.
func TestHostedQRExpires(t *testing.T) {
	s := newStack(t, func(c *caddyConfig) { c.QR = fmt.Sprintf("url http://127.0.0.1:%d/ecommpay/qr", c.Public) })
	s.fake.configure(func(k *sandbox.Knobs) { k.QRTimeout = "2" })
	pid := newPaymentID("qr-ttl")
	checkGateAccepted(t, s, s.shop.call(t, "/buy", map[string]any{"method": "wechat", "payment_id": pid, "amount": 1000, "currency": "CNY"}), "/v2/payment/wallet/wechat/sale", pid)
	waitShopEvent(t, s.shop, pid, "sale", "awaiting customer", settleTimeout)
	rewrittenAt := time.Now()
	st := s.shop.state(t)
	link := st.Payments[pid].QRURL
	if !strings.HasPrefix(link, s.caddy.publicURL()+"/ecommpay/qr/") || mustLoopbackURL(link) != nil {
		t.Fatalf("qr_url %q, want a link under %s/ecommpay/qr/", link, s.caddy.publicURL())
	}
	// <base>/<project>/<expires>/<tag>/<payload>.png
	parts := strings.Split(strings.TrimPrefix(link, s.caddy.publicURL()+"/ecommpay/qr/"), "/")
	if len(parts) != 4 || parts[0] != fmt.Sprint(projectID) {
		t.Fatalf("qr_url %q does not look like <project>/<expires>/<tag>/<payload>.png", link)
	}
	var expires int64
	if _, err := fmt.Sscan(parts[1], &expires); err != nil {
		t.Fatalf("qr_url expiry %q: %v", parts[1], err)
	}
	if left := time.Until(time.Unix(expires, 0)); left > 4*time.Second || left < -time.Second {
		t.Errorf("qr_url expires in %s, want about the callback's QR Code Timeout (2 s)", left.Round(time.Millisecond))
	}

	resp, err := testClient.Get(link)
	if err != nil {
		t.Fatal(err)
	}
	png, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "image/png") {
		t.Fatalf("fresh QR link: %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	if cc := resp.Header.Get("Cache-Control"); !strings.Contains(cc, "private") {
		t.Errorf("QR image Cache-Control %q, want private", cc)
	}
	if got := decodeQRGozxing(t, png); got != s.fake.payment(pid).QR {
		t.Errorf("QR decodes to %q", got)
	}

	// Wait past the expiry (bounded: at most ~5 s after the rewrite).
	wait := time.Until(time.Unix(expires+1, 0))
	if limit := 5*time.Second - time.Since(rewrittenAt); wait > limit {
		wait = limit
	}
	time.Sleep(wait)
	resp, err = testClient.Get(link)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("expired QR link: %d, want 404", resp.StatusCode)
	}
}
