package ecommpay

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
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/origin"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/qr"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// The operator console: pages and a JSON API over the journal, and replay
// of a stored event to the app. It is served by `ecommpay console`,
// mounted wherever the operator likes (for example handle_path
// /ecommpay/* on the internal listener), and answers like the signing
// modes: direct loopback peers unless allow says otherwise.

//go:embed console
var consoleFiles embed.FS

var consoleTemplates = template.Must(template.New("").Funcs(template.FuncMap{
	"pathEscape": url.PathEscape,
	"ago":        ago,
	"clock":      clock,
	"major":      majorAmount,
	"answer":     answerText,
}).ParseFS(consoleFiles, "console/*.html"))

// DefaultAttentionAfter is how long after its start a payment without a
// final status is shown as needing attention.
const DefaultAttentionAfter = 30 * time.Minute

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

func (h *Handler) provisionConsole() {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", h.consolePayments)
	mux.HandleFunc("GET /payments", h.consolePayments)
	mux.HandleFunc("GET /payments/{project}/{payment}", h.consoleTimeline)
	mux.HandleFunc("GET /events/{key}", h.consoleEvent)
	mux.HandleFunc("POST /events/{key}/replay", h.consoleReplayForm)
	mux.HandleFunc("GET /attention", h.consoleAttention)
	assets, _ := fs.Sub(consoleFiles, "console/assets")
	mux.Handle("GET /assets/", http.StripPrefix("/assets/", http.FileServerFS(assets)))
	mux.HandleFunc("GET /api/payments", h.apiPayments)
	mux.HandleFunc("GET /api/payments.csv", h.apiPaymentsCSV)
	mux.HandleFunc("GET /api/events.csv", h.apiEventsCSV)
	mux.HandleFunc("GET /api/payments/{project}/{payment}", h.apiTimeline)
	mux.HandleFunc("GET /api/events", h.apiEvents)
	mux.HandleFunc("GET /api/events/{key}", h.apiEvent)
	mux.HandleFunc("POST /api/events/{key}/replay", h.apiReplay)
	h.console = mux
}

// serveConsole answers console pages and API calls.
func (h *Handler) serveConsole(w http.ResponseWriter, r *http.Request) error {
	if rf := h.signingRefusal(r); rf != nil {
		writeError(w, rf.status, "", "%s", rf.msg)
		return nil
	}
	if h.journal == nil {
		writeError(w, http.StatusServiceUnavailable, "", "the journal is off")
		return nil
	}
	hdr := w.Header()
	hdr.Set("Cache-Control", "no-store")
	hdr.Set("X-Content-Type-Options", "nosniff")
	hdr.Set("Referrer-Policy", "same-origin")
	hdr.Set("X-Frame-Options", "DENY")
	// Inline QR images are data: URLs; nothing loads from elsewhere.
	hdr.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'")
	h.console.ServeHTTP(w, r)
	return nil
}

// consolePrefix is where the console is mounted: the part of the original
// path that handle_path stripped.
func consolePrefix(r *http.Request) string {
	orig, ok := r.Context().Value(caddyhttp.OriginalRequestCtxKey).(http.Request)
	if !ok || orig.URL == nil {
		return ""
	}
	return strings.TrimSuffix(strings.TrimSuffix(orig.URL.Path, r.URL.Path), "/")
}

// sameOrigin refuses state-changing requests that a page of another
// origin made in the operator's browser; the Host itself was checked by
// signingRefusal.
func (h *Handler) sameOrigin(r *http.Request) bool { return origin.Same(r, h.AllowProxied) }

// queryFilters reads the list filters of pages and API calls.
func queryFilters(r *http.Request) (eventFilter, paymentFilter, error) {
	q := r.URL.Query()
	limit := 100
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 || n > 1000 {
			return eventFilter{}, paymentFilter{}, errors.New("limit must be 1 to 1000")
		}
		limit = n
	}
	var since, until time.Time
	for name, dst := range map[string]*time.Time{"since": &since, "until": &until} {
		if s := q.Get(name); s != "" {
			t, err := time.Parse(time.RFC3339, s)
			if err != nil {
				return eventFilter{}, paymentFilter{}, errors.New(name + " must be an RFC 3339 time")
			}
			*dst = t
		}
	}
	ef := eventFilter{ProjectID: q.Get("project_id"), PaymentID: q.Get("payment_id"), Result: q.Get("result"),
		Kind: q.Get("kind"), Since: since, Until: until, Before: q.Get("before"), Limit: limit}
	pf := paymentFilter{ProjectID: q.Get("project_id"), PaymentID: q.Get("payment_id"), Status: q.Get("status"),
		Method: q.Get("method"), Since: since, Until: until, Open: q.Get("open") == "1", Limit: limit}
	return ef, pf, nil
}

// API

func (h *Handler) apiPayments(w http.ResponseWriter, r *http.Request) {
	_, pf, err := queryFilters(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, "", "%s", err.Error())
		return
	}
	list, err := h.journal.Payments(r.Context(), pf)
	h.answerJSON(w, map[string]any{"payments": nonNil(list)}, err)
}

