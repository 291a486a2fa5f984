package ecommpay

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/canon"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/journal"
	"github.com/caddy-ecommpay/caddy-ecommpay/signature"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// gateSale is an unsigned Gate request as a merchant app sends it: no
// general.project_id, a stale general.signature, number literals that
// must pass byte for byte, and a top-level project_id that is ordinary data.
const gateSale = `{"general":{"payment_id":"ORDER-G1","signature":"stale-signature-from-the-app"},` +
	`"customer":{"id":"customer-1","ip_address":"198.51.100.7"},` +
	`"payment":{"amount":1000,"currency":"CNY","rate":1.50,"big":123456789012345678901,"ratio":2.5e-3},` +
	`"project_id":999}`

// gateSaleCanonical is the canonical string of gateSale once project 210
// is filled in, written out by hand from the PHP reference rules.
const gateSaleCanonical = "customer:id:customer-1;customer:ip_address:198.51.100.7;" +
	"general:payment_id:ORDER-G1;general:project_id:210;" +
	"payment:amount:1000;payment:big:1.2345678901235E+20;payment:currency:CNY;payment:rate:1.5;payment:ratio:0.0025;" +
	"project_id:999"

func gateHandler(t testing.TB, mod func(*Handler)) *Handler {
	t.Helper()
	h := &Handler{Mode: modeGate, Projects: []Project{{ID: "210", Secrets: []string{testSecret}}}}
	if mod != nil {
		mod(h)
	}
	provision(t, h)
	return h
}

// localPost is post from a loopback client, which the signing modes allow.
func localPost(target string, body []byte) *http.Request {
	r := post(target, body)
	r.RemoteAddr = "127.0.0.1:40000"
	return r
}

// gateSignature parses a forwarded Gate body, takes general.signature out
// and returns it with the canonical string of the rest.
func gateSignature(t testing.TB, body []byte) (canonical, sig string) {
	t.Helper()
	d, err := canon.Parse(body, canon.Limits{})
	if err != nil {
		t.Fatalf("forwarded body does not parse: %v\n%s", err, body)
	}
	defer d.Release()
	g := d.Get(d.Root(), "general")
	s := d.Get(g, "signature")
	if s == canon.None || d.Kind(s) != canon.String {
		t.Fatalf("forwarded body has no general.signature: %s", body)
	}
	sig = d.Text(s)
	d.Delete(g, "signature")
	canonical, err = signature.Canonical(d.AppendJSON(nil))
	if err != nil {
		t.Fatal(err)
	}
	return canonical, sig
}

func TestGateSignsAndForwards(t *testing.T) {
	app := newTestApp(t)
	h := gateHandler(t, nil)
	w := serve(h, localPost("/v2/payment/wallet/wechat/sale", []byte(gateSale)), proxyTo(t, app.srv.URL))
	if w.Code != http.StatusOK || w.Body.String() != "OK" {
		t.Fatalf("client got %d %q, want the upstream's 200 OK", w.Code, w.Body)
	}
	got := app.received()
	if len(got) != 1 {
		t.Fatalf("upstream got %d requests, want 1", len(got))
	}
	body := got[0].body

	canonical, sig := gateSignature(t, body)
	if canonical != gateSaleCanonical {
		t.Fatalf("signed content differs:\n got %s\nwant %s", canonical, gateSaleCanonical)
	}
	if want := signature.Sign(canonical, testSecret); sig != want {
		t.Fatalf("general.signature %q does not verify (want %q)", sig, want)
	}
	if strings.Contains(string(body), "stale-signature") {
		t.Fatal("the app's stale signature was forwarded")
	}
	// The signature package signs as the handler does: the forwarded
	// body, signed again, comes back byte for byte.
	if again, err := signature.SignGate(body, testSecret); err != nil || string(again) != string(body) {
		t.Fatalf("signature.SignGate differs from the handler (%v):\n%s\n%s", err, again, body)
	}

	// The exact bytes: key order kept, project_id filled in as a number
	// after the existing general members, the signature last in general.
	want := `{"general":{"payment_id":"ORDER-G1","project_id":210,"signature":"` + sig + `"},` +
		`"customer":{"id":"customer-1","ip_address":"198.51.100.7"},` +
		`"payment":{"amount":1000,"currency":"CNY","rate":1.50,"big":123456789012345678901,"ratio":2.5e-3},` +
		`"project_id":999}`
	if string(body) != want {
		t.Fatalf("forwarded body:\n%s\nwant\n%s", body, want)
	}
	for _, lit := range []string{`"amount":1000`, `"rate":1.50`, `"big":123456789012345678901`, `"ratio":2.5e-3`, `"project_id":999}`, `"project_id":210,`} {
		if !strings.Contains(string(body), lit) {
			t.Errorf("number literal %s was not kept byte for byte", lit)
		}
	}
	if cl := got[0].header.Get("Content-Length"); cl != strconv.Itoa(len(body)) {
		t.Fatalf("upstream Content-Length %q for a %d-byte body", cl, len(body))
	}
	if te := got[0].header.Get("Transfer-Encoding"); te != "" {
		t.Fatalf("upstream got Transfer-Encoding %q", te)
	}
	if ct := got[0].header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("upstream Content-Type %q", ct)
	}
}

