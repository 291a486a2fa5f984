package ecommpay

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/canon"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/store"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// Unit tests of the guard against hostile input and faults; the hostile
// suite against the built Caddy is in integration/.

// ecommpay hangs up while the app is still working: the delivery runs on,
// the app's 2xx is committed, and the retry is a duplicate that does not
// reach the app again.
func TestCallbackHangUpStillCommitsTheAppsAnswer(t *testing.T) {
	app := newTestApp(t)
	app.delay.Store(int64(300 * time.Millisecond))
	h := callbackHandler(t, func(h *Handler) { h.Store = "memory" })
	next := proxyTo(t, app.srv.URL)
	body := sign(t, testSecret, saleSuccess)

	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	serve(h, post("/cb", body).WithContext(ctx), next)
	if n := len(app.received()); n != 1 {
		t.Fatalf("the app got %d deliveries, want 1", n)
	}
	w := serve(h, post("/cb", body), next)
	if w.Code != http.StatusOK || w.Header().Get(headerDuplicate) != "1" {
		t.Fatalf("retry: %d duplicate=%q, want a duplicate 200", w.Code, w.Header().Get(headerDuplicate))
	}
	if n := len(app.received()); n != 1 {
		t.Fatalf("the app got %d deliveries after the retry, want 1", n)
	}
}

// A chain that ends without writing a response (the proxy in another
// handle block) answers 502, logs why, and commits nothing.
func TestCallbackWithNothingAfterItIsNotCommitted(t *testing.T) {
	h := callbackHandler(t, func(h *Handler) { h.Store = "memory" })
	logs := provisionLogs(h)
	body := sign(t, testSecret, saleSuccess)
	w := serve(h, post("/cb", body), nil)
	if w.Code != http.StatusBadGateway {
		t.Fatalf("status %d, want 502", w.Code)
	}
	if logs.FilterMessageSnippet("nothing after `ecommpay callback`").Len() != 1 {
		t.Fatalf("no error naming the config mistake: %v", logs.All())
	}
	app := newTestApp(t)
	w = serve(h, post("/cb", body), proxyTo(t, app.srv.URL))
	if w.Code != http.StatusOK || w.Header().Get(headerDuplicate) != "" || len(app.received()) != 1 {
		t.Fatalf("the retry was not delivered: %d duplicate=%q app got %d", w.Code, w.Header().Get(headerDuplicate), len(app.received()))
	}
}

// provisionLogs swaps in an observed logger; provision has run already.
func provisionLogs(h *Handler) *observer.ObservedLogs {
	core, logs := observer.New(zap.DebugLevel)
	h.logger = zap.New(core)
	return logs
}

func signingRequest(remote string, hdr map[string]string) *http.Request {
	r := httptest.NewRequest(http.MethodGet, "/pay?payment_id=P1&payment_amount=100&payment_currency=USD", nil)
	r.RemoteAddr = remote
	for k, v := range hdr {
		r.Header[k] = []string{v} // as sent: no canonicalisation
	}
	return r
}

func TestSigningRefusesProxiedRequests(t *testing.T) {
	h := paymentPageHandler(t, nil)
	proxied := []map[string]string{
		{"X-Forwarded-For": "203.0.113.9"},
		{"X-Forwarded-Host": "shop.example"},
		{"Forwarded": "for=203.0.113.9"},
		{"Via": "1.1 caddy"},
		{"X-Real-Ip": "203.0.113.9"},
		{"Cf-Connecting-Ip": "203.0.113.9"},
		{"True-Client-Ip": "203.0.113.9"},
		{"X_forwarded_for": "203.0.113.9"},
		{"x-real-ip": "203.0.113.9"},
		{"CDN_LOOP": "cloudflare"},
		{"X-Forwarded-" + strings.Repeat("Long-", 20): "203.0.113.9"}, // longer than the folding buffer
	}
	for _, hdr := range proxied {
		if w := serve(h, signingRequest("127.0.0.1:5555", hdr), nil); w.Code != http.StatusForbidden {
			t.Errorf("%v from loopback: %d, want 403", hdr, w.Code)
		}
	}
	if w := serve(h, signingRequest("127.0.0.1:5555", nil), nil); w.Code != http.StatusOK {
		t.Fatalf("direct loopback: %d %s", w.Code, w.Body)
	}
	if w := serve(h, signingRequest("[::1]:5555", nil), nil); w.Code != http.StatusOK {
		t.Fatalf("direct ::1: %d %s", w.Code, w.Body)
	}

	// With allow_proxied, the forwarded request is judged by Caddy's
	// client IP.
	hp := paymentPageHandler(t, func(h *Handler) { h.AllowProxied = true })
	r := signingRequest("127.0.0.1:5555", map[string]string{"X-Forwarded-For": "127.0.0.1"})
	if w := serve(hp, r, nil); w.Code != http.StatusOK {
		t.Fatalf("allow_proxied: %d %s", w.Code, w.Body)
	}
}

