package sandbox_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/qr"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/sandbox"
	"github.com/caddy-ecommpay/caddy-ecommpay/signature"
)

// canonicalPairs is the canonical string of Payment Page parameters.
func canonicalPairs(pairs [][2]string) string { return sandbox.ModuleSigner().CanonicalPairs(pairs) }

const (
	projectID = "210"
	secret    = "sandbox-test-secret"
)

// shop is a callback receiver that verifies every callback as ecommpay's
// SDKs do and answers 403 to a bad signature.
type shop struct {
	mu   sync.Mutex
	got  []map[string]any
	srv  *httptest.Server
	fail bool // answer 500, so the sandbox retries
}

func newShop(t *testing.T) *shop {
	s := &shop{}
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		canonical, sig, err := signature.CallbackCanonical(body)
		if err != nil || sig == "" || signature.Sign(canonical, secret) != sig {
			http.Error(w, `{"error":"signature does not verify"}`, http.StatusForbidden)
			return
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.fail {
			http.Error(w, "down", http.StatusInternalServerError)
			return
		}
		var v map[string]any
		json.Unmarshal(body, &v)
		s.got = append(s.got, v)
		io.WriteString(w, "OK")
	}))
	t.Cleanup(s.srv.Close)
	return s
}

// statuses lists "opType/opStatus/payStatus" of the callbacks for a payment.
func (s *shop) statuses(paymentID string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, v := range s.got {
		pay, _ := v["payment"].(map[string]any)
		op, _ := v["operation"].(map[string]any)
		if pay["id"] == paymentID {
			out = append(out, fmt.Sprintf("%v/%v/%v", op["type"], op["status"], pay["status"]))
		}
	}
	return out
}

func (s *shop) find(paymentID, opStatus string) map[string]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, v := range s.got {
		pay, _ := v["payment"].(map[string]any)
		op, _ := v["operation"].(map[string]any)
		if pay["id"] == paymentID && op["status"] == opStatus {
			return v
		}
	}
	return nil
}

