package ecommpay

import (
	"context"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/canon"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/store"
	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// Reconciliation asks ecommpay for the status of payments whose final
// callback is overdue, and hands a status the app has not had to the app
// through the callback route, as if it were a callback. The journal says
// which payments started and what the app was sent; the de-dup store's
// claims keep a cluster to one question per payment at a time.

// Reconciliation defaults.
const (
	DefaultStatusURL = "https://api.ecommpay.com/v2/payment/status"
	// DefaultReconcileAfter applies to payments of other methods.
	DefaultReconcileAfter  = 30 * time.Minute
	DefaultReconcileEvery  = time.Minute
	DefaultReconcileGiveUp = 24 * time.Hour
	// maxReconcileEvery caps the backoff between two status requests.
	maxReconcileEvery = time.Hour
	// statusRequestGap is the process-wide least gap between two status
	// requests, whatever the number of payments.
	statusRequestGap = 200 * time.Millisecond
	// reconcileScanLimit bounds the open payments looked at per scan.
	reconcileScanLimit = 1000
	statusTimeout      = 15 * time.Second
)

// reconcileFloor is the least delay before asking ecommpay about a
// payment: ecommpay asks not to query status sooner than 10 s after the
// payment request. Tests lower it.
var reconcileFloor = 10 * time.Second

// reconcileFloorEnv lowers the floor. It exists for the integration tests,
// which run Caddy as a process; do not set it in production.
const reconcileFloorEnv = "ECOMMPAY_TEST_RECONCILE_FLOOR"

// methodAfter is how long a method's payments may take before ecommpay
// declines them itself: MBWay's limit, Alipay's and WeChat's lifetimes.
var methodAfter = []struct {
	name  string
	after time.Duration
}{
	{"mbway", 4 * time.Minute},
	{"alipay", 30 * time.Minute},
	{"wechat", 2 * time.Hour},
	{"weixin", 2 * time.Hour},
}

// Results of status_request journal entries, and their metric labels.
const (
	statusFound      = "found"      // ecommpay knows the payment
	statusNotFound   = "not_found"  // it does not (a Payment Page never opened)
	statusError      = "error"      // no usable answer; asked again later
	statusMismatch   = "mismatch"   // an answer about another payment or project; not delivered
	statusAbandoned  = "abandoned"  // not found until give_up
	statusUnresolved = "unresolved" // no final status until give_up
)

var (
	statusRequestsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "ecommpay", Name: "reconcile_requests_total",
		Help: "Status requests to ecommpay by reconciliation, by outcome (found, not_found, mismatch, error).",
	}, []string{"outcome"})
	reconciledTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "ecommpay", Name: "reconcile_delivered_total",
		Help: "Payment statuses reconciliation delivered to the app, by whether the status was final.",
	}, []string{"final"})
	unresolvedTotal = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "ecommpay", Name: "reconcile_unresolved_total",
		Help: "Payments reconciliation gave up on without a final status.",
	})
	// Abandoned payments are counted apart: a customer who never opened
	// the Payment Page is no fault.
	abandonedTotal = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "ecommpay", Name: "reconcile_abandoned_total",
		Help: "Payments ecommpay never knew of until give_up: Payment Pages never opened.",
	})
)

// ReconcileConfig turns on reconciliation in callback mode.
type ReconcileConfig struct {
	// After is how long after the signing request a final status is
	// overdue. Default: by the payment's method, MBWay 4m, Alipay 30m,
	// WeChat 2h, others 30m. Never below 10s.
	After caddy.Duration `json:"after,omitempty"`
	// Every is the wait between two status requests for one payment; it
	// doubles after each request, up to 1h. Default: 1m. Never below 10s.
	Every caddy.Duration `json:"every,omitempty"`
	// GiveUp is how long after the signing request reconciliation stops
	// asking; the payment is then marked unresolved, or abandoned if
	// ecommpay never knew it. Default: 24h.
	GiveUp caddy.Duration `json:"give_up,omitempty"`
	// StatusURL is ecommpay's status endpoint. Its answers are signed for
	// the app, so it must be ecommpay. Default:
	// https://api.ecommpay.com/v2/payment/status.
	StatusURL string `json:"status_url,omitempty"`
}

