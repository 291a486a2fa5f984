package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The production Caddyfile that docs/production.md prints adapts with the
// built Caddy, as `caddy adapt` on a server would.
func TestProductionCaddyAdapt(t *testing.T) {
	requireCaddy(t)
	home := t.TempDir()
	cmd := exec.Command(caddyBin, "adapt", "--config", filepath.Join(repoRoot, "docs", "production.Caddyfile"))
	cmd.Env = append(filterEnv(os.Environ(), "HOME", "XDG_DATA_HOME", "XDG_CONFIG_HOME"), "HOME="+home)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("caddy adapt --config docs/production.Caddyfile: %v\n%s", err, stderr.String())
	}
	if stderr.Len() > 0 {
		t.Errorf("caddy adapt warned:\n%s", stderr.String())
	}
	for _, want := range []string{`"shop.example.com"`, `"{file./etc/caddy/ecommpay.secret}"`, `"127.0.0.1:8081"`} {
		if !strings.Contains(string(out), want) {
			t.Errorf("the adapted config lacks %s", want)
		}
	}
}

// docs/caddy-ecommpay.service passes systemd-analyze verify. The unit's
// ExecStart and ExecReload name /usr/local/bin/caddy, which verify
// requires to exist; the test points them at the built Caddy and changes
// nothing else.
func TestProductionSystemdUnit(t *testing.T) {
	requireCaddy(t)
	analyze := needTool(t, "systemd-analyze", "systemd")
	unit, err := os.ReadFile(filepath.Join(repoRoot, "docs", "caddy-ecommpay.service"))
	if err != nil {
		t.Fatal(err)
	}
	const bin = "/usr/local/bin/caddy"
	if !strings.Contains(string(unit), "\nExecStart="+bin+" run ") {
		t.Fatalf("the unit's ExecStart does not run %s", bin)
	}
	path := filepath.Join(t.TempDir(), "caddy-ecommpay.service")
	if err := os.WriteFile(path, []byte(strings.ReplaceAll(string(unit), bin, caddyBin)), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(analyze, "verify", path).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}