func (h *Handler) apiTimeline(w http.ResponseWriter, r *http.Request) {
	tl, err := h.journal.Timeline(r.Context(), r.PathValue("project"), r.PathValue("payment"))
	if err == nil {
		tl.Events = nonNil(tl.Events)
	}
	h.answerJSON(w, tl, err)
}

func (h *Handler) apiEvents(w http.ResponseWriter, r *http.Request) {
	ef, _, err := queryFilters(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, "", "%s", err.Error())
		return
	}
	list, err := h.journal.Events(r.Context(), ef)
	h.answerJSON(w, map[string]any{"events": nonNil(list)}, err)
}

// eventDetail is an event with its stored body, as the API gives it.
type eventDetail struct {
	journalEvent
	Body     json.RawMessage `json:"body,omitempty"`
	Attempts []journalEvent  `json:"attempts"`
}

func (h *Handler) apiEvent(w http.ResponseWriter, r *http.Request) {
	ev, err := h.eventDetail(r.Context(), r.PathValue("key"))
	h.answerJSON(w, ev, err)
}

// eventDetail is the first attempt of an event key, every attempt and
// replay of it, and the stored body.
func (h *Handler) eventDetail(ctx context.Context, key string) (eventDetail, error) {
	attempts, err := h.journal.Events(ctx, eventFilter{EventKey: key, Limit: 1000})
	if err != nil {
		return eventDetail{}, err
	}
	if len(attempts) == 0 {
		return eventDetail{}, errNotFound
	}
	first := attempts[len(attempts)-1]
	for _, a := range attempts {
		if a.Kind == kindCallback || a.Kind == kindStatus {
			first = a // newest first: ends on the oldest
		}
	}
	body, err := h.journal.Body(ctx, key)
	if err != nil && !errors.Is(err, errNotFound) {
		return eventDetail{}, err
	}
	return eventDetail{journalEvent: first, Body: body, Attempts: attempts}, nil
}

func (h *Handler) apiReplay(w http.ResponseWriter, r *http.Request) {
	if ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); ct != "application/json" || !h.sameOrigin(r) {
		writeError(w, http.StatusForbidden, "", "replay needs Content-Type: application/json from the same origin")
		return
	}
	ev, err := h.replay(r.Context(), r.PathValue("key"))
	h.answerJSON(w, ev, err)
}

// replay sends an event's stored body to the app again.
func (h *Handler) replay(ctx context.Context, key string) (journalEvent, error) {
	ev, err := h.eventDetail(ctx, key)
	if err != nil {
		return journalEvent{}, err
	}
	if len(ev.Body) == 0 {
		return journalEvent{}, errNoBody
	}
	target := callbackHandlerFor(ev.ProjectID)
	if target == nil {
		return journalEvent{}, errNoCallbackHandler
	}
	d := &dispatched{kind: kindReplay, body: ev.Body}
	if err := target.dispatch(context.WithoutCancel(ctx), d); err != nil {
		return journalEvent{}, err
	}
	h.logger.Info("replayed an event to the app", zap.String("event_key", key), zap.String("result", d.ev.Result),
		zap.Int("app_status", d.ev.AppStatus))
	return d.ev, nil
}

var (
	errNoBody            = errors.New("the journal keeps no body for this event (journal bodies off, or not verified)")
	errNoCallbackHandler = errors.New("no callback handler in this Caddy knows the event's project")
)

