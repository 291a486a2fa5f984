// Package reconciletest is ecommpay's status endpoint for tests of
// reconciliation: it checks each request's signature and answers from a
// table.
package reconciletest

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/canon"
)

// statusPath is the status endpoint's path.
const statusPath = "/v2/payment/status"

// notFound is what the endpoint answers about a payment it was given no
// answer for, as ecommpay does.
const notFound = `{"status":"error","code":"3061","message":"Payment not found"}`

// Status is a running status endpoint for project 210.
type Status struct {
	// URL is the endpoint's address, Path included.
	URL string

	mu     sync.Mutex
	answer map[string]func() (int, string) // by payment_id; else not found
	asked  []string                        // payment_ids, in order
	at     []time.Time
	clock  func() time.Time
}

// NewStatus starts an endpoint that accepts requests signed with secret,
// noting when each came by clock; the test's end stops it.
func NewStatus(t testing.TB, secret string, clock func() time.Time) *Status {
	f := &Status{answer: map[string]func() (int, string){}, clock: clock}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		d, err := canon.Parse(body, canon.Limits{})
		if err != nil {
			t.Errorf("status request is not JSON: %s", body)
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		defer d.Release()
		general := d.Get(d.Root(), "general")
		sig := d.TextAt(general, "signature")
		pid := d.Get(general, "project_id")
		if pid == canon.None || d.Kind(pid) != canon.Number || d.Text(pid) != "210" {
			t.Errorf("status request general.project_id: %s", body)
		}
		d.Delete(general, "signature")
		if !canon.NewKey(secret).Verify(d.Canonical(nil, false), sig) || r.URL.Path != statusPath {
			t.Errorf("status request %s %s: signature does not verify", r.URL.Path, body)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		id := d.TextAt(general, "payment_id")
		f.mu.Lock()
		f.asked = append(f.asked, id)
		f.at = append(f.at, f.clock())
		fn := f.answer[id]
		f.mu.Unlock()
		status, answer := http.StatusBadRequest, notFound
		if fn != nil {
			status, answer = fn()
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = io.WriteString(w, answer)
	}))
	t.Cleanup(srv.Close)
	f.URL = srv.URL + statusPath
	return f
}

// Set answers status with body about paymentID; "%s" in body becomes the
// payment's id.
func (f *Status) Set(paymentID string, status int, body string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.answer[paymentID] = func() (int, string) { return status, strings.ReplaceAll(body, "%s", paymentID) }
}

// Requests are the payment_ids asked about, in order.
func (f *Status) Requests() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.asked...)
}

// Times are when each request came, by the clock.
func (f *Status) Times() []time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]time.Time(nil), f.at...)
}
