package ecommpay

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/respond"
	"github.com/caddy-ecommpay/caddy-ecommpay/signature"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

func paymentPageHandler(t testing.TB, mod func(*Handler)) *Handler {
	t.Helper()
	h := &Handler{Mode: modePaymentPage, Projects: []Project{{ID: "210", Secrets: []string{testSecret}}}}
	if mod != nil {
		mod(h)
	}
	provision(t, h)
	return h
}

func pageGet(query string) *http.Request {
	return httptestRequest(http.MethodGet, "/pay?"+query)
}

func pagePost(contentType, body string) *http.Request {
	r := localPost("/pay", []byte(body))
	if contentType == "" {
		r.Header.Del("Content-Type")
	} else {
		r.Header.Set("Content-Type", contentType)
	}
	return r
}

// urlParams splits a URL's raw query into decoded pairs, in order, and
// returns the raw text of each part as well.
func urlParams(t testing.TB, rawQuery string) (pairs [][2]string, raw []string) {
	t.Helper()
	for part := range strings.SplitSeq(rawQuery, "&") {
		k, v, ok := strings.Cut(part, "=")
		key, err1 := url.QueryUnescape(k)
		val, err2 := url.QueryUnescape(v)
		if !ok || err1 != nil || err2 != nil {
			t.Fatalf("bad query part %q in %q", part, rawQuery)
		}
		pairs = append(pairs, [2]string{key, val})
		raw = append(raw, part)
	}
	return pairs, raw
}

// checkSignedURL checks a signed Payment Page URL: where it points, that
// it carries exactly want (in order) and then the signature, and that the
// signature is the one over want without frame_mode, made with secret.
func checkSignedURL(t testing.TB, signed, base, secret string, want [][2]string) (sig string) {
	t.Helper()
	u, err := url.Parse(signed)
	if err != nil {
		t.Fatalf("signed URL %q: %v", signed, err)
	}
	if got := u.Scheme + "://" + u.Host + u.Path; got != base+"/payment" {
		t.Fatalf("signed URL points to %s, want %s/payment", got, base)
	}
	if u.Fragment != "" || u.User != nil {
		t.Fatalf("signed URL %q has extra parts", signed)
	}
	pairs, raw := urlParams(t, u.RawQuery)
	last := len(pairs) - 1
	if last < 0 || pairs[last][0] != "signature" {
		t.Fatalf("signature is not the last parameter: %q", u.RawQuery)
	}
	sig = pairs[last][1]
	if raw[last] != "signature="+url.QueryEscape(sig) {
		t.Fatalf("signature is not URL-encoded: %q", raw[last])
	}
	params := pairs[:last]
	if len(params) != len(want) {
		t.Fatalf("URL parameters\n %q\nwant\n %q", params, want)
	}
	seen := map[string]bool{}
	for i := range want {
		if params[i] != want[i] {
			t.Fatalf("URL parameter %d is %q, want %q (all: %q)", i, params[i], want[i], params)
		}
		if seen[params[i][0]] {
			t.Fatalf("URL repeats %s", params[i][0])
		}
		seen[params[i][0]] = true
	}
	var signedPairs [][2]string
	for _, p := range params {
		if p[0] != "frame_mode" {
			signedPairs = append(signedPairs, p)
		}
	}
	if signature.Sign(canonicalPairs(signedPairs), secret) != sig {
		t.Fatalf("signature %q does not verify over %q", sig, signedPairs)
	}
	return sig
}

// signedAnswer decodes the JSON answer {"url","signature"}.
func signedAnswer(t testing.TB, w interface {
	Result() *http.Response
}) (u, sig string) {
	t.Helper()
	res := w.Result()
	if res.StatusCode != http.StatusOK || res.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("answer %d %s", res.StatusCode, res.Header.Get("Content-Type"))
	}
	if res.Header.Get("Cache-Control") != "no-store" {
		t.Fatalf("signed URL may be cached: Cache-Control %q", res.Header.Get("Cache-Control"))
	}
	var out struct {
		URL       string `json:"url"`
		Signature string `json:"signature"`
	}
	dec := json.NewDecoder(res.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&out); err != nil || out.URL == "" || out.Signature == "" {
		t.Fatalf("answer is not {url, signature}: %v %+v", err, out)
	}
	return out.URL, out.Signature
}

