package sandbox

import (
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// saleOp describes the sale operation of p.
func (p *Payment) saleOp() op {
	return op{projectID: p.ProjectID, paymentID: p.ID, method: p.Method, amount: p.Amount, currency: p.Currency,
		customerID: p.CustomerID, description: p.Description, opType: "sale", opID: p.SaleOpID,
		requestID: p.requestID, created: p.Created}
}

// startPurchase sends the intermediate callback of a wallet payment (QR or
// redirect) and leaves it pending; a card payment ends at once. base is
// where the customer's redirect steps live.
func (s *Sandbox) startPurchase(p *Payment, base string) {
	k := s.knob()
	if k.FirstDelay > 0 && !s.sleep(k.FirstDelay) {
		return
	}
	s.mu.Lock()
	p.SaleOpID = newOpID()
	if p.requestID == "" {
		p.requestID = randHex(21)
	}
	p.Pending = true
	sale := p.saleOp()
	s.mu.Unlock()
	now := s.now()
	switch p.Method {
	case "wechat":
		qr := newQR()
		s.mu.Lock()
		p.QR = qr
		s.mu.Unlock()
		s.emit("sale intermediate", p, withQR(sale.body(pendingQR, now), qr, k.QRTimeout), false)
	case "alipay", "mbway":
		redirect := fmt.Sprintf("%s/sandbox/provider/%s/%s?token=%s", base, p.Method, url.PathEscape(p.ID), randHex(8))
		s.mu.Lock()
		p.Redirect = redirect
		s.mu.Unlock()
		s.emit("sale intermediate", p, withRedirect(sale.body(pendingRedirect, now), redirect), false)
	default:
		s.finish(p, saleSuccess)
		return
	}
	if k.PayAfter > 0 {
		s.goFlow(func() {
			if s.sleep(k.PayAfter) {
				s.finish(p, saleSuccess)
			}
		})
	}
	if p.Method == "mbway" {
		s.goFlow(func() {
			if s.sleep(k.MBWayLimit) {
				s.finish(p, saleExpired)
			}
		})
	}
}

// finish sends the final sale callback of a pending payment, once. A paid
// purchase of a declined amount ends in decline, as the test project's
// does. It reports whether the payment was pending.
func (s *Sandbox) finish(p *Payment, out outcome) bool {
	s.mu.Lock()
	if !p.Pending {
		s.mu.Unlock()
		return false
	}
	p.Pending = false
	if out.opStatus == "success" && declinedPurchase(p.Amount) {
		out = saleInsufficent
	}
	p.Status = out.payStatus
	sale := p.saleOp()
	s.mu.Unlock()
	s.emit("sale final", p, sale.body(out, s.now()), false)
	return true
}

// refund sends one final refund callback: decline for 50000 and 50500.
// Refunds through /v2/payment/refund carry the signature at
// general.signature.
func (s *Sandbox) refund(p *Payment, amount int64, requestID string, generic bool) {
	if !s.sleep(s.knob().RefundDelay) {
		return
	}
	now := s.now()
	s.mu.Lock()
	out := outcome{opStatus: "success", code: "0", message: "Success"}
	if declinedRefund(amount) {
		out = refundDeclined
	} else {
		p.Refunded += amount
		if p.Refunded >= p.Amount {
			p.Status = "refunded"
		} else {
			p.Status = "partially refunded"
		}
	}
	out.payStatus = p.Status
	out.provider = map[string]any{"id": providerID(p.Method), "payment_id": randDigits(10), "auth_code": ""}
	o := op{projectID: p.ProjectID, paymentID: p.ID, method: p.Method, amount: p.Amount, opAmount: amount,
		remaining: p.Amount - p.Refunded, currency: p.Currency, customerID: p.CustomerID, description: p.Description,
		opType: "refund", opID: newOpID(), requestID: requestID, created: now.Add(-time.Second)}
	s.mu.Unlock()
	body := o.body(out, now)
	if generic {
		body["general"] = map[string]any{"project_id": projectIDValue(p.ProjectID), "payment_id": p.ID}
	}
	s.emit("refund final", p, body, generic)
}

// SignedCallback builds a genuine signed callback for a payment without
// delivering it.
func (s *Sandbox) SignedCallback(paymentID, opType, opStatus string) []byte {
	p := s.Payment(paymentID)
	now := s.now()
	o := op{projectID: p.ProjectID, paymentID: p.ID, method: p.Method, amount: p.Amount, currency: p.Currency,
		customerID: p.CustomerID, description: p.Description, opType: opType, opID: newOpID(),
		requestID: randHex(21), created: now}
	out := outcome{payStatus: p.Status, opStatus: opStatus, code: "0", message: "Success",
		provider: map[string]any{"id": providerID(p.Method), "payment_id": randDigits(10), "auth_code": ""}}
	raw, err := signCallback(s.signer, o.body(out, now), s.CallbackSecret(p.ProjectID), false)
	if err != nil {
		panic(err) // the sandbox's own bodies always marshal
	}
	return raw
}

// emit signs a callback body and delivers it to every callback URL,
// unless the final callback of the payment is to be dropped.
func (s *Sandbox) emit(name string, p *Payment, body map[string]any, sigInGeneral bool) {
	dropped := s.noteStatus(name, p.ID, body)
	raw, err := signCallback(s.signer, body, s.CallbackSecret(p.ProjectID), sigInGeneral)
	if err != nil {
		return
	}
	pay, _ := body["payment"].(map[string]any)
	o, _ := body["operation"].(map[string]any)
	cb := &Callback{Name: name, PaymentID: p.ID, Body: raw, Dropped: dropped}
	cb.PayStatus, _ = pay["status"].(string)
	cb.OpStatus, _ = o["status"].(string)
	cb.OpType, _ = o["type"].(string)
	cb.OpID, _ = o["id"].(int64)
	s.mu.Lock()
	cb.Seq = len(s.callbacks) + 1
	s.callbacks = append(s.callbacks, cb)
	urls := append([]string(nil), s.callbackURLs...)
	copies := s.knobs.Copies
	s.mu.Unlock()
	if !dropped {
		s.deliver(cb, urls, copies)
	}
}

// resend delivers callback seq (1-based) once more, as ecommpay does when
// it sends a callback twice.
func (s *Sandbox) resend(seq int) bool {
	s.mu.Lock()
	if seq < 1 || seq > len(s.callbacks) {
		s.mu.Unlock()
		return false
	}
	cb := s.callbacks[seq-1]
	urls := append([]string(nil), s.callbackURLs...)
	s.mu.Unlock()
	s.deliver(cb, urls, 1)
	return true
}

// deliver starts copies × len(urls) independent deliveries of cb at once,
// each retrying until it gets exactly HTTP 200.
func (s *Sandbox) deliver(cb *Callback, urls []string, copies int) {
	start := make(chan struct{})
	for _, u := range urls {
		for c := 0; c < copies; c++ {
			d := &Delivery{CB: cb, URL: u, Copy: c}
			s.mu.Lock()
			s.deliveries = append(s.deliveries, d)
			s.mu.Unlock()
			s.goFlow(func() {
				<-start
				s.runDelivery(d)
			})
		}
	}
	close(start)
}

// retryDelay is the wait after attempt n (1-based): ecommpay's schedule
// divided by RetryScale, capped at RetryCap.
func retryDelay(k Knobs, n int) time.Duration {
	secs := 10.0
	if n > 6 {
		secs = 70 + 10*math.Pow(1.12, float64(n-4))
	}
	d := time.Duration(secs / k.RetryScale * float64(time.Second))
	return min(d, k.RetryCap)
}

func (s *Sandbox) runDelivery(d *Delivery) {
	k := s.knob()
	deadline := time.Now().Add(k.RetryWindow)
	for n := 1; n <= k.MaxAttempts; n++ {
		a := s.attempt(d)
		s.mu.Lock()
		d.Attempts = append(d.Attempts, a)
		if a.Status == http.StatusOK {
			d.Done = true
		}
		s.mu.Unlock()
		if a.Status == http.StatusOK {
			return
		}
		if time.Now().After(deadline) || !s.sleep(retryDelay(k, n)) {
			break
		}
	}
	s.mu.Lock()
	d.GaveUp = true
	s.mu.Unlock()
}

func (s *Sandbox) attempt(d *Delivery) Attempt {
	a := Attempt{At: s.now()}
	if err := checkCallbackURL(d.URL); err != nil {
		a.Err = err.Error()
		return a
	}
	req, err := http.NewRequestWithContext(s.ctx, http.MethodPost, d.URL, strings.NewReader(string(d.CB.Body)))
	if err != nil {
		a.Err = err.Error()
		return a
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", s.userAgent)
	resp, err := s.client.Do(req)
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

// noteStatus keeps what a callback says for status answers, and reports
// whether the callback is to be dropped.
func (s *Sandbox) noteStatus(name, paymentID string, body map[string]any) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.statusPay[paymentID] = body["payment"]
	if o, ok := body["operation"].(map[string]any); ok {
		ops := s.statusOps[paymentID]
		replaced := false
		for i, prev := range ops {
			if prev["id"] == o["id"] {
				ops[i], replaced = o, true
			}
		}
		if !replaced {
			ops = append(ops, o)
		}
		s.statusOps[paymentID] = ops
	}
	return name == "sale final" && (s.dropFinal[paymentID] || s.knobs.DropFinal)
}
