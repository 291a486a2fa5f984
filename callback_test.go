package ecommpay

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"image/png"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/journal"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/qr/qrtest"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/redistest"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/store"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/store/localstore"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/store/redisstore"
	"github.com/caddy-ecommpay/caddy-ecommpay/signature"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

const saleSuccess = `{"project_id":210,"payment":{"id":"ORDER-1","type":"purchase","status":"success","method":"wechat","sum":{"amount":1000,"currency":"CNY"}},"operation":{"id":9227000002916,"type":"sale","status":"success","code":"0","message":"Success","rate":1.50,"big":123456789012345678901}}`

const awaitingQR = `{"project_id":210,"payment":{"id":"ORDER-QR","type":"purchase","status":"awaiting customer","method":"wechat"},"operation":{"id":9227000002917,"type":"sale","status":"awaiting customer","sum_initial":{"amount":1000,"currency":"CNY"},"rate":1.50},"display_data":[{"type":"qr_data","title":"QR code","data":"weixin://wxpay/bizpayurl?pr=dMrSpJG"},{"type":"add_info","title":"QR Code Timeout","data":"600"}]}`

func callbackHandler(t testing.TB, mod func(*Handler)) *Handler {
	h := &Handler{Mode: modeCallback, Projects: []Project{{ID: "210", Secrets: []string{testSecret}}}}
	if mod != nil {
		mod(h)
	}
	provision(t, h)
	return h
}

func TestCallbackForwardsOnceAndAnswers200(t *testing.T) {
	app := newTestApp(t)
	app.status.Store(http.StatusAccepted) // any 2xx becomes 200 for ecommpay
	h := callbackHandler(t, nil)
	next := proxyTo(t, app.srv.URL)
	body := sign(t, testSecret, saleSuccess)

	req := post("/callback", body)
	req.Header.Set(headerEventKey, "forged-by-client")
	req.Header.Set("X-Ecommpay-Verified", "1")
	w := serve(h, req, next)
	if w.Code != http.StatusOK || w.Header().Get(headerDuplicate) != "" {
		t.Fatalf("first delivery: %d %v", w.Code, w.Header())
	}
	got := app.received()
	if len(got) != 1 {
		t.Fatalf("app got %d callbacks, want 1", len(got))
	}
	if !bytes.Equal(got[0].body, body) {
		t.Fatalf("app got a changed body:\n%s\nwant\n%s", got[0].body, body)
	}
	sum := sha256.Sum256([]byte(mustCanonical(t, body)))
	wantKey := "210-" + hex.EncodeToString(sum[:16])
	if k := got[0].header.Get(headerEventKey); k != wantKey {
		t.Fatalf("event key %q, want %q", k, wantKey)
	}
	if got[0].header.Get(headerProjectID) != "210" || got[0].header.Get("X-Ecommpay-Verified") != "" {
		t.Fatalf("headers the app can trust were not set, or a client copy passed: %v", got[0].header)
	}

	// A retry of a delivered callback: 200 at once, marked, not forwarded.
	w = serve(h, post("/callback", body), next)
	if w.Code != http.StatusOK || w.Header().Get(headerDuplicate) != "1" {
		t.Fatalf("duplicate: %d %v", w.Code, w.Header())
	}
	if n := len(app.received()); n != 1 {
		t.Fatalf("duplicate reached the app: %d deliveries", n)
	}
}

