package sandbox

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"time"
)

// The shapes of ecommpay's callbacks (spec §4.1, §5 and the seed articles),
// shared by the sandbox's flows and the trigger scenarios.

// op describes the operation a callback reports.
type op struct {
	projectID   string
	paymentID   string
	method      string
	amount      int64 // the payment's amount
	opAmount    int64 // the operation's amount (a refund's); 0 = amount
	remaining   int64 // the payment's sum after refunds; 0 = amount
	currency    string
	customerID  string
	description string
	opType      string // sale, refund
	opID        int64
	requestID   string
	created     time.Time
}

// outcome is the result of an operation, as a callback states it.
type outcome struct {
	payStatus, opStatus, code, message string
	provider                           map[string]any
}

// Test-project outcomes (spec §6) and the sandbox's own declines.
var (
	pendingQR       = outcome{"awaiting customer", "awaiting customer", "0", "Success", nil}
	pendingRedirect = outcome{"awaiting redirect result", "awaiting redirect result", "0", "Success", nil}
	saleSuccess     = outcome{"success", "success", "0", "Success", nil}
	saleInsufficent = outcome{"decline", "decline", "20105", "Insufficient funds on customer account", nil}
	saleByCustomer  = outcome{"decline", "decline", "20100", "Declined by the customer", nil}
	saleExpired     = outcome{"decline", "decline", "20602", "The customer did not confirm the payment in time", nil}
	refundDeclined  = outcome{"", "decline", "3283", "Refund declined by the provider", nil}
)

// declinedPurchase reports whether the test project declines a purchase of
// this amount.
func declinedPurchase(amount int64) bool { return amount == 40000 || amount == 40400 }

// declinedRefund reports whether the test project declines a refund of
// this amount.
func declinedRefund(amount int64) bool { return amount == 50000 || amount == 50500 }

func platformDate(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05-0700") }

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

// methodName is payment.method as ecommpay writes it.
func methodName(m string) string {
	switch m {
	case "mbway":
		return "MBWay"
	case "card":
		return "card"
	}
	return m
}

func sum(amount int64, currency string) map[string]any {
	return map[string]any{"amount": amount, "currency": currency}
}

// projectIDValue is project_id as ecommpay sends it: a number when it is one.
func projectIDValue(id string) any {
	if _, err := strconv.ParseInt(id, 10, 64); err == nil {
		return json.Number(id)
	}
	return id
}

// body builds a callback body for o ending in out at now.
func (o op) body(out outcome, now time.Time) map[string]any {
	provider := out.provider
	if provider == nil {
		provider = map[string]any{"id": providerID(o.method), "payment_id": "", "auth_code": ""}
		if out.opStatus == "success" {
			provider = map[string]any{"id": providerID(o.method), "payment_id": randDigits(10), "date": platformDate(now), "auth_code": ""}
		}
	}
	opAmount, remaining := o.opAmount, o.remaining
	if opAmount == 0 {
		opAmount = o.amount
	}
	if remaining == 0 && o.opType != "refund" {
		remaining = o.amount
	}
	description := o.description
	if description == "" {
		description = "order " + o.paymentID
	}
	payStatus := out.payStatus
	return map[string]any{
		"project_id": projectIDValue(o.projectID),
		"payment": map[string]any{
			"id": o.paymentID, "type": "purchase", "status": payStatus, "date": platformDate(now),
			"method": methodName(o.method), "sum": sum(remaining, o.currency), "description": description,
		},
		"customer": map[string]any{"id": o.customerID},
		"operation": map[string]any{
			"id": o.opID, "type": o.opType, "status": out.opStatus, "date": platformDate(now),
			"created_date": platformDate(o.created), "request_id": o.requestID,
			"sum_initial": sum(opAmount, o.currency), "sum_converted": sum(opAmount, o.currency),
			"code": out.code, "message": out.message, "provider": provider,
		},
	}
}

// withQR adds WeChat's display_data: the QR payload and its timeout.
func withQR(body map[string]any, qr, timeout string) map[string]any {
	body["display_data"] = []any{
		map[string]any{"type": "qr_data", "title": "QR code", "data": qr},
		map[string]any{"type": "add_info", "title": "QR Code Timeout", "data": timeout},
	}
	return body
}

// withRedirect adds redirect_data sending the customer to target.
func withRedirect(body map[string]any, target string) map[string]any {
	body["redirect_data"] = map[string]any{"method": "GET", "url": target, "body": []any{}, "encrypted": []any{}}
	return body
}

// newQR is a WeChat-like QR payload.
func newQR() string { return "weixin://wxpay/bizpayurl?pr=" + randAlnum(7) }

// newOpID is a platform-wide operation ID.
func newOpID() int64 {
	id, _ := strconv.ParseInt(randDigits(14), 10, 64)
	return id
}

// signCallback signs body as ecommpay signs a callback (every member but
// signature) and puts the signature at the top level, or at
// general.signature when inGeneral.
func signCallback(sg Signer, body map[string]any, secret string, inGeneral bool) ([]byte, error) {
	delete(body, "signature")
	if g, ok := body["general"].(map[string]any); ok {
		delete(g, "signature")
	}
	raw, err := json.Marshal(body)
	if err != nil {
		return nil, err
	}
	canonical, err := sg.Canonical(raw, true)
	if err != nil {
		return nil, err
	}
	sig := sg.Sign(canonical, secret)
	if inGeneral {
		g, ok := body["general"].(map[string]any)
		if !ok {
			g = map[string]any{}
			body["general"] = g
		}
		g["signature"] = sig
	} else {
		body["signature"] = sig
	}
	return json.Marshal(body)
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
	if slices.Contains(list, currency) {
		return ""
	}
	return fmt.Sprintf("currency %s is not available for %s", currency, method)
}

// checkCallbackURL refuses callback URLs that are not absolute http(s).
func checkCallbackURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return err
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return errors.New("callback URL must be an absolute http(s) URL")
	}
	return nil
}
