package integration

import (
	"bufio"
	"fmt"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/sandbox"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// redisServer is a redis-server this test started, or one given by
// ECOMMPAY_TEST_REDIS_URL (then cmd is nil).
type redisServer struct {
	url    string
	addr   string
	cmd    *exec.Cmd
	exited chan struct{}
	log    string
}

// startRedis returns a redis for the test: ECOMMPAY_TEST_REDIS_URL if set
// (loopback only), else a fresh redis-server on a free loopback port.
func startRedis(t *testing.T) *redisServer {
	t.Helper()
	if env := os.Getenv("ECOMMPAY_TEST_REDIS_URL"); env != "" {
		u, err := url.Parse(env)
		if err != nil {
			t.Fatalf("ECOMMPAY_TEST_REDIS_URL: %v", err)
		}
		if ip := net.ParseIP(u.Hostname()); ip == nil || !ip.IsLoopback() {
			t.Fatalf("ECOMMPAY_TEST_REDIS_URL must point at a loopback address, got %q", u.Host)
		}
		r := &redisServer{url: env, addr: u.Host}
		if err := redisPing(r.addr, 5*time.Second); err != nil {
			t.Fatalf("redis at %s: %v", r.addr, err)
		}
		return r
	}
	bin := needTool(t, "redis-server", "redis-server")
	port := freePort(t)
	dir := t.TempDir()
	logPath := filepath.Join(dir, "redis.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--dir", dir, "--protected-mode", "yes", "--daemonize", "no")
	cmd.Stdout = logf
	cmd.Stderr = logf
	if err := cmd.Start(); err != nil {
		t.Fatalf("start redis-server: %v", err)
	}
	r := &redisServer{
		url: fmt.Sprintf("redis://127.0.0.1:%d/0", port), addr: fmt.Sprintf("127.0.0.1:%d", port),
		cmd: cmd, exited: make(chan struct{}), log: logPath,
	}
	go func() {
		cmd.Wait()
		logf.Close()
		close(r.exited)
	}()
	t.Cleanup(func() {
		r.stop()
		if t.Failed() {
			t.Logf("---- redis log ----\n%s", tailFile(logPath, 30))
		}
	})
	if err := redisPing(r.addr, 10*time.Second); err != nil {
		t.Fatalf("redis-server did not answer: %v\n%s", err, tailFile(logPath, 30))
	}
	return r
}

func (r *redisServer) stop() {
	if r.cmd == nil {
		return
	}
	select {
	case <-r.exited:
		return
	default:
	}
	r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.exited:
	case <-time.After(5 * time.Second):
		r.cmd.Process.Kill()
		<-r.exited
	}
}

// redisPing sends PING until +PONG or timeout.
func redisPing(addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		conn, err := net.DialTimeout("tcp", addr, 500*time.Millisecond)
		if err == nil {
			conn.SetDeadline(time.Now().Add(time.Second))
			_, err = io.WriteString(conn, "PING\r\n")
			if err == nil {
				var line string
				line, err = bufio.NewReader(conn).ReadString('\n')
				if err == nil && strings.HasPrefix(line, "+PONG") {
					conn.Close()
					return nil
				}
				if err == nil {
					err = fmt.Errorf("answer %q", line)
				}
			}
			conn.Close()
		}
		last = err
		time.Sleep(50 * time.Millisecond)
	}
	return last
}

