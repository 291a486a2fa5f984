package ecommpay

import (
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/journal"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/store"
)

// The handler's short names for what internal/journal and internal/store
// own, so that the modes' code reads as the journal's vocabulary.
type (
	journalEvent   = journal.Event
	eventFilter    = journal.EventFilter
	paymentView    = journal.PaymentView
	paymentFilter  = journal.PaymentFilter
	timeline       = journal.Timeline
	journalOptions = journal.Options
	backend        = store.Backend
)

// Journal entry kinds and reasons. A signing request is journaled under
// its mode's name (TestSigningKindsAreModes).
const (
	kindCallback      = journal.KindCallback
	kindReplay        = journal.KindReplay
	kindStatus        = journal.KindStatus
	kindStatusRequest = journal.KindStatusRequest
	kindPaymentPage   = journal.KindPaymentPage
	kindGate          = journal.KindGate

	reasonUnreachable = journal.ReasonUnreachable
	reasonTimeout     = journal.ReasonTimeout
	reasonNoHandler   = journal.ReasonNoHandler
)

var errNotFound = journal.ErrNotFound

func isFinalStatus(s string) bool        { return journal.IsFinalStatus(s) }
func truncateUnverified(s string) string { return journal.TruncateUnverified(s) }
func limitOr(n int) int                  { return journal.LimitOr(n) }

// payKey identifies a payment in maps keyed by string.
func payKey(projectID, paymentID string) string { return projectID + "\x00" + paymentID }

// payID identifies a payment in maps.
type payID struct{ projectID, paymentID string }

// healthReporter is a journal that can tell that it is losing what it is
// given (the console's banner); every store.Backend is one.
type healthReporter interface {
	Health() (ok bool, why string)
}
