package ecommpay

import (
	"math"
	"strconv"
	"strings"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/qr"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dustin/go-humanize"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("ecommpay", parseCaddyfile)
	// Inside request_body, auth and encode; before handle, respond and
	// reverse_proxy, so no `order` line is needed.
	httpcaddyfile.RegisterDirectiveOrder("ecommpay", httpcaddyfile.After, "templates")
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	var m Handler
	err := m.UnmarshalCaddyfile(h.Dispenser)
	return &m, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens:
//
//	ecommpay payment_page|gate|callback|qr|console|sandbox {
//		project <project_id> <secret> [<older_secret>...]
//		max_body   <size>
//		max_depth  <n>
//		max_leaves <n>
//		max_string <size>
//		max_key    <size>
//
//		# payment_page, gate and callback: where state and the journal live
//		store local [<path>] | memory [<max_keys>] | redis <url>
//		journal off | {
//			max_age  <duration>
//			max_size <size>
//			bodies   off
//		}
//
//		# payment_page, gate and console
//		allow <cidr>...
//		allow_proxied
//		# console
//		attention_after <duration>
//		# payment_page
//		base_url <url>
//		redirect
//
//		# callback
//		dedupe off   (memory [<max_keys>] | redis <url>: older spellings of store)
//		ttl             <duration>
//		forward_timeout <duration>
//		read_timeout    <duration>
//		on_store_error  reject|forward
//		from <cidr>...
//		qr image | url <base_url> | off
//		qr_ttl <duration>
//		reconcile [{
//			after      <duration>
//			every      <duration>
//			give_up    <duration>
//			status_url <url>
//		}]
//
//		# callback and qr
//		qr_size  <pixels>
//		qr_level L|M|Q|H
//		qr_cache <size>
//
//		# sandbox: see unmarshalSandbox
//	}
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the directive name
	if !d.NextArg() {
		return d.Err("expected a mode: payment_page, gate, callback, qr, console or sandbox")
	}
	h.Mode = d.Val()
	switch h.Mode {
	case modePaymentPage, modeGate, modeCallback, modeQR, modeConsole, modeSandbox:
	default:
		return d.Errf("unknown mode %q: want payment_page, gate, callback, qr, console or sandbox", h.Mode)
	}
	if d.NextArg() {
		return d.ArgErr()
	}
	seen := map[string]bool{}
	for d.NextBlock(0) {
		name := d.Val()
		if name != "project" && seen[name] {
			return d.Errf("%s is set twice", name)
		}
		seen[name] = true
		args := d.RemainingArgs()
		want := func(min, max int) error {
			if len(args) < min || (max >= 0 && len(args) > max) {
				return d.ArgErr()
			}
			return nil
		}
		var err error
		switch name {
		case "project":
			if err = want(2, -1); err == nil {
				h.Projects = append(h.Projects, Project{ID: args[0], Secrets: args[1:]})
			}
		case "max_body", "max_string", "max_key", "qr_cache":
			if err = want(1, 1); err == nil {
				var n uint64
				if n, err = humanize.ParseBytes(args[0]); err != nil || n == 0 || n > math.MaxInt32 {
					return d.Errf("%s: %q is not a size from 1B to 2GiB", name, args[0])
				}
				switch name {
				case "max_body":
					h.MaxBody = int64(n)
				case "max_string":
					h.MaxString = int(n)
				case "max_key":
					h.MaxKey = int(n)
				default:
					h.QRCacheSize = int64(n)
				}
			}
		case "max_depth", "max_leaves", "qr_size":
			if err = want(1, 1); err == nil {
				n, perr := strconv.Atoi(args[0])
				if perr != nil || n <= 0 {
					return d.Errf("%s: %q is not a positive number", name, args[0])
				}
				switch name {
				case "max_depth":
					h.MaxDepth = n
				case "max_leaves":
					h.MaxLeaves = n
				default:
					h.QRSize = n
				}
			}
		case "allow", "from":
			if err = want(1, -1); err == nil {
				if _, perr := parsePrefixes(args); perr != nil {
					return d.Errf("%s: %v", name, perr)
				}
				if name == "allow" {
					h.Allow = args
				} else {
					h.From = args
				}
			}
		case "hosts":
			if err = want(1, -1); err == nil {
				for _, a := range args {
					if !strings.Contains(a, "{") { // placeholders are checked once resolved
						if perr := checkHostName(a); perr != nil {
							return d.Errf("hosts: %v", perr)
						}
					}
				}
				h.Hosts = append(h.Hosts, args...)
			}
		case "base_url":
			if err = want(1, 1); err == nil {
				h.BaseURL = args[0]
			}
		case "redirect":
			err = want(0, 0)
			h.Redirect = true
		case "allow_proxied":
			err = want(0, 0)
			h.AllowProxied = true
		case "store", "dedupe":
			if err = want(1, 2); err == nil {
				err = h.parseStoreArgs(d, name, args)
			}
		case "journal":
			if err = parseJournal(d, args, &h.Journal); err != nil {
				return err
			}
		case "reconcile":
			if err = want(0, 0); err == nil {
				h.Reconcile = new(ReconcileConfig)
				err = parseReconcile(d, h.Reconcile)
			}
		case "ttl", "forward_timeout", "read_timeout", "qr_ttl", "attention_after":
			if err = want(1, 1); err == nil {
				var dur caddy.Duration
				if dur, err = parsePositiveDuration(d, name, args[0]); err != nil {
					return err
				}
				switch name {
				case "ttl":
					h.TTL = dur
				case "forward_timeout":
					h.ForwardTimeout = dur
				case "read_timeout":
					h.ReadTimeout = dur
				case "attention_after":
					h.AttentionAfter = dur
				default:
					h.QRTTL = dur
				}
			}
		case "on_store_error":
			if err = want(1, 1); err == nil {
				if args[0] != "reject" && args[0] != "forward" {
					return d.Errf("on_store_error takes reject or forward, not %q", args[0])
				}
				h.OnStoreError = args[0]
			}
		case "qr":
			if err = want(1, 2); err != nil {
				break
			}
			h.QR = args[0]
			switch {
			case args[0] == "url" && len(args) == 2:
				h.QRBaseURL = args[1]
			case (args[0] == "image" || args[0] == "off") && len(args) == 1:
			default:
				return d.Err("qr takes: image | url <base_url> | off")
			}
		case "qr_level":
			if err = want(1, 1); err == nil {
				if _, perr := qr.ParseLevel(args[0]); perr != nil {
					return d.Errf("qr_level: %v", perr)
				}
				h.QRLevel = args[0]
			}
		default:
			if h.Mode == modeSandbox {
				if known, serr := h.unmarshalSandbox(d, name, args); known {
					err = serr
					break
				}
			}
			return d.Errf("unrecognized subdirective %q", name)
		}
		if err != nil {
			return err
		}
	}
	if len(h.Projects) == 0 && h.Mode != modeConsole {
		return d.Err("at least one `project <project_id> <secret>` line is required")
	}
	return nil
}

