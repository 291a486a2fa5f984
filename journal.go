package ecommpay

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"math/rand/v2"
	"time"
)

// The journal keeps what happened to each payment: every callback attempt
// and every signing request that starts or changes a payment. It lives in
// the same backend as the de-dup store (local file, memory or Redis), so a
// cluster on Redis shares one journal.

// Journal entry kinds.
const (
	kindCallback      = "callback"       // a callback from ecommpay
	kindReplay        = "replay"         // an operator re-delivered a stored event
	kindStatus        = "status"         // a status answer delivered to the app (reconciliation)
	kindStatusRequest = "status_request" // a status request to ecommpay (reconciliation)
	kindPaymentPage   = ModePaymentPage  // a signed Payment Page URL
	kindGate          = ModeGate         // a signed Gate request
)

// Reasons of a callback that the app never answered.
const (
	reasonUnreachable = "unreachable" // the proxy could not reach the app
	reasonTimeout     = "timeout"     // no answer within forward_timeout
	reasonNoHandler   = "no_handler"  // nothing after ecommpay callback answered
)

// Journal defaults.
const (
	DefaultJournalMaxAge  = 30 * 24 * time.Hour
	DefaultJournalMaxSize = 256 << 20
	// DefaultJournalMaxUnverified bounds entries of callbacks that failed
	// verification, kept apart so that strangers cannot push genuine
	// entries out of the journal.
	DefaultJournalMaxUnverified = 10000
	// unverifiedFieldMax truncates the fields of unverified entries.
	unverifiedFieldMax = 64
)

// errNotFound is what journal lookups return for an unknown payment,
// event or body.
var errNotFound = errors.New("ecommpay: not found in the journal")

// journalEvent is one journal entry. Its JSON form is the console API's
// event object.
type journalEvent struct {
	// ID is unique and sorts in time order; the journal assigns it.
	ID   string    `json:"id"`
	Time time.Time `json:"time"`
	Kind string    `json:"kind"`

	ProjectID       string `json:"project_id"`
	PaymentID       string `json:"payment_id"`
	OperationID     string `json:"operation_id,omitempty"`
	OperationType   string `json:"operation_type,omitempty"`
	OperationStatus string `json:"operation_status"`
	PaymentStatus   string `json:"payment_status"`
	// EventKey is the de-dup key: retries of one callback share it.
	EventKey string `json:"event_key"`
	// Result is the handler's verdict, as in callbacks_total and the log.
	Result string `json:"result"`
	// Status is what the handler answered the sender.
	Status int `json:"status,omitempty"`
	// AppStatus and AppLatency are the app's answer, when it was asked.
	AppStatus    int   `json:"app_status"`
	AppLatencyMS int64 `json:"app_latency_ms"`
	// EcommpayStatus is ecommpay's HTTP answer to a Gate request or a
	// status request.
	EcommpayStatus int `json:"ecommpay_status,omitempty"`
	// Reason says why an entry failed when its result alone does not: a
	// callback the app never answered, a status request's error.
	Reason string `json:"reason,omitempty"`
	// Verified is false for callbacks whose signature was not verified:
	// their fields are truncated and nothing of them is stored at length.
	Verified bool `json:"verified"`

	// Duplicates counts later callbacks of this event key answered as
	// duplicates or in flight: each is counted on the first entry of its
	// key instead of being entered, so that retries and replayed captures
	// cannot push other entries out. LastSeen is the newest of them.
	Duplicates int       `json:"duplicates,omitempty"`
	LastSeen   time.Time `json:"last_seen,omitzero"`

	// Signing requests; amount, currency and method also for verified
	// callbacks and status events (payment.sum and payment.method).
	Path     string `json:"path,omitempty"`
	Amount   string `json:"amount,omitempty"`
	Currency string `json:"currency,omitempty"`
	Method   string `json:"method,omitempty"`

	// Body is the verified body as received (callbacks) or as delivered
	// (replays and status events). Record stores it once per event key;
	// lists leave it out.
	Body []byte `json:"-"`
}

// eventFilter selects journal events; zero fields match everything.
// Events come newest first.
type eventFilter struct {
	ProjectID, PaymentID, Result, Kind, EventKey string
	Since, Until                                 time.Time
	// Before pages on: only events whose ID sorts before it.
	Before string
	// Limit is the most events returned; 0 means 100.
	Limit int
}

// paymentView is what the journal knows of one payment.
type paymentView struct {
	ProjectID string    `json:"project_id"`
	PaymentID string    `json:"payment_id"`
	Started   time.Time `json:"started"` // the first entry
	Updated   time.Time `json:"updated"` // the last entry
	// Signed is when the first signing request for it was made, if any.
	Signed   time.Time `json:"signed,omitzero"`
	Mode     string    `json:"mode,omitempty"` // payment_page or gate
	Amount   string    `json:"amount,omitempty"`
	Currency string    `json:"currency,omitempty"`
	Method   string    `json:"method,omitempty"`
	// Status is the last payment status a verified callback carried.
	Status string `json:"status"`
	Final  bool   `json:"final"`
	// Counts for the attention badges.
	Callbacks int `json:"callbacks"`
	AppErrors int `json:"app_errors"`
	Events    int `json:"events"`
}

// paymentFilter selects payments, newest Updated first.
type paymentFilter struct {
	ProjectID, PaymentID, Status, Method string
	Since, Until                         time.Time
	// Open keeps only payments without a final status.
	Open bool
	// Limit is the most payments returned; 0 means 100.
	Limit int
}

// timeline is one payment's life: its view and its entries, oldest first.
type timeline struct {
	Payment paymentView    `json:"payment"`
	Events  []journalEvent `json:"events"`
}

// journal is the Go API that the console and reconciliation use. Every
// backend implements it with the same behaviour.
type journal interface {
	// Record appends e, assigning ID (and Time when zero). Entries whose
	// Verified is false are truncated, lose their Body, never create or
	// change a payment, and are bounded on their own. Record may buffer:
	// what it accepted is durable within a second.
	Record(ctx context.Context, e journalEvent) error
	// Events lists entries, newest first.
	Events(ctx context.Context, f eventFilter) ([]journalEvent, error)
	// Payments lists payments, most recently updated first.
	Payments(ctx context.Context, f paymentFilter) ([]paymentView, error)
	// Timeline is one payment's view and entries, oldest first.
	Timeline(ctx context.Context, projectID, paymentID string) (timeline, error)
	// OpenPayments lists payments first signed before startedBefore that
	// have no final status, oldest first.
	OpenPayments(ctx context.Context, startedBefore time.Time, limit int) ([]paymentView, error)
	// Body is the stored body of an event key.
	Body(ctx context.Context, eventKey string) ([]byte, error)
}

// journalOptions bound a journal.
type journalOptions struct {
	MaxAge        time.Duration // default DefaultJournalMaxAge
	MaxSize       int64         // bytes; default DefaultJournalMaxSize
	MaxUnverified int           // default DefaultJournalMaxUnverified
	NoBodies      bool          // keep metadata only
}

func (o journalOptions) withDefaults() journalOptions {
	if o.MaxAge <= 0 {
		o.MaxAge = DefaultJournalMaxAge
	}
	if o.MaxSize <= 0 {
		o.MaxSize = DefaultJournalMaxSize
	}
	if o.MaxUnverified <= 0 {
		o.MaxUnverified = DefaultJournalMaxUnverified
	}
	return o
}

// finalStatuses are the payment statuses after which nothing more is
// expected (the protocol notes' classification). Partial refunds and
// reversals can still change, so they are not final.
var finalStatuses = map[string]bool{
	"success": true, "decline": true, "error": true, "internal error": true,
	"external error": true, "canceled": true, "cancelled": true,
	"refunded": true, "reversed": true, "expired": true,
}

func isFinalStatus(s string) bool { return finalStatuses[s] }

// newEventID returns an ID that sorts by t and is unique: 16 hex digits of
// Unix nanoseconds, then 8 random hex digits.
func newEventID(t time.Time) string {
	var b [12]byte
	binary.BigEndian.PutUint64(b[:8], uint64(t.UnixNano()))
	// Uniqueness, not secrecy: math/rand's generator is seeded from the
	// system's and, unlike crypto/rand, makes no system call per ID.
	binary.BigEndian.PutUint32(b[8:], rand.Uint32())
	return hex.EncodeToString(b[:])
}

// truncateUnverified cuts an unverified field to a bounded length.
func truncateUnverified(s string) string {
	if len(s) <= unverifiedFieldMax {
		return s
	}
	cut := unverifiedFieldMax
	for cut > 0 && s[cut]&0xC0 == 0x80 { // do not split a UTF-8 sequence
		cut--
	}
	return s[:cut] + "…"
}

// prepare fills what Record assigns and applies the rules for unverified
// entries. Every backend calls it first.
func (e *journalEvent) prepare(now time.Time) {
	if e.Time.IsZero() {
		e.Time = now
	}
	e.Time = e.Time.UTC()
	if e.ID == "" {
		e.ID = newEventID(e.Time)
	}
	if !e.Verified && e.Kind == kindCallback {
		e.Body = nil
		for _, f := range []*string{&e.ProjectID, &e.PaymentID, &e.OperationID, &e.OperationType,
			&e.OperationStatus, &e.PaymentStatus, &e.EventKey, &e.Amount, &e.Currency, &e.Method, &e.Reason} {
			*f = truncateUnverified(*f)
		}
	}
}

// foldsIntoFirst tells the entries that Record counts on the first entry
// of their event key, when the journal still has it, instead of keeping.
func (e *journalEvent) foldsIntoFirst() bool {
	return e.Kind == kindCallback && e.Verified && e.EventKey != "" && (e.Result == "duplicate" || e.Result == "in_flight")
}

// countDuplicate counts dup on e, the first entry of its key.
func (e *journalEvent) countDuplicate(dup *journalEvent) {
	e.Duplicates++
	if dup.Time.After(e.LastSeen) {
		e.LastSeen = dup.Time
	}
}

// backend is one store of de-dup state and journal together.
type backend interface {
	Store
	journal
}
