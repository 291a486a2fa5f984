package cli

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/canon"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/journal"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/sqlitestore"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/vectors"
	"github.com/caddy-ecommpay/caddy-ecommpay/signature"
	"github.com/spf13/cobra"
)

const testSecret = "c0ffee-test-secret-01"

func loadVectors(tb testing.TB) []vectors.Vector {
	tb.Helper()
	vs, err := vectors.Load()
	if err != nil {
		tb.Fatal(err)
	}
	return vs
}

// lastLine is the last line of out, which must end in a newline.
func lastLine(t *testing.T, out string) string {
	t.Helper()
	if !strings.HasSuffix(out, "\n") {
		t.Fatalf("output does not end in a newline: %q", out)
	}
	out = strings.TrimSuffix(out, "\n")
	return out[strings.LastIndexByte(out, '\n')+1:]
}

// assertNoSecret fails when out shows the secret, unless the input itself
// carries that text (then the canonical string may too).
func assertNoSecret(t *testing.T, out, secret, input string) {
	t.Helper()
	if secret != "" && !strings.Contains(input, secret) && strings.Contains(out, secret) {
		t.Fatalf("output shows the secret: %q", out)
	}
}

func TestRunSignVectors(t *testing.T) {
	n := 0
	for _, v := range loadVectors(t) {
		if v.Type != "sign" {
			continue
		}
		n++
		t.Run(v.Name, func(t *testing.T) {
			var out bytes.Buffer
			if err := runSign(strings.NewReader(v.ParamsJSON), v.Secret, signOpts{}, &out); err != nil {
				t.Fatal(err)
			}
			if got := out.String(); got != v.Signature+"\n" {
				t.Fatalf("output %q, want the signature %q alone", got, v.Signature)
			}
			out.Reset()
			if err := runSign(strings.NewReader(v.ParamsJSON), v.Secret, signOpts{canonical: true}, &out); err != nil {
				t.Fatal(err)
			}
			if want := "canonical: " + v.Canonical + "\n" + v.Signature + "\n"; out.String() != want {
				t.Fatalf("--canonical output\n got %q\nwant %q", out.String(), want)
			}
			if got := lastLine(t, out.String()); got != v.Signature {
				t.Fatalf("last line %q, want %q", got, v.Signature)
			}
			assertNoSecret(t, out.String(), v.Secret, v.ParamsJSON)
		})
	}
	if n != vectors.SignCases {
		t.Fatalf("ran %d signing vectors, want %d", n, vectors.SignCases)
	}
}

// In callback mode, signing a genuine callback must reproduce the
// signature ecommpay put in it; in the default mode the embedded
// signature is part of what is signed, so it must not.
func TestRunSignCallbackMode(t *testing.T) {
	n := 0
	for _, v := range loadVectors(t) {
		if v.Type != "callback" || !v.ExpectValid {
			continue
		}
		n++
		t.Run(v.Name, func(t *testing.T) {
			var out bytes.Buffer
			if err := runSign(strings.NewReader(v.RawBody), v.Secret, signOpts{callback: true, canonical: true}, &out); err != nil {
				t.Fatal(err)
			}
			if got := lastLine(t, out.String()); got != v.Embedded {
				t.Fatalf("--callback signature %q, want the embedded %q", got, v.Embedded)
			}
			if want := "canonical: " + v.Canonical + "\n"; !strings.HasPrefix(out.String(), want) {
				t.Fatalf("--callback output %q does not start with %q", out.String(), want)
			}
			out.Reset()
			if err := runSign(strings.NewReader(v.RawBody), v.Secret, signOpts{}, &out); err != nil {
				t.Fatal(err)
			}
			if got := lastLine(t, out.String()); got == v.Embedded {
				t.Fatal("sign mode left the embedded signature out of the canonical string")
			}
		})
	}
	if n == 0 {
		t.Fatal("no valid callback vectors")
	}
}

