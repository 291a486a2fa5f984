package ecommpay

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/journal"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/reconcile"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/reconcile/reconciletest"
	"github.com/caddy-ecommpay/caddy-ecommpay/signature"
	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

// The Host header is what a page that rebinds its own name to 127.0.0.1
// cannot change: it names the page's host.
func TestHostAllowed(t *testing.T) {
	h := &Handler{}
	var err error
	if h.hosts, err = parseHosts([]string{"pay.internal", "Console.Shop.Test"}); err != nil {
		t.Fatal(err)
	}
	for host, want := range map[string]bool{
		"127.0.0.1": true, "127.0.0.1:8081": true, "[::1]:8081": true, "[::1]": true, "10.1.2.3:80": true,
		"localhost": true, "localhost:8081": true, "LOCALHOST:8081": true, "localhost.": true,
		"pay.internal:8081": true, "PAY.internal": true, "console.shop.test": true,
		"": false, "[::1]evil.example": false, "[::1]:80x": true, "evil.example": false, "evil.example:8081": false, "localhost.evil.example": false,
		"127.0.0.1.nip.io:8081": false, "pay.internal.evil.example": false, "sub.localhost": false, "[evil]:80": false,
	} {
		if got := h.hostAllowed(host); got != want {
			t.Errorf("Host %q: allowed %v, want %v", host, got, want)
		}
	}
	for _, bad := range []string{"pay.internal:8081", "*.shop.test", "https://pay.internal", "", "café.internal", "{env.ECOMMPAY_TEST_UNSET_HOST}"} {
		if _, err := parseHosts([]string{bad}); err == nil {
			t.Errorf("hosts %q accepted", bad)
		}
	}
}

// Every mode that trusts its loopback peer refuses a foreign Host with 421,
// signs or shows nothing, and logs it; a name listed in hosts is served.
func TestSigningModesRefuseForeignHost(t *testing.T) {
	app := newTestApp(t)
	next := proxyTo(t, app.srv.URL)
	for _, mode := range []string{modePaymentPage, modeGate, modeConsole} {
		t.Run(mode, func(t *testing.T) {
			for _, listed := range []bool{false, true} {
				h := &Handler{Mode: mode, Store: "memory"}
				if mode != modeConsole {
					h.Projects = []Project{{ID: "210", Secrets: []string{testSecret}}}
				}
				if listed {
					h.Hosts = []string{"evil.example"}
				}
				logs := provision(t, h)
				if mode == modeConsole {
					h.provisionConsole()
				}
				var r *http.Request
				switch mode {
				case modePaymentPage:
					r = pageGet(pageQuery)
				case modeGate:
					r = localPost("/v2/payment/wallet/wechat/sale", []byte(gateSale))
				default:
					r = httptestRequest(http.MethodGet, "/api/payments")
				}
				r.Host = "evil.example:8081"
				before := len(app.received())
				w := serve(h, r, next)
				if listed {
					if w.Code != http.StatusOK {
						t.Errorf("a listed host: %d %s", w.Code, w.Body)
					}
					continue
				}
				if w.Code != http.StatusMisdirectedRequest || strings.Contains(w.Body.String(), "signature") ||
					strings.Contains(w.Body.String(), `"payments"`) || len(app.received()) != before {
					t.Errorf("foreign Host: %d %s, %d forwarded", w.Code, w.Body, len(app.received())-before)
				}
				if logs.FilterMessageSnippet("rebinding").FilterField(zap.String("host", "evil.example:8081")).Len() != 1 {
					t.Errorf("no log line names the foreign Host: %v", logs.All())
				}
			}
		})
	}
}

