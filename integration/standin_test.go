package integration

// A check of the test harness itself, independent of the module: the fake
// ecommpay and the Python shop are wired through a minimal in-test stand-in
// for Caddy (signing, verification, de-duplication, forwarding; no QR
// rewriting). When an end-to-end scenario fails, this test passing shows
// the fake, the shop and the assertions agree with each other.

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/sandbox"
	"io"
	"net"
	"net/http"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/caddy-ecommpay/caddy-ecommpay/signature"
)

type standIn struct {
	secret  string
	fake    string // base URL of the fake ecommpay
	app     string // base URL of the shop
	mu      sync.Mutex
	state   map[string]string // event key -> "inflight" | "done"
	servers []*http.Server
}

func (s *standIn) listen(t testing.TB, h http.Handler) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	s.servers = append(s.servers, srv)
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().(*net.TCPAddr).Port
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func (s *standIn) internal(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/payment-page" {
		q := r.URL.Query()
		for _, f := range []string{"payment_id", "payment_amount", "payment_currency"} {
			if q.Get(f) == "" {
				writeJSON(w, 400, map[string]string{"error": "missing " + f})
				return
			}
		}
		q.Set("project_id", fmt.Sprint(projectID))
		keys := make([]string, 0, len(q))
		for k := range q {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		obj := object{}
		for _, k := range keys {
			obj = append(obj, member{k, q.Get(k)})
		}
		sig := hmacSign(canonicalOf(obj, false), s.secret)
		q.Set("signature", sig)
		writeJSON(w, 200, map[string]string{"url": s.fake + "/payment?" + q.Encode(), "signature": sig})
		return
	}
	var body map[string]any
	dec := json.NewDecoder(r.Body)
	dec.UseNumber()
	if err := dec.Decode(&body); err != nil {
		writeJSON(w, 400, map[string]string{"error": "bad JSON"})
		return
	}
	g, _ := body["general"].(map[string]any)
	if g == nil {
		g = map[string]any{}
		body["general"] = g
	}
	if _, ok := g["project_id"]; !ok {
		g["project_id"] = projectID
	}
	signed := signJSONWithSignatureAt(body, s.secret, true)
	resp, err := testClient.Post(s.fake+r.URL.Path, "application/json", bytes.NewReader(signed))
	if err != nil {
		writeJSON(w, 502, map[string]string{"error": err.Error()})
		return
	}
	defer resp.Body.Close()
	w.Header().Set("Content-Type", resp.Header.Get("Content-Type"))
	w.WriteHeader(resp.StatusCode)
	io.Copy(w, resp.Body)
}

func (s *standIn) public(w http.ResponseWriter, r *http.Request) {
	raw, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	v, err := parseOrdered(raw)
	if err != nil {
		writeJSON(w, 400, map[string]string{"error": "malformed JSON"})
		return
	}
	if ok, _ := verifyCallbackBody(raw, s.secret); !ok {
		writeJSON(w, 403, map[string]string{"error": "bad signature"})
		return
	}
	if obj, _ := v.(object); obj != nil {
		if p, _ := obj.get("project_id"); renderScalar(p) != fmt.Sprint(projectID) {
			writeJSON(w, 403, map[string]string{"error": "unknown project"})
			return
		}
	}
	sum := sha256.Sum256([]byte(canonicalOf(v, true)))
	key := hex.EncodeToString(sum[:16])
	s.mu.Lock()
	switch s.state[key] {
	case "done":
		s.mu.Unlock()
		w.Header().Set("X-Ecommpay-Duplicate", "1")
		w.WriteHeader(200)
		return
	case "inflight":
		s.mu.Unlock()
		w.Header().Set("Retry-After", "1")
		w.WriteHeader(409)
		return
	}
	s.state[key] = "inflight"
	s.mu.Unlock()
	req, _ := http.NewRequest("POST", s.app+"/callback", bytes.NewReader(raw))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Ecommpay-Event-Key", key)
	req.Header.Set("X-Ecommpay-Project-Id", fmt.Sprint(projectID))
	resp, err := testClient.Do(req)
	status := 502
	if err == nil {
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		status = resp.StatusCode
	}
	s.mu.Lock()
	if status >= 200 && status < 300 {
		s.state[key] = "done"
		status = 200
	} else {
		delete(s.state, key)
	}
	s.mu.Unlock()
	w.WriteHeader(status)
}

