package ecommpay

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// Headers set on what the app receives (client-sent copies are removed)
// and on duplicate answers to ecommpay.
const (
	HeaderEventKey  = "X-Ecommpay-Event-Key"
	HeaderProjectID = "X-Ecommpay-Project-Id"
	HeaderDuplicate = "X-Ecommpay-Duplicate"
)

// retryAfter is what in-flight duplicates and store failures are told;
// ecommpay's first retries come every 10 s anyway.
const retryAfter = "10"

func (h *Handler) provisionCallback() error {
	if h.TTL <= 0 {
		h.TTL = caddy.Duration(DefaultTTL)
	}
	if h.ForwardTimeout <= 0 {
		h.ForwardTimeout = caddy.Duration(DefaultForwardTimeout)
	}
	switch h.OnStoreError {
	case "", "reject", "forward":
	default:
		return fmt.Errorf("on_store_error: want reject or forward, not %q", h.OnStoreError)
	}
	switch h.Dedupe {
	case "", "memory", "redis":
		kind := h.Dedupe
		if kind == "" {
			kind = "memory"
		}
		if kind == "redis" && h.RedisURL == "" {
			return errors.New("dedupe redis needs a URL")
		}
		if kind == "memory" && h.RedisURL != "" {
			return errors.New("redis_url is set but dedupe is not redis")
		}
		redisURL, err := resolvePlaceholders(h.RedisURL)
		if err != nil {
			return fmt.Errorf("dedupe redis: %w", err)
		}
		maxKeys := h.MaxKeys
		if maxKeys <= 0 {
			maxKeys = DefaultMemoryMaxKeys
		}
		if h.store, h.releaseStore, err = acquireStore(kind, redisURL, maxKeys, h.logger); err != nil {
			return fmt.Errorf("dedupe %s: %w", kind, err)
		}
	case "off":
	default:
		return fmt.Errorf("dedupe: want memory, redis or off, not %q", h.Dedupe)
	}
	return h.provisionQRRewrite()
}

// event is what one callback turned out to be, for the log and metrics.
type event struct {
	project, paymentID, operationID, opStatus, payStatus, key, result string
	status                                                            int
}