// The peer decides, not the client IP Caddy derived from headers.
func TestSigningDecidesOnThePeer(t *testing.T) {
	h := paymentPageHandler(t, nil)
	w := httptest.NewRecorder()
	r := signingRequest("198.51.100.7:4444", nil)
	r = caddyhttp.PrepareRequest(r, caddy.NewReplacer(), w, &caddyhttp.Server{})
	caddyhttp.SetVar(r.Context(), caddyhttp.ClientIPVarKey, "127.0.0.1")
	_ = h.ServeHTTP(w, r, nil)
	if w.Code != http.StatusForbidden {
		t.Fatalf("a stranger whose derived client IP is loopback: %d, want 403", w.Code)
	}
}

func TestGateRefusesProxiedRequests(t *testing.T) {
	h := gateHandler(t, nil)
	r := localPost("/v2/payment/wallet/wechat/sale", []byte(`{"general":{"payment_id":"P"}}`))
	r.Header.Set("X-Forwarded-For", "203.0.113.9")
	if w := serve(h, r, nil); w.Code != http.StatusForbidden {
		t.Fatalf("proxied Gate request: %d, want 403", w.Code)
	}
}

// Client-sent X-Ecommpay-* headers in any spelling never reach the app,
// and Connection cannot make the proxy drop the module's own headers.
func TestCallbackHeadersCannotBeForged(t *testing.T) {
	app := newTestApp(t)
	h := callbackHandler(t, func(h *Handler) { h.Dedupe = "off" })
	r := post("/cb", sign(t, testSecret, saleSuccess))
	r.Header["X_Ecommpay_Event_Key"] = []string{"forged"}
	r.Header["x-ecommpay-project-id"] = []string{"forged"}
	r.Header["X-ECOMMPAY-REPLAY"] = []string{"1"}
	r.Header.Set("Connection", "keep-alive, X-Ecommpay-Event-Key, x_ecommpay_project_id, X-Ecommpay-Project-Id")
	if w := serve(h, r, proxyTo(t, app.srv.URL)); w.Code != http.StatusOK {
		t.Fatalf("status %d", w.Code)
	}
	got := app.received()[0].header
	for name, vals := range got {
		if isModuleHeader(name) && name != headerEventKey && name != headerProjectID {
			t.Errorf("the app got %s: %q", name, vals)
		}
		for _, v := range vals {
			if v == "forged" {
				t.Errorf("the app got a forged value in %s", name)
			}
		}
	}
	if !strings.HasPrefix(got.Get(headerEventKey), "210-") || got.Get(headerProjectID) != "210" {
		t.Fatalf("the module's headers did not reach the app: key %q project %q", got.Get(headerEventKey), got.Get(headerProjectID))
	}
}

