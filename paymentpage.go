package ecommpay

import (
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/canon"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/journal"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/respond"
)

// servePaymentPage answers with a signed Payment Page URL built from the
// app's parameters (a GET query, an urlencoded form or a flat JSON object).
func (h *Handler) servePaymentPage(w http.ResponseWriter, r *http.Request) error {
	x := h.newExchange(w, r, journal.KindPaymentPage)
	defer x.finish()
	if rf := h.signingRefusal(r); rf != nil {
		return x.answer(rf)
	}
	s := getScratch()
	defer s.release()
	pairs, rf := h.paymentParams(x, s)
	if rf != nil {
		return x.answer(rf)
	}
	p, rf := h.appendSignedPage(s, pairs)
	f := &s.fields
	x.ev.PaymentID = f.paymentID
	if rf != nil {
		return x.answer(rf)
	}
	x.ev.ProjectID = p.id
	x.ev.Amount, x.ev.Currency, x.ev.Method = f.amount, f.currency, f.method
	x.ev.Status, x.ev.Result = http.StatusOK, "signed"
	if h.Redirect {
		x.ev.Status = http.StatusSeeOther
		w.Header().Set("Cache-Control", "no-store")
		http.Redirect(w, r, string(s.url), http.StatusSeeOther)
		return nil
	}
	// The query needs no JSON escaping; the base is escaped once.
	out := append(s.out[:0], `{"url":`...)
	out = append(out, h.pageBase.json...)
	out = append(out, s.url[len(h.pageBase.raw):]...)
	out = append(out, `","signature":"`...)
	out = append(append(out, s.sig[:]...), "\"}\n"...) // base64 needs no JSON escaping
	s.out = out
	respond.JSON(w, http.StatusOK, out)
	return nil
}

// paymentParams collects the app's parameters in the order it sent them,
// into s.
func (h *Handler) paymentParams(x *exchange, s *signScratch) ([][2]string, *refusal) {
	r := x.r
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		return s.parseQuery(r.URL.RawQuery)
	case http.MethodPost:
	default:
		x.w.Header().Set("Allow", "GET, POST")
		return nil, refuse(http.StatusMethodNotAllowed, "invalid", "use GET with a query, or POST a form or a JSON object")
	}
	ct := r.Header.Get("Content-Type")
	switch ct {
	case "", "application/json", "application/x-www-form-urlencoded":
		// What ParseMediaType would return, without its allocations.
	default:
		ct, _, _ = mime.ParseMediaType(ct)
	}
	if ct != "application/json" && ct != "" && ct != "application/x-www-form-urlencoded" {
		return nil, &refusal{http.StatusBadRequest, "invalid", "Content-Type", "send application/json or application/x-www-form-urlencoded"}
	}
	body, rf := x.readBody()
	if rf != nil {
		return nil, rf
	}
	if ct == "application/x-www-form-urlencoded" {
		return s.parseQuery(body)
	}
	d, rf := h.parseObject(body)
	if rf != nil {
		return nil, rf
	}
	defer d.Release()
	pairs := s.pairs[:0]
	for n := d.First(d.Root()); n != canon.None; n = d.Next(n) {
		var v string
		switch d.Kind(n) {
		case canon.String:
			v = d.Text(n)
		case canon.Number:
			v = canon.RenderNumber(d.Text(n))
		case canon.Bool:
			v = "0"
			if d.Text(n) == "true" {
				v = "1"
			}
		case canon.Null:
		default:
			return nil, paramRefusal(d.Key(n), len(pairs), "Payment Page parameters must be flat: no objects or arrays")
		}
		pairs = append(pairs, [2]string{d.Key(n), v})
	}
	s.pairs = pairs
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

// parseQuery splits an urlencoded query into decoded pairs, in order,
// refusing bad encoding and repeated names, into s.pairs.
func (s *signScratch) parseQuery(q string) ([][2]string, *refusal) {
	if n := strings.Count(q, "&") + 1; cap(s.pairs) < n {
		s.pairs = make([][2]string, 0, n)
	}
	pairs := s.pairs[:0]
	var seen map[string]bool // only for long queries; a scan is cheaper below
	for len(q) > 0 {
		var part string
		part, q, _ = strings.Cut(q, "&")
		if part == "" {
			continue
		}
		k, v, _ := strings.Cut(part, "=")
		key, err1 := url.QueryUnescape(k)
		val, err2 := url.QueryUnescape(v)
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
	s.pairs = pairs
	return pairs, nil
}

func findPair(pairs [][2]string, key string) (string, bool) {
	for _, p := range pairs {
		if p[0] == key {
			return p[1], true
		}
	}
	return "", false
}

// pageFields are the parameters the handler reads itself, each the first
// of its name.
type pageFields struct {
	paymentID, amount, currency, method, projectID string
	projectGiven                                   bool
}

// appendSignedPage checks the parameters, adds project_id when it was left
// out and one project is configured, and signs: the URL in s.url, the
// signature in s.sig, and s.fields from pairs whatever the outcome.
func (h *Handler) appendSignedPage(s *signScratch, pairs [][2]string) (*project, *refusal) {
	// One pass finds the fields and the first forbidden parameter.
	f, bad, why := pageFields{}, -1, error(nil)
	for i, p := range pairs {
		if bad < 0 {
			if why = canon.CheckPair(p[0], p[1]); why != nil {
				bad = i
			}
		}
		var dst *string
		switch p[0] {
		case "payment_id":
			dst = &f.paymentID
		case "payment_amount":
			dst = &f.amount
		case "payment_currency":
			dst = &f.currency
		case "force_payment_method":
			dst = &f.method
		case "project_id":
			if !f.projectGiven {
				f.projectID, f.projectGiven = p[1], true
			}
			continue
		default:
			continue
		}
		if *dst == "" {
			*dst = p[1]
		}
	}
	s.fields = f
	if bad >= 0 {
		return nil, paramRefusal(pairs[bad][0], bad, why.Error())
	}
	for _, r := range [...]struct{ name, v string }{
		{"payment_id", f.paymentID}, {"payment_amount", f.amount}, {"payment_currency", f.currency},
	} {
		if r.v == "" {
			return nil, &refusal{http.StatusBadRequest, "invalid", r.name, r.name + " is required"}
		}
	}
	if !isPositiveInteger(f.amount) {
		return nil, &refusal{http.StatusBadRequest, "invalid", "payment_amount", "must be a positive integer in minor units"}
	}
	p, rf := h.projectFor(f.projectID, f.projectGiven, false, "project_id")
	if rf != nil {
		return nil, rf
	}
	if !f.projectGiven {
		pairs = append(pairs, [2]string{"project_id", p.id})
	}
	s.canon = canon.AppendPairs(s.canon[:0], pairs)
	sig := p.keys[0].AppendSign(s.sig[:0], s.canon)
	u := append(s.url[:0], h.pageBase.raw...)
	u = append(u, '?')
	for _, kv := range pairs {
		u = append(u, url.QueryEscape(kv[0])...)
		u = append(u, '=')
		u = append(u, url.QueryEscape(kv[1])...)
		u = append(u, '&')
	}
	u = append(u, "signature="...)
	s.url = append(u, url.QueryEscape(string(sig))...)
	return p, nil
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

func isDigit(c byte) bool { return c >= '0' && c <= '9' }