// serveCallback verifies, claims, rewrites, re-signs and forwards one
// callback, then commits or releases the claim by the app's answer.
func (h *Handler) serveCallback(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	start := time.Now()
	ev := event{project: "unknown"}
	defer func() {
		h.metrics.callback(ev.project, ev.result)
		// Check first: the fields cost allocations even when Info is off.
		if ce := h.logger.Check(zap.InfoLevel, "callback"); ce != nil {
			ce.Write(zap.String("project_id", ev.project), zap.String("payment_id", ev.paymentID),
				zap.String("operation_id", ev.operationID), zap.String("operation_status", ev.opStatus),
				zap.String("payment_status", ev.payStatus), zap.String("event_key", ev.key),
				zap.String("result", ev.result), zap.Int("status", ev.status), zap.Duration("duration", time.Since(start)))
		}
	}()
	reject := func(status int, result, msg string) error {
		ev.status, ev.result = status, result
		writeError(w, status, "", "%s", msg)
		return nil
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		return reject(http.StatusMethodNotAllowed, "malformed", "callbacks are POSTed")
	}
	if len(h.from) > 0 && !clientAllowed(r, h.from) {
		return reject(http.StatusForbidden, "forbidden_source", "this source may not send callbacks")
	}
	body, err := readBody(r, h.MaxBody)
	if errors.Is(err, errTooLarge) {
		return reject(http.StatusRequestEntityTooLarge, "too_large", "body too large")
	}
	if err != nil {
		return reject(http.StatusBadRequest, "malformed", "reading the body failed")
	}
	d, err := parseBorrowed(body, h.limits)
	if err != nil {
		if errors.Is(err, ErrMalformed) {
			return reject(http.StatusBadRequest, "malformed", err.Error())
		}
		return reject(http.StatusRequestEntityTooLarge, "too_large", err.Error())
	}
	defer d.Release()
	root := d.Root()
	if d.Kind(root) != Object {
		return reject(http.StatusBadRequest, "malformed", "a callback is a JSON object")
	}
	general := d.Get(root, "general")
	pid := d.Get(root, "project_id")
	if pid == none {
		pid = d.Get(general, "project_id")
	}
	var p *project
	if pid != none && (d.Kind(pid) == Number || d.Kind(pid) == String) {
		p = h.lookupProject(d.Text(pid))
	}
	if p == nil {
		return reject(http.StatusForbidden, "unknown_project", "unknown project")
	}
	ev.project = p.id
	ev.paymentID = textAt(d, root, "payment", "id")
	if ev.paymentID == "" {
		ev.paymentID = textAt(d, general, "payment_id")
	}
	ev.operationID = textAt(d, root, "operation", "id")
	ev.opStatus = textAt(d, root, "operation", "status")
	ev.payStatus = textAt(d, root, "payment", "status")

	signature := d.EmbeddedSignature()
	if signature == "" {
		return reject(http.StatusForbidden, "invalid_signature", "no signature")
	}
	cb := canonBufs.Get().(*[]byte)
	defer canonBufs.Put(cb)
	canonical := d.Canonical((*cb)[:0], true)
	*cb = canonical
	key := verifyWith(p.keys, canonical, signature)
	if key == nil {
		return reject(http.StatusForbidden, "invalid_signature", "signature does not verify")
	}
	sum := sha256.Sum256(canonical)
	ev.key = p.id + "-" + hex.EncodeToString(sum[:16])

	var token string
	if h.store != nil {
		state, tok, err := h.store.Claim(r.Context(), ev.key, 2*time.Duration(h.ForwardTimeout))
		switch {
		case err != nil && h.OnStoreError == "forward":
			h.logger.Warn("de-dup store failed; forwarding without de-duplication", zap.String("event_key", ev.key), zap.Error(err))
			h.metrics.callback(p.id, "store_error")
		case err != nil:
			h.logger.Error("de-dup store failed; asking ecommpay to retry", zap.String("event_key", ev.key), zap.Error(err))
			w.Header().Set("Retry-After", retryAfter)
			return reject(http.StatusServiceUnavailable, "store_error", "try again later")
		case state == Delivered:
			ev.status, ev.result = http.StatusOK, "duplicate"
			w.Header().Set(HeaderDuplicate, "1")
			w.Header().Set(HeaderEventKey, ev.key)
			writeJSON(w, http.StatusOK, []byte(`{"status":"ok","duplicate":true}`+"\n"))
			return nil
		case state == InFlight:
			w.Header().Set("Retry-After", retryAfter)
			return reject(http.StatusConflict, "in_flight", "this callback is being delivered; retry later")
		default:
			token = tok
		}
	}

	out := body
	if h.rewriteQR(d, p) {
		// The app's own verification must still pass: re-sign with the key
		// that verified, in the place the signature came from.
		resigned := key.Sign(d.Canonical(canonical[:0], true))
		if s := d.Get(root, "signature"); s != none && d.Kind(s) == String {
			d.Set(root, "signature", String, resigned)
		} else {
			d.Set(general, "signature", String, resigned)
		}
		h.metrics.resigned()
		out = d.AppendJSON(make([]byte, 0, len(body)+2048))
	}
	return h.forwardCallback(w, r, next, out, p, &ev, token, start)
}

var canonBufs = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

// verifyWith returns the key whose signature matches, trying every key.
func verifyWith(keys []*Key, canonical []byte, signature string) *Key {
	var match *Key
	for _, k := range keys {
		if k.Verify(canonical, signature) && match == nil {
			match = k
		}
	}
	return match
}

