package integration

// The hostile suite: faults and attacks against the built Caddy, through the
// real harness. Each test asserts what the sender (ecommpay or an attacker)
// got and what the app received: nothing unverified, nothing twice, nothing
// lost. Run only these with
//
//	go test -race -run 'Hostile' ./integration

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// ---- helpers ----

// genuineCallback builds a final sale callback as ecommpay sends it, signed
// with secret; mut may change the body before it is signed.
func genuineCallback(secret, paymentID string, mut func(map[string]any)) []byte {
	opID, _ := strconv.ParseInt(randDigits(14), 10, 64)
	body := map[string]any{
		"project_id": projectID,
		"payment": map[string]any{
			"id": paymentID, "type": "purchase", "status": "success", "date": platformDate(time.Now()),
			"method": "MBWay", "sum": sum(1000, "EUR"), "description": "order " + paymentID,
		},
		"customer": map[string]any{"id": "c1"},
		"operation": map[string]any{
			"id": opID, "type": "sale", "status": "success", "date": platformDate(time.Now()),
			"sum_initial": sum(1000, "EUR"), "code": "0", "message": "Success",
		},
	}
	if mut != nil {
		mut(body)
	}
	return signJSONWithSignatureAt(body, secret, false)
}

// wellFormedJunkSignature has the shape of a real signature (88 characters
// of base64 for 64 bytes) and verifies nothing, so Caddy gets as far as
// building the canonical string.
var wellFormedJunkSignature = base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{0x5a}, 64))

type answer struct {
	status     int
	duplicate  bool
	retryAfter string
	body       string
	took       time.Duration
	err        error
}

var hostileClient = &http.Client{Timeout: 30 * time.Second, Transport: newTransport()}

// send POSTs body to url with the given headers (set as written, without
// canonicalising the names).
func send(url string, body []byte, hdr map[string]string) answer {
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return answer{err: err}
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range hdr {
		req.Header[k] = []string{v}
	}
	start := time.Now()
	resp, err := hostileClient.Do(req)
	if err != nil {
		return answer{err: err, took: time.Since(start)}
	}
	defer resp.Body.Close()
	ans, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	return answer{
		status: resp.StatusCode, duplicate: resp.Header.Get("X-Ecommpay-Duplicate") == "1",
		retryAfter: resp.Header.Get("Retry-After"), body: string(ans), took: time.Since(start),
	}
}

func (a answer) String() string {
	if a.err != nil {
		return fmt.Sprintf("error %v after %s", a.err, a.took.Round(time.Millisecond))
	}
	b := a.body
	if len(b) > 200 {
		b = b[:200] + "..."
	}
	return fmt.Sprintf("%d dup=%v retry-after=%q %q in %s", a.status, a.duplicate, a.retryAfter, strings.TrimSpace(b), a.took.Round(time.Millisecond))
}

// dialRaw opens a plain TCP connection to a loopback port, for requests
// the Go client would not send as written.
func dialRaw(t *testing.T, port int) net.Conn {
	t.Helper()
	conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 2*time.Second)
	if err != nil {
		t.Fatalf("dial %d: %v", port, err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// readRaw reads one response from conn within timeout.
func readRaw(conn net.Conn, br *bufio.Reader, timeout time.Duration) (*http.Response, string, error) {
	_ = conn.SetReadDeadline(time.Now().Add(timeout))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	return resp, string(b), nil
}

// closedWithin reports whether the peer closes conn within d (after the
// response was read).
func closedWithin(conn net.Conn, br *bufio.Reader, d time.Duration) (bool, error) {
	_ = conn.SetReadDeadline(time.Now().Add(d))
	_, err := br.ReadByte()
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return false, err
	}
	return err != nil, err
}

// memKB reads the resident set (VmRSS) and its peak (VmHWM) of the Caddy
// process, in KiB.
func (c *caddyProc) memKB(t testing.TB) (rss, peak int64) {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", c.cmd.Process.Pid))
	if err != nil {
		t.Fatalf("read Caddy's /proc status: %v", err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		n, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "VmRSS:":
			rss = n
		case "VmHWM:":
			peak = n
		}
	}
	return rss, peak
}

// expectStoredOnce asserts the shop stored the payment's one event once,
// verified, that it rejected nothing forwarded, and returns the event.
func expectStoredOnce(t *testing.T, s *stack, paymentID string) *shopEvent {
	t.Helper()
	st := s.shop.state(t)
	if len(st.Rejected) > 0 {
		t.Errorf("the shop rejected %d forwarded callbacks (its own verification failed), first: %v", len(st.Rejected), st.Rejected[0])
	}
	evs := st.eventsFor(paymentID)
	if len(evs) != 1 {
		t.Fatalf("shop stored %d events for %s, want 1", len(evs), paymentID)
	}
	e := evs[0]
	if e.Count != 1 {
		t.Errorf("the event for %s reached the shop %d times, want 1", paymentID, e.Count)
	}
	checkForwarded(t, e)
	reverify(t, e, s.secret)
	return e
}

// appRecorder is a small app in Go behind Caddy's callback route: it
// records every request exactly as it arrived (headers, trailers, body) and
// answers as told.
type appRecorder struct {
	port int
	// answer decides, for the n-th request (from 1), the status and how
	// long to work first.
	answer func(n int) (status int, delay time.Duration)

	mu   sync.Mutex
	reqs []*appRequest
}

type appRequest struct {
	Arrived, Answered time.Time
	Path, Query       string
	Header, Trailer   http.Header
	Body              []byte
	Status            int
}

func startAppRecorder(t *testing.T, answer func(n int) (int, time.Duration)) *appRecorder {
	t.Helper()
	a := &appRecorder{answer: answer}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a.port = ln.Addr().(*net.TCPAddr).Port
	srv := &http.Server{Handler: a, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return a
}

func (a *appRecorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(io.LimitReader(r.Body, 4<<20))
	rec := &appRequest{Arrived: time.Now(), Path: r.URL.Path, Query: r.URL.RawQuery, Header: r.Header.Clone(), Trailer: r.Trailer.Clone(), Body: body}
	a.mu.Lock()
	a.reqs = append(a.reqs, rec)
	n := len(a.reqs)
	a.mu.Unlock()
	status, delay := http.StatusOK, time.Duration(0)
	if a.answer != nil {
		status, delay = a.answer(n)
	}
	time.Sleep(delay)
	a.mu.Lock()
	rec.Status, rec.Answered = status, time.Now()
	a.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	fmt.Fprintf(w, `{"n":%d}`, n)
}

func (a *appRecorder) requests() []appRequest {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]appRequest, len(a.reqs))
	for i, r := range a.reqs {
		out[i] = *r
	}
	return out
}

// storeLine is the de-dup setting of the extra sites' callback handlers:
// the public callback route's own, so that every handler of the process
// shares one store.
func storeLine(c *caddyConfig) string {
	if c.Dedupe == "" {
		return "# the default store"
	}
	return "dedupe " + c.Dedupe
}

// moduleHeaderName reports whether a header name is X-Ecommpay-* in any
// case, with '_' for '-'.
func moduleHeaderName(name string) bool {
	return strings.HasPrefix(strings.ReplaceAll(strings.ToLower(name), "_", "-"), "x-ecommpay-")
}

// ---- 1. ecommpay hangs up during a slow forward ----

