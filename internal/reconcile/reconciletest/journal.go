package reconciletest

import (
	"context"
	"testing"
	"time"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/journal"
)

// Started records in j the signing request that starts payment paymentID of
// project 210 at time at, as the payment_page and gate modes journal it.
func Started(tb testing.TB, j journal.Journal, at time.Time, kind, paymentID, method string, appStatus int, path string) {
	tb.Helper()
	ev := journal.Event{Time: at, Kind: kind, ProjectID: "210", PaymentID: paymentID, Result: "signed",
		Method: method, Status: appStatus, EcommpayStatus: appStatus, Path: path, Verified: true}
	if err := j.Record(context.Background(), ev); err != nil {
		tb.Fatal(err)
	}
}

// Timeline returns the entries of payment paymentID of project 210 in j.
func Timeline(tb testing.TB, j journal.Journal, paymentID string) []journal.Event {
	tb.Helper()
	tl, err := j.Timeline(context.Background(), "210", paymentID)
	if err != nil {
		tb.Fatal(err)
	}
	return tl.Events
}

// CountKind counts the entries of kind with result (any result when it
// is empty).
func CountKind(events []journal.Event, kind, result string) int {
	n := 0
	for _, ev := range events {
		if ev.Kind == kind && (result == "" || ev.Result == result) {
			n++
		}
	}
	return n
}