// Any web page can make a browser on the shop's machine post a form to
// 127.0.0.1, whose Host (an IP literal) passes: the signing modes refuse a
// request that a page of another origin made, and sign for the shop's
// server, which sends neither Origin nor Sec-Fetch-Site.
func TestSigningModesRefuseWebPages(t *testing.T) {
	app := newTestApp(t)
	next := proxyTo(t, app.srv.URL)
	gate := gateHandler(t, nil)
	page := paymentPageHandler(t, nil)
	refund := `{"general":{"payment_id":"ORDER-1"},"payment":{"amount":100000,"currency":"EUR"}}`
	for name, hdr := range map[string]map[string]string{
		"cross-site form":       {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site", "Content-Type": "text/plain"},
		"same-site page":        {"Origin": "http://127.0.0.1:3000", "Sec-Fetch-Site": "same-site"},
		"opaque origin":         {"Origin": "null"},
		"old browser, no fetch": {"Origin": "https://evil.example"},
	} {
		for mode, r := range map[string]*http.Request{
			"gate":         localPost("/v2/payment/wallet/wechat/refund", []byte(refund)),
			"payment_page": pageGet(pageQuery),
		} {
			for k, v := range hdr {
				r.Header.Set(k, v)
			}
			h := gate
			if mode == "payment_page" {
				h = page
			}
			before := len(app.received())
			if w := serve(h, r, next); w.Code != http.StatusForbidden || strings.Contains(w.Body.String(), "signature") || len(app.received()) != before {
				t.Errorf("%s to %s: %d %s", name, mode, w.Code, w.Body)
			}
		}
	}
	// Typed into the address bar, or from the internal site's own page.
	for name, hdr := range map[string]map[string]string{
		"address bar":      {"Sec-Fetch-Site": "none"},
		"same-origin page": {"Sec-Fetch-Site": "same-origin", "Origin": "http://127.0.0.1"},
	} {
		r := pageGet(pageQuery)
		for k, v := range hdr {
			r.Header.Set(k, v)
		}
		if w := serve(page, r, nil); w.Code != http.StatusOK {
			t.Errorf("%s: %d %s", name, w.Code, w.Body)
		}
	}
}

// A client on a Unix socket, which no page can reach, may send any Host.
func TestUnixSocketClientsSkipTheHostCheck(t *testing.T) {
	page := paymentPageHandler(t, nil)
	r := pageGet(pageQuery)
	r.RemoteAddr, r.Host = "@", "%2Frun%2Fcaddy.sock"
	r = r.WithContext(context.WithValue(r.Context(), http.LocalAddrContextKey, &net.UnixAddr{Name: "/run/caddy.sock", Net: "unix"}))
	if w := serve(page, r, nil); w.Code != http.StatusOK {
		t.Errorf("over a Unix socket: %d %s", w.Code, w.Body)
	}
}

// A Payment Page URL's parameters and signature, posted as a callback,
// verify with the shop's secret; they are refused as not a callback, and
// neither reach the app nor enter the journal as verified.
func TestPaymentPageSignatureIsNotACallback(t *testing.T) {
	page := paymentPageHandler(t, nil)
	w := serve(page, pageGet("payment_id=X&payment_amount=1&payment_currency=EUR&project_id=210"), nil)
	var answer struct{ URL string }
	if err := json.Unmarshal(w.Body.Bytes(), &answer); err != nil || answer.URL == "" {
		t.Fatalf("payment_page: %d %s", w.Code, w.Body)
	}
	u, _ := url.Parse(answer.URL)
	params := map[string]any{}
	for k, v := range u.Query() {
		params[k] = v[0]
	}
	params["payment_amount"] = 1
	params["project_id"] = 210
	forged, _ := json.Marshal(params)
	if !verifies(forged, testSecret) {
		t.Fatalf("the premise: a Payment Page signature verifies as a callback's: %s", forged)
	}

	b := newMemoryBackend()
	cb := callbackHandler(t, func(h *Handler) { h.Store = "memory" })
	cb.store, cb.journal = b, b
	app := newTestApp(t)
	w = serve(cb, post("/cb", forged), proxyTo(t, app.srv.URL))
	if w.Code != http.StatusForbidden || !strings.Contains(w.Body.String(), "not a callback") {
		t.Errorf("posted as a callback: %d %s", w.Code, w.Body)
	}
	if n := len(app.received()); n != 0 {
		t.Errorf("the app got %d deliveries", n)
	}
	events, err := b.Events(context.Background(), journal.EventFilter{})
	if err != nil || len(events) != 1 || events[0].Verified || events[0].Result != "not_a_callback" {
		t.Errorf("journal: %+v %v", events, err)
	}

	valid, out, err := runVerifyCommand(t, string(forged))
	if valid || err != nil || !strings.Contains(out, "invalid: not a callback") {
		t.Errorf("caddy ecommpay verify: %v %v %s", valid, err, out)
	}
}

// The shape rule cannot be met by dressing a Payment Page signature: an
// object that adds nothing to the canonical string, a value with ':' read as
// a path, or the parameters moved under an empty name all verify, and all
// are refused. payment_page refuses ':' in a parameter name, which could
// otherwise make two signed items under one name.
func TestPaymentPageSignatureCannotBeDressedAsACallback(t *testing.T) {
	page := paymentPageHandler(t, nil)
	w := serve(page, pageGet("payment_id=X&payment_amount=1&payment_currency=EUR&project_id=210"+
		"&redirect_success_url="+url.QueryEscape("https://shop.example/ok")+"&description="+url.QueryEscape("status:success")), nil)
	var answer struct{ URL string }
	if err := json.Unmarshal(w.Body.Bytes(), &answer); err != nil || answer.URL == "" {
		t.Fatalf("payment_page: %d %s", w.Code, w.Body)
	}
	u, _ := url.Parse(answer.URL)
	params := map[string]any{}
	for k, v := range u.Query() {
		params[k] = v[0]
	}
	with := func(extra map[string]any) map[string]any {
		m := map[string]any{}
		for k, v := range params {
			m[k] = v
		}
		for k, v := range extra {
			m[k] = v
		}
		return m
	}
	sig := params["signature"]
	inner := map[string]any{}
	for k, v := range params {
		if k != "signature" && k != "project_id" {
			inner[k] = v
		}
	}
	forgeries := map[string]map[string]any{
		"an empty object":             with(map[string]any{"payment": map[string]any{}}),
		"an object of a signature":    with(map[string]any{"payment": map[string]any{"signature": "x", "status": map[string]any{}}}),
		"an object of frame_mode":     with(map[string]any{"payment": map[string]any{"frame_mode": "iframe", "x": []any{}}}),
		"a value with ':' as objects": with(map[string]any{"redirect_success_url": map[string]any{"https": "//shop.example/ok"}, "description": map[string]any{"status": "success"}}),
		"parameters under no name":    {"": inner, "project_id": params["project_id"], "signature": sig},
	}
	cb := callbackHandler(t, func(h *Handler) { h.Store = "memory" })
	app := newTestApp(t)
	next := proxyTo(t, app.srv.URL)
	for name, body := range forgeries {
		raw, _ := json.Marshal(body)
		if !verifies(raw, testSecret) {
			t.Errorf("%s: the premise, that it verifies, fails: %s", name, raw)
			continue
		}
		if w := serve(cb, post("/cb", raw), next); w.Code != http.StatusForbidden || !strings.Contains(w.Body.String(), "not a callback") {
			t.Errorf("%s: %d %s", name, w.Code, w.Body)
		}
		if valid, _, _ := runVerifyCommand(t, string(raw)); valid {
			t.Errorf("%s: verify says valid", name)
		}
	}
	if n := len(app.received()); n != 0 {
		t.Errorf("the app got %d forgeries", n)
	}
	for _, q := range []string{"payment:status=success", "payment%3Aid=1"} {
		w := serve(page, pageGet("payment_id=X&payment_amount=1&payment_currency=EUR&"+q), nil)
		if w.Code != http.StatusBadRequest || !strings.Contains(w.Body.String(), "':' is not allowed") {
			t.Errorf("%s: %d %s", q, w.Code, w.Body)
		}
	}
	// A body that fails its signature is an invalid signature, whatever
	// its shape: not_a_callback is kept for verified ones.
	flat := []byte(`{"project_id":210,"payment_id":"X","signature":"` + wellFormedJunk + `"}`)
	if w := serve(cb, post("/cb", flat), next); !strings.Contains(w.Body.String(), "signature does not verify") {
		t.Errorf("a flat forgery: %d %s", w.Code, w.Body)
	}
}

// wellFormedJunk has a signature's shape and verifies nothing.
var wellFormedJunk = strings.Repeat("A", 86) + "=="

// Every shape of callback ecommpay sends has an object besides general:
// payment callbacks, token callbacks without a payment, recurring ones,
// redirect ones, the older flat-with-payment form. Each one, signed,
// verifies and reaches the app; stripped of its objects, none does.
func TestEveryCallbackFormatIsACallback(t *testing.T) {
	formats := map[string]string{
		"payment in general": `{"general":{},"project_id":210,"payment":{"id":"P-1","type":"purchase","status":"success","method":"alipay","sum":{"amount":500,"currency":"CNY"}},"account":{"number":"1111"},"customer":{"id":"c1"},"operation":{"id":1,"type":"sale","status":"success","code":"0","provider":{"id":7}}}`,
		"token":              `{"general":{"project_id":210},"request":{"id":"r-1","action":"token_create","status":"success","errors":[]},"customer":{"id":"c1"},"token_status":"active","token_created_at":"2026-12-01T10:00:00+0000","token":"tok-1"}`,
		"recurring":          `{"general":{},"project_id":210,"recurring":{"id":77,"status":"active","type":"R","currency":"EUR","exp_year":"2030","exp_month":"12","period":"M","time":"10:00"}}`,
		"redirect":           `{"general":{"project_id":210},"redirectData":{"method":"GET","body":[],"encrypted":[],"url":"https://acs.example/3ds"},"payment":{"id":"P-2"}}`,
		"card token":         `{"general":{"project_id":210},"card":{"exp_month":"12","exp_year":"2030","holder":"A B","number":"4111********1111"},"request":{"id":"r-2","action":"card_save","status":"success"},"token":"tok-2"}`,
		"flat with payment":  `{"general":{"project_id":210,"payment_id":"P-3"},"display_data":"[]","payment":{"id":"P-3","status":"success"},"rrn":"123","sum_request":{"amount":1,"currency":"EUR"}}`,
	}
	for name, body := range formats {
		t.Run(name, func(t *testing.T) {
			signed := signGeneral(t, body)
			h := callbackHandler(t, func(h *Handler) { h.Store = "memory" })
			app := newTestApp(t)
			if w := serve(h, post("/cb", signed), proxyTo(t, app.srv.URL)); w.Code != http.StatusOK || len(app.received()) != 1 {
				t.Errorf("%d %s, %d deliveries", w.Code, w.Body, len(app.received()))
			}
			if valid, out, err := runVerifyCommand(t, string(signed)); !valid || err != nil {
				t.Errorf("verify: %v %v %s", valid, err, out)
			}
		})
	}
	flat := signGeneral(t, `{"general":{"project_id":210},"payment_id":"P-4","payment_amount":1,"payment_currency":"EUR"}`)
	h := callbackHandler(t, func(h *Handler) { h.Store = "memory" })
	if w := serve(h, post("/cb", flat), nil); w.Code != http.StatusForbidden || !strings.Contains(w.Body.String(), "not a callback") {
		t.Errorf("a flat body with only general: %d %s", w.Code, w.Body)
	}
}

// signGeneral signs body and puts the signature at general.signature.
func signGeneral(t *testing.T, body string) []byte {
	t.Helper()
	canonical, _, err := signature.CallbackCanonical([]byte(body))
	if err != nil {
		t.Fatal(err)
	}
	sig := `"signature":"` + signature.Sign(canonical, testSecret) + `"`
	if strings.Contains(body, `"general":{}`) {
		return []byte(strings.Replace(body, `"general":{}`, `"general":{`+sig+`}`, 1))
	}
	return []byte(strings.Replace(body, `"general":{`, `"general":{`+sig+`,`, 1))
}

// A status answer about another payment, or another project, reaches
// nobody: the request is journaled as a mismatch, and neither payment
// changes.
func TestReconcileRefusesAnAnswerAboutAnotherPayment(t *testing.T) {
	for name, answer := range map[string]string{
		"another payment": strings.Replace(statusSuccess, `"id":"%s"`, `"id":"VICTIM-1"`, 1),
		"another project": strings.Replace(statusSuccess, `"project_id":210`, `"project_id":211`, 1),
		"no payment id":   strings.Replace(statusSuccess, `"id":"%s",`, ``, 1),
	} {
		t.Run(name, func(t *testing.T) {
			e := newRecEnv(t, ReconcileConfig{})
			e.started(journal.KindGate, "WX-1", "wechat", 2*time.Hour+time.Minute, 200, "/v2/payment/wallet/wechat/sale")
			e.started(journal.KindGate, "VICTIM-1", "wechat", 2*time.Hour+time.Minute, 200, "/v2/payment/wallet/wechat/sale")
			e.status.Set("WX-1", 200, answer)
			e.status.Set("VICTIM-1", 400, `{"status":"error","message":"temporarily unavailable"}`)
			e.at(0)
			if n := len(e.app.received()); n != 0 {
				t.Fatalf("the app got %d deliveries", n)
			}
			if n := reconciletest.CountKind(e.timeline("WX-1"), journal.KindStatusRequest, reconcile.ResultMismatch); n != 1 {
				t.Errorf("%d mismatch entries for WX-1: %+v", n, e.timeline("WX-1"))
			}
			for _, id := range []string{"WX-1", "VICTIM-1"} {
				tl, err := e.b.Timeline(context.Background(), "210", id)
				if err != nil || tl.Payment.Status != "" || tl.Payment.Final {
					t.Errorf("%s: %+v %v", id, tl.Payment, err)
				}
			}
		})
	}
}

// A status_url that is not https is refused at load, unless it is a
// stand-in on this machine.
func TestReconcileStatusURLMustBeHTTPS(t *testing.T) {
	for raw, ok := range map[string]bool{
		"https://api.ecommpay.com/v2/payment/status": true,
		"http://127.0.0.1:9/v2/payment/status":       true,
		"http://[::1]:9/v2/payment/status":           true,
		"http://localhost:9/v2/payment/status":       true,
		"http://api.ecommpay.com/v2/payment/status":  false,
		"http://10.0.0.5/v2/payment/status":          false,
		"http://127.0.0.1.evil.example/status":       false,
	} {
		h := &Handler{Mode: modeCallback, Store: "memory", Projects: []Project{{ID: "210", Secrets: []string{testSecret}}},
			Reconcile: &ReconcileConfig{StatusURL: raw, Every: caddy.Duration(time.Minute)}}
		err := provisionErr(t, h)
		if ok != (err == nil) {
			t.Errorf("%s: %v", raw, err)
		}
		if err != nil && !strings.Contains(err.Error(), "https") {
			t.Errorf("%s: the error does not say why: %v", raw, err)
		}
		if err == nil {
			_ = h.Cleanup()
		}
	}
}