func mustCanonical(t testing.TB, body []byte) string {
	c, _, err := signature.CallbackCanonical(body)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// An "awaiting" callback repeated with new data is a new event.
func TestCallbackDistinctEventsAllReachTheApp(t *testing.T) {
	app := newTestApp(t)
	h := callbackHandler(t, nil)
	next := proxyTo(t, app.srv.URL)
	for i := range 3 {
		body := strings.Replace(saleSuccess, `"status":"success","method"`, fmt.Sprintf(`"status":"awaiting redirect result","attempt":%d,"method"`, i), 1)
		if w := serve(h, post("/cb", sign(t, testSecret, body)), next); w.Code != http.StatusOK || w.Header().Get(headerDuplicate) != "" {
			t.Fatalf("event %d: %d", i, w.Code)
		}
	}
	if n := len(app.received()); n != 3 {
		t.Fatalf("app got %d events, want 3", n)
	}
}

// concurrentDeliveries sends one callback n times at once, spread over the
// handlers, and checks the app got it exactly once and every sender an answer.
func concurrentDeliveries(t *testing.T, handlers []*Handler, app *testApp, n int) {
	app.delay.Store(int64(50 * time.Millisecond)) // keep the first in flight while the rest arrive
	next := proxyTo(t, app.srv.URL)
	body := sign(t, testSecret, saleSuccess)
	var wg sync.WaitGroup
	codes := make([]int, n)
	dups := make([]bool, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := serve(handlers[i%len(handlers)], post("/cb", body), next)
			codes[i], dups[i] = w.Code, w.Header().Get(headerDuplicate) == "1"
		}()
	}
	wg.Wait()
	forwarded := 0
	for i, c := range codes {
		switch {
		case c == http.StatusOK && !dups[i]:
			forwarded++
		case c == http.StatusOK && dups[i], c == http.StatusConflict:
		default:
			t.Errorf("delivery %d got %d", i, c)
		}
	}
	if got := len(app.received()); got != 1 || forwarded != 1 {
		t.Fatalf("app got %d deliveries and %d senders were told forwarded; want 1 and 1", got, forwarded)
	}
	// After the storm, a retry is a plain duplicate.
	if w := serve(handlers[0], post("/cb", body), next); w.Code != http.StatusOK || w.Header().Get(headerDuplicate) != "1" {
		t.Fatalf("retry after the storm: %d", w.Code)
	}
}

func TestCallbackConcurrentDeliveriesReachTheAppOnce(t *testing.T) {
	concurrentDeliveries(t, []*Handler{callbackHandler(t, nil)}, newTestApp(t), 200)
}

func TestCallbackConcurrentDeliveriesTwoNodesOneRedis(t *testing.T) {
	url := redistest.URL(t)
	mk := func() *Handler {
		return callbackHandler(t, func(h *Handler) { h.Dedupe, h.RedisURL = "redis", url })
	}
	a, b := mk(), mk()
	// Two nodes of a cluster: separate clients, one Redis (the UsagePool
	// would share one client in one process), under a prefix of this run.
	prefix := "ecommpay-test:" + rand.Text() + ":"
	node := func() store.Store {
		s, err := redisstore.NewDedup(url, prefix)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			redistest.DeleteKeys(s.Client(), prefix)
			_ = s.Close()
		})
		return s
	}
	a.store, b.store = node(), node()
	concurrentDeliveries(t, []*Handler{a, b}, newTestApp(t), 200)
}

func TestCallbackRejectsWithoutReachingTheApp(t *testing.T) {
	app := newTestApp(t)
	h := callbackHandler(t, nil)
	next := proxyTo(t, app.srv.URL)
	good := sign(t, testSecret, saleSuccess)
	tampered := bytes.Replace(good, []byte(`"amount":1000`), []byte(`"amount":1`), 1)
	cases := []struct {
		name string
		req  *http.Request
		want int
	}{
		{"tampered amount", post("/cb", tampered), http.StatusForbidden},
		{"wrong secret", post("/cb", sign(t, "another-secret", saleSuccess)), http.StatusForbidden},
		{"unknown project", post("/cb", sign(t, testSecret, strings.Replace(saleSuccess, `"project_id":210`, `"project_id":999`, 1))), http.StatusForbidden},
		{"no project", post("/cb", sign(t, testSecret, strings.Replace(saleSuccess, `"project_id":210,`, ``, 1))), http.StatusForbidden},
		{"no signature", post("/cb", []byte(saleSuccess)), http.StatusForbidden},
		{"signature not a string", post("/cb", []byte(saleSuccess[:len(saleSuccess)-1]+`,"signature":5}`)), http.StatusForbidden},
		{"malformed JSON", post("/cb", good[:len(good)-1]), http.StatusBadRequest},
		{"not an object", post("/cb", []byte(`["x"]`)), http.StatusBadRequest},
		{"GET", httptestRequest(http.MethodGet, "/cb"), http.StatusMethodNotAllowed},
		{"too deep", post("/cb", []byte(`{"a":`+strings.Repeat("[", 40)+strings.Repeat("]", 40)+`}`)), http.StatusRequestEntityTooLarge},
	}
	for _, c := range cases {
		if w := serve(h, c.req, next); w.Code != c.want {
			t.Errorf("%s: got %d, want %d", c.name, w.Code, c.want)
		}
	}
	if n := len(app.received()); n != 0 {
		t.Fatalf("%d rejected callbacks reached the app", n)
	}
}

