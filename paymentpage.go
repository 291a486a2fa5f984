package ecommpay

import (
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// servePaymentPage answers with a signed Payment Page URL built from the
// app's parameters (a GET query, an urlencoded form or a flat JSON object).
func (h *Handler) servePaymentPage(w http.ResponseWriter, r *http.Request) error {
	x := h.newExchange(w, r, kindPaymentPage)
	defer x.finish()
	if rf := h.signingRefusal(r); rf != nil {
		return x.answer(rf)
	}
	pairs, rf := h.paymentParams(x)
	if rf != nil {
		return x.answer(rf)
	}
	x.ev.PaymentID = lookupPair(pairs, "payment_id")
	signed, sig, p, rf := h.signPaymentPage(pairs)
	if rf != nil {
		return x.answer(rf)
	}
	x.ev.ProjectID = p.id
	x.ev.Amount, x.ev.Currency = lookupPair(pairs, "payment_amount"), lookupPair(pairs, "payment_currency")
	x.ev.Method = lookupPair(pairs, "force_payment_method")
	x.ev.Status, x.ev.Result = http.StatusOK, "signed"
	if h.Redirect {
		x.ev.Status = http.StatusSeeOther
		w.Header().Set("Cache-Control", "no-store")
		http.Redirect(w, r, signed, http.StatusSeeOther)
		return nil
	}
	out := append(make([]byte, 0, len(signed)+len(sig)+32), `{"url":`...)
	out = appendQuoted(out, signed)
	out = append(out, `,"signature":`...)
	out = appendQuoted(out, sig)
	writeJSON(w, http.StatusOK, append(out, "}\n"...))
	return nil
}

// paymentParams collects the app's parameters in the order it sent them.
func (h *Handler) paymentParams(x *exchange) ([][2]string, *refusal) {
	r := x.r
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		return parseQueryOrdered(r.URL.RawQuery)
	case http.MethodPost:
	default:
		x.w.Header().Set("Allow", "GET, POST")
		return nil, refuse(http.StatusMethodNotAllowed, "invalid", "use GET with a query, or POST a form or a JSON object")
	}
	ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if ct != "application/json" && ct != "" && ct != "application/x-www-form-urlencoded" {
		return nil, &refusal{http.StatusBadRequest, "invalid", "Content-Type", "send application/json or application/x-www-form-urlencoded"}
	}
	body, rf := x.readBody()
	if rf != nil {
		return nil, rf
	}
	if ct == "application/x-www-form-urlencoded" {
		return parseQueryOrdered(string(body))
	}
	d, rf := h.parseObject(body)
	if rf != nil {
		return nil, rf
	}
	defer d.Release()
	var pairs [][2]string
	for n := d.First(d.Root()); n != none; n = d.Next(n) {
		var v string
		switch d.Kind(n) {
		case String:
			v = d.Text(n)
		case Number:
			v = renderNumber(d.Text(n))
		case Bool:
			v = "0"
			if d.Text(n) == "true" {
				v = "1"
			}
		case Null:
		default:
			return nil, paramRefusal(d.Key(n), len(pairs), "Payment Page parameters must be flat: no objects or arrays")
		}
		pairs = append(pairs, [2]string{d.Key(n), v})
	}
	return pairs, nil
}

// paramRefusal is a 400 about parameter number i (from 0) named key. Error
// answers never echo input: a name that is not a plain identifier is given
// by its position instead.
func paramRefusal(key string, i int, msg string) *refusal {
	if !plainName(key) {
		key = "parameter #" + strconv.Itoa(i+1)
	}
	return &refusal{http.StatusBadRequest, "invalid", key, msg}
}

// plainName reports whether s looks like a parameter name: 1 to 64 ASCII
// letters, digits, '_', '.' or '-'.
func plainName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || isDigit(c) || c == '_' || c == '.' || c == '-') {
			return false
		}
	}
	return true
}

func parseQueryOrdered(q string) ([][2]string, *refusal) {
	pairs := make([][2]string, 0, strings.Count(q, "&")+1)
	var seen map[string]bool // only for long queries; a scan is cheaper below
	for part := range strings.SplitSeq(q, "&") {
		if part == "" {
			continue
		}
		k, v, _ := strings.Cut(part, "=")
		key, err1 := queryUnescape(k)
		val, err2 := queryUnescape(v)
		if err1 != nil || err2 != nil {
			return nil, paramRefusal(key, len(pairs), "bad URL encoding")
		}
		dup := seen[key]
		if seen == nil {
			_, dup = findPair(pairs, key)
		}
		if dup {
			return nil, paramRefusal(key, len(pairs), "given more than once")
		}
		if seen == nil && len(pairs) == 32 {
			seen = make(map[string]bool, 64)
			for _, p := range pairs {
				seen[p[0]] = true
			}
		}
		if seen != nil {
			seen[key] = true
		}
		pairs = append(pairs, [2]string{key, val})
	}
	return pairs, nil
}

func queryUnescape(s string) (string, error) {
	if !strings.ContainsAny(s, "%+") {
		return s, nil
	}
	return url.QueryUnescape(s)
}

func lookupPair(pairs [][2]string, key string) string {
	v, _ := findPair(pairs, key)
	return v
}

func findPair(pairs [][2]string, key string) (string, bool) {
	for _, p := range pairs {
		if p[0] == key {
			return p[1], true
		}
	}
	return "", false
}

// signPaymentPage checks the parameters, adds project_id when it was left
// out and one project is configured, and returns the signed URL.
func (h *Handler) signPaymentPage(pairs [][2]string) (signedURL, signature string, _ *project, _ *refusal) {
	for i, p := range pairs {
		if strings.Contains(p[0], ";") || strings.Contains(p[1], ";") {
			return "", "", nil, paramRefusal(p[0], i, "';' is not allowed in Payment Page parameters")
		}
		if p[0] == "signature" {
			return "", "", nil, paramRefusal(p[0], i, "leave signature out: it is computed here")
		}
	}
	for _, f := range []string{"payment_id", "payment_amount", "payment_currency"} {
		if lookupPair(pairs, f) == "" {
			return "", "", nil, &refusal{http.StatusBadRequest, "invalid", f, f + " is required"}
		}
	}
	if a := lookupPair(pairs, "payment_amount"); !isPositiveInteger(a) {
		return "", "", nil, &refusal{http.StatusBadRequest, "invalid", "payment_amount", "must be a positive integer in minor units"}
	}
	id, given := findPair(pairs, "project_id")
	p, rf := h.projectFor(id, given, false, "project_id")
	if rf != nil {
		return "", "", nil, rf
	}
	if !given {
		pairs = append(pairs, [2]string{"project_id", p.id})
	}
	signature = p.keys[0].Sign([]byte(CanonicalPairs(pairs)))
	var q strings.Builder
	size := len(h.paymentPage.String()) + 128
	for _, kv := range pairs {
		size += 3*(len(kv[0])+len(kv[1])) + 2
	}
	q.Grow(size)
	for _, kv := range pairs {
		q.WriteString(url.QueryEscape(kv[0]))
		q.WriteByte('=')
		q.WriteString(url.QueryEscape(kv[1]))
		q.WriteByte('&')
	}
	q.WriteString("signature=")
	q.WriteString(url.QueryEscape(signature))
	u := *h.paymentPage
	u.RawQuery = q.String()
	return u.String(), signature, p, nil
}

// isPositiveInteger accepts 1..10^18-1 written plainly (no sign, no leading 0).
func isPositiveInteger(s string) bool {
	if s == "" || len(s) > 18 || s[0] == '0' {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isDigit(s[i]) {
			return false
		}
	}
	return true
}
