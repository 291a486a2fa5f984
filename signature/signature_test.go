package signature_test

import (
	"errors"
	"net/url"
	"strings"
	"testing"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/vectors"
	"github.com/caddy-ecommpay/caddy-ecommpay/signature"
)

// TestConformanceVectors runs every case of the conformance file through
// the public API.
func TestConformanceVectors(t *testing.T) {
	vs, err := vectors.Load()
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vs {
		t.Run(v.Name, func(t *testing.T) {
			switch v.Type {
			case "sign":
				got, err := signature.Canonical([]byte(v.ParamsJSON))
				if err != nil {
					t.Fatal(err)
				}
				if got != v.Canonical {
					t.Fatalf("canonical\n got %q\nwant %q", got, v.Canonical)
				}
				if sig := signature.Sign(got, v.Secret); sig != v.Signature {
					t.Fatalf("signature %s, want %s", sig, v.Signature)
				}
			case "callback":
				canonical, embedded, err := signature.CallbackCanonical([]byte(v.RawBody))
				if err != nil {
					t.Fatal(err)
				}
				if embedded != v.Embedded {
					t.Fatalf("embedded signature %q, want %q", embedded, v.Embedded)
				}
				if v.ExpectValid && canonical != v.Canonical {
					t.Fatalf("canonical\n got %q\nwant %q", canonical, v.Canonical)
				}
				if !v.ExpectValid && v.ReceivedCanon != "" && canonical != v.ReceivedCanon {
					t.Fatalf("received canonical\n got %q\nwant %q", canonical, v.ReceivedCanon)
				}
				err = signature.VerifyCallback([]byte(v.RawBody), v.Secret)
				if v.ExpectValid != (err == nil) {
					t.Fatalf("VerifyCallback = %v, want valid=%v", err, v.ExpectValid)
				}
				if err != nil && !errors.Is(err, signature.ErrMismatch) && !errors.Is(err, signature.ErrNoSignature) {
					t.Fatalf("a tampered callback gives %v", err)
				}
			}
		})
	}
}

// TestSignGateMatchesVectors: a Gate body signed by SignGate carries the
// vector's signature, and verifying it back gives the same.
func TestSignGateMatchesVectors(t *testing.T) {
	vs, err := vectors.Load()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, v := range vs {
		if v.Type != "sign" || strings.Contains(v.ParamsJSON, `"signature"`) || strings.Contains(v.ParamsJSON, `"general":[`) {
			continue
		}
		signed, err := signature.SignGate([]byte(v.ParamsJSON), v.Secret)
		if err != nil {
			if strings.Contains(v.ParamsJSON, `"general":`) {
				continue // general is not an object: refused, as the handler refuses it
			}
			t.Fatalf("%s: %v", v.Name, err)
		}
		_, sig, err := signature.CallbackCanonical(signed)
		if err != nil || sig != v.Signature {
			t.Fatalf("%s: general.signature %q (%v), want %q", v.Name, sig, err, v.Signature)
		}
		n++
	}
	if n < 30 {
		t.Fatalf("only %d vectors signed as Gate bodies", n)
	}
}

func TestVerifyCallbackErrors(t *testing.T) {
	const secret = "s3cret"
	body := `{"project_id":1,"payment":{"id":"P","status":"success"}}`
	canonical, err := signature.Canonical([]byte(body))
	if err != nil {
		t.Fatal(err)
	}
	withSig := func(b, sig string) []byte { return []byte(b[:len(b)-1] + `,"signature":"` + sig + `"}`) }
	good := withSig(body, signature.Sign(canonical, secret))
	for _, c := range []struct {
		name string
		body []byte
		want error
	}{
		{"valid", good, nil},
		{"wrong secret", withSig(body, signature.Sign(canonical, "other")), signature.ErrMismatch},
		{"altered", []byte(strings.Replace(string(good), "success", "decline", 1)), signature.ErrMismatch},
		{"no signature", []byte(body), signature.ErrNoSignature},
		{"not base64 of 64 bytes", withSig(body, "abc"), signature.ErrNoSignature},
		{"malformed", []byte(`{"a":1,"a":2}`), signature.ErrMalformed},
		{"not an object", []byte(`[1]`), signature.ErrMalformed},
		// A signed Payment Page query's parameters, replayed as a body.
		{"page query", withSig(`{"payment_id":"P","project_id":1}`, signature.Sign("payment_id:P;project_id:1", secret)), signature.ErrNotCallback},
	} {
		if err := signature.VerifyCallback(c.body, secret); !errors.Is(err, c.want) || (c.want == nil) != (err == nil) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}
}

func TestSignPaymentPage(t *testing.T) {
	q := url.Values{"payment_id": {"P1"}, "project_id": {"12"}, "frame_mode": {"popup"}}
	sig, err := signature.SignPaymentPage(q, "k")
	if err != nil {
		t.Fatal(err)
	}
	if want := signature.Sign("payment_id:P1;project_id:12", "k"); sig != want {
		t.Fatalf("signature %s, want %s (frame_mode not signed)", sig, want)
	}
	for _, bad := range []url.Values{
		{"a:b": {"1"}},
		{"a": {"x;y"}},
		{"a;b": {"1"}},
		{"a": {"1", "2"}},
		{"signature": {"x"}},
	} {
		if _, err := signature.SignPaymentPage(bad, "k"); !errors.Is(err, signature.ErrParam) {
			t.Errorf("%v: %v, want ErrParam", bad, err)
		}
	}
}
