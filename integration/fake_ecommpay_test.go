package integration

// A fake ecommpay: Payment Page (GET /payment), Gate (sale and refund) and
// callback delivery with retries, following the test-project rules of the
// spec (§4, §5, §6) and the shapes of the seed documents. It records every
// request it saw and every delivery attempt, for the assertions.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeRequest is one request the fake received.
type fakeRequest struct {
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

// fakePayment is the platform's view of one payment.
type fakePayment struct {
	ID         string
	Method     string // wechat, alipay, mbway, card
	Amount     int64
	Currency   string
	CustomerID string
	Source     string // "gate" or "payment_page"
	Status     string // final payment status so far
	Refunded   int64
	QR         string // the QR string sent in display_data (wechat)
	Redirect   string // the redirect URL sent in redirect_data
	SaleOpID   int64
	Created    time.Time
}

// fakeCallback is one callback body the platform produced.
type fakeCallback struct {
	Seq       int
	Name      string // e.g. "wechat sale intermediate"
	PaymentID string
	OpStatus  string
	PayStatus string
	OpType    string
	OpID      int64
	Body      []byte
}

// identity names a callback by what the shop records of it.
func (c *fakeCallback) identity() string {
	return c.PaymentID + "|" + c.OpType + "|" + c.OpStatus + "|" + c.PayStatus
}

type deliveryAttempt struct {
	At         time.Time
	Status     int
	Duplicate  bool
	RetryAfter string
	Err        string
	Answer     string
}

// delivery is one callback sent to one URL, with its retries.
type delivery struct {
	CB       *fakeCallback
	URL      string
	Copy     int
	Attempts []deliveryAttempt
	Done     bool // answered exactly 200
	GaveUp   bool
}

type fakeEcommpay struct {
	t         testing.TB
	secret    string
	projectID int64
	ln        net.Listener
	srv       *http.Server
	base      string
	client    *http.Client

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu           sync.Mutex
	callbackURLs []string
	extraHeaders http.Header
	requests     []*fakeRequest
	payments     map[string]*fakePayment
	callbacks    []*fakeCallback
	deliveries   []*delivery

	// Retry schedule: the platform's (6 × 10 s, then 70 + 10·1.12^(n−4) s up to
	// 4 h) divided by retryScale and capped at retryCap; at most maxAttempts
	// attempts within retryWindow.
	retryScale  float64
	retryCap    time.Duration
	maxAttempts int
	retryWindow time.Duration
	finalDelay  time.Duration // between the intermediate and the final callback
	firstDelay  time.Duration // before the first callback of a flow (callback.delay)
	copies      int           // how many copies of each callback go to each URL at once
	signSecret  string        // signs callbacks when set (a key rotation); else secret
	qrTimeout   string        // the "QR Code Timeout" add_info data, in seconds

	// Status requests (/v2/payment/status) answer from what the callbacks
	// said, including callbacks dropped on purpose.
	dropFinal   map[string]bool             // payment_id → its final sale callback is never sent
	statusPay   map[string]any              // payment_id → the last payment object
	statusOps   map[string][]map[string]any // payment_id → its operations, latest state, in order
	statusSigOK int                         // status requests with a valid signature
}

func (f *fakeEcommpay) callbackSecret() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.signSecret != "" {
		return f.signSecret
	}
	return f.secret
}

func startFake(t testing.TB, secret string) *fakeEcommpay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("fake ecommpay listen: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	f := &fakeEcommpay{
		t:           t,
		secret:      secret,
		projectID:   projectID,
		ln:          ln,
		base:        "http://" + ln.Addr().String(),
		client:      &http.Client{Timeout: 15 * time.Second, Transport: newTransport()},
		ctx:         ctx,
		cancel:      cancel,
		payments:    map[string]*fakePayment{},
		retryScale:  100,
		retryCap:    2 * time.Second,
		maxAttempts: 60,
		retryWindow: 60 * time.Second,
		finalDelay:  150 * time.Millisecond,
		copies:      1,
		qrTimeout:   "600",
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /payment", f.handlePaymentPage)
	mux.HandleFunc("POST /v2/payment/wallet/{method}/sale", f.handleSale)
	mux.HandleFunc("POST /v2/payment/wallet/{method}/refund", f.handleRefund)
	mux.HandleFunc("POST /v2/payment/refund", f.handleRefund)
	mux.HandleFunc("POST /v2/payment/status", f.handleStatus)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		rec := f.record(r, body)
		f.answerError(w, rec, http.StatusNotFound, "404", "endpoint not found")
	})
	f.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go f.srv.Serve(ln)
	t.Cleanup(func() {
		f.stopDeliveries()
		f.srv.Close()
		if t.Failed() {
			t.Logf("---- fake ecommpay ----\n%s", f.summary())
		}
	})
	return f
}