func httptestRequest(method, target string) *http.Request {
	r, _ := http.NewRequest(method, target, nil)
	r.RemoteAddr = "127.0.0.1:40000"
	withLoopbackHost(r)
	return r
}

func TestCallbackBodyLimit(t *testing.T) {
	app := newTestApp(t)
	h := callbackHandler(t, func(h *Handler) { h.MaxBody = 512 })
	next := proxyTo(t, app.srv.URL)
	big := sign(t, testSecret, `{"project_id":210,"pad":"`+strings.Repeat("x", 600)+`"}`)
	if w := serve(h, post("/cb", big), next); w.Code != http.StatusRequestEntityTooLarge {
		t.Fatalf("declared length: %d", w.Code)
	}
	r := post("/cb", big)
	r.ContentLength = -1 // chunked: the limit must hold while reading
	if w := serve(h, r, next); w.Code != http.StatusRequestEntityTooLarge {
		t.Fatalf("undeclared length: %d", w.Code)
	}
	if len(app.received()) != 0 {
		t.Fatal("an oversized callback reached the app")
	}
}

func TestCallbackAppFailureLosesNothing(t *testing.T) {
	app := newTestApp(t)
	h := callbackHandler(t, nil)
	next := proxyTo(t, app.srv.URL)
	body := sign(t, testSecret, saleSuccess)

	app.status.Store(http.StatusInternalServerError)
	if w := serve(h, post("/cb", body), next); w.Code != http.StatusInternalServerError {
		t.Fatalf("app 500: ecommpay got %d", w.Code)
	}
	// The app is down: a closed port.
	down := proxyTo(t, "127.0.0.1:1")
	if w := serve(h, post("/cb", body), down); w.Code != http.StatusBadGateway {
		t.Fatalf("app down: ecommpay got %d", w.Code)
	}
	// It recovers: the next retry is delivered, once.
	app.status.Store(http.StatusOK)
	if w := serve(h, post("/cb", body), next); w.Code != http.StatusOK || w.Header().Get(headerDuplicate) != "" {
		t.Fatalf("retry after recovery: %d %v", w.Code, w.Header())
	}
	if w := serve(h, post("/cb", body), next); w.Header().Get(headerDuplicate) != "1" {
		t.Fatal("a retry after delivery was not a duplicate")
	}
	if got := app.received(); len(got) != 2 { // the 500 attempt and the delivery
		t.Fatalf("app saw %d attempts, want 2", len(got))
	}
}

func TestCallbackAppTimeoutReleasesTheClaim(t *testing.T) {
	app := newTestApp(t)
	h := callbackHandler(t, func(h *Handler) { h.ForwardTimeout = caddy.Duration(100 * time.Millisecond) })
	next := proxyTo(t, app.srv.URL)
	body := sign(t, testSecret, saleSuccess)
	app.delay.Store(int64(time.Second))
	if w := serve(h, post("/cb", body), next); w.Code != http.StatusGatewayTimeout {
		t.Fatalf("slow app: ecommpay got %d", w.Code)
	}
	app.delay.Store(0)
	if w := serve(h, post("/cb", body), next); w.Code != http.StatusOK || w.Header().Get(headerDuplicate) != "" {
		t.Fatalf("retry: %d", w.Code)
	}
}

