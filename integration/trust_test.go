package integration

// Trust boundaries against the built Caddy: a page that rebinds its name to
// loopback, a customer who reads a Payment Page URL, and a status answer
// about the wrong payment. Part of the hostile suite:
//
//	go test -race -run 'Hostile' ./integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// docBlock is the first fenced code block of the document file (relative
// to the module root) after the line containing marker, without the
// indentation of a list item.
func docBlock(t *testing.T, file, marker string) string {
	t.Helper()
	readme, err := os.ReadFile("../" + file)
	if err != nil {
		t.Fatal(err)
	}
	_, after, ok := strings.Cut(string(readme), marker)
	if !ok {
		t.Fatalf("%s has no %q", file, marker)
	}
	_, after, ok = strings.Cut(after, "```caddyfile\n")
	block, _, ok2 := strings.Cut(after, "```")
	if !ok || !ok2 {
		t.Fatalf("%s has no caddyfile block after %q", file, marker)
	}
	var out []string
	for _, line := range strings.Split(block, "\n") {
		out = append(out, strings.TrimPrefix(line, "  "))
	}
	return strings.TrimSpace(strings.Join(out, "\n"))
}

// hostRequest sends a request to base with the Host header set to host.
func hostRequest(method, base, path, host string, body []byte, hdr map[string]string) answer {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, base+path, rd)
	if err != nil {
		return answer{err: err}
	}
	req.Host = host
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	start := time.Now()
	resp, err := noRedirectClient.Do(req)
	if err != nil {
		return answer{err: err}
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return answer{status: resp.StatusCode, body: string(b), took: time.Since(start)}
}

