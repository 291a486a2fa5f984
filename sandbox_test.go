package ecommpay

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/sandbox"
	"github.com/caddyserver/caddy/v2"
)

func TestSandboxCaddyfile(t *testing.T) {
	h, err := parseDirective(`ecommpay sandbox {
		project 210 {env.ECOMMPAY_SECRET}
		callback http://127.0.0.1:8080/ecommpay/callback
		base_url http://127.0.0.1:8482
		pay_after 2s
		delay 500ms
		copies 2
		drop_final
		retry_scale 1000
		mbway_limit 1m
	}`)
	if err != nil {
		t.Fatal(err)
	}
	want := &SandboxConfig{CallbackURLs: []string{"http://127.0.0.1:8080/ecommpay/callback"},
		PayAfter: caddy.Duration(2 * time.Second), Delay: caddy.Duration(500 * time.Millisecond), Copies: 2,
		DropFinal: true, RetryScale: 1000, MBWayLimit: caddy.Duration(time.Minute)}
	if h.Mode != modeSandbox || h.BaseURL != "http://127.0.0.1:8482" || !reflect.DeepEqual(h.Sandbox, want) {
		t.Errorf("parsed %+v %+v", h, h.Sandbox)
	}
	for _, bad := range []string{
		"ecommpay sandbox {\nproject 210 s\ncopies 0\n}",
		"ecommpay sandbox {\nproject 210 s\npay_after soon\n}",
		"ecommpay sandbox {\nproject 210 s\ncallback\n}",
		"ecommpay gate {\nproject 210 s\ncallback http://x\n}",
	} {
		if _, err := parseDirective(bad); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
	h = Handler{Mode: modeGate, Projects: []Project{{ID: "210", Secrets: []string{"s"}}}, Sandbox: &SandboxConfig{}}
	if err := h.Validate(); err == nil || !strings.Contains(err.Error(), "sandbox does not apply") {
		t.Errorf("sandbox settings in gate mode: %v", err)
	}
}

func TestSandboxAnswersLoopbackOnly(t *testing.T) {
	var serveAt func(method, target, remote string, hdr map[string]string) int
	h := &Handler{Mode: modeSandbox, Projects: []Project{{ID: "210", Secrets: []string{"test-secret"}}},
		Sandbox: &SandboxConfig{CallbackURLs: []string{"http://127.0.0.1:1/callback"}}}
	if err := h.Provision(testContext(t)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Cleanup() })
	if err := h.Validate(); err != nil {
		t.Fatal(err)
	}
	serve := func(remote string, hdr map[string]string) int {
		return serveAt(http.MethodGet, "/sandbox/", remote, hdr)
	}
	serveAt = func(method, target, remote string, hdr map[string]string) int {
		r := httptest.NewRequest(method, target, nil)
		if strings.HasPrefix(target, "/") {
			r.Host = "127.0.0.1:8482"
		}
		r.RemoteAddr = remote
		for k, v := range hdr {
			r.Header.Set(k, v)
		}
		w := httptest.NewRecorder()
		if err := h.ServeHTTP(w, r, nil); err != nil {
			t.Fatal(err)
		}
		return w.Code
	}
	if code := serve("127.0.0.1:5000", nil); code != http.StatusOK {
		t.Errorf("loopback: %d", code)
	}
	if code := serve("203.0.113.9:5000", nil); code != http.StatusForbidden {
		t.Errorf("a stranger: %d, want 403", code)
	}
	if code := serve("127.0.0.1:5000", map[string]string{"X-Forwarded-For": "203.0.113.9"}); code != http.StatusForbidden {
		t.Errorf("proxied: %d, want 403", code)
	}
	// The Host check of the signing modes applies (DNS rebinding).
	if code := serveAt(http.MethodGet, "http://rebound.example/sandbox/", "127.0.0.1:5000", nil); code != http.StatusMisdirectedRequest {
		t.Errorf("a rebound name: %d, want 421", code)
	}
	// The Payment Page opens from the shop's pages, another origin; the
	// sandbox's forms refuse posts from them.
	if code := serveAt(http.MethodGet, "/sandbox/", "127.0.0.1:5000", map[string]string{"Sec-Fetch-Site": "cross-site"}); code != http.StatusOK {
		t.Errorf("a page opened from another site: %d, want 200", code)
	}
	if code := serveAt(http.MethodPost, "/sandbox/pay/P1", "127.0.0.1:5000", map[string]string{"Sec-Fetch-Site": "cross-site"}); code != http.StatusForbidden {
		t.Errorf("a form posted from another site: %d, want 403", code)
	}
	if err := (&Handler{Mode: modeSandbox, Projects: h.Projects}).Provision(testContext(t)); err == nil {
		t.Error("a sandbox without a callback URL was provisioned")
	}
	bad := &Handler{Mode: modeSandbox, Projects: h.Projects, Sandbox: &SandboxConfig{CallbackURLs: []string{"127.0.0.1:8080/callback"}}}
	if err := bad.Provision(testContext(t)); err == nil || !strings.Contains(err.Error(), "not an absolute http(s) URL") {
		t.Errorf("a callback URL without a scheme: %v", err)
	}
}

