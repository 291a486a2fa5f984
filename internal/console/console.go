// Package console owns the operator console: its pages (templates and
// assets embedded from pages/), the JSON API and CSV downloads over the
// payment journal, the attention list, the display of a body's
// display_data, and replay's safeguards (form tokens, the same-origin
// check, the answers to a refused or failed replay). It is an
// http.Handler built from a Config: the journal it reads, and a replay
// function through which the module delivers a stored body to the app
// again. It knows nothing of Caddy: where it is mounted and who may reach
// it are the module's to decide.
package console

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"embed"
	"encoding/base64"
	"encoding/json"
	"errors"
	"html/template"
	"io/fs"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/canon"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/journal"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/origin"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/qr"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/respond"
	"go.uber.org/zap"
)

//go:embed pages
var files embed.FS

var templates = template.Must(template.New("").Funcs(template.FuncMap{
	"pathEscape": url.PathEscape,
	"ago":        ago,
	"clock":      clock,
	"major":      majorAmount,
	"answer":     answerText,
}).ParseFS(files, "pages/*.html"))

// defaultAttentionAfter is how long after its start a payment without a
// final status is shown as needing attention.
const defaultAttentionAfter = 30 * time.Minute

// Journal is what the console reads of the payment journal.
type Journal interface {
	Events(ctx context.Context, f journal.EventFilter) ([]journal.Event, error)
	Payments(ctx context.Context, f journal.PaymentFilter) ([]journal.PaymentView, error)
	Timeline(ctx context.Context, projectID, paymentID string) (journal.Timeline, error)
	OpenPayments(ctx context.Context, startedBefore time.Time, limit int) ([]journal.PaymentView, error)
	Body(ctx context.Context, eventKey string) ([]byte, error)
}

// Config is what a console is built from.
type Config struct {
	// Journal is the journal the console shows. Required.
	Journal Journal
	// Replay sends body, the stored body of an event of projectID, to the
	// app again and returns the journal entry the delivery made. It
	// returns ErrNoCallbackHandler when nothing here can deliver events
	// of projectID. Nil: every replay fails with ErrNoCallbackHandler.
	Replay func(ctx context.Context, projectID string, body []byte) (journal.Event, error)
	// AttentionAfter is how long after its start a payment without a final
	// status is shown as stuck. Zero: 30 minutes.
	AttentionAfter time.Duration
	// AllowProxied trusts the scheme a proxy reports (X-Forwarded-Proto)
	// when checking that a replay came from the console's own origin.
	AllowProxied bool
	// Health reports whether the store keeps what it is given, and why
	// not, for a banner on every page. Nil: no banner.
	Health func() (ok bool, why string)
	// Prefix is the path the console is mounted under, for a request, as
	// its pages link to it (for example "/ecommpay"). Nil: the root.
	Prefix func(*http.Request) string
	// Logger receives journal failures and replays. Nil: no logging.
	Logger *zap.Logger
}

// Console is the console's http.Handler.
type Console struct {
	cfg Config
	mux *http.ServeMux
}

