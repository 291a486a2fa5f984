package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/canon"
	"github.com/spf13/cobra"
)

// SecretEnv names the environment variable the ecommpay subcommands read
// the project secret from. The secret is never taken from a flag value,
// which would land in shell history and process listings.
const SecretEnv = "ECOMMPAY_SECRET"

// ErrInvalidSignature ends "caddy ecommpay verify" with exit status 1
// after it has printed why the signature is invalid; it is not printed
// again.
var ErrInvalidSignature = errors.New("invalid signature")

// Options are what the commands need from Caddy.
type Options struct {
	// DefaultStorePath returns the local store's file, for backup without
	// --db. It is called only then.
	DefaultStorePath func() string
}

// Name, Usage, Short and Long describe the command to Caddy's command
// system ("caddy ecommpay").
const (
	Name  = "ecommpay"
	Usage = "sign|verify|events|replay|backup|trigger ..."
	Short = "Signs and verifies for debugging; lists and replays journal events; backs up the local journal; sends test callbacks"
	Long  = `
Offline helpers to debug ecommpay signatures with the same canonicaliser the
ecommpay handlers use. Both read a JSON object from <file>, or from stdin
when <file> is omitted or "-".

events and replay talk to a running console (ecommpay console) through its
JSON API, at --console <url> or $` + ConsoleEnv + ` (default ` + defaultConsoleURL + `).

  caddy ecommpay events [--project-id <id>] [--payment-id <id>] [--result <r>] [--limit <n>] [--json]
  caddy ecommpay replay <event_key>

backup copies the local store's file, consistent, while Caddy runs.

  caddy ecommpay backup [--db <path>] <file>

The project secret comes from the ` + SecretEnv + ` environment variable or from
--secret-file <path> (one trailing newline is trimmed), never from a flag
value. Giving both, or neither, is an error.

  caddy ecommpay sign [--canonical] [--callback] [--secret-file <path>] [<file>]
  caddy ecommpay verify [--secret-file <path>] [<file>]

trigger sends a realistic signed callback sequence to a callback route
(--list shows the scenarios):

  caddy ecommpay trigger <scenario> --to <callback URL> [--project-id <id>] [--payment-id <id>]
      [--amount <minor units>] [--currency <code>] [--secret-file <path>]
`
)

// Setup fills in cmd, the "caddy ecommpay" command Caddy made from Name,
// Usage, Short and Long, with its subcommands.
func Setup(opts Options) func(cmd *cobra.Command) {
	return func(cmd *cobra.Command) {
		cmd.Args = cobra.NoArgs
		cmd.RunE = func(cmd *cobra.Command, _ []string) error { return cmd.Help() }
		cmd.AddCommand(newSignCommand(), newVerifyCommand(), newEventsCommand(), newReplayCommand(),
			newBackupCommand(opts.DefaultStorePath), newTriggerCommand())
	}
}

func newSignCommand() *cobra.Command {
	var opts signOpts
	var secretFile string
	cmd := &cobra.Command{
		Use:   "sign [--canonical] [--callback] [--body] [--secret-file <path>] [<file>]",
		Short: "Prints the signature of a JSON object",
		Long: `
Signs a JSON object as ecommpay's PHP SDK sign() does: the canonical string
of every member except "frame_mode", HMAC-SHA512 with the project secret,
base64. The signature is printed as the last line of output.

--canonical also prints the canonical string, on a line labelled
"canonical: " before the signature.

--callback signs as a callback is verified: every "signature" member, at
any depth, is left out too. Use it to make test callbacks.

--body prints the whole signed body instead of the signature: with
--callback the signature goes to the top-level "signature" (a callback, as
ecommpay sends it), else to "general.signature" (a Gate request). Nothing
else is printed, so the output can go straight to a file or to curl:

  echo '{"project_id":210,"payment":{"id":"X1","status":"success"}}' |
    caddy ecommpay sign --callback --body > callback.json

The secret comes from ` + SecretEnv + ` or --secret-file, exactly one of them.

Exit status: 0 when signed; 1 on any error (no secret, unreadable input,
malformed JSON).
`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withSecretAndInput(cmd, args, secretFile, func(in io.Reader, secret string) error {
				return runSign(in, secret, opts, cmd.OutOrStdout())
			})
		},
	}
	cmd.Flags().BoolVar(&opts.canonical, "canonical", false, "Also print the canonical string")
	cmd.Flags().BoolVar(&opts.callback, "callback", false, `Leave out every "signature" member, as callback verification does`)
	cmd.Flags().BoolVar(&opts.body, "body", false, "Print the whole signed body instead of the signature")
	cmd.Flags().StringVar(&secretFile, "secret-file", "", "Read the secret from this file instead of "+SecretEnv)
	return cmd
}

func newVerifyCommand() *cobra.Command {
	var secretFile string
	cmd := &cobra.Command{
		Use:   "verify [--secret-file <path>] [<file>]",
		Short: "Verifies the signature embedded in a callback body",
		Long: `
Verifies a callback body as the ecommpay callback handler does: the
signature is the top-level "signature" member, else "general.signature";
the canonical string leaves out every "signature" member at any depth.

A body whose signature verifies but that lacks a callback's shape (a
top-level object besides "general" with at least two signed values, such
as payment, operation or request) is not a callback: a Payment Page URL's
parameters are signed with the same secret.

Prints "valid" when the signature verifies with the secret. Otherwise prints
"invalid: <reason>" and, on a line labelled "canonical: ", the canonical
string computed here, to compare with the one the sender signed. Neither
the secret nor any signature is printed.

The secret comes from ` + SecretEnv + ` or --secret-file, exactly one of them.

Exit status: 0 when valid; 1 when invalid or on any error (no secret,
unreadable input, malformed JSON).
`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withSecretAndInput(cmd, args, secretFile, func(in io.Reader, secret string) error {
				valid, err := runVerify(in, secret, cmd.OutOrStdout())
				if err == nil && !valid {
					// The reason is already printed; Caddy's main exits
					// with 1 on any error.
					cmd.SilenceErrors = true
					err = ErrInvalidSignature
				}
				return err
			})
		},
	}
	cmd.Flags().StringVar(&secretFile, "secret-file", "", "Read the secret from this file instead of "+SecretEnv)
	return cmd
}

