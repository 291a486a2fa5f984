package integration

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/vectors"
)

// startPHPShop serves shop/shop.php with PHP's built-in server (Debian
// php-cli, with php-sqlite3 for the receiver's PDO SQLite). Its callbacks
// are taken by examples/app/receiver.php, the app guide's receiver.
func startPHPShop(t testing.TB, caddyInternal, secret string) *shopProc {
	t.Helper()
	php := needPHP(t)
	dir := t.TempDir()
	s := &shopProc{t: t, dir: dir, logPath: filepath.Join(dir, "shop.log"), port: freePort(t)}
	s.base = fmt.Sprintf("http://127.0.0.1:%d", s.port)
	logf, err := os.Create(s.logPath)
	if err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(repoRoot, "integration", "shop", "shop.php")
	cmd := exec.Command(php, "-S", fmt.Sprintf("127.0.0.1:%d", s.port), script)
	cmd.Dir = dir
	cmd.Env = append(filterEnv(os.Environ(), "APP_DB", "SHOP_CADDY_INTERNAL", "SHOP_VERIFY_SECRET", "PHP_CLI_SERVER_WORKERS"),
		"APP_DB="+filepath.Join(dir, "shop.db"),
		"SHOP_CADDY_INTERNAL="+caddyInternal,
		"SHOP_VERIFY_SECRET="+secret,
		// The built-in server answers one request at a time without workers;
		// Caddy delivers callbacks while the tests poll /state.
		"PHP_CLI_SERVER_WORKERS=4",
	)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group, so that stopping it stops its workers too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start php shop: %v", err)
	}
	s.cmd, s.exited = cmd, make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(s.exited) }()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-s.exited:
		case <-time.After(5 * time.Second):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-s.exited
		}
		if t.Failed() {
			t.Logf("---- php shop log (%s) ----\n%s", s.logPath, tailFile(s.logPath, 60))
		}
	})
	eventually(t, 15*time.Second, "the PHP shop to answer", func() (bool, string) {
		select {
		case <-s.exited:
			t.Fatalf("php shop exited at start:\n%s", tailFile(s.logPath, 40))
		default:
		}
		resp, err := testClient.Get(s.base + "/state")
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		return resp.StatusCode == 200, resp.Status
	})
	return s
}

// needPHP returns the php binary, skipping (failing when CI=true) without
// php-cli or its PDO SQLite driver.
func needPHP(t testing.TB) string {
	t.Helper()
	php := needTool(t, "php", "php-cli")
	if out, err := exec.Command(php, "-r", "exit(extension_loaded('pdo_sqlite') ? 0 : 1);").CombinedOutput(); err != nil {
		msg := fmt.Sprintf("php has no PDO SQLite (install the Debian package php-sqlite3): %v %s", err, out)
		if onCI() {
			t.Fatal(msg + "; required when CI=true")
		}
		t.Skip(msg)
	}
	return php
}

// newPHPStack is newStack with the PHP shop as the app.
func newPHPStack(t *testing.T) *stack {
	t.Helper()
	requireCaddy(t)
	secret := newSecret()
	fake := startFake(t, secret)
	cfg := newCaddyConfig(t, fake.port(), 0)
	shop := startPHPShop(t, fmt.Sprintf("http://127.0.0.1:%d", cfg.Internal), secret)
	cfg.App = shop.port
	caddy := startCaddy(t, "caddy", cfg, secret)
	fake.setCallbackURLs(caddy.callbackURL())
	t.Cleanup(fake.stopDeliveries)
	return &stack{t: t, secret: secret, fake: fake, shop: shop, caddy: caddy}
}

// checkPHPShopGot asserts that the PHP shop stored every callback of the
// payment once, verified (by examples/app/verify.php) and byte for byte
// unless rewritten, and returns the stored events by callback.
func checkPHPShopGot(t *testing.T, s *stack, pid string, callbacks int) map[int]*shopEvent {
	t.Helper()
	waitSettled(t, s.fake, callbacks, settleTimeout)
	st := s.shop.state(t)
	matched := checkExactlyOnce(t, s.fake, st, pid)
	cbs := s.fake.callbacksFor(pid)
	if len(cbs) != callbacks {
		t.Fatalf("fake produced %d callbacks for %s, want %d", len(cbs), pid, callbacks)
	}
	for _, cb := range cbs {
		if e := matched[cb.Seq]; e != nil {
			checkForwarded(t, e)
			reverify(t, e, s.secret)
		}
	}
	return matched
}

