package console

import (
	"bytes"
	"encoding/csv"
	"net/http"
	"strconv"
	"time"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/currency"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/journal"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/respond"
)

// CSV downloads of the payments and events lists, for finance teams and
// spreadsheets: the same filters as the JSON API, up to 1000 rows unless
// limit says fewer.

// csvLimit is the rows a download gives when the query sets no limit.
const csvLimit = 1000

var (
	paymentsCSVHeader = []string{"project_id", "payment_id", "started", "updated", "signed", "mode",
		"amount", "currency", "amount_major", "method", "status", "final", "callbacks", "app_errors", "events"}
	eventsCSVHeader = []string{"id", "time", "kind", "project_id", "payment_id", "operation_id", "operation_type",
		"operation_status", "payment_status", "event_key", "result", "status", "app_status", "app_latency_ms",
		"ecommpay_status", "reason", "verified", "path", "amount", "currency", "amount_major", "method"}
)

func csvFilters(r *http.Request) (journal.EventFilter, journal.PaymentFilter, error) {
	ef, pf, err := queryFilters(r)
	if r.URL.Query().Get("limit") == "" {
		ef.Limit, pf.Limit = csvLimit, csvLimit
	}
	return ef, pf, err
}

func (h *Console) apiPaymentsCSV(w http.ResponseWriter, r *http.Request) {
	_, pf, err := csvFilters(r)
	if err != nil {
		respond.Error(w, http.StatusBadRequest, "", "%s", err.Error())
		return
	}
	list, err := h.cfg.Journal.Payments(r.Context(), pf)
	rows := [][]string{paymentsCSVHeader}
	for _, p := range list {
		rows = append(rows, []string{csvText(p.ProjectID), csvText(p.PaymentID), csvTime(p.Started), csvTime(p.Updated),
			csvTime(p.Signed), csvText(p.Mode), csvText(p.Amount), csvText(p.Currency), csvMajor(p.Amount, p.Currency),
			csvText(p.Method), csvText(p.Status), strconv.FormatBool(p.Final), strconv.Itoa(p.Callbacks),
			strconv.Itoa(p.AppErrors), strconv.Itoa(p.Events)})
	}
	h.answerCSV(w, "payments.csv", rows, err)
}

func (h *Console) apiEventsCSV(w http.ResponseWriter, r *http.Request) {
	ef, _, err := csvFilters(r)
	if err != nil {
		respond.Error(w, http.StatusBadRequest, "", "%s", err.Error())
		return
	}
	list, err := h.cfg.Journal.Events(r.Context(), ef)
	rows := [][]string{eventsCSVHeader}
	for _, e := range list {
		rows = append(rows, []string{csvText(e.ID), csvTime(e.Time), csvText(e.Kind), csvText(e.ProjectID),
			csvText(e.PaymentID), csvText(e.OperationID), csvText(e.OperationType), csvText(e.OperationStatus),
			csvText(e.PaymentStatus), csvText(e.EventKey), csvText(e.Result), strconv.Itoa(e.Status),
			strconv.Itoa(e.AppStatus), strconv.FormatInt(e.AppLatencyMS, 10), strconv.Itoa(e.EcommpayStatus),
			csvText(e.Reason), strconv.FormatBool(e.Verified), csvText(e.Path), csvText(e.Amount), csvText(e.Currency),
			csvMajor(e.Amount, e.Currency), csvText(e.Method)})
	}
	h.answerCSV(w, "events.csv", rows, err)
}

func (h *Console) answerCSV(w http.ResponseWriter, name string, rows [][]string, err error) {
	if err != nil {
		h.answerJSON(w, nil, err)
		return
	}
	var buf bytes.Buffer
	cw := csv.NewWriter(&buf)
	_ = cw.WriteAll(rows) // a bytes.Buffer does not fail
	w.Header().Set("Content-Type", "text/csv; charset=utf-8")
	w.Header().Set("Content-Disposition", `attachment; filename="`+name+`"`)
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(buf.Bytes())
}

// csvText guards a cell of the journal's text against formula injection:
// spreadsheets run a cell that starts with = + - @ (or a tab or carriage
// return before one), and a callback's fields are the sender's text. A
// leading apostrophe makes it plain text.
func csvText(s string) string {
	if s != "" && (s[0] == '=' || s[0] == '+' || s[0] == '-' || s[0] == '@' || s[0] == '\t' || s[0] == '\r') {
		return "'" + s
	}
	return s
}

func csvTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339Nano)
}

// csvMajor is an amount in major units, empty when the amount is not an
// integer. It is a number of our making: a leading "-" is its sign.
func csvMajor(minor, code string) string {
	s, _ := currency.Major(minor, code)
	return s
}
