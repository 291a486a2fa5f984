package journal

import (
	"encoding/binary"
	"encoding/hex"
	"strings"
	"time"
)

// What every journal backend shares: the rules that turn entries into
// payment views, and the filters.

// DefaultListLimit is the page size when a filter sets no Limit.
const DefaultListLimit = 100

// IsUnverified tells entries bounded apart from the genuine ones.
func (e *Event) IsUnverified() bool { return !e.Verified && e.Kind == KindCallback }

// JoinsPayment tells whether e creates or changes a payment view.
func (e *Event) JoinsPayment() bool { return !e.IsUnverified() && e.PaymentID != "" }

// Apply updates v with a verified entry of its payment.
func (v *PaymentView) Apply(e *Event) {
	if v.Events == 0 {
		v.ProjectID, v.PaymentID = e.ProjectID, e.PaymentID
		v.Started, v.Updated = e.Time, e.Time
	}
	v.Started = minTime(v.Started, e.Time)
	if e.Time.After(v.Updated) {
		v.Updated = e.Time
	}
	v.Events++
	if e.Result == "app_error" {
		v.AppErrors++
	}
	signing := e.Kind == KindPaymentPage || e.Kind == KindGate
	if signing {
		if v.Signed.IsZero() || e.Time.Before(v.Signed) {
			v.Signed = e.Time
		}
		v.Mode = e.Kind
	}
	// Signing requests say what was asked for; other entries only fill gaps.
	for _, f := range [...]struct {
		dst *string
		src string
	}{
		{&v.Amount, e.Amount}, {&v.Currency, e.Currency}, {&v.Method, e.Method},
	} {
		if f.src != "" && (signing || *f.dst == "") {
			*f.dst = f.src
		}
	}
	switch e.Kind {
	case KindCallback:
		v.Callbacks++
		fallthrough
	case KindStatus: // a reconciled status is as good as a callback's
		if e.PaymentStatus != "" {
			v.Status = e.PaymentStatus
			v.Final = IsFinalStatus(v.Status)
		}
	}
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// IDBound is the ID prefix of time t: an ID sorts before IDBound(t) exactly
// when its entry's time is before t.
func IDBound(t time.Time) string {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(t.UnixNano()))
	return hex.EncodeToString(b[:])
}

// LimitOr is a filter's Limit, or DefaultListLimit when it sets none.
func LimitOr(n int) int {
	if n <= 0 {
		return DefaultListLimit
	}
	return n
}

// StartID is the exclusive upper bound of IDs that f can match, "" for
// none: the lesser of Before and Until.
func (f *EventFilter) StartID() string {
	start := f.Before
	if !f.Until.IsZero() {
		if u := IDBound(f.Until); start == "" || u < start {
			start = u
		}
	}
	return start
}

// StopID is the least ID that f can match ("" for none), so that a
// newest-first scan can stop early.
func (f *EventFilter) StopID() string {
	if f.Since.IsZero() {
		return ""
	}
	return IDBound(f.Since)
}

// Match reports whether e passes f. Since is inclusive, Until exclusive.
func (f *EventFilter) Match(e *Event) bool {
	return (f.ProjectID == "" || e.ProjectID == f.ProjectID) &&
		(f.PaymentID == "" || e.PaymentID == f.PaymentID) &&
		(f.Result == "" || e.Result == f.Result) &&
		(f.Kind == "" || e.Kind == f.Kind) &&
		(f.EventKey == "" || e.EventKey == f.EventKey) &&
		(f.Since.IsZero() || !e.Time.Before(f.Since)) &&
		(f.Until.IsZero() || e.Time.Before(f.Until)) &&
		(f.Before == "" || e.ID < f.Before)
}

// Match reports whether v passes f; Since and Until bound Updated.
func (f *PaymentFilter) Match(v *PaymentView) bool {
	return (f.ProjectID == "" || v.ProjectID == f.ProjectID) &&
		(f.PaymentID == "" || v.PaymentID == f.PaymentID) &&
		(f.Status == "" || v.Status == f.Status) &&
		(f.Method == "" || v.Method == f.Method) &&
		(f.Since.IsZero() || !v.Updated.Before(f.Since)) &&
		(f.Until.IsZero() || v.Updated.Before(f.Until)) &&
		(!f.Open || !v.Final)
}

// NewestUpdatedFirst orders payments for Payments: ties in descending
// project and payment id, as the local store's indexes read backwards.
func NewestUpdatedFirst(a, b PaymentView) int {
	if c := b.Updated.Compare(a.Updated); c != 0 {
		return c
	}
	if c := strings.Compare(b.ProjectID, a.ProjectID); c != 0 {
		return c
	}
	return strings.Compare(b.PaymentID, a.PaymentID)
}

// OldestSignedFirst orders payments for OpenPayments.
func OldestSignedFirst(a, b PaymentView) int {
	if c := a.Signed.Compare(b.Signed); c != 0 {
		return c
	}
	if c := strings.Compare(a.ProjectID, b.ProjectID); c != 0 {
		return c
	}
	return strings.Compare(a.PaymentID, b.PaymentID)
}

// IsOpenSince tells whether v is a candidate for OpenPayments(cut).
func (v *PaymentView) IsOpenSince(cut time.Time) bool {
	return !v.Final && !v.Signed.IsZero() && v.Signed.Before(cut)
}

// MergeNewest merges two newest-first lists into at most limit entries.
func MergeNewest(a, b []Event, limit int) []Event {
	out := make([]Event, 0, min(limit, len(a)+len(b)))
	for len(out) < limit && (len(a) > 0 || len(b) > 0) {
		if len(b) == 0 || (len(a) > 0 && a[0].ID > b[0].ID) {
			out, a = append(out, a[0]), a[1:]
		} else {
			out, b = append(out, b[0]), b[1:]
		}
	}
	return out
}