const pageQuery = "payment_id=ORDER-7&payment_amount=1000&payment_currency=USD&customer_id=c%201" +
	"&description=Caf%C3%A9+%26+more%3Dyes&frame_mode=popup"

var pageQueryParams = [][2]string{
	{"payment_id", "ORDER-7"}, {"payment_amount", "1000"}, {"payment_currency", "USD"},
	{"customer_id", "c 1"}, {"description", "Café & more=yes"}, {"frame_mode", "popup"},
	{"project_id", "210"},
}

// pageQueryCanonical is the string signed for pageQuery, by hand: sorted,
// frame_mode left out, the added project_id in.
const pageQueryCanonical = "customer_id:c 1;description:Café & more=yes;payment_amount:1000;" +
	"payment_currency:USD;payment_id:ORDER-7;project_id:210"

func TestPaymentPageQueryAndForm(t *testing.T) {
	h := paymentPageHandler(t, nil)
	for name, r := range map[string]*http.Request{
		"GET":               pageGet(pageQuery),
		"HEAD":              httptestRequest(http.MethodHead, "/pay?"+pageQuery),
		"form":              pagePost("application/x-www-form-urlencoded", pageQuery),
		"form with charset": pagePost("application/x-www-form-urlencoded; charset=UTF-8", pageQuery),
	} {
		t.Run(name, func(t *testing.T) {
			u, sig := signedAnswer(t, serve(h, r, nil))
			if got := checkSignedURL(t, u, defaultBaseURL, testSecret, pageQueryParams); got != sig {
				t.Fatalf("URL signature %q, JSON signature %q", got, sig)
			}
			if want := signature.Sign(pageQueryCanonical, testSecret); sig != want {
				t.Fatalf("signature %q, want %q over %q", sig, want, pageQueryCanonical)
			}
		})
	}
}

func TestPaymentPageJSON(t *testing.T) {
	h := paymentPageHandler(t, nil)
	body := `{"payment_id":"ORDER-8","payment_amount":1000,"payment_currency":"EUR","force_acs":true,` +
		`"close_on_missing":false,"project_id":210,"frame_mode":"iframe","customer_first_name":"Zoë","rate":1.50}`
	want := [][2]string{
		{"payment_id", "ORDER-8"}, {"payment_amount", "1000"}, {"payment_currency", "EUR"}, {"force_acs", "1"},
		{"close_on_missing", "0"}, {"project_id", "210"}, {"frame_mode", "iframe"}, {"customer_first_name", "Zoë"},
		{"rate", "1.5"},
	}
	canonical := "close_on_missing:0;customer_first_name:Zoë;force_acs:1;payment_amount:1000;" +
		"payment_currency:EUR;payment_id:ORDER-8;project_id:210;rate:1.5"
	for _, ct := range []string{"application/json", "application/json; charset=utf-8", ""} {
		u, sig := signedAnswer(t, serve(h, pagePost(ct, body), nil))
		checkSignedURL(t, u, defaultBaseURL, testSecret, want)
		if sig != signature.Sign(canonical, testSecret) {
			t.Fatalf("Content-Type %q: signature is not over %q", ct, canonical)
		}
		if !strings.Contains(u, "&force_acs=1&close_on_missing=0&") || !strings.Contains(u, "&frame_mode=iframe&") {
			t.Fatalf("booleans or frame_mode not in the URL as sent: %s", u)
		}
	}
}

func TestPaymentPageProjects(t *testing.T) {
	const otherSecret = "second-project-secret-02"
	h := paymentPageHandler(t, func(h *Handler) {
		h.Projects = append(h.Projects, Project{ID: "211", Secrets: []string{otherSecret, "older"}})
		h.BaseURL = "https://pp.example.test/sub/"
	})
	q := "project_id=211&payment_id=P1&payment_amount=5&payment_currency=GBP"
	u, sig := signedAnswer(t, serve(h, pageGet(q), nil))
	checkSignedURL(t, u, "https://pp.example.test/sub", otherSecret, [][2]string{
		{"project_id", "211"}, {"payment_id", "P1"}, {"payment_amount", "5"}, {"payment_currency", "GBP"},
	})
	if sig == signature.Sign("payment_amount:5;payment_currency:GBP;payment_id:P1;project_id:211", testSecret) {
		t.Fatal("signed with the other project's secret")
	}

	w := serve(h, pageGet("payment_id=P1&payment_amount=5&payment_currency=GBP"), nil)
	if w.Code != http.StatusBadRequest || errorField(t, w) != "project_id" {
		t.Fatalf("two projects, no project_id: %d %s", w.Code, w.Body)
	}
}

