package ecommpay

import (
	"encoding/json"
	"os"
	"slices"
	"strings"
	"testing"
)

// docs/production.Caddyfile, as docs/production.md prints it, adapts, and
// keeps what the guide promises: secrets only from files, signing and the
// console only on a loopback listener, automatic HTTPS on the public site,
// hosted QR links on that site, reconciliation asking ecommpay itself, and
// no X-Ecommpay-* header reaching the app except through the callback
// handler.
func TestProductionCaddyfile(t *testing.T) {
	checkIncludes(t, "docs/production.md", "docs/production.Caddyfile", "docs/caddy-ecommpay.service")
	body, err := os.ReadFile("docs/production.Caddyfile")
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		Apps struct {
			HTTP struct {
				Servers map[string]struct {
					Listen    []string `json:"listen"`
					AutoHTTPS *struct {
						Disable bool `json:"disable"`
					} `json:"automatic_https"`
					Routes []any `json:"routes"`
				} `json:"servers"`
			} `json:"http"`
		} `json:"apps"`
	}
	if err := json.Unmarshal(adapt(t, body), &cfg); err != nil {
		t.Fatal(err)
	}
	modes := map[string]string{} // mode -> server
	for name, srv := range cfg.Apps.HTTP.Servers {
		loopback := len(srv.Listen) > 0
		for _, l := range srv.Listen {
			loopback = loopback && isLoopbackHostPort(strings.TrimPrefix(l, "tcp/"))
		}
		for _, h := range handlersIn(srv.Routes) {
			switch h["handler"] {
			case "ecommpay":
				b, _ := json.Marshal(h)
				var eh Handler
				if err := json.Unmarshal(b, &eh); err != nil {
					t.Fatal(err)
				}
				if err := eh.Validate(); err != nil {
					t.Errorf("mode %s: %v", eh.Mode, err)
				}
				modes[eh.Mode] = name
				for _, p := range eh.Projects {
					for _, s := range p.Secrets {
						if !strings.HasPrefix(s, "{file./etc/caddy/") {
							t.Errorf("mode %s: project %s's secret %q is not read from a file under /etc/caddy", eh.Mode, p.ID, s)
						}
					}
				}
				switch eh.Mode {
				case "payment_page", "gate", "console":
					if !loopback {
						t.Errorf("%s is served on %v, want loopback only", eh.Mode, srv.Listen)
					}
				case "callback":
					if loopback || (srv.AutoHTTPS != nil && srv.AutoHTTPS.Disable) {
						t.Errorf("callbacks are served on %v (automatic HTTPS %+v), want the public site over HTTPS", srv.Listen, srv.AutoHTTPS)
					}
					if eh.QR != "url" || !strings.HasPrefix(eh.QRBaseURL, "https://shop.example.com/") {
						t.Errorf("callback qr %q %q, want links to the public site", eh.QR, eh.QRBaseURL)
					}
					if eh.Reconcile == nil || eh.Reconcile.StatusURL != "" {
						t.Errorf("reconcile %+v, want it on with ecommpay's own status URL", eh.Reconcile)
					}
				}
			case "reverse_proxy":
				if !loopback && !slices.ContainsFunc(handlersIn(srv.Routes), func(o map[string]any) bool { return o["mode"] == "callback" }) {
					t.Errorf("server %s: a public reverse_proxy without a callback handler", name)
				}
			}
		}
		if !loopback {
			// Every proxy of the public site that is not behind the callback
			// handler must drop the headers the handler sets.
			for _, r := range srv.Routes {
				checkPublicProxies(t, r, false)
			}
		}
	}
	for _, m := range []string{"payment_page", "gate", "callback", "qr", "console"} {
		if _, ok := modes[m]; !ok {
			t.Errorf("no %s handler in the production Caddyfile", m)
		}
	}
	if modes["qr"] != modes["callback"] {
		t.Errorf("hosted QR images on %s, callbacks on %s: want both on the public site", modes["qr"], modes["callback"])
	}
}

// checkPublicProxies walks a route: a reverse_proxy in a handler list
// without an ecommpay callback before it must delete X-Ecommpay-*.
func checkPublicProxies(t *testing.T, route any, guarded bool) {
	t.Helper()
	rm, _ := route.(map[string]any)
	hs, _ := rm["handle"].([]any)
	for _, h := range hs {
		hm, _ := h.(map[string]any)
		switch hm["handler"] {
		case "ecommpay":
			if hm["mode"] == "callback" {
				guarded = true
			}
		case "subroute":
			sub, _ := hm["routes"].([]any)
			for _, r := range sub {
				checkPublicProxies(t, r, guarded)
			}
		case "reverse_proxy":
			if guarded {
				continue
			}
			b, _ := json.Marshal(hm["headers"])
			var hdr struct {
				Request struct {
					Delete []string `json:"delete"`
				} `json:"request"`
			}
			json.Unmarshal(b, &hdr)
			if !slices.Contains(hdr.Request.Delete, "X-Ecommpay-*") {
				t.Errorf("a public reverse_proxy passes X-Ecommpay-* headers to the app: %v", hm)
			}
		}
	}
}
