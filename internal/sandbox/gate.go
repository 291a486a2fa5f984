package sandbox

import (
	"bytes"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
)

func (s *Sandbox) routes() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /payment", s.handlePaymentPage)
	mux.HandleFunc("POST /v2/payment/wallet/{method}/sale", s.handleSale)
	mux.HandleFunc("POST /v2/payment/wallet/{method}/refund", s.handleRefund)
	mux.HandleFunc("POST /v2/payment/refund", s.handleRefund)
	mux.HandleFunc("POST /v2/payment/status", s.handleStatus)
	mux.HandleFunc("GET /sandbox/{$}", s.handleLog)
	mux.HandleFunc("GET /sandbox/pay/{id}", s.handleCustomer)
	mux.HandleFunc("POST /sandbox/pay/{id}", s.handleCustomerAction)
	mux.HandleFunc("GET /sandbox/provider/{method}/{id}", s.handleCustomer)
	mux.HandleFunc("GET /sandbox/qr/{id}", s.handleQR)
	mux.HandleFunc("POST /sandbox/resend/{seq}", s.handleResend)
	mux.HandleFunc("POST /sandbox/compare", s.handleCompare)
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/sandbox/", http.StatusSeeOther)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		rec := s.record(r, body)
		s.answerError(w, rec, http.StatusNotFound, "404", "endpoint not found")
	})
	return mux
}

// maxRequests bounds the requests the sandbox remembers.
const maxRequests = 10000

func (s *Sandbox) record(r *http.Request, body []byte) *Request {
	rec := &Request{At: s.now(), Method: r.Method, Path: r.URL.Path, Query: r.URL.Query(), Body: body}
	s.mu.Lock()
	if len(s.requests) >= maxRequests {
		// A long development session keeps the latest only.
		s.requests = append(s.requests[:0], s.requests[len(s.requests)-maxRequests/2:]...)
	}
	s.requests = append(s.requests, rec)
	s.mu.Unlock()
	return rec
}

func (s *Sandbox) answerJSON(w http.ResponseWriter, rec *Request, status int, v any) {
	data, _ := json.Marshal(v)
	s.mu.Lock()
	rec.Status = status
	rec.Answer = string(data)
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(data)
}

// answerError answers as ecommpay answers a rejected request.
func (s *Sandbox) answerError(w http.ResponseWriter, rec *Request, status int, code, msg string) {
	s.answerJSON(w, rec, status, map[string]any{"status": "error", "code": code, "message": msg})
}

func (s *Sandbox) noteSig(rec *Request, ok bool, reason string) {
	s.mu.Lock()
	rec.SigOK, rec.SigReason = ok, reason
	s.mu.Unlock()
}

// base is where browsers reach the sandbox: BaseURL, else the address
// the request came in on (a Gate request proxied from the shop's site
// still carries that site's Host), else its Host.
func (s *Sandbox) base(r *http.Request) string {
	if s.baseURL != "" {
		return s.baseURL
	}
	if a, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok && a.Network() == "tcp" {
		return "http://" + a.String()
	}
	return "http://" + r.Host
}

// ---- JSON helpers over decoded bodies (numbers kept as json.Number) ----

func decode(body []byte) (map[string]any, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var v map[string]any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	if dec.More() {
		return nil, io.ErrUnexpectedEOF
	}
	return v, nil
}

func getObj(o map[string]any, key string) map[string]any {
	v, _ := o[key].(map[string]any)
	if v == nil {
		return map[string]any{}
	}
	return v
}

func getString(o map[string]any, key string) string {
	v, _ := o[key].(string)
	return v
}

func getInt(o map[string]any, key string) (int64, bool) {
	n, ok := o[key].(json.Number)
	if !ok {
		return 0, false
	}
	i, err := strconv.ParseInt(string(n), 10, 64)
	return i, err == nil
}

// scalar renders a project_id as text, whether sent as number or string.
func scalar(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case json.Number:
		return string(x)
	}
	return ""
}

// ---- Gate ----