func TestPaymentPageBaseURL(t *testing.T) {
	for base, want := range map[string]string{
		"":                           "https://paymentpage.ecommpay.com",
		"http://127.0.0.1:8081":      "http://127.0.0.1:8081",
		"https://pp.example.test/x/": "https://pp.example.test/x",
	} {
		h := paymentPageHandler(t, func(h *Handler) { h.BaseURL = base })
		u, _ := signedAnswer(t, serve(h, pageGet("payment_id=1&payment_amount=1&payment_currency=USD"), nil))
		checkSignedURL(t, u, want, testSecret, [][2]string{
			{"payment_id", "1"}, {"payment_amount", "1"}, {"payment_currency", "USD"}, {"project_id", "210"},
		})
	}
}

func TestPaymentPageRedirect(t *testing.T) {
	h := paymentPageHandler(t, func(h *Handler) { h.Redirect = true })
	for name, r := range map[string]*http.Request{
		"GET":  pageGet(pageQuery),
		"form": pagePost("application/x-www-form-urlencoded", pageQuery),
	} {
		w := serve(h, r, nil)
		if w.Code != http.StatusSeeOther {
			t.Fatalf("%s: %d %s", name, w.Code, w.Body)
		}
		loc := w.Header().Get("Location")
		sig := checkSignedURL(t, loc, defaultBaseURL, testSecret, pageQueryParams)
		if sig != signature.Sign(pageQueryCanonical, testSecret) {
			t.Fatalf("%s: Location carries a wrong signature", name)
		}
		if w.Header().Get("Cache-Control") != "no-store" {
			t.Fatalf("%s: redirect may be cached", name)
		}
	}
}

