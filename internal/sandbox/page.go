package sandbox

import (
	"math/big"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/currency"
)

// The Payment Page: GET /payment checks the signature as ecommpay does; a
// good one opens the customer page, a wrong one the page that explains it.

func (s *Sandbox) handlePaymentPage(w http.ResponseWriter, r *http.Request) {
	rec := s.record(r, nil)
	q := r.URL.Query()
	sig := q.Get("signature")
	if sig == "" {
		s.answerError(w, rec, http.StatusBadRequest, "1001", "signature is required")
		return
	}
	pairs, repeated := pagePairs(q)
	if repeated != "" {
		s.answerError(w, rec, http.StatusBadRequest, "1002", "parameter repeated: "+repeated)
		return
	}
	projectID := q.Get("project_id")
	secret := s.secretOf(projectID)
	if secret == "" && s.only != "" {
		secret = s.secretOf(s.only) // checked first, as ecommpay does
	}
	canonical := s.signer.CanonicalPairs(pairs)
	if secret == "" || s.signer.Sign(canonical, secret) != sig {
		s.noteSig(rec, false, "signature mismatch")
		s.mu.Lock()
		rec.Status = http.StatusUnauthorized
		s.mu.Unlock()
		d := s.diagnose(r.URL.RawQuery, pairs, sig, projectID)
		render(w, http.StatusUnauthorized, wrongSignatureTmpl, d)
		return
	}
	s.noteSig(rec, true, "")
	for _, req := range []string{"project_id", "payment_id", "payment_amount", "payment_currency", "customer_id"} {
		if q.Get(req) == "" {
			s.answerError(w, rec, http.StatusBadRequest, "1004", "missing parameter "+req)
			return
		}
	}
	if s.secretOf(projectID) == "" {
		s.answerError(w, rec, http.StatusBadRequest, "1005", "unknown project "+projectID)
		return
	}
	amount, err := strconv.ParseInt(q.Get("payment_amount"), 10, 64)
	if err != nil || amount <= 0 {
		s.answerError(w, rec, http.StatusBadRequest, "1006", "payment_amount must be a positive integer in minor units")
		return
	}
	forced := strings.ToLower(q.Get("force_payment_method"))
	if msg := checkCurrency(forced, q.Get("payment_currency")); msg != "" {
		s.answerError(w, rec, http.StatusBadRequest, "1007", msg)
		return
	}
	auto := s.knob().PayAfter > 0
	page := map[string]string{}
	for _, p := range pairs {
		page[p[0]] = p[1]
	}
	s.mu.Lock()
	p, exists := s.payments[q.Get("payment_id")]
	if !exists {
		p = &Payment{ID: q.Get("payment_id"), ProjectID: projectID, Method: forced, Amount: amount,
			Currency: q.Get("payment_currency"), CustomerID: q.Get("customer_id"), Source: "payment_page",
			Created: s.now(), Description: q.Get("payment_description"), Page: page}
		if auto {
			if p.Method == "" {
				p.Method = "card"
			}
			p.Status = "processing"
		}
		s.addPayment(p)
	}
	rec.Status = http.StatusOK
	reopen := exists && p.Source == "payment_page" && p.Status == "" && !auto
	s.mu.Unlock()
	switch {
	case exists && !reopen:
		render(w, http.StatusOK, messageTmpl, message{Title: "Payment in progress",
			Text: "Payment " + p.ID + " is already in progress.", Link: "/sandbox/pay/" + url.PathEscape(p.ID)})
	case auto:
		// The customer pays at once, with the forced method or a card.
		render(w, http.StatusOK, messageTmpl, message{Title: "ecommpay test Payment Page",
			Text: "ecommpay test Payment Page: " + p.Method + " " + strconv.FormatInt(p.Amount, 10) + " " + p.Currency,
			Link: "/sandbox/pay/" + url.PathEscape(p.ID)})
		base := s.base(r)
		s.goFlow(func() { s.startPurchase(p, base) })
	default:
		http.Redirect(w, r, "/sandbox/pay/"+url.PathEscape(p.ID), http.StatusSeeOther)
	}
}

