// Package journal owns the payment journal's model: the entry (Event), the
// payment view and the one fold that builds it from entries, the filters
// of the console API and reconciliation, the bounds (Options) and the
// Journal interface that every backend implements with the same
// behaviour. It knows nothing of Caddy or Prometheus: backends report
// pruning through a PruneLog, whose hook the caller fills in.
package journal

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

// Journal entry kinds. A signing request's kind is its handler mode's name.
const (
	KindCallback      = "callback"       // a callback from ecommpay
	KindReplay        = "replay"         // an operator re-delivered a stored event
	KindStatus        = "status"         // a status answer delivered to the app (reconciliation)
	KindStatusRequest = "status_request" // a status request to ecommpay (reconciliation)
	KindPaymentPage   = "payment_page"   // a signed Payment Page URL
	KindGate          = "gate"           // a signed Gate request
)

// Reasons of an entry that failed without an answer.
const (
	ReasonUnreachable = "unreachable" // the proxy could not reach the app
	ReasonTimeout     = "timeout"     // no answer within forward_timeout
	ReasonNoHandler   = "no_handler"  // nothing after ecommpay callback answered
)

// Defaults of Options.
const (
	defaultMaxAge  = 30 * 24 * time.Hour
	defaultMaxSize = 256 << 20
	// DefaultMaxUnverified bounds entries of callbacks that failed
	// verification, kept apart so that strangers cannot push genuine
	// entries out of the journal.
	DefaultMaxUnverified = 10000
	// UnverifiedFieldMax is the length past which TruncateUnverified cuts.
	UnverifiedFieldMax = 64
)

// ErrNotFound is what journal lookups return for an unknown payment,
// event or body.
var ErrNotFound = errors.New("ecommpay: not found in the journal")