func TestGateStringProjectIDAndTopLevelSignature(t *testing.T) {
	app := newTestApp(t)
	h := gateHandler(t, func(h *Handler) { h.Projects[0].ID = "shop-eu" })
	body := `{"signature":"top-level-stale","general":{"payment_id":"P2"}}`
	w := serve(h, localPost("/v2/payment/card/sale", []byte(body)), proxyTo(t, app.srv.URL))
	if w.Code != http.StatusOK || len(app.received()) != 1 {
		t.Fatalf("%d, %d forwarded", w.Code, len(app.received()))
	}
	got := string(app.received()[0].body)
	canonical, sig := gateSignature(t, []byte(got))
	if canonical != "general:payment_id:P2;general:project_id:shop-eu" || sig != signature.Sign(canonical, testSecret) {
		t.Fatalf("canonical %q, signature %q", canonical, sig)
	}
	if want := `{"general":{"payment_id":"P2","project_id":"shop-eu","signature":"` + sig + `"}}`; got != want {
		t.Fatalf("forwarded %s\nwant %s", got, want)
	}
}

func TestGateTwoProjects(t *testing.T) {
	const otherSecret = "second-project-secret-02"
	two := func(h *Handler) {
		h.Projects = append(h.Projects, Project{ID: "211", Secrets: []string{otherSecret, "older-secret"}})
	}
	app := newTestApp(t)
	h := gateHandler(t, two)
	next := proxyTo(t, app.srv.URL)

	for _, id := range []string{`211`, `"211"`} {
		body := `{"general":{"project_id":` + id + `,"payment_id":"P-211"},"payment":{"amount":5}}`
		w := serve(h, localPost("/v2/payment/card/sale", []byte(body)), next)
		if w.Code != http.StatusOK {
			t.Fatalf("project_id %s: %d %s", id, w.Code, w.Body)
		}
		got := app.received()
		fwd := got[len(got)-1].body
		canonical, sig := gateSignature(t, fwd)
		if sig != signature.Sign(canonical, otherSecret) {
			t.Fatalf("project_id %s: not signed with project 211's first secret", id)
		}
		if sig == signature.Sign(canonical, testSecret) {
			t.Fatalf("project_id %s: signed with project 210's secret", id)
		}
		if !strings.HasPrefix(string(fwd), `{"general":{"project_id":`+id+`,"payment_id":"P-211","signature":`) {
			t.Fatalf("project_id %s: general rewritten: %s", id, fwd)
		}
	}

	// Without general.project_id the handler cannot pick a secret.
	n := len(app.received())
	w := serve(h, localPost("/v2/payment/card/sale", []byte(gateSale)), next)
	if w.Code != http.StatusBadRequest || errorField(t, w) != "general.project_id" {
		t.Fatalf("no project_id with two projects: %d %s", w.Code, w.Body)
	}
	if len(app.received()) != n {
		t.Fatal("an unsigned request was forwarded")
	}
}

// errorField decodes a JSON error answer and returns its field.
func errorField(t testing.TB, w *httptest.ResponseRecorder) string {
	t.Helper()
	var e struct {
		Error string `json:"error"`
		Field string `json:"field"`
	}
	if ct := w.Header().Get("Content-Type"); ct != "application/json" {
		t.Fatalf("error answer has Content-Type %q: %s", ct, w.Body)
	}
	if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || e.Error == "" {
		t.Fatalf("error answer is not {\"error\":...}: %v %s", err, w.Body)
	}
	return e.Field
}