func TestPaymentPageRejects(t *testing.T) {
	two := func(h *Handler) { h.Projects = append(h.Projects, Project{ID: "211", Secrets: []string{"s2"}}) }
	const ok = "payment_id=P1&payment_amount=100&payment_currency=USD"
	cases := []struct {
		name  string
		mod   func(*Handler)
		req   *http.Request
		field string
	}{
		{"no payment_id", nil, pageGet("payment_amount=100&payment_currency=USD"), "payment_id"},
		{"empty payment_id", nil, pageGet("payment_id=&payment_amount=100&payment_currency=USD"), "payment_id"},
		{"no payment_amount", nil, pageGet("payment_id=P1&payment_currency=USD"), "payment_amount"},
		{"no payment_currency", nil, pageGet("payment_id=P1&payment_amount=100"), "payment_currency"},
		{"amount 10.5", nil, pageGet("payment_id=P1&payment_amount=10.5&payment_currency=USD"), "payment_amount"},
		{"amount 0", nil, pageGet("payment_id=P1&payment_amount=0&payment_currency=USD"), "payment_amount"},
		{"amount -1", nil, pageGet("payment_id=P1&payment_amount=-1&payment_currency=USD"), "payment_amount"},
		{"amount abc", nil, pageGet("payment_id=P1&payment_amount=abc&payment_currency=USD"), "payment_amount"},
		{"amount 010", nil, pageGet("payment_id=P1&payment_amount=010&payment_currency=USD"), "payment_amount"},
		{"amount +5", nil, pageGet("payment_id=P1&payment_amount=%2B5&payment_currency=USD"), "payment_amount"},
		{"amount 1e3", nil, pageGet("payment_id=P1&payment_amount=1e3&payment_currency=USD"), "payment_amount"},
		{"amount 19 digits", nil, pageGet("payment_id=P1&payment_amount=1000000000000000000&payment_currency=USD"), "payment_amount"},
		{"JSON amount 10.5", nil, pagePost("application/json", `{"payment_id":"P1","payment_amount":10.5,"payment_currency":"USD"}`), "payment_amount"},
		{"JSON amount 0", nil, pagePost("application/json", `{"payment_id":"P1","payment_amount":0,"payment_currency":"USD"}`), "payment_amount"},
		{"unknown project", nil, pageGet(ok + "&project_id=999"), "project_id"},
		{"two projects, none given", two, pageGet(ok), "project_id"},
		{"; in a value", nil, pageGet(ok + "&description=a%3Bb"), "description"},
		{"raw ; in a value", nil, pageGet(ok + "&description=a;b"), "description"},
		{"; in a key", nil, pageGet(ok + "&a%3Bb=1"), "parameter #4"},
		{"; in a form value", nil, pagePost("application/x-www-form-urlencoded", ok+"&description=a%3Bb"), "description"},
		{"; in a JSON value", nil, pagePost("application/json", `{"payment_id":"P;1","payment_amount":1,"payment_currency":"USD"}`), "payment_id"},
		{"signature given", nil, pageGet(ok + "&signature=abc"), "signature"},
		{"nested JSON object", nil, pagePost("application/json", `{"payment_id":"P1","payment_amount":1,"payment_currency":"USD","customer":{"id":"c"}}`), "customer"},
		{"nested JSON array", nil, pagePost("application/json", `{"payment_id":"P1","payment_amount":1,"payment_currency":"USD","items":[1]}`), "items"},
		{"duplicate query key", nil, pageGet(ok + "&payment_id=P2"), "payment_id"},
		{"duplicate query key, encoded", nil, pageGet(ok + "&payment%5Fid=P2"), "payment_id"},
		{"duplicate form key", nil, pagePost("application/x-www-form-urlencoded", ok+"&payment_currency=EUR"), "payment_currency"},
		{"bad URL encoding", nil, pageGet(ok + "&description=%zz"), "description"},
		{"other Content-Type", nil, pagePost("text/plain", ok), "Content-Type"},
		{"malformed JSON", nil, pagePost("application/json", `{"payment_id":"P1",`), ""},
		{"duplicate JSON key", nil, pagePost("application/json", `{"payment_id":"P1","payment_id":"P2","payment_amount":1,"payment_currency":"USD"}`), ""},
		{"JSON array", nil, pagePost("application/json", `[{"payment_id":"P1"}]`), ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := paymentPageHandler(t, c.mod)
			w := serve(h, c.req, nil)
			if w.Code != http.StatusBadRequest {
				t.Fatalf("status %d, want 400: %s", w.Code, w.Body)
			}
			if f := errorField(t, w); f != c.field {
				t.Fatalf("field %q, want %q: %s", f, c.field, w.Body)
			}
			if strings.Contains(w.Body.String(), `"url":`) || strings.Contains(w.Body.String(), `"signature":`) {
				t.Fatalf("a rejected request got a URL: %s", w.Body)
			}
		})
	}
}

func TestPaymentPageClientMethodAndSize(t *testing.T) {
	h := paymentPageHandler(t, func(h *Handler) { h.MaxBody = 256 })
	big := "payment_id=P1&payment_amount=100&payment_currency=USD&description=" + strings.Repeat("x", 300)

	r := pageGet(pageQuery)
	r.RemoteAddr = "192.0.2.1:1234"
	r.Header.Set("X-Forwarded-For", "127.0.0.1")
	if w := serve(h, r, nil); w.Code != http.StatusForbidden || strings.Contains(w.Body.String(), `"url":`) {
		t.Fatalf("non-loopback client: %d %s", w.Code, w.Body)
	}
	if w := serve(h, post("/pay", []byte(`{"payment_id":"P1","payment_amount":1,"payment_currency":"USD"}`)), nil); w.Code != http.StatusForbidden {
		t.Fatalf("httptest's default client 192.0.2.1: %d", w.Code)
	}

	for _, m := range []string{http.MethodPut, http.MethodDelete, http.MethodPatch} {
		w := serve(h, httptestRequest(m, "/pay?"+pageQuery), nil)
		if w.Code != http.StatusMethodNotAllowed || w.Header().Get("Allow") != "GET, POST" {
			t.Fatalf("%s: %d, Allow %q", m, w.Code, w.Header().Get("Allow"))
		}
		errorField(t, w)
	}

	r = pagePost("application/x-www-form-urlencoded", big)
	if w := serve(h, r, nil); w.Code != http.StatusRequestEntityTooLarge {
		t.Fatalf("declared length over max_body: %d", w.Code)
	}
	r = pagePost("application/x-www-form-urlencoded", big)
	r.ContentLength = -1
	if w := serve(h, r, nil); w.Code != http.StatusRequestEntityTooLarge {
		t.Fatalf("streamed body over max_body: %d", w.Code)
	}
	r = pagePost("application/x-www-form-urlencoded", big[:250])
	if w := serve(h, r, nil); w.Code != http.StatusOK {
		t.Fatalf("body within max_body: %d %s", w.Code, w.Body)
	}
}