func TestCallbackCrashedClaimExpires(t *testing.T) {
	app := newTestApp(t)
	h := callbackHandler(t, func(h *Handler) { h.ForwardTimeout = caddy.Duration(500 * time.Millisecond) })
	next := proxyTo(t, app.srv.URL)
	body := sign(t, testSecret, saleSuccess)
	sum := sha256.Sum256([]byte(mustCanonical(t, body)))
	eventKey := "210-" + hex.EncodeToString(sum[:16])
	// A node claims the event and dies before committing or releasing.
	if st, _, err := h.store.Claim(context.Background(), eventKey, 2*500*time.Millisecond); err != nil || st != store.Claimed {
		t.Fatalf("claim: %v %v", st, err)
	}
	w := serve(h, post("/cb", body), next)
	if w.Code != http.StatusConflict || w.Header().Get("Retry-After") == "" {
		t.Fatalf("while claimed: %d %v", w.Code, w.Header())
	}
	time.Sleep(1100 * time.Millisecond) // the lease is twice forward_timeout
	if w := serve(h, post("/cb", body), next); w.Code != http.StatusOK || w.Header().Get(headerDuplicate) != "" {
		t.Fatalf("after the claim expired: %d", w.Code)
	}
	if len(app.received()) != 1 {
		t.Fatal("not delivered exactly once")
	}
}

func TestCallbackStoreDown(t *testing.T) {
	app := newTestApp(t)
	next := proxyTo(t, app.srv.URL)
	body := sign(t, testSecret, saleSuccess)
	dead := "redis://127.0.0.1:1/0"
	h := callbackHandler(t, func(h *Handler) { h.Dedupe, h.RedisURL = "redis", dead })
	if w := serve(h, post("/cb", body), next); w.Code != http.StatusServiceUnavailable || w.Header().Get("Retry-After") == "" {
		t.Fatalf("store down, fail closed: %d", w.Code)
	}
	if len(app.received()) != 0 {
		t.Fatal("forwarded although the store is down and on_store_error is reject")
	}
	h = callbackHandler(t, func(h *Handler) { h.Dedupe, h.RedisURL, h.OnStoreError = "redis", dead, "forward" })
	if w := serve(h, post("/cb", body), next); w.Code != http.StatusOK {
		t.Fatalf("store down, forward: %d", w.Code)
	}
	if len(app.received()) != 1 {
		t.Fatal("on_store_error forward did not forward")
	}
}

func TestCallbackDedupeOff(t *testing.T) {
	app := newTestApp(t)
	h := callbackHandler(t, func(h *Handler) { h.Dedupe = "off" })
	next := proxyTo(t, app.srv.URL)
	body := sign(t, testSecret, saleSuccess)
	for range 2 {
		if w := serve(h, post("/cb", body), next); w.Code != http.StatusOK {
			t.Fatal(w.Code)
		}
	}
	if len(app.received()) != 2 {
		t.Fatal("dedupe off still de-duplicated")
	}
}

func TestCallbackKeyRotation(t *testing.T) {
	app := newTestApp(t)
	h := callbackHandler(t, func(h *Handler) { h.Projects[0].Secrets = []string{"new-secret", testSecret} })
	next := proxyTo(t, app.srv.URL)
	for _, s := range []string{"new-secret", testSecret} {
		body := sign(t, s, strings.Replace(awaitingQR, "ORDER-QR", "ORDER-"+s, 1))
		if w := serve(h, post("/cb", body), next); w.Code != http.StatusOK {
			t.Fatalf("signed with %s: %d", s, w.Code)
		}
	}
	got := app.received()
	// Rewritten bodies are re-signed with the secret that verified them.
	if !verifies(got[0].body, "new-secret") || !verifies(got[1].body, testSecret) {
		t.Fatal("re-signed bodies do not verify under the secret that signed them")
	}
}

