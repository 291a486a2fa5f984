package ecommpay

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/canon"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/journal"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/respond"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/store"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"golang.org/x/sync/semaphore"
)

// Headers set on what the app receives (client-sent copies are removed)
// and on duplicate answers to ecommpay.
const (
	headerEventKey  = "X-Ecommpay-Event-Key"
	headerProjectID = "X-Ecommpay-Project-Id"
	headerDuplicate = "X-Ecommpay-Duplicate"
	// headerReplay marks an event an operator sent again from the console.
	headerReplay = "X-Ecommpay-Replay"
	// headerSource is "status" on a payment status that reconciliation
	// asked ecommpay for, because the callback never came.
	headerSource = "X-Ecommpay-Source"
)

// retryAfter is what in-flight duplicates and store failures are told;
// ecommpay's first retries come every 10 s anyway.
const retryAfter = "10"

// minRetryWindow is how long ecommpay keeps retrying a callback.
const minRetryWindow = 11 * 24 * time.Hour

func (h *Handler) provisionCallback() error {
	if h.TTL <= 0 {
		h.TTL = caddy.Duration(defaultTTL)
	}
	if time.Duration(h.TTL) < minRetryWindow {
		h.logger.Warn("ttl is shorter than ecommpay's 11 days of retries: a retry that comes later is delivered to the app again",
			zap.Duration("ttl", time.Duration(h.TTL)))
	}
	if h.ForwardTimeout <= 0 {
		h.ForwardTimeout = caddy.Duration(defaultForwardTimeout)
	}
	if h.ReadTimeout <= 0 {
		h.ReadTimeout = caddy.Duration(defaultReadTimeout)
	}
	switch h.OnStoreError {
	case "", "reject", "forward":
	default:
		return fmt.Errorf("on_store_error: want reject or forward, not %q", h.OnStoreError)
	}
	if err := h.provisionReconcile(); err != nil {
		return err
	}
	return h.provisionQRRewrite()
}

// provisionStore opens the backend that holds de-dup state (callbacks) and
// the journal (every mode but qr).
func (h *Handler) provisionStore(ctx caddy.Context) error {
	kind := h.Store
	switch h.Dedupe {
	case "", "off":
	case "memory", "redis":
		if kind != "" && kind != h.Dedupe {
			return fmt.Errorf("dedupe %s contradicts store %s", h.Dedupe, kind)
		}
		kind = h.Dedupe
	default:
		return fmt.Errorf("dedupe: want memory, redis or off, not %q", h.Dedupe)
	}
	if kind == "" {
		kind = "local"
	}
	switch kind {
	case "local", "memory", "redis":
	default:
		return fmt.Errorf("store: want local, memory or redis, not %q", kind)
	}
	if (kind == "redis") != (h.RedisURL != "") {
		return errors.New("a Redis URL goes with store redis, and only with it")
	}
	if h.StorePath != "" && kind != "local" {
		return errors.New("a store path goes with store local only")
	}
	dedupe := h.Mode == modeCallback && h.Dedupe != "off"
	if !dedupe && h.Journal.Off {
		return nil // nothing to keep
	}
	redisURL, err := resolvePlaceholders(h.RedisURL)
	if err != nil {
		return fmt.Errorf("store redis: %w", err)
	}
	b, release, err := acquireBackend(backendOptions{
		Kind: kind, Path: h.StorePath, RedisURL: redisURL, MaxKeys: h.MaxKeys,
		Journal:    journal.Options{MaxAge: time.Duration(h.Journal.MaxAge), MaxSize: h.Journal.MaxSize, NoBodies: h.Journal.NoBodies},
		JournalSet: h.Journal.MaxAge != 0 || h.Journal.MaxSize != 0 || h.Journal.NoBodies,
		Config:     ctx.Context, // one per config load, shared by its handlers
		Owner:      "the " + h.Mode + " handler",
	}, h.logger)
	if err != nil {
		return fmt.Errorf("store %s: %w", kind, err)
	}
	h.releaseStore = release
	if dedupe {
		h.store = b
	}
	if !h.Journal.Off {
		h.journal = b
	}
	return nil
}