// A bare-port internal site copied from docs/security.md, reached under a name
// a page rebound to 127.0.0.1 (the browser's Host is that name): the
// console shows nothing, replay reaches nobody, nothing is signed. Under
// its own names (127.0.0.1, localhost, a name in hosts) it works.
func TestHostileRebinding(t *testing.T) {
	var port int
	site := docBlock(t, "docs/security.md", "**The Host must name this machine**")
	s := newStack(t, func(c *caddyConfig) {
		port = freePort(t)
		c.ExtraPorts = []int{port}
		site = strings.Replace(site, ":8081 {", fmt.Sprintf(":%d {", port), 1)
		c.ExtraSites = strings.ReplaceAll(site, "https://api.ecommpay.com", fmt.Sprintf("http://127.0.0.1:%d", c.Fake))
	})
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	const email = "customer-7@shop.example"
	pid := newPaymentID("rebind")
	body := genuineCallback(s.secret, pid, func(b map[string]any) {
		b["customer"] = map[string]any{"id": "c1", "email": email}
	})
	if a := send(s.caddy.callbackURL(), body, nil); a.status != http.StatusOK {
		t.Fatalf("genuine callback: %s", a)
	}
	ev := waitShopEvent(t, s.shop, pid, "sale", "success", settleTimeout)
	key := ev.ForwardedHeaders["X-Ecommpay-Event-Key"]
	eventPath := "/ecommpay/api/events/" + key
	pagePath := func(id string) string {
		return "/payment-page?payment_id=" + id + "&payment_amount=1000&payment_currency=EUR&customer_id=c1"
	}
	const gatePath = "/v2/payment/wallet/alipay/sale"
	gateBody := func(id string) []byte {
		return []byte(`{"general":{"payment_id":"` + id + `"},"customer":{"id":"c1","ip_address":"192.0.2.10"},"payment":{"amount":1000,"currency":"EUR"}}`)
	}
	// The journal may take a moment to make the event readable.
	eventually(t, 5*time.Second, "the event in the console", func() (bool, string) {
		a := hostRequest("GET", base, eventPath, "127.0.0.1", nil, nil)
		return a.status == http.StatusOK, a.String()
	})

	for _, host := range []string{fmt.Sprintf("evil.example:%d", port), "evil.example", fmt.Sprintf("127.0.0.1.evil.example:%d", port)} {
		origin := map[string]string{"Origin": "http://" + host, "Sec-Fetch-Site": "same-origin"}
		if a := hostRequest("GET", base, eventPath, host, nil, origin); a.status != http.StatusMisdirectedRequest || strings.Contains(a.body, email) {
			t.Errorf("Host %s, the event: %s, want 421 without the customer's e-mail", host, a)
		}
		if a := hostRequest("GET", base, "/ecommpay/payments", host, nil, origin); a.status != http.StatusMisdirectedRequest {
			t.Errorf("Host %s, the payments page: %s, want 421", host, a)
		}
		if a := hostRequest("POST", base, eventPath+"/replay", host, []byte("{}"), origin); a.status != http.StatusMisdirectedRequest {
			t.Errorf("Host %s, replay: %s, want 421", host, a)
		}
		foreign := newPaymentID("rebind-x")
		if a := hostRequest("GET", base, pagePath(foreign), host, nil, origin); a.status != http.StatusMisdirectedRequest || strings.Contains(a.body, "signature") {
			t.Errorf("Host %s, payment_page: %s, want 421 without a signature", host, a)
		}
		if a := hostRequest("POST", base, gatePath, host, gateBody(foreign), origin); a.status != http.StatusMisdirectedRequest {
			t.Errorf("Host %s, gate: %s, want 421", host, a)
		}
		for _, r := range s.fake.requestsTo(gatePath) {
			if strings.Contains(string(r.Body), foreign) {
				t.Errorf("Host %s: a Gate request reached ecommpay", host)
			}
		}
	}
	// Without rebinding, a page can still make the browser post a form to
	// 127.0.0.1 itself (an IP literal passes the Host check): a text/plain
	// form whose field spells a JSON refund. Its Origin gives it away.
	refundID := newPaymentID("csrf")
	form := []byte(`{"general":{"payment_id":"` + refundID + `"},"payment":{"amount":100000,"currency":"EUR"},"x":"="}`)
	for _, hdr := range []map[string]string{
		{"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site", "Content-Type": "text/plain"},
		{"Origin": "http://localhost:3000", "Sec-Fetch-Site": "same-site", "Content-Type": "text/plain"},
	} {
		if a := hostRequest("POST", base, "/v2/payment/wallet/wechat/refund", "127.0.0.1", form, hdr); a.status != http.StatusForbidden {
			t.Errorf("a form from %s to gate: %s, want 403", hdr["Origin"], a)
		}
		if a := hostRequest("GET", base, pagePath(refundID), "127.0.0.1", nil, hdr); a.status != http.StatusForbidden || strings.Contains(a.body, "signature") {
			t.Errorf("a page from %s to payment_page: %s, want 403", hdr["Origin"], a)
		}
	}
	for _, r := range s.fake.allRequests() {
		if strings.Contains(string(r.Body), refundID) {
			t.Errorf("a request from a web page reached ecommpay: %s %s", r.Path, r.Body)
		}
	}
	time.Sleep(500 * time.Millisecond) // room for a replay that should not come
	if e := waitShopEvent(t, s.shop, pid, "sale", "success", time.Second); e.Count != 1 || e.Replays != 0 {
		t.Errorf("the app got the event %d times, %d replays", e.Count, e.Replays)
	}
	if !s.caddy.logContains("rebinding") || !s.caddy.logContains(`"host":"evil.example`) {
		t.Error("no log line names the foreign Host")
	}

	for _, host := range []string{fmt.Sprintf("127.0.0.1:%d", port), fmt.Sprintf("localhost:%d", port), fmt.Sprintf("pay.internal:%d", port)} {
		if a := hostRequest("GET", base, eventPath, host, nil, nil); a.status != http.StatusOK || !strings.Contains(a.body, email) {
			t.Errorf("Host %s, the event: %s", host, a)
		}
		if a := hostRequest("GET", base, pagePath(newPaymentID("own")), host, nil, nil); a.status != http.StatusOK || !strings.Contains(a.body, `"signature"`) {
			t.Errorf("Host %s, payment_page: %s", host, a)
		}
		if a := hostRequest("POST", base, gatePath, host, gateBody(newPaymentID("own")), nil); a.status != http.StatusOK {
			t.Errorf("Host %s, gate: %s", host, a)
		}
	}
	// Replay from the console's own origin works; the same with another
	// port or scheme in Origin does not.
	own := fmt.Sprintf("127.0.0.1:%d", port)
	for origin, want := range map[string]int{
		"https://" + own: http.StatusForbidden, fmt.Sprintf("http://127.0.0.1:%d", port+1): http.StatusForbidden, "http://" + own: http.StatusOK,
	} {
		if a := hostRequest("POST", base, eventPath+"/replay", own, []byte("{}"), map[string]string{"Origin": origin}); a.status != want {
			t.Errorf("replay with Origin %s: %s, want %d", origin, a, want)
		}
	}
	eventually(t, 5*time.Second, "one replay at the shop", func() (bool, string) {
		e := waitShopEvent(t, s.shop, pid, "sale", "success", time.Second)
		return e.Replays == 1, fmt.Sprintf("%d replays", e.Replays)
	})
}