// pacer spaces status requests process-wide.
type pacer struct {
	mu   sync.Mutex
	next time.Time
	gap  time.Duration
}

var statusPacer = &pacer{gap: statusRequestGap}

func (p *pacer) wait(ctx context.Context) error {
	p.mu.Lock()
	now := time.Now()
	at := p.next
	if at.Before(now) {
		at = now
	}
	p.next = at.Add(p.gap)
	p.mu.Unlock()
	t := time.NewTimer(time.Until(at))
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// reconciler is one callback handler's reconciliation loop.
type reconciler struct {
	h                    *Handler
	after, every, giveUp time.Duration // after 0: by method
	floor                time.Duration
	statusURL            string
	client               *http.Client
	logger               *zap.Logger
	// deliver hands a status body to the app; h.dispatch unless a test
	// replaces it.
	deliver func(context.Context, *dispatched) error
	now     func() time.Time

	cancel context.CancelFunc
	done   chan struct{}

	mu   sync.Mutex
	seen map[string]*recState // by payKey
}

// recState is what the loop remembers of a payment between scans, so
// that it does not read its timeline on every scan.
type recState struct {
	next time.Time // not looked at again before
	done bool      // nothing more to do
	scan int       // the last scan that listed it
}

// provisionReconcile sets up reconciliation; start runs it.
func (h *Handler) provisionReconcile() error {
	c := h.Reconcile
	if c == nil {
		return nil
	}
	if h.Journal.Off {
		return errors.New("reconcile needs the journal: it tells which payments started and what the app was sent")
	}
	floor := reconcileFloor
	if v := os.Getenv(reconcileFloorEnv); v != "" {
		if d, err := time.ParseDuration(v); err == nil && d > 0 {
			floor = d
			h.logger.Warn("reconcile: the 10s floor is lowered by a test-only setting", zap.String("env", reconcileFloorEnv), zap.Duration("floor", d))
		}
	}
	rc := &reconciler{
		h: h, floor: floor, logger: h.logger.Named("reconcile"),
		after: time.Duration(c.After), every: time.Duration(c.Every), giveUp: time.Duration(c.GiveUp),
		statusURL: c.StatusURL, now: time.Now, seen: map[string]*recState{},
	}
	if rc.after != 0 && rc.after < floor {
		return fmt.Errorf("reconcile after: ecommpay asks not to query status sooner than %s after the payment request", floor)
	}
	if rc.every == 0 {
		rc.every = DefaultReconcileEvery
	}
	if rc.every < floor {
		return fmt.Errorf("reconcile every: at least %s", floor)
	}
	if rc.giveUp == 0 {
		rc.giveUp = DefaultReconcileGiveUp
	}
	if rc.after != 0 && rc.giveUp <= rc.after {
		return errors.New("reconcile give_up must be longer than after")
	}
	if rc.statusURL == "" {
		rc.statusURL = DefaultStatusURL
	}
	u, err := parseBaseURL(rc.statusURL)
	if err != nil {
		return fmt.Errorf("reconcile status_url: %w", err)
	}
	if u.Scheme != "https" && !loopbackHost(u.Hostname()) {
		// Status answers are signed for the app: only ecommpay itself, or a
		// stand-in on this machine, may give them.
		return fmt.Errorf("reconcile status_url %q: must be https, or a loopback address for a local stand-in", rc.statusURL)
	}
	rc.client = &http.Client{
		Timeout: statusTimeout,
		Transport: &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			TLSHandshakeTimeout:   5 * time.Second,
			ResponseHeaderTimeout: statusTimeout,
			IdleConnTimeout:       90 * time.Second,
			MaxIdleConnsPerHost:   2,
		},
		// A redirect would carry the signed request elsewhere.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	rc.deliver = h.dispatch
	h.reconciler = rc
	return nil
}

// start runs the loop until stop; it does nothing without reconcile.
func (rc *reconciler) start() {
	if rc == nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	rc.cancel, rc.done = cancel, make(chan struct{})
	go func() {
		defer close(rc.done)
		rc.run(ctx)
	}()
}

// stop ends the loop. A delivery to the app in progress finishes on its
// own (it is bounded by forward_timeout); stop does not wait for it long.
func (rc *reconciler) stop() {
	if rc == nil || rc.cancel == nil {
		return
	}
	rc.cancel()
	defer rc.client.CloseIdleConnections()
	select {
	case <-rc.done:
	case <-time.After(2 * time.Second):
		rc.logger.Warn("reconcile: stopped waiting for a delivery in progress")
	}
}

// tick is the period of scans: often enough to keep every's pace.
func (rc *reconciler) tick() time.Duration {
	return min(max(min(rc.every, rc.minAfter())/4, 100*time.Millisecond), 15*time.Second)
}

func (rc *reconciler) run(ctx context.Context) {
	t := time.NewTicker(rc.tick())
	defer t.Stop()
	for n := 1; ; n++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rc.scan(ctx, n)
	}
}

