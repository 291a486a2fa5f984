package ecommpay

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/canon"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/journal"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/respond"
	"go.uber.org/zap"
)

// exchange is one request to the handler, in any mode: the steps every mode
// shares (read, parse, limits, project lookup) and the outcome that feeds
// the log, the metrics and the journal, written once.
type exchange struct {
	h     *Handler
	w     http.ResponseWriter
	r     *http.Request
	start time.Time
	ev    journal.Event
	// appLatency is how long the next handler took, when it was called.
	appLatency time.Duration

	detached context.Context // the request's values without its cancellation

	// Set for the kinds that forward to the app: callbacks, replays and
	// status events.
	*forwardParts
}

// forwardParts is what a forward needs on its way, allocated with its
// exchange so that the one allocation holds both. The exchange is never
// reused: what the app's handler or the transport keeps of these stays
// valid.
type forwardParts struct {
	body   appBody
	app    appAnswer
	vals   [8]string // header values, set as one-element slices
	nvals  int
	fields [12]zap.Field
}

func (h *Handler) newExchange(w http.ResponseWriter, r *http.Request, kind string) *exchange {
	x := exchange{h: h, w: w, r: r, start: time.Now(), ev: journal.Event{Kind: kind}}
	if kind == journal.KindPaymentPage || kind == journal.KindGate {
		return &x // signing needs none of forwardParts
	}
	both := &struct {
		exchange
		parts forwardParts
	}{exchange: x}
	both.forwardParts = &both.parts
	return &both.exchange
}

// refusal is an answer decided before anything was forwarded.
type refusal struct {
	status        int
	result, field string
	msg           string
}

func refuse(status int, result, msg string) *refusal {
	return &refusal{status: status, result: result, msg: msg}
}

// answer writes a refusal as a small JSON error and notes the outcome.
func (x *exchange) answer(rf *refusal) error {
	x.ev.Status, x.ev.Result = rf.status, rf.result
	respond.Error(x.w, rf.status, rf.field, "%s", rf.msg)
	return nil
}

// readObject reads the body within max_body and parses it as a JSON object
// within the limits. The caller releases the Doc.
func (x *exchange) readObject() (*canon.Doc, string, *refusal) {
	body, rf := x.readBody()
	if rf != nil {
		return nil, "", rf
	}
	d, rf := x.h.parseObject(body)
	return d, body, rf
}

// readBody reads the body within max_body and, for callbacks, read_timeout.
func (x *exchange) readBody() (string, *refusal) {
	if x.ev.Kind == journal.KindCallback {
		// A slow sender must not hold the connection: the body of a real
		// callback arrives at once.
		setReadDeadline(x.w, time.Now().Add(time.Duration(x.h.ReadTimeout)))
	}
	body, err := readBody(x.r, x.h.MaxBody)
	switch {
	case err == nil:
	case errors.Is(err, errTooLarge):
		return "", refuse(http.StatusRequestEntityTooLarge, "too_large", "body too large")
	case errors.Is(err, context.DeadlineExceeded) || isTimeout(err):
		return "", refuse(http.StatusRequestTimeout, "too_slow", "the body did not arrive in time")
	case err != nil:
		return "", refuse(http.StatusBadRequest, "malformed", "reading the body failed")
	}
	return body, nil
}

// setReadDeadline is what http.ResponseController's does, without making
// an error when no writer along the chain can set one (as under tests).
func setReadDeadline(w http.ResponseWriter, t time.Time) {
	for {
		switch v := w.(type) {
		case interface{ SetReadDeadline(time.Time) error }:
			_ = v.SetReadDeadline(t)
			return
		case interface{ Unwrap() http.ResponseWriter }:
			w = v.Unwrap()
		default:
			return
		}
	}
}

func isTimeout(err error) bool {
	var t interface{ Timeout() bool }
	return errors.As(err, &t) && t.Timeout()
}

// parseObject parses body as a JSON object within the handler's limits.
func (h *Handler) parseObject(body string) (*canon.Doc, *refusal) {
	d, err := canon.ParseString(body, h.limits)
	if err != nil {
		if errors.Is(err, canon.ErrMalformed) {
			return nil, refuse(http.StatusBadRequest, "malformed", err.Error())
		}
		return nil, refuse(http.StatusRequestEntityTooLarge, "too_large", err.Error())
	}
	if d.Kind(d.Root()) != canon.Object {
		d.Release()
		return nil, refuse(http.StatusBadRequest, "malformed", "the body must be a JSON object")
	}
	return d, nil
}