// forwardCallback delivers the body to the app, answers ecommpay by the
// app's answer, and commits or releases the claim.
func (h *Handler) forwardCallback(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, body []byte, p *project, ev *event, token string, start time.Time) error {
	for name := range r.Header {
		if len(name) > 11 && http.CanonicalHeaderKey(name[:11]) == "X-Ecommpay-" {
			r.Header.Del(name)
		}
	}
	r.Header.Set(HeaderEventKey, ev.key)
	r.Header.Set(HeaderProjectID, p.id)
	r.Header.Set("Content-Type", "application/json")
	r.Header.Set("Content-Length", strconv.Itoa(len(body)))
	r.Header.Del("Accept-Encoding") // the app's answer is buffered, not parsed; keep it plain anyway
	r.Body = io.NopCloser(bytes.NewReader(body))
	r.ContentLength = int64(len(body))
	r.TransferEncoding = nil

	ctx, cancel := context.WithTimeout(r.Context(), time.Duration(h.ForwardTimeout))
	defer cancel()
	buf := responseBufs.Get().(*bytes.Buffer)
	buf.Reset()
	defer responseBufs.Put(buf)
	rec := caddyhttp.NewResponseRecorder(w, buf, func(int, http.Header) bool { return true })
	sent := time.Now()
	err := next.ServeHTTP(rec, r.WithContext(ctx))
	h.metrics.forwarded(p.id, time.Since(sent))

	appStatus := rec.Status()
	if appStatus == 0 {
		appStatus = http.StatusOK // nothing written: Go's server would answer 200
	}
	if err != nil {
		appStatus = http.StatusBadGateway
		var he caddyhttp.HandlerError
		if errors.As(err, &he) && he.StatusCode != 0 {
			appStatus = he.StatusCode
		}
		if ctx.Err() == context.DeadlineExceeded {
			appStatus = http.StatusGatewayTimeout
		}
	}
	// Commit and release must happen even if ecommpay hung up meanwhile.
	storeCtx, storeCancel := context.WithTimeout(context.WithoutCancel(r.Context()), 5*time.Second)
	defer storeCancel()
	delivered := err == nil && appStatus >= 200 && appStatus < 300
	if h.store != nil && token != "" {
		if delivered {
			if cerr := h.store.Commit(storeCtx, ev.key, token, time.Duration(h.TTL)); cerr != nil {
				// The app has it; a 200 stops retries that would deliver it again.
				h.logger.Error("could not record a delivered callback", zap.String("event_key", ev.key), zap.Error(cerr))
				h.metrics.callback(p.id, "store_error")
			}
		} else if rerr := h.store.Release(storeCtx, ev.key, token); rerr != nil {
			h.logger.Error("could not release a failed delivery; it frees itself when the claim expires",
				zap.String("event_key", ev.key), zap.Error(rerr))
		}
	}
	if delivered {
		ev.status, ev.result = http.StatusOK, "forwarded"
		w.Header().Set(HeaderEventKey, ev.key)
		w.Header().Set("Content-Length", strconv.Itoa(buf.Len()))
		w.WriteHeader(http.StatusOK) // ecommpay wants exactly 200
		_, _ = w.Write(buf.Bytes())
		return nil
	}
	ev.status, ev.result = appStatus, "app_error"
	if err != nil {
		h.logger.Warn("delivering a callback to the app failed; ecommpay will retry", zap.String("event_key", ev.key), zap.Error(err))
		w.Header().Set("Retry-After", retryAfter)
		writeError(w, appStatus, "", "the app could not be reached")
		return nil
	}
	w.Header().Set("Content-Length", strconv.Itoa(buf.Len()))
	w.WriteHeader(appStatus)
	_, _ = w.Write(buf.Bytes())
	return nil
}

var responseBufs = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// textAt follows object keys from n and returns the scalar's text, or "".
func textAt(d *Doc, n int32, path ...string) string {
	for _, k := range path {
		n = d.Get(n, k)
	}
	if n == none || d.Kind(n) == Object || d.Kind(n) == Array {
		return ""
	}
	return d.Text(n)
}