// minAfter is the least after of any payment.
func (rc *reconciler) minAfter() time.Duration {
	if rc.after != 0 {
		return rc.after
	}
	least := DefaultReconcileAfter
	for _, m := range methodAfter {
		least = min(least, m.after)
	}
	return max(least, rc.floor)
}

// afterFor is when a payment of the method is overdue.
func (rc *reconciler) afterFor(method string) time.Duration {
	if rc.after != 0 {
		return rc.after
	}
	method = strings.ToLower(method)
	for _, m := range methodAfter {
		if strings.Contains(method, m.name) {
			return m.after
		}
	}
	return DefaultReconcileAfter
}

// interval is the wait after the n-th status request (n >= 1): every,
// doubling, up to an hour.
func (rc *reconciler) interval(n int) time.Duration {
	d := rc.every
	for i := 1; i < n && d < maxReconcileEvery; i++ {
		d *= 2
	}
	return max(min(d, maxReconcileEvery), rc.every)
}

// jitter spreads requests that fell due together by up to a tenth.
func jitter(d time.Duration) time.Duration {
	if d <= 10 {
		return d
	}
	return d + mrand.N(d/10)
}

// scan looks at every payment that may need a status request: open
// payments old enough, and payments whose status event the app refused.
func (rc *reconciler) scan(ctx context.Context, n int) {
	now := rc.now()
	j := rc.h.journal
	cut := now.Add(-rc.minAfter())
	open, err := j.OpenPayments(ctx, cut, reconcileScanLimit)
	if err != nil {
		rc.logger.Error("reconcile: listing open payments failed", zap.Error(err))
		return
	}
	if len(open) == reconcileScanLimit {
		// The journal keeps listing abandoned and unresolved payments,
		// oldest first: look at the recent ones too, so that old ones do
		// not crowd them out.
		recent, err := j.Payments(ctx, paymentFilter{Open: true, Since: now.Add(-rc.maxGiveUp()), Limit: reconcileScanLimit})
		if err != nil {
			rc.logger.Error("reconcile: listing recent payments failed", zap.Error(err))
		}
		for _, v := range recent {
			if !v.Signed.IsZero() && v.Signed.Before(cut) {
				open = append(open, v)
			}
		}
	}
	// A status event the app refused made the payment's view final; it is
	// asked about and delivered again until the app takes it.
	refused, err := j.Events(ctx, eventFilter{Kind: kindStatus, Result: "app_error", Since: now.Add(-rc.maxGiveUp()), Limit: reconcileScanLimit})
	if err != nil {
		rc.logger.Error("reconcile: listing refused status events failed", zap.Error(err))
	}
	type ref struct{ project, payment string }
	var list []ref
	for _, v := range open {
		list = append(list, ref{v.ProjectID, v.PaymentID})
	}
	for _, e := range refused {
		list = append(list, ref{e.ProjectID, e.PaymentID})
	}
	for _, p := range list {
		if ctx.Err() != nil {
			return
		}
		if rc.h.lookupProject(p.project) == nil {
			continue // another handler's project
		}
		rc.consider(ctx, p.project, p.payment, n)
	}
	// Forget payments no longer listed.
	rc.mu.Lock()
	for k, st := range rc.seen {
		if st.scan != n {
			delete(rc.seen, k)
		}
	}
	rc.mu.Unlock()
}

func (rc *reconciler) maxGiveUp() time.Duration { return rc.giveUp + maxReconcileEvery }