// Event is one journal entry. Its JSON form is the console API's
// event object.
type Event struct {
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
	// AppStatus and AppLatencyMS are the app's answer, when it was asked.
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

// EventFilter selects journal events; zero fields match everything.
// Events come newest first.
type EventFilter struct {
	ProjectID, PaymentID, Result, Kind, EventKey string
	Since, Until                                 time.Time
	// Before pages on: only events whose ID sorts before it.
	Before string
	// Limit is the most events returned; 0 means 100.
	Limit int
}

// PaymentView is what the journal knows of one payment.
type PaymentView struct {
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

// PaymentFilter selects payments, newest Updated first.
type PaymentFilter struct {
	ProjectID, PaymentID, Status, Method string
	Since, Until                         time.Time
	// Open keeps only payments without a final status.
	Open bool
	// Limit is the most payments returned; 0 means 100.
	Limit int
}

// Timeline is one payment's life: its view and its entries, oldest first.
type Timeline struct {
	Payment PaymentView `json:"payment"`
	Events  []Event     `json:"events"`
}

// Journal is the Go API that the console and reconciliation use. Every
// backend implements it with the same behaviour.
type Journal interface {
	// Record appends e, assigning ID (and Time when zero). Entries whose
	// Verified is false are truncated, lose their Body, never create or
	// change a payment, and are bounded on their own. Record may buffer:
	// what it accepted is durable within a second.
	Record(ctx context.Context, e Event) error
	// Events lists entries, newest first.
	Events(ctx context.Context, f EventFilter) ([]Event, error)
	// Payments lists payments, most recently updated first.
	Payments(ctx context.Context, f PaymentFilter) ([]PaymentView, error)
	// Timeline is one payment's view and entries, oldest first.
	Timeline(ctx context.Context, projectID, paymentID string) (Timeline, error)
	// OpenPayments lists payments first signed before startedBefore that
	// have no final status, oldest first.
	OpenPayments(ctx context.Context, startedBefore time.Time, limit int) ([]PaymentView, error)
	// Body is the stored body of an event key.
	Body(ctx context.Context, eventKey string) ([]byte, error)
}

// Options bound a journal.
type Options struct {
	MaxAge        time.Duration // default 30 days
	MaxSize       int64         // bytes; default 256 MiB
	MaxUnverified int           // default DefaultMaxUnverified
	NoBodies      bool          // keep metadata only
}

// WithDefaults fills the bounds left zero.
func (o Options) WithDefaults() Options {
	if o.MaxAge <= 0 {
		o.MaxAge = defaultMaxAge
	}
	if o.MaxSize <= 0 {
		o.MaxSize = defaultMaxSize
	}
	if o.MaxUnverified <= 0 {
		o.MaxUnverified = DefaultMaxUnverified
	}
	return o
}

// SizePruneFloor is what a journal over maxSize is pruned down to, so that
// a full journal prunes in batches: a tenth of maxSize below it, but no
// more than 1 MiB or a sixty-fourth of maxSize, whichever is larger (4 MiB
// of the default 256 MiB), so that no batch holds a core, or the memory
// journal's lock, for long. Every local and memory journal prunes so.
func SizePruneFloor(maxSize int64) int64 {
	return maxSize - max(maxSize/64, min(maxSize/10, 1<<20))
}

// finalStatuses are the payment statuses after which nothing more is
// expected (the protocol notes' classification). Partial refunds and
// reversals can still change, so they are not final.
var finalStatuses = map[string]bool{
	"success": true, "decline": true, "error": true, "internal error": true,
	"external error": true, "canceled": true, "cancelled": true,
	"refunded": true, "reversed": true, "expired": true,
}

// IsFinalStatus tells the payment statuses after which nothing more is
// expected.
func IsFinalStatus(s string) bool { return finalStatuses[s] }

// knownStatuses are the payment statuses ecommpay sends.
var knownStatuses = func() map[string]string {
	m := map[string]string{}
	for _, s := range []string{"awaiting customer", "awaiting 3ds result", "awaiting redirect result",
		"awaiting clarification", "awaiting capture", "awaiting cancellation", "processing",
		"partially refunded", "partially reversed"} {
		m[s] = s
	}
	for s := range finalStatuses {
		m[s] = s
	}
	return m
}()

// KnownStatus returns the one shared copy of s when s is a payment status
// ecommpay sends, so that views kept in memory can share it rather than
// copy it.
func KnownStatus(s string) (string, bool) {
	k, ok := knownStatuses[s]
	return k, ok
}

// NewEventID returns an ID that sorts by t and is unique: 16 hex digits of
// Unix nanoseconds, then 8 random hex digits.
func NewEventID(t time.Time) string {
	var b [12]byte
	binary.BigEndian.PutUint64(b[:8], uint64(t.UnixNano()))
	// Uniqueness, not secrecy: math/rand's generator is seeded from the
	// system's and, unlike crypto/rand, makes no system call per ID.
	binary.BigEndian.PutUint32(b[8:], rand.Uint32())
	return hex.EncodeToString(b[:])
}

// TruncateUnverified cuts an unverified field to a bounded length.
func TruncateUnverified(s string) string { return Truncate(s, UnverifiedFieldMax) }

// Truncate cuts s to at most n bytes and marks the cut with "…", without
// splitting a UTF-8 sequence.
func Truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && s[cut]&0xC0 == 0x80 { // do not split a UTF-8 sequence
		cut--
	}
	return s[:cut] + "…"
}

// EcommpayAnswer is ecommpay's HTTP answer to a Gate request: in
// EcommpayStatus, or in AppStatus for entries recorded before it existed.
func (e *Event) EcommpayAnswer() int {
	if e.EcommpayStatus == 0 && e.Kind == KindGate {
		return e.AppStatus
	}
	return e.EcommpayStatus
}

// Prepare fills what Record assigns and applies the rules for unverified
// entries. Every backend calls it first.
func (e *Event) Prepare(now time.Time) {
	if e.Time.IsZero() {
		e.Time = now
	}
	e.Time = e.Time.UTC()
	if e.ID == "" {
		e.ID = NewEventID(e.Time)
	}
	if !e.Verified && e.Kind == KindCallback {
		e.Body = nil
		for _, f := range []*string{&e.ProjectID, &e.PaymentID, &e.OperationID, &e.OperationType,
			&e.OperationStatus, &e.PaymentStatus, &e.EventKey, &e.Amount, &e.Currency, &e.Method, &e.Reason} {
			*f = TruncateUnverified(*f)
		}
	}
}

// FoldsIntoFirst tells the entries that Record counts on the first entry
// of their event key, when the journal still has it, instead of keeping.
func (e *Event) FoldsIntoFirst() bool {
	return e.Kind == KindCallback && e.Verified && e.EventKey != "" && (e.Result == "duplicate" || e.Result == "in_flight")
}

// CountDuplicate counts dup on e, the first entry of its key.
func (e *Event) CountDuplicate(dup *Event) {
	e.Duplicates++
	if dup.Time.After(e.LastSeen) {
		e.LastSeen = dup.Time
	}
}
