package ecommpay

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/canon"
	"github.com/caddy-ecommpay/caddy-ecommpay/signature"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// Shared test fixtures: a provisioned handler, a real app behind Caddy's
// own reverse_proxy, and signed callback bodies.

const testSecret = "c0ffee-test-secret-01"

// TestMain loads an empty Caddy config, so modules provisioned in tests
// (reverse_proxy looks up the events app) have one to hang on.
func TestMain(m *testing.M) {
	// Local stores go to Caddy's data directory: keep them out of the
	// user's.
	dataHome, err := os.MkdirTemp("", "ecommpay-test-data-")
	if err != nil {
		panic(err)
	}
	os.Setenv("XDG_DATA_HOME", dataHome)
	if err := caddy.Load([]byte(`{"admin":{"disabled":true},"logging":{"logs":{"default":{"level":"ERROR"}}}}`), false); err != nil {
		panic(err)
	}
	code := m.Run()
	_ = caddy.Stop()
	os.RemoveAll(dataHome)
	os.Exit(code)
}

func testContext(t testing.TB) caddy.Context {
	ctx, cancel := caddy.NewContext(caddy.ActiveContext())
	t.Cleanup(cancel)
	return ctx
}

// provision provisions h and validates it, with its logs captured.
func provision(t testing.TB, h *Handler) *observer.ObservedLogs {
	t.Helper()
	if h.Mode != modeQR && h.Store == "" && h.Dedupe != "memory" && h.Dedupe != "redis" && h.StorePath == "" {
		// Each test its own local store: a shared file would carry one
		// test's delivered callbacks into the next.
		h.StorePath = filepath.Join(t.TempDir(), "ecommpay.db")
	}
	if err := h.Provision(testContext(t)); err != nil {
		t.Fatalf("provision: %v", err)
	}
	if err := h.Validate(); err != nil {
		t.Fatalf("validate: %v", err)
	}
	t.Cleanup(func() { _ = h.Cleanup() })
	core, logs := observer.New(zap.DebugLevel)
	h.logger = zap.New(core)
	return logs
}

// received is one request the app got.
type received struct {
	body   []byte
	header http.Header
	uri    string
}

// testApp is a merchant app: it records every callback and answers with
// the status it is set to.
type testApp struct {
	srv    *httptest.Server
	status atomic.Int32
	delay  atomic.Int64 // nanoseconds to wait before answering
	mu     sync.Mutex
	got    []received
}

func newTestApp(t testing.TB) *testApp {
	a := &testApp{}
	a.status.Store(http.StatusOK)
	a.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if d := a.delay.Load(); d > 0 {
			time.Sleep(time.Duration(d))
		}
		a.mu.Lock()
		a.got = append(a.got, received{body, r.Header.Clone(), r.RequestURI})
		a.mu.Unlock()
		w.WriteHeader(int(a.status.Load()))
		_, _ = w.Write([]byte("OK"))
	}))
	t.Cleanup(a.srv.Close)
	return a
}

func (a *testApp) received() []received {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]received(nil), a.got...)
}

// proxyTo is Caddy's reverse_proxy to addr, as the next handler.
func proxyTo(t testing.TB, addr string) caddyhttp.Handler {
	t.Helper()
	rp := &reverseproxy.Handler{Upstreams: reverseproxy.UpstreamPool{{Dial: strings.TrimPrefix(addr, "http://")}}}
	if err := rp.Provision(testContext(t)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rp.Cleanup() })
	end := caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil })
	return caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		return rp.ServeHTTP(w, r, end)
	})
}

// serve runs one request through h the way Caddy's server would.
func serve(h *Handler, r *http.Request, next caddyhttp.Handler) *httptest.ResponseRecorder {
	withLoopbackHost(r)
	w := httptest.NewRecorder()
	r = caddyhttp.PrepareRequest(r, caddy.NewReplacer(), w, &caddyhttp.Server{})
	if next == nil {
		next = caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil })
	}
	if err := h.ServeHTTP(w, r, next); err != nil {
		status := http.StatusInternalServerError
		if he, ok := err.(caddyhttp.HandlerError); ok {
			status = he.StatusCode
		}
		w.Code = status
	}
	return w
}

// sign adds a top-level signature to a JSON object body.
func sign(t testing.TB, secret, body string) []byte {
	t.Helper()
	canonical, _, err := signature.CallbackCanonical([]byte(body))
	if err != nil {
		t.Fatal(err)
	}
	body = strings.TrimSpace(body)
	return []byte(body[:len(body)-1] + `,"signature":"` + signature.Sign(canonical, secret) + `"}`)
}

// verifies reports whether a callback body carries a valid signature.
func verifies(body []byte, secret string) bool {
	canonical, sig, err := signature.CallbackCanonical(body)
	return err == nil && canon.NewKey(secret).Verify([]byte(canonical), sig)
}

// withLoopbackHost gives a request with httptest's placeholder Host (or none)
// the Host a client dialling loopback sends, as the signing modes expect;
// tests of the Host check set their own.
func withLoopbackHost(r *http.Request) {
	if r.Host == "" || r.Host == "example.com" {
		r.Host = "127.0.0.1"
	}
}

func post(target string, body []byte) *http.Request {
	r := httptest.NewRequest(http.MethodPost, target, strings.NewReader(string(body)))
	r.Header.Set("Content-Type", "application/json")
	return r
}

// closedPort returns a loopback address nothing listens on.
func closedPort(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}