// A customer copies the parameters and signature of their Payment Page URL
// into a JSON body and posts it as a callback: it verifies with the shop's
// secret, and is refused as not a callback; `caddy ecommpay verify` agrees.
func TestHostilePaymentPageSignatureAsCallback(t *testing.T) {
	s := newStack(t, nil)
	pid := newPaymentID("pp-as-cb")
	a := hostRequest("GET", s.caddy.internalURL(), "/payment-page?payment_id="+pid+"&payment_amount=1&payment_currency=EUR&project_id=210", "127.0.0.1", nil, nil)
	var signed struct{ URL string }
	if err := json.Unmarshal([]byte(a.body), &signed); err != nil || a.status != http.StatusOK {
		t.Fatalf("payment_page: %s", a)
	}
	u, err := url.Parse(signed.URL)
	if err != nil {
		t.Fatal(err)
	}
	asStrings := map[string]any{}
	for k, v := range u.Query() {
		asStrings[k] = v[0]
	}
	asNumbers := map[string]any{}
	for k, v := range asStrings {
		asNumbers[k] = v
	}
	asNumbers["payment_amount"], asNumbers["project_id"] = 1, 210
	for name, params := range map[string]map[string]any{"strings": asStrings, "numbers": asNumbers} {
		body, _ := json.Marshal(params)
		if a := send(s.caddy.callbackURL(), body, nil); a.status != http.StatusForbidden || !strings.Contains(a.body, "not a callback") {
			t.Errorf("%s: posted as a callback: %s, want 403 not a callback", name, a)
		}
		cmd := exec.Command(caddyBin, "ecommpay", "verify")
		cmd.Env = append(os.Environ(), "ECOMMPAY_SECRET="+s.secret)
		cmd.Stdin = bytes.NewReader(body)
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), "invalid: not a callback") {
			t.Errorf("%s: caddy ecommpay verify: %v %s", name, err, out)
		}
	}
	time.Sleep(500 * time.Millisecond)
	if evs := s.shop.state(t).eventsFor(pid); len(evs) != 0 {
		t.Errorf("the shop got %d events for the Payment Page's payment", len(evs))
	}
	if m := scrape(t, s.caddy); m[fmt.Sprintf(`caddy_ecommpay_callbacks_total{project="%d",result="not_a_callback"}`, projectID)] != 2 {
		t.Errorf("callbacks_total: %v", m)
	}
}

// ecommpay's status endpoint (here a stand-in) says "success" about
// another payment than the one asked about: nobody gets it, and neither
// payment changes.
func TestHostileStatusAnswerAboutAnotherPayment(t *testing.T) {
	victim := newPaymentID("victim")
	asked := make(chan string, 64)
	status := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			General struct {
				PaymentID string `json:"payment_id"`
			} `json:"general"`
		}
		_ = json.NewDecoder(r.Body).Decode(&req)
		select {
		case asked <- req.General.PaymentID:
		default:
		}
		w.Header().Set("Content-Type", "application/json")
		if req.General.PaymentID == victim {
			w.WriteHeader(http.StatusNotFound)
			fmt.Fprint(w, `{"status":"error","code":"3061","message":"Payment not found"}`)
			return
		}
		fmt.Fprintf(w, `{"project_id":%d,"payment":{"id":%q,"type":"purchase","status":"success","method":"alipay","sum":{"amount":1000,"currency":"CNY"}},"operations":[{"id":1,"type":"sale","status":"success"}],"errors":[]}`,
			projectID, victim)
	}))
	t.Cleanup(status.Close)
	s := newStack(t, func(c *caddyConfig) {
		c.CallbackOptions = fmt.Sprintf("reconcile {\n\t\t\t\tafter 1s\n\t\t\t\tevery 1s\n\t\t\t\tgive_up 1m\n\t\t\t\tstatus_url %s/v2/payment/status\n\t\t\t}", status.URL)
	})
	pid := newPaymentID("asked")
	for _, id := range []string{pid, victim} {
		if out := s.shop.call(t, "/checkout", map[string]any{"payment_id": id, "amount": 1000, "currency": "CNY", "method": "alipay"}); out.Status != 200 {
			t.Fatalf("checkout %s: %d %v", id, out.Status, out.Answer)
		}
	}
	eventually(t, 30*time.Second, "a mismatch logged for "+pid, func() (bool, string) {
		return s.caddy.logContains("about another payment") && s.caddy.logContains(pid), ""
	})
	time.Sleep(time.Second)
	st := s.shop.state(t)
	for _, id := range []string{pid, victim} {
		if evs := st.eventsFor(id); len(evs) != 0 {
			t.Errorf("the shop got %d events for %s", len(evs), id)
		}
	}
	tl := consoleTimeline(t, s, pid)
	mismatches := 0
	for _, e := range tl.Events {
		if e.Kind == "status_request" && e.Result == "mismatch" {
			mismatches++
		}
	}
	if mismatches == 0 || tl.Payment.Final || tl.Payment.Status != "" {
		t.Errorf("timeline of %s: %d mismatches, payment %+v", pid, mismatches, tl.Payment)
	}
	if v := consoleTimeline(t, s, victim); v.Payment.Final || v.Payment.Status != "" {
		t.Errorf("the other payment changed: %+v", v.Payment)
	}
	if m := scrape(t, s.caddy); m[`caddy_ecommpay_reconcile_requests_total{outcome="mismatch"}`] < 1 || m[`caddy_ecommpay_reconcile_delivered_total{final="true"}`] != 0 {
		t.Errorf("metrics: %v", m)
	}
}
