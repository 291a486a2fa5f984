package integration

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// TestSandboxPaymentPageInBrowser pays on the sandbox's Payment Page in
// Chromium: a URL Caddy signed for the Python shop, WeChat's QR step, and
// back to the shop's result page, with the final callback at the shop
// once, through Caddy's callback route. Then the same with Decline. It
// writes screenshots of the page and the delivery log to
// $ECOMMPAY_SANDBOX_SCREENSHOTS when set (that is how docs/ gets them).
func TestSandboxPaymentPageInBrowser(t *testing.T) {
	chromium := needTool(t, "chromium", "chromium")
	s := newSandboxStack(t, "", nil)
	shots := os.Getenv("ECOMMPAY_SANDBOX_SCREENSHOTS")
	if shots == "" {
		shots = t.TempDir()
	}
	pg := newBrowserPage(t, chromium, shots)
	ctx, do, text, shot := pg.ctx, pg.do, pg.text, pg.shot
	// open shows the Payment Page of a new payment and its QR step, at the
	// URL Caddy signed for the shop: typed in, or, fromShop, followed from a
	// page of the shop's (another origin), as a checkout sends the customer.
	open := func(pid string, fromShop bool) string {
		t.Helper()
		out := s.shop.call(t, "/checkout", map[string]any{"payment_id": pid, "amount": 2500, "currency": "CNY", "method": "wechat",
			"extra": map[string]any{
				"payment_description":  "Order " + pid,
				"merchant_success_url": s.pagesURL() + "/success?payment_id=" + pid,
				"merchant_fail_url":    s.pagesURL() + "/fail?payment_id=" + pid,
			}})
		pageURL := str(jsonPath(out.Answer, "url"))
		if out.Status != 200 || !strings.HasPrefix(pageURL, s.url+"/payment?") {
			t.Fatalf("payment-page: %d %v", out.Status, out.Answer)
		}
		do(chromedp.EmulateViewport(900, 700))
		if fromShop {
			do(chromedp.Navigate(s.pagesURL()+"/success?payment_id=cart"), chromedp.WaitVisible(chromedp.CSS("body")),
				chromedp.Evaluate[chromedp.Void](fmt.Sprintf("location.href = %q", pageURL)))
		} else {
			do(chromedp.Navigate(pageURL))
		}
		do(chromedp.WaitVisible(chromedp.CSS("#pay")))
		if page := text("#payment"); !strings.Contains(page, "25.00 CNY") || !strings.Contains(page, "Order "+pid) || !strings.Contains(page, "wechat") {
			t.Fatalf("the Payment Page: %q", page)
		}
		do(chromedp.Click(chromedp.CSS("#pay")), chromedp.WaitVisible(chromedp.CSS("#qr")))
		width, err := chromedp.Run(ctx, chromedp.Evaluate[int](`(async () => { const i = document.querySelector('#qr'); await i.decode(); return i.naturalWidth; })()`, chromedp.EvalAwaitPromise))
		if err != nil || width == 0 {
			t.Fatalf("the QR image is not shown: width %d, %v", width, err)
		}
		png, err := chromedp.Run(ctx, chromedp.Screenshot(chromedp.CSS("#qr")))
		if err != nil {
			t.Fatal(err)
		}
		shown := decodeQRGozxing(t, png)
		waitShopEvent(t, s.shop, pid, "sale", "awaiting customer", settleTimeout)
		sent := str(s.shop.state(t).Payments[pid].QR["source"])
		if shown == "" || shown != sent || shown != text("#qr-payload") {
			t.Fatalf("the QR on the page decodes to %q; the callback carried %q", shown, sent)
		}
		return pid
	}

	// arrive waits until the browser is on a page under prefix.
	arrive := func(prefix string) {
		t.Helper()
		eventually(t, 10*time.Second, "the browser on "+prefix, func() (bool, string) {
			// Asked while the page navigates, the browser may answer that
			// the target navigated: then ask again.
			loc, err := chromedp.Run(ctx, chromedp.Location())
			return err == nil && strings.HasPrefix(loc, prefix), fmt.Sprintf("%q %v", loc, err)
		})
	}

	paid := open(newPaymentID("wx-page"), false)
	shot("sandbox-payment-page.png")
	do(chromedp.Click(chromedp.CSS("#paid")))
	arrive(s.pagesURL() + "/success")
	eventually(t, 5*time.Second, "the shop's success page", func() (bool, string) {
		body, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("body")))
		return err == nil && strings.Contains(body, paid+" succeeded"), fmt.Sprintf("%q %v", body, err)
	})
	waitShopEvent(t, s.shop, paid, "sale", "success", settleTimeout)

	declined := open(newPaymentID("wx-decline"), true)
	do(chromedp.Click(chromedp.CSS("#decline")))
	arrive(s.pagesURL() + "/fail")
	waitShopEvent(t, s.shop, declined, "sale", "decline", settleTimeout)

	// The delivery log shows both payments, every callback delivered.
	do(chromedp.Navigate(s.url+"/sandbox/"), chromedp.WaitVisible(chromedp.CSS("#callbacks")))
	log := text("main")
	shot("sandbox-delivery-log.png")
	for _, want := range []string{paid, declined, "sale final", "delivered", "200"} {
		if !strings.Contains(log, want) {
			t.Errorf("the delivery log lacks %q", want)
		}
	}
	time.Sleep(300 * time.Millisecond) // a duplicate would have arrived by now
	for pid, final := range map[string]string{paid: "sale/success/success", declined: "sale/decline/decline"} {
		got := shopEvents(t, s.shop, pid)
		if got[final] != 1 || got["sale/awaiting customer/awaiting customer"] != 1 || len(got) != 2 {
			t.Errorf("%s: the shop recorded %v, want the QR step and %s once each", pid, got, final)
		}
	}
	t.Logf("sandbox screenshots in %s", shots)
}
