// Package reconcile owns reconciliation: it asks ecommpay for the status
// of payments whose final callback is overdue, and hands a status the app
// has not had to the app, signed like a callback. It owns the pacing of
// status requests, the scans of open payments, the per-method delays,
// the backoff and the give-up, the status request itself, the reading of
// ecommpay's answer (including an answer about another payment or
// project), the status_request journal entries and what it reports to
// the metrics, and the checks of its settings: ecommpay's 10 s floor for
// its own endpoint, 100 ms for a status endpoint on this machine.
//
// It is given what it needs (Config): the journal, which says which
// payments started and what the app was sent; the de-dup store, whose
// claims keep a cluster to one question per payment at a time; the
// projects' keys; a function that delivers a status event to the app; a
// logger; metric hooks; and a clock. It knows nothing of Caddy or
// Prometheus.
package reconcile

import (
	"context"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/canon"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/journal"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/store"
	"go.uber.org/zap"
)

// Defaults of Settings.
const (
	DefaultStatusURL = "https://api.ecommpay.com/v2/payment/status"
	// defaultAfter applies to payments of other methods.
	defaultAfter  = 30 * time.Minute
	defaultEvery  = time.Minute
	defaultGiveUp = 24 * time.Hour
)

const (
	// ecommpayFloor is the least delay before asking ecommpay about a
	// payment, and the least every: ecommpay asks not to query status
	// sooner than 10 s after the payment request.
	ecommpayFloor = 10 * time.Second
	// loopbackFloor replaces it for a status_url on this machine (the
	// sandbox, a local stand-in), which is not ecommpay's endpoint.
	loopbackFloor = 100 * time.Millisecond

	// maxEvery caps the backoff between two status requests.
	maxEvery = time.Hour
	// requestGap is the process-wide least gap between two status
	// requests, whatever the number of payments.
	requestGap = 200 * time.Millisecond
	// scanLimit bounds the open payments looked at per scan.
	scanLimit     = 1000
	statusTimeout = 15 * time.Second
)

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
	ResultFound      = "found"      // ecommpay knows the payment
	ResultNotFound   = "not_found"  // it does not (a Payment Page never opened)
	ResultError      = "error"      // no usable answer; asked again later
	ResultMismatch   = "mismatch"   // an answer about another payment or project; not delivered
	ResultAbandoned  = "abandoned"  // not found until give_up
	ResultUnresolved = "unresolved" // no final status until give_up
)

// Settings are the operator's choices.
type Settings struct {
	// After is how long after the signing request a final status is
	// overdue; 0: by the payment's method.
	After time.Duration
	// Every is the wait between two status requests for one payment,
	// doubling after each; 0: defaultEvery (a minute).
	Every time.Duration
	// GiveUp is how long after the signing request asking stops; 0:
	// defaultGiveUp (a day).
	GiveUp time.Duration
	// StatusURL is the status endpoint; nil: DefaultStatusURL.
	StatusURL *url.URL
	// Floor is the least After and Every, and the least delay before a
	// payment is asked about. 0: ecommpayFloor (10 s), or loopbackFloor when
	// StatusURL is on this machine. Tests set it.
	Floor time.Duration
}

// Check applies the defaults and reports a setting that cannot be used.
func (s Settings) Check() (Settings, error) {
	if s.StatusURL == nil {
		s.StatusURL, _ = url.Parse(DefaultStatusURL)
	}
	loopback := loopbackHost(s.StatusURL.Hostname())
	if s.StatusURL.Scheme != "https" && !loopback {
		// Status answers are signed for the app: only ecommpay itself, or a
		// stand-in on this machine, may give them.
		return s, fmt.Errorf("reconcile status_url %q: must be https, or a loopback address for a local stand-in", s.StatusURL)
	}
	if s.Floor == 0 {
		s.Floor = ecommpayFloor
		if loopback {
			s.Floor = loopbackFloor
		}
	}
	if s.After != 0 && s.After < s.Floor {
		return s, fmt.Errorf("reconcile after: ecommpay asks not to query status sooner than %s after the payment request", s.Floor)
	}
	if s.Every == 0 {
		s.Every = defaultEvery
	}
	if s.Every < s.Floor {
		return s, fmt.Errorf("reconcile every: at least %s", s.Floor)
	}
	if s.GiveUp == 0 {
		s.GiveUp = defaultGiveUp
	}
	if s.After != 0 && s.GiveUp <= s.After {
		return s, errors.New("reconcile give_up must be longer than after")
	}
	return s, nil
}

