package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/vectors"
)

func loadVectors(t *testing.T) []vectors.Vector {
	t.Helper()
	vs, err := vectors.Load()
	if err != nil {
		t.Fatal(err)
	}
	return vs
}

// TestSignerVectors pins the fake ecommpay's own signer (signer_test.go) to
// the PHP-SDK conformance vectors, so that a failing scenario is never the
// fake's fault.
func TestSignerVectors(t *testing.T) {
	n := 0
	for _, v := range loadVectors(t) {
		switch v.Type {
		case "sign":
			n++
			canon, err := signCanonicalJSON([]byte(v.ParamsJSON))
			if err != nil {
				t.Errorf("%s: %v", v.Name, err)
				continue
			}
			if canon != v.Canonical {
				t.Errorf("%s: canonical\n got %q\nwant %q", v.Name, canon, v.Canonical)
			}
			if sig := hmacSign(canon, v.Secret); sig != v.Signature {
				t.Errorf("%s: signature %s, want %s", v.Name, sig, v.Signature)
			}
		case "callback":
			n++
			ok, reason := verifyCallbackBody([]byte(v.RawBody), v.Secret)
			if ok != v.ExpectValid {
				t.Errorf("%s: verified=%v (%s), want %v", v.Name, ok, reason, v.ExpectValid)
			}
		}
	}
	if n < 40 {
		t.Fatalf("only %d vectors exercised", n)
	}
}

func TestStrnatcmp(t *testing.T) {
	less := [][2]string{
		{"items:2", "items:10"}, {"a", "a1"}, {"a1", "a2"}, {"a2", "a10"}, {"a10", "a_b"},
		{"a1", "a:x"}, {"x2y9", "x2y10"}, {"x2y10", "x10y1"}, {"A", "a"}, {"a/b", "a b"},
	}
	for _, p := range less {
		if strnatcmp(p[0], p[1]) >= 0 || strnatcmp(p[1], p[0]) <= 0 {
			t.Errorf("want %q < %q", p[0], p[1])
		}
	}
	if strnatcmp("a b", "ab") != 0 {
		t.Errorf("whitespace must be skipped")
	}
}

// TestShopSignerVectors runs the Python shop's own signer against the same
// vectors: the shop's verification of forwarded callbacks is trustworthy.
func TestShopSignerVectors(t *testing.T) {
	needTool(t, "python3", "python3")
	script := filepath.Join("shop", "shop.py")
	if _, err := os.ReadFile(script); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(pythonPath(t), script, "--selftest", vectors.Path()).CombinedOutput()
	if err != nil || !strings.Contains(string(out), ", 0 failed") {
		t.Fatalf("shop.py --selftest: %v\n%s", err, out)
	}
	t.Log(strings.TrimSpace(string(out)))
}