// FuzzPaymentPageQuery runs arbitrary query strings through the Payment
// Page parser and signer: no panic, every refusal names a field, and every
// success is a URL whose signature verifies over the parameters it carries.
func FuzzPaymentPageQuery(f *testing.F) {
	for _, seed := range []string{
		pageQuery,
		"payment_id=1&payment_amount=1&payment_currency=USD",
		"payment_id=1&payment_amount=1&payment_currency=USD&project_id=210&frame_mode=iframe",
		"payment_id=1&payment_amount=1&payment_currency=USD&project_id=211",
		"payment_id=a%3Ab&payment_amount=999999999999999999&payment_currency=%E2%82%AC&a:b:=c%00d",
		"payment_id=1&&payment_amount=1&payment_currency=USD&x&=y&%20=%2B",
		"payment_id=1&payment_amount=1&payment_currency=USD&signature=x",
		"payment_id=1&payment_amount=1&payment_currency=USD&d=a;b",
		"payment_id=%zz",
		"payment_id=1&payment_id=2",
	} {
		f.Add(seed)
	}
	h := paymentPageHandler(f, func(h *Handler) { h.BaseURL = "https://pp.example.test/base" })
	f.Fuzz(func(t *testing.T, q string) {
		pairs, rf := parseQueryOrdered(q)
		if rf != nil {
			if rf.field == "" || rf.status != http.StatusBadRequest {
				t.Fatalf("parse refusal without a field: %+v", rf)
			}
			return
		}
		signed, sig, p, rf := h.signPaymentPage(pairs)
		if rf != nil {
			if rf.field == "" || rf.msg == "" {
				t.Fatalf("sign refusal without a field: %+v", rf)
			}
			return
		}
		out := pairs
		if _, given := findPair(pairs, "project_id"); !given {
			out = append(slices.Clip(pairs), [2]string{"project_id", p.id})
		}
		u, err := url.Parse(signed)
		if err != nil || u.Scheme+"://"+u.Host+u.Path != "https://pp.example.test/base/payment" {
			t.Fatalf("signed URL %q: %v", signed, err)
		}
		params, _ := urlParams(t, u.RawQuery)
		last := len(params) - 1
		if params[last] != [2]string{"signature", sig} {
			t.Fatalf("URL ends in %q, want the signature %q", params[last], sig)
		}
		params = params[:last]
		if !slices.Equal(params, out) {
			t.Fatalf("URL carries %q, signer returned %q", params, out)
		}
		if signature.Sign(canonicalPairs(params), testSecret) != sig {
			t.Fatalf("signature does not verify over the URL's parameters %q", params)
		}
		if !isPositiveInteger(lookupPair(params, "payment_amount")) || lookupPair(params, "payment_id") == "" ||
			lookupPair(params, "payment_currency") == "" {
			t.Fatalf("signed without the required parameters: %q", params)
		}
		seen := map[string]bool{}
		for _, p := range params {
			if strings.Contains(p[0]+p[1], ";") || p[0] == "signature" {
				t.Fatalf("signed a forbidden parameter %q", p)
			}
			if seen[p[0]] {
				t.Fatalf("parameter %q appears twice in %q", p[0], params)
			}
			seen[p[0]] = true
		}
	})
}

// An empty project_id is an error, not a reason to add a second one.
func TestPaymentPageEmptyProjectID(t *testing.T) {
	h := paymentPageHandler(t, nil)
	for _, q := range []string{
		"payment_id=P1&payment_amount=100&payment_currency=USD&project_id=",
		"payment_id=P1&payment_amount=100&payment_currency=USD&project_id",
	} {
		r := httptestRequest(http.MethodGet, "/pay?"+q)
		w := serve(h, r, nil)
		if w.Code != http.StatusBadRequest || !strings.Contains(w.Body.String(), `"field":"project_id"`) {
			t.Errorf("%s: %d %s", q, w.Code, w.Body)
		}
	}
}

