package ecommpay

import (
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"testing"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/reconcile"
)

// The example must never talk to anything but loopback: whoever runs it as
// printed, and leaves it running, sends nothing to ecommpay or elsewhere.
// Every address Caddy itself would send a request to is checked: each
// reverse_proxy upstream, and reconcile's status_url (its default when
// unset). A handler this test does not know fails it, so that a new one
// that sends requests is looked at.
func TestExampleCaddyfileStaysLocal(t *testing.T) {
	body, err := os.ReadFile("example.Caddyfile")
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("ECOMMPAY_SECRET", "demo-secret")
	var cfg struct {
		Admin struct {
			Listen string `json:"listen"`
		} `json:"admin"`
		Apps map[string]json.RawMessage `json:"apps"`
	}
	if err := json.Unmarshal(adapt(t, body), &cfg); err != nil {
		t.Fatal(err)
	}
	for name := range cfg.Apps {
		if name != "http" {
			// tls (certificate automation asks an ACME CA), pki and others.
			t.Errorf("the example configures the %q app; it may only serve HTTP on loopback", name)
		}
	}
	var httpApp struct {
		Servers map[string]struct {
			Listen    []string                `json:"listen"`
			AutoHTTPS *struct{ Disable bool } `json:"automatic_https"`
			Routes    []any                   `json:"routes"`
		} `json:"servers"`
	}
	if err := json.Unmarshal(cfg.Apps["http"], &httpApp); err != nil {
		t.Fatal(err)
	}
	if cfg.Admin.Listen == "" || !isLoopbackHostPort(cfg.Admin.Listen) {
		t.Errorf("admin listens on %q, want a loopback address", cfg.Admin.Listen)
	}
	var sent []string // every address checked, for the log
	for name, srv := range httpApp.Servers {
		if srv.AutoHTTPS == nil || !srv.AutoHTTPS.Disable {
			t.Errorf("server %s: automatic HTTPS is on; it would ask a CA for certificates", name)
		}
		for _, l := range srv.Listen {
			if !isLoopbackHostPort(strings.TrimPrefix(l, "tcp/")) {
				t.Errorf("server %s listens on %q, want loopback only", name, l)
			}
		}
		for _, h := range handlersIn(srv.Routes) {
			switch h["handler"] {
			case "reverse_proxy":
				ups, _ := h["upstreams"].([]any)
				if len(ups) == 0 {
					t.Errorf("server %s: a reverse_proxy without static upstreams: %v", name, h)
				}
				for _, u := range ups {
					dial := fmt.Sprint(u.(map[string]any)["dial"])
					sent = append(sent, "reverse_proxy "+dial)
					if !isLoopbackHostPort(dial) {
						t.Errorf("server %s: reverse_proxy upstream %q is not loopback", name, dial)
					}
				}
			case "ecommpay":
				rc, ok := h["reconcile"].(map[string]any)
				if !ok {
					continue
				}
				statusURL, _ := rc["status_url"].(string)
				if statusURL == "" {
					statusURL = reconcile.DefaultStatusURL
				}
				sent = append(sent, "reconcile "+statusURL)
				u, err := url.Parse(statusURL)
				if err != nil || !isLoopbackName(u.Hostname()) {
					t.Errorf("server %s: reconcile asks %q, not a loopback address", name, statusURL)
				}
			case "subroute", "static_response", "rewrite", "headers", "vars", "encode":
				// Serve or change the request; send nothing.
			default:
				t.Errorf("server %s: handler %q: this test does not know whether it sends requests", name, h["handler"])
			}
		}
	}
	if len(sent) == 0 {
		t.Fatal("found no reverse_proxy or reconcile in the example; the walk is broken")
	}
	t.Logf("addresses Caddy sends requests to: %v", sent)
}

// handlersIn lists every handler in routes, subroutes included.
func handlersIn(routes []any) []map[string]any {
	var out []map[string]any
	for _, r := range routes {
		rm, _ := r.(map[string]any)
		hs, _ := rm["handle"].([]any)
		for _, h := range hs {
			hm, _ := h.(map[string]any)
			out = append(out, hm)
			if sub, ok := hm["routes"].([]any); ok {
				out = append(out, handlersIn(sub)...)
			}
		}
	}
	return out
}

// isLoopbackHostPort reports whether hostport is a loopback host with a port.
func isLoopbackHostPort(hostport string) bool {
	host, _, err := net.SplitHostPort(hostport)
	return err == nil && isLoopbackName(host)
}

// isLoopbackName reports whether host is a loopback IP or localhost.
func isLoopbackName(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