// --body prints a whole signed body: a callback that verifies, or a Gate
// request whose general.signature covers the rest.
func TestRunSignBody(t *testing.T) {
	var out bytes.Buffer
	in := `{"project_id":210,"payment":{"id":"X1","status":"success","signature":"old"},"signature":"stale"}`
	if err := runSign(strings.NewReader(in), testSecret, signOpts{callback: true, body: true}, &out); err != nil {
		t.Fatal(err)
	}
	var res bytes.Buffer
	if valid, err := runVerify(bytes.NewReader(out.Bytes()), testSecret, &res); err != nil || !valid {
		t.Fatalf("the signed callback does not verify: %v %s\n%s", err, res.String(), out.String())
	}
	if strings.Count(out.String(), "\n") != 1 || strings.Contains(out.String(), "stale") {
		t.Fatalf("--body printed more than the body, or kept the stale signature: %q", out.String())
	}

	out.Reset()
	gate := `{"general":{"project_id":210,"payment_id":"P","signature":"stale"},"payment":{"amount":1000,"currency":"CNY"}}`
	if err := runSign(strings.NewReader(gate), testSecret, signOpts{body: true}, &out); err != nil {
		t.Fatal(err)
	}
	d, err := canon.Parse(out.Bytes(), canon.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	sig := d.Text(d.Get(d.Get(d.Root(), "general"), "signature"))
	d.Delete(d.Get(d.Root(), "general"), "signature")
	if want := canon.NewKey(testSecret).Sign(d.Canonical(nil, false)); sig != want {
		t.Fatalf("general.signature %q, want %q over %s", sig, want, out.String())
	}
	d.Release()

	if err := runSign(strings.NewReader(gate), testSecret, signOpts{body: true, canonical: true}, &out); err == nil {
		t.Fatal("--body with --canonical was accepted")
	}
	if err := runSign(strings.NewReader(`{"general":1}`), testSecret, signOpts{body: true}, &out); err == nil {
		t.Fatal("a Gate body whose general is not an object was signed")
	}
}

func TestRunSignErrors(t *testing.T) {
	for name, body := range map[string]string{
		"malformed": `{"a":`,
		"array":     `[1,2]`,
		"scalar":    `"x"`,
		"empty":     ``,
		"duplicate": `{"a":1,"a":2}`,
	} {
		t.Run(name, func(t *testing.T) {
			var out bytes.Buffer
			err := runSign(strings.NewReader(body), "k", signOpts{}, &out)
			if !errors.Is(err, canon.ErrMalformed) {
				t.Fatalf("err = %v, want ErrMalformed", err)
			}
			if out.Len() != 0 {
				t.Fatalf("printed %q on error", out.String())
			}
		})
	}
	var out bytes.Buffer
	if err := runSign(strings.NewReader(`{"a":1}`), "", signOpts{}, &out); err == nil || out.Len() != 0 {
		t.Fatalf("empty secret: err = %v, output %q", err, out.String())
	}
}

func TestRunVerifyVectors(t *testing.T) {
	n := 0
	for _, v := range loadVectors(t) {
		if v.Type != "callback" {
			continue
		}
		n++
		t.Run(v.Name, func(t *testing.T) {
			var out bytes.Buffer
			valid, err := runVerify(strings.NewReader(v.RawBody), v.Secret, &out)
			if err != nil {
				t.Fatal(err)
			}
			if valid != v.ExpectValid {
				t.Fatalf("valid = %v, want %v; output %q", valid, v.ExpectValid, out.String())
			}
			got := out.String()
			canonical, embedded, err := signature.CallbackCanonical([]byte(v.RawBody))
			if err != nil {
				t.Fatal(err)
			}
			if valid {
				if got != "valid\n" {
					t.Fatalf("output %q, want %q", got, "valid\n")
				}
			} else {
				if !strings.HasPrefix(got, "invalid: ") {
					t.Fatalf("output %q does not start with \"invalid: \"", got)
				}
				if !strings.HasSuffix(got, "\ncanonical: "+canonical+"\n") {
					t.Fatalf("output %q does not end with the computed canonical %q", got, canonical)
				}
				if v.ReceivedCanon != "" && !strings.HasSuffix(got, "\ncanonical: "+v.ReceivedCanon+"\n") {
					t.Fatalf("output %q does not end with the received canonical %q", got, v.ReceivedCanon)
				}
			}
			assertNoSecret(t, got, v.Secret, v.RawBody)
			if embedded != "" && strings.Contains(got, embedded) {
				t.Fatalf("output shows the received signature: %q", got)
			}
			if expected := signature.Sign(canonical, v.Secret); strings.Contains(got, expected) {
				t.Fatalf("output shows the expected signature: %q", got)
			}
		})
	}
	if n != vectors.CallbackCases {
		t.Fatalf("ran %d callback vectors, want %d", n, vectors.CallbackCases)
	}
}

func TestRunVerifyReasons(t *testing.T) {
	const secret = "k3y"
	body := `{"project_id":1,"payment":{"id":"p","status":"success"}}`
	canonical, err := signature.Canonical([]byte(body))
	if err != nil {
		t.Fatal(err)
	}
	good := signature.Sign(canonical, secret)
	withSig := func(path, sig string) string {
		if path == "general" {
			return `{"project_id":1,"payment":{"id":"p","status":"success"},"general":{"signature":"` + sig + `"}}`
		}
		return `{"project_id":1,"payment":{"id":"p","status":"success"},"signature":"` + sig + `"}`
	}
	for _, tc := range []struct {
		name, body, reason string
		valid              bool
	}{
		{"top-level", withSig("", good), "", true},
		{"general", withSig("general", good), "", true},
		{"none", body, "no signature", false},
		{"not a string", `{"project_id":1,"payment":{"id":"p","status":"success"},"signature":7}`, "no signature", false},
		{"not base64", withSig("", "abc"), "not the base64", false},
		{"truncated", withSig("", good[:len(good)-4]), "not the base64", false},
		{"mismatch", withSig("", signature.Sign(canonical+"x", secret)), "does not match", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			valid, err := runVerify(strings.NewReader(tc.body), secret, &out)
			if err != nil {
				t.Fatal(err)
			}
			if valid != tc.valid {
				t.Fatalf("valid = %v, want %v; output %q", valid, tc.valid, out.String())
			}
			got := out.String()
			if tc.valid {
				if got != "valid\n" {
					t.Fatalf("output %q", got)
				}
				return
			}
			first, rest, _ := strings.Cut(got, "\n")
			if !strings.HasPrefix(first, "invalid: ") || !strings.Contains(first, tc.reason) {
				t.Fatalf("first line %q, want \"invalid: ...%s...\"", first, tc.reason)
			}
			// The canonical string leaves out the signature members.
			if rest != "canonical: "+canonical+"\n" {
				t.Fatalf("after the reason %q, want the canonical %q", rest, canonical)
			}
			if strings.Contains(got, good) || strings.Contains(got, secret) {
				t.Fatalf("output shows the secret or a signature: %q", got)
			}
		})
	}
}

