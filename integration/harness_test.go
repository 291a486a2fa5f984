package integration

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"image"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/makiuchi-d/gozxing"
	"github.com/makiuchi-d/gozxing/qrcode"
)

// stack is one fake ecommpay, one shop and one Caddy wired together.
type stack struct {
	t      *testing.T
	secret string
	fake   *fakeEcommpay
	shop   *shopProc
	caddy  *caddyProc
}

func newSecret() string { return "test-secret-" + randHex(16) }

// newStack starts the three processes; mutate may change the Caddy config.
func newStack(t *testing.T, mutate func(*caddyConfig)) *stack {
	t.Helper()
	return newStackVerifying(t, mutate, "")
}

// newStackVerifying is newStack with extra secrets the shop accepts
// (comma-separated, after the current one).
func newStackVerifying(t *testing.T, mutate func(*caddyConfig), extraShopSecrets string) *stack {
	t.Helper()
	requireCaddy(t)
	secret := newSecret()
	fake := startFake(t, secret)
	cfg := newCaddyConfig(t, fake.port(), 0)
	shopSecrets := secret
	if extraShopSecrets != "" {
		shopSecrets += "," + extraShopSecrets
	}
	shop := startShop(t, fmt.Sprintf("http://127.0.0.1:%d", cfg.Internal), shopSecrets, 0)
	cfg.App = shop.port
	if mutate != nil {
		mutate(&cfg)
	}
	caddy := startCaddy(t, "caddy", cfg, secret)
	fake.setCallbackURLs(caddy.callbackURL())
	// Registered last, so it runs first: no delivery outlives the processes.
	t.Cleanup(fake.stopDeliveries)
	return &stack{t: t, secret: secret, fake: fake, shop: shop, caddy: caddy}
}

