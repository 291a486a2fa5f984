package ecommpay

import (
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddy-ecommpay/caddy-ecommpay/signature"
	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// provisionErr provisions and validates h and returns the first error.
func provisionErr(t *testing.T, h *Handler) error {
	t.Helper()
	err := h.Provision(testContext(t))
	t.Cleanup(func() { _ = h.Cleanup() })
	if err != nil {
		return err
	}
	return h.Validate()
}

func TestProvisionErrors(t *testing.T) {
	const unset = "ECOMMPAY_TEST_UNSET_VAR_X"
	if _, ok := os.LookupEnv(unset); ok {
		t.Fatalf("%s is set", unset)
	}
	t.Setenv("ECOMMPAY_TEST_PARTIAL", "partly-resolved-value")
	secret := func(id string, s ...string) []Project { return []Project{{ID: id, Secrets: s}} }
	cases := []struct {
		name string
		h    Handler
		want []string // the error says all of these
		not  []string // and none of these
	}{
		{"no projects", Handler{Mode: modeGate}, []string{"at least one project"}, nil},
		{"no secret", Handler{Mode: modeGate, Projects: secret("210")}, []string{"project 210", "secret is required"}, nil},
		{"empty secret", Handler{Mode: modeGate, Projects: secret("210", "")}, []string{"project 210", "secret #1"}, nil},
		{"unset env secret", Handler{Mode: modeGate, Projects: secret("210", "{env."+unset+"}")},
			[]string{"project 210", "secret #1"}, nil},
		{"second secret unresolvable", Handler{Mode: modeGate, Projects: secret("211", testSecret, "{env."+unset+"}")},
			[]string{"project 211", "secret #2"}, []string{testSecret}},
		{"partly resolved secret", Handler{Mode: modeGate, Projects: secret("210", "{env.ECOMMPAY_TEST_PARTIAL}{nope.placeholder}")},
			[]string{"project 210", "secret #1"}, []string{"partly-resolved-value", "nope.placeholder"}},
		{"literal secret with an unknown placeholder", Handler{Mode: modeGate, Projects: secret("210", "literal-secret-part{nope}")},
			[]string{"project 210"}, []string{"literal-secret-part"}},
		{"missing secret file", Handler{Mode: modeGate, Projects: secret("210", "{file."+filepath.Join(t.TempDir(), "none")+"}")},
			[]string{"project 210", "secret #1"}, nil},
		{"duplicate project", Handler{Mode: modeGate, Projects: append(secret("210", "a"), secret("210", "b")...)},
			[]string{"project 210 is listed twice"}, nil},
		{"empty project id", Handler{Mode: modeGate, Projects: secret("", "a")}, []string{"not valid"}, nil},
		{"project id with a space", Handler{Mode: modeGate, Projects: secret("2 10", "a")}, []string{"not valid"}, nil},
		{"project id with ;", Handler{Mode: modeGate, Projects: secret("2;10", "a")}, []string{"not valid"}, nil},
		{"unknown mode", Handler{Mode: "sign", Projects: secret("210", "a")}, []string{`unknown mode "sign"`}, nil},
		{"no mode", Handler{Projects: secret("210", "a")}, []string{`unknown mode ""`}, nil},
		{"bad allow CIDR", Handler{Mode: modeGate, Projects: secret("210", "a"), Allow: []string{"10.0.0.0/40"}}, []string{"allow"}, nil},
		{"bad allow address", Handler{Mode: modePaymentPage, Projects: secret("210", "a"), Allow: []string{"localhost"}}, []string{"allow"}, nil},
		{"bad from", Handler{Mode: modeCallback, Projects: secret("210", "a"), From: []string{"x/8"}}, []string{"from"}, nil},
		{"base_url not http", Handler{Mode: modePaymentPage, Projects: secret("210", "a"), BaseURL: "ftp://pp.example"}, []string{"base_url"}, nil},
		{"base_url relative", Handler{Mode: modePaymentPage, Projects: secret("210", "a"), BaseURL: "pp.example/x"}, []string{"base_url"}, nil},
		{"base_url with a query", Handler{Mode: modePaymentPage, Projects: secret("210", "a"), BaseURL: "https://pp.example/?a=1"}, []string{"base_url"}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := provisionErr(t, &c.h)
			if err == nil {
				t.Fatal("provisioned without an error")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			for _, n := range c.not {
				if strings.Contains(err.Error(), n) {
					t.Errorf("error %q gives away %q", err, n)
				}
			}
		})
	}
}

// signsWith reports which secret a payment_page handler signs with.
func signsWith(t *testing.T, h *Handler, secret string) {
	t.Helper()
	u, sig := signedAnswer(t, serve(h, pageGet("payment_id=P1&payment_amount=100&payment_currency=USD"), nil))
	checkSignedURL(t, u, defaultBaseURL, secret, [][2]string{
		{"payment_id", "P1"}, {"payment_amount", "100"}, {"payment_currency", "USD"}, {"project_id", "210"},
	})
	if sig != signature.Sign("payment_amount:100;payment_currency:USD;payment_id:P1;project_id:210", secret) {
		t.Fatalf("not signed with %q", secret)
	}
}

func TestProvisionResolvesSecretPlaceholders(t *testing.T) {
	t.Setenv("ECOMMPAY_TEST_SECRET", "env-secret-value")
	h := paymentPageHandler(t, func(h *Handler) { h.Projects[0].Secrets = []string{"{env.ECOMMPAY_TEST_SECRET}"} })
	signsWith(t, h, "env-secret-value")

	file := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(file, []byte("file-secret-value\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	h = paymentPageHandler(t, func(h *Handler) { h.Projects[0].Secrets = []string{"{file." + file + "}"} })
	signsWith(t, h, "file-secret-value")

	// Resolved once, at load: a later change does not reach this handler.
	t.Setenv("ECOMMPAY_TEST_SECRET", "changed-after-load")
	h = paymentPageHandler(t, func(h *Handler) { h.Projects[0].Secrets = []string{"{env.ECOMMPAY_TEST_SECRET}"} })
	os.Setenv("ECOMMPAY_TEST_SECRET", "changed-again")
	signsWith(t, h, "changed-after-load")
}

func TestValidateRefusesSettingsOfOtherModes(t *testing.T) {
	p := []Project{{ID: "210", Secrets: []string{"s"}}}
	bad := []struct {
		name string
		h    Handler
	}{
		{"redirect", Handler{Mode: modeGate, Redirect: true}},
		{"base_url", Handler{Mode: modeGate, BaseURL: "https://pp.example"}},
		{"dedupe", Handler{Mode: modePaymentPage, Dedupe: "memory"}},
		{"store", Handler{Mode: modeQR, RedisURL: "redis://127.0.0.1"}},
		{"journal", Handler{Mode: modeQR, Journal: JournalConfig{Off: true}}},
		{"allow_proxied", Handler{Mode: modeCallback, AllowProxied: true}},
		{"read_timeout", Handler{Mode: modeGate, ReadTimeout: caddy.Duration(1)}},
		{"dedupe", Handler{Mode: modeQR, MaxKeys: 5}},
		{"allow", Handler{Mode: modeCallback, Allow: []string{"10.0.0.0/8"}}},
		{"allow", Handler{Mode: modeQR, Allow: []string{"10.0.0.0/8"}}},
		{"ttl", Handler{Mode: modeGate, TTL: caddy.Duration(1)}},
		{"forward_timeout", Handler{Mode: modePaymentPage, ForwardTimeout: caddy.Duration(1)}},
		{"on_store_error", Handler{Mode: modeQR, OnStoreError: "forward"}},
		{"from", Handler{Mode: modePaymentPage, From: []string{"10.0.0.0/8"}}},
		{"qr", Handler{Mode: modeGate, QR: "image"}},
		{"qr", Handler{Mode: modeQR, QRBaseURL: "https://x"}},
		{"qr", Handler{Mode: modePaymentPage, QRTTL: caddy.Duration(1)}},
		{"qr_size", Handler{Mode: modeGate, QRSize: 100}},
		{"qr_level", Handler{Mode: modePaymentPage, QRLevel: "H"}},
		{"qr_cache", Handler{Mode: modeGate, QRCacheSize: 1 << 20}},
	}
	for _, c := range bad {
		c.h.Projects = p
		err := c.h.Validate()
		if err == nil || !strings.Contains(err.Error(), c.name) || !strings.Contains(err.Error(), "mode "+c.h.Mode) {
			t.Errorf("%s on %s: %v", c.name, c.h.Mode, err)
		}
	}

	// Every misplaced setting is reported at once.
	h := Handler{Mode: modeCallback, Projects: p, Allow: []string{"::1"}, Redirect: true}
	if err := h.Validate(); err == nil || !strings.Contains(err.Error(), "allow") || !strings.Contains(err.Error(), "redirect") {
		t.Errorf("two misplaced settings: %v", err)
	}

	good := []Handler{
		{Mode: modeGate, Allow: []string{"10.0.0.0/8"}},
		{Mode: modePaymentPage, Allow: []string{"::1"}, BaseURL: "https://x", Redirect: true},
		{Mode: modeCallback, Dedupe: "redis", RedisURL: "redis://x", MaxKeys: 1, TTL: 1, ForwardTimeout: 1,
			OnStoreError: "reject", From: []string{"10.0.0.0/8"}, QR: "url", QRBaseURL: "https://x", QRTTL: 1,
			QRSize: 64, QRLevel: "H", QRCacheSize: 1},
		{Mode: modeQR, QRSize: 64, QRLevel: "L", QRCacheSize: 1},
	}
	for _, h := range good {
		h.Projects = p
		if err := h.Validate(); err != nil {
			t.Errorf("mode %s: %v", h.Mode, err)
		}
	}
}

// TestSigningLogsNoSecrets drives the signing modes through success and
// every kind of refusal and checks that each outcome is logged and that
// no log line carries a secret or a signature.
func TestSigningLogsNoSecrets(t *testing.T) {
	const otherSecret = "second-project-secret-02"
	projects := func() []Project {
		return []Project{
			{ID: "210", Secrets: []string{testSecret}},
			{ID: "211", Secrets: []string{otherSecret, "older-secret-03"}},
		}
	}
	app := newTestApp(t)
	page := &Handler{Mode: modePaymentPage, Projects: projects(), MaxBody: 512}
	pageLogs := provision(t, page)
	gate := &Handler{Mode: modeGate, Projects: projects(), MaxBody: 512}
	gateLogs := provision(t, gate)
	next := proxyTo(t, app.srv.URL)

	var signatures []string
	_, sig := signedAnswer(t, serve(page, pageGet("project_id=210&"+pageQuery), nil))
	signatures = append(signatures, sig)
	_, sig = signedAnswer(t, serve(page, pagePost("application/json", `{"project_id":"211","payment_id":"P2","payment_amount":5,"payment_currency":"EUR"}`), nil))
	signatures = append(signatures, sig)
	big := strings.Repeat("x", 600)
	for _, r := range []*http.Request{
		pageGet("project_id=210&payment_id=P1&payment_amount=1.5&payment_currency=USD"),
		pageGet("payment_id=P1&payment_amount=1&payment_currency=USD&project_id=210&signature=" + url.QueryEscape(sig)),
		pageGet(pageQuery), // two projects and no project_id
		post("/pay", []byte(`{"payment_id":"P1"}`)),
		pagePost("application/x-www-form-urlencoded", "payment_id="+big),
	} {
		serve(page, r, nil)
	}

	for _, body := range []string{
		`{"general":{"project_id":210,"payment_id":"G1"},"payment":{"amount":100}}`,
		`{"general":{"project_id":211,"payment_id":"G2"},"payment":{"amount":100}}`,
	} {
		if w := serve(gate, localPost("/g", []byte(body)), next); w.Code != http.StatusOK {
			t.Fatalf("gate: %d %s", w.Code, w.Body)
		}
	}
	for _, got := range app.received() {
		_, s := gateSignature(t, got.body)
		signatures = append(signatures, s)
	}
	for _, r := range []*http.Request{
		localPost("/g", []byte(`{"general":{"payment_id":"G3"}}`)),
		localPost("/g", []byte(`{"general":{"project_id":999}}`)),
		post("/g", []byte(`{"general":{"project_id":210}}`)),
		localPost("/g", []byte(`{"general":{"project_id":210},"pad":"`+big+`"}`)),
	} {
		serve(gate, r, next)
	}
	if len(signatures) != 4 {
		t.Fatalf("collected %d signatures, want 4", len(signatures))
	}

	forbidden := []string{testSecret, otherSecret, "older-secret-03"}
	for _, s := range signatures {
		forbidden = append(forbidden, s, url.QueryEscape(s), s[:20])
	}
	for mode, c := range map[string]struct {
		logs interface{ All() []observer.LoggedEntry }
		want map[string]int
	}{
		modePaymentPage: {pageLogs, map[string]int{"signed": 2, "invalid": 3, "forbidden": 1, "too_large": 1}},
		modeGate:        {gateLogs, map[string]int{"signed": 2, "invalid": 1, "unknown_project": 1, "forbidden": 1, "too_large": 1}},
	} {
		results := map[string]int{}
		for _, e := range c.logs.All() {
			fields := e.ContextMap()
			line := e.Message + " " + fmt.Sprint(fields)
			for _, f := range forbidden {
				if strings.Contains(line, f) {
					t.Fatalf("%s log line carries a secret or signature (%q): %s", mode, f, line)
				}
			}
			res, _ := fields["result"].(string)
			results[res]++
		}
		if fmt.Sprint(results) != fmt.Sprint(c.want) {
			t.Errorf("%s logged results %v, want %v", mode, results, c.want)
		}
	}
}

// counts reads the signing counters for mode.
func counts(mode string) (requests map[string]float64, signatures float64) {
	requests = map[string]float64{}
	for _, r := range []string{"signed", "invalid", "unknown_project", "forbidden", "too_large", "upstream_error"} {
		requests[r] = testutil.ToFloat64(signRequestsTotal.WithLabelValues(mode, r))
	}
	return requests, testutil.ToFloat64(signaturesTotal.WithLabelValues(mode))
}

func TestSigningMetrics(t *testing.T) {
	app := newTestApp(t)
	page := paymentPageHandler(t, nil)
	gate := gateHandler(t, nil)
	next := proxyTo(t, app.srv.URL)
	pageReq0, pageSig0 := counts(modePaymentPage)
	gateReq0, gateSig0 := counts(modeGate)

	serve(page, pageGet(pageQuery), nil)
	serve(page, pagePost("application/json", `{"payment_id":"P2","payment_amount":5,"payment_currency":"EUR"}`), nil)
	serve(page, pageGet("payment_id=P1"), nil)
	serve(page, post("/pay", nil), nil)
	serve(gate, localPost("/g", []byte(gateSale)), next)
	serve(gate, localPost("/g", []byte(`{"general":{"project_id":1}}`)), next)
	serve(gate, localPost("/g", []byte(gateSale)), proxyTo(t, closedPort(t)))

	pageReq, pageSig := counts(modePaymentPage)
	gateReq, gateSig := counts(modeGate)
	delta := func(after, before map[string]float64) map[string]float64 {
		d := map[string]float64{}
		for k := range after {
			if v := after[k] - before[k]; v != 0 {
				d[k] = v
			}
		}
		return d
	}
	if d := delta(pageReq, pageReq0); fmt.Sprint(d) != fmt.Sprint(map[string]float64{"signed": 2, "invalid": 1, "forbidden": 1}) {
		t.Errorf("payment_page sign_requests_total grew by %v", d)
	}
	if pageSig-pageSig0 != 2 {
		t.Errorf("payment_page signatures_total grew by %v, want 2", pageSig-pageSig0)
	}
	if d := delta(gateReq, gateReq0); fmt.Sprint(d) != fmt.Sprint(map[string]float64{"signed": 1, "unknown_project": 1, "upstream_error": 1}) {
		t.Errorf("gate sign_requests_total grew by %v", d)
	}
	if gateSig-gateSig0 != 1 {
		t.Errorf("gate signatures_total grew by %v, want 1", gateSig-gateSig0)
	}
}

// gathered is the value of a sign_requests_total series in reg.
func gathered(t *testing.T, reg *prometheus.Registry, mode, result string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range families {
		if mf.GetName() != "caddy_ecommpay_sign_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["mode"] == mode && labels["result"] == result {
				return m.GetCounter().GetValue()
			}
		}
	}
	t.Fatalf("caddy_ecommpay_sign_requests_total{mode=%q,result=%q} is not in the registry", mode, result)
	return 0
}

// TestMetricsAcrossReloads provisions handlers the way two successive
// configs do, each with its own registry, and checks counting goes on.
func TestMetricsAcrossReloads(t *testing.T) {
	newHandler := func(ctx caddy.Context) *Handler {
		h := &Handler{Mode: modePaymentPage, Projects: []Project{{ID: "210", Secrets: []string{testSecret}}}}
		if err := h.Provision(ctx); err != nil {
			t.Fatalf("provision: %v", err)
		}
		h.logger = zap.NewNop()
		return h
	}
	ctx1, cancel1 := caddy.NewContext(caddy.ActiveContext())
	h1 := newHandler(ctx1)
	newHandler(ctx1) // a second handler in the same config shares the registry
	signed := func() { serve(h1, pageGet(pageQuery), nil) }
	signed()
	before := testutil.ToFloat64(signRequestsTotal.WithLabelValues(modePaymentPage, "signed"))
	if got := gathered(t, ctx1.GetMetricsRegistry(), modePaymentPage, "signed"); got != before {
		t.Fatalf("first registry shows %v, counter is %v", got, before)
	}

	// The reload: a new context with a fresh registry, then the old one goes.
	ctx2, cancel2 := caddy.NewContext(caddy.ActiveContext())
	defer cancel2()
	h2 := newHandler(ctx2)
	cancel1()
	_ = h1.Cleanup()
	serve(h2, pageGet(pageQuery), nil)
	serve(h2, pageGet(pageQuery), nil)
	after := testutil.ToFloat64(signRequestsTotal.WithLabelValues(modePaymentPage, "signed"))
	if after != before+2 {
		t.Fatalf("counter went from %v to %v after the reload, want +2", before, after)
	}
	if got := gathered(t, ctx2.GetMetricsRegistry(), modePaymentPage, "signed"); got != after {
		t.Fatalf("new registry shows %v, want %v", got, after)
	}
}