// serveCallback verifies, claims, rewrites, re-signs and forwards one
// callback, then commits or releases the claim by the app's answer.
func (h *Handler) serveCallback(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if dsp, ok := r.Context().Value(dispatchKey{}).(*dispatched); ok && dsp.target == h {
		return h.serveDispatched(w, r, next, dsp)
	}
	x := h.newExchange(w, r, journal.KindCallback)
	defer x.finish()
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		return x.answer(refuse(http.StatusMethodNotAllowed, "malformed", "callbacks are POSTed"))
	}
	if len(h.from) > 0 && !clientAllowed(r, h.from) {
		return x.answer(refuse(http.StatusForbidden, "forbidden_source", "this source may not send callbacks"))
	}
	d, body, rf := x.readObject()
	if rf != nil {
		return x.answer(rf)
	}
	defer d.Release()
	p, key, rf := h.verifyCallback(d, &x.ev)
	if rf != nil {
		return x.answer(rf)
	}
	// Verified: now the body is worth a copy of its own, for the app and
	// the journal.
	return h.deliver(x, next, d, []byte(body), p, key)
}

// serveDispatched serves an in-process delivery: a replay, which is
// deliberate and so not de-duplicated, or a status answer, which is
// claimed and committed like a callback.
func (h *Handler) serveDispatched(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, dsp *dispatched) error {
	dsp.reached = true
	if dsp.kind == "" { // a probe of the route
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
	x := h.newExchange(w, r, dsp.kind)
	defer func() { dsp.ev = x.ev }()
	defer x.finish()
	d, rf := h.parseObject(string(dsp.body))
	if rf != nil {
		return x.answer(rf)
	}
	defer d.Release()
	p, key, rf := h.verifyCallback(d, &x.ev)
	if rf != nil {
		return x.answer(rf)
	}
	return h.deliver(x, next, d, dsp.body, p, key)
}

// deliver claims a verified event (replays excepted), rewrites it,
// forwards it and settles the claim.
func (h *Handler) deliver(x *exchange, next caddyhttp.Handler, d *canon.Doc, body []byte, p *project, key *canon.Key) error {
	w, r := x.w, x.r
	var token string
	if h.store != nil && x.ev.Kind != journal.KindReplay {
		state, tok, err := h.store.Claim(r.Context(), x.ev.EventKey, 2*time.Duration(h.ForwardTimeout))
		switch {
		case err != nil && h.OnStoreError == "forward":
			h.logger.Warn("de-dup store failed; forwarding without de-duplication", zap.String("event_key", x.ev.EventKey), zap.Error(err))
			h.metrics.storeError("claim")
		case err != nil:
			h.logger.Error("de-dup store failed; asking ecommpay to retry", zap.String("event_key", x.ev.EventKey), zap.Error(err))
			h.metrics.storeError("claim")
			w.Header().Set("Retry-After", retryAfter)
			return x.answer(refuse(http.StatusServiceUnavailable, "store_error", "try again later"))
		case state == store.Delivered:
			x.ev.Status, x.ev.Result = http.StatusOK, "duplicate"
			w.Header().Set(headerDuplicate, "1")
			w.Header().Set(headerEventKey, x.ev.EventKey)
			respond.JSON(w, http.StatusOK, []byte(`{"status":"ok","duplicate":true}`+"\n"))
			return nil
		case state == store.InFlight:
			w.Header().Set("Retry-After", retryAfter)
			return x.answer(refuse(http.StatusConflict, "in_flight", "this callback is being delivered; retry later"))
		default:
			token = tok
		}
	}
	if !h.Journal.NoBodies && x.ev.Kind != journal.KindReplay {
		x.ev.Body = body // as received: what a replay sends again
	}
	return h.forwardCallback(x, next, h.rewriteCallback(d, body, p, key), token)
}

// verifyCallback finds the callback's project, verifies its signature and
// notes what it says. Fields read before the signature is known to be
// right are noted truncated and marked unverified.
func (h *Handler) verifyCallback(d *canon.Doc, ev *journal.Event) (*project, *canon.Key, *refusal) {
	root := d.Root()
	general := d.Get(root, "general")
	noteCallback(d, ev, false)
	pid := d.Get(root, "project_id")
	if pid == canon.None {
		pid = d.Get(general, "project_id")
	}
	var p *project
	if pid != canon.None && (d.Kind(pid) == canon.Number || d.Kind(pid) == canon.String) {
		p = h.lookupProject(d.Text(pid))
	}
	if p == nil {
		return nil, nil, refuse(http.StatusForbidden, "unknown_project", "unknown project")
	}
	ev.ProjectID = p.id
	signature := d.EmbeddedSignature()
	if !canon.WellFormedSignature(signature) {
		// Checked before the canonical string is built: a body without a
		// plausible signature costs no more than its parse.
		return nil, nil, refuse(http.StatusForbidden, "invalid_signature", "no valid signature")
	}
	if bound := d.CanonicalBound(); bound > bigCanonical {
		// One large body's canonical work is bounded; many at once are
		// bounded here, in total, so that strangers cannot add them up.
		ctx, cancel := context.WithTimeout(context.Background(), canonWait)
		err := canonInFlight.Acquire(ctx, int64(2*bound))
		cancel()
		if err != nil {
			return nil, nil, refuse(http.StatusServiceUnavailable, "busy", "too many large callbacks at once; retry later")
		}
		defer canonInFlight.Release(int64(2 * bound))
	}
	cb := canonBufs.Get().(*[]byte)
	canonical := d.Canonical((*cb)[:0], true)
	key := verifyWith(p.keys, canonical, signature)
	if key != nil {
		sum := sha256.Sum256(canonical)
		ev.EventKey = eventKey(p.id, sum[:16])
	}
	if cap(canonical) <= maxPooledCanonical {
		*cb = canonical
		canonBufs.Put(cb)
	}
	if key == nil {
		return nil, nil, refuse(http.StatusForbidden, "invalid_signature", "signature does not verify")
	}
	if !d.CallbackShaped() {
		// A signed Payment Page URL, which every customer sees, verifies
		// with the same secret: its shape, not its signature, tells it apart.
		ev.EventKey = ""
		return nil, nil, refuse(http.StatusForbidden, "not_a_callback", canon.NotACallback)
	}
	ev.Verified = true
	noteCallback(d, ev, true)
	return p, key, nil
}

// eventKey is the project's id, "-" and the hex of sum, made in one
// allocation.
func eventKey(projectID string, sum []byte) string {
	var b strings.Builder
	b.Grow(len(projectID) + 1 + hex.EncodedLen(len(sum)))
	b.WriteString(projectID)
	b.WriteByte('-')
	var digits [64]byte
	b.Write(hex.AppendEncode(digits[:0], sum))
	return b.String()
}

// noteCallback copies the callback's identity into ev; unverified values
// are cut short.
func noteCallback(d *canon.Doc, ev *journal.Event, verified bool) {
	root := d.Root()
	cut := journal.TruncateUnverified
	if verified {
		cut = func(s string) string { return s }
	}
	ev.PaymentID = cut(d.TextAt(root, "payment", "id"))
	if ev.PaymentID == "" {
		ev.PaymentID = cut(d.TextAt(root, "general", "payment_id"))
	}
	ev.OperationID = cut(d.TextAt(root, "operation", "id"))
	ev.OperationType = cut(d.TextAt(root, "operation", "type"))
	ev.OperationStatus = cut(d.TextAt(root, "operation", "status"))
	ev.PaymentStatus = cut(d.TextAt(root, "payment", "status"))
	if !verified {
		if pid := d.TextAt(root, "project_id"); pid != "" {
			ev.ProjectID = cut(pid)
		}
		return
	}
	// What was paid, for a payment the journal first sees here.
	ev.Amount = d.TextAt(root, "payment", "sum", "amount")
	ev.Currency = d.TextAt(root, "payment", "sum", "currency")
	ev.Method = d.TextAt(root, "payment", "method")
}

// rewriteCallback returns the body the app gets: the body as received when
// nothing needs changing; else without what the signature does not cover,
// with QR codes rendered, and re-signed when the signed content changed.
func (h *Handler) rewriteCallback(d *canon.Doc, body []byte, p *project, key *canon.Key) []byte {
	dropped := d.DropUnsigned()
	if !h.rewriteQR(d, p) {
		if !dropped {
			return body
		}
		// What was dropped is outside the canonical string: the
		// signature still holds.
		return d.AppendJSON(make([]byte, 0, len(body)))
	}
	// The app's own verification must still pass: re-sign with the key
	// that verified, in the place the signature came from.
	key.SignCallback(d, d.SignatureHolder())
	h.metrics.resigned()
	return d.AppendJSON(make([]byte, 0, len(body)+2048))
}

// Callbacks whose canonical string may exceed bigCanonical share a budget
// of maxCanonInFlight bytes (the items and the string, so twice its size)
// and wait at most canonWait for room. Real callbacks are a few KB and
// never wait.
const (
	bigCanonical     = 64 << 10
	maxCanonInFlight = 32 << 20
	canonWait        = 2 * time.Second
)

var canonInFlight = semaphore.NewWeighted(maxCanonInFlight)

// maxPooledCanonical keeps an unusually large canonical buffer out of the
// pool, so one big body does not pin its memory.
const maxPooledCanonical = 64 << 10

var canonBufs = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

// verifyWith returns the key whose signature matches, trying every key.
func verifyWith(keys []*canon.Key, canonical []byte, signature string) *canon.Key {
	var match *canon.Key
	for _, k := range keys {
		if k.Verify(canonical, signature) && match == nil {
			match = k
		}
	}
	return match
}

// forwardCallback delivers the body to the app, answers ecommpay by the
// app's answer, and commits or releases the claim. The delivery runs to
// its end even when ecommpay hangs up, so that an app's late 2xx is still
// committed and the retry gets a duplicate answer rather than a second
// delivery.
func (h *Handler) forwardCallback(x *exchange, next caddyhttp.Handler, body []byte, token string) error {
	w, r, ev := x.w, x.r, &x.ev
	prepareForApp(r.Header)
	// The query is not signed: frameworks that merge it into the request's
	// parameters would take a stranger's values for ecommpay's.
	r.URL.RawQuery, r.URL.ForceQuery = "", false
	x.setHeader(r.Header, headerEventKey, ev.EventKey)
	x.setHeader(r.Header, headerProjectID, ev.ProjectID)
	switch ev.Kind {
	case journal.KindReplay:
		x.setHeader(r.Header, headerReplay, "1")
	case journal.KindStatus:
		x.setHeader(r.Header, headerSource, "status")
	}
	x.setHeader(r.Header, "Content-Type", "application/json")
	x.setHeader(r.Header, "Content-Length", strconv.Itoa(len(body)))
	r.Header.Del("Accept-Encoding") // the app's answer is buffered, not parsed; keep it plain anyway
	x.body.Reset(body)
	r.Body = &x.body
	r.ContentLength = int64(len(body))
	r.TransferEncoding = nil

	// Detached from the request: the delivery runs to its end even when
	// ecommpay hangs up.
	ctx, cancel := context.WithTimeout(x.context(), time.Duration(h.ForwardTimeout))
	defer cancel()
	buf := responseBufs.Get().(*bytes.Buffer)
	buf.Reset()
	defer func() {
		if buf.Cap() <= maxPooledResponse {
			responseBufs.Put(buf)
		}
	}()
	rec := &x.app
	rec.ResponseWriter, rec.buf = w, buf
	sent := time.Now()
	err := next.ServeHTTP(rec, r.WithContext(ctx))
	x.appLatency = time.Since(sent)
	h.metrics.forwarded(h.lookupProject(ev.ProjectID), ev.ProjectID, x.appLatency)

	appStatus := rec.status
	if err != nil {
		// The app never answered: the status is the proxy's.
		appStatus, ev.Reason = http.StatusBadGateway, journal.ReasonUnreachable
		var he caddyhttp.HandlerError
		if errors.As(err, &he) && he.StatusCode != 0 {
			appStatus = he.StatusCode
		}
		if ctx.Err() == context.DeadlineExceeded {
			appStatus, ev.Reason = http.StatusGatewayTimeout, journal.ReasonTimeout
		}
	}
	ev.AppStatus = appStatus
	delivered := err == nil && appStatus >= 200 && appStatus < 300
	h.settleClaim(x, token, delivered)
	if delivered {
		ev.Status, ev.Result = http.StatusOK, "forwarded"
		x.setHeader(w.Header(), headerEventKey, ev.EventKey)
		x.setHeader(w.Header(), "Content-Length", strconv.Itoa(buf.Len()))
		w.WriteHeader(http.StatusOK) // ecommpay wants exactly 200
		_, _ = w.Write(buf.Bytes())
		return nil
	}
	ev.Result = "app_error"
	if err != nil || appStatus == 0 {
		if err != nil {
			h.logger.Warn("delivering a callback to the app failed; ecommpay will retry", zap.String("event_key", ev.EventKey), zap.Error(err))
		} else {
			h.logger.Error("nothing after `ecommpay callback` answered the callback, so it was not delivered; "+
				"put reverse_proxy to the app in the same route or handle block, after ecommpay callback",
				zap.String("event_key", ev.EventKey))
			ev.Status, ev.Reason = http.StatusBadGateway, journal.ReasonNoHandler
		}
		w.Header().Set("Retry-After", retryAfter)
		return x.answer(refuse(cmp.Or(ev.Status, appStatus), "app_error", "the app could not be reached"))
	}
	ev.Status = appStatus
	x.setHeader(w.Header(), "Content-Length", strconv.Itoa(buf.Len()))
	w.WriteHeader(appStatus)
	_, _ = w.Write(buf.Bytes())
	return nil
}

// settleClaim commits a delivered event or releases the claim of one that
// was not. It runs even when ecommpay hung up meanwhile.
func (h *Handler) settleClaim(x *exchange, token string, delivered bool) {
	if h.store == nil || token == "" {
		return
	}
	key := x.ev.EventKey
	ctx, cancel := context.WithTimeout(x.context(), 5*time.Second)
	defer cancel()
	if delivered {
		if err := h.store.Commit(ctx, key, token, time.Duration(h.TTL)); err != nil {
			// The app has it; a 200 stops retries that would deliver it again.
			h.logger.Error("could not record a delivered callback", zap.String("event_key", key), zap.Error(err))
			h.metrics.storeError("commit")
		}
	} else if err := h.store.Release(ctx, key, token); err != nil {
		h.logger.Error("could not release a failed delivery; it frees itself when the claim expires",
			zap.String("event_key", key), zap.Error(err))
		h.metrics.storeError("release")
	}
}

// prepareForApp removes what a client may have sent to pass for the
// module's own headers or to change how the app reads the body:
// X-Ecommpay-* in any case and with '_' for '-' (CGI and FastCGI map both
// to one variable), Connection, which would make the proxy drop headers
// set here, and Content-Encoding.
func prepareForApp(hdr http.Header) {
	for name := range hdr {
		if isModuleHeader(name) {
			delete(hdr, name)
		}
	}
	// The proxy drops whatever Connection names (Content-Type included),
	// and the body forwarded is the plain JSON that was parsed here.
	hdr.Del("Connection")
	hdr.Del("Content-Encoding")
}

const moduleHeaderPrefix = "x-ecommpay-"

// isModuleHeader reports whether name is X-Ecommpay-* in any spelling.
func isModuleHeader(name string) bool {
	if len(name) < len(moduleHeaderPrefix) {
		return false
	}
	for i := 0; i < len(moduleHeaderPrefix); i++ {
		c := name[i] | 0x20 // ASCII lower case; '-' and '_' both fold below
		if c == '_'|0x20 {
			c = '-'
		}
		if c != moduleHeaderPrefix[i] {
			return false
		}
	}
	return true
}

// maxPooledResponse keeps unusually large app answers out of the pool.
const maxPooledResponse = 64 << 10

var responseBufs = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// appBody is the body the app reads: a bytes.Reader that closes as a no-op.
type appBody struct{ bytes.Reader }

func (*appBody) Close() error { return nil }

// appAnswer buffers the app's answer as caddyhttp's recorder does when told
// to buffer everything, without its two allocations: 1xx answers go
// through, flushes are held back, and what else the app's handler asks of
// the connection (hijack, deadlines) reaches it through Unwrap.
type appAnswer struct {
	caddyhttp.ResponseWriterWrapper
	buf         *bytes.Buffer
	status      int
	wroteHeader bool
}

func (a *appAnswer) WriteHeader(status int) {
	if a.wroteHeader {
		return
	}
	a.status = status
	if status >= 100 && status <= 199 { // informational, not the answer
		a.ResponseWriterWrapper.WriteHeader(status)
		return
	}
	a.wroteHeader = true
}

func (a *appAnswer) Write(b []byte) (int, error) {
	a.WriteHeader(http.StatusOK)
	return a.buf.Write(b)
}

func (a *appAnswer) ReadFrom(r io.Reader) (int64, error) {
	a.WriteHeader(http.StatusOK)
	return a.buf.ReadFrom(r)
}

// FlushError holds the flush back: the answer is sent once it is complete.
func (a *appAnswer) FlushError() error { return nil }
