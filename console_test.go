package ecommpay

import (
	"encoding/json"
	"html"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// consoleFixture is a callback handler and a console over one memory
// journal, with a real app behind Caddy's reverse_proxy.
type consoleFixture struct {
	cb, con *Handler
	next    caddyhttp.Handler
	app     *testApp
}

func newConsoleFixture(t *testing.T) *consoleFixture {
	t.Helper()
	b := newMemoryBackend()
	f := &consoleFixture{app: newTestApp(t)}
	f.cb = callbackHandler(t, func(h *Handler) { h.Store = "memory" })
	f.cb.store, f.cb.journal = b, b
	f.con = &Handler{Mode: modeConsole}
	provision(t, f.con)
	f.con.journal = b
	f.con.provisionConsole()
	f.next = proxyTo(t, f.app.srv.URL)
	return f
}

// get asks the console as a loopback client would, under /ecommpay.
func (f *consoleFixture) get(t *testing.T, path string) *httptest.ResponseRecorder {
	t.Helper()
	return f.do(t, httptest.NewRequest(http.MethodGet, path, nil))
}

func (f *consoleFixture) do(t *testing.T, r *http.Request) *httptest.ResponseRecorder {
	t.Helper()
	r.RemoteAddr = "127.0.0.1:3000"
	withLoopbackHost(r)
	w := httptest.NewRecorder()
	r = caddyhttp.PrepareRequest(r, caddy.NewReplacer(), w, &caddyhttp.Server{})
	if err := f.con.ServeHTTP(w, r, nil); err != nil {
		t.Fatal(err)
	}
	return w
}

// replayToken is the form token of the replay form on key's event page.
func (f *consoleFixture) replayToken(t *testing.T, key string) string {
	t.Helper()
	m := regexp.MustCompile(`name="token" value="([^"]+)"`).FindStringSubmatch(f.get(t, "/events/"+url.PathEscape(key)).Body.String())
	if m == nil {
		t.Fatalf("the event page of %s has no replay form", key)
	}
	return html.UnescapeString(m[1])
}

func TestConsoleAPIAndPages(t *testing.T) {
	f := newConsoleFixture(t)
	evil := `<img src=x onerror=alert(1)>`
	body := strings.Replace(saleSuccess, `"status":"success","method"`, `"status":"success","description":"`+strings.ReplaceAll(evil, `"`, `\"`)+`","method"`, 1)
	signed := sign(t, testSecret, body)
	serve(f.cb, post("/cb", signed), f.next)
	serve(f.cb, post("/cb", signed), f.next) // a duplicate: counted on the first entry
	serve(f.cb, post("/cb", sign(t, "wrong", body)), f.next)

	var events struct{ Events []map[string]any }
	w := f.get(t, "/api/events?payment_id=ORDER-1")
	if err := json.Unmarshal(w.Body.Bytes(), &events); err != nil || w.Code != 200 {
		t.Fatalf("events: %d %v %s", w.Code, err, w.Body)
	}
	if len(events.Events) != 2 {
		t.Fatalf("%d events, want 2: %s", len(events.Events), w.Body)
	}
	for _, field := range []string{"event_key", "time", "project_id", "payment_id", "result", "app_status", "payment_status", "operation_status"} {
		if _, ok := events.Events[0][field]; !ok {
			t.Errorf("event object lacks %s: %v", field, events.Events[0])
		}
	}
	if _, err := time.Parse(time.RFC3339, events.Events[0]["time"].(string)); err != nil {
		t.Errorf("time is not RFC 3339: %v", events.Events[0]["time"])
	}
	var key string
	results := map[string]bool{}
	for _, e := range events.Events {
		results[e["result"].(string)] = true
		if e["result"] == "forwarded" {
			key = e["event_key"].(string)
			if e["duplicates"] != 1.0 || e["last_seen"] == nil {
				t.Errorf("the duplicate is not counted on the first entry: %v", e)
			}
		}
	}
	if !results["forwarded"] || !results["invalid_signature"] {
		t.Fatalf("results %v", results)
	}

	w = f.get(t, "/api/events/"+key)
	var ev struct {
		EventKey string          `json:"event_key"`
		Body     json.RawMessage `json:"body"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &ev); err != nil || ev.EventKey != key || string(ev.Body) != string(signed) {
		t.Fatalf("event: %d %v %s", w.Code, err, w.Body)
	}

	w = f.get(t, "/api/payments?project_id=210")
	if !strings.Contains(w.Body.String(), `"payment_id":"ORDER-1"`) || !strings.Contains(w.Body.String(), `"final":true`) {
		t.Fatalf("payments: %s", w.Body)
	}
	w = f.get(t, "/api/payments/210/ORDER-1")
	if w.Code != 200 || !strings.Contains(w.Body.String(), `"events":[`) {
		t.Fatalf("timeline: %d %s", w.Code, w.Body)
	}
	if w := f.get(t, "/api/payments/210/NOPE"); w.Code != http.StatusNotFound {
		t.Fatalf("unknown payment: %d", w.Code)
	}

	for _, page := range []string{"/", "/payments", "/payments/210/ORDER-1", "/events/" + key, "/events/" + key + "?canonical=1", "/attention"} {
		w := f.get(t, page)
		if w.Code != 200 || !strings.Contains(w.Header().Get("Content-Type"), "text/html") {
			t.Fatalf("%s: %d %s", page, w.Code, w.Body)
		}
		if strings.Contains(w.Body.String(), evil) || strings.Contains(w.Body.String(), testSecret) {
			t.Fatalf("%s shows unescaped input or a secret", page)
		}
	}
	if page := f.get(t, "/events/"+key).Body.String(); !strings.Contains(page, "&lt;img src=x onerror=alert(1)&gt;") {
		t.Fatalf("the event page does not show the description as text")
	}
	if page := f.get(t, "/payments/210/ORDER-1").Body.String(); !strings.Contains(page, "duplicate") || !strings.Contains(page, "forwarded") {
		t.Fatalf("the timeline lacks verdicts: %s", page)
	}
}

// A state change from another origin is refused even with a valid form
// token or a JSON body: the token stops forms, Sec-Fetch-Site and Origin
// stop scripts.
func TestConsoleRefusesCrossOriginReplay(t *testing.T) {
	f := newConsoleFixture(t)
	serve(f.cb, post("/cb", sign(t, testSecret, saleSuccess)), f.next)
	key := f.app.received()[0].header.Get(headerEventKey)
	for name, hdr := range map[string]map[string]string{
		"cross-site fetch":  {"Sec-Fetch-Site": "cross-site"},
		"same-site fetch":   {"Sec-Fetch-Site": "same-site"},
		"foreign origin":    {"Origin": "https://evil.example"},
		"unparsable origin": {"Origin": "%zz"},
	} {
		form := httptest.NewRequest(http.MethodPost, "/events/"+key+"/replay", strings.NewReader("token="+url.QueryEscape(f.replayToken(t, key))))
		form.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		api := httptest.NewRequest(http.MethodPost, "/api/events/"+key+"/replay", strings.NewReader("{}"))
		api.Header.Set("Content-Type", "application/json")
		for _, r := range []*http.Request{form, api} {
			for k, v := range hdr {
				r.Header.Set(k, v)
			}
			if w := f.do(t, r); w.Code != http.StatusForbidden {
				t.Errorf("%s %s: %d, want 403", name, r.URL.Path, w.Code)
			}
		}
	}
	// A token is bound to its event.
	serve(f.cb, post("/cb", sign(t, testSecret, strings.Replace(saleSuccess, `"ORDER-1"`, `"ORDER-2"`, 1))), f.next)
	otherKey := f.app.received()[1].header.Get(headerEventKey)
	other := httptest.NewRequest(http.MethodPost, "/events/"+key+"/replay", strings.NewReader("token="+url.QueryEscape(f.replayToken(t, otherKey))))
	other.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if w := f.do(t, other); w.Code != http.StatusForbidden {
		t.Errorf("another event's token: %d, want 403", w.Code)
	}
	if n := len(f.app.received()); n != 2 {
		t.Fatalf("a refused replay reached the app: %d deliveries of two callbacks", n)
	}
}