// paymentFacts is what a payment's timeline says to reconciliation.
type paymentFacts struct {
	started   time.Time // the accepted start; zero when none
	method    string
	asked     int       // status requests made
	lastAsked time.Time // the last one
	closed    bool      // abandoned or unresolved
	settled   bool      // the app has a final status
	sent      map[string]bool
}

// factsOf reads a timeline. A payment starts with a signed Payment Page
// URL or a Gate sale that ecommpay accepted.
func factsOf(tl timeline) paymentFacts {
	f := paymentFacts{sent: map[string]bool{}}
	for _, e := range tl.Events {
		switch e.Kind {
		case kindPaymentPage, kindGate:
			start := (e.Kind == kindPaymentPage && e.Result == "signed") ||
				(e.EcommpayAnswer() == http.StatusOK && strings.HasSuffix(e.Path, "/sale"))
			if start && f.started.IsZero() {
				f.started, f.method = e.Time, e.Method
			}
		case kindStatusRequest:
			switch e.Result {
			case statusAbandoned, statusUnresolved:
				f.closed = true
			default:
				f.asked++
				f.lastAsked = e.Time
			}
		case kindCallback, kindStatus, kindReplay:
			if e.Verified && (e.Result == "forwarded" || e.Result == "duplicate") && e.PaymentStatus != "" {
				f.sent[e.PaymentStatus] = true
				// Partial refunds and reversals follow a payment that
				// completed: nothing is overdue.
				if isFinalStatus(e.PaymentStatus) || strings.HasPrefix(e.PaymentStatus, "partially ") {
					f.settled = true
				}
			}
		}
	}
	return f
}

func (rc *reconciler) state(key string, n int) *recState {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	st := rc.seen[key]
	if st == nil {
		st = &recState{}
		rc.seen[key] = st
	}
	st.scan = n
	return st
}

// consider asks about one payment if it is due, and delivers what the
// answer says that the app has not had.
func (rc *reconciler) consider(ctx context.Context, projectID, paymentID string, scan int) {
	st := rc.state(payKey(projectID, paymentID), scan)
	now := rc.now()
	if st.done || now.Before(st.next) {
		return
	}
	tl, err := rc.h.journal.Timeline(ctx, projectID, paymentID)
	if err != nil {
		if !errors.Is(err, errNotFound) {
			rc.logger.Error("reconcile: reading a payment's timeline failed", zap.String("payment_id", paymentID), zap.Error(err))
		}
		st.next = now.Add(rc.every)
		return
	}
	f := factsOf(tl)
	if f.started.IsZero() || f.closed || f.settled {
		st.done = true
		return
	}
	due := f.started.Add(max(rc.afterFor(f.method), rc.floor))
	if f.asked > 0 {
		due = latest(due, f.lastAsked.Add(rc.interval(f.asked)))
	}
	if now.Before(due) {
		st.next = due
		return
	}
	wait := rc.interval(f.asked + 1)
	// One node asks per interval: the claim is left to expire, so a node
	// that dies mid-way is taken over when it does.
	if s := rc.h.store; s != nil {
		state, _, err := s.Claim(ctx, "reconcile:"+projectID+":"+paymentID, wait)
		if err != nil {
			rc.logger.Warn("reconcile: the store failed; asking later", zap.String("payment_id", paymentID), zap.Error(err))
			st.next = now.Add(rc.every)
			return
		}
		if state != store.Claimed {
			st.next = now.Add(jitter(rc.every))
			return
		}
	}
	if err := statusPacer.wait(ctx); err != nil {
		return
	}
	st.next = rc.now().Add(jitter(wait))
	p := rc.h.lookupProject(projectID)
	ans := rc.ask(ctx, p, paymentID)
	if ctx.Err() != nil && ans.result == statusError {
		return // stopping; the question is asked again by the next config
	}
	statusRequestsTotal.WithLabelValues(ans.result).Inc()
	// app_status keeps ecommpay's answer too, as status requests always had it.
	req := journalEvent{Kind: kindStatusRequest, ProjectID: projectID, PaymentID: paymentID, Result: ans.result,
		AppStatus: ans.httpStatus, EcommpayStatus: ans.httpStatus, PaymentStatus: ans.paymentStatus, Method: f.method}
	if ans.err != nil {
		req.Reason = truncateReason(ans.err.Error())
	}
	if ans.result == statusMismatch {
		req.PaymentStatus = "" // another payment's
	}
	rc.record(ctx, req)
	giveUp := !rc.now().Before(f.started.Add(rc.giveUp))
	switch ans.result {
	case statusError:
		rc.logger.Warn("reconcile: status request failed; asking again later", zap.String("project_id", projectID),
			zap.String("payment_id", paymentID), zap.Int("status", ans.httpStatus), zap.Error(ans.err), zap.Duration("retry_in", wait))
	case statusMismatch:
		rc.logger.Error("reconcile: the status answer is about another payment; nothing was delivered", zap.String("project_id", projectID),
			zap.String("payment_id", paymentID), zap.Error(ans.err), zap.Duration("retry_in", wait))
	case statusFound:
		if !f.sent[ans.paymentStatus] {
			if rc.deliverStatus(ctx, p, paymentID, ans) {
				f.sent[ans.paymentStatus] = true
			}
		}
		if f.sent[ans.paymentStatus] && isFinalStatus(ans.paymentStatus) {
			st.done = true
			return
		}
	}
	if giveUp && !st.done {
		result := statusUnresolved
		if ans.result == statusNotFound {
			result = statusAbandoned // the customer never paid
		}
		rc.close(ctx, projectID, paymentID, result, f.method)
		st.done = true
	}
}

