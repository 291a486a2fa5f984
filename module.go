// Package ecommpay is a Caddy HTTP handler that signs ecommpay Payment Page
// URLs and Gate API requests, and verifies, de-duplicates and forwards
// ecommpay callbacks, so that the merchant's app never holds the secret.
package ecommpay

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"time"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/canon"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/journal"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/origin"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/qr"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/reconcile"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/sandbox"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/store"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// The handler's modes.
const (
	modePaymentPage = "payment_page"
	modeGate        = "gate"
	modeCallback    = "callback"
	modeQR          = "qr"
	modeConsole     = "console"
	// modeSandbox is in sandbox.go.
)

// Defaults for the optional settings.
const (
	defaultMaxBody        = 1 << 20
	defaultBaseURL        = "https://paymentpage.ecommpay.com"
	defaultTTL            = 14 * 24 * time.Hour
	defaultForwardTimeout = 30 * time.Second
	defaultQRTTL          = time.Hour
	defaultReadTimeout    = 10 * time.Second
)

// Handler signs requests to ecommpay and guards callbacks from it. One
// handler works in one mode:
//
//   - payment_page: answers the app with a signed Payment Page URL, as JSON
//     {"url", "signature"} or as a 303 redirect.
//   - gate: signs an unsigned Gate API request body (general.signature) and
//     passes it to the next handler, normally reverse_proxy to ecommpay.
//   - callback: verifies an ecommpay callback, drops duplicates, renders QR
//     codes, and passes each genuine event to the next handler (the app)
//     exactly once; it answers ecommpay 200 only once the app has it.
//   - qr: serves the hosted QR images that callback mode links to.
//   - console: the operator console over the payment journal, with replay.
//   - sandbox: a local stand-in for ecommpay, for development (sandbox.go).
//
// The signing modes answer only clients on loopback unless allow widens it.
// Callback mode sets the request headers X-Ecommpay-Event-Key and
// X-Ecommpay-Project-Id for the app, after removing any copies a client sent.
type Handler struct {
	// Mode is one of payment_page, gate, callback, qr, console or sandbox.
	Mode string `json:"mode"`

	// Projects are the ecommpay projects this handler signs or verifies
	// for, each with its secrets. At least one is required, except by the
	// console, which needs none.
	Projects []Project `json:"projects,omitempty"`

	// MaxBody is the largest request body accepted, in bytes; larger ones
	// get 413. Default: 1 MiB.
	MaxBody int64 `json:"max_body,omitempty"`
	// MaxDepth is the deepest JSON nesting accepted. Default: 32.
	MaxDepth int `json:"max_depth,omitempty"`
	// MaxLeaves is the most JSON values (scalars and empty containers)
	// accepted in one body. Default: 10000.
	MaxLeaves int `json:"max_leaves,omitempty"`
	// MaxString is the longest JSON string or number accepted, in bytes.
	// Default: 256 KiB.
	MaxString int `json:"max_string,omitempty"`
	// MaxKey is the longest JSON member name accepted, in bytes. Default:
	// 1 KiB.
	MaxKey int `json:"max_key,omitempty"`

	// Allow lists the client networks (CIDR or single addresses) that may
	// use the signing modes. It replaces the default, loopback only
	// (127.0.0.0/8, ::1): list loopback too if you still want it. The
	// address checked is the connection's own peer. Anyone who reaches a
	// signing endpoint can sign any amount.
	Allow []string `json:"allow,omitempty"`
	// AllowProxied lets the signing modes accept requests that came through
	// a proxy. By default a request carrying forwarding headers (Forwarded,
	// X-Forwarded-*, X-Real-IP, Via, or a tunnel's client-IP header) is a
	// proxied stranger and gets 403, even from loopback. With it, allow is
	// checked against Caddy's client IP, which honours the server's
	// trusted_proxies (make them strict).
	AllowProxied bool `json:"allow_proxied,omitempty"`
	// Hosts lists the host names (besides IP literals and localhost, which
	// are always accepted) that requests to the signing modes and the
	// console may carry in their Host header; others get 421. A page on
	// any web site can rebind its own name to 127.0.0.1 and so reach a
	// loopback listener from the operator's browser, but only under its
	// own name: checking Host is what stops it. List the names your
	// internal site answers to, such as "pay.internal".
	Hosts []string `json:"hosts,omitempty"`

	// BaseURL is the Payment Page host (payment_page mode); the path
	// /payment is appended. Default: https://paymentpage.ecommpay.com.
	BaseURL string `json:"base_url,omitempty"`
	// Redirect answers payment_page requests with a 303 to the signed URL
	// instead of JSON.
	Redirect bool `json:"redirect,omitempty"`

	// Store is where callback de-dup state and the payment journal live:
	// "local" (default: a file in Caddy's data directory that survives
	// restarts and crashes), "memory" (one process; lost on restart) or
	// "redis" (shared by a cluster). Every handler of a process that names
	// the same store shares it.
	Store string `json:"store,omitempty"`
	// StorePath is the local store's file. Default: ecommpay/ecommpay.db
	// in Caddy's data directory.
	StorePath string `json:"store_path,omitempty"`
	// RedisURL is the Redis server of store redis, such as
	// redis://127.0.0.1:6379/0. Placeholders like {env.REDIS_URL} work.
	RedisURL string `json:"redis_url,omitempty"`
	// Dedupe "off" forwards every verified callback without
	// de-duplication. "memory" and "redis" are older spellings of store
	// memory and store redis.
	Dedupe string `json:"dedupe,omitempty"`
	// MaxKeys bounds the memory store; when full it evicts the oldest
	// delivered keys. Default: 1000000.
	MaxKeys int `json:"max_keys,omitempty"`
	// Journal bounds the payment journal, or turns it off.
	Journal JournalConfig `json:"journal,omitzero"`
	// TTL is how long a delivered callback is remembered. Default: 14 days,
	// longer than ecommpay's 11 days of retries.
	TTL caddy.Duration `json:"ttl,omitempty"`
	// ForwardTimeout bounds one delivery to the app. The delivery runs to
	// its end even if ecommpay hangs up. A claim left by a crashed
	// delivery expires after twice this. Default: 30s.
	ForwardTimeout caddy.Duration `json:"forward_timeout,omitempty"`
	// ReadTimeout bounds reading a callback body, so that a slow sender
	// cannot hold a connection. Default: 10s.
	ReadTimeout caddy.Duration `json:"read_timeout,omitempty"`
	// OnStoreError is what callback mode does when the de-dup store fails:
	// "reject" (default: 503, ecommpay retries) or "forward" (deliver
	// without de-duplication, and log it).
	OnStoreError string `json:"on_store_error,omitempty"`
	// From optionally restricts callback sources to these networks; others
	// get 403. Off by default: the signature is the real control.
	From []string `json:"from,omitempty"`
	// Reconcile asks ecommpay for the status of payments whose final
	// callback is overdue, and delivers a status the app has not had like
	// a callback, marked X-Ecommpay-Source: status. Off unless set.
	Reconcile *ReconcileConfig `json:"reconcile,omitempty"`

	// QR is what callback mode does with display_data entries of type
	// qr_data: "image" (default; inline base64 PNG as type qr_img), "url"
	// (a signed link to a hosted PNG as type qr_url) or "off".
	QR string `json:"qr,omitempty"`
	// QRBaseURL is where hosted QR images are served (qr url), by a handler
	// in qr mode with the same projects.
	QRBaseURL string `json:"qr_base_url,omitempty"`
	// QRSize is the QR image side in pixels. Default: 256.
	QRSize int `json:"qr_size,omitempty"`
	// QRLevel is the QR error correction level, L, M, Q or H. Default: M.
	QRLevel string `json:"qr_level,omitempty"`
	// QRTTL is how long a hosted QR link works when the callback gives no
	// "QR Code Timeout". Default: 1h.
	QRTTL caddy.Duration `json:"qr_ttl,omitempty"`
	// QRCacheSize bounds the cache of rendered QR images, in bytes.
	// Default: 16 MiB.
	QRCacheSize int64 `json:"qr_cache_size,omitempty"`

	// AttentionAfter is how long after its start a payment without a final
	// status is shown as stuck in the console. Default: 30m.
	AttentionAfter caddy.Duration `json:"attention_after,omitempty"`

	// Sandbox configures mode sandbox (sandbox.go).
	Sandbox *SandboxConfig `json:"sandbox,omitempty"`

	projects     map[string]*project
	only         *project // the single project, when exactly one is configured
	allow        []netip.Prefix
	hosts        map[string]bool
	from         []netip.Prefix
	limits       canon.Limits
	paymentPage  *url.URL
	pageBase     *pageBase // paymentPage as the signed URLs start
	qrBase       *url.URL
	qrOpts       qr.Options
	qrCache      *qr.Cache
	store        store.Store
	journal      journal.Journal
	releaseStore func() error
	logger       *zap.Logger
	metrics      *metrics
	route        *callbackRoute // callback mode: where dispatches go
	console      http.Handler
	// callback mode with reconcile: its checked settings, and the loop
	// once started
	reconcileSettings *reconcile.Settings
	reconciler        *reconcile.Reconciler
	sandbox           *sandbox.Sandbox
}

