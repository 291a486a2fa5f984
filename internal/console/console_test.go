package console

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/journal"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/store"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/store/localstore"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/store/memstore"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/store/storetest"
)

// The console over a memory journal. Its replay function stands in for
// the module's delivery to the app (the root's tests and the end-to-end
// ones replay through a real callback handler): it enters a replay entry
// as the callback handler would and answers it.
type fixture struct {
	j       *memstore.Backend
	con     *Console
	mu      sync.Mutex
	replays []string // bodies replayed
}

func newFixture(t *testing.T, edit func(*Config)) *fixture {
	t.Helper()
	f := &fixture{j: memstore.New(0, journal.Options{}, store.Hooks{})}
	t.Cleanup(func() { _ = f.j.Close() })
	cfg := Config{Journal: f.j, Replay: f.replay}
	if edit != nil {
		edit(&cfg)
	}
	f.con = New(cfg)
	return f
}

func (f *fixture) replay(ctx context.Context, projectID string, body []byte) (journal.Event, error) {
	if projectID != "210" {
		return journal.Event{}, ErrNoCallbackHandler
	}
	f.mu.Lock()
	f.replays = append(f.replays, string(body))
	f.mu.Unlock()
	e := journal.Event{Kind: journal.KindReplay, ProjectID: projectID, PaymentID: "ORDER-1", EventKey: "210-e1",
		Verified: true, Result: "forwarded", AppStatus: 200}
	return e, f.j.Record(ctx, e)
}

func (f *fixture) do(r *http.Request) *httptest.ResponseRecorder {
	w := httptest.NewRecorder()
	f.con.ServeHTTP(w, r)
	return w
}

func (f *fixture) get(t *testing.T, path string) *httptest.ResponseRecorder {
	t.Helper()
	return f.do(httptest.NewRequest(http.MethodGet, path, nil))
}

// recordCallback enters a forwarded callback of ORDER-1 with its body,
// under event key 210-e1.
func (f *fixture) recordCallback(t *testing.T) {
	t.Helper()
	storetest.Record(t, f.j, journal.Event{Kind: journal.KindCallback, ProjectID: "210", PaymentID: "ORDER-1",
		EventKey: "210-e1", Verified: true, Result: "forwarded", AppStatus: 200, PaymentStatus: "success",
		Body: []byte(`{"project_id":210,"payment":{"id":"ORDER-1","status":"success"},"display_data":[{"type":"qr_data","data":"weixin://wxpay/bizpayurl?pr=x"}],"redirect_data":{"url":"https://pay.example/3ds"}}`)})
}

func replayForm(key, token string) *http.Request {
	r := httptest.NewRequest(http.MethodPost, "/events/"+key+"/replay", strings.NewReader("token="+url.QueryEscape(token)))
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	return r
}

// Every answer carries the console's security headers.
func TestConsoleSecurityHeaders(t *testing.T) {
	f := newFixture(t, nil)
	for _, path := range []string{"/payments", "/api/events", "/assets/console.css", "/nope"} {
		h := f.get(t, path).Header()
		if h.Get("X-Frame-Options") != "DENY" || h.Get("Cache-Control") != "no-store" ||
			!strings.Contains(h.Get("Content-Security-Policy"), "frame-ancestors 'none'") {
			t.Errorf("%s: headers %v", path, h)
		}
	}
}

// Links carry the prefix the module says the console is mounted under.
func TestConsoleLinksUnderPrefix(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.Prefix = func(*http.Request) string { return "/ecommpay" } })
	f.recordCallback(t)
	page := f.get(t, "/payments").Body.String()
	if !strings.Contains(page, `href="/ecommpay/payments/210/ORDER-1"`) || !strings.Contains(page, `/ecommpay/assets/console.css`) {
		t.Fatalf("links without the prefix:\n%s", page)
	}
	w := f.do(replayForm("210-e1", formToken("replay 210-e1", time.Now())))
	if loc := w.Header().Get("Location"); w.Code != http.StatusSeeOther || !strings.HasPrefix(loc, "/ecommpay/events/210-e1?") {
		t.Fatalf("replay redirect: %d %s", w.Code, loc)
	}
}