// New returns the console described by cfg.
func New(cfg Config) *Console {
	if cfg.AttentionAfter <= 0 {
		cfg.AttentionAfter = defaultAttentionAfter
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.Prefix == nil {
		cfg.Prefix = func(*http.Request) string { return "" }
	}
	h := &Console{cfg: cfg, mux: http.NewServeMux()}
	mux := h.mux
	mux.HandleFunc("GET /{$}", h.consolePayments)
	mux.HandleFunc("GET /payments", h.consolePayments)
	mux.HandleFunc("GET /payments/{project}/{payment}", h.consoleTimeline)
	mux.HandleFunc("GET /events/{key}", h.consoleEvent)
	mux.HandleFunc("POST /events/{key}/replay", h.consoleReplayForm)
	mux.HandleFunc("GET /attention", h.consoleAttention)
	assets, _ := fs.Sub(files, "pages/assets")
	mux.Handle("GET /assets/", http.StripPrefix("/assets/", http.FileServerFS(assets)))
	mux.HandleFunc("GET /api/payments", h.apiPayments)
	mux.HandleFunc("GET /api/payments.csv", h.apiPaymentsCSV)
	mux.HandleFunc("GET /api/events.csv", h.apiEventsCSV)
	mux.HandleFunc("GET /api/payments/{project}/{payment}", h.apiTimeline)
	mux.HandleFunc("GET /api/events", h.apiEvents)
	mux.HandleFunc("GET /api/events/{key}", h.apiEvent)
	mux.HandleFunc("POST /api/events/{key}/replay", h.apiReplay)
	return h
}

// ServeHTTP answers console pages and API calls. Who may ask is the
// caller's to check first.
func (h *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	hdr := w.Header()
	hdr.Set("Cache-Control", "no-store")
	hdr.Set("X-Content-Type-Options", "nosniff")
	hdr.Set("Referrer-Policy", "same-origin")
	hdr.Set("X-Frame-Options", "DENY")
	// Inline QR images are data: URLs; nothing loads from elsewhere.
	hdr.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'")
	h.mux.ServeHTTP(w, r)
}

// consoleKey signs the console's form tokens; a fresh one per process is
// enough, since a token only has to outlive the page it is on.
var consoleKey = func() []byte {
	k := make([]byte, 32)
	_, _ = rand.Read(k)
	return k
}()

// formTokenTTL is how long a replay form works after its page was shown.
const formTokenTTL = time.Hour

// formToken is the token of a form for action, issued at issued: the issue
// time in seconds, "." and a MAC of both.
func formToken(action string, issued time.Time) string {
	ts := strconv.FormatInt(issued.Unix(), 10)
	return ts + "." + formMAC(action, ts)
}

func formMAC(action, ts string) string {
	m := hmac.New(sha256.New, consoleKey)
	m.Write([]byte(ts + "\n" + action))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// validFormToken reports whether token was issued by this process for
// action within formTokenTTL before now.
func validFormToken(token, action string, now time.Time) bool {
	ts, mac, ok := strings.Cut(token, ".")
	if !ok || !hmac.Equal([]byte(mac), []byte(formMAC(action, ts))) {
		return false
	}
	secs, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return false
	}
	age := now.Sub(time.Unix(secs, 0))
	return age >= -time.Minute && age <= formTokenTTL
}

// sameOrigin refuses state-changing requests that a page of another
// origin made in the operator's browser.
func (h *Console) sameOrigin(r *http.Request) bool { return origin.Same(r, h.cfg.AllowProxied) }

// queryFilters reads the list filters of pages and API calls.
func queryFilters(r *http.Request) (journal.EventFilter, journal.PaymentFilter, error) {
	q := r.URL.Query()
	limit := 100
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 || n > 1000 {
			return journal.EventFilter{}, journal.PaymentFilter{}, errors.New("limit must be 1 to 1000")
		}
		limit = n
	}
	var since, until time.Time
	for name, dst := range map[string]*time.Time{"since": &since, "until": &until} {
		if s := q.Get(name); s != "" {
			t, err := time.Parse(time.RFC3339, s)
			if err != nil {
				return journal.EventFilter{}, journal.PaymentFilter{}, errors.New(name + " must be an RFC 3339 time")
			}
			*dst = t
		}
	}
	ef := journal.EventFilter{ProjectID: q.Get("project_id"), PaymentID: q.Get("payment_id"), Result: q.Get("result"),
		Kind: q.Get("kind"), Since: since, Until: until, Before: q.Get("before"), Limit: limit}
	pf := journal.PaymentFilter{ProjectID: q.Get("project_id"), PaymentID: q.Get("payment_id"), Status: q.Get("status"),
		Method: q.Get("method"), Since: since, Until: until, Open: q.Get("open") == "1", Limit: limit}
	return ef, pf, nil
}

// API

func (h *Console) apiPayments(w http.ResponseWriter, r *http.Request) {
	_, pf, err := queryFilters(r)
	if err != nil {
		respond.Error(w, http.StatusBadRequest, "", "%s", err.Error())
		return
	}
	list, err := h.cfg.Journal.Payments(r.Context(), pf)
	h.answerJSON(w, map[string]any{"payments": nonNil(list)}, err)
}

func (h *Console) apiTimeline(w http.ResponseWriter, r *http.Request) {
	tl, err := h.cfg.Journal.Timeline(r.Context(), r.PathValue("project"), r.PathValue("payment"))
	if err == nil {
		tl.Events = nonNil(tl.Events)
	}
	h.answerJSON(w, tl, err)
}