// Project is one ecommpay project and its secrets.
type Project struct {
	// ID is the ecommpay project_id.
	ID string `json:"id"`
	// Secrets are the project's secret keys. The first signs; every one
	// verifies, so a new secret can be rolled out before the old one goes.
	// Use placeholders such as {env.ECOMMPAY_SECRET} or
	// {file./run/secrets/ecommpay}; they are resolved once at load.
	Secrets []string `json:"secrets,omitempty"`
}

// JournalConfig bounds the payment journal: every callback attempt and
// every signing request, by payment.
type JournalConfig struct {
	// Off turns the journal off.
	Off bool `json:"off,omitempty"`
	// MaxAge is how long entries are kept. Default: 30 days.
	MaxAge caddy.Duration `json:"max_age,omitempty"`
	// MaxSize bounds the journal's stored bytes; the oldest entries go
	// first. Default: 256 MiB.
	MaxSize int64 `json:"max_size,omitempty"`
	// NoBodies keeps metadata only, for shops that must not store the
	// personal data callbacks carry. Replay then has nothing to send.
	NoBodies bool `json:"no_bodies,omitempty"`
}

type project struct {
	id     string
	keys   []*canon.Key // keys[0] signs
	qrKeys [][]byte     // tag keys for hosted QR links, one per secret
	series projectSeries
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.ecommpay",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision resolves secrets, applies defaults and opens the de-dup store.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	if h.Mode != modeConsole || len(h.Projects) > 0 {
		if err := h.provisionProjects(); err != nil {
			return err
		}
	}
	if h.MaxBody <= 0 {
		h.MaxBody = defaultMaxBody
	}
	h.limits = canon.Limits{MaxDepth: h.MaxDepth, MaxLeaves: h.MaxLeaves, MaxString: h.MaxString, MaxKey: h.MaxKey}
	var err error
	allow := h.Allow
	if len(allow) == 0 {
		allow = []string{"127.0.0.0/8", "::1/128"}
	}
	if h.allow, err = parsePrefixes(allow); err != nil {
		return fmt.Errorf("allow: %w", err)
	}
	if h.from, err = parsePrefixes(h.From); err != nil {
		return fmt.Errorf("from: %w", err)
	}
	if h.hosts, err = parseHosts(h.Hosts); err != nil {
		return fmt.Errorf("hosts: %w", err)
	}
	if h.metrics, err = registerMetrics(ctx.GetMetricsRegistry()); err != nil {
		return err
	}
	switch h.Mode {
	case modePaymentPage, modeGate, modeConsole, modeSandbox:
		h.warnTrustedProxies(ctx)
	}
	switch h.Mode {
	case modePaymentPage:
		base := h.BaseURL
		if base == "" {
			base = defaultBaseURL
		}
		if h.paymentPage, err = parseBaseURL(base); err != nil {
			return fmt.Errorf("base_url: %w", err)
		}
		h.paymentPage.Path = strings.TrimSuffix(h.paymentPage.Path, "/") + "/payment"
		h.pageBase = newPageBase(h.paymentPage)
	case modeGate:
	case modeCallback:
		if err := h.provisionCallback(); err != nil {
			return err
		}
		if srv, ok := ctx.Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server); ok {
			h.route = &callbackRoute{server: srv}
			callbackHandlers.Store(h, h.route)
		}
	case modeQR:
		if err := h.provisionQR(); err != nil {
			return err
		}
	case modeConsole:
	case modeSandbox:
		if err := h.provisionSandbox(); err != nil {
			return err
		}
	default:
		return fmt.Errorf("unknown mode %q: want payment_page, gate, callback, qr, console or sandbox", h.Mode)
	}
	if h.Mode != modeQR && h.Mode != modeSandbox {
		if err := h.provisionStore(ctx); err != nil {
			return err
		}
	}
	if h.Mode == modeConsole {
		h.provisionConsole() // over the journal provisionStore opened
	}
	return h.startReconcile() // once the journal is open
}

