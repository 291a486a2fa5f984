// Package sandbox plays ecommpay on a loopback site, for development and
// tests: a Payment Page that checks signatures as ecommpay does and lets a
// person pay or decline, the Gate endpoints of the wallet methods (WeChat,
// Alipay, MBWay), refunds and payment status, and signed callbacks
// delivered and retried as ecommpay delivers them. Outcomes follow the
// rules of ecommpay's test projects: a purchase of 40000 or 40400 is
// declined, a refund of 50000 or 50500 is declined, anything else succeeds.
//
// It mints valid callbacks for the secrets it is given, so it must only
// ever hold a test project's secret and answer only its own machine; the
// caller guards who reaches the handler. It signs and verifies with the
// module's own signature implementation (internal/canon) unless given
// another (Config.Signer).
//
// Scenarios (scenarios.go) build the same callbacks without a sandbox, for
// "caddy ecommpay trigger".
package sandbox

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// Project is one test project the sandbox plays ecommpay for.
type Project struct {
	// ID is the project_id.
	ID string
	// Secret signs and verifies everything of the project.
	Secret string
}

// Config builds a Sandbox.
type Config struct {
	// Projects the sandbox knows; requests for others are refused.
	Projects []Project
	// CallbackURLs receive every callback. Gate's
	// general.merchant_callback_url is ignored: callbacks go only where
	// the configuration says.
	CallbackURLs []string
	// BaseURL is where browsers reach the sandbox, for the redirect steps
	// it sends in callbacks. Default: the address the request came in on.
	BaseURL string
	// Signer is the signature algorithm. Default: ModuleSigner.
	Signer Signer
	// QRPNG renders a QR payload as a PNG for the customer page; without
	// it the page shows the payload as text.
	QRPNG func(payload string) ([]byte, error)
	// Client sends callbacks. Default: a client with a 15 s timeout.
	Client *http.Client
	// Now is the clock. Default: time.Now.
	Now func() time.Time
	// Knobs tune timing and delivery; Configure changes them later.
	Knobs Knobs
	// UserAgent is sent with callbacks. Default: "ecommpay-sandbox/1".
	UserAgent string
}

// Knobs tune the sandbox's timing and delivery.
type Knobs struct {
	// PayAfter completes a pending payment by itself this long after its
	// intermediate callback, as if the customer paid (and a Payment Page
	// pays as soon as it is opened, with its forced method or card). 0
	// waits for someone to pay or decline it on the sandbox's pages.
	PayAfter time.Duration
	// FirstDelay delays the first callback of each flow.
	FirstDelay time.Duration
	// RefundDelay is the wait before a refund's callback. Default: 50ms.
	RefundDelay time.Duration
	// LateBy is how late the final callback of a payment marked "paid,
	// callback late" on the sandbox's pages comes. Default: 30s.
	LateBy time.Duration
	// MBWayLimit is how long an MBWay payment waits for the customer
	// before it is declined. Default: 4m, ecommpay's limit.
	MBWayLimit time.Duration
	// Copies sends each callback this many times at once to each URL, as
	// ecommpay sometimes does. Default: 1.
	Copies int
	// DropFinal drops every final sale callback: the status changes but
	// nothing is sent, as when ecommpay loses one.
	DropFinal bool
	// SignSecret, when set, signs callbacks instead of the project's
	// secret (a key rotation at ecommpay).
	SignSecret string
	// QRTimeout is the "QR Code Timeout" sent with WeChat QR codes, in
	// seconds. Default: "600".
	QRTimeout string
	// RetryScale divides ecommpay's retry schedule (6 × 10 s, then
	// 70 + 10·1.12^(n−4) s). Default: 100.
	RetryScale float64
	// RetryCap caps one retry wait. Default: 2s.
	RetryCap time.Duration
	// MaxAttempts bounds the attempts of one delivery. Default: 60.
	MaxAttempts int
	// RetryWindow bounds the time one delivery keeps retrying. Default: 60s.
	RetryWindow time.Duration
}

func (k Knobs) withDefaults() Knobs {
	if k.RefundDelay <= 0 {
		k.RefundDelay = 50 * time.Millisecond
	}
	if k.LateBy <= 0 {
		k.LateBy = 30 * time.Second
	}
	if k.MBWayLimit <= 0 {
		k.MBWayLimit = 4 * time.Minute
	}
	if k.Copies <= 0 {
		k.Copies = 1
	}
	if k.QRTimeout == "" {
		k.QRTimeout = "600"
	}
	if k.RetryScale <= 0 {
		k.RetryScale = 100
	}
	if k.RetryCap <= 0 {
		k.RetryCap = 2 * time.Second
	}
	if k.MaxAttempts <= 0 {
		k.MaxAttempts = 60
	}
	if k.RetryWindow <= 0 {
		k.RetryWindow = 60 * time.Second
	}
	return k
}

// Request is one request the sandbox received.
type Request struct {
	At        time.Time
	Method    string
	Path      string
	Query     url.Values
	Body      []byte
	SigOK     bool
	SigReason string
	Status    int
	Answer    string
}