// withSecretAndInput reads the secret, opens the input and runs fn.
func withSecretAndInput(cmd *cobra.Command, args []string, secretFile string, fn func(io.Reader, string) error) error {
	secret, err := readSecret(os.Getenv, secretFile)
	if err != nil {
		return err
	}
	in, err := openInput(cmd, args)
	if err != nil {
		return err
	}
	defer in.Close()
	return fn(in, secret)
}

// openInput opens the file argument, or stdin when there is none or it
// is "-".
func openInput(cmd *cobra.Command, args []string) (io.ReadCloser, error) {
	if len(args) == 0 || args[0] == "-" {
		return io.NopCloser(cmd.InOrStdin()), nil
	}
	return os.Open(args[0])
}

// readSecret returns the secret from the environment variable SecretEnv
// (read with env) or from secretFile, less one trailing newline. Exactly
// one of them must be given, and the secret must not be empty.
func readSecret(env func(string) string, secretFile string) (string, error) {
	fromEnv := env(SecretEnv)
	switch {
	case fromEnv != "" && secretFile != "":
		return "", fmt.Errorf("both %s and --secret-file are set; use one of them", SecretEnv)
	case fromEnv != "":
		return fromEnv, nil
	case secretFile == "":
		return "", fmt.Errorf("no secret: set %s or pass --secret-file <path>", SecretEnv)
	}
	raw, err := os.ReadFile(secretFile)
	if err != nil {
		return "", fmt.Errorf("reading the secret: %w", err)
	}
	secret := string(raw)
	if s, ok := strings.CutSuffix(secret, "\n"); ok {
		secret = strings.TrimSuffix(s, "\r")
	}
	if secret == "" {
		return "", fmt.Errorf("secret file %s is empty", secretFile)
	}
	return secret, nil
}

// signOpts are the options of "caddy ecommpay sign".
type signOpts struct {
	canonical bool // also print the canonical string
	callback  bool // leave out "signature" members, as for callbacks
	body      bool // print the signed body, not the signature
}

// parseObject reads in and parses it as a JSON object with the default
// limits. Release the Doc when done with it.
func parseObject(in io.Reader) (*canon.Doc, error) {
	body, err := io.ReadAll(in)
	if err != nil {
		return nil, fmt.Errorf("reading the input: %w", err)
	}
	d, err := canon.Parse(body, canon.Limits{})
	if err != nil {
		return nil, err
	}
	if d.Kind(d.Root()) != canon.Object {
		d.Release()
		return nil, fmt.Errorf("%w: the input is not a JSON object", canon.ErrMalformed)
	}
	return d, nil
}

// runSign signs the JSON object read from in and writes the signature as
// the last line to out, after the labelled canonical string with
// opts.canonical.
func runSign(in io.Reader, secret string, opts signOpts, out io.Writer) error {
	if secret == "" {
		return errors.New("empty secret")
	}
	if opts.body && opts.canonical {
		return errors.New("--body prints only the body: leave out --canonical")
	}
	d, err := parseObject(in)
	if err != nil {
		return err
	}
	defer d.Release()
	key, root := canon.NewKey(secret), d.Root()
	var b []byte
	switch {
	case opts.body && opts.callback:
		key.SignCallback(d, root)
		b = append(d.AppendJSON(nil), '\n')
	case opts.body:
		general := d.Object(root, "general")
		if general == canon.None {
			return fmt.Errorf("%w: general is not an object", canon.ErrMalformed)
		}
		key.SignGate(d, general)
		b = append(d.AppendJSON(nil), '\n')
	default:
		canonical := d.Canonical(nil, opts.callback)
		signature := key.Sign(canonical)
		if opts.canonical {
			b = append(b, "canonical: "...)
			b = append(b, canonical...)
			b = append(b, '\n')
		}
		b = append(append(b, signature...), '\n')
	}
	_, err = out.Write(b)
	return err
}

// runVerify verifies the signature a callback body read from in carries.
// It writes "valid", or "invalid: <reason>" and the labelled canonical
// string, to out. err is for input that is not a JSON object and for
// failures; an invalid signature is valid == false with err == nil.
func runVerify(in io.Reader, secret string, out io.Writer) (valid bool, err error) {
	if secret == "" {
		return false, errors.New("empty secret")
	}
	d, err := parseObject(in)
	if err != nil {
		return false, err
	}
	signature := d.EmbeddedSignature()
	canonical := d.Canonical(nil, true)
	shaped := d.CallbackShaped()
	d.Release()
	var reason string
	switch {
	case signature == "":
		reason = `no signature: neither a top-level "signature" nor a "general.signature" string`
	case !canon.WellFormedSignature(signature):
		reason = "the signature is not the base64 of an HMAC-SHA512 (88 characters)"
	case !canon.NewKey(secret).Verify(canonical, signature):
		reason = "the signature does not match this body with this secret"
	case !shaped:
		reason = canon.NotACallback + "; a Payment Page request's signature is not a callback's"
	default:
		_, err = io.WriteString(out, "valid\n")
		return err == nil, err
	}
	_, err = fmt.Fprintf(out, "invalid: %s\ncanonical: %s\n", reason, canonical)
	return false, err
}
