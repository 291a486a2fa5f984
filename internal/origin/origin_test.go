package origin

import (
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"testing"
)

// The replay's Origin check compares scheme, host and port, not the host
// alone, and an Origin that is not one (null, a path) fails.
func TestSameComparesSchemeHostAndPort(t *testing.T) {
	for _, c := range []struct {
		host, origin string
		tls          bool
		want         bool
	}{
		{"127.0.0.1:8081", "", false, true},
		{"127.0.0.1:8081", "http://127.0.0.1:8081", false, true},
		{"localhost:8081", "http://LOCALHOST:8081", false, true},
		{"127.0.0.1", "http://127.0.0.1:80", false, true},
		{"127.0.0.1:443", "https://127.0.0.1", true, true},
		{"127.0.0.1:8081", "https://127.0.0.1:8081", false, false},
		{"127.0.0.1:8081", "http://127.0.0.1:8082", false, false},
		{"127.0.0.1:8081", "http://127.0.0.1", false, false},
		{"127.0.0.1:8081", "http://localhost:8081", false, false},
		{"127.0.0.1:8081", "null", false, false},
		{"127.0.0.1:8081", "http://127.0.0.1:8081/x", false, false},
	} {
		r := httptest.NewRequest(http.MethodPost, "/events/k/replay", nil)
		r.Host = c.host
		r.TLS = nil
		if c.tls {
			r.TLS = &tls.ConnectionState{HandshakeComplete: true}
		}
		if c.origin != "" {
			r.Header.Set("Origin", c.origin)
		}
		if got := Same(r, false); got != c.want {
			t.Errorf("Host %s, Origin %q, TLS %v: %v, want %v", c.host, c.origin, c.tls, got, c.want)
		}
	}
}

// Behind a trusted proxy the scheme is the proxy's X-Forwarded-Proto;
// without allow_proxied the header is ignored.
func TestSameTrustsForwardedProtoOnlyWhenProxied(t *testing.T) {
	r := httptest.NewRequest(http.MethodPost, "/events/k/replay", nil)
	r.Host = "pay.internal"
	r.Header.Set("Origin", "https://pay.internal")
	r.Header.Set("X-Forwarded-Proto", "https")
	if !Same(r, true) {
		t.Error("a proxied https request refused")
	}
	if Same(r, false) {
		t.Error("X-Forwarded-Proto trusted without allow_proxied")
	}
}

// A browser that says another site's page sent the request is refused.
func TestSameRefusesCrossSiteFetch(t *testing.T) {
	for site, want := range map[string]bool{"": true, "none": true, "same-origin": true, "same-site": false, "cross-site": false} {
		r := httptest.NewRequest(http.MethodPost, "/", nil)
		if site != "" {
			r.Header.Set("Sec-Fetch-Site", site)
		}
		if got := Same(r, false); got != want {
			t.Errorf("Sec-Fetch-Site %q: %v, want %v", site, got, want)
		}
	}
}

func TestHostName(t *testing.T) {
	for host, want := range map[string]string{
		"Pay.Internal.:8081": "pay.internal",
		"127.0.0.1":          "127.0.0.1",
		"[::1]:8081":         "::1",
		"[::1]x":             "",
		"::1":                "::1",
	} {
		if got := HostName(host); got != want {
			t.Errorf("HostName(%q) = %q, want %q", host, got, want)
		}
	}
}
