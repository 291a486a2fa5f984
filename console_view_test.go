package ecommpay

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/journal"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/reconcile"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/store/storetest"
)

// What the console shows: amounts in major units, a callback-first
// payment's amount and method, the summary line, CSV downloads, and the
// fixes an operator asked for.

// A payment first seen through its callback takes amount and method from
// payment.sum and payment.method; pages show 10.00 CNY for 1000 minor
// units, with the raw value on hover, while the API keeps raw values.
func TestConsoleAmountsInMajorUnits(t *testing.T) {
	f := newConsoleFixture(t)
	serve(f.cb, post("/cb", sign(t, testSecret, saleSuccess)), f.next) // 1000 CNY by wechat, no signing request
	kwd := strings.NewReplacer(`"ORDER-1"`, `"ORDER-KWD"`, `"amount":1000,"currency":"CNY"`, `"amount":12345,"currency":"KWD"`).Replace(saleSuccess)
	serve(f.cb, post("/cb", sign(t, testSecret, kwd)), f.next)

	var api struct{ Payments []journal.PaymentView }
	if err := json.Unmarshal(f.get(t, "/api/payments?payment_id=ORDER-1").Body.Bytes(), &api); err != nil || len(api.Payments) != 1 {
		t.Fatalf("payments API: %v %+v", err, api)
	}
	if p := api.Payments[0]; p.Amount != "1000" || p.Currency != "CNY" || p.Method != "wechat" {
		t.Fatalf("a callback-first payment = %+v, want 1000 CNY by wechat (raw minor units)", p)
	}
	var evs struct{ Events []map[string]any }
	if err := json.Unmarshal(f.get(t, "/api/events?payment_id=ORDER-1").Body.Bytes(), &evs); err != nil || len(evs.Events) != 1 {
		t.Fatalf("events API: %v %+v", err, evs)
	}
	if e := evs.Events[0]; e["amount"] != "1000" || e["currency"] != "CNY" || e["method"] != "wechat" {
		t.Fatalf("the callback's event = %v, want amount 1000, CNY, wechat", e)
	}

	list := f.get(t, "/payments").Body.String()
	for _, want := range []string{
		`<span class="amount" title="1000 CNY in minor units">10.00 CNY</span>`,
		`<span class="amount" title="12345 KWD in minor units">12.345 KWD</span>`,
		`<td>wechat</td>`,
	} {
		if !strings.Contains(list, want) {
			t.Errorf("the payments list lacks %s", want)
		}
	}
	if strings.Contains(list, ">1000 CNY<") {
		t.Errorf("the payments list shows minor units as major ones")
	}
	if tl := f.get(t, "/payments/210/ORDER-1").Body.String(); !strings.Contains(tl, `title="1000 CNY in minor units">10.00 CNY<`) {
		t.Errorf("the timeline does not show 10.00 CNY with the raw value on hover")
	}
}

func readCSV(t *testing.T, f *consoleFixture, path string) [][]string {
	t.Helper()
	w := f.get(t, path)
	if w.Code != http.StatusOK || w.Header().Get("Content-Type") != "text/csv; charset=utf-8" ||
		!strings.HasPrefix(w.Header().Get("Content-Disposition"), "attachment;") {
		t.Fatalf("%s: %d %v %s", path, w.Code, w.Header(), w.Body)
	}
	rows, err := csv.NewReader(w.Body).ReadAll()
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return rows
}

// column is a CSV's column by header name, one map per row.
func csvRecords(rows [][]string) []map[string]string {
	var out []map[string]string
	for _, r := range rows[1:] {
		m := map[string]string{}
		for i, name := range rows[0] {
			m[name] = r[i]
		}
		out = append(out, m)
	}
	return out
}