func TestGateRejectsWithoutForwarding(t *testing.T) {
	app := newTestApp(t)
	h := gateHandler(t, func(h *Handler) { h.MaxBody = 512 })
	next := proxyTo(t, app.srv.URL)
	big := []byte(`{"general":{"payment_id":"X"},"pad":"` + strings.Repeat("x", 600) + `"}`)

	cases := []struct {
		name   string
		req    func() *http.Request
		status int
		field  string
	}{
		{"unknown project", func() *http.Request {
			return localPost("/g", []byte(`{"general":{"project_id":404,"payment_id":"X"}}`))
		}, http.StatusBadRequest, "general.project_id"},
		{"project_id not a scalar", func() *http.Request {
			return localPost("/g", []byte(`{"general":{"project_id":{"id":210}}}`))
		}, http.StatusBadRequest, "general.project_id"},
		{"malformed JSON", func() *http.Request {
			return localPost("/g", []byte(`{"general":{"payment_id":"X"}`))
		}, http.StatusBadRequest, ""},
		{"trailing data", func() *http.Request {
			return localPost("/g", []byte(`{"general":{}} {}`))
		}, http.StatusBadRequest, ""},
		{"duplicate key", func() *http.Request {
			return localPost("/g", []byte(`{"general":{"payment_id":"X","payment_id":"Y"}}`))
		}, http.StatusBadRequest, ""},
		{"array body", func() *http.Request {
			return localPost("/g", []byte(`[{"general":{"payment_id":"X"}}]`))
		}, http.StatusBadRequest, ""},
		{"string body", func() *http.Request { return localPost("/g", []byte(`"general"`)) }, http.StatusBadRequest, ""},
		{"empty body", func() *http.Request { return localPost("/g", nil) }, http.StatusBadRequest, ""},
		{"general is a string", func() *http.Request {
			return localPost("/g", []byte(`{"general":"x"}`))
		}, http.StatusBadRequest, "general"},
		{"general is an array", func() *http.Request {
			return localPost("/g", []byte(`{"general":[{"payment_id":"X"}]}`))
		}, http.StatusBadRequest, "general"},
		{"over max_body, declared", func() *http.Request { return localPost("/g", big) }, http.StatusRequestEntityTooLarge, ""},
		{"over max_body, streamed", func() *http.Request {
			r := localPost("/g", big)
			r.ContentLength = -1
			return r
		}, http.StatusRequestEntityTooLarge, ""},
		{"GET", func() *http.Request {
			r := httptest.NewRequest(http.MethodGet, "/g", nil)
			r.RemoteAddr = "127.0.0.1:40000"
			return r
		}, http.StatusMethodNotAllowed, ""},
		{"non-loopback client", func() *http.Request { return post("/g", []byte(gateSale)) }, http.StatusForbidden, ""},
		{"non-loopback client claiming loopback", func() *http.Request {
			r := post("/g", []byte(gateSale))
			r.RemoteAddr = "203.0.113.9:5555"
			r.Header.Set("X-Forwarded-For", "127.0.0.1")
			r.Header.Set("X-Real-IP", "127.0.0.1")
			return r
		}, http.StatusForbidden, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			w := serve(h, c.req(), next)
			if w.Code != c.status {
				t.Fatalf("status %d, want %d: %s", w.Code, c.status, w.Body)
			}
			if f := errorField(t, w); f != c.field {
				t.Fatalf("field %q, want %q", f, c.field)
			}
			if c.status == http.StatusMethodNotAllowed && w.Header().Get("Allow") != "POST" {
				t.Fatalf("Allow %q", w.Header().Get("Allow"))
			}
			if n := len(app.received()); n != 0 {
				t.Fatalf("a rejected request reached the upstream (%d)", n)
			}
		})
	}
}

// unreadBody fails the test if the handler reads it.
type unreadBody struct{ t testing.TB }

func (b unreadBody) Read([]byte) (int, error) {
	b.t.Error("a body declared over max_body was read")
	return 0, io.ErrUnexpectedEOF
}

func (unreadBody) Close() error { return nil }

func TestGateRefusesDeclaredOversizeUnread(t *testing.T) {
	h := gateHandler(t, func(h *Handler) { h.MaxBody = 512 })
	r := localPost("/g", nil)
	r.Body, r.ContentLength = unreadBody{t}, 513
	if w := serve(h, r, nil); w.Code != http.StatusRequestEntityTooLarge {
		t.Fatalf("%d %s", w.Code, w.Body)
	}
}

