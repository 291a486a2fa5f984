package ecommpay

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// serveGate signs an unsigned Gate API request and hands it to next
// (normally reverse_proxy to ecommpay). Nothing invalid is forwarded.
func (h *Handler) serveGate(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	start := time.Now()
	status, result, projectID, paymentID := 0, "signed", "", ""
	defer func() {
		h.metrics.signRequest(ModeGate, result)
		if ce := h.logger.Check(zap.InfoLevel, "gate request"); ce != nil {
			ce.Write(zap.String("path", r.URL.Path), zap.String("project_id", projectID), zap.String("payment_id", paymentID),
				zap.String("result", result), zap.Int("status", status), zap.Duration("duration", time.Since(start)))
		}
	}()
	reject := func(code int, res, field, format string, args ...any) error {
		status, result = code, res
		writeError(w, code, field, format, args...)
		return nil
	}
	if code, msg := h.signingRefusal(r); code != 0 {
		return reject(code, "forbidden", "", "%s", msg)
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		return reject(http.StatusMethodNotAllowed, "invalid", "", "Gate requests are POSTed JSON objects")
	}
	body, err := readBody(r, h.MaxBody)
	if errors.Is(err, errTooLarge) {
		return reject(http.StatusRequestEntityTooLarge, "too_large", "", "request body over %d bytes", h.MaxBody)
	}
	if err != nil {
		return reject(http.StatusBadRequest, "invalid", "", "reading the body: %v", err)
	}
	d, err := parseBorrowed(body, h.limits)
	if err != nil {
		code := http.StatusBadRequest
		if !errors.Is(err, ErrMalformed) {
			code = http.StatusRequestEntityTooLarge
		}
		return reject(code, "invalid", "", "%v", err)
	}
	defer d.Release()
	root := d.Root()
	if d.Kind(root) != Object {
		return reject(http.StatusBadRequest, "invalid", "", "the body must be a JSON object")
	}
	general := d.Object(root, "general")
	if general == none {
		return reject(http.StatusBadRequest, "invalid", "general", "general must be an object")
	}
	if n := d.Get(general, "payment_id"); n != none {
		paymentID = d.Text(n)
	}
	var p *project
	if n := d.Get(general, "project_id"); n != none {
		if k := d.Kind(n); k != Number && k != String {
			return reject(http.StatusBadRequest, "invalid", "general.project_id", "general.project_id must be a number")
		}
		projectID = d.Text(n)
		if p = h.lookupProject(projectID); p == nil {
			return reject(http.StatusBadRequest, "unknown_project", "general.project_id", "unknown project %s", projectID)
		}
	} else if h.only != nil {
		p, projectID = h.only, h.only.id
		kind := String
		if _, err := strconv.ParseInt(p.id, 10, 64); err == nil {
			kind = Number
		}
		d.Set(general, "project_id", kind, p.id)
	} else {
		return reject(http.StatusBadRequest, "invalid", "general.project_id", "general.project_id is required when several projects are configured")
	}
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
	rec := &statusRecorder{ResponseWriter: w}
	err = next.ServeHTTP(rec, r)
	status = rec.status
	if err != nil {
		status, result = http.StatusBadGateway, "upstream_error"
		var he caddyhttp.HandlerError
		if errors.As(err, &he) && he.StatusCode != 0 {
			status = he.StatusCode
		}
	}
	return err
}

// statusRecorder notes the status written through it, for logs.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the real writer.
func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }
