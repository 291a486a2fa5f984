package ecommpay

import (
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/journal"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/store"
)

// The handler's names for the journal model, which internal/journal owns.
type (
	journalEvent   = journal.Event
	eventFilter    = journal.EventFilter
	paymentView    = journal.PaymentView
	paymentFilter  = journal.PaymentFilter
	timeline       = journal.Timeline
	journalOptions = journal.Options
)

// Journal entry kinds and reasons, as the handler's code names them.
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

func isFinalStatus(s string) bool               { return journal.IsFinalStatus(s) }
func truncateUnverified(s string) string        { return journal.TruncateUnverified(s) }
func limitOr(n int) int                         { return journal.LimitOr(n) }
func payKey(projectID, paymentID string) string { return projectID + "\x00" + paymentID }

// payID identifies a payment in maps.
type payID struct{ projectID, paymentID string }

// healthReporter is a journal that can lose or fail to write its file.
type healthReporter interface {
	Health() (ok bool, why string)
}

// backend is one store of de-dup state and journal together.
type backend = store.Backend
