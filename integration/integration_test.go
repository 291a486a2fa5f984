// End-to-end tests: a real Caddy with the module, a fake ecommpay written in
// Go, and a merchant app written in Python (shop/shop.py).
//
// How they are built: TestMain runs, from the repository root,
//
//	go tool xcaddy build v2.11.4 --output integration/.build/... \
//	    --with github.com/caddy-ecommpay/caddy-ecommpay@v0.0.0-00010101000000-000000000000=<repo root>
//
// once per `go test` run and caches the binary in integration/.build/ (git
// ignored), keyed by a hash of the module's *.go, go.mod and go.sum, so a
// re-run without module changes starts at once. The first build on a machine
// downloads Caddy's dependencies and can take several minutes; a rebuild
// after a module change takes about half a minute. ECOMMPAY_TEST_CADDY=/path
// uses a ready binary instead.
//
// Every test starts its own processes on free loopback ports: the fake
// ecommpay (Payment Page, Gate, and callback delivery with retries), the
// Python shop, and one Caddy (two for the cluster test, sharing a
// redis-server started on a free port unless ECOMMPAY_TEST_REDIS_URL is set).
// The Caddy log is printed when a test fails; ECOMMPAY_TEST_CADDY_DEBUG=1
// turns on Caddy's debug logging.
//
// Run everything (from the repository root):
//
//	go test ./...
//
// Run one scenario alone:
//
//	go test ./integration -run TestWeChatQRSale -v
//
// Run the hostile suite (hostile_test.go: faults and attacks, each checked
// against what the sender got and what the app received):
//
//	go test -race -run 'Hostile' ./integration
//
// Needs python3, zbarimg (zbar-tools) and redis-server; php-cli with
// php-sqlite3 for the PHP shop (shop/shop.php) and the app guide's PHP
// receiver; systemd-analyze (systemd) for the unit in docs/. Without one,
// the tests that need it skip, except when CI=true, where they fail. `go test -short ./...` skips the Caddy build and every end-to-end test.
package integration

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestMain(m *testing.M) {
	flag.Parse()
	root, err := filepath.Abs("..")
	if err == nil {
		if _, statErr := os.Stat(filepath.Join(root, "go.mod")); statErr != nil {
			err = statErr
		}
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "integration: cannot find the repository root: %v\n", err)
		os.Exit(2)
	}
	repoRoot = root
	if !testing.Short() {
		start := time.Now()
		caddyBin, caddyBuildErr = buildCaddy()
		if caddyBuildErr != nil {
			fmt.Fprintf(os.Stderr, "integration: %v\n", caddyBuildErr)
		} else {
			fmt.Fprintf(os.Stderr, "integration: Caddy ready after %s: %s\n", time.Since(start).Round(time.Millisecond), caddyBin)
		}
	}
	os.Exit(m.Run())
}

// onCI reports whether missing tools must fail instead of skip.
func onCI() bool { return os.Getenv("CI") == "true" }

// needTool skips (or, on CI, fails) when a program is not installed.
func needTool(t testing.TB, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		msg := fmt.Sprintf("%s not found in PATH (install the Debian package %s)", name, pkg)
		if onCI() {
			t.Fatal(msg + "; required when CI=true")
		}
		t.Skip(msg)
	}
	return p
}

// TestCaddyBuild checks the binary built in TestMain: the module is
// registered, and the example Caddyfile adapts.
func TestCaddyBuild(t *testing.T) {
	requireCaddy(t)
	out, err := exec.Command(caddyBin, "list-modules").CombinedOutput()
	if err != nil {
		t.Fatalf("caddy list-modules: %v\n%s", err, out)
	}
	found := false
	for _, line := range strings.Split(string(out), "\n") {
		if strings.TrimSpace(line) == "http.handlers.ecommpay" {
			found = true
		}
	}
	if !found {
		t.Errorf("caddy list-modules does not list http.handlers.ecommpay:\n%s", out)
	}

	example := filepath.Join(repoRoot, "example.Caddyfile")
	if _, err := os.Stat(example); err != nil {
		t.Logf("example.Caddyfile does not exist yet on this branch; adapt check skipped")
		return
	}
	cmd := exec.Command(caddyBin, "adapt", "--config", "../example.Caddyfile")
	cmd.Env = append(os.Environ(), "ECOMMPAY_SECRET=adapt-check-secret", "HOME="+t.TempDir())
	out, err = cmd.CombinedOutput()
	if err != nil {
		t.Errorf("caddy adapt --config ../example.Caddyfile: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), `"ecommpay"`) && !strings.Contains(string(out), "ecommpay") {
		t.Errorf("adapted example config mentions no ecommpay handler:\n%s", out)
	}
}