func TestConsoleCSV(t *testing.T) {
	f := newConsoleFixture(t)
	serve(f.cb, post("/cb", sign(t, testSecret, saleSuccess)), f.next)
	// Text a spreadsheet would run as a formula, from a verified callback.
	for _, id := range []string{`=HYPERLINK("https://evil.example","x")`, "+1", "-2+3", "@SUM(A1)", "\t=1"} {
		quoted, _ := json.Marshal(id)
		body := strings.Replace(saleSuccess, `"ORDER-1"`, string(quoted), 1)
		body = strings.Replace(body, `"method":"wechat"`, `"method":"=cmd|' /C calc'!A0"`, 1)
		serve(f.cb, post("/cb", sign(t, testSecret, body)), f.next)
	}
	storetest.Record(t, f.con.journal, journal.Event{Kind: journal.KindPaymentPage, ProjectID: "211", PaymentID: "OTHER", Verified: true,
		Result: "signed", Amount: "700", Currency: "JPY"})

	pays := csvRecords(readCSV(t, f, "/api/payments.csv?project_id=210"))
	if len(pays) != 6 {
		t.Fatalf("%d payments of project 210, want 6: %v", len(pays), pays)
	}
	for _, p := range pays {
		for name, v := range p {
			if v != "" && strings.ContainsRune("=+-@\t\r", rune(v[0])) {
				t.Errorf("cell %s = %q starts as a formula", name, v)
			}
		}
		if p["project_id"] != "210" {
			t.Errorf("project filter not applied: %v", p)
		}
	}
	i := slices.IndexFunc(pays, func(p map[string]string) bool { return p["payment_id"] == "ORDER-1" })
	if i < 0 {
		t.Fatalf("ORDER-1 missing: %v", pays)
	}
	if p := pays[i]; p["amount"] != "1000" || p["currency"] != "CNY" || p["amount_major"] != "10.00" ||
		p["method"] != "wechat" || p["status"] != "success" || p["final"] != "true" {
		t.Fatalf("ORDER-1 row: %v", p)
	}
	if !slices.ContainsFunc(pays, func(p map[string]string) bool { return p["payment_id"] == `'=HYPERLINK("https://evil.example","x")` }) {
		t.Fatalf("the formula was not kept as text: %v", pays)
	}

	evs := csvRecords(readCSV(t, f, "/api/events.csv?payment_id=ORDER-1"))
	if len(evs) != 1 || evs[0]["result"] != "forwarded" || evs[0]["app_status"] != "200" || evs[0]["amount_major"] != "10.00" ||
		evs[0]["event_key"] == "" || evs[0]["kind"] != "callback" {
		t.Fatalf("events of ORDER-1: %v", evs)
	}
	if _, err := time.Parse(time.RFC3339Nano, evs[0]["time"]); err != nil {
		t.Fatalf("time %q: %v", evs[0]["time"], err)
	}
	if all := csvRecords(readCSV(t, f, "/api/events.csv")); len(all) != 7 {
		t.Fatalf("%d events in all, want 7", len(all))
	}
	if some := csvRecords(readCSV(t, f, "/api/events.csv?limit=2")); len(some) != 2 {
		t.Fatalf("limit=2 gave %d events", len(some))
	}
	if w := f.get(t, "/api/payments.csv?limit=0"); w.Code != http.StatusBadRequest {
		t.Fatalf("a bad limit: %d", w.Code)
	}
}

// A callback the app refused is listed under Attention until a retry
// reaches the app; then it is not.
func TestConsoleAttentionForgetsDeliveredRetries(t *testing.T) {
	f := newConsoleFixture(t)
	body := sign(t, testSecret, saleSuccess)
	f.app.status.Store(http.StatusInternalServerError)
	serve(f.cb, post("/cb", body), f.next)
	serve(f.cb, post("/cb", body), f.next)
	page := f.get(t, "/attention").Body.String()
	if n := strings.Count(page, `/payments/210/ORDER-1`) + strings.Count(page, "ORDER-1</a>"); n == 0 {
		t.Fatalf("a refused callback is not under Attention")
	}
	if strings.Count(page, "ORDER-1</a> app 500") != 1 {
		t.Fatalf("the refused event is not listed once, with the app's answer: %s", page)
	}
	// Another payment's refused callback, never delivered, stays.
	serve(f.cb, post("/cb", sign(t, testSecret, strings.Replace(saleSuccess, `"ORDER-1"`, `"ORDER-2"`, 1))), f.next)
	f.app.status.Store(http.StatusOK)
	serve(f.cb, post("/cb", body), f.next)
	page = f.get(t, "/attention").Body.String()
	if strings.Contains(page, "ORDER-1") {
		t.Fatalf("a delivered retry is still under Attention: %s", page)
	}
	if !strings.Contains(page, "ORDER-2</a> app 500") {
		t.Fatalf("an undelivered refused callback left Attention: %s", page)
	}
}