func (h *Handler) provisionProjects() error {
	if len(h.Projects) == 0 {
		return errors.New("at least one project is required")
	}
	h.projects = make(map[string]*project, len(h.Projects))
	for _, p := range h.Projects {
		if p.ID == "" || strings.ContainsAny(p.ID, " ;") {
			return fmt.Errorf("project id %q is not valid", p.ID)
		}
		if _, dup := h.projects[p.ID]; dup {
			return fmt.Errorf("project %s is listed twice", p.ID)
		}
		if len(p.Secrets) == 0 {
			return fmt.Errorf("project %s: a secret is required", p.ID)
		}
		pr := &project{id: p.ID}
		for i, s := range p.Secrets {
			secret, err := resolvePlaceholders(s)
			if err != nil || secret == "" {
				// Never echo the value: it may be the secret itself.
				return fmt.Errorf("project %s: secret #%d is empty or its placeholder cannot be resolved", p.ID, i+1)
			}
			pr.keys = append(pr.keys, canon.NewKey(secret))
			pr.qrKeys = append(pr.qrKeys, qr.LinkKey(secret))
		}
		h.projects[p.ID] = pr
	}
	if len(h.projects) == 1 {
		for _, p := range h.projects {
			h.only = p
		}
	}
	return nil
}

// Validate refuses settings that do not belong to the handler's mode, so a
// misplaced line is an error rather than silently ignored.
func (h *Handler) Validate() error {
	misplaced := func(set bool, name string, modes ...string) error {
		for _, m := range modes {
			if h.Mode == m {
				return nil
			}
		}
		if set {
			return fmt.Errorf("%s does not apply to mode %s (only to %s)", name, h.Mode, strings.Join(modes, ", "))
		}
		return nil
	}
	return errors.Join(
		misplaced(len(h.Allow) > 0, "allow", modePaymentPage, modeGate, modeConsole, modeSandbox),
		misplaced(h.AllowProxied, "allow_proxied", modePaymentPage, modeGate, modeConsole, modeSandbox),
		misplaced(len(h.Hosts) > 0, "hosts", modePaymentPage, modeGate, modeConsole, modeSandbox),
		misplaced(h.Store != "" || h.StorePath != "" || h.RedisURL != "", "store", modePaymentPage, modeGate, modeCallback, modeConsole),
		misplaced(h.Journal != JournalConfig{}, "journal", modePaymentPage, modeGate, modeCallback, modeConsole),
		misplaced(h.AttentionAfter != 0, "attention_after", modeConsole),
		misplaced(h.ReadTimeout != 0, "read_timeout", modeCallback),
		misplaced(h.BaseURL != "", "base_url", modePaymentPage, modeSandbox),
		misplaced(h.Sandbox != nil, "sandbox", modeSandbox),
		misplaced(h.Redirect, "redirect", modePaymentPage),
		misplaced(h.Dedupe != "" || h.MaxKeys != 0, "dedupe", modeCallback),
		misplaced(h.TTL != 0, "ttl", modeCallback),
		misplaced(h.ForwardTimeout != 0, "forward_timeout", modeCallback),
		misplaced(h.OnStoreError != "", "on_store_error", modeCallback),
		misplaced(len(h.From) > 0, "from", modeCallback),
		misplaced(h.Reconcile != nil, "reconcile", modeCallback),
		misplaced(h.QR != "" || h.QRBaseURL != "" || h.QRTTL != 0, "qr", modeCallback),
		misplaced(h.QRSize != 0 || h.QRLevel != "" || h.QRCacheSize != 0, "qr_size, qr_level and qr_cache", modeCallback, modeQR),
	)
}

