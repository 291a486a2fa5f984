package ecommpay

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/canon"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/journal"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// serveGate signs an unsigned Gate API request and hands it to next
// (normally reverse_proxy to ecommpay). Nothing invalid is forwarded.
func (h *Handler) serveGate(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	x := h.newExchange(w, r, journal.KindGate)
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
	if general == canon.None {
		return x.answer(&refusal{http.StatusBadRequest, "invalid", "general", "general must be an object"})
	}
	x.ev.PaymentID = d.TextAt(general, "payment_id")
	pid := d.Get(general, "project_id")
	if pid != canon.None && d.Kind(pid) != canon.Number && d.Kind(pid) != canon.String {
		return x.answer(&refusal{http.StatusBadRequest, "invalid", "general.project_id", "general.project_id must be a number"})
	}
	var id string
	if pid != canon.None {
		id = d.Text(pid)
	}
	p, rf := h.projectFor(id, pid != canon.None, false, "general.project_id")
	if rf != nil {
		return x.answer(rf)
	}
	if pid == canon.None {
		d.SetProjectID(general, p.id)
	}
	x.ev.ProjectID, x.ev.Path = p.id, r.URL.Path
	x.ev.Amount = d.TextAt(root, "payment", "amount")
	x.ev.Currency = d.TextAt(root, "payment", "currency")
	x.ev.Method = gateMethod(r.URL.Path)
	p.keys[0].SignGate(d, general)
	signed := d.AppendJSON(make([]byte, 0, len(body)+128))

	// The reader and the header values in one allocation; NopCloser kept
	// so the transport still sees an in-memory body.
	fw := new(gateForward)
	fw.body.Reset(signed)
	fw.vals = [2]string{strconv.Itoa(len(signed)), "application/json"}
	r.Body = io.NopCloser(&fw.body)
	r.ContentLength = int64(len(signed))
	r.TransferEncoding = nil
	// As Header.Set: canonical names, one value each, capped against Add.
	r.Header["Content-Length"] = fw.vals[0:1:1]
	r.Header["Content-Type"] = fw.vals[1:2:2]
	rec := caddyhttp.NewResponseRecorder(w, nil, nil)
	err := next.ServeHTTP(rec, r)
	x.ev.Status, x.ev.Result = rec.Status(), "signed"
	x.ev.EcommpayStatus = rec.Status()
	if err != nil {
		x.ev.Status, x.ev.Result = http.StatusBadGateway, "upstream_error"
		x.ev.EcommpayStatus, x.ev.Reason = 0, journal.ReasonUnreachable // ecommpay never answered
		var he caddyhttp.HandlerError
		if errors.As(err, &he) && he.StatusCode != 0 {
			x.ev.Status = he.StatusCode
		}
	}
	return err
}

// gateForward is what serveGate hands on besides the body itself.
type gateForward struct {
	body bytes.Reader
	vals [2]string
}

// gateMethod is the payment method a Gate path names:
// /v2/payment/{group}/{method}/{action} or /v2/payment/{method}/{action};
// "" for other paths.
func gateMethod(path string) string {
	p := strings.Trim(path, "/")
	if n := strings.Count(p, "/") + 1; n < 4 || n > 5 || !strings.HasPrefix(p, "v2/payment/") {
		return ""
	}
	p = p[:strings.LastIndexByte(p, '/')] // drop {action}
	return journal.TruncateUnverified(p[strings.LastIndexByte(p, '/')+1:])
}