func TestCallbackConformanceVectors(t *testing.T) {
	for _, v := range loadVectors(t) {
		if v.Type != "callback" {
			continue
		}
		t.Run(v.Name, func(t *testing.T) {
			var probe struct {
				ProjectID json.Number `json:"project_id"`
				General   struct {
					ProjectID json.Number `json:"project_id"`
				} `json:"general"`
			}
			if err := json.Unmarshal([]byte(v.RawBody), &probe); err != nil {
				t.Fatal(err)
			}
			id := probe.ProjectID.String()
			if id == "" {
				id = probe.General.ProjectID.String()
			}
			app := newTestApp(t)
			h := &Handler{Mode: modeCallback, Projects: []Project{{ID: id, Secrets: []string{v.Secret}}}}
			provision(t, h)
			w := serve(h, post("/cb", []byte(v.RawBody)), proxyTo(t, app.srv.URL))
			delivered := len(app.received()) == 1
			if v.ExpectValid != (w.Code == http.StatusOK) || v.ExpectValid != delivered {
				t.Fatalf("expect_valid=%v but got %d and delivered=%v", v.ExpectValid, w.Code, delivered)
			}
			if err := signature.VerifyCallback([]byte(v.RawBody), v.Secret); (err == nil) != delivered {
				t.Fatalf("the handler delivered=%v, but signature.VerifyCallback says %v", delivered, err)
			}
			if delivered && !verifies(app.received()[0].body, v.Secret) {
				t.Fatal("the app got a body that does not verify")
			}
		})
	}
}

// deliverQRCallback sends the awaiting-QR callback through a handler set
// up by mod and returns the body the app got, which must verify.
func deliverQRCallback(t *testing.T, mod func(*Handler)) []byte {
	t.Helper()
	app := newTestApp(t)
	h := callbackHandler(t, mod)
	if w := serve(h, post("/cb", sign(t, testSecret, awaitingQR)), proxyTo(t, app.srv.URL)); w.Code != http.StatusOK {
		t.Fatal(w.Code)
	}
	body := app.received()[0].body
	if !verifies(body, testSecret) {
		t.Fatal("the rewritten body does not verify")
	}
	return body
}

func TestCallbackQRImage(t *testing.T) {
	body := deliverQRCallback(t, nil)
	if !bytes.Contains(body, []byte(`"rate":1.50`)) {
		t.Fatalf("a number literal changed: %s", body)
	}
	var cb struct {
		DisplayData []map[string]string `json:"display_data"`
	}
	if err := json.Unmarshal(body, &cb); err != nil {
		t.Fatal(err)
	}
	qr := cb.DisplayData[0]
	if qr["type"] != "qr_img" || qr["source"] != "weixin://wxpay/bizpayurl?pr=dMrSpJG" || qr["title"] != "QR code" {
		t.Fatalf("entry: %v", qr)
	}
	if cb.DisplayData[1]["type"] != "add_info" || cb.DisplayData[1]["data"] != "600" {
		t.Fatalf("other entries changed: %v", cb.DisplayData[1])
	}
	img, err := base64.StdEncoding.DecodeString(qr["data"])
	if err != nil {
		t.Fatal(err)
	}
	if got := qrtest.Decode(t, img); got != qr["source"] {
		t.Fatalf("the PNG decodes to %q", got)
	}
}

func TestCallbackQRBadEntriesPassUnchanged(t *testing.T) {
	app := newTestApp(t)
	h := callbackHandler(t, nil)
	next := proxyTo(t, app.srv.URL)
	for _, entry := range []string{
		`{"type":"qr_data","title":"QR code"}`,
		`{"type":"qr_data","data":5}`,
		`{"type":"qr_data","data":""}`,
		`{"type":"qr_data","data":"` + strings.Repeat("x", 8000) + `"}`,
	} {
		body := sign(t, testSecret, `{"project_id":210,"payment":{"id":"P","status":"awaiting customer"},"display_data":[`+entry+`]}`)
		if w := serve(h, post("/cb", body), next); w.Code != http.StatusOK {
			t.Fatalf("%.40s: %d", entry, w.Code)
		}
		got := app.received()
		if !bytes.Equal(got[len(got)-1].body, body) {
			t.Fatalf("%.40s: the body was changed", entry)
		}
	}
}