// benchQuery is a typical shop's Payment Page request.
const benchQuery = "payment_id=ORDER_123&payment_amount=129900&payment_currency=EUR&customer_id=customer123" +
	"&customer_email=customer%40example.com&payment_description=Order+123456+from+the+shop&language_code=en" +
	"&force_payment_method=card&merchant_success_url=https%3A%2F%2Fshop.example.com%2Fok" +
	"&merchant_fail_url=https%3A%2F%2Fshop.example.com%2Ffail"

// benchWriter is a reusable ResponseWriter, so a benchmark measures the
// handler rather than a recorder.
type benchWriter struct {
	header http.Header
	code   int
	body   []byte
}

func (w *benchWriter) Header() http.Header         { return w.header }
func (w *benchWriter) WriteHeader(code int)        { w.code = code }
func (w *benchWriter) Write(p []byte) (int, error) { w.body = append(w.body, p...); return len(p), nil }

func (w *benchWriter) reset() {
	clear(w.header)
	w.code, w.body = 0, w.body[:0]
}

// benchPage is a payment_page handler without journal or logs, and a
// benchQuery request prepared as Caddy's server prepares it.
func benchPage(t testing.TB) (*Handler, *http.Request, *benchWriter) {
	h := paymentPageHandler(t, nil)
	h.journal = nil         // measure the handler, not the journal
	h.logger = zap.NewNop() // the observer would keep every line in memory
	w := &benchWriter{header: http.Header{}}
	r := caddyhttp.PrepareRequest(pageGet(benchQuery), caddy.NewReplacer(), w, &caddyhttp.Server{})
	return h, r, w
}

var nopNext = caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil })

// BenchmarkPaymentPage is one GET through the whole payment_page handler:
// the allow check, parsing, signing and the JSON answer.
func BenchmarkPaymentPage(b *testing.B) {
	h, r, w := benchPage(b)
	b.ReportAllocs()
	for b.Loop() {
		w.reset()
		if err := h.ServeHTTP(w, r, nopNext); err != nil || w.code != http.StatusOK {
			b.Fatalf("%d %s %v", w.code, w.body, err)
		}
	}
}

// BenchmarkRespondBaseline writes BenchmarkPaymentPage's answer as a fixed
// body with the same headers, as a static respond would: the floor.
func BenchmarkRespondBaseline(b *testing.B) {
	h, r, w := benchPage(b)
	if err := h.ServeHTTP(w, r, nopNext); err != nil || w.code != http.StatusOK {
		b.Fatalf("%d %s %v", w.code, w.body, err)
	}
	answer := slices.Clone(w.body)
	respond := caddyhttp.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) error {
		respond.JSON(w, http.StatusOK, answer)
		return nil
	})
	b.ReportAllocs()
	for b.Loop() {
		w.reset()
		if err := respond.ServeHTTP(w, r); err != nil || w.code != http.StatusOK {
			b.Fatalf("%d %v", w.code, err)
		}
	}
}

// TestPaymentPageAllocs keeps a signed Payment Page answer, journal and
// logs aside, within a budget: the header values (three Sets and the
// length), the signature as a string, and each escaped parameter.
func TestPaymentPageAllocs(t *testing.T) {
	if raceDetector {
		t.Skip("the race detector allocates on its own account")
	}
	const budget = 16
	h, r, w := benchPage(t)
	n := testing.AllocsPerRun(200, func() {
		w.reset()
		if err := h.ServeHTTP(w, r, nopNext); err != nil || w.code != http.StatusOK {
			t.Fatalf("%d %s %v", w.code, w.body, err)
		}
	})
	if n > budget {
		t.Fatalf("%.1f allocations per request, budget %d", n, budget)
	}
}

