package ecommpay

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// The events and replay commands against a real console.
func TestEventsAndReplayCommands(t *testing.T) {
	f := newConsoleFixture(t)
	serve(f.cb, post("/cb", sign(t, testSecret, saleSuccess)), f.next)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r = caddyhttp.PrepareRequest(r, caddy.NewReplacer(), w, &caddyhttp.Server{})
		_ = f.con.ServeHTTP(w, r, nil)
	}))
	t.Cleanup(srv.Close)

	var out bytes.Buffer
	events := newEventsCommand()
	events.SetArgs([]string{"--console", srv.URL, "--payment-id", "ORDER-1"})
	events.SetOut(&out)
	if err := events.Execute(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "forwarded") || !strings.Contains(out.String(), "ORDER-1") || !strings.Contains(out.String(), "210-") {
		t.Fatalf("events printed:\n%s", out.String())
	}

	out.Reset()
	t.Setenv(ConsoleEnv, srv.URL)
	asJSON := newEventsCommand()
	asJSON.SetArgs([]string{"--json", "--result", "forwarded"})
	asJSON.SetOut(&out)
	if err := asJSON.Execute(); err != nil || !strings.HasPrefix(out.String(), `{"events":[{`) {
		t.Fatalf("events --json: %v\n%s", err, out.String())
	}

	replay := newReplayCommand()
	replay.SetArgs([]string{"210-00000000000000000000000000000000"})
	replay.SetOut(&out)
	replay.SilenceUsage, replay.SilenceErrors = true, true
	if err := replay.Execute(); err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("replay of an unknown event: %v", err)
	}
	unreachable := newEventsCommand()
	unreachable.SetArgs([]string{"--console", "http://127.0.0.1:1/ecommpay"})
	unreachable.SilenceUsage, unreachable.SilenceErrors = true, true
	if err := unreachable.Execute(); err == nil {
		t.Fatal("an unreachable console was not an error")
	}
}

// The APP column says when the app never answered, rather than the
// proxy's 502.
func TestPrintEventsSaysUnreachable(t *testing.T) {
	var out bytes.Buffer
	err := printEvents(&out, []journalEvent{
		{Kind: kindCallback, Result: "app_error", AppStatus: 502, Reason: reasonUnreachable, PaymentID: "P1"},
		{Kind: kindCallback, Result: "app_error", AppStatus: 502, PaymentID: "P2"},
	})
	lines := strings.Split(out.String(), "\n")
	if err != nil || len(lines) < 3 || !strings.Contains(lines[1], "unreachable") || strings.Contains(lines[1], "502") ||
		!strings.Contains(lines[2], "502") {
		t.Fatalf("printed (%v):\n%s", err, out.String())
	}
}