// TestHostileHangUpDuringSlowForward: ecommpay hangs up one second into a
// three-second delivery and retries. The retry may be answered as a
// duplicate only once the app's 2xx was committed; the app gets the event
// exactly once when it acknowledges it, and again only when it did not.
func TestHostileHangUpDuringSlowForward(t *testing.T) {
	requireCaddy(t)

	// hangUpAndRetry sends body, hangs up after a second, then retries
	// every 250 ms until an answer is 200, and returns the answers with
	// their time from the first send.
	hangUpAndRetry := func(t *testing.T, s *stack, body []byte) (time.Time, []answer, []time.Duration) {
		t.Helper()
		start := time.Now()
		conn := dialRaw(t, s.caddy.cfg.Public)
		fmt.Fprintf(conn, "POST /ecommpay/callback HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
		time.Sleep(time.Second)
		conn.Close() // ecommpay gives up on this attempt
		var answers []answer
		var at []time.Duration
		for time.Since(start) < 15*time.Second {
			time.Sleep(250 * time.Millisecond)
			a := send(s.caddy.callbackURL(), body, nil)
			answers, at = append(answers, a), append(at, time.Since(start))
			if a.status == http.StatusOK {
				break
			}
		}
		return start, answers, at
	}

	t.Run("app acknowledges late", func(t *testing.T) {
		s := newStack(t, nil)
		s.shop.admin(t, "slow?ms=3000")
		before := s.shop.state(t).CallbackPosts
		pid := newPaymentID("hangup")
		body := genuineCallback(s.secret, pid, nil)
		_, answers, at := hangUpAndRetry(t, s, body)
		inFlight := 0
		for i, a := range answers {
			t.Logf("retry at %s: %s", at[i].Round(time.Millisecond), a)
			last := i == len(answers)-1
			switch {
			case !last && a.status == http.StatusConflict && a.retryAfter != "":
				inFlight++
			case !last:
				t.Errorf("retry at %s: %s, want 409 with Retry-After while the first delivery runs", at[i].Round(time.Millisecond), a)
			case a.status != http.StatusOK || !a.duplicate:
				t.Errorf("last retry at %s: %s, want 200 with X-Ecommpay-Duplicate: 1 (the app acknowledged the first delivery)", at[i].Round(time.Millisecond), a)
			case at[i] < 3*time.Second:
				t.Errorf("a duplicate answer at %s, before the app could have acknowledged (it works 3 s)", at[i].Round(time.Millisecond))
			}
		}
		if inFlight == 0 {
			t.Errorf("no retry came while the first delivery was running; the test did not test the hang-up")
		}
		st := s.shop.state(t)
		if n := st.CallbackPosts - before; n != 1 {
			t.Errorf("the shop got %d callback POSTs, want 1", n)
		}
		expectStoredOnce(t, s, pid)
		s.shop.admin(t, "slow?ms=0")
		if a := send(s.caddy.callbackURL(), body, nil); a.status != 200 || !a.duplicate {
			t.Errorf("a later retry: %s, want a duplicate 200", a)
		}
		if n := s.shop.state(t).CallbackPosts - before; n != 1 {
			t.Errorf("the shop got %d callback POSTs after the later retry, want 1", n)
		}
	})

	t.Run("app refuses late", func(t *testing.T) {
		// The app works three seconds and then answers 500: nothing is
		// committed, the retry is delivered, and only then is it a duplicate.
		var app *appRecorder
		s := newStack(t, func(c *caddyConfig) {
			app = startAppRecorder(t, func(n int) (int, time.Duration) {
				if n == 1 {
					return http.StatusInternalServerError, 3 * time.Second
				}
				return http.StatusOK, 0
			})
			c.App = app.port
		})
		body := genuineCallback(s.secret, newPaymentID("hangup-500"), nil)
		_, answers, at := hangUpAndRetry(t, s, body)
		for i, a := range answers {
			t.Logf("retry at %s: %s", at[i].Round(time.Millisecond), a)
			last := i == len(answers)-1
			switch {
			case !last && a.status == http.StatusConflict && a.retryAfter != "":
			case !last:
				t.Errorf("retry at %s: %s, want 409 with Retry-After while the first delivery runs", at[i].Round(time.Millisecond), a)
			case a.status != http.StatusOK || a.duplicate:
				t.Errorf("last retry: %s, want 200 without X-Ecommpay-Duplicate (the app refused the first delivery)", a)
			}
		}
		reqs := app.requests()
		if len(reqs) != 2 {
			t.Fatalf("the app got %d deliveries, want 2 (the refused one and the retry)", len(reqs))
		}
		if reqs[0].Status != 500 || reqs[1].Status != 200 {
			t.Errorf("the app answered %d then %d, want 500 then 200", reqs[0].Status, reqs[1].Status)
		}
		if k0, k1 := reqs[0].Header.Get("X-Ecommpay-Event-Key"), reqs[1].Header.Get("X-Ecommpay-Event-Key"); k0 == "" || k0 != k1 {
			t.Errorf("event keys %q and %q, want one key for both attempts", k0, k1)
		}
		if reqs[1].Arrived.Before(reqs[0].Answered) {
			t.Errorf("the retry reached the app at %s, before the first attempt ended at %s", reqs[1].Arrived.Format("15:04:05.000"), reqs[0].Answered.Format("15:04:05.000"))
		}
		for i, r := range reqs {
			if ok, why := verifyCallbackBody(r.Body, s.secret); !ok {
				t.Errorf("delivery %d does not verify: %s", i+1, why)
			}
		}
		if a := send(s.caddy.callbackURL(), body, nil); a.status != 200 || !a.duplicate {
			t.Errorf("a retry after the acknowledged delivery: %s, want a duplicate 200", a)
		}
		if n := len(app.requests()); n != 2 {
			t.Errorf("the app got %d deliveries after the duplicate, want 2", n)
		}
	})

	t.Run("app slower than forward_timeout", func(t *testing.T) {
		// Caddy gives up on the app after forward_timeout and tells
		// ecommpay to retry; the app's late 2xx is not committed, so the
		// retry is delivered again, under the same event key for the
		// app's own idempotency.
		var app *appRecorder
		s := newStack(t, func(c *caddyConfig) {
			app = startAppRecorder(t, func(n int) (int, time.Duration) {
				if n == 1 {
					return http.StatusOK, 2 * time.Second
				}
				return http.StatusOK, 0
			})
			c.App = app.port
			c.ForwardTimeout = "1s"
		})
		body := genuineCallback(s.secret, newPaymentID("timeout"), nil)
		a := send(s.caddy.callbackURL(), body, nil)
		if a.status != http.StatusGatewayTimeout || a.retryAfter == "" || a.took > 2*time.Second {
			t.Errorf("a delivery that outlasts forward_timeout: %s, want 504 with Retry-After after about 1 s", a)
		}
		if a := send(s.caddy.callbackURL(), body, nil); a.status != http.StatusOK || a.duplicate {
			t.Errorf("the retry: %s, want 200 delivered (the late 2xx was not committed)", a)
		}
		if a := send(s.caddy.callbackURL(), body, nil); a.status != http.StatusOK || !a.duplicate {
			t.Errorf("a retry after the acknowledged delivery: %s, want a duplicate 200", a)
		}
		reqs := app.requests()
		if len(reqs) != 2 {
			t.Fatalf("the app got %d deliveries, want 2", len(reqs))
		}
		if k0, k1 := reqs[0].Header.Get("X-Ecommpay-Event-Key"), reqs[1].Header.Get("X-Ecommpay-Event-Key"); k0 == "" || k0 != k1 {
			t.Errorf("event keys %q and %q, want one key for both deliveries", k0, k1)
		}
	})

	t.Run("app slower than read_timeout while ecommpay waits", func(t *testing.T) {
		// The read deadline must bound the body only: a delivery that
		// outlasts it still answers the waiting sender.
		s := newStack(t, func(c *caddyConfig) { c.CallbackOptions = "read_timeout 1s" })
		s.shop.admin(t, "slow?ms=2500")
		pid := newPaymentID("slowapp")
		body := genuineCallback(s.secret, pid, nil)
		a := send(s.caddy.callbackURL(), body, nil)
		if a.status != 200 || a.duplicate {
			t.Errorf("a delivery that outlasts read_timeout: %s, want 200", a)
		}
		expectStoredOnce(t, s, pid)
	})
}

// ---- 2. a callback handler with nothing after it ----

// TestHostileCallbackWithNothingAfterIt: a site whose callback handle has no
// reverse_proxy (the proxy sits in another handle) answers 502 and commits
// nothing, so a retry through a correct route is delivered.
func TestHostileCallbackWithNothingAfterIt(t *testing.T) {
	var broken int
	s := newStack(t, func(c *caddyConfig) {
		broken = freePort(t)
		c.ExtraPorts = []int{broken}
		c.ExtraSites = fmt.Sprintf(`# a config mistake: nothing follows ecommpay callback in its handle
http://127.0.0.1:%d {
	handle /cb {
		ecommpay callback {
			project %d {env.ECOMMPAY_SECRET}
			%s
		}
	}
	handle {
		reverse_proxy 127.0.0.1:%d {
			rewrite /callback
		}
	}
}`, broken, projectID, storeLine(c), c.App)
	})
	before := s.shop.state(t).CallbackPosts
	pid := newPaymentID("nothing-after")
	body := genuineCallback(s.secret, pid, nil)
	brokenURL := fmt.Sprintf("http://127.0.0.1:%d/cb", broken)
	for i := 1; i <= 2; i++ {
		a := send(brokenURL, body, nil)
		if a.status != http.StatusBadGateway || a.retryAfter == "" || a.duplicate {
			t.Errorf("attempt %d on the broken route: %s, want 502 with Retry-After", i, a)
		}
	}
	if n := s.shop.state(t).CallbackPosts - before; n != 0 {
		t.Errorf("the shop got %d POSTs from the broken route, want 0", n)
	}
	if !s.caddy.logContains("nothing after `ecommpay callback`") {
		t.Errorf("Caddy did not log the config mistake")
	}
	// Both handlers share one de-dup store: had the 502 been committed,
	// this would be a duplicate.
	a := send(s.caddy.callbackURL(), body, nil)
	if a.status != http.StatusOK || a.duplicate {
		t.Errorf("the retry through the correct route: %s, want 200 delivered (not a duplicate)", a)
	}
	expectStoredOnce(t, s, pid)
	if a := send(brokenURL, body, nil); a.status != http.StatusOK || !a.duplicate {
		t.Errorf("the broken route after delivery: %s, want a duplicate 200", a)
	}
	if n := s.shop.state(t).CallbackPosts - before; n != 1 {
		t.Errorf("the shop got %d POSTs, want 1", n)
	}
}

// ---- 3. signing through a proxy ----

// TestHostileSigningThroughProxy: the signing endpoints refuse a request
// that came through a Caddy reverse_proxy hop, and any request carrying
// forwarding headers even from loopback, while a direct loopback client is
// still served.
func TestHostileSigningThroughProxy(t *testing.T) {
	var hop int
	s := newStack(t, func(c *caddyConfig) {
		hop = freePort(t)
		c.ExtraPorts = []int{hop}
		c.ExtraSites = fmt.Sprintf(`# a public listener that passes everything to the internal one
http://127.0.0.1:%d {
	reverse_proxy 127.0.0.1:%d
}`, hop, c.Internal)
	})
	pageQuery := func(pid string) string {
		return "/payment-page?payment_id=" + pid + "&payment_amount=1000&payment_currency=EUR&customer_id=c1"
	}
	gateBody := func(pid string) []byte {
		return []byte(`{"general":{"payment_id":"` + pid + `"},"customer":{"id":"c1","ip_address":"192.0.2.10"},"payment":{"amount":1000,"currency":"EUR"}}`)
	}
	const gatePath = "/v2/payment/wallet/alipay/sale"
	do := func(method, url string, body []byte, hdr map[string]string) answer {
		var rd io.Reader
		if body != nil {
			rd = bytes.NewReader(body)
		}
		req, _ := http.NewRequest(method, url, rd)
		if body != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		for k, v := range hdr {
			req.Header[k] = []string{v}
		}
		start := time.Now()
		resp, err := noRedirectClient.Do(req)
		if err != nil {
			return answer{err: err}
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return answer{status: resp.StatusCode, body: string(b), took: time.Since(start)}
	}
	hopURL := fmt.Sprintf("http://127.0.0.1:%d", hop)
	refused := []string{}

	// Through the hop (which adds X-Forwarded-For, -Proto and -Host).
	pid := newPaymentID("hop")
	refused = append(refused, pid)
	if a := do("GET", hopURL+pageQuery(pid), nil, nil); a.status != http.StatusForbidden || strings.Contains(a.body, "signature\":\"") {
		t.Errorf("payment_page through the reverse_proxy hop: %s, want 403 without a signature", a)
	}
	if a := do("POST", hopURL+gatePath, gateBody(pid), nil); a.status != http.StatusForbidden {
		t.Errorf("gate through the reverse_proxy hop: %s, want 403", a)
	}
	// Naming the forwarding headers in Connection does not make the hop
	// leave them out: it drops the client's copies and adds its own.
	conn := map[string]string{"Connection": "X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host, Via"}
	if a := do("GET", hopURL+pageQuery(pid), nil, conn); a.status != http.StatusForbidden {
		t.Errorf("payment_page through the hop with %v: %s, want 403", conn, a)
	}
	if a := do("POST", hopURL+gatePath, gateBody(pid), conn); a.status != http.StatusForbidden {
		t.Errorf("gate through the hop with %v: %s, want 403", conn, a)
	}
	// The console (journal, payments, replay) refuses the hop too.
	if a := do("GET", hopURL+"/ecommpay/api/events", nil, nil); a.status != http.StatusForbidden {
		t.Errorf("the console's events through the hop: %s, want 403", a)
	}
	if a := do("POST", hopURL+"/ecommpay/api/events/210-00000000000000000000000000000000/replay", []byte(`{}`), nil); a.status != http.StatusForbidden {
		t.Errorf("a console replay through the hop: %s, want 403", a)
	}
	if a := do("GET", s.caddy.internalURL()+"/ecommpay/api/events", nil, nil); a.status != http.StatusOK {
		t.Errorf("the console's events direct from loopback: %s, want 200", a)
	}
	// A proxied Gate request is refused before its body is read.
	{
		c := dialRaw(t, s.caddy.cfg.Internal)
		start := time.Now()
		fmt.Fprintf(c, "POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Forwarded-For: 203.0.113.9\r\nContent-Type: application/json\r\nContent-Length: 52428800\r\n\r\n{", gatePath)
		resp, _, err := readRaw(c, bufio.NewReader(c), 5*time.Second)
		switch {
		case err != nil:
			t.Errorf("a proxied Gate request declaring 50 MB: no answer: %v", err)
		case resp.StatusCode != http.StatusForbidden || time.Since(start) > time.Second:
			t.Errorf("a proxied Gate request declaring 50 MB: %d after %s, want 403 at once", resp.StatusCode, time.Since(start).Round(time.Millisecond))
		}
	}

	// Direct from loopback, but carrying forwarding headers.
	for _, h := range []map[string]string{
		{"X-Forwarded-For": "203.0.113.9"},
		{"Forwarded": "for=203.0.113.9"},
		{"Via": "1.1 proxy"},
		{"X-Real-IP": "203.0.113.9"},
		{"x-forwarded-host": "shop.example"},
		{"X-Forwarded-Proto": "https"},
		{"CF-Connecting-IP": "203.0.113.9"},
		{"True-Client-IP": "203.0.113.9"},
		{"X-Forwarded-For": ""},
		{"X-Forwarded-For": "127.0.0.1"},
	} {
		pid := newPaymentID("fwd")
		refused = append(refused, pid)
		if a := do("GET", s.caddy.internalURL()+pageQuery(pid), nil, h); a.status != http.StatusForbidden {
			t.Errorf("payment_page from loopback with %v: %s, want 403", h, a)
		}
		if a := do("POST", s.caddy.internalURL()+gatePath, gateBody(pid), h); a.status != http.StatusForbidden {
			t.Errorf("gate from loopback with %v: %s, want 403", h, a)
		}
	}
	// Caddy itself (since 2.11) drops every header whose name holds '_'
	// before any handler runs, so the module never sees these spellings:
	// the request is a direct loopback one and is signed. The module's own
	// check refuses them (the root's hardening_test.go) should Caddy ever pass them on.
	for _, h := range []map[string]string{
		{"X_Forwarded_For": "203.0.113.9"},
		{"x_real_ip": "203.0.113.9"},
	} {
		pid := newPaymentID("underscore")
		a := do("GET", s.caddy.internalURL()+pageQuery(pid), nil, h)
		t.Logf("payment_page from loopback with %v: %s", h, a)
		if a.status != http.StatusForbidden && a.status != http.StatusOK {
			t.Errorf("payment_page from loopback with %v: %s, want 403, or 200 as a direct request once Caddy dropped the header", h, a)
		}
	}
	for _, r := range s.fake.allRequests() {
		for _, p := range refused {
			if strings.Contains(string(r.Body), p) || strings.Contains(r.Query.Encode(), p) {
				t.Errorf("a refused signing request reached the platform: %s %s", r.Path, p)
			}
		}
	}

	// Direct loopback still signs.
	pid = newPaymentID("direct")
	a := do("GET", s.caddy.internalURL()+pageQuery(pid), nil, nil)
	var signed struct{ URL, Signature string }
	if a.status != http.StatusOK || json.Unmarshal([]byte(a.body), &signed) != nil || signed.URL == "" {
		t.Fatalf("payment_page direct from loopback: %s, want 200 with a signed URL", a)
	}
	if a := do("GET", signed.URL, nil, nil); a.status != http.StatusOK {
		t.Errorf("the platform refused the directly signed Payment Page URL: %s", a)
	}
	gpid := newPaymentID("direct-gate")
	if a := do("POST", s.caddy.internalURL()+gatePath, gateBody(gpid), nil); a.status != http.StatusOK {
		t.Errorf("gate direct from loopback: %s, want 200 from the platform", a)
	}
	var gates int
	for _, r := range s.fake.requestsTo(gatePath) {
		if strings.Contains(string(r.Body), gpid) {
			gates++
			if !r.SigOK {
				t.Errorf("the platform saw a bad signature on the direct Gate request: %s", r.SigReason)
			}
		}
	}
	if gates != 1 {
		t.Errorf("the platform got %d direct Gate requests, want 1", gates)
	}
}

// ---- 4. attacks ----

// TestHostileAmplification: bodies built so that the canonical string
// would be up to thousands of times their size (one long key above many
// values), sent one at a time and then two of each at once. Caddy must
// refuse each within 3 s, and its peak resident set must stay under
// 300 MiB.
func TestHostileAmplification(t *testing.T) {
	const (
		rssBound = 300 << 10 // KiB: the bound on Caddy's peak resident set
		killAt   = 2 << 20   // KiB: stop Caddy before it hurts the machine
		answerIn = 3 * time.Second
	)
	s := newStack(t, nil)
	before := s.shop.state(t).CallbackPosts
	zeros := func(n int) string { return strings.TrimSuffix(strings.Repeat("0,", n), ",") }
	head := `{"project_id":210,"signature":"` + wellFormedJunkSignature + `"`
	flat := func(key string, n int) []byte {
		return []byte(head + `,"` + key + `":[` + zeros(n) + `]}`)
	}
	deep := func(keyLen int) []byte {
		var b strings.Builder
		b.WriteString(head)
		for i := 0; i < 30; i++ {
			fmt.Fprintf(&b, `,"%s%02d":{"x":0`, strings.Repeat("d", keyLen-2), i)
		}
		b.WriteString(`,"a":[` + zeros(9950) + `]`)
		b.WriteString(strings.Repeat("}", 31))
		return []byte(b.String())
	}
	members := func(keyLen int) []byte {
		var b strings.Builder
		b.WriteString(head + `,"` + strings.Repeat("m", keyLen) + `":{`)
		for i := 0; i < 9990; i++ {
			if i > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, `"%d":0`, i)
		}
		b.WriteString("}}")
		return []byte(b.String())
	}
	shapes := []struct {
		name string
		body []byte
	}{
		{"64 KiB key + 9,990 numbers (the 85 KB worst shape)", flat(strings.Repeat("k", 64<<10), 9990)},
		{"64 KiB key of ':' (doubled in paths) + 9,990 numbers", flat(strings.Repeat(":", 64<<10), 9990)},
		{"64 KiB key of digits (natural sort) + 9,990 numbers", flat(strings.Repeat("7", 64<<10), 9990)},
		{"64 KiB key of spaces + 9,990 numbers", flat(strings.Repeat(" ", 64<<10), 9990)},
		{"256 KiB key (max_string) + 9,990 numbers", flat(strings.Repeat("k", 256<<10), 9990)},
		{"60 KiB key over an object of 9,990 members", members(60 << 10)},
		{"30 nested 2 KiB keys + 9,950 numbers", deep(2048)},
		// Keys short enough for any key-length limit: the bound on the
		// canonical string must decide.
		{"1,000-byte key + 9,990 numbers", flat(strings.Repeat("k", 1000), 9990)},
		{"1,000-byte key of ':' + 9,990 numbers", flat(strings.Repeat(":", 1000), 9990)},
		{"1,000-byte key over an object of 9,990 members", members(1000)},
		{"30 nested 1,000-byte keys + 9,950 numbers", deep(1000)},
	}
	_, peak0 := s.caddy.memKB(t)
	t.Logf("Caddy before: peak RSS %d MiB", peak0>>10)

	// Watch the resident set while the attack runs; stop Caddy if it
	// heads for the machine's limits.
	stop := make(chan struct{})
	var watch sync.WaitGroup
	var maxRSS atomic.Int64
	var killed atomic.Bool
	watch.Add(1)
	go func() {
		defer watch.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", s.caddy.cmd.Process.Pid))
			if err != nil {
				return
			}
			for _, line := range strings.Split(string(data), "\n") {
				if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
					n, _ := strconv.ParseInt(f[1], 10, 64)
					if n > maxRSS.Load() {
						maxRSS.Store(n)
					}
					if n > killAt && !killed.Swap(true) {
						s.caddy.cmd.Process.Kill()
					}
				}
			}
		}
	}()
	defer func() {
		close(stop)
		watch.Wait()
	}()
	check := func(name string, size int, a answer) {
		t.Helper()
		if killed.Load() {
			t.Fatalf("%s: Caddy's resident set passed %d MiB; stopped it (answer: %s)", name, killAt>>10, a)
		}
		t.Logf("%-52s %6d bytes: %s", name, size, a)
		if a.status != http.StatusForbidden && a.status != http.StatusRequestEntityTooLarge {
			t.Errorf("%s: %s, want 403 or 413", name, a)
		}
		if a.took > answerIn {
			t.Errorf("%s: answered in %s, want within %s", name, a.took.Round(time.Millisecond), answerIn)
		}
	}

	// One at a time, to see each shape's cost...
	for _, sh := range shapes {
		check(sh.name, len(sh.body), send(s.caddy.callbackURL(), sh.body, nil))
	}
	_, peak1 := s.caddy.memKB(t)
	t.Logf("one at a time: Caddy's peak RSS %d MiB", peak1>>10)

	// ...then two of each at once.
	type result struct {
		name string
		size int
		a    answer
	}
	results := make(chan result, 2*len(shapes))
	var wg sync.WaitGroup
	start := time.Now()
	for round := 0; round < 2; round++ {
		for _, sh := range shapes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				results <- result{sh.name, len(sh.body), send(s.caddy.callbackURL(), sh.body, nil)}
			}()
		}
	}
	wg.Wait()
	all := time.Since(start)
	close(results)
	for r := range results {
		check(r.name+" (at once)", r.size, r.a)
	}
	_, peak := s.caddy.memKB(t)
	t.Logf("%d bodies at once answered in %s; Caddy's peak RSS %d MiB (sampled max %d MiB), bound %d MiB",
		2*len(shapes), all.Round(time.Millisecond), peak>>10, maxRSS.Load()>>10, rssBound>>10)
	if peak > rssBound {
		t.Errorf("Caddy's peak resident set was %d MiB, want under %d MiB", peak>>10, rssBound>>10)
	}
	if n := s.shop.state(t).CallbackPosts - before; n != 0 {
		t.Errorf("the shop got %d POSTs, want 0", n)
	}
}

