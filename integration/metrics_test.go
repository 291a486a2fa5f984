package integration

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// scrape reads Caddy's metrics endpoint (the admin /metrics) into a map
// from series (name plus labels, as printed) to value.
func scrape(t testing.TB, c *caddyProc) map[string]float64 {
	t.Helper()
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", c.cfg.Admin))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "caddy_ecommpay_") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	return out
}

// reload loads the same Caddyfile again through the admin API; the
// Cache-Control header makes Caddy reload although nothing changed.
func reload(t testing.TB, c *caddyProc) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, fmt.Sprintf("http://127.0.0.1:%d/load", c.cfg.Admin),
		strings.NewReader(renderCaddyfile(t, c.cfg)))
	req.Header.Set("Content-Type", "text/caddyfile")
	req.Header.Set("Cache-Control", "must-revalidate")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("reload: %d %s", resp.StatusCode, body)
	}
}

// TestMetricsAcrossReload: the module's metrics appear on Caddy's metrics
// endpoint, move as callbacks flow, and keep counting after a config
// reload; the de-dup memory survives the reload too.
func TestMetricsAcrossReload(t *testing.T) {
	s := newStack(t, nil)
	forwarded := fmt.Sprintf(`caddy_ecommpay_callbacks_total{project="%d",result="forwarded"}`, projectID)
	duplicate := fmt.Sprintf(`caddy_ecommpay_callbacks_total{project="%d",result="duplicate"}`, projectID)
	gateSigned := `caddy_ecommpay_signatures_total{mode="gate"}`
	resigned := `caddy_ecommpay_signatures_total{mode="callback_resign"}`
	qrMiss := `caddy_ecommpay_qr_images_total{cache="miss"}`

	sale := func() string {
		pid := newPaymentID("metrics")
		out := s.shop.call(t, "/buy", map[string]any{"method": "wechat", "payment_id": pid, "amount": 1000, "currency": "CNY"})
		checkGateAccepted(t, s, out, "/v2/payment/wallet/wechat/sale", pid)
		waitShopEvent(t, s.shop, pid, "sale", "success", settleTimeout)
		return pid
	}
	before := scrape(t, s.caddy)
	first := sale()
	waitSettled(t, s.fake, 2, settleTimeout)
	mid := scrape(t, s.caddy)
	for series, want := range map[string]float64{forwarded: 2, gateSigned: 1, resigned: 1, qrMiss: 1} {
		if got := mid[series] - before[series]; got != want {
			t.Errorf("after one WeChat sale %s moved by %v, want %v", series, got, want)
		}
	}
	if mid[fmt.Sprintf(`caddy_ecommpay_forward_duration_seconds_count{project="%d"}`, projectID)] < 2 {
		t.Errorf("the forward duration histogram did not count the deliveries")
	}

	reload(t, s.caddy)
	time.Sleep(200 * time.Millisecond) // the old config stops after the new one starts

	// A callback delivered before the reload is still known afterwards.
	for _, cb := range s.fake.callbacksFor(first) {
		code, hdr, _, err := s.fake.postRaw(s.caddy.callbackURL(), cb.Body, nil)
		if err != nil || code != http.StatusOK || hdr.Get("X-Ecommpay-Duplicate") != "1" {
			t.Fatalf("repeat after reload: %d dup=%q err=%v", code, hdr.Get("X-Ecommpay-Duplicate"), err)
		}
	}
	sale()
	waitSettled(t, s.fake, 4, settleTimeout)
	after := scrape(t, s.caddy)
	if got := after[forwarded] - mid[forwarded]; got != 2 {
		t.Errorf("after the reload forwarded moved by %v, want 2", got)
	}
	if got := after[duplicate] - mid[duplicate]; got != 2 {
		t.Errorf("after the reload duplicate moved by %v, want 2", got)
	}
	if got := after[gateSigned] - mid[gateSigned]; got != 1 {
		t.Errorf("after the reload gate signatures moved by %v, want 1", got)
	}
	if st := s.shop.state(t); st.CallbackPosts != 4 {
		t.Errorf("shop received %d callback POSTs, want 4", st.CallbackPosts)
	}
}