// projectFor picks the project by the id the request gave. When it gave
// none and one project is configured, that one is used, unless the mode
// requires the id (callbacks must name theirs).
func (h *Handler) projectFor(id string, given, required bool, field string) (*project, *refusal) {
	switch {
	case given && id == "":
		return nil, &refusal{http.StatusBadRequest, "invalid", field, field + " is empty; leave it out or set it"}
	case given:
		if p := h.lookupProject(id); p != nil {
			return p, nil
		}
		return nil, &refusal{http.StatusBadRequest, "unknown_project", field, "unknown project"}
	case h.only != nil && !required:
		return h.only, nil
	}
	return nil, &refusal{http.StatusBadRequest, "invalid", field, field + " is required when several projects are configured"}
}

// context is the request's context without its cancellation: what must
// run to its end when the client hangs up.
func (x *exchange) context() context.Context {
	if x.detached == nil {
		x.detached = context.WithoutCancel(x.r.Context())
	}
	return x.detached
}

// setHeader sets one value without allocating its slice. name must be in
// canonical form.
func (x *exchange) setHeader(hdr http.Header, name, value string) {
	if x.nvals == len(x.vals) {
		hdr[name] = []string{value}
		return
	}
	i := x.nvals
	x.nvals++
	x.vals[i] = value
	hdr[name] = x.vals[i : i+1 : i+1]
}

// finish logs the outcome, counts it once and records it in the journal.
func (x *exchange) finish() {
	h, ev := x.h, &x.ev
	if ev.ProjectID == "" && ev.Kind == journal.KindCallback {
		ev.ProjectID = "unknown"
	}
	if ev.Kind != journal.KindCallback && ev.Result == "malformed" {
		ev.Result = "invalid" // the signing modes' name for it
	}
	switch ev.Kind {
	case journal.KindCallback:
		h.metrics.callback(h.lookupProject(ev.ProjectID), ev.ProjectID, ev.Result)
	case journal.KindPaymentPage, journal.KindGate:
		h.metrics.signRequest(ev.Kind, ev.Result)
	}
	if x.appLatency > 0 {
		ev.AppLatencyMS = x.appLatency.Milliseconds()
	}
	// Check first: the fields cost allocations even when Info is off.
	if ce := h.logger.Check(zap.InfoLevel, logMessages[ev.Kind]); ce != nil {
		var fields []zap.Field
		if x.forwardParts != nil {
			fields = x.fields[:0]
		}
		fields = append(fields, zap.String("project_id", ev.ProjectID), zap.String("payment_id", ev.PaymentID))
		switch ev.Kind {
		case journal.KindCallback, journal.KindReplay, journal.KindStatus:
			fields = append(fields, zap.String("operation_id", ev.OperationID), zap.String("operation_status", ev.OperationStatus),
				zap.String("payment_status", ev.PaymentStatus), zap.String("event_key", ev.EventKey), zap.Bool("verified", ev.Verified))
		case journal.KindGate:
			fields = append(fields, zap.String("path", journal.TruncateUnverified(x.r.URL.Path)))
		}
		if ev.AppStatus != 0 {
			fields = append(fields, zap.Int("app_status", ev.AppStatus))
		}
		fields = append(fields, zap.String("result", ev.Result), zap.Int("status", ev.Status), zap.Duration("duration", time.Since(x.start)))
		ce.Write(fields...)
	}
	if h.journal != nil && x.journaled() {
		// The journal must not hold up the answer, nor fail it.
		ctx := x.detached // a callback's, when it has one
		if ctx == nil {
			ctx = context.WithoutCancel(x.r.Context())
		}
		// Assigned here, not by Record, so that a replay's answer names
		// the entry it made.
		ev.Prepare(time.Now())
		if err := h.journal.Record(ctx, *ev); err != nil {
			h.logger.Error("could not record in the journal", zap.String("event_key", ev.EventKey), zap.Error(err))
		}
	}
}

var logMessages = map[string]string{
	journal.KindCallback:    "callback",
	journal.KindReplay:      "replay",
	journal.KindStatus:      "status event",
	journal.KindPaymentPage: "payment page request",
	journal.KindGate:        "gate request",
}

// journaled reports whether the outcome belongs in the journal: every
// callback attempt, replay and status event, and signing requests that
// were signed.
func (x *exchange) journaled() bool {
	switch x.ev.Kind {
	case journal.KindPaymentPage, journal.KindGate:
		return x.ev.Result == "signed" || x.ev.Result == "upstream_error"
	}
	return true
}