// Cleanup releases the de-dup store and the QR cache.
func (h *Handler) Cleanup() error {
	callbackHandlers.Delete(h)
	h.reconciler.Stop()
	if h.sandbox != nil {
		h.sandbox.Close()
	}
	if h.qrCache != nil {
		h.qrCache.Close()
	}
	if h.releaseStore != nil {
		return h.releaseStore()
	}
	return nil
}

// ServeHTTP dispatches to the mode.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	switch h.Mode {
	case modePaymentPage:
		return h.servePaymentPage(w, r)
	case modeGate:
		return h.serveGate(w, r, next)
	case modeCallback:
		return h.serveCallback(w, r, next)
	case modeConsole:
		return h.serveConsole(w, r)
	case modeSandbox:
		return h.serveSandbox(w, r)
	default:
		return h.serveQR(w, r)
	}
}

func (h *Handler) lookupProject(id string) *project { return h.projects[id] }

// signingRefusal says why a signing request must be refused, if it must:
// a proxied request (unless allow_proxied), a peer outside allow, a Host
// that names no address of this machine (DNS rebinding), or TLS early
// data (replayable before the handshake completes).
func (h *Handler) signingRefusal(r *http.Request) *refusal {
	if !h.AllowProxied && isProxied(r.Header) {
		return refuse(http.StatusForbidden, "forbidden",
			"this request came through a proxy; the signing endpoint answers direct clients only (see allow_proxied)")
	}
	addr, ok := peerAddr(r)
	if h.AllowProxied {
		addr, ok = clientAddr(r)
	}
	if !ok || !inPrefixes(addr, h.allow) {
		return refuse(http.StatusForbidden, "forbidden", "this client may not use the signing endpoint")
	}
	if !unixPeer(r) && !h.hostAllowed(r.Host) {
		h.logger.Warn("refused a request whose Host is not an IP address, localhost or a name in hosts: a web page may be rebinding its name to this listener; if the name is yours, add `hosts <name>` to this handler",
			zap.String("host", journal.TruncateUnverified(r.Host)), zap.String("remote", r.RemoteAddr), zap.String("mode", h.Mode))
		return refuse(http.StatusMisdirectedRequest, "forbidden_host",
			"this endpoint answers requests for an IP address, localhost or a name listed in hosts only")
	}
	// The console and the sandbox check their own forms; the sandbox's
	// Payment Page is opened from the shop's pages, another origin.
	if h.Mode != modeConsole && h.Mode != modeSandbox && !origin.Same(r, h.AllowProxied) {
		// A page of any site can make a browser on this machine post a
		// form to 127.0.0.1; the shop's server sends neither header.
		return refuse(http.StatusForbidden, "forbidden",
			"a web page of another origin may not use the signing endpoint (it sent Origin or Sec-Fetch-Site)")
	}
	if r.TLS != nil && !r.TLS.HandshakeComplete {
		return refuse(http.StatusTooEarly, "forbidden", "retry after the TLS handshake completes")
	}
	return nil
}