func (f *fakeEcommpay) port() int { return f.ln.Addr().(*net.TCPAddr).Port }

func (f *fakeEcommpay) setCallbackURLs(urls ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.callbackURLs = append([]string(nil), urls...)
}

// stopDeliveries cancels every pending delivery and waits for them.
func (f *fakeEcommpay) stopDeliveries() {
	f.cancel()
	f.wg.Wait()
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

func platformDate(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05-0700") }

func (f *fakeEcommpay) record(r *http.Request, body []byte) *fakeRequest {
	rec := &fakeRequest{At: time.Now(), Method: r.Method, Path: r.URL.Path, Query: r.URL.Query(), Body: body}
	f.mu.Lock()
	f.requests = append(f.requests, rec)
	f.mu.Unlock()
	return rec
}

func (f *fakeEcommpay) answerJSON(w http.ResponseWriter, rec *fakeRequest, status int, v any) {
	data, _ := json.Marshal(v)
	f.mu.Lock()
	rec.Status = status
	rec.Answer = string(data)
	f.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(data)
}

func (f *fakeEcommpay) answerError(w http.ResponseWriter, rec *fakeRequest, status int, code, msg string) {
	f.answerJSON(w, rec, status, map[string]any{"status": "error", "code": code, "message": msg})
}

// ---- Payment Page ----

func (f *fakeEcommpay) handlePaymentPage(w http.ResponseWriter, r *http.Request) {
	rec := f.record(r, nil)
	q := r.URL.Query()
	sig := q.Get("signature")
	if sig == "" {
		f.answerError(w, rec, http.StatusBadRequest, "1001", "signature is required")
		return
	}
	// Recompute over every parameter except signature and frame_mode, on the
	// decoded (raw) values.
	obj := object{}
	keys := make([]string, 0, len(q))
	for k := range q {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if k == "signature" || k == "frame_mode" {
			continue
		}
		if len(q[k]) != 1 {
			f.answerError(w, rec, http.StatusBadRequest, "1002", "parameter repeated: "+k)
			return
		}
		obj = append(obj, member{k, q.Get(k)})
	}
	want := hmacSign(canonicalOf(obj, false), f.secret)
	f.mu.Lock()
	rec.SigOK = want == sig
	if !rec.SigOK {
		rec.SigReason = "signature mismatch"
	}
	f.mu.Unlock()
	if !rec.SigOK {
		f.answerError(w, rec, http.StatusUnauthorized, "1003", "wrong signature")
		return
	}
	for _, req := range []string{"project_id", "payment_id", "payment_amount", "payment_currency", "customer_id"} {
		if q.Get(req) == "" {
			f.answerError(w, rec, http.StatusBadRequest, "1004", "missing parameter "+req)
			return
		}
	}
	if q.Get("project_id") != strconv.FormatInt(f.projectID, 10) {
		f.answerError(w, rec, http.StatusBadRequest, "1005", "unknown project "+q.Get("project_id"))
		return
	}
	amount, err := strconv.ParseInt(q.Get("payment_amount"), 10, 64)
	if err != nil || amount <= 0 {
		f.answerError(w, rec, http.StatusBadRequest, "1006", "payment_amount must be a positive integer in minor units")
		return
	}
	method := strings.ToLower(q.Get("force_payment_method"))
	if method == "" {
		method = "card"
	}
	if msg := checkCurrency(method, q.Get("payment_currency")); msg != "" {
		f.answerError(w, rec, http.StatusBadRequest, "1007", msg)
		return
	}
	f.mu.Lock()
	p, exists := f.payments[q.Get("payment_id")]
	if !exists {
		p = &fakePayment{ID: q.Get("payment_id"), Method: method, Amount: amount, Currency: q.Get("payment_currency"),
			CustomerID: q.Get("customer_id"), Source: "payment_page", Status: "processing", Created: time.Now()}
		f.payments[p.ID] = p
	}
	rec.Status = http.StatusOK
	f.mu.Unlock()
	if exists {
		// The customer reopened the page of a payment already under way.
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprintf(w, "<html><body>payment %s is already in progress</body></html>", p.ID)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	fmt.Fprintf(w, "<html><body>ecommpay test Payment Page: %s %d %s</body></html>", p.Method, p.Amount, p.Currency)
	// The customer picks the method and pays.
	f.goFlow(func() { f.purchaseFlow(p) })
}

// checkCurrency applies the method facts of spec §6.
func checkCurrency(method, currency string) string {
	allowed := map[string][]string{
		"wechat": {"CNY", "EUR", "HKD", "JPY", "SGD", "THB", "USD"},
		"alipay": {"AUD", "CAD", "CNY", "EUR", "GBP", "HKD", "JPY", "SGD", "USD"},
		"mbway":  {"EUR"},
	}
	list, ok := allowed[method]
	if !ok {
		return ""
	}
	for _, c := range list {
		if c == currency {
			return ""
		}
	}
	return fmt.Sprintf("currency %s is not available for %s", currency, method)
}

// ---- Gate ----

// gateCheck parses and verifies a Gate request; it answers the error itself.
func (f *fakeEcommpay) gateCheck(w http.ResponseWriter, r *http.Request) (*fakeRequest, object, bool) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	rec := f.record(r, body)
	if err != nil {
		f.answerError(w, rec, http.StatusBadRequest, "1101", "cannot read body")
		return rec, nil, false
	}
	v, err := parseOrdered(body)
	obj, isObj := v.(object)
	if err != nil || !isObj {
		f.answerError(w, rec, http.StatusBadRequest, "1102", "malformed JSON")
		return rec, nil, false
	}
	general, _ := getObj(obj, "general")
	sigV, _ := general.get("signature")
	sig, _ := sigV.(string)
	if sig == "" {
		f.mu.Lock()
		rec.SigReason = "no general.signature"
		f.mu.Unlock()
		f.answerError(w, rec, http.StatusBadRequest, "1103", "general.signature is required")
		return rec, nil, false
	}
	// Sign mode over the body without general.signature (and a top-level signature).
	stripped := object{}
	for _, m := range obj {
		switch m.Key {
		case "signature":
			continue
		case "general":
			g := object{}
			for _, gm := range general {
				if gm.Key != "signature" {
					g = append(g, gm)
				}
			}
			stripped = append(stripped, member{"general", g})
		default:
			stripped = append(stripped, m)
		}
	}
	want := hmacSign(canonicalOf(stripped, false), f.secret)
	ok := want == sig
	f.mu.Lock()
	rec.SigOK = ok
	if !ok {
		rec.SigReason = "signature mismatch"
	}
	f.mu.Unlock()
	if !ok {
		f.answerError(w, rec, http.StatusUnauthorized, "1104", "wrong signature")
		return rec, nil, false
	}
	pidV, _ := general.get("project_id")
	if renderScalar(pidV) != strconv.FormatInt(f.projectID, 10) {
		f.answerError(w, rec, http.StatusBadRequest, "1105", "unknown project "+renderScalar(pidV))
		return rec, nil, false
	}
	return rec, obj, true
}

func getObj(o object, key string) (object, bool) {
	v, ok := o.get(key)
	if !ok {
		return object{}, false
	}
	ov, ok := v.(object)
	return ov, ok
}

func getString(o object, key string) string {
	v, _ := o.get(key)
	s, _ := v.(string)
	return s
}

func getInt(o object, key string) (int64, bool) {
	v, ok := o.get(key)
	if !ok {
		return 0, false
	}
	n, isNum := v.(json.Number)
	if !isNum {
		return 0, false
	}
	i, err := strconv.ParseInt(string(n), 10, 64)
	return i, err == nil
}

func (f *fakeEcommpay) accepted(w http.ResponseWriter, rec *fakeRequest, paymentID string) string {
	requestID := randHex(21)
	f.answerJSON(w, rec, http.StatusOK, map[string]any{
		"status": "success", "request_id": requestID, "project_id": f.projectID, "payment_id": paymentID,
	})
	return requestID
}

func (f *fakeEcommpay) handleSale(w http.ResponseWriter, r *http.Request) {
	rec, obj, ok := f.gateCheck(w, r)
	if !ok {
		return
	}
	method := strings.ToLower(r.PathValue("method"))
	general, _ := getObj(obj, "general")
	payment, _ := getObj(obj, "payment")
	customer, _ := getObj(obj, "customer")
	pid := getString(general, "payment_id")
	amount, amountOK := getInt(payment, "amount")
	currency := getString(payment, "currency")
	switch {
	case pid == "":
		f.answerError(w, rec, http.StatusBadRequest, "1201", "general.payment_id is required")
		return
	case !amountOK || amount <= 0:
		f.answerError(w, rec, http.StatusBadRequest, "1202", "payment.amount must be a positive integer")
		return
	case currency == "":
		f.answerError(w, rec, http.StatusBadRequest, "1203", "payment.currency is required")
		return
	case getString(customer, "id") == "" || getString(customer, "ip_address") == "":
		f.answerError(w, rec, http.StatusBadRequest, "1204", "customer.id and customer.ip_address are required")
		return
	}
	if msg := checkCurrency(method, currency); msg != "" {
		f.answerError(w, rec, http.StatusBadRequest, "1205", msg)
		return
	}
	f.mu.Lock()
	if _, dup := f.payments[pid]; dup {
		f.mu.Unlock()
		f.answerError(w, rec, http.StatusBadRequest, "1206", "payment "+pid+" already exists")
		return
	}
	p := &fakePayment{ID: pid, Method: method, Amount: amount, Currency: currency,
		CustomerID: getString(customer, "id"), Source: "gate", Status: "processing", Created: time.Now()}
	f.payments[pid] = p
	f.mu.Unlock()
	requestID := f.accepted(w, rec, pid)
	f.goFlow(func() { f.purchaseFlow(p, requestID) })
}

func (f *fakeEcommpay) handleRefund(w http.ResponseWriter, r *http.Request) {
	rec, obj, ok := f.gateCheck(w, r)
	if !ok {
		return
	}
	generic := r.URL.Path == "/v2/payment/refund"
	general, _ := getObj(obj, "general")
	payment, _ := getObj(obj, "payment")
	pid := getString(general, "payment_id")
	f.mu.Lock()
	p := f.payments[pid]
	var remaining int64
	var status, currency string
	if p != nil {
		remaining = p.Amount - p.Refunded
		status = p.Status
		currency = p.Currency
	}
	f.mu.Unlock()
	if p == nil {
		f.answerError(w, rec, http.StatusBadRequest, "1301", "payment "+pid+" not found")
		return
	}
	if !generic && p.Method != strings.ToLower(r.PathValue("method")) {
		f.answerError(w, rec, http.StatusBadRequest, "1302", "payment "+pid+" was not made with "+r.PathValue("method"))
		return
	}
	if status != "success" && status != "partially refunded" {
		f.answerError(w, rec, http.StatusBadRequest, "1303", "payment "+pid+" cannot be refunded in status "+status)
		return
	}
	amount, has := getInt(payment, "amount")
	if !has {
		amount = remaining
	}
	if c := getString(payment, "currency"); c != "" && c != currency {
		f.answerError(w, rec, http.StatusBadRequest, "1304", "refund currency differs from payment currency")
		return
	}
	if generic && p.Method == "mbway" && has && getString(payment, "currency") == "" {
		f.answerError(w, rec, http.StatusBadRequest, "1305", "payment.currency is required with payment.amount")
		return
	}
	if amount <= 0 || amount > remaining {
		f.answerError(w, rec, http.StatusBadRequest, "1306", "refund amount more than available")
		return
	}
	requestID := f.accepted(w, rec, pid)
	f.goFlow(func() { f.refundFlow(p, amount, requestID, generic) })
}

// ---- callbacks ----

func (f *fakeEcommpay) goFlow(fn func()) {
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		fn()
	}()
}

func (f *fakeEcommpay) sleep(d time.Duration) bool {
	select {
	case <-f.ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}

func providerID(method string) int {
	switch method {
	case "wechat":
		return 1173
	case "alipay":
		return 1189
	case "mbway":
		return 16931
	}
	return 1162
}

func sum(amount int64, currency string) map[string]any {
	return map[string]any{"amount": amount, "currency": currency}
}

// purchaseFlow sends the intermediate callback (QR or redirect), then the
// final one: decline for 40000 and 40400, success otherwise.
func (f *fakeEcommpay) purchaseFlow(p *fakePayment, requestIDs ...string) {
	requestID := randHex(21)
	if len(requestIDs) > 0 {
		requestID = requestIDs[0]
	}
	opID, _ := strconv.ParseInt(randDigits(14), 10, 64)
	created := time.Now()
	f.mu.Lock()
	p.SaleOpID = opID
	firstDelay := f.firstDelay
	f.mu.Unlock()
	if firstDelay > 0 && !f.sleep(firstDelay) {
		return
	}
	base := func(payStatus, opStatus, code, message string, provider map[string]any) map[string]any {
		now := time.Now()
		return map[string]any{
			"project_id": f.projectID,
			"payment": map[string]any{
				"id": p.ID, "type": "purchase", "status": payStatus, "date": platformDate(now),
				"method": methodName(p.Method), "sum": sum(p.Amount, p.Currency), "description": "order " + p.ID,
			},
			"customer": map[string]any{"id": p.CustomerID},
			"operation": map[string]any{
				"id": opID, "type": "sale", "status": opStatus, "date": platformDate(now),
				"created_date": platformDate(created), "request_id": requestID,
				"sum_initial": sum(p.Amount, p.Currency), "sum_converted": sum(p.Amount, p.Currency),
				"code": code, "message": message, "provider": provider,
			},
		}
	}
	pending := map[string]any{"id": providerID(p.Method), "payment_id": "", "auth_code": ""}
	switch p.Method {
	case "wechat":
		qr := "weixin://wxpay/bizpayurl?pr=" + randAlnum(7)
		f.mu.Lock()
		p.QR = qr
		qrTimeout := f.qrTimeout
		f.mu.Unlock()
		body := base("awaiting customer", "awaiting customer", "0", "Success", pending)
		body["display_data"] = []any{
			map[string]any{"type": "qr_data", "title": "QR code", "data": qr},
			map[string]any{"type": "add_info", "title": "QR Code Timeout", "data": qrTimeout},
		}
		f.emit("sale intermediate", p.ID, body, false)
	case "alipay", "mbway":
		redirect := fmt.Sprintf("%s/provider/%s/%s?token=%s", f.base, p.Method, url.PathEscape(p.ID), randHex(8))
		f.mu.Lock()
		p.Redirect = redirect
		f.mu.Unlock()
		body := base("awaiting redirect result", "awaiting redirect result", "0", "Success", pending)
		body["redirect_data"] = map[string]any{"method": "GET", "url": redirect, "body": []any{}, "encrypted": []any{}}
		f.emit("sale intermediate", p.ID, body, false)
	}
	if p.Method != "card" && !f.sleep(f.finalDelay) {
		return
	}
	status, code, message := "success", "0", "Success"
	if p.Amount == 40000 || p.Amount == 40400 {
		status, code, message = "decline", "20105", "Insufficient funds on customer account"
	}
	provider := map[string]any{"id": providerID(p.Method), "payment_id": "", "auth_code": ""}
	if status == "success" {
		provider = map[string]any{"id": providerID(p.Method), "payment_id": randDigits(10), "date": platformDate(time.Now()), "auth_code": ""}
	}
	f.mu.Lock()
	p.Status = status
	f.mu.Unlock()
	f.emit("sale final", p.ID, base(status, status, code, message, provider), false)
}

func methodName(m string) string {
	if m == "mbway" {
		return "MBWay"
	}
	return m
}

// refundFlow sends one final refund callback: decline for 50000 and 50500.
// Refunds through /v2/payment/refund carry the signature at general.signature.
func (f *fakeEcommpay) refundFlow(p *fakePayment, amount int64, requestID string, generic bool) {
	if !f.sleep(50 * time.Millisecond) {
		return
	}
	opID, _ := strconv.ParseInt(randDigits(14), 10, 64)
	now := time.Now()
	f.mu.Lock()
	opStatus, code, message := "success", "0", "Success"
	if amount == 50000 || amount == 50500 {
		opStatus, code, message = "decline", "3283", "Refund declined by the provider"
	} else {
		p.Refunded += amount
		if p.Refunded >= p.Amount {
			p.Status = "refunded"
		} else {
			p.Status = "partially refunded"
		}
	}
	payStatus := p.Status
	remaining := p.Amount - p.Refunded
	f.mu.Unlock()
	body := map[string]any{
		"project_id": f.projectID,
		"payment": map[string]any{
			"id": p.ID, "type": "purchase", "status": payStatus, "date": platformDate(now),
			"method": methodName(p.Method), "sum": sum(remaining, p.Currency), "description": "order " + p.ID,
		},
		"customer": map[string]any{"id": p.CustomerID},
		"operation": map[string]any{
			"id": opID, "type": "refund", "status": opStatus, "date": platformDate(now),
			"created_date": platformDate(now.Add(-time.Second)), "request_id": requestID,
			"sum_initial": sum(amount, p.Currency), "sum_converted": sum(amount, p.Currency),
			"code": code, "message": message,
			"provider": map[string]any{"id": providerID(p.Method), "payment_id": randDigits(10), "auth_code": ""},
		},
	}
	if generic {
		body["general"] = map[string]any{"project_id": f.projectID, "payment_id": p.ID}
	}
	f.emit("refund final", p.ID, body, generic)
}

// signedCallback builds a genuine signed callback for a payment without
// delivering it.
func (f *fakeEcommpay) signedCallback(paymentID, opType, opStatus string) []byte {
	p := f.payment(paymentID)
	opID, _ := strconv.ParseInt(randDigits(14), 10, 64)
	now := time.Now()
	body := map[string]any{
		"project_id": f.projectID,
		"payment": map[string]any{
			"id": p.ID, "type": "purchase", "status": p.Status, "date": platformDate(now),
			"method": methodName(p.Method), "sum": sum(p.Amount, p.Currency), "description": "order " + p.ID,
		},
		"customer": map[string]any{"id": p.CustomerID},
		"operation": map[string]any{
			"id": opID, "type": opType, "status": opStatus, "date": platformDate(now),
			"created_date": platformDate(now), "request_id": randHex(21),
			"sum_initial": sum(p.Amount, p.Currency), "sum_converted": sum(p.Amount, p.Currency),
			"code": "0", "message": "Success",
			"provider": map[string]any{"id": providerID(p.Method), "payment_id": randDigits(10), "auth_code": ""},
		},
	}
	return signJSONWithSignatureAt(body, f.callbackSecret(), false)
}

// emit signs a callback body and delivers it to every callback URL.
func (f *fakeEcommpay) emit(name, paymentID string, body map[string]any, sigInGeneral bool) *fakeCallback {
	if f.noteStatus(name, paymentID, body) {
		return nil
	}
	raw := signJSONWithSignatureAt(body, f.callbackSecret(), sigInGeneral)
	pay, _ := body["payment"].(map[string]any)
	op, _ := body["operation"].(map[string]any)
	cb := &fakeCallback{Name: name, PaymentID: paymentID, Body: raw}
	cb.PayStatus, _ = pay["status"].(string)
	cb.OpStatus, _ = op["status"].(string)
	cb.OpType, _ = op["type"].(string)
	cb.OpID, _ = op["id"].(int64)
	f.mu.Lock()
	cb.Seq = len(f.callbacks) + 1
	f.callbacks = append(f.callbacks, cb)
	urls := append([]string(nil), f.callbackURLs...)
	copies := f.copies
	f.mu.Unlock()
	f.deliver(cb, urls, copies)
	return cb
}

// deliver starts copies × len(urls) independent deliveries of cb at once,
// each retrying until it gets exactly HTTP 200.
func (f *fakeEcommpay) deliver(cb *fakeCallback, urls []string, copies int) []*delivery {
	start := make(chan struct{})
	var ds []*delivery
	for _, u := range urls {
		for c := 0; c < copies; c++ {
			d := &delivery{CB: cb, URL: u, Copy: c}
			ds = append(ds, d)
			f.mu.Lock()
			f.deliveries = append(f.deliveries, d)
			f.mu.Unlock()
			f.wg.Add(1)
			go func() {
				defer f.wg.Done()
				<-start
				f.runDelivery(d)
			}()
		}
	}
	close(start)
	return ds
}

// retryDelay is the wait after attempt n (1-based).
func (f *fakeEcommpay) retryDelay(n int) time.Duration {
	secs := 10.0
	if n > 6 {
		secs = 70 + 10*math.Pow(1.12, float64(n-4))
	}
	d := time.Duration(secs / f.retryScale * float64(time.Second))
	if d > f.retryCap {
		d = f.retryCap
	}
	return d
}

func (f *fakeEcommpay) runDelivery(d *delivery) {
	deadline := time.Now().Add(f.retryWindow)
	for n := 1; n <= f.maxAttempts; n++ {
		a := f.attempt(d)
		f.mu.Lock()
		d.Attempts = append(d.Attempts, a)
		if a.Status == http.StatusOK {
			d.Done = true
		}
		f.mu.Unlock()
		if a.Status == http.StatusOK {
			return
		}
		if time.Now().After(deadline) || !f.sleep(f.retryDelay(n)) {
			break
		}
	}
	f.mu.Lock()
	d.GaveUp = true
	f.mu.Unlock()
}

func (f *fakeEcommpay) attempt(d *delivery) deliveryAttempt {
	a := deliveryAttempt{At: time.Now()}
	if err := mustLoopbackURL(d.URL); err != nil {
		a.Err = err.Error()
		return a
	}
	req, err := http.NewRequestWithContext(f.ctx, http.MethodPost, d.URL, strings.NewReader(string(d.CB.Body)))
	if err != nil {
		a.Err = err.Error()
		return a
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "ecommpay-fake/1")
	f.mu.Lock()
	for k, vs := range f.extraHeaders {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	f.mu.Unlock()
	resp, err := f.client.Do(req)
	if err != nil {
		a.Err = err.Error()
		return a
	}
	defer resp.Body.Close()
	ans, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	a.Status = resp.StatusCode
	a.Duplicate = resp.Header.Get("X-Ecommpay-Duplicate") == "1"
	a.RetryAfter = resp.Header.Get("Retry-After")
	a.Answer = string(ans)
	return a
}

// postRaw sends one body once (no retry) to url, as the platform would, and
// returns the status and headers. Used for forged and malformed callbacks.
func (f *fakeEcommpay) postRaw(url string, body []byte, header http.Header) (int, http.Header, string, error) {
	if err := mustLoopbackURL(url); err != nil {
		return 0, nil, "", err
	}
	req, err := http.NewRequestWithContext(f.ctx, http.MethodPost, url, strings.NewReader(string(body)))
	if err != nil {
		return 0, nil, "", err
	}
	req.Header.Set("Content-Type", "application/json")
	for k, vs := range header {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	resp, err := f.client.Do(req)
	if err != nil {
		return 0, nil, "", err
	}
	defer resp.Body.Close()
	ans, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return resp.StatusCode, resp.Header, string(ans), nil
}

// ---- payment status (spec §3) ----

// dropFinalCallback makes the platform lose the final sale callback of a
// payment: its status changes, but no callback is sent.
func (f *fakeEcommpay) dropFinalCallback(paymentID string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.dropFinal == nil {
		f.dropFinal = map[string]bool{}
	}
	f.dropFinal[paymentID] = true
}

// noteStatus keeps what a callback says for status answers, and reports
// whether the callback is to be dropped.
func (f *fakeEcommpay) noteStatus(name, paymentID string, body map[string]any) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.statusPay == nil {
		f.statusPay, f.statusOps = map[string]any{}, map[string][]map[string]any{}
	}
	f.statusPay[paymentID] = body["payment"]
	if op, ok := body["operation"].(map[string]any); ok {
		ops := f.statusOps[paymentID]
		replaced := false
		for i, o := range ops {
			if o["id"] == op["id"] {
				ops[i], replaced = op, true
			}
		}
		if !replaced {
			ops = append(ops, op)
		}
		f.statusOps[paymentID] = ops
	}
	return name == "sale final" && f.dropFinal[paymentID]
}

// handleStatus answers POST /v2/payment/status, signed like any Gate
// request: for a registered payment, 200 with project_id, payment,
// customer, operations[] and errors[]; for a payment the platform never
// registered (a Payment Page never opened), an error saying it was not
// found.
func (f *fakeEcommpay) handleStatus(w http.ResponseWriter, r *http.Request) {
	rec, obj, ok := f.gateCheck(w, r)
	if !ok {
		return
	}
	general, _ := getObj(obj, "general")
	pid := getString(general, "payment_id")
	if pid == "" {
		f.answerError(w, rec, http.StatusBadRequest, "1401", "general.payment_id is required")
		return
	}
	f.mu.Lock()
	f.statusSigOK++
	p := f.payments[pid]
	var answer map[string]any
	if p != nil {
		pay := f.statusPay[pid]
		if pay == nil {
			pay = map[string]any{"id": p.ID, "type": "purchase", "status": p.Status, "date": platformDate(p.Created),
				"method": methodName(p.Method), "sum": sum(p.Amount, p.Currency), "description": "order " + p.ID}
		}
		ops := append([]map[string]any{}, f.statusOps[pid]...)
		errs := []any{}
		for _, op := range ops {
			if op["status"] == "decline" {
				errs = append(errs, map[string]any{"code": op["code"], "message": op["message"]})
			}
		}
		answer = map[string]any{"project_id": f.projectID, "payment": pay, "customer": map[string]any{"id": p.CustomerID},
			"operations": ops, "errors": errs}
	}
	f.mu.Unlock()
	if answer == nil {
		f.answerJSON(w, rec, http.StatusNotFound, map[string]any{"status": "error", "code": "3061", "message": "Payment not found",
			"errors": []any{map[string]any{"code": "3061", "message": "Payment " + pid + " not found"}}})
		return
	}
	f.answerJSON(w, rec, http.StatusOK, answer)
}

// statusRequests lists the status requests for a payment.
func (f *fakeEcommpay) statusRequests(paymentID string) []fakeRequest {
	var out []fakeRequest
	for _, r := range f.requestsTo("/v2/payment/status") {
		if strings.Contains(string(r.Body), `"`+paymentID+`"`) {
			out = append(out, r)
		}
	}
	return out
}

// ---- accessors for assertions ----

func (f *fakeEcommpay) payment(id string) fakePayment {
	f.mu.Lock()
	defer f.mu.Unlock()
	if p := f.payments[id]; p != nil {
		return *p
	}
	return fakePayment{}
}

func (f *fakeEcommpay) requestsTo(path string) []fakeRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []fakeRequest
	for _, r := range f.requests {
		if r.Path == path {
			out = append(out, *r)
		}
	}
	return out
}

func (f *fakeEcommpay) allRequests() []fakeRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]fakeRequest, len(f.requests))
	for i, r := range f.requests {
		out[i] = *r
	}
	return out
}

