package ecommpay

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// serveGate signs an unsigned Gate API request and hands it to next
// (normally reverse_proxy to ecommpay). Nothing invalid is forwarded.
func (h *Handler) serveGate(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	x := h.newExchange(w, r, kindGate)
	defer x.finish()
	if rf := h.signingRefusal(r); rf != nil {
		return x.answer(rf)
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		return x.answer(refuse(http.StatusMethodNotAllowed, "invalid", "Gate requests are POSTed JSON objects"))
	}
	d, body, rf := x.readObject()
	if rf != nil {
		return x.answer(rf)
	}
	defer d.Release()
	root := d.Root()
	general := d.Object(root, "general")
	if general == none {
		return x.answer(&refusal{http.StatusBadRequest, "invalid", "general", "general must be an object"})
	}
	x.ev.PaymentID = textAt(d, general, "payment_id")
	pid := d.Get(general, "project_id")
	if pid != none && d.Kind(pid) != Number && d.Kind(pid) != String {
		return x.answer(&refusal{http.StatusBadRequest, "invalid", "general.project_id", "general.project_id must be a number"})
	}
	var id string
	if pid != none {
		id = d.Text(pid)
	}
	p, rf := h.projectFor(id, pid != none, false, "general.project_id")
	if rf != nil {
		return x.answer(rf)
	}
	if pid == none {
		kind := String
		if _, err := strconv.ParseInt(p.id, 10, 64); err == nil {
			kind = Number
		}
		d.Set(general, "project_id", kind, p.id)
	}
	x.ev.ProjectID, x.ev.Path = p.id, r.URL.Path
	x.ev.Amount = textAt(d, root, "payment", "amount")
	x.ev.Currency = textAt(d, root, "payment", "currency")
	x.ev.Method = gateMethod(r.URL.Path)
	// The signature covers the body without any signature, and goes to
	// general.signature, where Gate looks for it.
	d.Delete(root, "signature")
	d.Delete(general, "signature")
	canonical := d.Canonical(nil, false)
	d.Set(general, "signature", String, p.keys[0].Sign(canonical))
	signed := d.AppendJSON(make([]byte, 0, len(body)+128))

	r.Body = io.NopCloser(bytes.NewReader(signed))
	r.ContentLength = int64(len(signed))
	r.TransferEncoding = nil
	r.Header.Set("Content-Length", strconv.Itoa(len(signed)))
	r.Header.Set("Content-Type", "application/json")
	rec := caddyhttp.NewResponseRecorder(w, nil, nil)
	err := next.ServeHTTP(rec, r)
	x.ev.Status, x.ev.Result = rec.Status(), "signed"
	x.ev.AppStatus = rec.Status()
	if err != nil {
		x.ev.Status, x.ev.Result = http.StatusBadGateway, "upstream_error"
		var he caddyhttp.HandlerError
		if errors.As(err, &he) && he.StatusCode != 0 {
			x.ev.Status = he.StatusCode
		}
	}
	return err
}

// gateMethod is the payment method a Gate path names:
// /v2/payment/{group}/{method}/{action} or /v2/payment/{method}/{action};
// "" for other paths.
func gateMethod(path string) string {
	parts := strings.Split(strings.Trim(path, "/"), "/")
	if len(parts) < 4 || len(parts) > 5 || parts[0] != "v2" || parts[1] != "payment" {
		return ""
	}
	return truncateUnverified(parts[len(parts)-2])
}