func newSandbox(t *testing.T, callbackURL string, knobs sandbox.Knobs) (*sandbox.Sandbox, *httptest.Server) {
	t.Helper()
	sb, err := sandbox.New(sandbox.Config{
		Projects:     []sandbox.Project{{ID: projectID, Secret: secret}, {ID: "211", Secret: "other-project-secret"}},
		CallbackURLs: []string{callbackURL},
		QRPNG:        func(p string) ([]byte, error) { return qr.Render(p, qr.Options{}) },
		Knobs:        knobs,
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(sb)
	t.Cleanup(func() { sb.Close(); srv.Close() })
	return sb, srv
}

// pageURL signs Payment Page parameters as the payment_page mode does.
func pageURL(base string, params [][2]string, key string) string {
	q := url.Values{}
	for _, p := range params {
		q.Set(p[0], p[1])
	}
	q.Set("signature", signature.Sign(canonicalPairs(sortedPairs(q)), key))
	return base + "/payment?" + q.Encode()
}

func sortedPairs(q url.Values) [][2]string {
	var out [][2]string
	for _, k := range sortedKeys(q) {
		if k != "signature" && k != "frame_mode" {
			out = append(out, [2]string{k, q.Get(k)})
		}
	}
	return out
}

func sortedKeys(q url.Values) []string {
	keys := make([]string, 0, len(q))
	for k := range q {
		keys = append(keys, k)
	}
	for i := range keys {
		for j := i + 1; j < len(keys); j++ {
			if keys[j] < keys[i] {
				keys[i], keys[j] = keys[j], keys[i]
			}
		}
	}
	return keys
}

// gate posts a Gate request signed as the gate mode signs it.
func gate(t *testing.T, base, path string, body map[string]any, key string) (int, map[string]any) {
	t.Helper()
	raw, _ := json.Marshal(body)
	canonical, err := signature.Canonical(raw)
	if err != nil {
		t.Fatal(err)
	}
	body["general"].(map[string]any)["signature"] = signature.Sign(canonical, key)
	raw, _ = json.Marshal(body)
	resp, err := http.Post(base+path, "application/json", bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var ans map[string]any
	json.NewDecoder(resp.Body).Decode(&ans)
	return resp.StatusCode, ans
}

func sale(paymentID string, amount int64, currency string) map[string]any {
	return map[string]any{
		"general":  map[string]any{"project_id": 210, "payment_id": paymentID},
		"payment":  map[string]any{"amount": amount, "currency": currency},
		"customer": map[string]any{"id": "c1", "ip_address": "198.51.100.7"},
	}
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func equal(a, b []string) bool { return strings.Join(a, ",") == strings.Join(b, ",") }

func TestGateSaleFollowsTestProjectRules(t *testing.T) {
	sh := newShop(t)
	_, srv := newSandbox(t, sh.srv.URL, sandbox.Knobs{PayAfter: 50 * time.Millisecond})
	cases := []struct {
		method, currency string
		amount           int64
		intermediate     string
		final            string
	}{
		{"wechat", "CNY", 1000, "sale/awaiting customer/awaiting customer", "sale/success/success"},
		{"alipay", "CNY", 1000, "sale/awaiting redirect result/awaiting redirect result", "sale/success/success"},
		{"mbway", "EUR", 1000, "sale/awaiting redirect result/awaiting redirect result", "sale/success/success"},
		{"wechat", "CNY", 40000, "sale/awaiting customer/awaiting customer", "sale/decline/decline"},
		{"alipay", "USD", 40400, "sale/awaiting redirect result/awaiting redirect result", "sale/decline/decline"},
	}
	for _, c := range cases {
		pid := fmt.Sprintf("%s-%d", c.method, c.amount)
		status, ans := gate(t, srv.URL, "/v2/payment/wallet/"+c.method+"/sale", sale(pid, c.amount, c.currency), secret)
		if status != http.StatusOK || ans["status"] != "success" || ans["payment_id"] != pid || ans["request_id"] == "" {
			t.Fatalf("%s sale: %d %v", pid, status, ans)
		}
		want := []string{c.intermediate, c.final}
		eventually(t, pid+" callbacks", func() bool { return len(sh.statuses(pid)) == 2 })
		if got := sh.statuses(pid); !equal(got, want) {
			t.Errorf("%s: callbacks %v, want %v", pid, got, want)
		}
	}
	// WeChat carries its QR payload in display_data; the redirect methods
	// their redirect_data.
	wx := sh.find("wechat-1000", "awaiting customer")
	dd, _ := wx["display_data"].([]any)
	if len(dd) != 2 || !strings.HasPrefix(dd[0].(map[string]any)["data"].(string), "weixin://") {
		t.Errorf("wechat display_data: %v", wx["display_data"])
	}
	ali := sh.find("alipay-1000", "awaiting redirect result")
	if rd, _ := ali["redirect_data"].(map[string]any); rd["method"] != "GET" || !strings.Contains(rd["url"].(string), "/sandbox/provider/alipay/alipay-1000") {
		t.Errorf("alipay redirect_data: %v", ali["redirect_data"])
	}

	// ecommpay's errors: a wrong signature, a currency the method lacks, a
	// payment ID used twice.
	if status, ans := gate(t, srv.URL, "/v2/payment/wallet/wechat/sale", sale("x1", 100, "CNY"), "not-the-secret"); status != http.StatusUnauthorized || ans["status"] != "error" {
		t.Errorf("wrong signature: %d %v", status, ans)
	}
	if status, ans := gate(t, srv.URL, "/v2/payment/wallet/mbway/sale", sale("x2", 100, "USD"), secret); status != http.StatusBadRequest || ans["code"] != "1205" {
		t.Errorf("MBWay in USD: %d %v", status, ans)
	}
	if status, ans := gate(t, srv.URL, "/v2/payment/wallet/wechat/sale", sale("wechat-1000", 100, "CNY"), secret); status != http.StatusBadRequest || ans["code"] != "1206" {
		t.Errorf("payment ID used twice: %d %v", status, ans)
	}
}

func TestRefundOf50000IsDeclined(t *testing.T) {
	sh := newShop(t)
	_, srv := newSandbox(t, sh.srv.URL, sandbox.Knobs{PayAfter: 20 * time.Millisecond})
	gate(t, srv.URL, "/v2/payment/wallet/alipay/sale", sale("r1", 80000, "CNY"), secret)
	eventually(t, "paid", func() bool { return sh.find("r1", "success") != nil })
	refund := func(amount int64) (int, map[string]any) {
		return gate(t, srv.URL, "/v2/payment/wallet/alipay/refund", map[string]any{
			"general": map[string]any{"project_id": 210, "payment_id": "r1"},
			"payment": map[string]any{"amount": amount, "currency": "CNY"},
		}, secret)
	}
	if status, ans := refund(50000); status != http.StatusOK || ans["status"] != "success" {
		t.Fatalf("refund accepted: %d %v", status, ans)
	}
	eventually(t, "refund decline", func() bool { return len(sh.statuses("r1")) == 3 })
	if got := sh.statuses("r1")[2]; got != "refund/decline/success" {
		t.Errorf("refund of 50000: %s, want refund/decline/success", got)
	}
	refund(30000)
	eventually(t, "refund success", func() bool { return len(sh.statuses("r1")) == 4 })
	if got := sh.statuses("r1")[3]; got != "refund/success/partially refunded" {
		t.Errorf("refund of 30000: %s", got)
	}
}

func TestDroppedFinalCallbackShowsInStatus(t *testing.T) {
	sh := newShop(t)
	sb, srv := newSandbox(t, sh.srv.URL, sandbox.Knobs{PayAfter: 20 * time.Millisecond})
	sb.DropFinalCallback("d1")
	gate(t, srv.URL, "/v2/payment/wallet/wechat/sale", sale("d1", 1000, "CNY"), secret)
	eventually(t, "final status", func() bool { return sb.Payment("d1").Status == "success" })
	time.Sleep(100 * time.Millisecond)
	if got := sh.statuses("d1"); !equal(got, []string{"sale/awaiting customer/awaiting customer"}) {
		t.Errorf("the shop got %v, want only the intermediate callback", got)
	}
	status, ans := gate(t, srv.URL, "/v2/payment/status", map[string]any{"general": map[string]any{"project_id": 210, "payment_id": "d1"}}, secret)
	pay, _ := ans["payment"].(map[string]any)
	ops, _ := ans["operations"].([]any)
	if status != http.StatusOK || pay["status"] != "success" || len(ops) != 1 || ops[0].(map[string]any)["status"] != "success" {
		t.Errorf("status answer: %d %v", status, ans)
	}
	status, ans = gate(t, srv.URL, "/v2/payment/status", map[string]any{"general": map[string]any{"project_id": 210, "payment_id": "never"}}, secret)
	if status != http.StatusNotFound || ans["code"] != "3061" {
		t.Errorf("unknown payment: %d %v", status, ans)
	}
}

func TestDeliveryRetriesUntil200(t *testing.T) {
	sh := newShop(t)
	sh.fail = true
	sb, srv := newSandbox(t, sh.srv.URL, sandbox.Knobs{PayAfter: 10 * time.Millisecond, RetryScale: 1000})
	gate(t, srv.URL, "/v2/payment/wallet/wechat/sale", sale("retry1", 1000, "CNY"), secret)
	eventually(t, "a few failed attempts", func() bool {
		ds := sb.Deliveries(nil)
		return len(ds) == 2 && len(ds[0].Attempts) >= 3
	})
	sh.mu.Lock()
	sh.fail = false
	sh.mu.Unlock()
	eventually(t, "settled", func() bool { ok, n, _ := sb.Settled(); return ok && n == 2 })
	for _, d := range sb.Deliveries(nil) {
		if !d.Done || d.Attempts[len(d.Attempts)-1].Status != 200 {
			t.Errorf("delivery %s: done %v, attempts %d", d.CB.Name, d.Done, len(d.Attempts))
		}
	}
	// The log page shows each delivery and its answers.
	resp, err := http.Get(srv.URL + "/sandbox/")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"retry1", "sale final", "delivered", ">500<", ">200<"} {
		if !strings.Contains(string(page), want) {
			t.Errorf("delivery log lacks %q", want)
		}
	}
}

func TestWrongPaymentPageSignatureNamesTheDifference(t *testing.T) {
	sh := newShop(t)
	sb, srv := newSandbox(t, sh.srv.URL, sandbox.Knobs{})
	params := [][2]string{{"project_id", projectID}, {"payment_id", "pp1"}, {"payment_amount", "1000"},
		{"payment_currency", "CNY"}, {"customer_id", "c1"}}
	get := func(u string) (int, string) {
		t.Helper()
		resp, err := http.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}

	// A parameter added after signing.
	u := pageURL(srv.URL, params, secret) + "&payment_description=Order+1"
	status, page := get(u)
	if status != http.StatusUnauthorized || !strings.Contains(page, "Wrong signature") {
		t.Fatalf("added parameter: %d", status)
	}
	for _, want := range []string{
		"The parameter payment_description is in the URL but not in the string that was signed",
		`in parameter <b id="diff-param">payment_description</b>`,
		"customer_id:c1;payment_amount:1000;payment_currency:CNY;payment_description:Order 1;payment_id:pp1;project_id:210",
	} {
		if !strings.Contains(page, want) {
			t.Errorf("added parameter: page lacks %q:\n%s", want, page)
		}
	}

	// Values signed URL-encoded.
	q := url.Values{}
	for _, p := range params {
		q.Set(p[0], p[1])
	}
	q.Set("payment_description", "Order 1")
	var encoded [][2]string
	for _, p := range sortedPairs(q) {
		encoded = append(encoded, [2]string{p[0], url.QueryEscape(p[1])})
	}
	q.Set("signature", signature.Sign(canonicalPairs(encoded), secret))
	if _, page = get(srv.URL + "/payment?" + q.Encode()); !strings.Contains(page, "signed URL-encoded") ||
		!strings.Contains(page, `<b id="diff-param">payment_description</b>`) {
		t.Errorf("URL-encoded values: page does not say so:\n%s", page)
	}

	// The secret with a trailing newline; another project's secret.
	if _, page = get(pageURL(srv.URL, params, secret+"\n")); !strings.Contains(page, `stray \n`) {
		t.Errorf("secret with a newline: not named")
	}
	if _, page = get(pageURL(srv.URL, params, "other-project-secret")); !strings.Contains(page, "secret of project 211") {
		t.Errorf("another project's secret: not named")
	}

	// The developer pastes what their code signed.
	form := url.Values{"query": {strings.TrimPrefix(pageURL(srv.URL, params, "nope"), srv.URL+"/payment?")},
		"signed": {"customer_id:c1;payment_amount:100;payment_currency:CNY;payment_id:pp1;project_id:210"}}
	resp, err := http.PostForm(srv.URL+"/sandbox/compare", form)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(b), `character 33, in parameter <b id="diff-param">payment_amount</b>`) {
		t.Errorf("compare: the difference is not named:\n%s", b)
	}
	if n := len(sh.statuses("pp1")); n != 0 || sb.Payment("pp1").ID != "" {
		t.Errorf("a refused page created a payment or sent %d callbacks", n)
	}
}

// client follows redirects within the sandbox only, and reports where a
// redirect left it.
func client() *http.Client {
	jar, _ := cookiejar.New(nil)
	return &http.Client{Jar: jar}
}

func TestPaymentPageCustomerPaysWithWeChat(t *testing.T) {
	sh := newShop(t)
	shopPages := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "shop page "+r.URL.Path) }))
	defer shopPages.Close()
	sb, srv := newSandbox(t, sh.srv.URL, sandbox.Knobs{})
	c := client()
	params := [][2]string{{"project_id", projectID}, {"payment_id", "wx-page"}, {"payment_amount", "1000"},
		{"payment_currency", "CNY"}, {"customer_id", "c1"}, {"force_payment_method", "wechat"},
		{"merchant_success_url", shopPages.URL + "/success"}, {"merchant_fail_url", shopPages.URL + "/fail"}}
	resp, err := c.Get(pageURL(srv.URL, params, secret))
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(page), "10.00 CNY") || !strings.Contains(string(page), `id="pay"`) {
		t.Fatalf("customer page: %d %s", resp.StatusCode, page)
	}
	if len(sh.statuses("wx-page")) != 0 || sb.Payment("wx-page").Status != "" {
		t.Fatal("opening the page sent a callback or registered the payment")
	}
	resp, err = c.PostForm(srv.URL+"/sandbox/pay/wx-page", url.Values{"action": {"pay"}})
	if err != nil {
		t.Fatal(err)
	}
	page, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	p := sb.Payment("wx-page")
	if !p.Pending || p.QR == "" || !strings.Contains(string(page), p.QR) || !strings.Contains(string(page), `id="qr"`) {
		t.Fatalf("after pay: pending %v, QR %q, page:\n%s", p.Pending, p.QR, page)
	}
	png, err := c.Get(srv.URL + "/sandbox/qr/wx-page")
	if err != nil || png.Header.Get("Content-Type") != "image/png" {
		t.Fatalf("QR image: %v %v", err, png.Header)
	}
	png.Body.Close()
	eventually(t, "intermediate", func() bool { return len(sh.statuses("wx-page")) == 1 })
	resp, err = c.PostForm(srv.URL+"/sandbox/pay/wx-page", url.Values{"action": {"paid"}})
	if err != nil {
		t.Fatal(err)
	}
	page, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(page) != "shop page /success" {
		t.Errorf("after paying the customer is on %q, want the shop's success page", page)
	}
	eventually(t, "final", func() bool { return len(sh.statuses("wx-page")) == 2 })
	if got := sh.statuses("wx-page"); got[1] != "sale/success/success" {
		t.Errorf("callbacks %v", got)
	}
	// Paying twice sends nothing more.
	c.PostForm(srv.URL+"/sandbox/pay/wx-page", url.Values{"action": {"paid"}})
	time.Sleep(50 * time.Millisecond)
	if n := len(sh.statuses("wx-page")); n != 2 {
		t.Errorf("%d callbacks after a second click", n)
	}
}