// pagePairs are the signed parameters of a Payment Page query: all but
// signature and frame_mode, decoded. repeated names a parameter given
// twice, which ecommpay refuses.
func pagePairs(q url.Values) (pairs [][2]string, repeated string) {
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
			return nil, k
		}
		pairs = append(pairs, [2]string{k, q[k][0]})
	}
	return pairs, ""
}

// ---- the customer's pages ----

// customerView is what the customer page shows of a payment.
type customerView struct {
	P        Payment
	Provider bool // on the wallet's own page (the redirect step)
	Methods  []string
	Amount   string
	Result   string // the final status, once there is one
	Forced   bool
	Token    string
}

func (s *Sandbox) handleCustomer(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	s.mu.Lock()
	p := s.payments[id]
	var v customerView
	if p != nil {
		v = customerView{P: *p, Provider: r.PathValue("method") != "", Amount: formatAmount(p.Amount, p.Currency)}
	}
	s.mu.Unlock()
	if p == nil {
		render(w, http.StatusNotFound, messageTmpl, message{Title: "Unknown payment", Text: "The sandbox has no payment " + id + "."})
		return
	}
	v.Forced = v.P.Method != ""
	if !v.Forced {
		for _, m := range []string{"card", "wechat", "alipay", "mbway"} {
			if checkCurrency(m, v.P.Currency) == "" {
				v.Methods = append(v.Methods, m)
			}
		}
	}
	if !v.P.Pending && v.P.Status != "" && v.P.Status != "processing" {
		v.Result = v.P.Status
	}
	render(w, http.StatusOK, customerTmpl, v)
}

func (s *Sandbox) handleQR(w http.ResponseWriter, r *http.Request) {
	p := s.Payment(r.PathValue("id"))
	if p.QR == "" || s.qrPNG == nil {
		http.NotFound(w, r)
		return
	}
	png, err := s.qrPNG(p.QR)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "image/png")
	w.Header().Set("Cache-Control", "no-store")
	w.Write(png)
}

// handleCustomerAction is what the customer (or the developer on the log
// page) does with a payment: pay, decline, leave, or finish a pending one.
func (s *Sandbox) handleCustomerAction(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	action := r.FormValue("action")
	s.mu.Lock()
	p := s.payments[id]
	var status string
	var pending bool
	if p != nil {
		status, pending = p.Status, p.Pending
	}
	s.mu.Unlock()
	if p == nil {
		render(w, http.StatusNotFound, messageTmpl, message{Title: "Unknown payment", Text: "The sandbox has no payment " + id + "."})
		return
	}
	back := "/sandbox/pay/" + url.PathEscape(id)
	if r.FormValue("from") == "log" {
		back = "/sandbox/"
	}
	switch {
	case status == "" && (action == "pay" || action == "decline"):
		s.mu.Lock()
		method := p.Method
		s.mu.Unlock()
		if method == "" {
			method = strings.ToLower(r.FormValue("method"))
		}
		if method == "" {
			method = "card"
		}
		if method != "card" && method != "wechat" && method != "alipay" && method != "mbway" {
			render(w, http.StatusBadRequest, messageTmpl, message{Title: "Unknown method", Text: "The sandbox has no method " + method + ".", Link: back})
			return
		}
		if msg := checkCurrency(method, p.Currency); msg != "" {
			render(w, http.StatusBadRequest, messageTmpl, message{Title: "Method not available", Text: msg, Link: back})
			return
		}
		s.mu.Lock()
		if p.Status != "" {
			// Another click got there first.
			s.mu.Unlock()
			http.Redirect(w, r, back, http.StatusSeeOther)
			return
		}
		p.Method, p.Status, p.Created = method, "processing", s.now()
		if action == "decline" {
			p.SaleOpID, p.requestID, p.Pending = newOpID(), randHex(21), true
		}
		s.mu.Unlock()
		if action == "decline" {
			s.finish(p, saleByCustomer)
			s.redirectAfter(w, r, p, back)
			return
		}
		s.startPurchase(p, s.base(r))
		after := s.Payment(id)
		switch {
		case after.Redirect != "" && r.FormValue("from") != "log":
			http.Redirect(w, r, after.Redirect, http.StatusSeeOther)
		case after.Pending:
			http.Redirect(w, r, back, http.StatusSeeOther)
		default:
			s.redirectAfter(w, r, p, back)
		}
	case pending && action == "paid-late":
		// The customer paid; the final callback comes late.
		late := s.knob().LateBy
		s.goFlow(func() {
			if s.sleep(late) {
				s.finish(p, saleSuccess)
			}
		})
		http.Redirect(w, r, back, http.StatusSeeOther)
	case pending && (action == "paid" || action == "paid-drop" || action == "decline"):
		out := saleSuccess
		if action == "decline" {
			out = saleByCustomer
		}
		if action == "paid-drop" {
			s.DropFinalCallback(id)
		}
		s.finish(p, out)
		s.redirectAfter(w, r, p, back)
	case status == "" && action == "leave":
		if u := firstParam(p.Page, "merchant_return_url", "redirect_return_url", "merchant_fail_url", "redirect_fail_url"); u != "" {
			http.Redirect(w, r, u, http.StatusSeeOther)
			return
		}
		render(w, http.StatusOK, messageTmpl, message{Title: "You left the Payment Page", Text: "Nothing was paid and no callback was sent."})
	default:
		http.Redirect(w, r, back, http.StatusSeeOther)
	}
}

