package console

import (
	"context"
	"errors"
	"math/big"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/currency"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/journal"
)

// What the console's pages show of journal entries and payments: amounts
// in major units, times with their zone, answers in words, the summary
// line of the payments list, and which refused callbacks still need a
// human.

// clockLayout is how pages write a time: in UTC, saying so.
const clockLayout = "2006-01-02 15:04:05 MST"

func clock(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(clockLayout)
}

// majorAmount writes an amount in minor units in major units of its
// currency, or as it came when it is not an integer.
func majorAmount(minor, code string) string {
	if s, ok := currency.Major(minor, code); ok {
		return s
	}
	return minor
}

// answerText says in a few words who answered an entry and how: the app,
// for callbacks, replays and status events; ecommpay, for Gate and status
// requests.
func answerText(kind string, appStatus, ecommpayStatus int, reason string, latencyMS int64) string {
	switch kind {
	case journal.KindPaymentPage:
		return ""
	case journal.KindGate, journal.KindStatusRequest:
		status := ecommpayStatus
		if status == 0 && kind == journal.KindGate {
			status = appStatus // recorded before ecommpay_status existed
		}
		var parts []string
		if status != 0 {
			parts = append(parts, "ecommpay "+strconv.Itoa(status))
		}
		switch {
		case reason == journal.ReasonUnreachable:
			parts = append(parts, "ecommpay unreachable")
		case reason != "":
			parts = append(parts, reason)
		}
		return strings.Join(parts, ": ")
	}
	switch reason {
	case journal.ReasonUnreachable:
		return "app unreachable"
	case journal.ReasonTimeout:
		return "app did not answer in time"
	case journal.ReasonNoHandler:
		return "no handler after ecommpay callback"
	}
	if appStatus == 0 {
		return ""
	}
	if latencyMS == 0 {
		return "app " + strconv.Itoa(appStatus) + " in <1 ms"
	}
	return "app " + strconv.Itoa(appStatus) + " in " + strconv.FormatInt(latencyMS, 10) + " ms"
}

// oldestFirst is a newest-first list of entries in the order timelines
// show them.
func oldestFirst(evs []journal.Event) []journal.Event {
	out := slices.Clone(evs)
	slices.Reverse(out)
	return out
}

// paymentSummary is the summary line over a list of payments.
type paymentSummary struct {
	Payments int
	Statuses []countOf
	Sums     []sumOf
	// Unsummed counts payments with an amount that is not an integer.
	Unsummed int
}

type countOf struct {
	Status string
	N      int
}

type sumOf struct {
	Currency string
	Minor    string // the sum in minor units
	Major    string
	N        int // payments summed
}

// summarize counts payments by status (most first) and sums their amounts
// by currency.
func summarize(list []journal.PaymentView) paymentSummary {
	s := paymentSummary{Payments: len(list)}
	counts := map[string]int{}
	sums := map[string]*big.Int{}
	summed := map[string]int{}
	for _, p := range list {
		counts[p.Status]++
		if p.Amount == "" {
			continue
		}
		n, ok := new(big.Int).SetString(p.Amount, 10)
		if !ok {
			s.Unsummed++
			continue
		}
		code := strings.ToUpper(p.Currency)
		if sums[code] == nil {
			sums[code] = new(big.Int)
		}
		sums[code].Add(sums[code], n)
		summed[code]++
	}
	for status, n := range counts {
		s.Statuses = append(s.Statuses, countOf{status, n})
	}
	slices.SortFunc(s.Statuses, func(a, b countOf) int {
		if a.N != b.N {
			return b.N - a.N
		}
		return strings.Compare(a.Status, b.Status)
	})
	for code, n := range sums {
		s.Sums = append(s.Sums, sumOf{Currency: code, Minor: n.String(), Major: currency.FormatMajor(n, code), N: summed[code]})
	}
	slices.SortFunc(s.Sums, func(a, b sumOf) int { return strings.Compare(a.Currency, b.Currency) })
	return s
}

// pendingAppErrors keeps the refused callbacks whose event no attempt
// delivered: once a retry, or a replay, reached the app, a human has
// nothing left to do. Each event is listed once, at its latest
// refusal. It reads each payment's timeline, which every backend keeps
// by payment, rather than searching the journal by event key.
func (h *Console) pendingAppErrors(ctx context.Context, refused []journal.Event) ([]journal.Event, error) {
	delivered := map[string]bool{} // event keys the app has
	type payID struct{ projectID, paymentID string }
	readPayments := map[payID]bool{}
	readKeys := map[string]bool{}
	for _, e := range refused {
		if e.EventKey == "" {
			continue
		}
		var evs []journal.Event
		var err error
		if e.PaymentID != "" {
			// One payment's timeline answers for all its refused events.
			id := payID{e.ProjectID, e.PaymentID}
			if readPayments[id] {
				continue
			}
			readPayments[id] = true
			var tl journal.Timeline
			tl, err = h.cfg.Journal.Timeline(ctx, e.ProjectID, e.PaymentID)
			evs = tl.Events
		} else {
			if readKeys[e.EventKey] {
				continue
			}
			readKeys[e.EventKey] = true
			evs, err = h.cfg.Journal.Events(ctx, journal.EventFilter{EventKey: e.EventKey, Result: "forwarded", Limit: 1})
		}
		if err != nil && !errors.Is(err, journal.ErrNotFound) {
			return nil, err
		}
		for _, d := range evs {
			if d.Result == "forwarded" && d.EventKey != "" {
				delivered[d.EventKey] = true
			}
		}
	}
	var out []journal.Event
	seen := map[string]bool{}
	for _, e := range refused { // newest first
		if e.EventKey != "" {
			if seen[e.EventKey] || delivered[e.EventKey] {
				continue
			}
			seen[e.EventKey] = true
		}
		out = append(out, e)
	}
	return out, nil
}
