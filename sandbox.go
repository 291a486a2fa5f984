package ecommpay

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/qr"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/respond"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/sandbox"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// modeSandbox plays ecommpay on a loopback site, for development: see
// SandboxConfig and the package internal/sandbox.
const modeSandbox = "sandbox"

// SandboxConfig configures mode sandbox: a local stand-in for ecommpay's
// Payment Page and Gate that sends signed callbacks to the shop's callback
// route. It mints valid callbacks with the project's secret: give it only
// a test project's secret. Like the signing modes it answers direct
// loopback peers only, for an IP literal, localhost or a name in hosts
// (allow, allow_proxied and hosts work as there).
type SandboxConfig struct {
	// CallbackURLs receive every callback the sandbox sends, normally the
	// shop's `ecommpay callback` route. Required.
	CallbackURLs []string `json:"callback_urls,omitempty"`
	// PayAfter completes a pending payment by itself this long after its
	// intermediate callback, as if the customer paid. Default 0: someone
	// pays or declines it on the sandbox's pages.
	PayAfter caddy.Duration `json:"pay_after,omitempty"`
	// Delay holds back the first callback of each payment this long.
	Delay caddy.Duration `json:"delay,omitempty"`
	// Copies sends each callback this many times at once. Default: 1.
	Copies int `json:"copies,omitempty"`
	// DropFinal drops every final sale callback (the status still
	// changes), to see reconciliation at work.
	DropFinal bool `json:"drop_final,omitempty"`
	// RetryScale divides ecommpay's retry schedule. Default: 100 (the
	// first retries come after 0.1 s instead of 10 s).
	RetryScale float64 `json:"retry_scale,omitempty"`
	// MBWayLimit is how long an MBWay payment waits for the customer
	// before it is declined. Default: 4m, as ecommpay's.
	MBWayLimit caddy.Duration `json:"mbway_limit,omitempty"`
}

// sandboxQR renders the sandbox's QR codes as the callback route does.
func sandboxQR(payload string) ([]byte, error) { return qr.Render(payload, qr.Options{}) }

func (h *Handler) provisionSandbox() error {
	c := h.Sandbox
	if c == nil || len(c.CallbackURLs) == 0 {
		return errors.New("sandbox: a callback URL is required")
	}
	for _, raw := range c.CallbackURLs {
		if u, err := url.Parse(raw); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("sandbox: callback %q is not an absolute http(s) URL", raw)
		}
	}
	cfg := sandbox.Config{
		QRPNG:        sandboxQR,
		CallbackURLs: c.CallbackURLs,
		BaseURL:      h.BaseURL,
		Knobs: sandbox.Knobs{
			PayAfter:   dur(c.PayAfter),
			FirstDelay: dur(c.Delay),
			Copies:     c.Copies,
			DropFinal:  c.DropFinal,
			RetryScale: c.RetryScale,
			MBWayLimit: dur(c.MBWayLimit),
		},
	}
	if h.BaseURL != "" {
		if _, err := parseBaseURL(h.BaseURL); err != nil {
			return fmt.Errorf("base_url: %w", err)
		}
	}
	for _, p := range h.Projects {
		secret, err := resolvePlaceholders(p.Secrets[0])
		if err != nil || secret == "" {
			return fmt.Errorf("project %s: the secret is empty or its placeholder cannot be resolved", p.ID)
		}
		cfg.Projects = append(cfg.Projects, sandbox.Project{ID: p.ID, Secret: secret})
	}
	sb, err := sandbox.New(cfg)
	if err != nil {
		return err
	}
	h.sandbox = sb
	h.logger.Warn("ecommpay sandbox: it signs genuine callbacks with the secrets it is given; give it only a test project's secret, never a live one, and keep it out of production configs")
	return nil
}

func dur(d caddy.Duration) time.Duration { return time.Duration(d) }

// serveSandbox answers loopback peers only, as the signing modes do: the
// sandbox mints valid callbacks.
func (h *Handler) serveSandbox(w http.ResponseWriter, r *http.Request) error {
	if rf := h.signingRefusal(r); rf != nil {
		respond.Error(w, rf.status, rf.field, "%s", rf.msg)
		return nil
	}
	h.sandbox.ServeHTTP(w, r)
	return nil
}

// unmarshalSandbox reads the subdirectives only mode sandbox has. It
// reports false for a name it does not know.
//
//	ecommpay sandbox {
//		project <project_id> <test_secret>
//		callback <url>...
//		base_url <url>
//		pay_after <duration>
//		delay <duration>
//		copies <n>
//		drop_final
//		retry_scale <n>
//		mbway_limit <duration>
//	}
func (h *Handler) unmarshalSandbox(d *caddyfile.Dispenser, name string, args []string) (bool, error) {
	if h.Sandbox == nil {
		h.Sandbox = new(SandboxConfig)
	}
	c := h.Sandbox
	one := func() error {
		if len(args) != 1 {
			return d.ArgErr()
		}
		return nil
	}
	switch name {
	case "callback":
		if len(args) == 0 {
			return true, d.ArgErr()
		}
		c.CallbackURLs = append(c.CallbackURLs, args...)
	case "pay_after", "delay", "mbway_limit":
		if err := one(); err != nil {
			return true, err
		}
		v, err := caddy.ParseDuration(args[0])
		if err != nil || v < 0 {
			return true, d.Errf("%s: %q is not a duration", name, args[0])
		}
		switch name {
		case "pay_after":
			c.PayAfter = caddy.Duration(v)
		case "delay":
			c.Delay = caddy.Duration(v)
		default:
			c.MBWayLimit = caddy.Duration(v)
		}
	case "copies":
		if err := one(); err != nil {
			return true, err
		}
		n, err := strconv.Atoi(args[0])
		if err != nil || n < 1 || n > 10 {
			return true, d.Errf("copies: %q is not a number from 1 to 10", args[0])
		}
		c.Copies = n
	case "drop_final":
		if len(args) != 0 {
			return true, d.ArgErr()
		}
		c.DropFinal = true
	case "retry_scale":
		if err := one(); err != nil {
			return true, err
		}
		f, err := strconv.ParseFloat(args[0], 64)
		if err != nil || f < 1 {
			return true, d.Errf("retry_scale: %q is not a number of at least 1", args[0])
		}
		c.RetryScale = f
	default:
		return false, nil
	}
	return true, nil
}