// Members the signature does not cover never reach the app; the body it
// gets still verifies.
func TestCallbackDropsUnsignedMembers(t *testing.T) {
	app := newTestApp(t)
	h := callbackHandler(t, func(h *Handler) { h.Dedupe = "off"; h.QR = "off" })
	signed := sign(t, testSecret, strings.Replace(saleSuccess, `"operation":{`, `"operation":{"list":[{},2],`, 1))
	// frame_mode and signatures are outside the canonical string: adding
	// them keeps the signature valid. So are empty members, which stay.
	hostile := bytes.Replace(signed, []byte(`"payment":{`),
		[]byte(`"frame_mode":"iframe","extra":{},"payment":{"signature":"x","frame_mode":"popup","note":[],`), 1)
	hostile = bytes.Replace(hostile, []byte(`"operation":{"list":[{}`),
		[]byte(`"general":{"signature":"not the one that verified"},"operation":{"list":[{"frame_mode":1}`), 1)
	if !verifies(hostile, testSecret) {
		t.Fatal("test body does not verify")
	}
	if w := serve(h, post("/cb", hostile), proxyTo(t, app.srv.URL)); w.Code != http.StatusOK {
		t.Fatalf("status %d %s", w.Code, w.Body)
	}
	got := app.received()[0].body
	for _, s := range []string{"frame_mode", "not the one", `"signature":"x"`} {
		if bytes.Contains(got, []byte(s)) {
			t.Errorf("the app got %s: %s", s, got)
		}
	}
	if !bytes.Contains(got, []byte(`"list":[{},2]`)) || !bytes.Contains(got, []byte(`"extra":{}`)) || !bytes.Contains(got, []byte(`"note":[]`)) {
		t.Errorf("array positions or empty members changed: %s", got)
	}
	if !verifies(got, testSecret) {
		t.Fatalf("the app's body does not verify: %s", got)
	}

	// A body with nothing to drop reaches the app byte for byte.
	if w := serve(h, post("/cb", signed), proxyTo(t, app.srv.URL)); w.Code != http.StatusOK {
		t.Fatalf("status %d", w.Code)
	}
	if got := app.received()[1].body; !bytes.Equal(got, signed) {
		t.Fatalf("an untouched body changed:\n%s\n%s", got, signed)
	}
}

// Unverified fields are never logged at length.
func TestUnverifiedFieldsAreNotLoggedAtLength(t *testing.T) {
	h := callbackHandler(t, nil)
	logs := provisionLogs(h)
	long := strings.Repeat("A", 200<<10)
	body := []byte(`{"project_id":210,"payment":{"id":"` + long + `","status":"` + long + `"},"signature":"` + strings.Repeat("x", 88) + `"}`)
	if w := serve(h, post("/cb", body), nil); w.Code != http.StatusForbidden {
		t.Fatalf("status %d", w.Code)
	}
	for _, e := range logs.All() {
		line := e.Message + fmt.Sprint(e.ContextMap())
		if len(line) > 2048 {
			t.Fatalf("a log line of %d bytes for an unverified callback", len(line))
		}
	}
	if logs.Len() == 0 {
		t.Fatal("no log line")
	}
}

// Error answers never echo input.
func TestErrorAnswersDoNotEchoInput(t *testing.T) {
	const evil = "<script>evil</script>"
	gate := gateHandler(t, func(h *Handler) {
		h.Projects = append(h.Projects, Project{ID: "211", Secrets: []string{testSecret}})
	})
	page := paymentPageHandler(t, nil)
	cb := callbackHandler(t, nil)
	for name, w := range map[string]*httptest.ResponseRecorder{
		"gate unknown project":   serve(gate, localPost("/v2/x", []byte(`{"general":{"project_id":"`+evil+`"}}`)), nil),
		"gate duplicate key":     serve(gate, localPost("/v2/x", []byte(`{"`+evil+`":1,"`+evil+`":2}`)), nil),
		"page unknown project":   serve(page, signingRequest("127.0.0.1:1", nil).WithContext(context.Background()), nil),
		"page bad key":           serve(page, pageGet("payment_id=1&payment_amount=1&payment_currency=USD&"+evil+"=%zz"), nil),
		"callback duplicate key": serve(cb, post("/cb", []byte(`{"`+evil+`":1,"`+evil+`":2}`)), nil),
		"callback bad char":      serve(cb, post("/cb", []byte(`{"a":`+evil+`}`)), nil),
	} {
		if strings.Contains(w.Body.String(), "evil") {
			t.Errorf("%s: the answer echoes input: %s", name, w.Body)
		}
		if w.Code < 400 && name != "page unknown project" {
			t.Errorf("%s: status %d", name, w.Code)
		}
	}
}