func TestGateJSONLimits(t *testing.T) {
	app := newTestApp(t)
	h := gateHandler(t, func(h *Handler) { h.MaxDepth = 3; h.MaxString = 16 })
	next := proxyTo(t, app.srv.URL)
	for _, body := range []string{
		`{"general":{"payment_id":"X"},"a":{"b":{"c":{}}}}`,
		`{"general":{"payment_id":"` + strings.Repeat("y", 40) + `"}}`,
	} {
		if w := serve(h, localPost("/g", []byte(body)), next); w.Code != http.StatusRequestEntityTooLarge {
			t.Fatalf("%s: %d %s", body, w.Code, w.Body)
		}
	}
	if len(app.received()) != 0 {
		t.Fatal("a body over the JSON limits was forwarded")
	}
	if w := serve(h, localPost("/g", []byte(`{"general":{"payment_id":"X"},"a":{"b":1}}`)), next); w.Code != http.StatusOK {
		t.Fatalf("a body within the limits: %d %s", w.Code, w.Body)
	}
}

func TestGateAllowList(t *testing.T) {
	app := newTestApp(t)
	h := gateHandler(t, func(h *Handler) { h.Allow = []string{"10.0.0.0/8", "2001:db8::1"} })
	next := proxyTo(t, app.srv.URL)
	for _, c := range []struct {
		remote string
		status int
	}{
		{"10.1.2.3:40000", http.StatusOK},
		{"[::ffff:10.9.9.9]:40000", http.StatusOK},
		{"[2001:db8::1]:40000", http.StatusOK},
		{"127.0.0.1:40000", http.StatusForbidden}, // allow replaces the loopback default
		{"[::1]:40000", http.StatusForbidden},
		{"11.0.0.1:40000", http.StatusForbidden},
		{"[2001:db8::2]:40000", http.StatusForbidden},
	} {
		before := len(app.received())
		r := post("/v2/payment/card/sale", []byte(gateSale))
		r.RemoteAddr = c.remote
		w := serve(h, r, next)
		forwarded := len(app.received()) - before
		if w.Code != c.status || forwarded != map[bool]int{true: 1, false: 0}[c.status == http.StatusOK] {
			t.Fatalf("%s: status %d, forwarded %d; want %d", c.remote, w.Code, forwarded, c.status)
		}
	}
}

// Requests in TLS early data could be replayed: the signing modes answer
// 425 until the handshake is complete, and forward nothing.
func TestSigningRefusesTLSEarlyData(t *testing.T) {
	app := newTestApp(t)
	gate := gateHandler(t, nil)
	page := paymentPageHandler(t, nil)
	next := proxyTo(t, app.srv.URL)
	for _, done := range []bool{false, true} {
		want := map[bool]int{false: http.StatusTooEarly, true: http.StatusOK}[done]
		r := localPost("/g", []byte(gateSale))
		r.TLS = &tls.ConnectionState{HandshakeComplete: done}
		if w := serve(gate, r, next); w.Code != want {
			t.Fatalf("gate, handshake complete %v: %d %s", done, w.Code, w.Body)
		}
		r = pageGet(pageQuery)
		r.TLS = &tls.ConnectionState{HandshakeComplete: done}
		w := serve(page, r, nil)
		if w.Code != want || (!done && strings.Contains(w.Body.String(), `"url":`)) {
			t.Fatalf("payment_page, handshake complete %v: %d %s", done, w.Code, w.Body)
		}
	}
	if n := len(app.received()); n != 1 {
		t.Fatalf("upstream got %d requests, want only the one after the handshake", n)
	}
	// A client outside allow is refused as such, early data or not.
	r := post("/g", []byte(gateSale))
	r.TLS = &tls.ConnectionState{}
	if w := serve(gate, r, next); w.Code != http.StatusForbidden {
		t.Fatalf("non-loopback early data: %d", w.Code)
	}
}

func TestGateUpstreamDown(t *testing.T) {
	h := gateHandler(t, nil)
	w := serve(h, localPost("/g", []byte(gateSale)), proxyTo(t, closedPort(t)))
	if w.Code != http.StatusBadGateway {
		t.Fatalf("upstream down: %d", w.Code)
	}
}