// hostAllowed reports whether a Host header names this machine in a way
// that no web page can choose: an IP literal (a page that rebinds a name
// still sends that name), localhost, or a name the operator listed.
func (h *Handler) hostAllowed(host string) bool {
	name := origin.HostName(host)
	if name == "" {
		return false
	}
	if _, err := netip.ParseAddr(name); err == nil {
		return true
	}
	return name == "localhost" || h.hosts[name]
}

// unixPeer reports whether the request came over a Unix socket, which no
// web page can reach.
func unixPeer(r *http.Request) bool {
	_, unix := r.Context().Value(http.LocalAddrContextKey).(*net.UnixAddr)
	return unix
}

// parseHosts checks the names of hosts, after placeholders, and returns
// them as a set.
func parseHosts(list []string) (map[string]bool, error) {
	set := make(map[string]bool, len(list))
	for _, s := range list {
		s, err := resolvePlaceholders(s)
		if err != nil {
			return nil, err
		}
		if err := checkHostName(s); err != nil {
			return nil, err
		}
		set[origin.HostName(s)] = true
	}
	return set, nil
}

// checkHostName accepts a host name as a browser sends it in Host: ASCII
// (punycode for other scripts), without scheme, port or wildcard.
func checkHostName(s string) error {
	name := origin.HostName(s)
	if name == "" || name != strings.ToLower(s) || strings.ContainsAny(name, "/*@ {}") {
		return fmt.Errorf("%q is not a host name (write the name alone, without scheme, port or wildcard)", s)
	}
	for i := 0; i < len(name); i++ {
		if name[i] >= 0x80 {
			return fmt.Errorf("%q: write a name in another script in its xn-- form, as browsers send it", s)
		}
	}
	return nil
}

