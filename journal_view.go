package ecommpay

import (
	"encoding/binary"
	"encoding/hex"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// What every journal backend shares: the rules that turn entries into
// payment views, the filters, and the pruning report.

// journalPrunedTotal counts journal entries dropped by a bound.
var journalPrunedTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
	Namespace: "caddy", Subsystem: "ecommpay", Name: "journal_pruned_total",
	Help: "Journal entries pruned, by reason (age, size, unverified).",
}, []string{"reason"})

// Prune reasons, the values of journalPrunedTotal's label.
const (
	pruneAge        = "age"
	pruneSize       = "size"
	pruneUnverified = "unverified"
)

const (
	// defaultListLimit is the page size when a filter sets no Limit.
	defaultListLimit = 100
	// pruneLogEvery rate-limits the pruning log line: a journal at its
	// bound prunes on every write.
	pruneLogEvery = time.Minute
)

// isUnverified tells entries bounded apart from the genuine ones.
func (e *journalEvent) isUnverified() bool { return !e.Verified && e.Kind == kindCallback }

// joinsPayment tells whether e creates or changes a payment view.
func (e *journalEvent) joinsPayment() bool { return !e.isUnverified() && e.PaymentID != "" }

// apply updates v with a verified entry of its payment.
func (v *paymentView) apply(e *journalEvent) {
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
	signing := e.Kind == kindPaymentPage || e.Kind == kindGate
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
	case kindCallback:
		v.Callbacks++
		fallthrough
	case kindStatus: // a reconciled status is as good as a callback's
		if e.PaymentStatus != "" {
			v.Status = e.PaymentStatus
			v.Final = isFinalStatus(v.Status)
		}
	}
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// idBound is the ID prefix of time t: an ID sorts before idBound(t) exactly
// when its entry's time is before t.
func idBound(t time.Time) string {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(t.UnixNano()))
	return hex.EncodeToString(b[:])
}

func limitOr(n int) int {
	if n <= 0 {
		return defaultListLimit
	}
	return n
}

// startID is the exclusive upper bound of IDs that f can match, "" for
// none: the lesser of Before and Until.
func (f *eventFilter) startID() string {
	start := f.Before
	if !f.Until.IsZero() {
		if u := idBound(f.Until); start == "" || u < start {
			start = u
		}
	}
	return start
}

// stopID is the least ID that f can match ("" for none), so that a
// newest-first scan can stop early.
func (f *eventFilter) stopID() string {
	if f.Since.IsZero() {
		return ""
	}
	return idBound(f.Since)
}

// match reports whether e passes f. Since is inclusive, Until exclusive.
func (f *eventFilter) match(e *journalEvent) bool {
	return (f.ProjectID == "" || e.ProjectID == f.ProjectID) &&
		(f.PaymentID == "" || e.PaymentID == f.PaymentID) &&
		(f.Result == "" || e.Result == f.Result) &&
		(f.Kind == "" || e.Kind == f.Kind) &&
		(f.EventKey == "" || e.EventKey == f.EventKey) &&
		(f.Since.IsZero() || !e.Time.Before(f.Since)) &&
		(f.Until.IsZero() || e.Time.Before(f.Until)) &&
		(f.Before == "" || e.ID < f.Before)
}

// match reports whether v passes f; Since and Until bound Updated.
func (f *paymentFilter) match(v *paymentView) bool {
	return (f.ProjectID == "" || v.ProjectID == f.ProjectID) &&
		(f.PaymentID == "" || v.PaymentID == f.PaymentID) &&
		(f.Status == "" || v.Status == f.Status) &&
		(f.Method == "" || v.Method == f.Method) &&
		(f.Since.IsZero() || !v.Updated.Before(f.Since)) &&
		(f.Until.IsZero() || v.Updated.Before(f.Until)) &&
		(!f.Open || !v.Final)
}

// newestUpdatedFirst orders payments for Payments: ties in descending
// project and payment id, as the local store's indexes read backwards.
func newestUpdatedFirst(a, b paymentView) int {
	if c := b.Updated.Compare(a.Updated); c != 0 {
		return c
	}
	if c := strings.Compare(b.ProjectID, a.ProjectID); c != 0 {
		return c
	}
	return strings.Compare(b.PaymentID, a.PaymentID)
}

// oldestSignedFirst orders payments for OpenPayments.
func oldestSignedFirst(a, b paymentView) int {
	if c := a.Signed.Compare(b.Signed); c != 0 {
		return c
	}
	if c := strings.Compare(a.ProjectID, b.ProjectID); c != 0 {
		return c
	}
	return strings.Compare(a.PaymentID, b.PaymentID)
}

// isOpenSince tells whether v is a candidate for OpenPayments(cut).
func (v *paymentView) isOpenSince(cut time.Time) bool {
	return !v.Final && !v.Signed.IsZero() && v.Signed.Before(cut)
}

// mergeNewest merges two newest-first lists into at most limit entries.
func mergeNewest(a, b []journalEvent, limit int) []journalEvent {
	out := make([]journalEvent, 0, min(limit, len(a)+len(b)))
	for len(out) < limit && (len(a) > 0 || len(b) > 0) {
		if len(b) == 0 || (len(a) > 0 && a[0].ID > b[0].ID) {
			out, a = append(out, a[0]), a[1:]
		} else {
			out, b = append(out, b[0]), b[1:]
		}
	}
	return out
}

// pruneLog counts pruned entries into the metric at once and into a log
// line at most once per pruneLogEvery.
type pruneLog struct {
	logger *zap.Logger

	mu      sync.Mutex
	pending [3]int64 // age, size, unverified
	last    time.Time
}

var pruneReasons = [3]string{pruneAge, pruneSize, pruneUnverified}

func (p *pruneLog) add(reason string, n int, now time.Time) {
	if n <= 0 {
		return
	}
	journalPrunedTotal.WithLabelValues(reason).Add(float64(n))
	p.mu.Lock()
	p.pending[slices.Index(pruneReasons[:], reason)] += int64(n)
	due := p.last.IsZero() || now.Sub(p.last) >= pruneLogEvery
	p.mu.Unlock()
	if due {
		p.flush(now)
	}
}

// flush logs what was pruned since the last line: at Info when only age
// did it, as expected, at Warn when a bound forced it.
func (p *pruneLog) flush(now time.Time) {
	p.mu.Lock()
	n := p.pending
	p.pending = [3]int64{}
	p.last = now
	p.mu.Unlock()
	if n == [3]int64{} || p.logger == nil {
		return
	}
	fields := []zap.Field{zap.Int64(pruneAge, n[0]), zap.Int64(pruneSize, n[1]), zap.Int64(pruneUnverified, n[2])}
	if n[1] > 0 || n[2] > 0 {
		p.logger.Warn("journal at its bound: pruned its oldest entries", fields...)
		return
	}
	p.logger.Info("journal pruned entries past their age", fields...)
}