func (f *fakeEcommpay) callbacksFor(paymentID string) []fakeCallback {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []fakeCallback
	for _, c := range f.callbacks {
		if c.PaymentID == paymentID {
			out = append(out, *c)
		}
	}
	return out
}

func (f *fakeEcommpay) allCallbacks() []fakeCallback {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]fakeCallback, len(f.callbacks))
	for i, c := range f.callbacks {
		out[i] = *c
	}
	return out
}

// deliveriesOf returns copies of the deliveries of callbacks matching pred.
func (f *fakeEcommpay) deliveriesOf(pred func(*fakeCallback) bool) []delivery {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []delivery
	for _, d := range f.deliveries {
		if pred == nil || pred(d.CB) {
			c := *d
			c.Attempts = append([]deliveryAttempt(nil), d.Attempts...)
			out = append(out, c)
		}
	}
	return out
}

// settled reports whether every delivery so far ended (200 or gave up), and
// how many there are.
func (f *fakeEcommpay) settled() (bool, int, string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var pending []string
	for _, d := range f.deliveries {
		if !d.Done && !d.GaveUp {
			last := "no attempt yet"
			if n := len(d.Attempts); n > 0 {
				a := d.Attempts[n-1]
				last = fmt.Sprintf("attempt %d: status %d %s", n, a.Status, a.Err)
			}
			pending = append(pending, fmt.Sprintf("%s %s → %s (%s)", d.CB.PaymentID, d.CB.Name, d.URL, last))
		}
	}
	return len(pending) == 0, len(f.deliveries), strings.Join(pending, "; ")
}

func (f *fakeEcommpay) summary() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var sb strings.Builder
	fmt.Fprintf(&sb, "requests (%d):\n", len(f.requests))
	for _, r := range f.requests {
		body := string(r.Body)
		if len(body) > 300 {
			body = body[:300] + "..."
		}
		fmt.Fprintf(&sb, "  %s %s %s?%s sig_ok=%v %s → %d %s\n    body: %s\n", r.At.Format("15:04:05.000"), r.Method, r.Path, r.Query.Encode(), r.SigOK, r.SigReason, r.Status, r.Answer, body)
	}
	fmt.Fprintf(&sb, "deliveries (%d):\n", len(f.deliveries))
	for _, d := range f.deliveries {
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

// mustLoopbackURL refuses any URL that is not http on a loopback address.
func mustLoopbackURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return err
	}
	if u.Scheme != "http" {
		return fmt.Errorf("refusing non-http URL %q", raw)
	}
	ip := net.ParseIP(u.Hostname())
	if ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("refusing non-loopback URL %q", raw)
	}
	return nil
}