func TestPaymentPageDeclineAndLeave(t *testing.T) {
	sh := newShop(t)
	sb, srv := newSandbox(t, sh.srv.URL, sandbox.Knobs{})
	c := client()
	params := [][2]string{{"project_id", projectID}, {"payment_id", "dec1"}, {"payment_amount", "1000"},
		{"payment_currency", "EUR"}, {"customer_id", "c1"}}
	c.Get(pageURL(srv.URL, params, secret))
	c.PostForm(srv.URL+"/sandbox/pay/dec1", url.Values{"action": {"decline"}, "method": {"card"}})
	eventually(t, "decline", func() bool { return len(sh.statuses("dec1")) == 1 })
	if got := sh.statuses("dec1"); got[0] != "sale/decline/decline" {
		t.Errorf("decline: %v", got)
	}
	params[1][1] = "leave1"
	c.Get(pageURL(srv.URL, params, secret))
	c.PostForm(srv.URL+"/sandbox/pay/leave1", url.Values{"action": {"leave"}})
	time.Sleep(50 * time.Millisecond)
	if n := len(sh.statuses("leave1")); n != 0 || sb.Payment("leave1").Status != "" {
		t.Errorf("leaving sent %d callbacks", n)
	}
	status, _ := gate(t, srv.URL, "/v2/payment/status", map[string]any{"general": map[string]any{"project_id": 210, "payment_id": "leave1"}}, secret)
	if status != http.StatusNotFound {
		t.Errorf("status of a page left unpaid: %d, want 404", status)
	}
}