// TestHostileConcurrentMaxBodies: fifty bodies of max_body at once, each
// shaped to stay just inside the bound on the canonical string (a 1,000-byte
// key over some 7,000 strings of 140 bytes: about 7.6 times the body), with a
// well-formed signature that verifies nothing. Each alone is cheap; at once
// they must not take Caddy's memory past the bound either. Reading fifty
// 1 MiB bodies costs 50 MiB whatever the module does.
func TestHostileConcurrentMaxBodies(t *testing.T) {
	const (
		copies   = 50
		rssBound = 300 << 10 // KiB
		answerIn = 10 * time.Second
	)
	s := newStack(t, nil)
	before := s.shop.state(t).CallbackPosts
	var b strings.Builder
	b.WriteString(`{"project_id":210,"signature":"` + wellFormedJunkSignature + `","` + strings.Repeat("k", 1000) + `":{`)
	val := strings.Repeat("v", 140)
	for i := 0; b.Len() < 1<<20-300; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `"%d":"%s"`, i, val)
	}
	b.WriteString("}}")
	body := []byte(b.String())
	_, peak0 := s.caddy.memKB(t)
	answers := make([]answer, copies)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range answers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			answers[i] = send(s.caddy.callbackURL(), body, nil)
		}()
	}
	wg.Wait()
	all := time.Since(start)
	rss, peak := s.caddy.memKB(t)
	statuses := map[int]int{}
	for _, a := range answers {
		statuses[a.status]++
		if a.status != http.StatusForbidden && a.status != http.StatusRequestEntityTooLarge {
			t.Errorf("a %d-byte body: %s, want 403 or 413", len(body), a)
		}
		if a.took > answerIn {
			t.Errorf("a %d-byte body answered in %s, want within %s", len(body), a.took.Round(time.Millisecond), answerIn)
		}
	}
	t.Logf("%d bodies of %d bytes at once: %v in %s; Caddy's peak RSS %d MiB (was %d MiB, now %d MiB), bound %d MiB",
		copies, len(body), statuses, all.Round(time.Millisecond), peak>>10, peak0>>10, rss>>10, rssBound>>10)
	if peak > rssBound {
		t.Errorf("Caddy's peak resident set was %d MiB, want under %d MiB: about %d MiB a concurrent %d-byte body",
			peak>>10, rssBound>>10, (peak-peak0)>>10/copies, len(body))
	}
	if n := s.shop.state(t).CallbackPosts - before; n != 0 {
		t.Errorf("the shop got %d POSTs, want 0", n)
	}
}

