package cli

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/journal"
	"github.com/spf13/cobra"
)

// ConsoleEnv names the environment variable with the console's address,
// for "caddy ecommpay events" and "caddy ecommpay replay".
const ConsoleEnv = "ECOMMPAY_CONSOLE"

// defaultConsoleURL is where the example Caddyfile mounts the console.
const defaultConsoleURL = "http://127.0.0.1:8081/ecommpay"

// event holds the fields of a journal event, as the console's JSON API
// gives it (a public interface), that the commands print.
type event struct {
	Time            time.Time `json:"time"`
	Kind            string    `json:"kind"`
	ProjectID       string    `json:"project_id"`
	PaymentID       string    `json:"payment_id"`
	OperationStatus string    `json:"operation_status"`
	EventKey        string    `json:"event_key"`
	Result          string    `json:"result"`
	AppStatus       int       `json:"app_status"`
	Reason          string    `json:"reason"`
}

// consoleClient talks to the console's JSON API.
type consoleClient struct {
	base string
	http *http.Client
}

func newConsoleClient(flag string) consoleClient {
	base := flag
	if base == "" {
		base = os.Getenv(ConsoleEnv)
	}
	if base == "" {
		base = defaultConsoleURL
	}
	return consoleClient{base: base, http: &http.Client{Timeout: 60 * time.Second}}
}

// do sends one API request and decodes a 200 answer into out.
func (c consoleClient) do(method, path string, out any) error {
	var body io.Reader
	if method == http.MethodPost {
		body = bytes.NewReader([]byte("{}"))
	}
	req, err := http.NewRequest(method, c.base+path, body)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("the console at %s: %w", c.base, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		var e struct{ Error string }
		if json.Unmarshal(data, &e) != nil || e.Error == "" {
			e.Error = http.StatusText(resp.StatusCode)
		}
		return fmt.Errorf("the console answered %d: %s", resp.StatusCode, e.Error)
	}
	return json.Unmarshal(data, out)
}

func newEventsCommand() *cobra.Command {
	var console, projectID, paymentID, result string
	var limit int
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "events [--console <url>] [--project-id <id>] [--payment-id <id>] [--result <result>] [--limit <n>] [--json]",
		Short: "Lists journal events, newest first, from a running console",
		Long: `
Lists journal events (callback attempts, replays, status events and signing
requests), newest first, from the console's API at --console <url> or $` + ConsoleEnv + `
(default ` + defaultConsoleURL + `). --json prints the API's answer as it is.

Exit status: 0 when listed; 1 when the console cannot be reached or refuses.
`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			q := url.Values{}
			for k, v := range map[string]string{"project_id": projectID, "payment_id": paymentID, "result": result} {
				if v != "" {
					q.Set(k, v)
				}
			}
			q.Set("limit", strconv.Itoa(limit))
			var answer struct {
				Events []event `json:"events"`
			}
			var raw json.RawMessage
			var out any = &answer
			if asJSON {
				out = &raw
			}
			if err := newConsoleClient(console).do(http.MethodGet, "/api/events?"+q.Encode(), out); err != nil {
				return err
			}
			if asJSON {
				_, err := fmt.Fprintln(cmd.OutOrStdout(), string(raw))
				return err
			}
			return printEvents(cmd.OutOrStdout(), answer.Events)
		},
	}
	cmd.Flags().StringVar(&console, "console", "", "The console's URL (default $"+ConsoleEnv+" or "+defaultConsoleURL+")")
	cmd.Flags().StringVar(&projectID, "project-id", "", "Only this project")
	cmd.Flags().StringVar(&paymentID, "payment-id", "", "Only this payment")
	cmd.Flags().StringVar(&result, "result", "", "Only this result (forwarded, duplicate, app_error, invalid_signature, ...)")
	cmd.Flags().IntVar(&limit, "limit", 50, "At most this many events")
	cmd.Flags().BoolVar(&asJSON, "json", false, "Print the API's JSON answer")
	return cmd
}

func printEvents(w io.Writer, events []event) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tKIND\tRESULT\tAPP\tPROJECT\tPAYMENT\tOPERATION\tEVENT KEY")
	for _, e := range events {
		app := "-"
		switch {
		// A Gate or status request's reason is ecommpay's, not the app's.
		case e.Reason != "" && e.Kind != journal.KindGate && e.Kind != journal.KindStatusRequest:
			app = e.Reason // the app never answered: no status of its own
		case e.AppStatus != 0:
			app = strconv.Itoa(e.AppStatus)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", e.Time.UTC().Format(time.RFC3339), e.Kind, e.Result, app,
			e.ProjectID, e.PaymentID, e.OperationStatus, e.EventKey)
	}
	return tw.Flush()
}

func newReplayCommand() *cobra.Command {
	var console string
	cmd := &cobra.Command{
		Use:   "replay [--console <url>] <event_key>",
		Short: "Sends a stored event to the app again, through a running console",
		Long: `
Re-delivers the stored body of an event to the app, through the callback
route's own handlers, marked X-Ecommpay-Replay: 1. De-duplication does not
block it: a replay is deliberate. Prints the outcome.

Exit status: 0 when the app took it (2xx); 1 otherwise.
`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var ev event
			if err := newConsoleClient(console).do(http.MethodPost, "/api/events/"+url.PathEscape(args[0])+"/replay", &ev); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: the app answered %d\n", ev.Result, ev.AppStatus)
			if ev.Result != "forwarded" {
				return errors.New("the app did not take the replay")
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&console, "console", "", "The console's URL (default $"+ConsoleEnv+" or "+defaultConsoleURL+")")
	return cmd
}