// loopbackHost reports whether host is localhost or a loopback address.
func loopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.Unmap().IsLoopback()
}

// Deliver hands a signed status event to the app the way a callback
// reaches it, and returns the journal entry the delivery made (Result
// "forwarded" or "duplicate" when the app has it). An error means the
// event did not reach the callback handler.
type Deliver func(ctx context.Context, body []byte) (journal.Event, error)

// Metrics are the counters reconciliation moves.
type Metrics interface {
	// Asked counts a status request by its result (ResultFound,
	// ResultNotFound, ResultMismatch, ResultError).
	Asked(result string)
	// Delivered counts a status the app took for the first time.
	Delivered(final bool)
	// GaveUp counts a payment given up on (ResultAbandoned or
	// ResultUnresolved).
	GaveUp(result string)
}

// Config is what a Reconciler is given.
type Config struct {
	Settings
	Journal journal.Journal
	// Store, when set, is claimed before each status request, so that one
	// node of a cluster asks per interval.
	Store store.Store
	// Key is the signing key of a project this reconciler serves, or nil
	// for any other project.
	Key     func(projectID string) *canon.Key
	Deliver Deliver
	// Limits bound the parsing of ecommpay's answers; MaxBody (required)
	// their size.
	Limits  canon.Limits
	MaxBody int64
	Logger  *zap.Logger      // nil: none
	Metrics Metrics          // nil: none
	Now     func() time.Time // nil: time.Now
	// Client makes the status requests; nil: one that follows no
	// redirects, with this package's timeouts.
	Client *http.Client
}

// pacer spaces status requests process-wide.
type pacer struct {
	mu   sync.Mutex
	next time.Time
	gap  time.Duration
}

var statusPacer = &pacer{gap: requestGap}

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

// Reconciler is one callback handler's reconciliation loop.
type Reconciler struct {
	c Config

	cancel context.CancelFunc
	done   chan struct{}

	mu   sync.Mutex
	seen map[string]*payState // by project and payment
}

// payState is what the loop remembers of a payment between scans, so
// that it does not read its timeline on every scan.
type payState struct {
	next time.Time // not looked at again before
	done bool      // nothing more to do
	scan int       // the last scan that listed it
}