// A QR Code Timeout too large for a Duration is clamped, not overflowed
// into an expired link.
func TestHugeQRCodeTimeoutIsClamped(t *testing.T) {
	h := callbackHandler(t, func(h *Handler) { h.QR = "url"; h.QRBaseURL = "https://shop.example/qr"; h.Dedupe = "off" })
	for _, secs := range []string{"1e12", "9223372036854775807", "1e300"} {
		body := strings.Replace(awaitingQR, `"data":"600"`, `"data":"`+secs+`"`, 1)
		d, err := canon.Parse([]byte(body), canon.Limits{})
		if err != nil {
			t.Fatal(err)
		}
		got := h.qrLifetime(d)
		d.Release()
		if got != maxQRTimeout {
			t.Errorf("QR Code Timeout %s: lifetime %v, want %v", secs, got, maxQRTimeout)
		}
	}
}

// With on_store_error forward, a callback is counted once, as forwarded.
func TestStoreErrorCountedOnce(t *testing.T) {
	app := newTestApp(t)
	h := callbackHandler(t, func(h *Handler) { h.OnStoreError = "forward" })
	h.store = failingStore{}
	before := testutil.ToFloat64(callbacksTotal.WithLabelValues("210", "forwarded"))
	beforeErr := testutil.ToFloat64(callbacksTotal.WithLabelValues("210", "store_error"))
	beforeOp := testutil.ToFloat64(storeErrorsTotal.WithLabelValues("claim"))
	if w := serve(h, post("/cb", sign(t, testSecret, saleSuccess)), proxyTo(t, app.srv.URL)); w.Code != http.StatusOK {
		t.Fatalf("status %d", w.Code)
	}
	if d := testutil.ToFloat64(callbacksTotal.WithLabelValues("210", "forwarded")) - before; d != 1 {
		t.Errorf("forwarded counted %v times", d)
	}
	if d := testutil.ToFloat64(callbacksTotal.WithLabelValues("210", "store_error")) - beforeErr; d != 0 {
		t.Errorf("also counted as store_error %v times", d)
	}
	if d := testutil.ToFloat64(storeErrorsTotal.WithLabelValues("claim")) - beforeOp; d != 1 {
		t.Errorf("store_errors_total{op=claim} moved by %v", d)
	}
}

type failingStore struct{}

func (failingStore) Claim(context.Context, string, time.Duration) (store.ClaimState, string, error) {
	return store.InFlight, "", io.ErrUnexpectedEOF
}
func (failingStore) Commit(context.Context, string, string, time.Duration) error {
	return io.ErrUnexpectedEOF
}
func (failingStore) Release(context.Context, string, string) error { return io.ErrUnexpectedEOF }

func TestShortTTLWarns(t *testing.T) {
	for ttl, warns := range map[time.Duration]bool{24 * time.Hour: true, 10 * 24 * time.Hour: true, 11 * 24 * time.Hour: false, 0: false} {
		h := &Handler{Mode: modeCallback, TTL: caddy.Duration(ttl)}
		logs := provisionLogs(h)
		if err := h.provisionCallback(); err != nil {
			t.Fatal(err)
		}
		if got := logs.FilterMessageSnippet("ttl is shorter").Len() == 1; got != warns {
			t.Errorf("ttl %v: warned %v, want %v", ttl, got, warns)
		}
	}
}

// A sender that stalls mid-body is cut off after read_timeout.
func TestSlowCallbackBodyTimesOut(t *testing.T) {
	h := callbackHandler(t, func(h *Handler) { h.ReadTimeout = caddy.Duration(300 * time.Millisecond) })
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r = caddyhttp.PrepareRequest(r, caddy.NewReplacer(), w, &caddyhttp.Server{})
		_ = h.ServeHTTP(w, r, nil)
	}))
	t.Cleanup(srv.Close)
	conn, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	start := time.Now()
	fmt.Fprintf(conn, "POST /cb HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"project_id\":")
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("no answer: %v", err)
	}
	if resp.StatusCode != http.StatusRequestTimeout || time.Since(start) > 3*time.Second {
		t.Fatalf("status %d after %v, want 408 soon after read_timeout", resp.StatusCode, time.Since(start))
	}
}

