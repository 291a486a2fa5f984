package integration

// The tests' ecommpay is the product's sandbox (internal/sandbox), served
// in-process: Payment Page, Gate (sale, refund, status) and callback
// delivery with retries, following the test-project rules of the spec
// (§4, §5, §6). This file only adapts it to the tests: it pays each
// payment by itself (PayAfter) and signs with the tests' own reference
// signer (signer_test.go), so the module's signer is still checked against
// an independent implementation.

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/sandbox"
)

type (
	fakeRequest     = sandbox.Request
	fakePayment     = sandbox.Payment
	fakeCallback    = sandbox.Callback
	delivery        = sandbox.Delivery
	deliveryAttempt = sandbox.Attempt
)

type fakeEcommpay struct {
	*sandbox.Sandbox
	t      testing.TB
	secret string
	ln     net.Listener
	srv    *http.Server
	base   string
	client *http.Client
}

// referenceSigner is the tests' own implementation of the signature rules.
func referenceSigner() sandbox.Signer {
	return sandbox.Signer{
		Canonical: func(body []byte, strip bool) (string, error) {
			v, err := parseOrdered(body)
			if err != nil {
				return "", err
			}
			return canonicalOf(v, strip), nil
		},
		CanonicalPairs: func(pairs [][2]string) string {
			obj := object{}
			for _, p := range pairs {
				obj = append(obj, member{p[0], p[1]})
			}
			return canonicalOf(obj, false)
		},
		Sign: hmacSign,
	}
}

// fakeKnobs are the tests' timings: each payment is paid 150 ms after its
// intermediate callback; the rest are the sandbox's defaults (retries 100
// times faster than ecommpay's).
func fakeKnobs() sandbox.Knobs {
	return sandbox.Knobs{PayAfter: 150 * time.Millisecond}
}

func startFake(t testing.TB, secret string) *fakeEcommpay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("fake ecommpay listen: %v", err)
	}
	base := "http://" + ln.Addr().String()
	client := &http.Client{Timeout: 15 * time.Second, Transport: newTransport()}
	sb, err := sandbox.New(sandbox.Config{
		Projects:  []sandbox.Project{{ID: strconv.Itoa(projectID), Secret: secret}},
		BaseURL:   base,
		Signer:    referenceSigner(),
		Client:    client,
		Knobs:     fakeKnobs(),
		UserAgent: "ecommpay-fake/1",
	})
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeEcommpay{Sandbox: sb, t: t, secret: secret, ln: ln, base: base, client: client}
	f.srv = &http.Server{Handler: sb, ReadHeaderTimeout: 5 * time.Second}
	go f.srv.Serve(ln)
	t.Cleanup(func() {
		f.stopDeliveries()
		f.srv.Close()
		if t.Failed() {
			t.Logf("---- fake ecommpay ----\n%s", f.summary())
		}
	})
	return f
}

func (f *fakeEcommpay) port() int { return f.ln.Addr().(*net.TCPAddr).Port }

func (f *fakeEcommpay) configure(fn func(*sandbox.Knobs)) { f.Configure(fn) }

func (f *fakeEcommpay) setCallbackURLs(urls ...string) {
	for _, u := range urls {
		if err := mustLoopbackURL(u); err != nil {
			f.t.Fatal(err)
		}
	}
	f.SetCallbackURLs(urls...)
}

// stopDeliveries cancels every pending delivery and waits for them.
func (f *fakeEcommpay) stopDeliveries() { f.Close() }

func (f *fakeEcommpay) callbackSecret() string { return f.CallbackSecret(strconv.Itoa(projectID)) }

func (f *fakeEcommpay) payment(id string) fakePayment { return f.Payment(id) }

func (f *fakeEcommpay) dropFinalCallback(paymentID string) { f.DropFinalCallback(paymentID) }

func (f *fakeEcommpay) signedCallback(paymentID, opType, opStatus string) []byte {
	return f.SignedCallback(paymentID, opType, opStatus)
}

func (f *fakeEcommpay) settled() (bool, int, string) { return f.Settled() }

func (f *fakeEcommpay) summary() string { return f.Summary() }

func (f *fakeEcommpay) allRequests() []fakeRequest { return f.Requests() }

func (f *fakeEcommpay) requestsTo(path string) []fakeRequest {
	var out []fakeRequest
	for _, r := range f.Requests() {
		if r.Path == path {
			out = append(out, r)
		}
	}
	return out
}

// statusRequests lists the status requests for a payment.
func (f *fakeEcommpay) statusRequests(paymentID string) []fakeRequest {
	var out []fakeRequest
	for _, r := range f.requestsTo("/v2/payment/status") {
		if strings.Contains(string(r.Body), `"`+paymentID+`"`) {
			out = append(out, r)
		}
	}
	return out
}

// allCallbacks are the callbacks sent (not those dropped on purpose).
func (f *fakeEcommpay) allCallbacks() []fakeCallback {
	var out []fakeCallback
	for _, c := range f.Callbacks() {
		if !c.Dropped {
			out = append(out, c)
		}
	}
	return out
}

func (f *fakeEcommpay) callbacksFor(paymentID string) []fakeCallback {
	var out []fakeCallback
	for _, c := range f.allCallbacks() {
		if c.PaymentID == paymentID {
			out = append(out, c)
		}
	}
	return out
}

func (f *fakeEcommpay) deliveriesOf(pred func(*fakeCallback) bool) []delivery {
	return f.Deliveries(pred)
}

// postRaw sends one body once (no retry) to url, as the platform would, and
// returns the status and headers. Used for forged and malformed callbacks.
func (f *fakeEcommpay) postRaw(url string, body []byte, header http.Header) (int, http.Header, string, error) {
	if err := mustLoopbackURL(url); err != nil {
		return 0, nil, "", err
	}
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(string(body)))
	if err != nil {
		return 0, nil, "", err
	}
	req.Header.Set("Content-Type", "application/json")
	for k, vs := range header {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	resp, err := f.client.Do(req)
	if err != nil {
		return 0, nil, "", err
	}
	defer resp.Body.Close()
	ans, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return resp.StatusCode, resp.Header, string(ans), nil
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// mustLoopbackURL refuses any URL that is not http on a loopback address.
func mustLoopbackURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return err
	}
	if u.Scheme != "http" {
		return fmt.Errorf("refusing non-http URL %q", raw)
	}
	ip := net.ParseIP(u.Hostname())
	if ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("refusing non-loopback URL %q", raw)
	}
	return nil
}

// Helpers the tests use to build their own (forged or special) callbacks.

func randDigits(n int) string {
	var sb strings.Builder
	for i := 0; i < n; i++ {
		b := make([]byte, 1)
		rand.Read(b)
		d := int(b[0]) % 10
		if i == 0 && d == 0 {
			d = 7
		}
		sb.WriteByte(byte('0' + d))
	}
	return sb.String()
}

func platformDate(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05-0700") }

func sum(amount int64, currency string) map[string]any {
	return map[string]any{"amount": amount, "currency": currency}
}