// New checks c's settings and returns a reconciler that Start runs.
func New(c Config) (*Reconciler, error) {
	s, err := c.Settings.Check()
	if err != nil {
		return nil, err
	}
	c.Settings = s
	if c.Journal == nil || c.Key == nil || c.Deliver == nil || c.MaxBody <= 0 {
		return nil, errors.New("reconcile: a journal, the projects' keys, a deliver function and a body bound are required")
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	if c.Metrics == nil {
		c.Metrics = noMetrics{}
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Client == nil {
		c.Client = &http.Client{
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
	}
	return &Reconciler{c: c, seen: map[string]*payState{}}, nil
}

type noMetrics struct{}

func (noMetrics) Asked(string)   {}
func (noMetrics) Delivered(bool) {}
func (noMetrics) GaveUp(string)  {}

// Start runs the loop until Stop; it does nothing on a nil Reconciler.
func (rc *Reconciler) Start() {
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

// Stop ends the loop. A delivery to the app in progress finishes on its
// own (the deliver function bounds it); Stop does not wait for it long.
func (rc *Reconciler) Stop() {
	if rc == nil || rc.cancel == nil {
		return
	}
	rc.cancel()
	defer rc.c.Client.CloseIdleConnections()
	select {
	case <-rc.done:
	case <-time.After(2 * time.Second):
		rc.c.Logger.Warn("reconcile: stopped waiting for a delivery in progress")
	}
}

// Done is closed once a started loop has returned.
func (rc *Reconciler) Done() <-chan struct{} { return rc.done }

// tick is the period of scans: often enough to keep every's pace.
func (rc *Reconciler) tick() time.Duration {
	return min(max(min(rc.c.Every, rc.minAfter())/4, 100*time.Millisecond), 15*time.Second)
}

func (rc *Reconciler) run(ctx context.Context) {
	t := time.NewTicker(rc.tick())
	defer t.Stop()
	for n := 1; ; n++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rc.Scan(ctx, n)
	}
}

// minAfter is the least after of any payment.
func (rc *Reconciler) minAfter() time.Duration {
	if rc.c.After != 0 {
		return rc.c.After
	}
	least := defaultAfter
	for _, m := range methodAfter {
		least = min(least, m.after)
	}
	return max(least, rc.c.Floor)
}

// afterFor is when a payment of the method is overdue.
func (rc *Reconciler) afterFor(method string) time.Duration {
	if rc.c.After != 0 {
		return rc.c.After
	}
	method = strings.ToLower(method)
	for _, m := range methodAfter {
		if strings.Contains(method, m.name) {
			return m.after
		}
	}
	return defaultAfter
}

// interval is the wait after the n-th status request (n >= 1): every,
// doubling, up to an hour.
func (rc *Reconciler) interval(n int) time.Duration {
	d := rc.c.Every
	for i := 1; i < n && d < maxEvery; i++ {
		d *= 2
	}
	return max(min(d, maxEvery), rc.c.Every)
}

// jitter spreads requests that fell due together by up to a tenth.
func jitter(d time.Duration) time.Duration {
	if d <= 10 {
		return d
	}
	return d + mrand.N(d/10)
}

// Scan is one pass of the loop, numbered n (each pass a new number): it
// looks at every payment that may need a status request: open payments
// old enough, and payments whose status event the app refused. Start
// runs it periodically; tests call it with a clock they move.
func (rc *Reconciler) Scan(ctx context.Context, n int) {
	now := rc.c.Now()
	j := rc.c.Journal
	cut := now.Add(-rc.minAfter())
	open, err := j.OpenPayments(ctx, cut, scanLimit)
	if err != nil {
		rc.c.Logger.Error("reconcile: listing open payments failed", zap.Error(err))
		return
	}
	if len(open) == scanLimit {
		// The journal keeps listing abandoned and unresolved payments,
		// oldest first: look at the recent ones too, so that old ones do
		// not crowd them out.
		recent, err := j.Payments(ctx, journal.PaymentFilter{Open: true, Since: now.Add(-rc.maxGiveUp()), Limit: scanLimit})
		if err != nil {
			rc.c.Logger.Error("reconcile: listing recent payments failed", zap.Error(err))
		}
		for _, v := range recent {
			if !v.Signed.IsZero() && v.Signed.Before(cut) {
				open = append(open, v)
			}
		}
	}
	// A status event the app refused made the payment's view final; it is
	// asked about and delivered again until the app takes it.
	refused, err := j.Events(ctx, journal.EventFilter{Kind: journal.KindStatus, Result: "app_error", Since: now.Add(-rc.maxGiveUp()), Limit: scanLimit})
	if err != nil {
		rc.c.Logger.Error("reconcile: listing refused status events failed", zap.Error(err))
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
		if rc.c.Key(p.project) == nil {
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

func (rc *Reconciler) maxGiveUp() time.Duration { return rc.c.GiveUp + maxEvery }

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
func factsOf(tl journal.Timeline) paymentFacts {
	f := paymentFacts{sent: map[string]bool{}}
	for _, e := range tl.Events {
		switch e.Kind {
		case journal.KindPaymentPage, journal.KindGate:
			start := (e.Kind == journal.KindPaymentPage && e.Result == "signed") ||
				(e.EcommpayAnswer() == http.StatusOK && strings.HasSuffix(e.Path, "/sale"))
			if start && f.started.IsZero() {
				f.started, f.method = e.Time, e.Method
			}
		case journal.KindStatusRequest:
			switch e.Result {
			case ResultAbandoned, ResultUnresolved:
				f.closed = true
			default:
				f.asked++
				f.lastAsked = e.Time
			}
		case journal.KindCallback, journal.KindStatus, journal.KindReplay:
			if e.Verified && (e.Result == "forwarded" || e.Result == "duplicate") && e.PaymentStatus != "" {
				f.sent[e.PaymentStatus] = true
				// Partial refunds and reversals follow a payment that
				// completed: nothing is overdue.
				if journal.IsFinalStatus(e.PaymentStatus) || strings.HasPrefix(e.PaymentStatus, "partially ") {
					f.settled = true
				}
			}
		}
	}
	return f
}

func (rc *Reconciler) state(projectID, paymentID string, n int) *payState {
	key := projectID + "\x00" + paymentID
	rc.mu.Lock()
	defer rc.mu.Unlock()
	st := rc.seen[key]
	if st == nil {
		st = &payState{}
		rc.seen[key] = st
	}
	st.scan = n
	return st
}

// consider asks about one payment if it is due, and delivers what the
// answer says that the app has not had.
func (rc *Reconciler) consider(ctx context.Context, projectID, paymentID string, scan int) {
	st := rc.state(projectID, paymentID, scan)
	now := rc.c.Now()
	if st.done || now.Before(st.next) {
		return
	}
	tl, err := rc.c.Journal.Timeline(ctx, projectID, paymentID)
	if err != nil {
		if !errors.Is(err, journal.ErrNotFound) {
			rc.c.Logger.Error("reconcile: reading a payment's timeline failed", zap.String("payment_id", paymentID), zap.Error(err))
		}
		st.next = now.Add(rc.c.Every)
		return
	}
	f := factsOf(tl)
	if f.started.IsZero() || f.closed || f.settled {
		st.done = true
		return
	}
	due := f.started.Add(max(rc.afterFor(f.method), rc.c.Floor))
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
	if s := rc.c.Store; s != nil {
		state, _, err := s.Claim(ctx, "reconcile:"+projectID+":"+paymentID, wait)
		if err != nil {
			rc.c.Logger.Warn("reconcile: the store failed; asking later", zap.String("payment_id", paymentID), zap.Error(err))
			st.next = now.Add(rc.c.Every)
			return
		}
		if state != store.Claimed {
			st.next = now.Add(jitter(rc.c.Every))
			return
		}
	}
	if err := statusPacer.wait(ctx); err != nil {
		return
	}
	st.next = rc.c.Now().Add(jitter(wait))
	key := rc.c.Key(projectID)
	ans := rc.ask(ctx, projectID, key, paymentID)
	if ctx.Err() != nil && ans.result == ResultError {
		return // stopping; the question is asked again by the next config
	}
	rc.c.Metrics.Asked(ans.result)
	// app_status keeps ecommpay's answer too, as status requests always had it.
	req := journal.Event{Kind: journal.KindStatusRequest, ProjectID: projectID, PaymentID: paymentID, Result: ans.result,
		AppStatus: ans.httpStatus, EcommpayStatus: ans.httpStatus, PaymentStatus: ans.paymentStatus, Method: f.method}
	if ans.err != nil {
		req.Reason = journal.Truncate(ans.err.Error(), maxReason)
	}
	if ans.result == ResultMismatch {
		req.PaymentStatus = "" // another payment's
	}
	rc.record(ctx, req)
	giveUp := !rc.c.Now().Before(f.started.Add(rc.c.GiveUp))
	switch ans.result {
	case ResultError:
		rc.c.Logger.Warn("reconcile: status request failed; asking again later", zap.String("project_id", projectID),
			zap.String("payment_id", paymentID), zap.Int("status", ans.httpStatus), zap.Error(ans.err), zap.Duration("retry_in", wait))
	case ResultMismatch:
		rc.c.Logger.Error("reconcile: the status answer is about another payment; nothing was delivered", zap.String("project_id", projectID),
			zap.String("payment_id", paymentID), zap.Error(ans.err), zap.Duration("retry_in", wait))
	case ResultFound:
		if !f.sent[ans.paymentStatus] {
			if rc.deliverStatus(ctx, projectID, key, paymentID, ans) {
				f.sent[ans.paymentStatus] = true
			}
		}
		if f.sent[ans.paymentStatus] && journal.IsFinalStatus(ans.paymentStatus) {
			st.done = true
			return
		}
	}
	if giveUp && !st.done {
		result := ResultUnresolved
		if ans.result == ResultNotFound {
			result = ResultAbandoned // the customer never paid
		}
		rc.close(ctx, projectID, paymentID, result, f.method)
		st.done = true
	}
}

// maxReason bounds a reason kept in the journal.
const maxReason = 200

func latest(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// close marks a payment given up on, in the journal and the metrics.
func (rc *Reconciler) close(ctx context.Context, projectID, paymentID, result, method string) {
	rc.c.Metrics.GaveUp(result)
	rc.record(ctx, journal.Event{Kind: journal.KindStatusRequest, ProjectID: projectID, PaymentID: paymentID, Result: result, Method: method})
	rc.c.Logger.Warn("reconcile: gave up on a payment without a final status", zap.String("project_id", projectID),
		zap.String("payment_id", paymentID), zap.String("result", result))
}

func (rc *Reconciler) record(ctx context.Context, e journal.Event) {
	e.Verified = true
	e.Time = rc.c.Now()
	if err := rc.c.Journal.Record(context.WithoutCancel(ctx), e); err != nil {
		rc.c.Logger.Error("reconcile: could not record in the journal", zap.String("payment_id", e.PaymentID), zap.Error(err))
	}
}