// When the app never answered, pages say so rather than "app 502", and
// the entry's reason says it to scripts.
func TestConsoleSaysUnreachable(t *testing.T) {
	f := newConsoleFixture(t)
	f.next = proxyTo(t, closedPort(t))
	if w := serve(f.cb, post("/cb", sign(t, testSecret, saleSuccess)), f.next); w.Code != http.StatusBadGateway {
		t.Fatalf("callback to a closed app: %d", w.Code)
	}
	var evs struct{ Events []journal.Event }
	if err := json.Unmarshal(f.get(t, "/api/events?payment_id=ORDER-1").Body.Bytes(), &evs); err != nil || len(evs.Events) != 1 {
		t.Fatalf("events: %v %+v", err, evs)
	}
	if e := evs.Events[0]; e.Result != "app_error" || e.Reason != "unreachable" || e.AppStatus != http.StatusBadGateway {
		t.Fatalf("entry = %+v, want app_error, reason unreachable (app_status 502 as before)", e)
	}
	key := evs.Events[0].EventKey
	for _, page := range []string{"/attention", "/payments/210/ORDER-1", "/events/" + key} {
		body := f.get(t, page).Body.String()
		if !strings.Contains(body, "app unreachable") || strings.Contains(body, "app 502") {
			t.Errorf("%s does not say the app was unreachable", page)
		}
	}
}

// Status requests keep their reason; Gate entries keep ecommpay's answer
// in ecommpay_status, and pages name ecommpay for both.
func TestConsoleEcommpayAnswers(t *testing.T) {
	f := newConsoleFixture(t)
	app := newTestApp(t)
	g := gateHandler(t, nil)
	g.journal = f.con.journal
	if w := serve(g, localPost("/v2/payment/wallet/wechat/sale", []byte(gateSale)), proxyTo(t, app.srv.URL)); w.Code != http.StatusOK {
		t.Fatalf("gate: %d", w.Code)
	}
	storetest.Record(t, f.con.journal, journal.Event{Kind: journal.KindStatusRequest, ProjectID: "210", PaymentID: "ORDER-G1", Verified: true,
		Result: reconcile.ResultError, AppStatus: 400, EcommpayStatus: 400, Reason: "HTTP 400: project is blocked"})
	var tl journal.Timeline
	if err := json.Unmarshal(f.get(t, "/api/payments/210/ORDER-G1").Body.Bytes(), &tl); err != nil || len(tl.Events) != 2 {
		t.Fatalf("timeline: %v %+v", err, tl)
	}
	if e := tl.Events[0]; e.Kind != journal.KindGate || e.EcommpayStatus != http.StatusOK || e.AppStatus != 0 {
		t.Fatalf("gate entry = %+v, want ecommpay_status 200 and app_status 0", e)
	}
	page := f.get(t, "/payments/210/ORDER-G1").Body.String()
	for _, want := range []string{"ecommpay 200", "ecommpay 400: HTTP 400: project is blocked"} {
		if !strings.Contains(page, want) {
			t.Errorf("the timeline lacks %q", want)
		}
	}
	if strings.Contains(page, "app 200") {
		t.Errorf("the timeline calls ecommpay's answer the app's")
	}
}

// The event page lists attempts oldest first, as the timeline does, and
// every time on a page says its zone.
func TestConsoleAttemptsOrderAndZone(t *testing.T) {
	f := newConsoleFixture(t)
	body := sign(t, testSecret, saleSuccess)
	f.app.status.Store(http.StatusInternalServerError)
	serve(f.cb, post("/cb", body), f.next)
	f.app.status.Store(http.StatusOK)
	serve(f.cb, post("/cb", body), f.next)
	serve(f.cb, post("/cb", body), f.next) // a duplicate: counted on the first entry, not entered
	key := f.app.received()[0].header.Get(headerEventKey)
	order := func(page, section string) []string {
		t.Helper()
		s := f.get(t, page).Body.String()
		i := strings.Index(s, section)
		if i < 0 {
			t.Fatalf("%s lacks %s", page, section)
		}
		return regexp.MustCompile(`v-(app_error|forwarded|duplicate)`).FindAllString(s[i:], -1)
	}
	want := []string{"v-app_error", "v-forwarded"}
	if got := order("/events/"+key, "<h2>Attempts</h2>"); !slices.Equal(got, want) {
		t.Errorf("event page attempts %q, want %q", got, want)
	}
	if got := order("/payments/210/ORDER-1", "<h2>Timeline</h2>"); !slices.Equal(got, want) {
		t.Errorf("timeline %q, want %q", got, want)
	}
	stamp := regexp.MustCompile(`\d{4}-\d\d-\d\d \d\d:\d\d:\d\d( UTC)?`)
	for _, page := range []string{"/events/" + key, "/payments/210/ORDER-1", "/payments", "/attention"} {
		for _, m := range stamp.FindAllStringSubmatch(f.get(t, page).Body.String(), -1) {
			if m[1] == "" {
				t.Errorf("%s shows %q without its zone", page, m[0])
			}
		}
	}
}