// The event page renders display_data's qr_data as an inline PNG and
// links the redirect.
func TestConsoleEventShowsDisplayData(t *testing.T) {
	f := newFixture(t, nil)
	f.recordCallback(t)
	page := f.get(t, "/events/210-e1").Body.String()
	if !strings.Contains(page, `src="data:image/png;base64,`) || !strings.Contains(page, "https://pay.example/3ds") {
		t.Fatalf("the event page lacks the QR image or the redirect:\n%s", page)
	}
}

// A replay answers with the entry the delivery made; one the module
// cannot deliver, or without a body, is a conflict and reaches nothing.
func TestConsoleReplayAPI(t *testing.T) {
	f := newFixture(t, nil)
	f.recordCallback(t)
	storetest.Record(t, f.j, journal.Event{Kind: journal.KindCallback, ProjectID: "211", PaymentID: "X", EventKey: "211-e",
		Verified: true, Result: "forwarded", Body: []byte(`{"project_id":211}`)})
	storetest.Record(t, f.j, journal.Event{Kind: journal.KindCallback, ProjectID: "210", PaymentID: "Y", EventKey: "210-nobody",
		Verified: true, Result: "forwarded"})
	post := func(key string) *httptest.ResponseRecorder {
		r := httptest.NewRequest(http.MethodPost, "/api/events/"+key+"/replay", strings.NewReader("{}"))
		r.Header.Set("Content-Type", "application/json")
		return f.do(r)
	}
	if w := post("210-e1"); w.Code != http.StatusOK || !strings.Contains(w.Body.String(), `"kind":"replay"`) {
		t.Fatalf("replay: %d %s", w.Code, w.Body)
	}
	for key, want := range map[string]int{"211-e": http.StatusConflict, "210-nobody": http.StatusConflict, "210-none": http.StatusNotFound} {
		if w := post(key); w.Code != want {
			t.Errorf("%s: %d %s, want %d", key, w.Code, w.Body, want)
		}
	}
	r := httptest.NewRequest(http.MethodPost, "/api/events/210-e1/replay", strings.NewReader("{}"))
	r.Header.Set("Content-Type", "text/plain")
	if w := f.do(r); w.Code != http.StatusForbidden {
		t.Errorf("a replay without a JSON Content-Type: %d", w.Code)
	}
	if len(f.replays) != 1 {
		t.Fatalf("%d replays reached the app, want 1", len(f.replays))
	}
}

// A replay form token names its event and its issue time, and lapses
// after an hour.
func TestReplayTokenExpires(t *testing.T) {
	now := time.Now()
	tok := formToken("replay 210-a", now.Add(-59*time.Minute))
	if !validFormToken(tok, "replay 210-a", now) {
		t.Error("a 59-minute-old token was refused")
	}
	if validFormToken(formToken("replay 210-a", now.Add(-61*time.Minute)), "replay 210-a", now) {
		t.Error("a 61-minute-old token was accepted")
	}
	if validFormToken(tok, "replay 210-b", now) {
		t.Error("a token worked for another event")
	}
	_, mac, _ := strings.Cut(tok, ".")
	if validFormToken(strconv.FormatInt(now.Unix(), 10)+"."+mac, "replay 210-a", now) {
		t.Error("a token with a changed time was accepted")
	}
	for _, bad := range []string{"", ".", "abc", "1." + mac, tok + "x"} {
		if validFormToken(bad, "replay 210-a", now) {
			t.Errorf("token %q accepted", bad)
		}
	}

	// Through the console: an expired token is refused with 403.
	f := newFixture(t, nil)
	f.recordCallback(t)
	if w := f.do(replayForm("210-e1", formToken("replay 210-e1", now.Add(-2*time.Hour)))); w.Code != http.StatusForbidden {
		t.Errorf("an expired token: %d, want 403", w.Code)
	}
	if len(f.replays) != 0 {
		t.Fatalf("a refused replay reached the app")
	}
	w := f.do(replayForm("210-e1", formToken("replay 210-e1", now)))
	_, code, _ := strings.Cut(w.Header().Get("Location"), "?replayed=")
	if w.Code != http.StatusSeeOther || code != "forwarded" || len(f.replays) != 1 {
		t.Errorf("a fresh token: %d %s, %d replays", w.Code, w.Header().Get("Location"), len(f.replays))
	}
}

