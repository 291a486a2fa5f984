package ecommpay

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/cli"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
)

// The command's own tests are internal/cli's; these run it as Caddy
// registered it, in process and in a built Caddy.

// vectorNamed returns the public vector called name.
func vectorNamed(t *testing.T, name string) vector {
	t.Helper()
	for _, v := range loadVectors(t) {
		if v.Name == name {
			return v
		}
	}
	t.Fatalf("no vector %q", name)
	return vector{}
}

// runTree runs "caddy <args...>" in process on a command tree built the
// way Caddy builds it from the registered command.
func runTree(t *testing.T, stdin string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	reg, ok := caddycmd.Commands()["ecommpay"]
	if !ok {
		t.Fatal("the ecommpay command is not registered")
	}
	root := &cobra.Command{Use: "caddy", SilenceUsage: true}
	sub := &cobra.Command{Use: reg.Name + " " + reg.Usage, Short: reg.Short, Long: reg.Long}
	reg.CobraFunc(sub)
	root.AddCommand(sub)
	var out, errOut bytes.Buffer
	root.SetIn(strings.NewReader(stdin))
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(args)
	err = root.Execute()
	return out.String(), errOut.String(), err
}

// runVerifyCommand runs "caddy ecommpay verify" on body with testSecret:
// valid when it exits 0, out what it printed; err is any error other than
// an invalid signature.
func runVerifyCommand(t *testing.T, body string) (valid bool, out string, err error) {
	t.Helper()
	t.Setenv(cli.SecretEnv, testSecret)
	out, _, err = runTree(t, body, "ecommpay", "verify")
	if errors.Is(err, cli.ErrInvalidSignature) {
		return false, out, nil
	}
	return err == nil, out, err
}

// The registered command is internal/cli's, and backup defaults to the
// local store's file in Caddy's data directory.
func TestCommandRegistered(t *testing.T) {
	reg := caddycmd.Commands()["ecommpay"]
	if reg.Name != cli.Name || reg.Usage != cli.Usage || reg.Short != cli.Short || reg.Long != cli.Long {
		t.Fatalf("registered %+v", reg)
	}
	tampered := vectorNamed(t, "cb_tampered_amount")
	t.Setenv(cli.SecretEnv, tampered.Secret)
	out, errOut, err := runTree(t, tampered.RawBody, "ecommpay", "verify")
	if !errors.Is(err, cli.ErrInvalidSignature) || !strings.HasPrefix(out, "invalid: ") || errOut != "" {
		t.Fatalf("verify tampered: %v, stdout %q, stderr %q", err, out, errOut)
	}

	data := t.TempDir()
	t.Setenv("XDG_DATA_HOME", data)
	want := filepath.Join(data, "caddy", "ecommpay", "ecommpay.db")
	if got := defaultLocalPath(); got != want {
		t.Fatalf("defaultLocalPath() = %q, want %q", got, want)
	}
	_, _, err = runTree(t, "", "ecommpay", "backup", filepath.Join(data, "copy.db"))
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("backup without --db: %v, want it to name %s", err, want)
	}
}

// TestCaddyBinary builds a Caddy with the standard modules and this one,
// as xcaddy would, and checks the exit statuses Caddy's main gives.
func TestCaddyBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a whole Caddy binary")
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command")
	}
	root, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	gomod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	goLine := "go 1.25"
	for _, l := range strings.Split(string(gomod), "\n") {
		if strings.HasPrefix(l, "go ") {
			goLine = strings.TrimSpace(l)
		}
	}
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	write("main.go", `package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddy-ecommpay/caddy-ecommpay"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

func main() { caddycmd.Main() }
`)
	write("go.mod", "module ecommpaycli\n\n"+goLine+"\n\n"+
		"require github.com/caddy-ecommpay/caddy-ecommpay v0.0.0\n\n"+
		"replace github.com/caddy-ecommpay/caddy-ecommpay => "+root+"\n")
	sum, err := os.ReadFile(filepath.Join(root, "go.sum"))
	if err != nil {
		t.Fatal(err)
	}
	write("go.sum", string(sum))

	caddy := filepath.Join(dir, "caddy")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	build := exec.CommandContext(ctx, goBin, "build", "-o", caddy, ".")
	build.Dir = dir
	build.Env = append(os.Environ(), "GOFLAGS=-mod=mod -buildvcs=false", "GOWORK=off")
	start := time.Now()
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	t.Logf("built Caddy in %v", time.Since(start).Round(time.Second))

	valid := vectorNamed(t, "cb_card_sale_success")
	tampered := vectorNamed(t, "cb_tampered_amount")
	flat := vectorNamed(t, "pp_docs_scenario_flat")
	validFile := write("valid.json", valid.RawBody)
	secretFile := write("secret", flat.Secret+"\n")

	baseEnv := make([]string, 0, len(os.Environ()))
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, cli.SecretEnv+"=") {
			baseEnv = append(baseEnv, kv)
		}
	}
	run := func(secret, stdin string, args ...string) (stdout, stderr string, code int) {
		t.Helper()
		cmd := exec.CommandContext(ctx, caddy, append([]string{"ecommpay"}, args...)...)
		cmd.Env = baseEnv
		if secret != "" {
			cmd.Env = append(cmd.Env[:len(cmd.Env):len(cmd.Env)], cli.SecretEnv+"="+secret)
		}
		cmd.Stdin = strings.NewReader(stdin)
		var out, errOut bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errOut
		err := cmd.Run()
		var exit *exec.ExitError
		switch {
		case err == nil:
		case errors.As(err, &exit):
			code = exit.ExitCode()
		default:
			t.Fatalf("running caddy: %v", err)
		}
		return out.String(), errOut.String(), code
	}

	out, errOut, code := run(valid.Secret, "", "verify", validFile)
	if code != 0 || out != "valid\n" {
		t.Fatalf("verify valid: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	out, errOut, code = run(tampered.Secret, tampered.RawBody, "verify")
	if code != 1 || !strings.HasPrefix(out, "invalid: ") || !strings.HasSuffix(out, "\ncanonical: "+tampered.ReceivedCanon+"\n") {
		t.Fatalf("verify tampered: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	out, errOut, code = run(valid.Secret, `{"signature":`, "verify")
	if code != 1 || out != "" || !strings.Contains(errOut, "malformed JSON") {
		t.Fatalf("verify malformed: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	out, errOut, code = run(flat.Secret, flat.ParamsJSON, "sign")
	if code != 0 || out != flat.Signature+"\n" {
		t.Fatalf("sign: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	out, errOut, code = run("", flat.ParamsJSON, "sign", "--canonical", "--secret-file", secretFile)
	if code != 0 || out != "canonical: "+flat.Canonical+"\n"+flat.Signature+"\n" {
		t.Fatalf("sign --secret-file: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	out, errOut, code = run("", flat.ParamsJSON, "sign")
	if code != 1 || out != "" || !strings.Contains(errOut, cli.SecretEnv) {
		t.Fatalf("sign without a secret: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
}