// eventually polls cond every 50 ms until it holds or timeout passes.
func eventually(t testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	last := ""
	for {
		ok, detail := cond()
		if ok {
			return
		}
		last = detail
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s: %s", timeout, what, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitSettled waits until the fake has made at least n deliveries and every
// one of them ended.
func waitSettled(t testing.TB, f *fakeEcommpay, n int, timeout time.Duration) {
	t.Helper()
	eventually(t, timeout, fmt.Sprintf("%d settled deliveries", n), func() (bool, string) {
		ok, count, pending := f.settled()
		return ok && count >= n, fmt.Sprintf("%d deliveries, pending: %s", count, pending)
	})
}

// waitShopEvent waits until the shop stored an event for the payment with the
// given operation type and a final operation status.
func waitShopEvent(t testing.TB, s *shopProc, paymentID, opType, opStatus string, timeout time.Duration) *shopEvent {
	t.Helper()
	var found *shopEvent
	eventually(t, timeout, fmt.Sprintf("shop event %s %s/%s", paymentID, opType, opStatus), func() (bool, string) {
		st := s.state(t)
		var seen []string
		for _, e := range st.eventsFor(paymentID) {
			seen = append(seen, e.OperationType+"/"+e.OperationStatus)
			if e.OperationType == opType && e.OperationStatus == opStatus {
				found = e
				return true, ""
			}
		}
		return false, fmt.Sprintf("shop has %v (rejected %d)", seen, len(st.Rejected))
	})
	return found
}

// checkExactlyOnce asserts, for every callback the fake produced for the
// payments (all payments if none given): every delivery ended with 200,
// exactly one attempt over all copies and URLs got a 200 that was not a
// duplicate, and the shop stored that event once with count 1. It returns
// the shop event matched to each fake callback.
func checkExactlyOnce(t testing.TB, f *fakeEcommpay, st shopState, paymentIDs ...string) map[int]*shopEvent {
	t.Helper()
	want := map[string]bool{}
	for _, p := range paymentIDs {
		want[p] = true
	}
	matched := map[int]*shopEvent{}
	for _, cb := range f.allCallbacks() {
		if len(want) > 0 && !want[cb.PaymentID] {
			continue
		}
		seq := cb.Seq
		ds := f.deliveriesOf(func(c *fakeCallback) bool { return c.Seq == seq })
		if len(ds) == 0 {
			t.Errorf("callback #%d %s: never delivered", cb.Seq, cb.Identity())
		}
		fresh := 0
		for _, d := range ds {
			if !d.Done {
				t.Errorf("callback #%d %s → %s: not delivered (gave up=%v, %d attempts)", cb.Seq, cb.Identity(), d.URL, d.GaveUp, len(d.Attempts))
			}
			for _, a := range d.Attempts {
				if a.Status == 200 && !a.Duplicate {
					fresh++
				}
				if a.Status == 409 && a.RetryAfter == "" {
					t.Errorf("callback #%d: 409 without Retry-After", cb.Seq)
				}
			}
		}
		if fresh != 1 {
			t.Errorf("callback #%d %s: %d non-duplicate 200 answers over %d deliveries, want exactly 1", cb.Seq, cb.Identity(), fresh, len(ds))
		}
		var events []*shopEvent
		for _, e := range st.eventsFor(cb.PaymentID) {
			if e.OperationID == cb.OpID && e.OperationType == cb.OpType && e.OperationStatus == cb.OpStatus && e.PaymentStatus == cb.PayStatus {
				events = append(events, e)
			}
		}
		switch {
		case len(events) != 1:
			t.Errorf("callback #%d %s: shop stored %d events for it, want 1", cb.Seq, cb.Identity(), len(events))
		case events[0].Count != 1:
			t.Errorf("callback #%d %s: reached the shop %d times, want 1", cb.Seq, cb.Identity(), events[0].Count)
		default:
			matched[cb.Seq] = events[0]
		}
	}
	if len(st.Rejected) > 0 {
		t.Errorf("shop rejected %d forwarded callbacks, first: %v", len(st.Rejected), st.Rejected[0])
	}
	return matched
}

// checkForwarded asserts what Caddy must add to every forwarded callback.
func checkForwarded(t testing.TB, e *shopEvent) {
	t.Helper()
	if e.Key == "" {
		t.Errorf("event without X-Ecommpay-Event-Key")
	}
	if e.ProjectHeader != fmt.Sprint(projectID) {
		t.Errorf("event %s: X-Ecommpay-Project-Id = %q, want %d", e.Key, e.ProjectHeader, projectID)
	}
	if e.Path != "/callback" {
		t.Errorf("event %s reached the shop on %q, want /callback", e.Key, e.Path)
	}
	if !e.Verified {
		t.Errorf("event %s not verified by the shop", e.Key)
	}
}

// reverify checks the stored body's signature again, in Go.
func reverify(t testing.TB, e *shopEvent, secret string) {
	t.Helper()
	raw, err := json.Marshal(e.Body)
	if err != nil {
		t.Fatal(err)
	}
	if ok, reason := verifyCallbackBody(raw, secret); !ok {
		t.Errorf("event %s: body does not verify with the project secret: %s", e.Key, reason)
	}
}

// canonicalWithout is the signature-stripped canonical string of a JSON
// body without the named top-level members.
func canonicalWithout(t testing.TB, raw []byte, drop ...string) string {
	t.Helper()
	v, err := parseOrdered(raw)
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	obj, _ := v.(object)
	kept := object{}
outer:
	for _, m := range obj {
		for _, d := range drop {
			if m.Key == d {
				continue outer
			}
		}
		kept = append(kept, m)
	}
	return canonicalOf(kept, true)
}

// sameContent asserts the shop got the fake's callback content (apart from
// the signature and the named members).
func sameContent(t testing.TB, cb fakeCallback, e *shopEvent, drop ...string) {
	t.Helper()
	got, _ := json.Marshal(e.Body)
	a := canonicalWithout(t, cb.Body, drop...)
	b := canonicalWithout(t, got, drop...)
	if a != b {
		t.Errorf("callback #%d %s: content changed on the way\n sent: %s\n  got: %s", cb.Seq, cb.Identity(), a, b)
	}
}

// sameBytes asserts the shop got exactly the bytes the fake sent (for
// callbacks Caddy had no reason to rewrite).
func sameBytes(t testing.TB, cb fakeCallback, e *shopEvent) {
	t.Helper()
	sum := sha256.Sum256(cb.Body)
	if hex.EncodeToString(sum[:]) != e.RawSHA256 {
		t.Errorf("callback #%d %s: the shop did not get the bytes the platform sent", cb.Seq, cb.Identity())
	}
}

// decodeQRGozxing decodes a QR PNG with gozxing.
func decodeQRGozxing(t testing.TB, pngData []byte) string {
	t.Helper()
	img, err := png.Decode(bytes.NewReader(pngData))
	if err != nil {
		t.Fatalf("QR image is not a PNG: %v", err)
	}
	bmp, err := gozxing.NewBinaryBitmapFromImage(img)
	if err != nil {
		t.Fatalf("gozxing bitmap: %v", err)
	}
	hints := map[gozxing.DecodeHintType]any{gozxing.DecodeHintType_TRY_HARDER: true}
	res, err := qrcode.NewQRCodeReader().Decode(bmp, hints)
	if err != nil {
		t.Fatalf("gozxing could not decode the QR PNG (%v): %v", img.Bounds(), err)
	}
	return res.GetText()
}

// decodeQRZbar decodes a QR PNG with zbarimg.
func decodeQRZbar(t testing.TB, pngData []byte) string {
	t.Helper()
	bin := needTool(t, "zbarimg", "zbar-tools")
	p := filepath.Join(t.TempDir(), "qr.png")
	if err := os.WriteFile(p, pngData, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "--raw", "-q", p).Output()
	if err != nil {
		t.Fatalf("zbarimg could not decode the QR PNG: %v (%s)", err, out)
	}
	return strings.TrimRight(string(out), "\r\n")
}

func pngBounds(t testing.TB, pngData []byte) image.Rectangle {
	t.Helper()
	cfg, err := png.DecodeConfig(bytes.NewReader(pngData))
	if err != nil {
		t.Fatalf("not a PNG: %v", err)
	}
	return image.Rect(0, 0, cfg.Width, cfg.Height)
}

// jsonPath walks a decoded JSON value by keys and indexes.
func jsonPath(v any, path ...any) any {
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, ok := v.(map[string]any)
			if !ok {
				return nil
			}
			v = m[k]
		case int:
			a, ok := v.([]any)
			if !ok || k >= len(a) {
				return nil
			}
			v = a[k]
		}
	}
	return v
}

func str(v any) string {
	switch t := v.(type) {
	case string:
		return t
	case nil:
		return ""
	case json.Number:
		return t.String()
	case float64:
		return fmt.Sprintf("%.0f", t)
	}
	return fmt.Sprint(v)
}

// gateBody decodes the JSON body of a Gate request the fake received.
func gateBody(t testing.TB, r fakeRequest) map[string]any {
	t.Helper()
	var m map[string]any
	dec := json.NewDecoder(bytes.NewReader(r.Body))
	dec.UseNumber()
	if err := dec.Decode(&m); err != nil {
		t.Fatalf("gate body %q: %v", r.Body, err)
	}
	return m
}

func newPaymentID(prefix string) string { return prefix + "-" + randHex(5) }