// Every event object carries app_latency_ms, as the README says.
func TestConsoleEventsCarryAppLatency(t *testing.T) {
	f := newConsoleFixture(t)
	serve(f.cb, post("/cb", sign(t, testSecret, saleSuccess)), f.next)
	storetest.Record(t, f.con.journal, journal.Event{Kind: journal.KindPaymentPage, ProjectID: "210", PaymentID: "PP", Verified: true, Result: "signed"})
	var evs struct{ Events []map[string]any }
	if err := json.Unmarshal(f.get(t, "/api/events").Body.Bytes(), &evs); err != nil || len(evs.Events) != 2 {
		t.Fatalf("events: %v %+v", err, evs)
	}
	for _, e := range evs.Events {
		if _, ok := e["app_latency_ms"]; !ok {
			t.Errorf("%s event lacks app_latency_ms: %v", e["kind"], e)
		}
	}
}

// A replay answers the entry it made, with its id and time, as the
// journal lists it.
func TestReplayAnswersItsEntry(t *testing.T) {
	app := newTestApp(t)
	h := callbackHandler(t, func(h *Handler) { h.Store = "memory" })
	next := proxyTo(t, app.srv.URL)
	body := sign(t, testSecret, saleSuccess)
	serve(h, post("/cb", body), next)
	d := &dispatched{target: h, kind: journal.KindReplay, body: body}
	serve(h, post("/cb", nil).WithContext(context.WithValue(context.Background(), dispatchKey{}, d)), next)
	if d.ev.ID == "" || d.ev.Time.IsZero() {
		t.Fatalf("the replay's outcome has id %q and time %v", d.ev.ID, d.ev.Time)
	}
	evs, err := h.journal.Events(context.Background(), journal.EventFilter{Kind: journal.KindReplay})
	if err != nil || len(evs) != 1 || evs[0].ID != d.ev.ID || !evs[0].Time.Equal(d.ev.Time) {
		t.Fatalf("journal has %+v (%v); the replay answered id %q, time %v", evs, err, d.ev.ID, d.ev.Time)
	}
}

// Refused callbacks without a payment (a card token's) are each checked
// for a delivered retry, not only the first of their project.
func TestConsoleAttentionForgetsDeliveredTokenRetries(t *testing.T) {
	f := newConsoleFixture(t)
	tokenCallback := func(op string) []byte {
		return sign(t, testSecret, `{"project_id":210,"customer":{"id":"C-`+op+`"},"token":"tok-`+op+`","operation":{"id":`+op+`,"type":"tokenize","status":"success"}}`)
	}
	first, second := tokenCallback("9227000003001"), tokenCallback("9227000003002")
	f.app.status.Store(http.StatusInternalServerError)
	serve(f.cb, post("/cb", first), f.next)
	serve(f.cb, post("/cb", second), f.next)
	if page := f.get(t, "/attention").Body.String(); strings.Count(page, "app 500") != 2 {
		t.Fatalf("two refused token callbacks are not both under Attention: %s", page)
	}
	f.app.status.Store(http.StatusOK)
	serve(f.cb, post("/cb", first), f.next)
	serve(f.cb, post("/cb", second), f.next)
	if page := f.get(t, "/attention").Body.String(); strings.Contains(page, "app 500") {
		t.Fatalf("a delivered token callback is still under Attention: %s", page)
	}
}