// TestCluster: two Caddy nodes share one redis. The platform sprays every
// callback at both nodes at once (two copies each); the shop stores every
// event exactly once. A QR hosted by one node is served by the other.
func TestCluster(t *testing.T) {
	requireCaddy(t)
	redis := startRedis(t)
	secret, fake, shop, nodeA, nodeB := startTwoNodes(t, func(c *caddyConfig) {
		c.Dedupe = "redis " + redis.url
		c.TTL = "10m" // keys left in a shared Redis (ECOMMPAY_TEST_REDIS_URL) expire soon
		c.QR = fmt.Sprintf("url http://127.0.0.1:%d/ecommpay/qr", c.Public)
	})
	fake.configure(func(k *sandbox.Knobs) { k.Copies = 2 })
	t.Cleanup(fake.stopDeliveries)
	// A slow shop keeps the first copy in flight while the others arrive.
	shop.admin(t, "slow?ms=300")

	wx, ali, mb := newPaymentID("cl-wx"), newPaymentID("cl-ali"), newPaymentID("cl-mb")
	s := &stack{t: t, secret: secret, fake: fake, shop: shop, caddy: nodeA}
	checkGateAccepted(t, s, shop.call(t, "/buy", map[string]any{"method": "wechat", "payment_id": wx, "amount": 1000, "currency": "CNY"}), "/v2/payment/wallet/wechat/sale", wx)
	checkGateAccepted(t, s, shop.call(t, "/buy", map[string]any{"method": "alipay", "payment_id": ali, "amount": 40000, "currency": "CNY"}), "/v2/payment/wallet/alipay/sale", ali)
	checkGateAccepted(t, s, shop.call(t, "/buy", map[string]any{"method": "mbway", "payment_id": mb, "amount": 1000, "currency": "EUR"}), "/v2/payment/wallet/mbway/sale", mb)
	waitShopEvent(t, shop, mb, "sale", "success", settleTimeout)
	out := shop.call(t, "/refund", map[string]any{"method": "mbway", "payment_id": mb, "amount": 1000, "currency": "EUR", "generic": true})
	if out.Status != 200 {
		t.Fatalf("refund: %d %v", out.Status, out.Answer)
	}
	waitShopEvent(t, shop, mb, "refund", "success", settleTimeout)
	waitShopEvent(t, shop, wx, "sale", "success", settleTimeout)
	waitShopEvent(t, shop, ali, "sale", "decline", settleTimeout)
	// 7 callbacks × 2 nodes × 2 copies.
	waitSettled(t, fake, 28, settleTimeout)

	st := shop.state(t)
	matched := checkExactlyOnce(t, fake, st)
	if len(fake.allCallbacks()) != 7 || len(st.Events) != 7 {
		t.Errorf("fake produced %d callbacks, shop stored %d events; want 7 and 7", len(fake.allCallbacks()), len(st.Events))
	}
	perNode := map[string]int{}
	for _, d := range fake.deliveriesOf(nil) {
		for _, a := range d.Attempts {
			if a.Status == 200 && !a.Duplicate {
				perNode[d.URL]++
			}
		}
	}
	t.Logf("forwarded by node: %v", perNode)
	for _, e := range matched {
		checkForwarded(t, e)
		reverify(t, e, secret)
	}

	// The hosted QR.
	qrURL := st.Payments[wx].QRURL
	if qrURL == "" {
		t.Fatalf("shop got no qr_url for %s: %+v", wx, st.Payments[wx])
	}
	for _, e := range st.eventsFor(wx) {
		if e.OperationStatus == "awaiting customer" {
			if typ := str(jsonPath(e.Body, "display_data", 0, "type")); typ != "qr_url" {
				t.Errorf("display_data[0].type = %q, want qr_url", typ)
			}
			if src := str(jsonPath(e.Body, "display_data", 0, "source")); src != fake.payment(wx).QR {
				t.Errorf("display_data[0].source = %q, want %q", src, fake.payment(wx).QR)
			}
		}
	}
	u, err := url.Parse(qrURL)
	if err != nil || !u.IsAbs() {
		t.Fatalf("qr_url %q is not an absolute URL", qrURL)
	}
	var self, other *caddyProc
	switch {
	case strings.HasPrefix(qrURL, nodeA.publicURL()+"/ecommpay/qr/"):
		self, other = nodeA, nodeB
	case strings.HasPrefix(qrURL, nodeB.publicURL()+"/ecommpay/qr/"):
		self, other = nodeB, nodeA
	default:
		t.Fatalf("qr_url %q is under neither node's base", qrURL)
	}
	t.Logf("QR hosted by %s at %s; fetching it from %s", self.name, qrURL, other.name)
	want := fake.payment(wx).QR
	for _, node := range []*caddyProc{other, self} {
		target := node.publicURL() + u.RequestURI()
		if err := mustLoopbackURL(target); err != nil {
			t.Fatal(err)
		}
		resp, err := testClient.Get(target)
		if err != nil {
			t.Fatal(err)
		}
		png, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "image/png") {
			t.Errorf("%s serving %s: %d %q", node.name, u.Path, resp.StatusCode, resp.Header.Get("Content-Type"))
			continue
		}
		if got := decodeQRGozxing(t, png); got != want {
			t.Errorf("%s: QR decodes to %q (gozxing), want %q", node.name, got, want)
		}
		if got := decodeQRZbar(t, png); got != want {
			t.Errorf("%s: QR decodes to %q (zbarimg), want %q", node.name, got, want)
		}
	}
	// A changed link is not served.
	bad := other.publicURL() + u.Path[:len(u.Path)-1] + flipChar(u.Path[len(u.Path)-1:])
	if u.RawQuery != "" {
		bad += "?" + u.RawQuery
	}
	resp, err := testClient.Get(bad)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("a changed QR link %s: %d, want 404", bad, resp.StatusCode)
	}

	// The shared store goes away: callbacks are refused with 503 and do not
	// reach the shop (on_store_error reject).
	if redis.cmd != nil {
		redis.stop()
		before := shop.state(t).CallbackPosts
		body := fake.signedCallback(mb, "refund", "decline")
		for _, node := range []*caddyProc{nodeA, nodeB} {
			code, _, ans, err := fake.postRaw(node.callbackURL(), body, nil)
			if err != nil {
				t.Fatal(err)
			}
			if code != http.StatusServiceUnavailable {
				t.Errorf("%s with redis down: %d %q, want 503", node.name, code, ans)
			}
		}
		if after := shop.state(t).CallbackPosts; after != before {
			t.Errorf("a callback reached the shop while the de-dup store was down")
		}
	}
}

// startTwoNodes starts a fake ecommpay, a shop and two Caddy nodes whose
// configs mutate adjusts (a shared store, at least); the fake delivers
// callbacks to both nodes.
func startTwoNodes(t *testing.T, mutate func(*caddyConfig)) (string, *fakeEcommpay, *shopProc, *caddyProc, *caddyProc) {
	t.Helper()
	secret := newSecret()
	fake := startFake(t, secret)
	cfgA := newCaddyConfig(t, fake.port(), 0)
	cfgB := newCaddyConfig(t, fake.port(), 0)
	shop := startShop(t, fmt.Sprintf("http://127.0.0.1:%d", cfgA.Internal), secret, 0)
	for _, c := range []*caddyConfig{&cfgA, &cfgB} {
		c.App = shop.port
		mutate(c)
	}
	nodeA := startCaddy(t, "node A", cfgA, secret)
	nodeB := startCaddy(t, "node B", cfgB, secret)
	fake.setCallbackURLs(nodeA.callbackURL(), nodeB.callbackURL())
	return secret, fake, shop, nodeA, nodeB
}

func flipChar(s string) string {
	if s == "A" {
		return "B"
	}
	return "A"
}