func (h *Handler) answerJSON(w http.ResponseWriter, v any, err error) {
	switch {
	case errors.Is(err, errNotFound):
		writeError(w, http.StatusNotFound, "", "not found")
	case errors.Is(err, errNoBody), errors.Is(err, errNoCallbackHandler):
		writeError(w, http.StatusConflict, "", "%s", err.Error())
	case err != nil:
		h.logger.Error("console", zap.Error(err))
		writeError(w, http.StatusInternalServerError, "", "the journal failed; see the log")
	default:
		// Bodies as received: no HTML escaping of their text.
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(v); err != nil {
			writeError(w, http.StatusInternalServerError, "", "encoding failed")
			return
		}
		writeJSON(w, http.StatusOK, buf.Bytes())
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

func (h *Handler) render(w http.ResponseWriter, r *http.Request, name, title string, data any, err error) {
	p := pageData{Title: title, Prefix: consolePrefix(r), Nav: name, Query: r.URL.Query(), Now: time.Now(), Data: data}
	if hs, ok := h.journal.(healthReporter); ok {
		if healthy, why := hs.Health(); !healthy {
			p.StoreProblem = why
		}
	}
	status := http.StatusOK
	switch {
	case errors.Is(err, errNotFound):
		status, p.Error = http.StatusNotFound, "Not found."
	case err != nil:
		h.logger.Error("console", zap.Error(err))
		status, p.Error = http.StatusInternalServerError, "The journal failed; see the log."
	}
	var buf bytes.Buffer
	if err := consoleTemplates.ExecuteTemplate(&buf, name+".html", p); err != nil {
		h.logger.Error("console template", zap.Error(err))
		http.Error(w, "rendering failed", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

// paymentRow is a payments-list row with its attention badges.
type paymentRow struct {
	paymentView
	Stuck bool
}

func (h *Handler) consolePayments(w http.ResponseWriter, r *http.Request) {
	_, pf, err := queryFilters(r)
	var data struct {
		Rows    []paymentRow
		Summary paymentSummary
		Limit   int
	}
	if err == nil {
		var list []paymentView
		list, err = h.journal.Payments(r.Context(), pf)
		for _, p := range list {
			data.Rows = append(data.Rows, paymentRow{paymentView: p, Stuck: h.stuck(p)})
		}
		data.Summary, data.Limit = summarize(list), limitOr(pf.Limit)
	}
	h.render(w, r, "payments", "Payments", data, err)
}

// stuck reports whether a payment has waited too long for a final status.
func (h *Handler) stuck(p paymentView) bool {
	return !p.Final && !p.Started.IsZero() && time.Since(p.Started) > time.Duration(h.AttentionAfter)
}

// timelineRow is one line of a timeline: an entry, or a run of repeated
// attempts (retries and duplicates) folded into one with a count.
type timelineRow struct {
	journalEvent
	Count int
}

func (h *Handler) consoleTimeline(w http.ResponseWriter, r *http.Request) {
	tl, err := h.journal.Timeline(r.Context(), r.PathValue("project"), r.PathValue("payment"))
	var forged []journalEvent
	if err == nil {
		forged, err = h.journal.Events(r.Context(), eventFilter{PaymentID: tl.Payment.PaymentID, Result: "invalid_signature", Limit: 20})
	}
	data := struct {
		Payment paymentView
		Stuck   bool
		Rows    []timelineRow
		Forged  []journalEvent
	}{tl.Payment, h.stuck(tl.Payment), foldTimeline(tl.Events), forged}
	h.render(w, r, "timeline", "Payment "+tl.Payment.PaymentID, data, err)
}

// foldTimeline folds consecutive attempts of one event with the same
// verdict into one row.
func foldTimeline(events []journalEvent) []timelineRow {
	var rows []timelineRow
	for _, e := range events {
		if n := len(rows); n > 0 && e.EventKey != "" && rows[n-1].EventKey == e.EventKey &&
			rows[n-1].Kind == e.Kind && rows[n-1].Result == e.Result && rows[n-1].AppStatus == e.AppStatus &&
			rows[n-1].Reason == e.Reason {
			rows[n-1].Count++
			continue
		}
		rows = append(rows, timelineRow{journalEvent: e, Count: 1})
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

func (h *Handler) consoleEvent(w http.ResponseWriter, r *http.Request) {
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
		if textAt(d, e, "type") != "qr_data" {
			continue
		}
		png, err := qr.Render(textAt(d, e, "data"), qr.Options{})
		if err == nil {
			// A PNG of our own making: safe as a data: URL.
			images = append(images, template.URL("data:image/png;base64,"+base64.StdEncoding.EncodeToString(png)))
		}
	}
	if u, err := url.Parse(textAt(d, root, "redirect_data", "url")); err == nil && (u.Scheme == "https" || u.Scheme == "http") {
		redirect = u.String()
	}
	return images, redirect
}

func (h *Handler) consoleReplayForm(w http.ResponseWriter, r *http.Request) {
	key := r.PathValue("key")
	if !h.sameOrigin(r) || !validFormToken(r.PostFormValue("token"), "replay "+key, time.Now()) {
		writeError(w, http.StatusForbidden, "", "replay refused: the form did not come from this console, or its page is over an hour old (reload it)")
		return
	}
	ev, err := h.replay(r.Context(), key)
	code := replayCode(ev, err)
	if err != nil {
		h.logger.Warn("replay failed", zap.String("event_key", key), zap.Error(err))
	}
	target := consolePrefix(r) + "/events/" + url.PathEscape(key) + "?replayed=" + code
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
func replayCode(ev journalEvent, err error) string {
	switch {
	case errors.Is(err, errNoBody):
		return "no_body"
	case errors.Is(err, errNoCallbackHandler):
		return "no_handler"
	case err != nil:
		return "failed"
	case ev.Result == "forwarded":
		return "forwarded"
	default:
		return "app_error"
	}
}

func (h *Handler) consoleAttention(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	data := struct {
		After                time.Duration
		Stuck                []paymentView
		AppErrors, Forgeries []journalEvent
	}{After: time.Duration(h.AttentionAfter)}
	var err error
	data.Stuck, err = h.journal.OpenPayments(ctx, time.Now().Add(-data.After), 100)
	since := time.Now().Add(-24 * time.Hour)
	if err == nil {
		data.AppErrors, err = h.journal.Events(ctx, eventFilter{Result: "app_error", Since: since, Limit: 100})
	}
	if err == nil {
		data.AppErrors, err = h.pendingAppErrors(ctx, data.AppErrors)
	}
	if err == nil {
		data.Forgeries, err = h.journal.Events(ctx, eventFilter{Result: "invalid_signature", Since: since, Limit: 100})
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