func TestRunVerifyErrors(t *testing.T) {
	for name, body := range map[string]string{
		"malformed": `{"signature":`,
		"array":     `[{"signature":"x"}]`,
		"trailing":  `{} {}`,
	} {
		t.Run(name, func(t *testing.T) {
			var out bytes.Buffer
			valid, err := runVerify(strings.NewReader(body), "k", &out)
			if valid || !errors.Is(err, canon.ErrMalformed) {
				t.Fatalf("valid = %v, err = %v; want false and ErrMalformed", valid, err)
			}
			if out.Len() != 0 {
				t.Fatalf("printed %q on error", out.String())
			}
		})
	}
}

func TestReadSecret(t *testing.T) {
	dir := t.TempDir()
	file := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	env := func(v string) func(string) string {
		return func(name string) string {
			if name == SecretEnv {
				return v
			}
			return ""
		}
	}
	for _, tc := range []struct {
		name, env, file, want string
		wantErr               bool
	}{
		{name: "env only", env: "from-env", want: "from-env"},
		{name: "env keeps its newline", env: "from-env\n", want: "from-env\n"},
		{name: "file only", file: file("plain", "from-file"), want: "from-file"},
		{name: "file newline trimmed", file: file("nl", "from-file\n"), want: "from-file"},
		{name: "file CRLF trimmed", file: file("crlf", "from-file\r\n"), want: "from-file"},
		{name: "file one newline only", file: file("nlnl", "from-file\n\n"), want: "from-file\n"},
		{name: "file keeps spaces", file: file("sp", " from-file \n"), want: " from-file "},
		{name: "both", env: "from-env", file: file("both", "from-file\n"), wantErr: true},
		{name: "neither", wantErr: true},
		{name: "empty file", file: file("empty", ""), wantErr: true},
		{name: "newline-only file", file: file("blank", "\n"), wantErr: true},
		{name: "missing file", file: filepath.Join(dir, "missing"), wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := readSecret(env(tc.env), tc.file)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("got %q, want an error", got)
				}
				if tc.env != "" && strings.Contains(err.Error(), tc.env) {
					t.Fatalf("error shows the secret: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
}

// vectorNamed returns the public vector called name.
func vectorNamed(t *testing.T, name string) vectors.Vector {
	t.Helper()
	for _, v := range loadVectors(t) {
		if v.Name == name {
			return v
		}
	}
	t.Fatalf("no vector %q", name)
	return vectors.Vector{}
}

// runTree runs "caddy <args...>" in process on a command tree built the
// way Caddy builds it from the registered command.
func runTree(t *testing.T, opts Options, stdin string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	root := &cobra.Command{Use: "caddy", SilenceUsage: true}
	sub := &cobra.Command{Use: Name + " " + Usage, Short: Short, Long: Long}
	Setup(opts)(sub)
	root.AddCommand(sub)
	var out, errOut bytes.Buffer
	root.SetIn(strings.NewReader(stdin))
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(args)
	err = root.Execute()
	return out.String(), errOut.String(), err
}

func TestCommandTree(t *testing.T) {
	valid := vectorNamed(t, "cb_card_sale_success")
	tampered := vectorNamed(t, "cb_tampered_amount")
	flat := vectorNamed(t, "pp_docs_scenario_flat")
	dir := t.TempDir()
	validFile := filepath.Join(dir, "valid.json")
	if err := os.WriteFile(validFile, []byte(valid.RawBody), 0o600); err != nil {
		t.Fatal(err)
	}
	secretFile := filepath.Join(dir, "secret")
	if err := os.WriteFile(secretFile, []byte(flat.Secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	t.Setenv(SecretEnv, valid.Secret)
	out, _, err := runTree(t, Options{}, "", "ecommpay", "verify", validFile)
	if err != nil || out != "valid\n" {
		t.Fatalf("verify valid: %q, %v", out, err)
	}
	out, errOut, err := runTree(t, Options{}, tampered.RawBody, "ecommpay", "verify")
	if !errors.Is(err, ErrInvalidSignature) {
		t.Fatalf("verify tampered: err = %v, want ErrInvalidSignature", err)
	}
	if !strings.HasPrefix(out, "invalid: ") || !strings.HasSuffix(out, "\ncanonical: "+tampered.ReceivedCanon+"\n") {
		t.Fatalf("verify tampered: output %q", out)
	}
	if errOut != "" {
		t.Fatalf("verify tampered printed the error again: %q", errOut)
	}
	_, errOut, err = runTree(t, Options{}, `{"signature":`, "ecommpay", "verify", "-")
	if !errors.Is(err, canon.ErrMalformed) || !strings.Contains(errOut, "malformed JSON") {
		t.Fatalf("verify malformed: err = %v, stderr %q", err, errOut)
	}

	t.Setenv(SecretEnv, flat.Secret)
	out, _, err = runTree(t, Options{}, flat.ParamsJSON, "ecommpay", "sign", "--canonical")
	if err != nil || out != "canonical: "+flat.Canonical+"\n"+flat.Signature+"\n" {
		t.Fatalf("sign --canonical: %q, %v", out, err)
	}
	// Both sources of the secret at once are refused.
	if _, _, err = runTree(t, Options{}, flat.ParamsJSON, "ecommpay", "sign", "--secret-file", secretFile); err == nil {
		t.Fatal("sign with both ECOMMPAY_SECRET and --secret-file succeeded")
	}
	t.Setenv(SecretEnv, "")
	out, _, err = runTree(t, Options{}, flat.ParamsJSON, "ecommpay", "sign", "--secret-file", secretFile)
	if err != nil || out != flat.Signature+"\n" {
		t.Fatalf("sign --secret-file: %q, %v", out, err)
	}
	if _, _, err = runTree(t, Options{}, flat.ParamsJSON, "ecommpay", "sign"); err == nil {
		t.Fatal("sign without a secret succeeded")
	}
	// There is deliberately no flag that takes the secret itself.
	if _, _, err = runTree(t, Options{}, flat.ParamsJSON, "ecommpay", "sign", "--secret", flat.Secret); err == nil || !strings.Contains(err.Error(), "unknown flag") {
		t.Fatalf("sign --secret: err = %v, want an unknown flag", err)
	}
	if _, _, err = runTree(t, Options{}, "", "ecommpay", "bogus"); err == nil {
		t.Fatal("an unknown subcommand succeeded")
	}
}

// backup copies a store file, from --db or else from the default path
// the root passes in, and refuses to overwrite.
func TestBackupCommand(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "ecommpay.db")
	s, broken, _, err := sqlitestore.Open(src, sqlitestore.Config{
		Options: journal.Options{MaxAge: time.Hour, MaxSize: 1 << 30, MaxUnverified: 100},
		Fold:    func([]byte, *sqlitestore.Entry) (sqlitestore.Payment, error) { return sqlitestore.Payment{}, nil },
		Count:   func(first []byte, _ *sqlitestore.Entry) ([]byte, error) { return first, nil },
	})
	if err != nil || broken != "" {
		t.Fatalf("Open: %v, moved to %q", err, broken)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	opts := Options{DefaultStorePath: func() string { return src }}

	dst := filepath.Join(dir, "copy.db")
	out, _, err := runTree(t, opts, "", "ecommpay", "backup", dst)
	if err != nil || out != "copied "+src+" to "+dst+"\n" {
		t.Fatalf("backup to the default path: %q, %v", out, err)
	}
	if _, err := os.Stat(dst); err != nil {
		t.Fatal(err)
	}
	_, _, err = runTree(t, opts, "", "ecommpay", "backup", "--db", src, dst)
	if err == nil || !strings.HasPrefix(err.Error(), "backup: ") || !strings.Contains(err.Error(), "exists") {
		t.Fatalf("backup over an existing file: %v", err)
	}
	if _, _, err = runTree(t, Options{}, "", "ecommpay", "backup", filepath.Join(dir, "copy2.db")); err == nil || !strings.Contains(err.Error(), "--db") {
		t.Fatalf("backup with neither --db nor a default path: %v", err)
	}
	missing := filepath.Join(dir, "missing.db")
	out, _, err = runTree(t, opts, "", "ecommpay", "backup", "--db", missing, filepath.Join(dir, "copy2.db"))
	if err == nil || out != "" {
		t.Fatalf("backup of a missing --db: %q, %v", out, err)
	}
}
