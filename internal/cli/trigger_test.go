package cli

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/canon"
	"github.com/caddy-ecommpay/caddy-ecommpay/signature"
)

func TestTriggerCommand(t *testing.T) {
	const secret = "trigger-test-secret"
	var bodies []string
	route := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		canonical, sig, err := signature.CallbackCanonical(body)
		if err != nil || !canon.NewKey(secret).Verify([]byte(canonical), sig) {
			http.Error(w, `{"error":"signature does not verify"}`, http.StatusForbidden)
			return
		}
		bodies = append(bodies, string(body))
		io.WriteString(w, "OK")
	}))
	defer route.Close()
	run := func(args ...string) (string, error) {
		cmd := newTriggerCommand()
		var out bytes.Buffer
		cmd.SetOut(&out)
		cmd.SetErr(io.Discard)
		cmd.SetArgs(args)
		err := cmd.Execute()
		return out.String(), err
	}

	out, err := run("--list")
	if err != nil || !strings.Contains(out, "wechat.success") || !strings.Contains(out, "refund.decline") {
		t.Fatalf("--list: %v\n%s", err, out)
	}

	t.Setenv(SecretEnv, secret)
	out, err = run("alipay.success", "--to", route.URL, "--payment-id", "T-1", "--amount", "12345", "--currency", "USD")
	if err != nil {
		t.Fatalf("alipay.success: %v\n%s", err, out)
	}
	if len(bodies) != 2 || strings.Count(out, "← 200 OK") != 2 || !strings.Contains(out, `"id":"T-1"`) ||
		!strings.Contains(bodies[1], `"amount":12345,"currency":"USD"`) || !strings.Contains(bodies[1], `"status":"success"`) {
		t.Errorf("alipay.success sent %d callbacks:\n%s", len(bodies), out)
	}

	t.Setenv(SecretEnv, "not-the-secret")
	out, err = run("wechat.success", "--to", route.URL)
	if err == nil || !strings.Contains(err.Error(), "answered 403") || !strings.Contains(out, "← 403") {
		t.Errorf("wrong secret: %v\n%s", err, out)
	}
	if _, err = run("nope", "--to", route.URL); err == nil {
		t.Error("an unknown scenario was accepted")
	}
}
