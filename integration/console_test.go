package integration

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// The operator console, driven in a real headless Chromium: a payment run
// through the fake ecommpay is found in the list, its timeline shows each
// callback's verdict, and Replay delivers the event to the shop again.
// Screenshots go to the test's temp dir (the log says where), or to
// $ECOMMPAY_CONSOLE_SCREENSHOTS when set (that is how docs/ gets its
// pictures).
func TestConsoleInBrowser(t *testing.T) {
	chromium := needTool(t, "chromium", "chromium")
	s := newStack(t, nil)
	pid := newPaymentID("wx")
	out := s.shop.call(t, "/buy", map[string]any{"method": "wechat", "payment_id": pid, "amount": 1000, "currency": "CNY"})
	checkGateAccepted(t, s, out, "/v2/payment/wallet/wechat/sale", pid)
	final := waitShopEvent(t, s.shop, pid, "sale", "success", settleTimeout)
	waitSettled(t, s.fake, 2, settleTimeout)

	// A verified callback carrying markup of the customer's: the console
	// must show it as text. No signing request started this payment: its
	// amount and method come from the callback.
	const evil = `<img src=x onerror="document.title='pwned'">`
	xssID := newPaymentID("xss")
	injected := signJSONWithSignatureAt(map[string]any{
		"project_id": projectID,
		"payment": map[string]any{"id": xssID, "type": "purchase", "status": "success", "description": evil,
			"method": "card", "sum": map[string]any{"amount": 12345, "currency": "KWD"}},
		"operation": map[string]any{"id": 1, "type": "sale", "status": "success"},
	}, s.fake.callbackSecret(), false)
	// encoding/json escapes < and >; a sender need not, and the decoded
	// text (what is signed) is the same.
	injected = []byte(strings.NewReplacer(`\u003c`, "<", `\u003e`, ">").Replace(string(injected)))
	if code, _, body, err := s.fake.postRaw(s.caddy.callbackURL(), injected, nil); err != nil || code != http.StatusOK {
		t.Fatalf("injected callback: %d %v %s", code, err, body)
	}

	shots := os.Getenv("ECOMMPAY_CONSOLE_SCREENSHOTS")
	if shots == "" {
		shots = t.TempDir()
	}
	t.Logf("console screenshots in %s", shots)

	pg := newBrowserPage(t, chromium, shots)
	ctx, do, text, shot := pg.ctx, pg.do, pg.text, pg.shot
	base := s.caddy.internalURL() + "/ecommpay"

	do(chromedp.EmulateViewport(1200, 800), chromedp.Navigate(base+"/payments"), chromedp.WaitVisible(chromedp.CSS("table")))
	listText := text("main")
	summary := text("[data-summary]")
	rowAmount := func(id string) (shown, hover string) {
		t.Helper()
		js := fmt.Sprintf(`(() => { const a = document.querySelector('a[href$="/%s"]'); const s = a && a.closest('tr').querySelector('.amount');
			return s ? [s.textContent, s.title] : ["", ""]; })()`, url.PathEscape(id))
		got, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](js))
		if err != nil || len(got) != 2 {
			t.Fatalf("browser: the amount of %s: %v %v", id, got, err)
		}
		return got[0], got[1]
	}
	cnyShown, cnyHover := rowAmount(pid)
	kwdShown, kwdHover := rowAmount(xssID)
	shot("console-payments.png")
	do(chromedp.Click(chromedp.CSS(fmt.Sprintf(`a[href$="/%s"]`, url.PathEscape(pid)))), chromedp.WaitVisible(chromedp.CSS("ol.timeline")))
	timelineText := text("main")
	shot("console-timeline.png")
	do(chromedp.Click(chromedp.CSS(fmt.Sprintf(`a[href$="/events/%s"]`, url.PathEscape(final.Key)))), chromedp.WaitVisible(chromedp.CSS("pre.body")))
	eventText := text("main")
	shot("console-event.png")
	do(chromedp.Click(chromedp.CSS("button.replay")), chromedp.WaitVisible(chromedp.CSS("p.notice")))
	notice := text("p.notice")
	shot("console-replayed.png")
	if !strings.Contains(listText, pid) || !strings.Contains(listText, "success") {
		t.Errorf("the payments list lacks the payment: %q", listText)
	}
	// Major units by the currency's exponent, the minor units on hover.
	if cnyShown != "10.00 CNY" || cnyHover != "1000 CNY in minor units" {
		t.Errorf("the Gate payment's amount shows %q, hover %q; want 10.00 CNY, hover 1000 CNY in minor units", cnyShown, cnyHover)
	}
	if kwdShown != "12.345 KWD" || kwdHover != "12345 KWD in minor units" {
		t.Errorf("the callback-first payment's amount shows %q, hover %q; want 12.345 KWD", kwdShown, kwdHover)
	}
	if !strings.Contains(listText, "card") {
		t.Errorf("the callback-first payment's method is not shown: %q", listText)
	}
	// The summary line counts and sums what is listed: both payments
	// succeeded.
	for _, want := range []string{"2 payments", "2 success", "10.00 CNY", "12.345 KWD"} {
		if !strings.Contains(summary, want) {
			t.Errorf("the summary line %q lacks %q", summary, want)
		}
	}
	for _, want := range []string{"gate", "/v2/payment/wallet/wechat/sale", "awaiting customer", "success", "forwarded",
		"10.00 CNY", "ecommpay 200", " UTC"} {
		if !strings.Contains(timelineText, want) {
			t.Errorf("the timeline lacks %q: %q", want, timelineText)
		}
	}
	if !strings.Contains(eventText, pid) || !strings.Contains(eventText, `"status": "success"`) {
		t.Errorf("the event page lacks the body: %q", eventText)
	}
	if !strings.Contains(notice, "Replayed: the app accepted the event") {
		t.Fatalf("replay notice %q", notice)
	}
	eventually(t, 5*time.Second, "the replay at the shop", func() (bool, string) {
		e := s.shop.state(t).Events[final.Key]
		if e == nil {
			return false, "event gone"
		}
		return e.Replays == 1 && e.Count == 1, fmt.Sprintf("replays %d, count %d", e.Replays, e.Count)
	})

	// The injected markup is text on the event page, not an element.
	injectedKey := ""
	for key, e := range s.shop.state(t).Events {
		if e.PaymentID == xssID {
			injectedKey = key
		}
	}
	if injectedKey == "" {
		t.Fatal("the injected callback did not reach the shop")
	}
	do(chromedp.Navigate(base+"/events/"+url.PathEscape(injectedKey)), chromedp.WaitVisible(chromedp.CSS("pre.body")))
	imgs, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll('img[onerror]').length`))
	if err != nil {
		t.Fatal(err)
	}
	title, err := chromedp.Run(ctx, chromedp.Title())
	if err != nil {
		t.Fatal(err)
	}
	eventText = text("pre.body")
	if imgs != 0 || strings.Contains(title, "pwned") || !strings.Contains(eventText, `<img src=x`) {
		t.Fatalf("markup from a callback ran or vanished: %d img elements, title %q, text %q", imgs, title, eventText)
	}

	// A form posted from another site's page is refused.
	form := url.Values{"token": {"anything"}}
	req, _ := http.NewRequest(http.MethodPost, base+"/events/"+url.PathEscape(final.Key)+"/replay", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", "https://evil.example")
	req.Header.Set("Sec-Fetch-Site", "cross-site")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("cross-origin form replay: %d, want 403", resp.StatusCode)
	}
	if e := s.shop.state(t).Events[final.Key]; e.Replays != 1 {
		t.Fatalf("a refused replay reached the shop: %d replays", e.Replays)
	}

	// The API's replay answers the entry it made.
	req, _ = http.NewRequest(http.MethodPost, base+"/api/events/"+url.PathEscape(final.Key)+"/replay", strings.NewReader("{}"))
	req.Header.Set("Content-Type", "application/json")
	var replayed struct {
		ID     string    `json:"id"`
		Time   time.Time `json:"time"`
		Result string    `json:"result"`
	}
	if code := getJSONReq(t, req, &replayed); code != http.StatusOK || replayed.ID == "" || replayed.Time.IsZero() || replayed.Result != "forwarded" {
		t.Fatalf("API replay: %d %+v", code, replayed)
	}

	// The CSV download of the filtered list: raw and major amounts.
	resp, err = http.Get(base + "/api/payments.csv?payment_id=" + url.QueryEscape(pid))
	if err != nil {
		t.Fatal(err)
	}
	rows, err := csv.NewReader(resp.Body).ReadAll()
	resp.Body.Close()
	if err != nil || resp.Header.Get("Content-Type") != "text/csv; charset=utf-8" || len(rows) != 2 {
		t.Fatalf("payments.csv: %v %q %v", err, resp.Header.Get("Content-Type"), rows)
	}
	row := map[string]string{}
	for i, name := range rows[0] {
		row[name] = rows[1][i]
	}
	if row["payment_id"] != pid || row["amount"] != "1000" || row["currency"] != "CNY" || row["amount_major"] != "10.00" {
		t.Fatalf("payments.csv row: %v", row)
	}
}

// getJSONReq does req and decodes its JSON answer into v.
func getJSONReq(t *testing.T, req *http.Request, v any) int {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	return resp.StatusCode
}

// browser starts a headless Chromium for the test.
// browserPage is one Chromium tab of a test: steps, the text of an
// element, and full-page screenshots into a folder.
type browserPage struct {
	t     *testing.T
	ctx   context.Context
	shots string
}

func newBrowserPage(t *testing.T, chromium, shots string) *browserPage {
	return &browserPage{t: t, ctx: browser(t, chromium), shots: shots}
}

func (p *browserPage) do(steps ...chromedp.Action[chromedp.Void]) {
	p.t.Helper()
	if err := chromedp.Do(p.ctx, steps...); err != nil {
		p.t.Fatalf("browser: %v", err)
	}
}

func (p *browserPage) text(sel string) string {
	p.t.Helper()
	s, err := chromedp.Run(p.ctx, chromedp.Text(chromedp.CSS(sel)))
	if err != nil {
		p.t.Fatalf("browser: text of %s: %v", sel, err)
	}
	return s
}

func (p *browserPage) shot(name string) {
	p.t.Helper()
	png, err := chromedp.Run(p.ctx, chromedp.FullScreenshot(100))
	if err == nil {
		err = os.WriteFile(filepath.Join(p.shots, name), png, 0o644)
	}
	if err != nil {
		p.t.Fatalf("screenshot %s: %v", name, err)
	}
}

func browser(t *testing.T, chromium string) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelCtx := chromedp.NewContext(actx)
	ctx, cancelTimeout := context.WithTimeout(ctx, 90*time.Second)
	t.Cleanup(func() { cancelTimeout(); cancelCtx(); cancelAlloc() })
	return ctx
}
