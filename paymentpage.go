package ecommpay

import (
	"errors"
	"mime"
	"net/http"
	"net/url"
	"strings"
	"time"

	"go.uber.org/zap"
)

// paramError is a 400 that names the request field at fault.
type paramError struct{ field, msg string }

func (e *paramError) Error() string { return e.field + ": " + e.msg }

// servePaymentPage answers with a signed Payment Page URL built from the
// app's parameters (a GET query, an urlencoded form or a flat JSON object).
func (h *Handler) servePaymentPage(w http.ResponseWriter, r *http.Request) error {
	start := time.Now()
	status, result, projectID, paymentID := http.StatusOK, "signed", "", ""
	defer func() {
		h.metrics.signRequest(ModePaymentPage, result)
		if ce := h.logger.Check(zap.InfoLevel, "payment page request"); ce != nil {
			ce.Write(zap.String("project_id", projectID), zap.String("payment_id", paymentID),
				zap.String("result", result), zap.Int("status", status), zap.Duration("duration", time.Since(start)))
		}
	}()
	if code, msg := h.signingRefusal(r); code != 0 {
		status, result = code, "forbidden"
		writeError(w, status, "", "%s", msg)
		return nil
	}
	pairs, err := h.paymentParams(r)
	if err == nil {
		projectID, paymentID = lookupPair(pairs, "project_id"), lookupPair(pairs, "payment_id")
		var signed string
		var sig string
		signed, sig, pairs, err = h.signPaymentPage(pairs)
		if err == nil {
			projectID = lookupPair(pairs, "project_id")
			if h.Redirect {
				status = http.StatusSeeOther
				w.Header().Set("Cache-Control", "no-store")
				http.Redirect(w, r, signed, status)
				return nil
			}
			out := append(make([]byte, 0, len(signed)+len(sig)+32), `{"url":`...)
			out = appendQuoted(out, signed)
			out = append(out, `,"signature":`...)
			out = appendQuoted(out, sig)
			writeJSON(w, status, append(out, "}\n"...))
			return nil
		}
	}
	status, result = http.StatusBadRequest, "invalid"
	var pe *paramError
	switch {
	case errors.As(err, &pe):
		writeError(w, status, pe.field, "%s", pe.msg)
	case errors.Is(err, errTooLarge):
		status, result = http.StatusRequestEntityTooLarge, "too_large"
		writeError(w, status, "", "request body over %d bytes", h.MaxBody)
	case errors.Is(err, errMethod):
		status, result = http.StatusMethodNotAllowed, "invalid"
		w.Header().Set("Allow", "GET, POST")
		writeError(w, status, "", "use GET with a query, or POST a form or a JSON object")
	default:
		writeError(w, status, "", "%s", err.Error())
	}
	return nil
}

var errMethod = errors.New("method not allowed")

// paymentParams collects the app's parameters in the order it sent them.
func (h *Handler) paymentParams(r *http.Request) ([][2]string, error) {
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		return parseQueryOrdered(r.URL.RawQuery)
	case http.MethodPost:
	default:
		return nil, errMethod
	}
	body, err := readBody(r, h.MaxBody)
	if err != nil {
		return nil, err
	}
	ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if ct == "application/x-www-form-urlencoded" {
		return parseQueryOrdered(string(body))
	}
	if ct != "application/json" && ct != "" {
		return nil, &paramError{"Content-Type", "send application/json or application/x-www-form-urlencoded"}
	}
	d, err := parseBorrowed(body, h.limits)
	if err != nil {
		return nil, err
	}
	defer d.Release()
	if d.Kind(d.Root()) != Object {
		return nil, errors.New("the body must be a JSON object")
	}
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
			return nil, &paramError{d.Key(n), "Payment Page parameters must be flat: no objects or arrays"}
		}
		pairs = append(pairs, [2]string{d.Key(n), v})
	}
	return pairs, nil
}

func parseQueryOrdered(q string) ([][2]string, error) {
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
			return nil, &paramError{k, "bad URL encoding"}
		}
		dup := seen[key]
		if seen == nil {
			_, dup = findPair(pairs, key)
		}
		if dup {
			return nil, &paramError{key, "given more than once"}
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
func (h *Handler) signPaymentPage(pairs [][2]string) (signedURL, signature string, _ [][2]string, _ error) {
	for _, p := range pairs {
		if strings.Contains(p[0], ";") || strings.Contains(p[1], ";") {
			return "", "", nil, &paramError{p[0], "';' is not allowed in Payment Page parameters"}
		}
		if p[0] == "signature" {
			return "", "", nil, &paramError{p[0], "leave signature out: it is computed here"}
		}
	}
	for _, f := range []string{"payment_id", "payment_amount", "payment_currency"} {
		if lookupPair(pairs, f) == "" {
			return "", "", nil, &paramError{f, f + " is required"}
		}
	}
	if a := lookupPair(pairs, "payment_amount"); !isPositiveInteger(a) {
		return "", "", nil, &paramError{"payment_amount", "must be a positive integer in minor units"}
	}
	var p *project
	if id, given := findPair(pairs, "project_id"); given {
		if id == "" {
			return "", "", nil, &paramError{"project_id", "project_id is empty; leave it out or set it"}
		}
		if p = h.lookupProject(id); p == nil {
			return "", "", nil, &paramError{"project_id", "unknown project " + id}
		}
	} else if h.only != nil {
		p = h.only
		pairs = append(pairs, [2]string{"project_id", p.id})
	} else {
		return "", "", nil, &paramError{"project_id", "project_id is required when several projects are configured"}
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
	return u.String(), signature, pairs, nil
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