// example.sandbox.Caddyfile adapts with the secret left a placeholder and
// a sandbox that calls the example's callback route; the production
// example has no sandbox.
func TestExampleSandboxCaddyfileAdapts(t *testing.T) {
	body, err := os.ReadFile("example.sandbox.Caddyfile")
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("ECOMMPAY_SECRET", "resolved-secret-must-not-appear")
	out := adapt(t, body)
	if strings.Contains(string(out), "resolved-secret-must-not-appear") {
		t.Fatal("example.sandbox.Caddyfile bakes the secret into the JSON")
	}
	var cfg any
	if err := json.Unmarshal(out, &cfg); err != nil {
		t.Fatal(err)
	}
	modes := map[string]int{}
	for _, raw := range findHandlers(cfg, "ecommpay") {
		b, _ := json.Marshal(raw)
		var h Handler
		if err := json.Unmarshal(b, &h); err != nil {
			t.Fatal(err)
		}
		if err := h.Validate(); err != nil {
			t.Fatalf("mode %s: %v", h.Mode, err)
		}
		modes[h.Mode]++
		if h.Mode == modeSandbox && (h.Sandbox == nil || !reflect.DeepEqual(h.Sandbox.CallbackURLs, []string{"http://127.0.0.1:8080/ecommpay/callback"})) {
			t.Errorf("the sandbox's callback: %+v", h.Sandbox)
		}
	}
	if modes[modeSandbox] != 1 || modes[modeCallback] != 1 || modes[modePaymentPage] != 2 || modes[modeGate] != 1 {
		t.Errorf("modes %v", modes)
	}
	// Like example.Caddyfile it talks to loopback only: upstreams, the
	// sandbox's callbacks and reconcile's status requests.
	checked := 0
	for _, h := range append(findHandlers(cfg, "reverse_proxy"), findHandlers(cfg, "ecommpay")...) {
		switch h["handler"] {
		case "reverse_proxy":
			for _, u := range h["upstreams"].([]any) {
				checked++
				if dial := fmt.Sprint(u.(map[string]any)["dial"]); !isLoopbackHostPort(dial) {
					t.Errorf("reverse_proxy to %s", dial)
				}
			}
		case "ecommpay":
			var targets []string
			if sb, ok := h["sandbox"].(map[string]any); ok {
				for _, u := range sb["callback_urls"].([]any) {
					targets = append(targets, u.(string))
				}
			}
			if rc, ok := h["reconcile"].(map[string]any); ok {
				targets = append(targets, fmt.Sprint(rc["status_url"]))
			}
			for _, target := range targets {
				checked++
				if u, err := url.Parse(target); err != nil || !isLoopbackHostPort(u.Host) {
					t.Errorf("the %s handler sends to %s", h["mode"], target)
				}
			}
		}
	}
	if checked != 4 { // two upstreams, the sandbox's callback, reconcile's status_url
		t.Errorf("checked %d addresses, want 4", checked)
	}
	prod, err := os.ReadFile("example.Caddyfile")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(prod), "ecommpay sandbox") {
		t.Error("the production example runs a sandbox")
	}
}

// FuzzSandboxPaymentPage feeds the sandbox's Payment Page and its
// signature comparison arbitrary queries and pasted strings: it answers
// each with a page or an error, never a panic or a 5xx.
func FuzzSandboxPaymentPage(f *testing.F) {
	signed := "customer_id=c1&payment_amount=1000&payment_currency=CNY&payment_id=P1&project_id=210"
	f.Add(signed+"&signature=x", "customer_id:c1;payment_amount:100")
	f.Add(signed+"&payment_description=%E2%82%AC+late&frame_mode=popup&signature=abc%3D", "")
	f.Add("a=1&a=2&signature=s", "a:1;a:2")
	f.Add("%zz=1&signature=s", "\xff;:")
	f.Add("signature=&project_id=", ";;;:::")
	f.Fuzz(func(t *testing.T, query, pasted string) {
		sb, err := sandbox.New(sandbox.Config{
			Projects:     []sandbox.Project{{ID: "210", Secret: "fuzz-secret"}, {ID: "211", Secret: "other"}},
			CallbackURLs: []string{"http://127.0.0.1:1/callback"},
		})
		if err != nil {
			t.Fatal(err)
		}
		defer sb.Close()
		r := httptest.NewRequest(http.MethodGet, "/payment", nil)
		r.URL.RawQuery = query
		w := httptest.NewRecorder()
		sb.ServeHTTP(w, r)
		if w.Code >= 500 {
			t.Fatalf("GET /payment?%s: %d %s", query, w.Code, w.Body)
		}
		form := url.Values{"query": {query}, "signed": {pasted}}
		r = httptest.NewRequest(http.MethodPost, "/sandbox/compare", strings.NewReader(form.Encode()))
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		w = httptest.NewRecorder()
		sb.ServeHTTP(w, r)
		if w.Code >= 500 {
			t.Fatalf("compare %q with %q: %d %s", query, pasted, w.Code, w.Body)
		}
	})
}