// gateCheck parses and verifies a Gate request; it answers the error
// itself. The signature covers the body without general.signature (and a
// top-level signature), as the module signs it.
func (s *Sandbox) gateCheck(w http.ResponseWriter, r *http.Request) (*Request, map[string]any, string, bool) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	rec := s.record(r, body)
	if err != nil {
		s.answerError(w, rec, http.StatusBadRequest, "1101", "cannot read body")
		return rec, nil, "", false
	}
	obj, err := decode(body)
	if err != nil {
		s.answerError(w, rec, http.StatusBadRequest, "1102", "malformed JSON")
		return rec, nil, "", false
	}
	general := getObj(obj, "general")
	sig := getString(general, "signature")
	if sig == "" {
		s.noteSig(rec, false, "no general.signature")
		s.answerError(w, rec, http.StatusBadRequest, "1103", "general.signature is required")
		return rec, nil, "", false
	}
	projectID := scalar(general["project_id"])
	secret := s.secretOf(projectID)
	stripped := make(map[string]any, len(obj))
	for k, v := range obj {
		if k != "signature" {
			stripped[k] = v
		}
	}
	g := make(map[string]any, len(general))
	for k, v := range general {
		if k != "signature" {
			g[k] = v
		}
	}
	if _, has := obj["general"].(map[string]any); has {
		stripped["general"] = g
	}
	raw, _ := json.Marshal(stripped)
	canonical, err := s.signer.Canonical(raw, false)
	ok := err == nil && secret != "" && s.signer.Sign(canonical, secret) == sig
	if !ok {
		s.noteSig(rec, false, "signature mismatch")
		s.answerError(w, rec, http.StatusUnauthorized, "1104", "wrong signature")
		return rec, nil, "", false
	}
	s.noteSig(rec, true, "")
	return rec, obj, projectID, true
}

func (s *Sandbox) accepted(w http.ResponseWriter, rec *Request, projectID, paymentID string) string {
	requestID := randHex(21)
	s.answerJSON(w, rec, http.StatusOK, map[string]any{
		"status": "success", "request_id": requestID, "project_id": projectIDValue(projectID), "payment_id": paymentID,
	})
	return requestID
}

func (s *Sandbox) handleSale(w http.ResponseWriter, r *http.Request) {
	rec, obj, projectID, ok := s.gateCheck(w, r)
	if !ok {
		return
	}
	method := strings.ToLower(r.PathValue("method"))
	general, payment, customer := getObj(obj, "general"), getObj(obj, "payment"), getObj(obj, "customer")
	pid := getString(general, "payment_id")
	amount, amountOK := getInt(payment, "amount")
	currency := getString(payment, "currency")
	switch {
	case method != "wechat" && method != "alipay" && method != "mbway":
		s.answerError(w, rec, http.StatusBadRequest, "1200", "the sandbox has no method "+method)
		return
	case pid == "":
		s.answerError(w, rec, http.StatusBadRequest, "1201", "general.payment_id is required")
		return
	case !amountOK || amount <= 0:
		s.answerError(w, rec, http.StatusBadRequest, "1202", "payment.amount must be a positive integer")
		return
	case currency == "":
		s.answerError(w, rec, http.StatusBadRequest, "1203", "payment.currency is required")
		return
	case getString(customer, "id") == "" || getString(customer, "ip_address") == "":
		s.answerError(w, rec, http.StatusBadRequest, "1204", "customer.id and customer.ip_address are required")
		return
	}
	if msg := checkCurrency(method, currency); msg != "" {
		s.answerError(w, rec, http.StatusBadRequest, "1205", msg)
		return
	}
	s.mu.Lock()
	if _, dup := s.payments[pid]; dup {
		s.mu.Unlock()
		s.answerError(w, rec, http.StatusBadRequest, "1206", "payment "+pid+" already exists")
		return
	}
	p := &Payment{ID: pid, ProjectID: projectID, Method: method, Amount: amount, Currency: currency,
		CustomerID: getString(customer, "id"), Source: "gate", Status: "processing", Created: s.now(),
		Description: getString(payment, "description")}
	s.addPayment(p)
	s.mu.Unlock()
	requestID := s.accepted(w, rec, projectID, pid)
	s.mu.Lock()
	p.requestID = requestID
	s.mu.Unlock()
	base := s.base(r)
	s.goFlow(func() { s.startPurchase(p, base) })
}

