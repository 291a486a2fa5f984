package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/sandbox"
	"github.com/spf13/cobra"
)

// triggerOpts are the flags of "caddy ecommpay trigger".
type triggerOpts struct {
	to         string
	list       bool
	projectID  string
	paymentID  string
	amount     int64
	currency   string
	secretFile string
}

func newTriggerCommand() *cobra.Command {
	var o triggerOpts
	cmd := &cobra.Command{
		Use:   "trigger <scenario> --to <callback URL> [--project-id <id>] [--payment-id <id>] [--amount <minor units>] [--currency <code>] [--secret-file <path>] | --list",
		Short: "Sends a realistic signed callback sequence to a callback route",
		Long: `
Sends the callbacks of one payment scenario, signed with the project secret,
straight to a callback route (an "ecommpay callback" handler), one after
the other, as ecommpay would: no ecommpay account or sandbox needed. Each
callback is printed with the answer it got.

  caddy ecommpay trigger wechat.success --to http://127.0.0.1:8080/ecommpay/callback

--list shows the scenarios. The bodies are the ones "ecommpay sandbox" sends.
Defaults: project 210, a new payment ID, the scenario's amount (test-project
rules: 40000 declines a purchase, 50000 a refund) and currency.

The secret comes from ` + SecretEnv + ` or --secret-file, exactly one of them.

Exit status: 0 when every callback got 200; 1 when one did not (a route
that refuses a wrong secret answers 403) or on any error.
`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			out := cmd.OutOrStdout()
			if o.list {
				return listScenarios(out)
			}
			if len(args) != 1 {
				return errors.New("name a scenario (see --list)")
			}
			sc, ok := sandbox.LookupScenario(args[0])
			if !ok {
				return fmt.Errorf("unknown scenario %q (see --list)", args[0])
			}
			if o.to == "" {
				return errors.New("--to <callback URL> is required")
			}
			secret, err := readSecret(os.Getenv, o.secretFile)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), time.Minute)
			defer cancel()
			client := &http.Client{Timeout: 30 * time.Second}
			p := sandbox.Params{ProjectID: o.projectID, PaymentID: o.paymentID, Amount: o.amount, Currency: o.currency}
			_, err = sandbox.Trigger(ctx, client, sandbox.ModuleSigner(), secret, o.to, sc, p, func(r sandbox.TriggerResult) {
				fmt.Fprintf(out, "→ %s %s\n%s\n← %d %s\n\n", sc.Name, r.Name, r.Body, r.Status, strings.TrimSpace(r.Answer))
			})
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.to, "to", "", "The callback route's URL")
	f.BoolVar(&o.list, "list", false, "List the scenarios")
	f.StringVar(&o.projectID, "project-id", "210", "project_id of the callbacks")
	f.StringVar(&o.paymentID, "payment-id", "", "payment.id of the callbacks (default: a new one)")
	f.Int64Var(&o.amount, "amount", 0, "Amount in minor units (default: the scenario's)")
	f.StringVar(&o.currency, "currency", "", "Currency (default: the scenario's)")
	f.StringVar(&o.secretFile, "secret-file", "", "Read the secret from this file instead of "+SecretEnv)
	return cmd
}

func listScenarios(out io.Writer) error {
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	for _, sc := range sandbox.Scenarios() {
		fmt.Fprintf(tw, "%s\t%s\n", sc.Name, sc.Summary)
	}
	return tw.Flush()
}