// BenchmarkGateSign is the whole gate path for a typical request: the
// allow check, reading, parsing, filling project_id, signing and writing
// the body back, with a next handler that does nothing. It includes
// Caddy's per-request setup (PrepareRequest) and a response recorder, not
// the journal.
func BenchmarkGateSign(b *testing.B) {
	h := gateHandler(b, nil)
	h.logger = zap.NewNop() // the observer would keep every line in memory
	h.journal = nil         // measure the handler, not the journal
	body := []byte(gateSale)
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		r := httptestRequest(http.MethodPost, "/v2/payment/wallet/wechat/sale")
		r.Body, r.ContentLength = io.NopCloser(bytes.NewReader(body)), int64(len(body))
		r.Header.Set("Content-Type", "application/json")
		w := serve(h, r, nil)
		if w.Code != http.StatusOK {
			b.Fatalf("%d %s", w.Code, w.Body)
		}
	}
}

// The request next gets is what Header.Set and io.NopCloser(bytes.Reader)
// made of it before the pooled signer: same header values, a body the
// transport knows to be in memory.
func TestGateForwardedRequestShape(t *testing.T) {
	h := gateHandler(t, nil)
	var got *http.Request
	var body []byte
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		got = r
		body, _ = io.ReadAll(r.Body)
		return nil
	})
	r := localPost("/v2/payment/card/sale", []byte(gateSale))
	r.Header.Set("Content-Type", "application/json; charset=utf-8")
	r.Header.Add("Content-Length", "1")
	r.TransferEncoding = []string{"chunked"}
	if w := serve(h, r, next); w.Code != http.StatusOK {
		t.Fatalf("%d %s", w.Code, w.Body)
	}
	if reflect.TypeOf(got.Body) != reflect.TypeOf(io.NopCloser(bytes.NewReader(nil))) {
		t.Fatalf("body is a %T", got.Body)
	}
	want := http.Header{"Content-Type": {"application/json"}, "Content-Length": {strconv.Itoa(len(body))}}
	for k, v := range want {
		if !slices.Equal(got.Header[k], v) {
			t.Errorf("%s: %q, want %q", k, got.Header[k], v)
		}
	}
	if got.ContentLength != int64(len(body)) || got.TransferEncoding != nil {
		t.Errorf("ContentLength %d for %d bytes, TransferEncoding %q", got.ContentLength, len(body), got.TransferEncoding)
	}
	got.Header.Add("Content-Length", "x") // must not write into the Content-Type value
	if got.Header.Get("Content-Type") != "application/json" {
		t.Fatal("header values share memory")
	}
}

func TestGateMethodMatchesSplit(t *testing.T) {
	reference := func(path string) string {
		parts := strings.Split(strings.Trim(path, "/"), "/")
		if len(parts) < 4 || len(parts) > 5 || parts[0] != "v2" || parts[1] != "payment" {
			return ""
		}
		return journal.TruncateUnverified(parts[len(parts)-2])
	}
	for _, p := range []string{
		"", "/", "/v2/payment/card/sale", "/v2/payment/wallet/wechat/sale", "v2/payment/wallet/wechat/sale/",
		"/v2/payment/a/b/c/d", "/v2/payment/sale", "/v2/payment//sale", "//v2/payment/x//", "/v2/payments/card/sale",
		"/v3/payment/card/sale", "/v2/payment/" + strings.Repeat("m", 300) + "/sale", "/v2/payment/card/sale?x=1",
	} {
		if got, want := gateMethod(p), reference(p); got != want {
			t.Errorf("%q: %q, want %q", p, got, want)
		}
	}
}

// BenchmarkGateHandler is BenchmarkGateSign without the per-request setup
// of Caddy and the recorder: one prepared request, reset between runs.
func BenchmarkGateHandler(b *testing.B) {
	h := gateHandler(b, nil)
	h.logger = zap.NewNop()
	h.journal = nil
	body := []byte(gateSale)
	src := bytes.NewReader(body)
	rc := io.NopCloser(src)
	ct := []string{"application/json"}
	w := &benchWriter{header: http.Header{}}
	r := caddyhttp.PrepareRequest(httptestRequest(http.MethodPost, "/v2/payment/wallet/wechat/sale"),
		caddy.NewReplacer(), w, &caddyhttp.Server{})
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		src.Reset(body)
		r.Body, r.ContentLength = rc, int64(len(body))
		r.Header["Content-Type"] = ct
		w.reset()
		if err := h.ServeHTTP(w, r, nopNext); err != nil || w.code != 0 {
			b.Fatalf("%d %s %v", w.code, w.body, err)
		}
	}
}