// TestHostileRefusedBodies: malformed, oversized and forged bodies are
// refused with the right status, never echoed, never logged at length, and
// never reach the app.
func TestHostileRefusedBodies(t *testing.T) {
	s := newStack(t, nil)
	before := s.shop.state(t).CallbackPosts
	pid := newPaymentID("evil")
	g := genuineCallback(s.secret, pid, nil)
	gs := string(g)
	sig := func() string {
		v, _ := parseOrdered(g)
		sg, _ := embeddedSignature(v)
		return sg
	}()
	replace := func(old, new string) []byte {
		if !strings.Contains(gs, old) {
			t.Fatalf("test body has no %q", old)
		}
		return []byte(strings.Replace(gs, old, new, 1))
	}
	const mark = "EVILMARK"
	longID := strings.Repeat("Z", 200<<10)
	nest := strings.Repeat(`{"a":`, 40) + "0" + strings.Repeat("}", 40)
	cases := []struct {
		name string
		body []byte
		want int
	}{
		{"duplicate project_id", replace(`{`, `{"project_id":211,`), 400},
		{"duplicate key spelled with an escape", replace(`{`, `{"project\u005fid":211,`), 400},
		{"duplicate signature", replace(`"signature":`, `"signature":"`+sig+`","signature":`), 400},
		{"duplicate nested key", replace(`"payment":{`, `"payment":{"status":"decline",`), 400},
		{"invalid UTF-8", replace(`"order `, "\"order \xff"+mark), 400},
		{"overlong UTF-8", replace(`"order `, "\"order \xc0\xaf"+mark), 400},
		{"unpaired surrogate", replace(`"order `, `"order \ud800`+mark), 400},
		{"raw control character", replace(`"order `, "\"order \x01"+mark), 400},
		{"a second value after the object", append(append([]byte{}, g...), `{"`+mark+`":1}`...), 400},
		{"byte order mark", append([]byte("\xef\xbb\xbf"), g...), 400},
		{"an array around the callback", []byte("[" + gs + "]"), 400},
		{"nested 40 deep", []byte(`{"project_id":210,"signature":"` + sig + `","x":` + nest + `}`), 413},
		{"10,001 values", []byte(`{"project_id":210,"x":[` + strings.TrimSuffix(strings.Repeat("0,", 10001), ",") + `]}`), 413},
		{"a 300 KiB string", replace(`"order `, `"order `+strings.Repeat("s", 300<<10)), 413},
		{"another project's id", replace(`"project_id":210`, `"project_id":211`), 403},
		{"project_id as an object", replace(`"project_id":210`, `"project_id":{"id":210}`), 403},
		{"project_id only in general, top level unknown", replace(`"project_id":210`, `"project_id":999,"general":{"project_id":210}`), 403},
		{"amount changed", replace(`"amount":1000`, `"amount":100000`), 403},
		{"status changed", replace(`"status":"success"`, `"status":"refunded"`), 403},
		{"signature of the wrong shape", replace(sig, mark+"!"), 403},
		{"signature as a number", replace(`"`+sig+`"`, `12345`), 403},
		{"signature as an array", replace(`"`+sig+`"`, `["`+sig+`"]`), 403},
		{"200 KiB unverified payment.id", []byte(`{"project_id":210,"payment":{"id":"` + longID + `","status":"success"},"signature":"` + wellFormedJunkSignature + `"}`), 403},
		{"200 KiB unverified operation.status and key", []byte(`{"project_id":210,"operation":{"status":"` + longID + `"},"` + strings.Repeat(mark, 25000) + `":1,"signature":"` + wellFormedJunkSignature + `"}`), 403},
	}
	// A key over the key-length limit may be refused as too large first.
	alsoOK := map[string]int{"200 KiB unverified operation.status and key": 413}
	for _, c := range cases {
		a := send(s.caddy.callbackURL(), c.body, nil)
		if a.status != c.want && a.status != alsoOK[c.name] {
			t.Errorf("%s: %s, want %d", c.name, a, c.want)
		}
		if strings.Contains(a.body, mark) || strings.Contains(a.body, "ZZZZ") || len(a.body) > 512 {
			t.Errorf("%s: the answer echoes input: %s", c.name, a)
		}
	}
	if a := func() answer {
		req, _ := http.NewRequest(http.MethodGet, s.caddy.callbackURL(), nil)
		resp, err := hostileClient.Do(req)
		if err != nil {
			return answer{err: err}
		}
		resp.Body.Close()
		return answer{status: resp.StatusCode}
	}(); a.status != http.StatusMethodNotAllowed {
		t.Errorf("GET: %s, want 405", a)
	}

	// Nothing reached the app, and the genuine body still does.
	if n := s.shop.state(t).CallbackPosts - before; n != 0 {
		t.Errorf("refused bodies reached the shop: %d POSTs", n)
	}
	if a := send(s.caddy.callbackURL(), g, nil); a.status != 200 || a.duplicate {
		t.Errorf("the genuine body after the attacks: %s, want 200", a)
	}
	expectStoredOnce(t, s, pid)

	// The journal, as the console serves it, does not carry them at
	// length either.
	if resp, err := testClient.Get(s.caddy.internalURL() + "/ecommpay/api/events?limit=100"); err != nil {
		t.Errorf("the console's events: %v", err)
	} else {
		events, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		t.Logf("the console's events: %d, %d bytes", resp.StatusCode, len(events))
		if resp.StatusCode != http.StatusOK {
			t.Errorf("the console's events: status %d", resp.StatusCode)
		}
		for _, long := range []string{strings.Repeat("Z", 1024), strings.Repeat(mark, 16)} {
			if bytes.Contains(events, []byte(long)) {
				t.Errorf("the journal serves unverified input at length (%.16s...)", long)
			}
		}
	}

	// The log names the refusals but never carries unverified values at
	// length.
	if !s.caddy.logContains(`invalid_signature`) {
		t.Errorf("Caddy's log has no invalid_signature line")
	}
	data, err := os.ReadFile(s.caddy.logPath)
	if err != nil {
		t.Fatal(err)
	}
	longest := 0
	for _, line := range strings.Split(string(data), "\n") {
		longest = max(longest, len(line))
	}
	t.Logf("Caddy's log: %d bytes, longest line %d bytes", len(data), longest)
	if longest > 4096 {
		t.Errorf("Caddy's log has a line of %d bytes", longest)
	}
	for _, s := range []string{strings.Repeat("Z", 1024), strings.Repeat(mark, 16), strings.Repeat("s", 1024)} {
		if bytes.Contains(data, []byte(s)) {
			t.Errorf("Caddy's log carries unverified input at length (%.16s...)", s)
		}
	}
}