func TestCallbackQRHostedLink(t *testing.T) {
	body := deliverQRCallback(t, func(h *Handler) { h.QR, h.QRBaseURL = "url", "https://shop.example/ecommpay/qr" })
	var cb struct {
		DisplayData []map[string]string `json:"display_data"`
	}
	_ = json.Unmarshal(body, &cb)
	entry := cb.DisplayData[0]
	link := entry["data"]
	if entry["type"] != "qr_url" || !strings.HasPrefix(link, "https://shop.example/ecommpay/qr/210/") {
		t.Fatalf("entry: %v", entry)
	}

	// Another node, with the same project lines, serves it.
	qr := &Handler{Mode: modeQR, Projects: []Project{{ID: "210", Secrets: []string{testSecret}}}}
	provision(t, qr)
	get := func(u string) *http.Response {
		r := httptestRequest(http.MethodGet, u)
		return serve(qr, r, nil).Result()
	}
	res := get(link)
	if res.StatusCode != http.StatusOK || res.Header.Get("Content-Type") != "image/png" {
		t.Fatalf("hosted image: %d %v", res.StatusCode, res.Header)
	}
	var buf bytes.Buffer
	_, _ = buf.ReadFrom(res.Body)
	if got := qrtest.Decode(t, buf.Bytes()); got != "weixin://wxpay/bizpayurl?pr=dMrSpJG" {
		t.Fatalf("decodes to %q", got)
	}
	if _, err := png.Decode(bytes.NewReader(buf.Bytes())); err != nil {
		t.Fatal(err)
	}
	// The link lives for the callback's QR Code Timeout (600 s).
	if cc := res.Header.Get("Cache-Control"); !strings.Contains(cc, "max-age=") {
		t.Fatalf("Cache-Control %q", cc)
	}
	forged := strings.Replace(link, "/210/", "/210/", 1)
	forged = forged[:strings.LastIndex(forged, "/")+1] + base64.RawURLEncoding.EncodeToString([]byte("https://evil.example")) + ".png"
	if res := get(forged); res.StatusCode != http.StatusNotFound {
		t.Fatalf("forged payload: %d", res.StatusCode)
	}
	defer func() { now = time.Now }()
	now = func() time.Time { return time.Now().Add(601 * time.Second) }
	if res := get(link); res.StatusCode != http.StatusNotFound {
		t.Fatalf("expired link: %d", res.StatusCode)
	}
}

func TestCallbackLogsNoSecrets(t *testing.T) {
	app := newTestApp(t)
	h := &Handler{Mode: modeCallback, Projects: []Project{{ID: "210", Secrets: []string{testSecret}}}}
	logs := provision(t, h)
	next := proxyTo(t, app.srv.URL)
	good := sign(t, testSecret, awaitingQR)
	wrong := sign(t, "wrong-secret-value", saleSuccess)
	serve(h, post("/cb", good), next)
	serve(h, post("/cb", good), next)
	serve(h, post("/cb", wrong), next)
	serve(h, post("/cb", good[:40]), next)
	app.status.Store(500)
	serve(h, post("/cb", sign(t, testSecret, saleSuccess)), next)
	serve(h, post("/cb", sign(t, testSecret, saleSuccess)), proxyTo(t, "127.0.0.1:1"))
	if logs.Len() < 6 {
		t.Fatalf("only %d log lines", logs.Len())
	}
	var forbidden []string
	forbidden = append(forbidden, testSecret, "wrong-secret-value")
	for _, b := range [][]byte{good, wrong} {
		_, sig, _ := signature.CallbackCanonical(b)
		forbidden = append(forbidden, sig)
	}
	for _, e := range logs.All() {
		line := e.Message + fmt.Sprint(e.ContextMap())
		for _, f := range forbidden {
			if strings.Contains(line, f) {
				t.Fatalf("a log line carries a secret or signature: %s", line)
			}
		}
		if strings.Contains(line, "weixin://") {
			t.Fatalf("a log line carries body data: %s", line)
		}
	}
}

