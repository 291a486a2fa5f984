// Package origin owns the checks on where a browser's request comes
// from: the name a Host header carries (HostName) and whether a request
// was sent by a page of the origin it addresses (Same). Any web page can
// make the operator's browser send requests to loopback; the signing
// modes and the console's replay refuse those that another origin's
// page sent. Standard library only.
package origin

import (
	"net"
	"net/http"
	"net/url"
	"strings"
)

// Same reports whether r may be a state change: no browser says another
// site's page sent it (Sec-Fetch-Site), and an Origin, when present,
// matches the request in scheme, host and port. The Host itself must be
// checked by the caller. proxied trusts the scheme a proxy reports in
// X-Forwarded-Proto (allow_proxied).
func Same(r *http.Request, proxied bool) bool {
	switch r.Header.Get("Sec-Fetch-Site") {
	case "", "same-origin", "none":
	default:
		return false
	}
	o := r.Header.Get("Origin")
	if o == "" {
		return true
	}
	u, err := url.Parse(o)
	if err != nil {
		return false
	}
	scheme := requestScheme(r, proxied)
	return u.Scheme == scheme && u.Path == "" && hostPort(u.Host, scheme) == hostPort(r.Host, scheme)
}

// requestScheme is the scheme the client used: the connection's, or,
// behind a proxy that allow_proxied trusts, the one the proxy reports.
func requestScheme(r *http.Request, proxied bool) string {
	if proxied {
		if p := strings.ToLower(r.Header.Get("X-Forwarded-Proto")); p == "http" || p == "https" {
			return p
		}
	}
	if r.TLS != nil {
		return "https"
	}
	return "http"
}

// hostPort is host with its port made explicit, for comparing an Origin
// with a Host.
func hostPort(host, scheme string) string {
	name, port, err := net.SplitHostPort(host)
	if err != nil {
		name, port = host, "80"
		if scheme == "https" {
			port = "443"
		}
	}
	return net.JoinHostPort(HostName(name), port)
}

// HostName is the lower-case name of a Host header, without its port,
// brackets and trailing dot.
// A malformed one, such as "[::1]x", is "".
func HostName(host string) string {
	if rest, ok := strings.CutPrefix(host, "["); ok {
		addr, port, _ := strings.Cut(rest, "]")
		if port != "" && !strings.HasPrefix(port, ":") {
			return ""
		}
		host = addr
	} else if strings.Count(host, ":") == 1 { // name:port; bare IPv6 has more
		host, _, _ = strings.Cut(host, ":")
	}
	return strings.ToLower(strings.TrimSuffix(host, "."))
}