// TestHostileDisguisedReplays: a delivered callback sent again in another
// form that still verifies (keys reordered, spaces, escapes, number forms,
// types swapped, unsigned members added) is a duplicate and never reaches
// the app again; a fresh callback carrying unsigned members reaches the app
// without them.
func TestHostileDisguisedReplays(t *testing.T) {
	s := newStack(t, nil)
	pid := newPaymentID("replay")
	g := genuineCallback(s.secret, pid, nil)
	gs := string(g)
	if a := send(s.caddy.callbackURL(), g, nil); a.status != 200 || a.duplicate {
		t.Fatalf("the genuine callback: %s, want 200", a)
	}
	delivered := expectStoredOnce(t, s, pid)
	before := s.shop.state(t).CallbackPosts
	sig := func() string {
		v, _ := parseOrdered(g)
		sg, _ := embeddedSignature(v)
		return sg
	}()
	replace := func(pairs ...string) []byte {
		out := gs
		for i := 0; i < len(pairs); i += 2 {
			if !strings.Contains(out, pairs[i]) {
				t.Fatalf("test body has no %q", pairs[i])
			}
			out = strings.Replace(out, pairs[i], pairs[i+1], 1)
		}
		return []byte(out)
	}
	reordered := func() []byte {
		v, _ := parseOrdered(g)
		obj := v.(object)
		rev := object{}
		for i := len(obj) - 1; i >= 0; i-- {
			rev = append(rev, obj[i])
		}
		return []byte(orderedJSON(rev))
	}
	var indented bytes.Buffer
	_ = json.Indent(&indented, g, "", strings.Repeat(" ", 64))
	smuggled := replace(`"payment":{`, `"frame_mode":"iframe","extra":{},"note":[],"more":[{}],"general":{"signature":"not the one"},"payment":{"signature":"x","frame_mode":"popup",`)
	disguises := []struct {
		name string
		body []byte
	}{
		{"members in reverse order", reordered()},
		{"indented with 64 spaces", indented.Bytes()},
		{"letters as \\u escapes", replace(`"status":"success"`, `"st\u0061tus":"succ\u0065ss"`)},
		{"1000 as 1000.0", replace(`"amount":1000`, `"amount":1000.0`)},
		{"1000 as 1e3", replace(`"amount":1000`, `"amount":1e3`)},
		{"1000 as 1000.0000000000001 (past PHP's 14 digits)", replace(`"amount":1000`, `"amount":1000.0000000000001`)},
		{"amount as a string", replace(`"amount":1000`, `"amount":"1000"`)},
		{"project_id as a string", replace(`"project_id":210`, `"project_id":"210"`)},
		{"code as a number", replace(`"code":"0"`, `"code":0`)},
		{"frame_mode, extra signatures, empty members", smuggled},
		{"signature moved to general", replace(`"signature":"`+sig+`"`, `"general":{"signature":"`+sig+`"}`)},
	}
	for _, d := range disguises {
		if ok, why := verifyCallbackBody(d.body, s.secret); !ok {
			t.Fatalf("%s: the disguised body does not verify (%s); the test is wrong", d.name, why)
		}
		a := send(s.caddy.callbackURL(), d.body, nil)
		if a.status != http.StatusOK || !a.duplicate {
			t.Errorf("%s: %s, want 200 with X-Ecommpay-Duplicate: 1", d.name, a)
		}
	}
	if n := s.shop.state(t).CallbackPosts - before; n != 0 {
		t.Errorf("disguised replays reached the shop: %d POSTs", n)
	}
	if e := expectStoredOnce(t, s, pid); e.Key != delivered.Key {
		t.Errorf("the stored event changed")
	}

	// A fresh callback with unsigned members: the app gets it once,
	// without frame_mode and stray signatures, and it still verifies.
	pid2 := newPaymentID("smuggle")
	g2 := genuineCallback(s.secret, pid2, func(m map[string]any) {
		m["display"] = map[string]any{"list": []any{map[string]any{}, 2}}
	})
	hostile := strings.Replace(string(g2), `"payment":{`, `"frame_mode":"iframe","extra":{},"payment":{"signature":"x","frame_mode":"popup","note":[],`, 1)
	hostile = strings.Replace(hostile, `"operation":{`, `"general":{"signature":"not the one that verified"},"operation":{"inner":{"frame_mode":1,"signature":"y"},`, 1)
	if ok, why := verifyCallbackBody([]byte(hostile), s.secret); !ok {
		t.Fatalf("the smuggling body does not verify (%s); the test is wrong", why)
	}
	if a := send(s.caddy.callbackURL(), []byte(hostile), nil); a.status != 200 || a.duplicate {
		t.Fatalf("a fresh callback with unsigned members: %s, want 200", a)
	}
	e := expectStoredOnce(t, s, pid2)
	got, _ := json.Marshal(e.Body)
	for _, bad := range []string{"frame_mode", "not the one", `"signature":"x"`, `"signature":"y"`} {
		if bytes.Contains(got, []byte(bad)) {
			t.Errorf("the shop got %s: %s", bad, got)
		}
	}
	// Empty members are not signed but carry nothing, and ecommpay sends
	// some (redirect_data.body: []): they stay, emptied of what was dropped.
	if !bytes.Contains(got, []byte(`"extra":{}`)) || !bytes.Contains(got, []byte(`"inner":{}`)) {
		t.Errorf("empty members changed: %s", got)
	}
	if jsonPath(e.Body, "display", "list") == nil || str(jsonPath(e.Body, "display", "list", 1)) != "2" {
		t.Errorf("a signed array lost its positions: %s", got)
	}

	// JSON types are outside the signature: a fresh callback whose types
	// were swapped before ecommpay's copy arrived verifies and is delivered
	// as sent; ecommpay's own copy is then a duplicate, so the app still
	// gets the event once.
	pid3 := newPaymentID("swapped")
	g3 := string(genuineCallback(s.secret, pid3, nil))
	swapped := strings.Replace(strings.Replace(g3, `"amount":1000`, `"amount":"1000"`, 1), `"code":"0"`, `"code":0`, 1)
	if a := send(s.caddy.callbackURL(), []byte(swapped), nil); a.status != 200 || a.duplicate {
		t.Fatalf("a fresh callback with swapped types: %s, want 200", a)
	}
	if a := send(s.caddy.callbackURL(), []byte(g3), nil); a.status != 200 || !a.duplicate {
		t.Errorf("ecommpay's copy after the type-swapped one: %s, want a duplicate 200", a)
	}
	e3 := expectStoredOnce(t, s, pid3)
	t.Logf("the app got operation.sum_initial.amount as %T and operation.code as %T (types as the first sender wrote them)",
		jsonPath(e3.Body, "operation", "sum_initial", "amount"), jsonPath(e3.Body, "operation", "code"))
}