// FuzzCallback drives arbitrary bodies through the callback path: it must
// never panic, and nothing reaches the app unless it verifies.
func FuzzCallback(f *testing.F) {
	for _, v := range loadVectors(f) {
		if v.RawBody != "" {
			f.Add([]byte(v.RawBody))
		}
	}
	f.Add(sign(f, testSecret, awaitingQR))
	f.Add(sign(f, testSecret, saleSuccess))
	h := callbackHandler(f, func(h *Handler) { h.Dedupe = "off" })
	f.Fuzz(func(t *testing.T, body []byte) {
		reached := false
		next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
			reached = true
			got, _ := io.ReadAll(r.Body)
			if !verifies(got, testSecret) {
				t.Fatalf("forwarded a body that does not verify: %q", got)
			}
			w.WriteHeader(http.StatusOK)
			return nil
		})
		w := serve(h, post("/cb", body), next)
		if reached != (w.Code == http.StatusOK) {
			t.Fatalf("status %d but reached=%v", w.Code, reached)
		}
		if reached && !verifies(body, testSecret) {
			t.Fatalf("accepted a body that does not verify: %q", body)
		}
	})
}

// BenchmarkCallbackForward is one distinct callback verified, claimed and
// forwarded through Caddy's reverse_proxy to a real app; compare it with
// BenchmarkProxyOnly, the same request through reverse_proxy alone.
func BenchmarkCallbackForward(b *testing.B) {
	for _, store := range []string{"memory", "local"} {
		b.Run(store, func(b *testing.B) { benchCallbackForward(b, store) })
	}
}

// benchCallbackForward forwards distinct callbacks with a fresh backend of
// the kind, journal on, as the default configuration has it.
func benchCallbackForward(b *testing.B, kind string) {
	app := newTestApp(b)
	app.mu.Lock()
	app.got = make([]received, 0, 1<<20)
	app.mu.Unlock()
	h := callbackHandler(b, func(h *Handler) { h.QR = "off"; h.Store = "memory" })
	fresh := func() {
		var nb store.Backend
		if kind == "local" {
			lb, err := localstore.Open(filepath.Join(b.TempDir(), "ecommpay.db"), 0, journal.Options{}, store.Hooks{})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { _ = lb.Close() })
			nb = lb
		} else {
			nb = newMemoryBackend()
		}
		h.store, h.journal = nb, nb
	}
	fresh()
	next := proxyTo(b, app.srv.URL)
	bodies := make([][]byte, 0, 4096)
	for i := range cap(bodies) {
		bodies = append(bodies, sign(b, testSecret, strings.Replace(saleSuccess, `"ORDER-1"`, fmt.Sprintf(`"ORDER-%d"`, i), 1)))
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if i == len(bodies) { // start over with fresh events
			b.StopTimer()
			fresh()
			b.StartTimer()
			i = 0
		}
		if w := serve(h, post("/cb", bodies[i]), next); w.Code != http.StatusOK {
			b.Fatal(w.Code)
		}
		i++
	}
}

func BenchmarkProxyOnly(b *testing.B) {
	app := newTestApp(b)
	next := proxyTo(b, app.srv.URL)
	body := sign(b, testSecret, saleSuccess)
	b.ReportAllocs()
	for b.Loop() {
		r := caddyhttp.PrepareRequest(post("/cb", body), caddy.NewReplacer(), nil, &caddyhttp.Server{})
		if err := next.ServeHTTP(httptest.NewRecorder(), r); err != nil {
			b.Fatal(err)
		}
	}
}

