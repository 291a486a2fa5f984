package ecommpay

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/cli"
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

	out, _, err := runTree(t, "", "ecommpay", "events", "--console", srv.URL, "--payment-id", "ORDER-1")
	if err != nil || !strings.Contains(out, "forwarded") || !strings.Contains(out, "ORDER-1") || !strings.Contains(out, "210-") {
		t.Fatalf("events printed (%v):\n%s", err, out)
	}

	t.Setenv(cli.ConsoleEnv, srv.URL)
	out, _, err = runTree(t, "", "ecommpay", "events", "--json", "--result", "forwarded")
	if err != nil || !strings.HasPrefix(out, `{"events":[{`) {
		t.Fatalf("events --json: %v\n%s", err, out)
	}

	if _, _, err = runTree(t, "", "ecommpay", "replay", "210-00000000000000000000000000000000"); err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("replay of an unknown event: %v", err)
	}
	if _, _, err = runTree(t, "", "ecommpay", "events", "--console", "http://127.0.0.1:1/ecommpay"); err == nil {
		t.Fatal("an unreachable console was not an error")
	}
}