func TestHarnessWithStandIn(t *testing.T) {
	secret := newSecret()
	fake := startFake(t, secret)
	si := &standIn{secret: secret, fake: fake.base, state: map[string]string{}}
	internal := si.listen(t, http.HandlerFunc(si.internal))
	public := si.listen(t, http.HandlerFunc(si.public))
	shop := startShop(t, fmt.Sprintf("http://127.0.0.1:%d", internal), secret, 0)
	si.app = shop.base
	fake.setCallbackURLs(fmt.Sprintf("http://127.0.0.1:%d/cb", public))
	fake.configure(func(k *sandbox.Knobs) { k.Copies = 3 })
	t.Cleanup(fake.stopDeliveries)
	s := &stack{t: t, secret: secret, fake: fake, shop: shop}

	mb, ali := newPaymentID("si-mb"), newPaymentID("si-ali")
	shop.admin(t, "slow?ms=200")
	checkGateAccepted(t, s, shop.call(t, "/buy", map[string]any{"method": "mbway", "payment_id": mb, "amount": 1000, "currency": "EUR"}), "/v2/payment/wallet/mbway/sale", mb)
	waitShopEvent(t, shop, mb, "sale", "success", settleTimeout)
	shop.admin(t, "slow?ms=0")
	shop.admin(t, "down")
	if out := shop.call(t, "/refund", map[string]any{"payment_id": mb, "amount": 50000, "currency": "EUR", "generic": true}); out.Status != 400 {
		t.Errorf("refund above the amount: %d %v, want 400", out.Status, out.Answer)
	}
	if out := shop.call(t, "/refund", map[string]any{"payment_id": mb, "amount": 300, "currency": "EUR", "generic": true}); out.Status != 200 {
		t.Fatalf("refund: %d %v", out.Status, out.Answer)
	}
	time.Sleep(800 * time.Millisecond)
	shop.admin(t, "up")
	waitShopEvent(t, shop, mb, "refund", "success", settleTimeout)

	u := openPaymentPage(t, s, ali, "alipay", "USD", 40400)
	_ = u
	waitShopEvent(t, shop, ali, "sale", "decline", settleTimeout)
	waitSettled(t, fake, 15, settleTimeout)
	st := shop.state(t)
	matched := checkExactlyOnce(t, fake, st)
	if len(matched) != 5 {
		t.Errorf("matched %d callbacks, want 5", len(matched))
	}
	for seq, e := range matched {
		checkForwarded(t, e)
		reverify(t, e, secret)
		for _, cb := range fake.allCallbacks() {
			if cb.Seq == seq {
				sameContent(t, cb, e)
			}
		}
	}
	if st.AnsweredDown == 0 {
		t.Errorf("the shop never answered 500 while down")
	}
	// Forged: rejected before the shop.
	code, _, _, _ := fake.postRaw(fmt.Sprintf("http://127.0.0.1:%d/cb", public), fake.signedCallback(mb, "refund", "success")[:40], nil)
	if code != 400 {
		t.Errorf("truncated body: %d", code)
	}
}

// TestSignerAgreesWithModule compares the fake's signer with the module's
// exported one on bodies shaped like the fake's callbacks and Gate requests.
func TestSignerAgreesWithModule(t *testing.T) {
	secret := newSecret()
	bodies := []map[string]any{
		{"project_id": 210, "payment": map[string]any{"id": "p:1", "sum": sum(1000, "EUR"), "status": "success"},
			"display_data":  []any{map[string]any{"type": "qr_data", "title": "QR code", "data": "weixin://wxpay/bizpayurl?pr=abc"}},
			"redirect_data": map[string]any{"method": "GET", "url": "http://127.0.0.1/x?a=b;c", "body": []any{}, "encrypted": []any{}},
			"frame_mode":    "iframe", "flag": true, "none": nil, "items": []any{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}},
		{"general": map[string]any{"project_id": 210, "payment_id": "x"}, "payment": map[string]any{"amount": 10, "currency": "EUR"},
			"customer": map[string]any{"id": "c", "ip_address": "192.0.2.10"}},
	}
	for i, b := range bodies {
		for _, inGeneral := range []bool{false, true} {
			raw := signJSONWithSignatureAt(b, secret, inGeneral)
			mine, _ := verifyCallbackBody(raw, secret)
			canon, sig, err := signature.CallbackCanonical(raw)
			if err != nil {
				t.Fatalf("body %d: module: %v", i, err)
			}
			if !mine || signature.Sign(canon, secret) != sig {
				t.Errorf("body %d (general=%v): fake verifies %v, module canonical %q", i, inGeneral, mine, canon)
			}
			plain, _ := json.Marshal(b)
			modCanon, err := signature.Canonical(plain)
			if err != nil {
				t.Fatal(err)
			}
			myCanon, _ := signCanonicalJSON(plain)
			if modCanon != myCanon {
				t.Errorf("body %d: sign canonical differs\n fake:   %s\n module: %s", i, myCanon, modCanon)
			}
		}
	}
}