// orderedJSON writes an ordered value back as JSON.
func orderedJSON(v any) string {
	switch t := v.(type) {
	case object:
		parts := make([]string, len(t))
		for i, m := range t {
			k, _ := json.Marshal(m.Key)
			parts[i] = string(k) + ":" + orderedJSON(m.Value)
		}
		return "{" + strings.Join(parts, ",") + "}"
	case []any:
		parts := make([]string, len(t))
		for i, e := range t {
			parts[i] = orderedJSON(e)
		}
		return "[" + strings.Join(parts, ",") + "]"
	case json.Number:
		return t.String()
	default:
		b, _ := json.Marshal(t)
		return string(b)
	}
}

// TestHostileForgedHeaders: headers a sender adds to pass for the module's
// own, in any spelling, as Connection tokens or as trailers, never reach
// the app; the headers the module sets (its own, and the body's
// Content-Type) always do.
func TestHostileForgedHeaders(t *testing.T) {
	var app *appRecorder
	s := newStack(t, func(c *caddyConfig) {
		app = startAppRecorder(t, nil)
		c.App = app.port
	})
	forged := []string{
		"X-Ecommpay-Event-Key: forged",
		"X_Ecommpay_Event_Key: forged",
		"x-ecommpay-project-id: forged",
		"X_ECOMMPAY_PROJECT_ID: forged",
		"X-Ecommpay-Duplicate: forged",
		"X-Ecommpay-Replay: forged",
		"x_ecommpay_verified: forged",
	}
	connTricks := []string{
		"Connection: keep-alive, X-Ecommpay-Event-Key, X-Ecommpay-Project-Id",
		"Connection: x_ecommpay_event_key, X-ECOMMPAY-PROJECT-ID",
		"Connection: X-Ecommpay-Event-Key\r\nConnection: X-Ecommpay-Project-Id",
		// The body's own headers, set by the module, named as hop-by-hop.
		"Connection: keep-alive, Content-Type, Content-Length",
	}
	sendRaw := func(head []string, body []byte, chunkedTrailer string) (*http.Response, string) {
		conn := dialRaw(t, s.caddy.cfg.Public)
		var b strings.Builder
		b.WriteString("POST /ecommpay/callback HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n")
		for _, h := range head {
			b.WriteString(h + "\r\n")
		}
		if chunkedTrailer != "" {
			fmt.Fprintf(&b, "Transfer-Encoding: chunked\r\nTrailer: %s\r\n\r\n%x\r\n%s\r\n0\r\n%s: forged\r\n\r\n",
				chunkedTrailer, len(body), body, chunkedTrailer)
		} else {
			fmt.Fprintf(&b, "Content-Length: %d\r\n\r\n%s", len(body), body)
		}
		if _, err := io.WriteString(conn, b.String()); err != nil {
			t.Fatal(err)
		}
		resp, ans, err := readRaw(conn, bufio.NewReader(conn), 10*time.Second)
		if err != nil {
			t.Fatalf("no answer: %v", err)
		}
		return resp, ans
	}
	var sent int
	for i, trick := range connTricks {
		body := genuineCallback(s.secret, newPaymentID(fmt.Sprintf("hdr%d", i)), nil)
		resp, ans := sendRaw(append(append([]string{}, forged...), trick), body, "")
		sent++
		if resp.StatusCode != 200 {
			t.Errorf("a genuine callback with forged headers (%q): %d %s, want 200", trick, resp.StatusCode, ans)
		}
	}
	for _, tr := range []string{"X-Ecommpay-Event-Key", "X_Ecommpay_Project_Id"} {
		body := genuineCallback(s.secret, newPaymentID("trailer"), nil)
		resp, ans := sendRaw(nil, body, tr)
		sent++
		if resp.StatusCode != 200 {
			t.Errorf("a genuine chunked callback with the trailer %s: %d %s, want 200", tr, resp.StatusCode, ans)
		}
	}
	reqs := app.requests()
	if len(reqs) != sent {
		t.Fatalf("the app got %d callbacks, want %d", len(reqs), sent)
	}
	for i, r := range reqs {
		names := map[string]int{}
		for name, vals := range r.Header {
			if moduleHeaderName(name) {
				names[name] += len(vals)
			}
			for _, v := range vals {
				if strings.Contains(v, "forged") {
					t.Errorf("delivery %d: the app got a forged value in %s: %q", i+1, name, v)
				}
			}
		}
		for name, vals := range r.Trailer {
			if moduleHeaderName(name) || strings.Contains(strings.Join(vals, ""), "forged") {
				t.Errorf("delivery %d: the app got the trailer %s: %q", i+1, name, vals)
			}
		}
		if ct := r.Header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("delivery %d: the app got Content-Type %q, want application/json", i+1, ct)
		}
		want := map[string]int{"X-Ecommpay-Event-Key": 1, "X-Ecommpay-Project-Id": 1}
		if fmt.Sprint(names) != fmt.Sprint(want) {
			t.Errorf("delivery %d: the app got the module headers %v, want exactly %v", i+1, names, want)
		}
		if k := r.Header.Get("X-Ecommpay-Event-Key"); !strings.HasPrefix(k, fmt.Sprint(projectID)+"-") {
			t.Errorf("delivery %d: event key %q", i+1, k)
		}
		if p := r.Header.Get("X-Ecommpay-Project-Id"); p != fmt.Sprint(projectID) {
			t.Errorf("delivery %d: project header %q", i+1, p)
		}
		if ok, why := verifyCallbackBody(r.Body, s.secret); !ok {
			t.Errorf("delivery %d does not verify: %s", i+1, why)
		}
	}
}