func TestMBWayDeclinesAfterItsLimit(t *testing.T) {
	sh := newShop(t)
	_, srv := newSandbox(t, sh.srv.URL, sandbox.Knobs{MBWayLimit: 100 * time.Millisecond})
	gate(t, srv.URL, "/v2/payment/wallet/mbway/sale", sale("mb1", 1000, "EUR"), secret)
	eventually(t, "expiry", func() bool { return len(sh.statuses("mb1")) == 2 })
	final := sh.find("mb1", "decline")
	if final == nil || final["operation"].(map[string]any)["code"] != "20602" {
		t.Errorf("MBWay after its limit: %v", sh.statuses("mb1"))
	}
}

func TestCrossOriginFormsAreRefused(t *testing.T) {
	sh := newShop(t)
	sb, srv := newSandbox(t, sh.srv.URL, sandbox.Knobs{})
	gate(t, srv.URL, "/v2/payment/wallet/wechat/sale", sale("csrf1", 1000, "CNY"), secret)
	req, _ := http.NewRequest(http.MethodPost, srv.URL+"/sandbox/pay/csrf1", strings.NewReader("action=paid"))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Sec-Fetch-Site", "cross-site")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden || !sb.Payment("csrf1").Pending {
		t.Errorf("a cross-site form: %d, pending %v", resp.StatusCode, sb.Payment("csrf1").Pending)
	}
}