// Payment is the sandbox's view of one payment.
type Payment struct {
	ID         string
	ProjectID  string
	Method     string // wechat, alipay, mbway, card; "" until chosen on the page
	Amount     int64
	Currency   string
	CustomerID string
	Source     string // "gate" or "payment_page"
	// Status is the payment status so far: "" while a Payment Page is open
	// and nothing was paid (ecommpay does not know such a payment).
	Status      string
	Refunded    int64
	QR          string // the QR payload sent in display_data (wechat)
	Redirect    string // the redirect URL sent in redirect_data
	SaleOpID    int64
	Created     time.Time
	Description string
	// Pending is set between the intermediate and the final callback.
	Pending bool
	// Page holds the Payment Page parameters (for the return URLs).
	Page map[string]string

	requestID string
}

// Callback is one callback body the sandbox produced.
type Callback struct {
	Seq       int
	Name      string // e.g. "sale intermediate"
	PaymentID string
	OpStatus  string
	PayStatus string
	OpType    string
	OpID      int64
	Body      []byte
	Dropped   bool // produced but never sent
}

// Identity names a callback by what a shop records of it.
func (c *Callback) Identity() string {
	return c.PaymentID + "|" + c.OpType + "|" + c.OpStatus + "|" + c.PayStatus
}

// Attempt is one try at delivering a callback.
type Attempt struct {
	At         time.Time
	Status     int
	Duplicate  bool
	RetryAfter string
	Err        string
	Answer     string
}

// Delivery is one callback sent to one URL, with its retries.
type Delivery struct {
	CB       *Callback
	URL      string
	Copy     int
	Attempts []Attempt
	Done     bool // answered exactly 200
	GaveUp   bool
}

// Sandbox is the fake ecommpay. Its zero value is not usable: call New.
type Sandbox struct {
	signer    Signer
	qrPNG     func(string) ([]byte, error)
	client    *http.Client
	now       func() time.Time
	userAgent string
	baseURL   string
	projects  map[string]string // id → secret
	only      string            // the single project's ID, if one
	handler   http.Handler

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu           sync.Mutex
	knobs        Knobs
	callbackURLs []string
	requests     []*Request
	payments     map[string]*Payment
	order        []string // payment IDs, oldest first
	callbacks    []*Callback
	deliveries   []*Delivery
	statusPay    map[string]any              // payment_id → the last payment object
	statusOps    map[string][]map[string]any // payment_id → its operations, latest state
	dropFinal    map[string]bool             // payment_id → its final sale callback is not sent
}

// New builds a Sandbox. Call Close to stop its deliveries.
func New(cfg Config) (*Sandbox, error) {
	if cfg.Signer.zero() {
		cfg.Signer = ModuleSigner()
	}
	if cfg.Signer.Canonical == nil || cfg.Signer.CanonicalPairs == nil || cfg.Signer.Sign == nil {
		return nil, errors.New("sandbox: a signer needs all of Canonical, CanonicalPairs and Sign")
	}
	if len(cfg.Projects) == 0 {
		return nil, errors.New("sandbox: at least one project is required")
	}
	s := &Sandbox{
		signer:       cfg.Signer,
		qrPNG:        cfg.QRPNG,
		client:       cfg.Client,
		now:          cfg.Now,
		userAgent:    cfg.UserAgent,
		baseURL:      strings.TrimSuffix(cfg.BaseURL, "/"),
		projects:     map[string]string{},
		knobs:        cfg.Knobs.withDefaults(),
		callbackURLs: append([]string(nil), cfg.CallbackURLs...),
		payments:     map[string]*Payment{},
		statusPay:    map[string]any{},
		statusOps:    map[string][]map[string]any{},
		dropFinal:    map[string]bool{},
	}
	for _, p := range cfg.Projects {
		if p.ID == "" || p.Secret == "" {
			return nil, errors.New("sandbox: a project needs an ID and a secret")
		}
		s.projects[p.ID] = p.Secret
	}
	if len(cfg.Projects) == 1 {
		s.only = cfg.Projects[0].ID
	}
	if s.client == nil {
		s.client = &http.Client{Timeout: 15 * time.Second}
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.userAgent == "" {
		s.userAgent = "ecommpay-sandbox/1"
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	// Any page in the developer's browser can post forms to loopback:
	// the sandbox's buttons work from its own pages only.
	s.handler = http.NewCrossOriginProtection().Handler(s.routes())
	return s, nil
}

// ServeHTTP serves the Payment Page, Gate and the sandbox's own pages.
func (s *Sandbox) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.handler.ServeHTTP(w, r) }

// Close cancels every pending delivery and flow and waits for them.
func (s *Sandbox) Close() {
	s.cancel()
	s.wg.Wait()
}

// Configure changes the knobs under the sandbox's lock.
func (s *Sandbox) Configure(fn func(*Knobs)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fn(&s.knobs)
	s.knobs = s.knobs.withDefaults()
}

// SetCallbackURLs replaces the callback URLs.
func (s *Sandbox) SetCallbackURLs(urls ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.callbackURLs = append([]string(nil), urls...)
}

// DropFinalCallback makes the sandbox lose the final sale callback of a
// payment: its status changes, but no callback is sent.
func (s *Sandbox) DropFinalCallback(paymentID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dropFinal[paymentID] = true
}

// secretOf returns the project's secret, or "" when it is unknown.
func (s *Sandbox) secretOf(projectID string) string { return s.projects[projectID] }

// CallbackSecret is the secret callbacks of the project are signed with.
func (s *Sandbox) CallbackSecret(projectID string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.knobs.SignSecret != "" {
		return s.knobs.SignSecret
	}
	return s.projects[projectID]
}

func (s *Sandbox) knob() Knobs {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.knobs
}

// goFlow runs fn until the sandbox closes.
func (s *Sandbox) goFlow(fn func()) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		fn()
	}()
}