// Nothing of the request around a genuine body that the signature does not
// cover changes what the app reads: the query is dropped, Connection cannot
// strip the module's Content-Type, and a false Content-Encoding goes.
func TestCallbackRequestAroundTheBody(t *testing.T) {
	app := newTestApp(t)
	h := callbackHandler(t, func(h *Handler) { h.Dedupe = "off" })
	r := post("/cb?payment_status=success&admin=1", sign(t, testSecret, saleSuccess))
	r.Header.Set("Connection", "keep-alive, Content-Type, Content-Length")
	r.Header.Set("Content-Encoding", "gzip")
	if w := serve(h, r, proxyTo(t, app.srv.URL)); w.Code != http.StatusOK {
		t.Fatalf("status %d", w.Code)
	}
	got := app.received()[0]
	if got.header.Get("Content-Type") != "application/json" || got.header.Get("Content-Encoding") != "" {
		t.Fatalf("the app got Content-Type %q, Content-Encoding %q", got.header.Get("Content-Type"), got.header.Get("Content-Encoding"))
	}
	if got.uri != "/cb" {
		t.Fatalf("the app got %q, want the path without the query", got.uri)
	}
}

// Large canonical strings share one budget: when it is spent, a large
// callback waits briefly and then gets 503, while small ones go through.
func TestLargeCallbacksShareABudget(t *testing.T) {
	app := newTestApp(t)
	h := callbackHandler(t, func(h *Handler) { h.Dedupe = "off" })
	var items []string
	for i := 0; i < 3000; i++ {
		items = append(items, fmt.Sprintf(`"%s"`, strings.Repeat("v", 30)))
	}
	large := sign(t, testSecret, strings.Replace(saleSuccess, `"operation":{`, `"operation":{"list":[`+strings.Join(items, ",")+`],`, 1))
	if !canonInFlight.TryAcquire(maxCanonInFlight) {
		t.Fatal("the budget is in use")
	}
	start := time.Now()
	w := serve(h, post("/cb", large), proxyTo(t, app.srv.URL))
	if w.Code != http.StatusServiceUnavailable || time.Since(start) < canonWait/2 {
		t.Fatalf("large callback with the budget spent: %d after %v", w.Code, time.Since(start))
	}
	if w := serve(h, post("/cb", sign(t, testSecret, saleSuccess)), proxyTo(t, app.srv.URL)); w.Code != http.StatusOK {
		t.Fatalf("a small callback was held up: %d", w.Code)
	}
	canonInFlight.Release(maxCanonInFlight)
	if w := serve(h, post("/cb", large), proxyTo(t, app.srv.URL)); w.Code != http.StatusOK {
		t.Fatalf("large callback with room: %d %s", w.Code, w.Body)
	}
}

// isProxied folds names without allocating, and a long X-Forwarded-* name
// still counts.
func TestIsProxiedFolds(t *testing.T) {
	long := http.Header{"X-Forwarded-" + strings.Repeat("Long-", 20): {"1"}}
	direct := http.Header{"Content-Type": {"application/json"}, "User-Agent": {"shop"}, "Accept": {"*/*"}}
	if !isProxied(long) || isProxied(direct) || !isProxied(http.Header{"X_Real_IP": {"1"}}) {
		t.Fatal("misjudged")
	}
	if raceDetector {
		return
	}
	if n := testing.AllocsPerRun(10, func() { isProxied(direct) }); n != 0 {
		t.Fatalf("%v allocations", n)
	}
}

// Ids of projects that are not configured share the "unknown" series:
// a stranger cannot make a metric series per id it sends.
func TestUnknownProjectsShareOneSeries(t *testing.T) {
	h := callbackHandler(t, nil)
	before := testutil.ToFloat64(callbacksTotal.WithLabelValues("unknown", "unknown_project"))
	for i := range 3 {
		body := strings.Replace(saleSuccess, `"project_id":210`, fmt.Sprintf(`"project_id":%d`, 9000+i), 1)
		if w := serve(h, post("/cb", sign(t, testSecret, body)), nil); w.Code != http.StatusForbidden {
			t.Fatalf("unknown project answered %d", w.Code)
		}
	}
	if d := testutil.ToFloat64(callbacksTotal.WithLabelValues("unknown", "unknown_project")) - before; d != 3 {
		t.Fatalf("unknown series moved by %v, want 3", d)
	}
	if n := testutil.CollectAndCount(callbacksTotal); n > 0 {
		for i := range 3 {
			if callbacksTotal.DeleteLabelValues(strconv.Itoa(9000+i), "unknown_project") {
				t.Fatalf("a series for project %d exists", 9000+i)
			}
		}
	}
}