func TestTriggerScenarios(t *testing.T) {
	sh := newShop(t)
	want := map[string][]string{
		"wechat.success": {"sale/awaiting customer/awaiting customer", "sale/success/success"},
		"wechat.decline": {"sale/awaiting customer/awaiting customer", "sale/decline/decline"},
		"alipay.success": {"sale/awaiting redirect result/awaiting redirect result", "sale/success/success"},
		"mbway.expired":  {"sale/awaiting redirect result/awaiting redirect result", "sale/decline/decline"},
		"refund.success": {"sale/success/success", "refund/success/refunded"},
		"refund.decline": {"sale/success/success", "refund/decline/success"},
	}
	if len(sandbox.Scenarios()) != len(want) {
		t.Fatalf("%d scenarios, want %d", len(sandbox.Scenarios()), len(want))
	}
	for _, sc := range sandbox.Scenarios() {
		pid := "trig-" + sc.Name
		res, err := sandbox.Trigger(context.Background(), http.DefaultClient, sandbox.ModuleSigner(), secret, sh.srv.URL, sc,
			sandbox.Params{ProjectID: projectID, PaymentID: pid}, nil)
		if err != nil || len(res) != 2 {
			t.Fatalf("%s: %v", sc.Name, err)
		}
		if got := sh.statuses(pid); !equal(got, want[sc.Name]) {
			t.Errorf("%s: %v, want %v", sc.Name, got, want[sc.Name])
		}
	}
	_, err := sandbox.Trigger(context.Background(), http.DefaultClient, sandbox.ModuleSigner(), "wrong", sh.srv.URL,
		sandbox.Scenarios()[0], sandbox.Params{ProjectID: projectID}, nil)
	if err == nil || !strings.Contains(err.Error(), "403") {
		t.Errorf("wrong secret: %v, want the route's 403", err)
	}
}