func (h *Console) apiEvents(w http.ResponseWriter, r *http.Request) {
	ef, _, err := queryFilters(r)
	if err != nil {
		respond.Error(w, http.StatusBadRequest, "", "%s", err.Error())
		return
	}
	list, err := h.cfg.Journal.Events(r.Context(), ef)
	h.answerJSON(w, map[string]any{"events": nonNil(list)}, err)
}

// eventDetail is an event with its stored body, as the API gives it.
type eventDetail struct {
	journal.Event
	Body     json.RawMessage `json:"body,omitempty"`
	Attempts []journal.Event `json:"attempts"`
}

func (h *Console) apiEvent(w http.ResponseWriter, r *http.Request) {
	ev, err := h.eventDetail(r.Context(), r.PathValue("key"))
	h.answerJSON(w, ev, err)
}

// eventDetail is the first attempt of an event key, every attempt and
// replay of it, and the stored body.
func (h *Console) eventDetail(ctx context.Context, key string) (eventDetail, error) {
	attempts, err := h.cfg.Journal.Events(ctx, journal.EventFilter{EventKey: key, Limit: 1000})
	if err != nil {
		return eventDetail{}, err
	}
	if len(attempts) == 0 {
		return eventDetail{}, journal.ErrNotFound
	}
	first := attempts[len(attempts)-1]
	for _, a := range attempts {
		if a.Kind == journal.KindCallback || a.Kind == journal.KindStatus {
			first = a // newest first: ends on the oldest
		}
	}
	body, err := h.cfg.Journal.Body(ctx, key)
	if err != nil && !errors.Is(err, journal.ErrNotFound) {
		return eventDetail{}, err
	}
	return eventDetail{Event: first, Body: body, Attempts: attempts}, nil
}

func (h *Console) apiReplay(w http.ResponseWriter, r *http.Request) {
	if ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); ct != "application/json" || !h.sameOrigin(r) {
		respond.Error(w, http.StatusForbidden, "", "replay needs Content-Type: application/json from the same origin")
		return
	}
	ev, err := h.replay(r.Context(), r.PathValue("key"))
	h.answerJSON(w, ev, err)
}

// replay sends an event's stored body to the app again.
func (h *Console) replay(ctx context.Context, key string) (journal.Event, error) {
	ev, err := h.eventDetail(ctx, key)
	if err != nil {
		return journal.Event{}, err
	}
	if len(ev.Body) == 0 {
		return journal.Event{}, errNoBody
	}
	if h.cfg.Replay == nil {
		return journal.Event{}, ErrNoCallbackHandler
	}
	out, err := h.cfg.Replay(context.WithoutCancel(ctx), ev.ProjectID, ev.Body)
	if err != nil {
		return journal.Event{}, err
	}
	h.cfg.Logger.Info("replayed an event to the app", zap.String("event_key", key), zap.String("result", out.Result),
		zap.Int("app_status", out.AppStatus))
	return out, nil
}

var errNoBody = errors.New("the journal keeps no body for this event (journal bodies off, or not verified)")

// ErrNoCallbackHandler is Config.Replay's answer when no callback handler
// knows the event's project.
var ErrNoCallbackHandler = errors.New("no callback handler in this Caddy knows the event's project")

