package reconcile

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/canon"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/journal"
	"go.uber.org/zap"
)

// statusAnswer is the outcome of one status request.
type statusAnswer struct {
	result        string
	httpStatus    int
	paymentStatus string
	body          []byte
	err           error
}

// statusBody is a signed status request: general.project_id and
// general.payment_id, signed like a Gate request.
func statusBody(projectID string, key *canon.Key, paymentID string) []byte {
	d, err := canon.Parse([]byte(`{"general":{}}`), canon.Limits{})
	if err != nil {
		panic(err)
	}
	defer d.Release()
	general := d.Get(d.Root(), "general")
	d.SetProjectID(general, projectID)
	d.Set(general, "payment_id", canon.String, paymentID)
	key.SignGate(d, general)
	return d.AppendJSON(nil)
}

// ask makes one status request.
func (rc *Reconciler) ask(ctx context.Context, projectID string, key *canon.Key, paymentID string) statusAnswer {
	ctx, cancel := context.WithTimeout(ctx, statusTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, rc.c.StatusURL.String(), strings.NewReader(string(statusBody(projectID, key, paymentID))))
	if err != nil {
		return statusAnswer{result: ResultError, err: err}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	resp, err := rc.c.Client.Do(req)
	if err != nil {
		return statusAnswer{result: ResultError, err: redactURLError(err)}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, rc.c.MaxBody+1))
	ans := statusAnswer{result: ResultError, httpStatus: resp.StatusCode, body: body}
	switch {
	case err != nil:
		ans.err = err
	case int64(len(body)) > rc.c.MaxBody:
		ans.err = errors.New("the answer is larger than max_body")
	default:
		ans.classify(rc.c.Limits, projectID, paymentID)
	}
	return ans
}

// classify reads an answer: 200 with payment.status is found, if it is
// about the payment asked for (payment.id, and project_id where it says
// one), else a mismatch; 404, or an error answer that says not found, is
// not found; the rest are errors.
func (a *statusAnswer) classify(lim canon.Limits, projectID, paymentID string) {
	a.result = ResultError
	d, err := canon.Parse(a.body, lim)
	if err != nil || d.Kind(d.Root()) != canon.Object {
		if err == nil {
			d.Release()
		}
		a.err = fmt.Errorf("HTTP %d with a body that is not a JSON object", a.httpStatus)
		if a.httpStatus == http.StatusNotFound {
			a.result, a.err = ResultNotFound, nil
		}
		return
	}
	defer d.Release()
	root := d.Root()
	a.paymentStatus = d.TextAt(root, "payment", "status")
	switch {
	case a.httpStatus == http.StatusOK && a.paymentStatus != "":
		a.result = ResultFound
		if pid, about := answerProject(d), d.TextAt(root, "payment", "id"); about != paymentID || (pid != "" && pid != projectID) {
			a.result = ResultMismatch
			a.err = fmt.Errorf("the answer is about payment %.64q of project %.32q, not the one asked for", about, pid)
		}
	case a.httpStatus >= 500:
		a.err = fmt.Errorf("HTTP %d", a.httpStatus)
	case a.httpStatus == http.StatusNotFound || saysNotFound(d):
		a.result = ResultNotFound
	default:
		a.err = fmt.Errorf("HTTP %d: %.200s", a.httpStatus, d.TextAt(root, "message"))
	}
}

// answerProject is the project_id a status answer names, top-level or in
// general, or "" when it names none. One that names two gives "|", which
// is no project's id.
func answerProject(d *canon.Doc) string {
	top, general := d.TextAt(d.Root(), "project_id"), d.TextAt(d.Root(), "general", "project_id")
	switch {
	case top == "":
		return general
	case general == "" || general == top:
		return top
	default:
		return "|"
	}
}

// saysNotFound tells an error answer about an unknown payment: its
// message, or one of its errors' messages, says so.
func saysNotFound(d *canon.Doc) bool {
	root := d.Root()
	notFound := func(s string) bool { return strings.Contains(strings.ToLower(s), "not found") }
	if notFound(d.TextAt(root, "message")) {
		return true
	}
	if errs := d.Get(root, "errors"); errs != canon.None && d.Kind(errs) == canon.Array {
		for e := d.First(errs); e != canon.None; e = d.Next(e) {
			if notFound(d.TextAt(e, "message")) {
				return true
			}
		}
	}
	return false
}

// redactURLError keeps the error's cause without the URL, which may name
// internal hosts in logs shared with others.
func redactURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// deliverStatus signs ecommpay's answer like a callback and hands it to
// the app through the callback route. It reports whether the app has it.
func (rc *Reconciler) deliverStatus(ctx context.Context, projectID string, key *canon.Key, paymentID string, ans statusAnswer) bool {
	log := rc.c.Logger
	body, err := signedStatusEvent(projectID, key, ans.body, rc.c.Limits)
	if err != nil {
		log.Error("reconcile: the status answer cannot be delivered", zap.String("payment_id", paymentID), zap.Error(err))
		return false
	}
	ev, err := rc.c.Deliver(ctx, body)
	if err != nil {
		log.Error("reconcile: the status event did not reach the callback handler", zap.String("payment_id", paymentID), zap.Error(err))
		return false
	}
	if ev.Result != "forwarded" && ev.Result != "duplicate" {
		log.Warn("reconcile: the app did not take the status event; trying again later", zap.String("project_id", projectID),
			zap.String("payment_id", paymentID), zap.String("payment_status", ans.paymentStatus),
			zap.String("result", ev.Result), zap.Int("app_status", ev.AppStatus))
		return false
	}
	final := journal.IsFinalStatus(ans.paymentStatus)
	if ev.Result == "forwarded" {
		rc.c.Metrics.Delivered(final)
	}
	log.Info("reconciled a payment whose callback did not come", zap.String("project_id", projectID),
		zap.String("payment_id", paymentID), zap.String("payment_status", ans.paymentStatus),
		zap.Bool("final", final), zap.String("event_key", ev.EventKey), zap.String("result", ev.Result))
	return true
}

// signedStatusEvent is the body the app receives for a status answer: the
// answer as ecommpay sent it (number literals kept), with the project's id
// and a top-level signature made with the project's signing key, as on a
// callback.
func signedStatusEvent(projectID string, key *canon.Key, answer []byte, lim canon.Limits) ([]byte, error) {
	d, err := canon.Parse(answer, lim)
	if err != nil {
		return nil, err
	}
	defer d.Release()
	root := d.Root()
	if d.Kind(root) != canon.Object {
		return nil, errors.New("the answer is not a JSON object")
	}
	d.Delete(root, "signature")
	if g := d.Get(root, "general"); g != canon.None && d.Kind(g) == canon.Object {
		d.Delete(g, "signature")
	}
	if pid := d.Get(root, "project_id"); pid == canon.None || d.Text(pid) != projectID {
		d.SetProjectID(root, projectID)
	}
	key.SignCallback(d, root)
	return d.AppendJSON(make([]byte, 0, len(answer)+128)), nil
}