// The event page's notice box shows only the console's own messages,
// picked by a code: text in the query is never shown.
func TestReplayNoticeIsChosenNotEchoed(t *testing.T) {
	f := newFixture(t, nil)
	f.recordCallback(t)
	spoof := "Your account is locked, call +1 555 0100"
	page := f.get(t, "/events/210-e1?replayed="+url.QueryEscape(spoof)).Body.String()
	if strings.Contains(page, "555 0100") || strings.Contains(page, `class="notice"`) {
		t.Errorf("the page shows text from its query")
	}
	page = f.get(t, "/events/210-e1?replayed=forwarded").Body.String()
	if !strings.Contains(page, `<p class="notice">`+replayNotices["forwarded"]) {
		t.Errorf("the page lacks the replay notice")
	}
}

// A store that lost its file or runs in memory says so on every page.
func TestConsoleShowsStoreProblem(t *testing.T) {
	f := newFixture(t, nil)
	if page := f.get(t, "/payments").Body.String(); strings.Contains(page, "store is unhealthy") {
		t.Fatal("a banner with a healthy store")
	}
	notDir := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(notDir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	b, err := localstore.Open(filepath.Join(notDir, "ecommpay.db"), 0, journal.Options{}, store.Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	f = newFixture(t, func(c *Config) { c.Journal, c.Health = b, b.Health })
	for _, page := range []string{"/payments", "/attention"} {
		if body := f.get(t, page).Body.String(); !strings.Contains(body, "The store is unhealthy") ||
			!strings.Contains(body, "runs in memory") {
			t.Fatalf("%s shows no banner:\n%s", page, body)
		}
	}
}

func TestConsoleSummaryLine(t *testing.T) {
	f := newFixture(t, nil)
	at := time.Now().Add(-time.Minute)
	for i, p := range []struct{ id, status, amount, currency string }{
		{"S1", "success", "1000", "EUR"},
		{"S2", "success", "50", "eur"},
		{"S3", "decline", "500", "JPY"},
		{"S4", "success", "1500", "KWD"},
		{"S5", "", "", ""},
		{"S6", "success", "12.5", "EUR"},
	} {
		e := journal.Event{Kind: journal.KindCallback, Time: at.Add(time.Duration(i) * time.Second), ProjectID: "210", PaymentID: p.id,
			Verified: true, Result: "forwarded", PaymentStatus: p.status, Amount: p.amount, Currency: p.currency}
		if p.status == "" {
			e.Kind, e.Result = journal.KindPaymentPage, "signed"
		}
		storetest.Record(t, f.j, e)
	}
	list, err := f.j.Payments(context.Background(), journal.PaymentFilter{})
	if err != nil {
		t.Fatal(err)
	}
	s := summarize(list)
	want := paymentSummary{Payments: 6, Unsummed: 1,
		Statuses: []countOf{{"success", 4}, {"", 1}, {"decline", 1}},
		Sums:     []sumOf{{"EUR", "1050", "10.50", 2}, {"JPY", "500", "500", 1}, {"KWD", "1500", "1.500", 1}}}
	if !slices.Equal(s.Statuses, want.Statuses) || !slices.Equal(s.Sums, want.Sums) || s.Payments != 6 || s.Unsummed != 1 {
		t.Fatalf("summary = %+v\nwant %+v", s, want)
	}
	page := f.get(t, "/payments").Body.String()
	line := regexp.MustCompile(`(?s)<p class="summary" data-summary>.*?</p>`).FindString(page)
	text := strings.Join(strings.Fields(regexp.MustCompile(`<[^>]*>`).ReplaceAllString(line, "")), " ")
	if want := "6 payments: 4 success, 1 without a status, 1 decline · 10.50 EUR, 500 JPY, 1.500 KWD " +
		"(1 with an amount that is not a whole number of minor units, not summed)"; text != want {
		t.Fatalf("summary line %q\nwant %q", text, want)
	}
	if !strings.Contains(line, `title="1050 EUR in minor units, over 2 payments"`) {
		t.Fatalf("the sum lacks its raw value on hover: %s", line)
	}
	// Over the filtered list only.
	line = regexp.MustCompile(`(?s)<p class="summary" data-summary>.*?</p>`).FindString(f.get(t, "/payments?status=decline").Body.String())
	if !strings.Contains(line, "1 payment</strong>") || strings.Contains(line, "EUR") || !strings.Contains(line, "500 JPY") {
		t.Fatalf("filtered summary line: %s", line)
	}
	// A list cut at its limit says so.
	if page := f.get(t, "/payments?limit=2").Body.String(); !strings.Contains(page, "the first 2; set limit=") {
		t.Fatalf("a list at its limit does not say so")
	}
}