func (h *Console) answerJSON(w http.ResponseWriter, v any, err error) {
	switch {
	case errors.Is(err, journal.ErrNotFound):
		respond.Error(w, http.StatusNotFound, "", "not found")
	case errors.Is(err, errNoBody), errors.Is(err, ErrNoCallbackHandler):
		respond.Error(w, http.StatusConflict, "", "%s", err.Error())
	case err != nil:
		h.cfg.Logger.Error("console", zap.Error(err))
		respond.Error(w, http.StatusInternalServerError, "", "the journal failed; see the log")
	default:
		// Bodies as received: no HTML escaping of their text.
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(v); err != nil {
			respond.Error(w, http.StatusInternalServerError, "", "encoding failed")
			return
		}
		respond.JSON(w, http.StatusOK, buf.Bytes())
	}
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// Pages

type pageData struct {
	Title  string
	Prefix string
	Nav    string
	Error  string
	Query  url.Values
	Now    time.Time
	Data   any
	// StoreProblem says what the store lost or cannot write, for a banner.
	StoreProblem string
}

func (h *Console) render(w http.ResponseWriter, r *http.Request, name, title string, data any, err error) {
	p := pageData{Title: title, Prefix: h.cfg.Prefix(r), Nav: name, Query: r.URL.Query(), Now: time.Now(), Data: data}
	if h.cfg.Health != nil {
		if healthy, why := h.cfg.Health(); !healthy {
			p.StoreProblem = why
		}
	}
	status := http.StatusOK
	switch {
	case errors.Is(err, journal.ErrNotFound):
		status, p.Error = http.StatusNotFound, "Not found."
	case err != nil:
		h.cfg.Logger.Error("console", zap.Error(err))
		status, p.Error = http.StatusInternalServerError, "The journal failed; see the log."
	}
	var buf bytes.Buffer
	if err := templates.ExecuteTemplate(&buf, name+".html", p); err != nil {
		h.cfg.Logger.Error("console template", zap.Error(err))
		http.Error(w, "rendering failed", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

// paymentRow is a payments-list row with its attention badges.
type paymentRow struct {
	journal.PaymentView
	Stuck bool
}

func (h *Console) consolePayments(w http.ResponseWriter, r *http.Request) {
	_, pf, err := queryFilters(r)
	var data struct {
		Rows    []paymentRow
		Summary paymentSummary
		Limit   int
	}
	if err == nil {
		var list []journal.PaymentView
		list, err = h.cfg.Journal.Payments(r.Context(), pf)
		for _, p := range list {
			data.Rows = append(data.Rows, paymentRow{PaymentView: p, Stuck: h.stuck(p)})
		}
		data.Summary, data.Limit = summarize(list), journal.LimitOr(pf.Limit)
	}
	h.render(w, r, "payments", "Payments", data, err)
}

// stuck reports whether a payment has waited too long for a final status.
func (h *Console) stuck(p journal.PaymentView) bool {
	return !p.Final && !p.Started.IsZero() && time.Since(p.Started) > h.cfg.AttentionAfter
}

// timelineRow is one line of a timeline: an entry, or a run of repeated
// attempts (retries and duplicates) folded into one with a count.
type timelineRow struct {
	journal.Event
	Count int
}

func (h *Console) consoleTimeline(w http.ResponseWriter, r *http.Request) {
	tl, err := h.cfg.Journal.Timeline(r.Context(), r.PathValue("project"), r.PathValue("payment"))
	var forged []journal.Event
	if err == nil {
		forged, err = h.cfg.Journal.Events(r.Context(), journal.EventFilter{PaymentID: tl.Payment.PaymentID, Result: "invalid_signature", Limit: 20})
	}
	data := struct {
		Payment journal.PaymentView
		Stuck   bool
		Rows    []timelineRow
		Forged  []journal.Event
	}{tl.Payment, h.stuck(tl.Payment), foldTimeline(tl.Events), forged}
	h.render(w, r, "timeline", "Payment "+tl.Payment.PaymentID, data, err)
}

// foldTimeline folds consecutive attempts of one event with the same
// verdict into one row.
func foldTimeline(events []journal.Event) []timelineRow {
	var rows []timelineRow
	for _, e := range events {
		if n := len(rows); n > 0 && e.EventKey != "" && rows[n-1].EventKey == e.EventKey &&
			rows[n-1].Kind == e.Kind && rows[n-1].Result == e.Result && rows[n-1].AppStatus == e.AppStatus &&
			rows[n-1].Reason == e.Reason {
			rows[n-1].Count++
			continue
		}
		rows = append(rows, timelineRow{Event: e, Count: 1})
	}
	return rows
}

// eventPage is what the event page shows besides the event.
type eventPage struct {
	eventDetail
	Pretty    string
	Canonical string
	QRImages  []template.URL
	Redirect  string
	Token     string
	// Notice is one of replayNotices, chosen by the query's code: never
	// text from the query itself.
	Notice string
}

func (h *Console) consoleEvent(w http.ResponseWriter, r *http.Request) {
	ev, err := h.eventDetail(r.Context(), r.PathValue("key"))
	page := eventPage{eventDetail: ev, Token: formToken("replay "+ev.EventKey, time.Now()),
		Notice: replayNotices[r.URL.Query().Get("replayed")]}
	page.Attempts = oldestFirst(ev.Attempts) // as the timeline lists them
	if err == nil && len(ev.Body) > 0 {
		var buf bytes.Buffer
		if json.Indent(&buf, ev.Body, "", "  ") == nil {
			page.Pretty = buf.String()
		}
		if d, perr := canon.Parse(ev.Body, canon.Limits{}); perr == nil {
			page.QRImages, page.Redirect = displayData(d)
			if r.URL.Query().Get("canonical") == "1" {
				page.Canonical = string(d.Canonical(nil, true))
			}
			d.Release()
		}
	}
	h.render(w, r, "event", "Event "+ev.EventKey, page, err)
}

// displayData renders a body's QR strings as inline PNGs and finds its
// redirect link, when there is one.
func displayData(d *canon.Doc) (images []template.URL, redirect string) {
	root := d.Root()
	for e := range qr.DisplayEntries(d) {
		if d.TextAt(e, "type") != "qr_data" {
			continue
		}
		png, err := qr.Render(d.TextAt(e, "data"), qr.Options{})
		if err == nil {
			// A PNG of our own making: safe as a data: URL.
			images = append(images, template.URL("data:image/png;base64,"+base64.StdEncoding.EncodeToString(png)))
		}
	}
	if u, err := url.Parse(d.TextAt(root, "redirect_data", "url")); err == nil && (u.Scheme == "https" || u.Scheme == "http") {
		redirect = u.String()
	}
	return images, redirect
}

func (h *Console) consoleReplayForm(w http.ResponseWriter, r *http.Request) {
	key := r.PathValue("key")
	if !h.sameOrigin(r) || !validFormToken(r.PostFormValue("token"), "replay "+key, time.Now()) {
		respond.Error(w, http.StatusForbidden, "", "replay refused: the form did not come from this console, or its page is over an hour old (reload it)")
		return
	}
	ev, err := h.replay(r.Context(), key)
	code := replayCode(ev, err)
	if err != nil {
		h.cfg.Logger.Warn("replay failed", zap.String("event_key", key), zap.Error(err))
	}
	target := h.cfg.Prefix(r) + "/events/" + url.PathEscape(key) + "?replayed=" + code
	http.Redirect(w, r, target, http.StatusSeeOther)
}

// replayNotices are the messages the event page shows after a replay, by
// the code in its query. A code not listed shows nothing.
var replayNotices = map[string]string{
	"forwarded":  "Replayed: the app accepted the event (its answer is the newest attempt below).",
	"app_error":  "Replayed, but the app refused the event or could not be reached (see the newest attempt below).",
	"no_body":    "Replay failed: the journal keeps no body for this event.",
	"no_handler": "Replay failed: no callback handler in this Caddy knows the event's project.",
	"failed":     "Replay failed; the reason is in Caddy's log.",
}

// replayCode is the replayNotices code for a replay's outcome.
func replayCode(ev journal.Event, err error) string {
	switch {
	case errors.Is(err, errNoBody):
		return "no_body"
	case errors.Is(err, ErrNoCallbackHandler):
		return "no_handler"
	case err != nil:
		return "failed"
	case ev.Result == "forwarded":
		return "forwarded"
	default:
		return "app_error"
	}
}

func (h *Console) consoleAttention(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	data := struct {
		After                time.Duration
		Stuck                []journal.PaymentView
		AppErrors, Forgeries []journal.Event
	}{After: h.cfg.AttentionAfter}
	var err error
	data.Stuck, err = h.cfg.Journal.OpenPayments(ctx, time.Now().Add(-data.After), 100)
	since := time.Now().Add(-24 * time.Hour)
	if err == nil {
		data.AppErrors, err = h.cfg.Journal.Events(ctx, journal.EventFilter{Result: "app_error", Since: since, Limit: 100})
	}
	if err == nil {
		data.AppErrors, err = h.pendingAppErrors(ctx, data.AppErrors)
	}
	if err == nil {
		data.Forgeries, err = h.cfg.Journal.Events(ctx, journal.EventFilter{Result: "invalid_signature", Since: since, Limit: 100})
	}
	h.render(w, r, "attention", "Attention", data, err)
}

// ago is a short age for tables.
func ago(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	d := time.Since(t).Round(time.Second)
	switch {
	case d < time.Minute:
		return strconv.Itoa(int(d.Seconds())) + "s ago"
	case d < time.Hour:
		return strconv.Itoa(int(d.Minutes())) + "m ago"
	case d < 48*time.Hour:
		return strconv.Itoa(int(d.Hours())) + "h ago"
	}
	return strconv.Itoa(int(d.Hours()/24)) + "d ago"
}