// replayTo replays a stored event from the console API and checks that the
// PHP shop took it (200) without storing it again.
func replayTo(t *testing.T, s *stack, key string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, s.caddy.internalURL()+"/ecommpay/api/events/"+url.PathEscape(key)+"/replay", strings.NewReader("{}"))
	req.Header.Set("Content-Type", "application/json")
	resp, err := testClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var replay struct {
		AppStatus int `json:"app_status"`
	}
	json.NewDecoder(resp.Body).Decode(&replay)
	resp.Body.Close()
	if resp.StatusCode != 200 || replay.AppStatus != 200 {
		t.Fatalf("replay of %s: HTTP %d, the shop answered %d; want 200 from both", key, resp.StatusCode, replay.AppStatus)
	}
	st := s.shop.state(t)
	e := st.Events[key]
	if e == nil || e.Replays != 1 || e.Count != 1 {
		t.Fatalf("after a replay of %s the shop has %+v, want it stored once and replayed once", key, e)
	}
	n := 0
	for _, k := range st.EventOrder {
		if k == key {
			n++
		}
	}
	if n != 1 {
		t.Errorf("the replayed event is stored %d times", n)
	}
}

// The PHP shop sells with WeChat through Gate (the QR arrives as a PNG),
// then through a Payment Page URL it asked Caddy for; a replay is taken
// without being stored twice.
func TestPHPShopWeChat(t *testing.T) {
	s := newPHPStack(t)
	pid := newPaymentID("php-wx")
	out := s.shop.call(t, "/buy", map[string]any{"method": "wechat", "payment_id": pid, "amount": 1000, "currency": "CNY"})
	checkGateAccepted(t, s, out, "/v2/payment/wallet/wechat/sale", pid)
	waitShopEvent(t, s.shop, pid, "sale", "success", settleTimeout)
	matched := checkPHPShopGot(t, s, pid, 2)

	cbs := s.fake.callbacksFor(pid)
	inter := matched[cbs[0].Seq]
	if inter == nil {
		t.Fatal("the intermediate callback was not stored")
	}
	if inter.PaymentStatus != "awaiting customer" {
		t.Errorf("intermediate payment status %q", inter.PaymentStatus)
	}
	entry := jsonPath(inter.Body, "display_data", 0)
	if str(jsonPath(entry, "type")) != "qr_img" {
		t.Fatalf("display_data[0] = %v, want a qr_img", entry)
	}
	png, err := base64.StdEncoding.DecodeString(str(jsonPath(entry, "data")))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := decodeQRGozxing(t, png), s.fake.payment(pid).QR; got != want {
		t.Errorf("the stored QR image decodes to %q, want %q", got, want)
	}
	replayTo(t, s, matched[cbs[1].Seq].Key)

	ppid := newPaymentID("php-pp")
	openPaymentPage(t, s, ppid, "wechat", "CNY", 2500)
	e := waitShopEvent(t, s.shop, ppid, "sale", "success", settleTimeout)
	checkForwarded(t, e)
	if fp := s.fake.payment(ppid); fp.Source != "payment_page" || fp.Amount != 2500 {
		t.Errorf("fake's payment %+v, want one from the Payment Page", fp)
	}
	checkPHPShopGot(t, s, ppid, 2)
}

// The PHP shop sells with MBWay through Gate: a redirect, then success.
func TestPHPShopMBWay(t *testing.T) {
	s := newPHPStack(t)
	pid := newPaymentID("php-mbw")
	out := s.shop.call(t, "/buy", map[string]any{"method": "mbway", "payment_id": pid, "amount": 1000, "currency": "EUR"})
	checkGateAccepted(t, s, out, "/v2/payment/wallet/mbway/sale", pid)
	waitShopEvent(t, s.shop, pid, "sale", "success", settleTimeout)
	matched := checkPHPShopGot(t, s, pid, 2)
	cbs := s.fake.callbacksFor(pid)
	for _, cb := range cbs {
		if e := matched[cb.Seq]; e != nil {
			sameBytes(t, cb, e) // nothing to rewrite: the bytes ecommpay sent
		}
	}
	inter := matched[cbs[0].Seq]
	if inter == nil || inter.PaymentStatus != "awaiting redirect result" ||
		str(jsonPath(inter.Body, "redirect_data", "url")) != s.fake.payment(pid).Redirect {
		t.Errorf("intermediate MBWay event %+v, want awaiting redirect result with the provider's URL", inter)
	}
	if p := s.shop.state(t).Payments[pid]; p == nil || p.LastStatus != "success" {
		t.Errorf("the shop's payment %+v, want last status success", p)
	}
}

// examples/app/verify.php, the guide's optional check, computes every
// conformance vector's canonical string and signature, and accepts and
// refuses each callback vector as the official SDKs do.
func TestPHPVerifyConformance(t *testing.T) {
	php := needPHP(t)
	cmd := exec.Command(php, filepath.Join("shop", "selftest.php"), vectors.Path())
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if !strings.Contains(string(out), "selftest: 54 vectors, 0 failed") {
		t.Errorf("selftest: %s", out)
	}
}
