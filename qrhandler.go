package ecommpay

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/canon"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/qr"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/respond"
	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

// maxQRTimeout caps a callback's "QR Code Timeout" for hosted links.
const maxQRTimeout = 24 * time.Hour

// now is the clock of QR link expiry; tests move it.
var now = time.Now

// provisionQR sets up rendering (size, level, the image cache), for mode
// qr and for the callback mode's rewrite.
func (h *Handler) provisionQR() error {
	h.qrOpts = qr.Options{Size: h.QRSize}
	if h.QRLevel != "" {
		lvl, err := qr.ParseLevel(h.QRLevel)
		if err != nil {
			return fmt.Errorf("qr_level: %w", err)
		}
		h.qrOpts.Level = lvl
	}
	if _, err := h.qrOpts.Normalize(); err != nil {
		return fmt.Errorf("qr_size or qr_level: %w", err)
	}
	size := h.QRCacheSize
	if size <= 0 {
		size = qr.DefaultCacheBytes
	}
	var err error
	h.qrCache, err = qr.NewCache(size)
	return err
}

func (h *Handler) provisionQRRewrite() error {
	switch h.QR {
	case "", "image":
		if h.QRBaseURL != "" {
			return errors.New("qr_base_url is set but qr is not url")
		}
	case "url":
		base, err := parseBaseURL(h.QRBaseURL)
		if err != nil {
			return fmt.Errorf("qr url: %w", err)
		}
		h.qrBase = base
		if h.QRTTL <= 0 {
			h.QRTTL = caddy.Duration(defaultQRTTL)
		}
	case "off":
		return nil
	default:
		return fmt.Errorf("qr: want image, url or off, not %q", h.QR)
	}
	return h.provisionQR()
}

// rewriteQR turns each display_data entry of type qr_data into an image
// (qr_img, base64 PNG) or a hosted link (qr_url), keeping the original
// string under "source". It reports whether anything changed. An entry it
// cannot render is left as it was: the callback is never refused for it.
func (h *Handler) rewriteQR(d *canon.Doc, p *project) bool {
	if h.QR == "off" {
		return false
	}
	changed := false
	for e := range qr.DisplayEntries(d) {
		if d.TextAt(e, "type") != "qr_data" {
			continue
		}
		data := d.Get(e, "data")
		if data == canon.None || d.Kind(data) != canon.String || d.Text(data) == "" {
			h.logger.Warn("qr_data entry without a string to render; forwarded as it came")
			h.metrics.qrImage("error")
			continue
		}
		payload := d.Text(data)
		if h.qrBase != nil {
			link := qr.MakeLink(h.qrBase.String(), p.qrKeys[0], p.id, payload, now().Add(h.qrLifetime(d)))
			d.Set(e, "type", canon.String, "qr_url")
			d.Set(e, "data", canon.String, link)
		} else {
			png, hit, err := h.qrCache.PNG(payload, h.qrOpts)
			if err != nil {
				h.logger.Warn("qr_data cannot be rendered; forwarded as it came", zap.Int("length", len(payload)), zap.Error(err))
				h.metrics.qrImage("error")
				continue
			}
			h.metrics.qrImage(cacheOutcome(hit))
			d.Set(e, "type", canon.String, "qr_img")
			d.Set(e, "data", canon.String, base64.StdEncoding.EncodeToString(png))
		}
		d.Set(e, "source", canon.String, payload)
		changed = true
	}
	return changed
}

// qrLifetime is the callback's "QR Code Timeout" (seconds, in an add_info
// entry), else the configured default.
func (h *Handler) qrLifetime(d *canon.Doc) time.Duration {
	for e := range qr.DisplayEntries(d) {
		if !strings.EqualFold(d.TextAt(e, "title"), "QR Code Timeout") {
			continue
		}
		secs, err := strconv.ParseFloat(d.TextAt(e, "data"), 64)
		if err == nil && secs > 0 {
			// Clamp before converting: a huge value would overflow into
			// an already expired link.
			return time.Duration(min(secs, maxQRTimeout.Seconds()) * float64(time.Second))
		}
	}
	return time.Duration(h.QRTTL)
}

func cacheOutcome(hit bool) string {
	if hit {
		return "hit"
	}
	return "miss"
}

// serveQR serves a hosted QR image whose link verifies and has not expired.
// Anything else is a plain 404, so links cannot be probed.
func (h *Handler) serveQR(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		respond.Error(w, http.StatusMethodNotAllowed, "", "QR images are fetched with GET")
		return nil
	}
	t := now()
	link, err := qr.ParseLink(r.URL.EscapedPath())
	var p *project
	if err == nil {
		p = h.lookupProject(link.Project)
	}
	if p == nil || !link.Valid(p.qrKeys, t) {
		http.NotFound(w, r)
		return nil
	}
	png, hit, err := h.qrCache.PNG(link.Payload, h.qrOpts)
	if err != nil {
		h.metrics.qrImage("error")
		http.NotFound(w, r)
		return nil
	}
	h.metrics.qrImage(cacheOutcome(hit))
	expires := time.Unix(link.Expires, 0)
	hdr := w.Header()
	hdr.Set("Content-Type", "image/png")
	hdr.Set("Content-Length", strconv.Itoa(len(png)))
	hdr.Set("Cache-Control", "private, max-age="+strconv.Itoa(int(expires.Sub(t).Seconds())))
	hdr.Set("Expires", expires.UTC().Format(http.TimeFormat))
	hdr.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		_, _ = w.Write(png)
	}
	return nil
}