// redirectAfter sends the customer back to the shop's URL for the
// payment's result, as the Payment Page does, or to back.
func (s *Sandbox) redirectAfter(w http.ResponseWriter, r *http.Request, p *Payment, back string) {
	now := s.Payment(p.ID)
	target := ""
	if r.FormValue("from") != "log" {
		if now.Status == "success" {
			target = firstParam(now.Page, "merchant_success_url", "redirect_success_url")
		} else {
			target = firstParam(now.Page, "merchant_fail_url", "redirect_fail_url")
		}
	}
	if target == "" {
		target = back
	}
	http.Redirect(w, r, target, http.StatusSeeOther)
}

func firstParam(page map[string]string, names ...string) string {
	for _, n := range names {
		if v := page[n]; v != "" {
			return v
		}
	}
	return ""
}

func (s *Sandbox) handleResend(w http.ResponseWriter, r *http.Request) {
	seq, _ := strconv.Atoi(r.PathValue("seq"))
	if !s.resend(seq) {
		http.NotFound(w, r)
		return
	}
	http.Redirect(w, r, "/sandbox/", http.StatusSeeOther)
}

// formatAmount renders minor units in major units by the currency's
// exponent.
func formatAmount(amount int64, code string) string {
	return currency.FormatMajor(big.NewInt(amount), code) + " " + code
}

// ---- the delivery log ----

type logView struct {
	Payments  []Payment
	Callbacks []callbackView
	URLs      []string
}

type callbackView struct {
	CB         Callback
	Deliveries []Delivery
}

func (s *Sandbox) handleLog(w http.ResponseWriter, r *http.Request) {
	v := logView{Payments: s.Payments()}
	for i, j := 0, len(v.Payments)-1; i < j; i, j = i+1, j-1 {
		v.Payments[i], v.Payments[j] = v.Payments[j], v.Payments[i]
	}
	cbs := s.Callbacks()
	for i := len(cbs) - 1; i >= 0; i-- {
		seq := cbs[i].Seq
		v.Callbacks = append(v.Callbacks, callbackView{CB: cbs[i], Deliveries: s.Deliveries(func(c *Callback) bool { return c.Seq == seq })})
	}
	s.mu.Lock()
	v.URLs = append(v.URLs, s.callbackURLs...)
	s.mu.Unlock()
	render(w, http.StatusOK, logTmpl, v)
}