// truncateReason bounds a reason kept in the journal.
func truncateReason(s string) string {
	const maxReason = 200
	if len(s) <= maxReason {
		return s
	}
	cut := maxReason
	for cut > 0 && s[cut]&0xC0 == 0x80 { // do not split a UTF-8 sequence
		cut--
	}
	return s[:cut] + "…"
}

func latest(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// close marks a payment given up on, in the journal and the metrics.
func (rc *reconciler) close(ctx context.Context, projectID, paymentID, result, method string) {
	if result == statusAbandoned {
		abandonedTotal.Inc()
	} else {
		unresolvedTotal.Inc()
	}
	rc.record(ctx, journalEvent{Kind: kindStatusRequest, ProjectID: projectID, PaymentID: paymentID, Result: result, Method: method})
	rc.logger.Warn("reconcile: gave up on a payment without a final status", zap.String("project_id", projectID),
		zap.String("payment_id", paymentID), zap.String("result", result))
}

func (rc *reconciler) record(ctx context.Context, e journalEvent) {
	e.Verified = true
	e.Time = rc.now()
	if err := rc.h.journal.Record(context.WithoutCancel(ctx), e); err != nil {
		rc.logger.Error("reconcile: could not record in the journal", zap.String("payment_id", e.PaymentID), zap.Error(err))
	}
}

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
func statusBody(p *project, paymentID string) []byte {
	d, err := canon.Parse([]byte(`{"general":{}}`), canon.Limits{})
	if err != nil {
		panic(err)
	}
	defer d.Release()
	general := d.Get(d.Root(), "general")
	d.SetProjectID(general, p.id)
	d.Set(general, "payment_id", canon.String, paymentID)
	p.keys[0].SignGate(d, general)
	return d.AppendJSON(nil)
}

// ask makes one status request.
func (rc *reconciler) ask(ctx context.Context, p *project, paymentID string) statusAnswer {
	ctx, cancel := context.WithTimeout(ctx, statusTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, rc.statusURL, strings.NewReader(string(statusBody(p, paymentID))))
	if err != nil {
		return statusAnswer{result: statusError, err: err}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	resp, err := rc.client.Do(req)
	if err != nil {
		return statusAnswer{result: statusError, err: redactURLError(err)}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, rc.h.MaxBody+1))
	ans := statusAnswer{result: statusError, httpStatus: resp.StatusCode, body: body}
	switch {
	case err != nil:
		ans.err = err
	case int64(len(body)) > rc.h.MaxBody:
		ans.err = errors.New("the answer is larger than max_body")
	default:
		ans.classify(rc.h.limits, p.id, paymentID)
	}
	return ans
}

// loopbackHost reports whether host is localhost or a loopback address.
func loopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.Unmap().IsLoopback()
}