// The event outlives the request (the journal keeps it): its strings must
// not share the pooled buffers the next request decodes into.
func TestPaymentPageEventOwnsItsStrings(t *testing.T) {
	h := paymentPageHandler(t, nil)
	core, logs := observer.New(zap.InfoLevel)
	h.logger = zap.New(core)
	for _, id := range []string{"A%20one", "B%20two"} {
		q := "payment_id=" + id + "&payment_amount=1&payment_currency=U%53D&force_payment_method=c%61rd"
		if w := serve(h, pageGet(q), nil); w.Code != http.StatusOK {
			t.Fatalf("%d %s", w.Code, w.Body)
		}
	}
	entries := logs.All()
	if len(entries) != 2 {
		t.Fatalf("%d log entries", len(entries))
	}
	for i, want := range []string{"A one", "B two"} {
		if got := entries[i].ContextMap()["payment_id"]; got != want {
			t.Errorf("request %d logged payment_id %q, want %q", i, got, want)
		}
	}
}

// Concurrent requests share the pools, never a buffer: each answer is
// signed over its own parameters.
func TestPaymentPageConcurrent(t *testing.T) {
	h := paymentPageHandler(t, nil)
	h.logger = zap.NewNop()
	var answers [4][50]*httptest.ResponseRecorder
	var wg sync.WaitGroup
	for g := range answers {
		wg.Go(func() {
			for i := range answers[g] {
				q := fmt.Sprintf("payment_id=O%%20%d-%d&payment_amount=1&payment_currency=USD", g, i)
				answers[g][i] = serve(h, pageGet(q), nil)
			}
		})
	}
	wg.Wait()
	for g := range answers {
		for i, w := range answers[g] {
			u, _ := signedAnswer(t, w)
			checkSignedURL(t, u, defaultBaseURL, testSecret, [][2]string{
				{"payment_id", fmt.Sprintf("O %d-%d", g, i)}, {"payment_amount", "1"}, {"payment_currency", "USD"}, {"project_id", "210"},
			})
		}
	}
}

// parseQueryOrdered is parseQuery into a scratch of its own, not pooled:
// the pairs outlive it.
func parseQueryOrdered(q string) ([][2]string, *refusal) {
	return new(signScratch).parseQuery(q)
}

func lookupPair(pairs [][2]string, key string) string {
	v, _ := findPair(pairs, key)
	return v
}

// signPaymentPage is appendSignedPage with the URL and signature copied
// out of a pooled scratch.
func (h *Handler) signPaymentPage(pairs [][2]string) (signedURL, signature string, _ *project, _ *refusal) {
	s := getScratch()
	defer s.release()
	p, rf := h.appendSignedPage(s, pairs)
	if rf != nil {
		return "", "", nil, rf
	}
	return string(s.url), string(s.sig[:]), p, nil
}

// TestPaymentPageAgreesWithSignaturePackage: the signature the handler
// puts in a Payment Page URL is signature.SignPaymentPage's, and what
// the handler refuses to sign, the package refuses too.
func TestPaymentPageAgreesWithSignaturePackage(t *testing.T) {
	h := paymentPageHandler(t, nil)
	signed := 0
	for _, pairs := range [][][2]string{
		{{"payment_id", "P1"}, {"payment_amount", "100"}, {"payment_currency", "USD"}, {"project_id", "210"}},
		{{"payment_id", "P 2"}, {"payment_amount", "5"}, {"payment_currency", "EUR"}, {"frame_mode", "popup"}, {"customer_id", "c:1"}, {"project_id", "210"}},
		{{"payment_id", "P3"}, {"payment_amount", "1"}, {"payment_currency", "USD"}, {"project_id", "210"}, {"a:b", "1"}},
		{{"payment_id", "P4"}, {"payment_amount", "1"}, {"payment_currency", "USD"}, {"project_id", "210"}, {"note", "x;y"}},
	} {
		q := url.Values{}
		for _, p := range pairs {
			q.Set(p[0], p[1])
		}
		want, werr := signature.SignPaymentPage(q, testSecret)
		_, got, _, rf := h.signPaymentPage(pairs)
		if (rf != nil) != (werr != nil) || (rf == nil && got != want) {
			t.Errorf("%q: the handler signs %q (refusal %v), the package %q (%v)", pairs, got, rf, want, werr)
		}
		if rf == nil {
			signed++
		}
	}
	if signed != 2 {
		t.Fatalf("%d of the 4 signed, want 2", signed)
	}
}