// sleep waits d, or reports false when the sandbox closes first.
func (s *Sandbox) sleep(d time.Duration) bool {
	if d <= 0 {
		return s.ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-s.ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func randDigits(n int) string {
	var sb strings.Builder
	for i := 0; i < n; i++ {
		d, _ := rand.Int(rand.Reader, big.NewInt(10))
		if i == 0 && d.Int64() == 0 {
			d = big.NewInt(7)
		}
		sb.WriteString(d.String())
	}
	return sb.String()
}

func randAlnum(n int) string {
	const letters = "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"
	var sb strings.Builder
	for i := 0; i < n; i++ {
		d, _ := rand.Int(rand.Reader, big.NewInt(int64(len(letters))))
		sb.WriteByte(letters[d.Int64()])
	}
	return sb.String()
}

// ---- accessors ----

// Payment returns a copy of a payment (zero when unknown).
func (s *Sandbox) Payment(id string) Payment {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p := s.payments[id]; p != nil {
		return *p
	}
	return Payment{}
}

// Payments returns copies of every payment, oldest first.
func (s *Sandbox) Payments() []Payment {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Payment, 0, len(s.order))
	for _, id := range s.order {
		out = append(out, *s.payments[id])
	}
	return out
}

// Requests returns copies of the requests received, oldest first.
func (s *Sandbox) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Request, len(s.requests))
	for i, r := range s.requests {
		out[i] = *r
	}
	return out
}

// Callbacks returns copies of the callbacks produced, oldest first.
func (s *Sandbox) Callbacks() []Callback {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Callback, len(s.callbacks))
	for i, c := range s.callbacks {
		out[i] = *c
	}
	return out
}

// Deliveries returns copies of the deliveries of callbacks matching pred
// (all when pred is nil).
func (s *Sandbox) Deliveries(pred func(*Callback) bool) []Delivery {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Delivery
	for _, d := range s.deliveries {
		if pred == nil || pred(d.CB) {
			c := *d
			c.Attempts = append([]Attempt(nil), d.Attempts...)
			out = append(out, c)
		}
	}
	return out
}

// Settled reports whether every delivery so far ended (200 or gave up),
// how many there are, and what is still pending.
func (s *Sandbox) Settled() (bool, int, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var pending []string
	for _, d := range s.deliveries {
		if !d.Done && !d.GaveUp {
			last := "no attempt yet"
			if n := len(d.Attempts); n > 0 {
				a := d.Attempts[n-1]
				last = fmt.Sprintf("attempt %d: status %d %s", n, a.Status, a.Err)
			}
			pending = append(pending, fmt.Sprintf("%s %s → %s (%s)", d.CB.PaymentID, d.CB.Name, d.URL, last))
		}
	}
	return len(pending) == 0, len(s.deliveries), strings.Join(pending, "; ")
}

// Summary describes every request and delivery, for test failure logs.
func (s *Sandbox) Summary() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var sb strings.Builder
	fmt.Fprintf(&sb, "requests (%d):\n", len(s.requests))
	for _, r := range s.requests {
		body := string(r.Body)
		if len(body) > 300 {
			body = body[:300] + "..."
		}
		fmt.Fprintf(&sb, "  %s %s %s sig_ok=%v %s → %d %s\n    body: %s\n", r.At.Format("15:04:05.000"), r.Method, r.Path, r.SigOK, r.SigReason, r.Status, r.Answer, body)
	}
	fmt.Fprintf(&sb, "deliveries (%d):\n", len(s.deliveries))
	for _, d := range s.deliveries {
		fmt.Fprintf(&sb, "  #%d %s %s [%s/%s] → %s copy %d done=%v gaveup=%v\n", d.CB.Seq, d.CB.PaymentID, d.CB.Name, d.CB.PayStatus, d.CB.OpStatus, d.URL, d.Copy, d.Done, d.GaveUp)
		for i, a := range d.Attempts {
			ans := a.Answer
			if len(ans) > 160 {
				ans = ans[:160] + "..."
			}
			fmt.Fprintf(&sb, "     %2d %s status=%d dup=%v retry-after=%q err=%q answer=%q\n", i+1, a.At.Format("15:04:05.000"), a.Status, a.Duplicate, a.RetryAfter, a.Err, ans)
		}
	}
	return sb.String()
}
