package cli

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/journal"
)

// The APP column says when the app never answered, rather than the
// proxy's 502.
func TestPrintEventsSaysUnreachable(t *testing.T) {
	var out bytes.Buffer
	err := printEvents(&out, []event{
		{Kind: "callback", Result: "app_error", AppStatus: 502, Reason: "unreachable", PaymentID: "P1"},
		{Kind: "callback", Result: "app_error", AppStatus: 502, PaymentID: "P2"},
		{Kind: journal.KindGate, Result: "ecommpay_error", Reason: "timeout", PaymentID: "P3"},
	})
	lines := strings.Split(out.String(), "\n")
	if err != nil || len(lines) < 4 || !strings.Contains(lines[1], "unreachable") || strings.Contains(lines[1], "502") ||
		!strings.Contains(lines[2], "502") || strings.Contains(lines[3], "timeout") {
		t.Fatalf("printed (%v):\n%s", err, out.String())
	}
}

// events and replay read the console API's answers by their public field
// names, and say what the console refused. The real console answers them
// in the root package's TestEventsAndReplayCommands.
func TestEventsAndReplayReadTheAPI(t *testing.T) {
	var queries []string
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodGet && r.URL.Path == "/ecommpay/api/events":
			queries = append(queries, r.URL.RawQuery)
			io.WriteString(w, `{"events":[{"id":"x","time":"2026-12-01T10:00:00.5+03:00","kind":"callback","project_id":"210",`+
				`"payment_id":"ORDER-1","operation_status":"success","event_key":"210-ab","result":"forwarded","app_status":200,"verified":true}]}`)
		case r.Method == http.MethodPost && r.URL.Path == "/ecommpay/api/events/210-ab/replay" && r.Header.Get("Content-Type") == "application/json":
			io.WriteString(w, `{"kind":"replay","result":"app_error","app_status":500}`)
		default:
			w.WriteHeader(http.StatusNotFound)
			io.WriteString(w, `{"error":"no such event"}`)
		}
	}))
	t.Cleanup(api.Close)
	t.Setenv(ConsoleEnv, api.URL+"/ecommpay")

	out, _, err := runTree(t, Options{}, "", "ecommpay", "events", "--payment-id", "ORDER-1", "--limit", "5")
	lines := strings.Split(out, "\n")
	if err != nil || len(lines) != 3 || !strings.HasPrefix(lines[0], "TIME ") ||
		strings.Join(strings.Fields(lines[1]), " ") != "2026-12-01T07:00:00Z callback forwarded 200 210 ORDER-1 success 210-ab" {
		t.Fatalf("events: %v\n%s", err, out)
	}
	if len(queries) != 1 || queries[0] != "limit=5&payment_id=ORDER-1" {
		t.Fatalf("queries %q", queries)
	}
	out, _, err = runTree(t, Options{}, "", "ecommpay", "events", "--json")
	if err != nil || !strings.HasPrefix(out, `{"events":[{"id":"x",`) || !strings.HasSuffix(out, "}]}\n") {
		t.Fatalf("events --json: %v\n%s", err, out)
	}

	out, _, err = runTree(t, Options{}, "", "ecommpay", "replay", "210-ab")
	if err == nil || out != "app_error: the app answered 500\n" {
		t.Fatalf("replay the app refused: %q, %v", out, err)
	}
	_, _, err = runTree(t, Options{}, "", "ecommpay", "replay", "210-cd")
	if err == nil || err.Error() != "the console answered 404: no such event" {
		t.Fatalf("replay of an unknown event: %v", err)
	}
	_, _, err = runTree(t, Options{}, "", "ecommpay", "events", "--console", "http://127.0.0.1:1/ecommpay")
	if err == nil || !strings.Contains(err.Error(), "the console at http://127.0.0.1:1/ecommpay") {
		t.Fatalf("an unreachable console: %v", err)
	}
}