// parseStoreArgs reads the arguments of store, or of its older spelling
// dedupe: memory [<max_keys>] or redis <url>, then local [<path>] (store)
// or off (dedupe).
func (h *Handler) parseStoreArgs(d *caddyfile.Dispenser, name string, args []string) error {
	bare := "local"
	if name == "store" {
		h.Store = args[0]
	} else {
		h.Dedupe, bare = args[0], "off"
	}
	switch {
	case args[0] == "memory" && len(args) == 2:
		n, err := strconv.Atoi(args[1])
		if err != nil || n <= 0 {
			return d.Errf("%s memory: %q is not a number of keys", name, args[1])
		}
		h.MaxKeys = n
	case args[0] == "redis" && len(args) == 2:
		h.RedisURL = args[1]
	case args[0] == "local" && bare == "local" && len(args) == 2:
		h.StorePath = args[1]
	case (args[0] == "memory" || args[0] == bare) && len(args) == 1:
	case name == "store":
		return d.Err("store takes: local [<path>] | memory [<max_keys>] | redis <url>")
	default:
		return d.Err("dedupe takes: memory [<max_keys>] | redis <url> | off")
	}
	return nil
}

// parseJournal reads `journal off` or a journal block.
func parseJournal(d *caddyfile.Dispenser, args []string, j *JournalConfig) error {
	switch {
	case len(args) == 1 && args[0] == "off":
		j.Off = true
		if d.NextBlock(d.Nesting()) {
			return d.Err("journal off takes no block")
		}
		return nil
	case len(args) > 0:
		return d.Err("journal takes: off, or a block of max_age, max_size and bodies")
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		name := d.Val()
		args := d.RemainingArgs()
		if len(args) != 1 {
			return d.ArgErr()
		}
		switch name {
		case "max_age":
			dur, err := parsePositiveDuration(d, "journal max_age", args[0])
			if err != nil {
				return err
			}
			j.MaxAge = dur
		case "max_size":
			n, err := humanize.ParseBytes(args[0])
			if err != nil || n == 0 || n > math.MaxInt64/2 {
				return d.Errf("journal max_size: %q is not a size", args[0])
			}
			j.MaxSize = int64(n)
		case "bodies":
			if args[0] != "off" {
				return d.Errf("journal bodies takes off, not %q", args[0])
			}
			j.NoBodies = true
		default:
			return d.Errf("unrecognized journal setting %q", name)
		}
	}
	return nil
}

// parseReconcile reads the optional block of `reconcile`.
func parseReconcile(d *caddyfile.Dispenser, c *ReconcileConfig) error {
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		name := d.Val()
		args := d.RemainingArgs()
		if len(args) != 1 {
			return d.ArgErr()
		}
		switch name {
		case "after", "every", "give_up":
			dur, err := parsePositiveDuration(d, "reconcile "+name, args[0])
			if err != nil {
				return err
			}
			switch name {
			case "after":
				c.After = dur
			case "every":
				c.Every = dur
			default:
				c.GiveUp = dur
			}
		case "status_url":
			if _, err := parseBaseURL(args[0]); err != nil {
				return d.Errf("reconcile status_url: %v", err)
			}
			c.StatusURL = args[0]
		default:
			return d.Errf("unrecognized reconcile setting %q", name)
		}
	}
	return nil
}

func parsePositiveDuration(d *caddyfile.Dispenser, name, arg string) (caddy.Duration, error) {
	dur, err := caddy.ParseDuration(arg)
	if err != nil || dur <= 0 {
		return 0, d.Errf("%s: %q is not a positive duration", name, arg)
	}
	return caddy.Duration(dur), nil
}

// Interface guard
var _ caddyfile.Unmarshaler = (*Handler)(nil)