// classify reads an answer: 200 with payment.status is found, if it is
// about the payment asked for (payment.id, and project_id where it says
// one), else a mismatch; 404, or an error answer that says not found, is
// not found; the rest are errors.
func (a *statusAnswer) classify(lim canon.Limits, projectID, paymentID string) {
	a.result = statusError
	d, err := canon.Parse(a.body, lim)
	if err != nil || d.Kind(d.Root()) != canon.Object {
		if err == nil {
			d.Release()
		}
		a.err = fmt.Errorf("HTTP %d with a body that is not a JSON object", a.httpStatus)
		if a.httpStatus == http.StatusNotFound {
			a.result, a.err = statusNotFound, nil
		}
		return
	}
	defer d.Release()
	root := d.Root()
	a.paymentStatus = textAt(d, root, "payment", "status")
	switch {
	case a.httpStatus == http.StatusOK && a.paymentStatus != "":
		a.result = statusFound
		if pid, about := answerProject(d), textAt(d, root, "payment", "id"); about != paymentID || (pid != "" && pid != projectID) {
			a.result = statusMismatch
			a.err = fmt.Errorf("the answer is about payment %.64q of project %.32q, not the one asked for", about, pid)
		}
	case a.httpStatus >= 500:
		a.err = fmt.Errorf("HTTP %d", a.httpStatus)
	case a.httpStatus == http.StatusNotFound || saysNotFound(d):
		a.result = statusNotFound
	default:
		a.err = fmt.Errorf("HTTP %d: %.200s", a.httpStatus, textAt(d, root, "message"))
	}
}

// answerProject is the project_id a status answer names, top-level or in
// general, or "" when it names none. One that names two gives "|", which
// is no project's id.
func answerProject(d *canon.Doc) string {
	top, general := textAt(d, d.Root(), "project_id"), textAt(d, d.Root(), "general", "project_id")
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
	if notFound(textAt(d, root, "message")) {
		return true
	}
	if errs := d.Get(root, "errors"); errs != canon.None && d.Kind(errs) == canon.Array {
		for e := d.First(errs); e != canon.None; e = d.Next(e) {
			if notFound(textAt(d, e, "message")) {
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
func (rc *reconciler) deliverStatus(ctx context.Context, p *project, paymentID string, ans statusAnswer) bool {
	body, err := signedStatusEvent(p, ans.body, rc.h.limits)
	if err != nil {
		rc.logger.Error("reconcile: the status answer cannot be delivered", zap.String("payment_id", paymentID), zap.Error(err))
		return false
	}
	dsp := &dispatched{kind: kindStatus, body: body}
	if err := rc.deliver(ctx, dsp); err != nil {
		rc.logger.Error("reconcile: the status event did not reach the callback handler", zap.String("payment_id", paymentID), zap.Error(err))
		return false
	}
	ok := dsp.ev.Result == "forwarded" || dsp.ev.Result == "duplicate"
	if !ok {
		rc.logger.Warn("reconcile: the app did not take the status event; trying again later", zap.String("project_id", p.id),
			zap.String("payment_id", paymentID), zap.String("payment_status", ans.paymentStatus),
			zap.String("result", dsp.ev.Result), zap.Int("app_status", dsp.ev.AppStatus))
		return false
	}
	final := isFinalStatus(ans.paymentStatus)
	if dsp.ev.Result == "forwarded" {
		reconciledTotal.WithLabelValues(strconv.FormatBool(final)).Inc()
	}
	rc.logger.Info("reconciled a payment whose callback did not come", zap.String("project_id", p.id),
		zap.String("payment_id", paymentID), zap.String("payment_status", ans.paymentStatus),
		zap.Bool("final", final), zap.String("event_key", dsp.ev.EventKey), zap.String("result", dsp.ev.Result))
	return true
}

// signedStatusEvent is the body the app receives for a status answer: the
// answer as ecommpay sent it (number literals kept), with the project's id
// and a top-level signature made with its first secret, as on a callback.
func signedStatusEvent(p *project, answer []byte, lim canon.Limits) ([]byte, error) {
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
	if pid := d.Get(root, "project_id"); pid == canon.None || d.Text(pid) != p.id {
		d.SetProjectID(root, p.id)
	}
	p.keys[0].SignCallback(d, root)
	return d.AppendJSON(make([]byte, 0, len(answer)+128)), nil
}