// TestHostileUnsignedRequestParts: around a genuine body, a sender controls
// the query string and headers such as Content-Encoding, which the
// signature does not cover. They must not reach the app, on the harness's
// route (reverse_proxy with rewrite) nor on the README's (without).
func TestHostileUnsignedRequestParts(t *testing.T) {
	var app *appRecorder
	var bare int
	s := newStack(t, func(c *caddyConfig) {
		app = startAppRecorder(t, nil)
		c.App = app.port
		bare = freePort(t)
		c.ExtraPorts = []int{bare}
		c.ExtraSites = fmt.Sprintf(`# the README's callback route: reverse_proxy without a rewrite
http://127.0.0.1:%d {
	handle /ecommpay/callback {
		ecommpay callback {
			project %d {env.ECOMMPAY_SECRET}
			%s
		}
		reverse_proxy 127.0.0.1:%d
	}
}`, bare, projectID, storeLine(c), app.port)
	})
	const query = "payment_status=success&operation%5Bstatus%5D=success&admin=1"
	for _, route := range []struct{ name, url string }{
		{"the harness's route (rewrite /callback)", s.caddy.callbackURL()},
		{"the README's route (no rewrite)", fmt.Sprintf("http://127.0.0.1:%d/ecommpay/callback", bare)},
	} {
		n := len(app.requests())
		body := genuineCallback(s.secret, newPaymentID("query"), nil)
		a := send(route.url+"?"+query, body, map[string]string{"Content-Encoding": "gzip"})
		if a.status != 200 || a.duplicate {
			t.Errorf("%s: a genuine callback with a query and Content-Encoding: %s, want 200", route.name, a)
			continue
		}
		reqs := app.requests()
		if len(reqs) != n+1 {
			t.Fatalf("%s: the app got %d requests, want 1", route.name, len(reqs)-n)
		}
		r := reqs[n]
		t.Logf("%s: the app got %s?%s, Content-Encoding %q", route.name, r.Path, r.Query, r.Header.Get("Content-Encoding"))
		if r.Query != "" {
			t.Errorf("%s: the sender's query string reached the app: %q", route.name, r.Query)
		}
		if ce := r.Header.Get("Content-Encoding"); ce != "" {
			t.Errorf("%s: the app got Content-Encoding %q on the plain JSON body Caddy verified", route.name, ce)
		}
		if ok, why := verifyCallbackBody(r.Body, s.secret); !ok {
			t.Errorf("%s: the app's body does not verify: %s", route.name, why)
		}
	}
}

// TestHostileCrossProjectReplays: with two projects on one route, a
// callback of one replayed under the other's id is refused, and a callback
// that verifies for the other project reaches the app under that
// project's id and key, never as the first project's event.
func TestHostileCrossProjectReplays(t *testing.T) {
	const otherSecret = "another-project-secret-0123456789"
	var app *appRecorder
	var two int
	s := newStack(t, func(c *caddyConfig) {
		app = startAppRecorder(t, nil)
		two = freePort(t)
		c.ExtraPorts = []int{two}
		c.ExtraSites = fmt.Sprintf(`# two projects on one callback route
http://127.0.0.1:%d {
	handle /cb {
		ecommpay callback {
			project %d {env.ECOMMPAY_SECRET}
			project 211 %s
			%s
		}
		reverse_proxy 127.0.0.1:%d
	}
}`, two, projectID, otherSecret, storeLine(c), app.port)
	})
	url := fmt.Sprintf("http://127.0.0.1:%d/cb", two)
	pid := newPaymentID("cross")
	var base map[string]any
	g := genuineCallback(s.secret, pid, func(m map[string]any) { base = m })
	if a := send(url, g, nil); a.status != 200 || a.duplicate {
		t.Fatalf("the genuine callback of project %d: %s", projectID, a)
	}
	as211 := func(m map[string]any) { m["project_id"] = 211 }
	resign := func(secret string, mut func(map[string]any)) []byte {
		raw, _ := json.Marshal(base)
		var m map[string]any
		_ = json.Unmarshal(raw, &m)
		mut(m)
		return signJSONWithSignatureAt(m, secret, false)
	}
	refused := []struct {
		name string
		body []byte
	}{
		{"project 210's callback with project_id 211", []byte(strings.Replace(string(g), `"project_id":210`, `"project_id":211`, 1))},
		{"project_id 210, signed with 211's secret", resign(otherSecret, func(map[string]any) {})},
		{"project_id 211 with general.project_id 210, signed with 210's secret", resign(s.secret, func(m map[string]any) {
			as211(m)
			m["general"] = map[string]any{"project_id": projectID}
		})},
	}
	for _, c := range refused {
		if a := send(url, c.body, nil); a.status != http.StatusForbidden {
			t.Errorf("%s: %s, want 403", c.name, a)
		}
	}
	// The same payment data, genuinely signed by project 211.
	other := resign(otherSecret, as211)
	if a := send(url, other, nil); a.status != 200 || a.duplicate {
		t.Errorf("project 211's own callback: %s, want 200", a)
	}
	reqs := app.requests()
	if len(reqs) != 2 {
		t.Fatalf("the app got %d callbacks, want 2 (one per project)", len(reqs))
	}
	k0, k1 := reqs[0].Header.Get("X-Ecommpay-Event-Key"), reqs[1].Header.Get("X-Ecommpay-Event-Key")
	if p := reqs[0].Header.Get("X-Ecommpay-Project-Id"); p != fmt.Sprint(projectID) || !strings.HasPrefix(k0, p+"-") {
		t.Errorf("project 210's callback reached the app as project %q, key %q", p, k0)
	}
	if p := reqs[1].Header.Get("X-Ecommpay-Project-Id"); p != "211" || !strings.HasPrefix(k1, "211-") {
		t.Errorf("project 211's callback reached the app as project %q, key %q", p, k1)
	}
	if ok, _ := verifyCallbackBody(reqs[1].Body, s.secret); ok {
		t.Errorf("project 211's callback verifies with project 210's secret")
	}
}