// addPayment registers p; the caller holds s.mu.
func (s *Sandbox) addPayment(p *Payment) {
	s.payments[p.ID] = p
	s.order = append(s.order, p.ID)
}

func (s *Sandbox) handleRefund(w http.ResponseWriter, r *http.Request) {
	rec, obj, _, ok := s.gateCheck(w, r)
	if !ok {
		return
	}
	generic := r.URL.Path == "/v2/payment/refund"
	general, payment := getObj(obj, "general"), getObj(obj, "payment")
	pid := getString(general, "payment_id")
	s.mu.Lock()
	p := s.payments[pid]
	var remaining int64
	var status, currency, method string
	if p != nil {
		remaining, status, currency, method = p.Amount-p.Refunded, p.Status, p.Currency, p.Method
	}
	s.mu.Unlock()
	if p == nil || status == "" {
		s.answerError(w, rec, http.StatusBadRequest, "1301", "payment "+pid+" not found")
		return
	}
	if !generic && method != strings.ToLower(r.PathValue("method")) {
		s.answerError(w, rec, http.StatusBadRequest, "1302", "payment "+pid+" was not made with "+r.PathValue("method"))
		return
	}
	if status != "success" && status != "partially refunded" {
		s.answerError(w, rec, http.StatusBadRequest, "1303", "payment "+pid+" cannot be refunded in status "+status)
		return
	}
	amount, has := getInt(payment, "amount")
	if !has {
		amount = remaining
	}
	if c := getString(payment, "currency"); c != "" && c != currency {
		s.answerError(w, rec, http.StatusBadRequest, "1304", "refund currency differs from payment currency")
		return
	}
	if generic && method == "mbway" && has && getString(payment, "currency") == "" {
		s.answerError(w, rec, http.StatusBadRequest, "1305", "payment.currency is required with payment.amount")
		return
	}
	if amount <= 0 || amount > remaining {
		s.answerError(w, rec, http.StatusBadRequest, "1306", "refund amount more than available")
		return
	}
	requestID := s.accepted(w, rec, p.ProjectID, pid)
	s.goFlow(func() { s.refund(p, amount, requestID, generic) })
}

// handleStatus answers POST /v2/payment/status, signed like any Gate
// request: for a registered payment, 200 with project_id, payment,
// customer, operations[] and errors[] as the callbacks said (dropped ones
// included); for one ecommpay never registered, 404 "not found".
func (s *Sandbox) handleStatus(w http.ResponseWriter, r *http.Request) {
	rec, obj, projectID, ok := s.gateCheck(w, r)
	if !ok {
		return
	}
	pid := getString(getObj(obj, "general"), "payment_id")
	if pid == "" {
		s.answerError(w, rec, http.StatusBadRequest, "1401", "general.payment_id is required")
		return
	}
	s.mu.Lock()
	p := s.payments[pid]
	var answer map[string]any
	if p != nil && p.Status != "" && p.ProjectID == projectID {
		pay := s.statusPay[pid]
		if pay == nil {
			pay = map[string]any{"id": p.ID, "type": "purchase", "status": p.Status, "date": platformDate(p.Created),
				"method": methodName(p.Method), "sum": sum(p.Amount, p.Currency), "description": "order " + p.ID}
		}
		ops := append([]map[string]any{}, s.statusOps[pid]...)
		errs := []any{}
		for _, o := range ops {
			if o["status"] == "decline" {
				errs = append(errs, map[string]any{"code": o["code"], "message": o["message"]})
			}
		}
		answer = map[string]any{"project_id": projectIDValue(p.ProjectID), "payment": pay,
			"customer": map[string]any{"id": p.CustomerID}, "operations": ops, "errors": errs}
	}
	s.mu.Unlock()
	if answer == nil {
		s.answerJSON(w, rec, http.StatusNotFound, map[string]any{"status": "error", "code": "3061", "message": "Payment not found",
			"errors": []any{map[string]any{"code": "3061", "message": "Payment " + pid + " not found"}}})
		return
	}
	s.answerJSON(w, rec, http.StatusOK, answer)
}