func TestPaymentPageChoosesAlipayThroughItsRedirectStep(t *testing.T) {
	sh := newShop(t)
	sb, srv := newSandbox(t, sh.srv.URL, sandbox.Knobs{})
	c := client()
	params := [][2]string{{"project_id", projectID}, {"payment_id", "ali-page"}, {"payment_amount", "40000"},
		{"payment_currency", "USD"}, {"customer_id", "c1"}}
	resp, err := c.Get(pageURL(srv.URL, params, secret))
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	// USD: card, WeChat and Alipay are offered, MBWay (EUR only) is not.
	for _, m := range []string{`value="card"`, `value="wechat"`, `value="alipay"`} {
		if !strings.Contains(string(page), m) {
			t.Errorf("the method choice lacks %s", m)
		}
	}
	if strings.Contains(string(page), `value="mbway"`) {
		t.Error("MBWay is offered for USD")
	}
	resp, err = c.PostForm(srv.URL+"/sandbox/pay/ali-page", url.Values{"action": {"pay"}, "method": {"alipay"}})
	if err != nil {
		t.Fatal(err)
	}
	page, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.HasPrefix(resp.Request.URL.Path, "/sandbox/provider/alipay/ali-page") || !strings.Contains(string(page), "Alipay: log in and pay") {
		t.Fatalf("after pay the customer is on %s:\n%s", resp.Request.URL, page)
	}
	eventually(t, "intermediate", func() bool { return len(sh.statuses("ali-page")) == 1 })
	rd, _ := sh.find("ali-page", "awaiting redirect result")["redirect_data"].(map[string]any)
	if rd["url"] != sb.Payment("ali-page").Redirect || !strings.HasSuffix(resp.Request.URL.String(), strings.TrimPrefix(rd["url"].(string), srv.URL)) {
		t.Errorf("redirect_data %v, the customer went to %s", rd, resp.Request.URL)
	}
	c.PostForm(srv.URL+"/sandbox/pay/ali-page", url.Values{"action": {"paid"}})
	eventually(t, "final", func() bool { return len(sh.statuses("ali-page")) == 2 })
	// 40000 is declined by the test project even when paid.
	if got := sh.statuses("ali-page")[1]; got != "sale/decline/decline" {
		t.Errorf("paid 40000: %s", got)
	}
}