// TestHostileSlowAndOversizedBodies: a sender that stalls or trickles its
// body is cut off with 408 after read_timeout and its connection closed; a
// declared size over max_body is refused before a byte of body is read;
// a chunked body over max_body is refused. A connection that delivered a
// callback stays usable after read_timeout.
func TestHostileSlowAndOversizedBodies(t *testing.T) {
	const readTimeout = 2 * time.Second
	s := newStack(t, func(c *caddyConfig) { c.CallbackOptions = "read_timeout 2s" })
	before := s.shop.state(t).CallbackPosts
	port := s.caddy.cfg.Public
	head := func(extra string) string {
		return "POST /ecommpay/callback HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n" + extra + "\r\n"
	}

	t.Run("stalls mid-body", func(t *testing.T) {
		conn := dialRaw(t, port)
		br := bufio.NewReader(conn)
		start := time.Now()
		io.WriteString(conn, head("Content-Length: 1000\r\n")+`{"project_id":210,"payment":{"id":"`)
		resp, _, err := readRaw(conn, br, 8*time.Second)
		took := time.Since(start)
		if err != nil {
			t.Fatalf("no answer after %s: %v", took.Round(time.Millisecond), err)
		}
		t.Logf("stalled sender: %d after %s", resp.StatusCode, took.Round(time.Millisecond))
		if resp.StatusCode != http.StatusRequestTimeout || took < readTimeout-200*time.Millisecond || took > readTimeout+2*time.Second {
			t.Errorf("stalled sender: %d after %s, want 408 after about %s", resp.StatusCode, took.Round(time.Millisecond), readTimeout)
		}
		if closed, err := closedWithin(conn, br, 3*time.Second); !closed {
			t.Errorf("the connection is still open 3 s after the 408: %v", err)
		}
	})

	t.Run("trickles", func(t *testing.T) {
		conn := dialRaw(t, port)
		br := bufio.NewReader(conn)
		start := time.Now()
		io.WriteString(conn, head("Content-Length: 100000\r\n")+`{"project_id":210,"x":"`)
		done := make(chan struct{})
		go func() {
			for {
				select {
				case <-done:
					return
				case <-time.After(100 * time.Millisecond):
				}
				if _, err := conn.Write([]byte("a")); err != nil {
					return
				}
			}
		}()
		resp, _, err := readRaw(conn, br, 8*time.Second)
		close(done)
		took := time.Since(start)
		if err != nil {
			t.Fatalf("no answer after %s: %v", took.Round(time.Millisecond), err)
		}
		t.Logf("trickling sender: %d after %s", resp.StatusCode, took.Round(time.Millisecond))
		if resp.StatusCode != http.StatusRequestTimeout || took > readTimeout+2*time.Second {
			t.Errorf("trickling sender: %d after %s, want 408 after about %s", resp.StatusCode, took.Round(time.Millisecond), readTimeout)
		}
		if closed, err := closedWithin(conn, br, 3*time.Second); !closed {
			t.Errorf("the connection is still open 3 s after the 408: %v", err)
		}
	})

	t.Run("huge Content-Length", func(t *testing.T) {
		for _, extra := range []string{
			"Content-Length: 99999999999999\r\n",
			"Content-Length: 1048577\r\n",
			"Content-Length: 52428800\r\nExpect: 100-continue\r\n",
		} {
			conn := dialRaw(t, port)
			br := bufio.NewReader(conn)
			start := time.Now()
			io.WriteString(conn, head(extra)) // and no body at all
			resp, _, err := readRaw(conn, br, 5*time.Second)
			took := time.Since(start)
			if err != nil {
				t.Errorf("%q: no answer after %s: %v", extra, took.Round(time.Millisecond), err)
				continue
			}
			t.Logf("%q: %d after %s", strings.TrimSpace(extra), resp.StatusCode, took.Round(time.Millisecond))
			if resp.StatusCode != http.StatusRequestEntityTooLarge || took > time.Second {
				t.Errorf("%q: %d after %s, want 413 at once, before any body", extra, resp.StatusCode, took.Round(time.Millisecond))
			}
		}
	})

	t.Run("chunked over max_body", func(t *testing.T) {
		conn := dialRaw(t, port)
		br := bufio.NewReader(conn)
		start := time.Now()
		io.WriteString(conn, head("Transfer-Encoding: chunked\r\n"))
		go func() {
			chunk := fmt.Sprintf("%x\r\n%s\r\n", 32<<10, strings.Repeat("a", 32<<10))
			io.WriteString(conn, fmt.Sprintf("%x\r\n%s\r\n", 18, `{"project_id":210,`))
			for i := 0; i < 64; i++ { // 2 MiB
				if _, err := io.WriteString(conn, chunk); err != nil {
					return
				}
			}
			io.WriteString(conn, "0\r\n\r\n")
		}()
		resp, _, err := readRaw(conn, br, 10*time.Second)
		took := time.Since(start)
		if err != nil {
			t.Fatalf("no answer after %s: %v", took.Round(time.Millisecond), err)
		}
		t.Logf("2 MiB chunked: %d after %s", resp.StatusCode, took.Round(time.Millisecond))
		if resp.StatusCode != http.StatusRequestEntityTooLarge {
			t.Errorf("2 MiB chunked body: %d, want 413", resp.StatusCode)
		}
	})

	t.Run("Content-Length and chunked together", func(t *testing.T) {
		conn := dialRaw(t, port)
		br := bufio.NewReader(conn)
		body := `{"project_id":210,"signature":"` + wellFormedJunkSignature + `"}`
		fmt.Fprintf(conn, head(fmt.Sprintf("Content-Length: 4\r\nTransfer-Encoding: chunked\r\n"))+"%x\r\n%s\r\n0\r\n\r\n", len(body), body)
		resp, _, err := readRaw(conn, br, 5*time.Second)
		if err != nil {
			t.Fatalf("no answer: %v", err)
		}
		if resp.StatusCode < 400 || resp.StatusCode >= 500 {
			t.Errorf("Content-Length with Transfer-Encoding: %d, want a 4xx", resp.StatusCode)
		}
	})

	if n := s.shop.state(t).CallbackPosts - before; n != 0 {
		t.Errorf("the shop got %d POSTs from the slow and oversized senders, want 0", n)
	}

	t.Run("fifty stalled senders and a genuine one", func(t *testing.T) {
		// Stalled senders hold a connection each until read_timeout; a
		// genuine callback sent meanwhile is delivered at once.
		var conns []net.Conn
		for i := 0; i < 50; i++ {
			c := dialRaw(t, port)
			io.WriteString(c, head("Content-Length: 1000\r\n")+`{"project_id":210,`)
			conns = append(conns, c)
		}
		pid := newPaymentID("amid-stalls")
		if a := send(s.caddy.callbackURL(), genuineCallback(s.secret, pid, nil), nil); a.status != 200 || a.took > time.Second {
			t.Errorf("a genuine callback amid 50 stalled senders: %s, want 200 at once", a)
		}
		expectStoredOnce(t, s, pid)
		var wg sync.WaitGroup
		statuses := make([]int, len(conns))
		start := time.Now()
		for i, c := range conns {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if resp, _, err := readRaw(c, bufio.NewReader(c), 8*time.Second); err == nil {
					statuses[i] = resp.StatusCode
				}
			}()
		}
		wg.Wait()
		for i, st := range statuses {
			if st != http.StatusRequestTimeout {
				t.Errorf("stalled sender %d: %d, want 408", i+1, st)
				break
			}
		}
		t.Logf("50 stalled senders all answered within %s", time.Since(start).Round(time.Millisecond))
		if time.Since(start) > readTimeout+2*time.Second {
			t.Errorf("the stalled senders were cut off after %s, want about %s", time.Since(start).Round(time.Millisecond), readTimeout)
		}
	})

	t.Run("keep-alive outlives read_timeout", func(t *testing.T) {
		// One connection: a callback, a pause longer than read_timeout,
		// another callback. The first one's deadline must not cut the
		// second.
		conn := dialRaw(t, port)
		br := bufio.NewReader(conn)
		for i := 0; i < 2; i++ {
			if i == 1 {
				time.Sleep(readTimeout + 500*time.Millisecond)
			}
			pid := newPaymentID(fmt.Sprintf("keepalive%d", i))
			body := genuineCallback(s.secret, pid, nil)
			if _, err := fmt.Fprintf(conn, head(fmt.Sprintf("Content-Length: %d\r\n", len(body)))+"%s", body); err != nil {
				t.Fatalf("callback %d: write: %v", i+1, err)
			}
			resp, ans, err := readRaw(conn, br, 10*time.Second)
			if err != nil {
				t.Fatalf("callback %d on the kept-alive connection: %v", i+1, err)
			}
			if resp.StatusCode != 200 {
				t.Errorf("callback %d on the kept-alive connection: %d %s", i+1, resp.StatusCode, ans)
			}
			expectStoredOnce(t, s, pid)
		}
	})
}

// TestHostileConcurrentIdenticalDeliveries: many copies of one callback at
// once, while the app is slow: one is delivered, the others are told to
// come back (409) or that it was delivered (duplicate 200), and the app
// gets it exactly once.
func TestHostileConcurrentIdenticalDeliveries(t *testing.T) {
	const copies = 40
	s := newStack(t, nil)
	s.shop.admin(t, "slow?ms=500")
	before := s.shop.state(t).CallbackPosts
	pid := newPaymentID("herd")
	body := genuineCallback(s.secret, pid, nil)
	answers := make([]answer, copies)
	var wg sync.WaitGroup
	gate := make(chan struct{})
	for i := range answers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-gate
			answers[i] = send(s.caddy.callbackURL(), body, nil)
		}()
	}
	close(gate)
	wg.Wait()
	fresh, inFlight, dup := 0, 0, 0
	for _, a := range answers {
		switch {
		case a.status == 200 && !a.duplicate:
			fresh++
		case a.status == 200:
			dup++
		case a.status == http.StatusConflict && a.retryAfter != "":
			inFlight++
		default:
			t.Errorf("a copy got %s", a)
		}
	}
	t.Logf("%d copies at once: %d delivered, %d in flight (409), %d duplicates", copies, fresh, inFlight, dup)
	if fresh != 1 {
		t.Errorf("%d copies were answered as delivered, want 1", fresh)
	}
	// Every copy that was told to come back gets a duplicate.
	s.shop.admin(t, "slow?ms=0")
	for i := 0; i < inFlight; i++ {
		if a := send(s.caddy.callbackURL(), body, nil); a.status != 200 || !a.duplicate {
			t.Errorf("a retry: %s, want a duplicate 200", a)
		}
	}
	if n := s.shop.state(t).CallbackPosts - before; n != 1 {
		t.Errorf("the shop got %d POSTs, want 1", n)
	}
	expectStoredOnce(t, s, pid)
}