// forwardingHeaders are what proxies and tunnels add to say whom they
// forward for, lower case with '-' for '_'.
var forwardingHeaders = map[string]bool{
	"forwarded": true, "via": true, "x-real-ip": true, "x-client-ip": true,
	"x-cluster-client-ip": true, "cf-connecting-ip": true, "cf-connecting-ipv6": true,
	"true-client-ip": true, "fastly-client-ip": true, "x-original-forwarded-for": true,
	"x-envoy-external-address": true, "x-azure-clientip": true, "cdn-loop": true,
}

// isProxied reports whether the request carries a forwarding header, in
// any spelling.
func isProxied(hdr http.Header) bool {
	var buf [64]byte // longer than any of forwardingHeaders
	for name := range hdr {
		// Folded on the stack: ToLower would allocate for every
		// canonical name. Only ASCII can spell the names looked for.
		n := buf[:min(len(name), len(buf))]
		for i := range n {
			switch c := name[i]; {
			case c == '_':
				n[i] = '-'
			case 'A' <= c && c <= 'Z':
				n[i] = c + 'a' - 'A'
			default:
				n[i] = c
			}
		}
		if (len(n) == len(name) && forwardingHeaders[string(n)]) || bytes.HasPrefix(n, []byte("x-forwarded-")) {
			return true
		}
	}
	return false
}

// peerAddr is the address of the connection's own peer, whatever headers
// say. A Unix socket peer counts as loopback.
func peerAddr(r *http.Request) (netip.Addr, bool) {
	if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
		return ap.Addr().Unmap(), true
	}
	if unixPeer(r) {
		return netip.IPv6Loopback(), true
	}
	return netip.Addr{}, false
}

// clientAllowed reports whether the request's client is inside nets. It
// uses Caddy's client IP, which honours trusted_proxies.
func clientAllowed(r *http.Request, nets []netip.Prefix) bool {
	addr, ok := clientAddr(r)
	return ok && inPrefixes(addr, nets)
}

func inPrefixes(addr netip.Addr, nets []netip.Prefix) bool {
	for _, n := range nets {
		if n.Contains(addr) {
			return true
		}
	}
	return false
}

func clientAddr(r *http.Request) (netip.Addr, bool) {
	s, _ := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string)
	if s == "" {
		return peerAddr(r)
	}
	a, err := netip.ParseAddr(s)
	return a.Unmap(), err == nil
}

// warnTrustedProxies warns when allow_proxied meets a server whose client
// IP a stranger can choose.
func (h *Handler) warnTrustedProxies(ctx caddy.Context) {
	srv, _ := ctx.Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server)
	switch {
	case !h.AllowProxied || srv == nil:
	case srv.TrustedProxiesRaw == nil:
		h.logger.Warn("allow_proxied is set but the server has no trusted_proxies: allow is checked against the proxy's own address, so everyone behind the proxy may sign")
	case srv.TrustedProxiesStrict == 0:
		h.logger.Warn("allow_proxied is set but the server's trusted_proxies is not strict: the client picks the leftmost X-Forwarded-For value and so its own address; set trusted_proxies_strict")
	}
}

// resolvePlaceholders resolves {env.*} and {file.*} once, at load.
func resolvePlaceholders(s string) (string, error) {
	if s == "" {
		return "", nil
	}
	return caddy.NewReplacer().ReplaceOrErr(s, true, true)
}

func parsePrefixes(list []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range list {
		if strings.Contains(s, "/") {
			p, err := netip.ParsePrefix(s)
			if err != nil {
				return nil, err
			}
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("%q is neither a CIDR nor an address", s)
		}
		out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
	}
	return out, nil
}

func parseBaseURL(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil {
		return nil, err
	}
	if (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("%q is not an absolute http(s) URL without query", s)
	}
	return u, nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