func TestLogPageKnobs(t *testing.T) {
	sh := newShop(t)
	sb, srv := newSandbox(t, sh.srv.URL, sandbox.Knobs{LateBy: 300 * time.Millisecond})
	for _, pid := range []string{"late1", "drop1", "twice1"} {
		gate(t, srv.URL, "/v2/payment/wallet/wechat/sale", sale(pid, 1000, "CNY"), secret)
	}
	eventually(t, "intermediates", func() bool { return len(sh.statuses("twice1")) == 1 })
	post := func(path string, form url.Values) {
		t.Helper()
		resp, err := http.PostForm(srv.URL+path, form)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	start := time.Now()
	post("/sandbox/pay/late1", url.Values{"action": {"paid-late"}, "from": {"log"}})
	post("/sandbox/pay/drop1", url.Values{"action": {"paid-drop"}, "from": {"log"}})
	post("/sandbox/pay/twice1", url.Values{"action": {"paid"}, "from": {"log"}})
	eventually(t, "the late final", func() bool { return len(sh.statuses("late1")) == 2 })
	if waited := time.Since(start); waited < 300*time.Millisecond {
		t.Errorf("the late callback came after %s", waited)
	}
	if got := sh.statuses("drop1"); len(got) != 1 || sb.Payment("drop1").Status != "success" {
		t.Errorf("paid, final dropped: the shop got %v, status %s", got, sb.Payment("drop1").Status)
	}
	// Send the final callback of twice1 again.
	eventually(t, "twice1 final", func() bool { return len(sh.statuses("twice1")) == 2 })
	var seq int
	for _, c := range sb.Callbacks() {
		if c.PaymentID == "twice1" && c.Name == "sale final" {
			seq = c.Seq
		}
	}
	post(fmt.Sprintf("/sandbox/resend/%d", seq), nil)
	eventually(t, "the resent callback", func() bool { return len(sh.statuses("twice1")) == 3 })
	if got := sh.statuses("twice1"); got[1] != got[2] {
		t.Errorf("resent: %v", got)
	}
}