// The module's own allocations for one callback through the memory backend,
// the request's and the app's aside.
func TestCallbackAllocationBudget(t *testing.T) {
	if raceDetector {
		t.Skip("the race detector allocates on its own account")
	}
	// 30: among them the memory journal's copies of an entry, its
	// payment's key and the view's fresh values, and the standard timeout contexts of the forward and the
	// settle (context.WithTimeout with its timer), the body read as a
	// string for the parser and copied for the app once verified, header
	// values and claim tokens as plain strings, and the
	// payment view's copy of the amount, currency and method of a payment
	// first seen through its callback, as each one here is.
	const budget = 30
	h := callbackHandler(t, func(h *Handler) { h.QR = "off"; h.Store = "memory" })
	b := newMemoryBackend()
	h.store, h.journal = b, b
	h.logger = zap.NewNop()
	const runs = 200
	bodies := make([][]byte, runs+1) // AllocsPerRun runs once more first
	for i := range bodies {
		bodies[i] = sign(t, testSecret, strings.Replace(saleSuccess, `"ORDER-1"`, fmt.Sprintf(`"ORDER-%d"`, i), 1))
	}
	app := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		w.WriteHeader(http.StatusOK)
		return nil
	})
	// What the request costs without the module: made the same way, and
	// answered by the same app.
	i := 0
	bare := testing.AllocsPerRun(runs, func() {
		w := httptest.NewRecorder()
		r := caddyhttp.PrepareRequest(post("/cb", bodies[i%len(bodies)]), caddy.NewReplacer(), w, &caddyhttp.Server{})
		_ = app.ServeHTTP(w, r)
		i++
	})
	i = 0
	full := testing.AllocsPerRun(runs, func() {
		w := httptest.NewRecorder()
		r := caddyhttp.PrepareRequest(post("/cb", bodies[i%len(bodies)]), caddy.NewReplacer(), w, &caddyhttp.Server{})
		if err := h.ServeHTTP(w, r, app); err != nil || w.Code != http.StatusOK {
			t.Fatalf("callback %d: %v %d", i, err, w.Code)
		}
		i++
	})
	if added := full - bare; added > budget {
		t.Fatalf("a callback allocates %.0f times in the module, budget %d", added, budget)
	} else {
		t.Logf("a callback allocates %.0f times in the module (budget %d)", added, budget)
	}
}

// setHeader stores values under the names it is given: they must be
// canonical, as Header.Set would make them.
func TestModuleHeadersAreCanonical(t *testing.T) {
	for _, name := range []string{headerEventKey, headerProjectID, headerReplay, headerSource, "Content-Type", "Content-Length"} {
		if http.CanonicalHeaderKey(name) != name {
			t.Errorf("%s is not canonical", name)
		}
	}
}

// What the app's side derives from the forwarded request's context, as
// reverse_proxy does (values, then cancellation), must not start a
// goroutine to watch the module's deadline context.
func TestForwardContextStartsNoWatcher(t *testing.T) {
	h := callbackHandler(t, func(h *Handler) { h.QR = "off"; h.Store = "memory" })
	type key struct{}
	var watchers string
	app := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		ctx, cancel := context.WithCancel(context.WithValue(r.Context(), key{}, 1))
		defer cancel()
		if _, ok := ctx.Deadline(); !ok {
			t.Error("the forward's deadline is not visible")
		}
		var b strings.Builder
		_ = pprof.Lookup("goroutine").WriteTo(&b, 1)
		for _, g := range strings.Split(b.String(), "\n\n") {
			if strings.Contains(g, "context.(*cancelCtx).propagateCancel") {
				watchers += g + "\n"
			}
		}
		w.WriteHeader(http.StatusOK)
		return nil
	})
	if w := serve(h, post("/cb", sign(t, testSecret, saleSuccess)), app); w.Code != http.StatusOK {
		t.Fatalf("status %d", w.Code)
	}
	if watchers != "" {
		t.Fatalf("a goroutine watches the forward's context:\n%s", watchers)
	}
}
