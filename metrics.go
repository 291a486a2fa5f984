package ecommpay

import (
	"errors"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/journal"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/reconcile"
	"github.com/prometheus/client_golang/prometheus"
)

// The collectors live at package level and are registered into each new
// config's registry, so counts carry on across reloads.
var (
	callbacksTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "ecommpay", Name: "callbacks_total",
		Help: "Callbacks received, by project and result.",
	}, []string{"project", "result"})
	signaturesTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "ecommpay", Name: "signatures_total",
		Help: "Signatures made, by mode (payment_page, gate, callback_resign).",
	}, []string{"mode"})
	signRequestsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "ecommpay", Name: "sign_requests_total",
		Help: "Requests to the signing modes, by mode and result.",
	}, []string{"mode", "result"})
	qrImagesTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "ecommpay", Name: "qr_images_total",
		Help: "QR images served or embedded, by cache outcome (hit, miss, error).",
	}, []string{"cache"})
	storeErrorsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "ecommpay", Name: "store_errors_total",
		Help: "Failed store operations, by operation (claim, commit, release; write and read for the local file).",
	}, []string{"op"})
	storeHealthy = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "caddy", Subsystem: "ecommpay", Name: "store_healthy",
		Help: "1 while the store has its file as it was and its writes succeed, else 0, by store (local).",
	}, []string{"store"})
	journalPrunedTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "ecommpay", Name: "journal_pruned_total",
		Help: "Journal entries pruned, by reason (age, size, unverified).",
	}, []string{"reason"})
	forwardSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "caddy", Subsystem: "ecommpay", Name: "forward_duration_seconds",
		Help:    "Time spent delivering a callback to the app, by project.",
		Buckets: prometheus.ExponentialBuckets(0.001, 2.5, 12),
	}, []string{"project"})
)

// Reconciliation's counters.
var (
	statusRequestsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "ecommpay", Name: "reconcile_requests_total",
		Help: "Status requests to ecommpay by reconciliation, by outcome (found, not_found, mismatch, error).",
	}, []string{"outcome"})
	reconciledTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "ecommpay", Name: "reconcile_delivered_total",
		Help: "Payment statuses reconciliation delivered to the app, by whether the status was final.",
	}, []string{"final"})
	unresolvedTotal = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "ecommpay", Name: "reconcile_unresolved_total",
		Help: "Payments reconciliation gave up on without a final status.",
	})
	// Abandoned payments are counted apart: a customer who never opened
	// the Payment Page is no fault.
	abandonedTotal = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "ecommpay", Name: "reconcile_abandoned_total",
		Help: "Payments ecommpay never knew of until give_up: Payment Pages never opened.",
	})
)

// reconcileMetrics are the hooks reconciliation counts through.
type reconcileMetrics struct{}

func (reconcileMetrics) Asked(result string) { statusRequestsTotal.WithLabelValues(result).Inc() }
func (reconcileMetrics) Delivered(final bool) {
	reconciledTotal.WithLabelValues(strconv.FormatBool(final)).Inc()
}
func (reconcileMetrics) GaveUp(result string) {
	if result == reconcile.ResultAbandoned {
		abandonedTotal.Inc()
	} else {
		unresolvedTotal.Inc()
	}
}

// collectors are every metric the module registers.
var collectors = []prometheus.Collector{callbacksTotal, signaturesTotal, signRequestsTotal, qrImagesTotal,
	storeErrorsTotal, storeHealthy, forwardSeconds, journalPrunedTotal, statusRequestsTotal, reconciledTotal,
	unresolvedTotal, abandonedTotal}

// metrics is a handler's handle on the package collectors, obtained by
// registering them into the config's registry.
type metrics struct{}

func registerMetrics(reg *prometheus.Registry) (*metrics, error) {
	if reg == nil {
		return &metrics{}, nil
	}
	for _, c := range collectors {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				return nil, err
			}
		}
	}
	return &metrics{}, nil
}

// callback counts a callback's outcome. p is the project named project,
// if it is configured: its series are looked up once.
func (m *metrics) callback(p *project, project, result string) {
	i := callbackResultIndex(result)
	if p == nil || p.id != project || i < 0 {
		// Strangers choose the ids they send: one series for all of them.
		callbacksTotal.WithLabelValues("unknown", result).Inc()
		return
	}
	c := p.series.callbacks[i].Load()
	if c == nil {
		c = &counterRef{callbacksTotal.WithLabelValues(project, result)}
		p.series.callbacks[i].Store(c)
	}
	c.Inc()
}

func (m *metrics) signRequest(mode, result string) {
	if result == "signed" {
		if c := signedSeries[mode]; c != nil {
			c.requests.Inc()
			c.signatures.Inc()
			return
		}
		signaturesTotal.WithLabelValues(mode).Inc()
	}
	signRequestsTotal.WithLabelValues(mode, result).Inc()
}

// signedSeries are the series every signed request counts in, by mode,
// looked up once: the vectors are never reset, so the series stay theirs.
var signedSeries = map[string]*signedCounters{
	journal.KindPaymentPage: newSignedCounters(journal.KindPaymentPage),
	journal.KindGate:        newSignedCounters(journal.KindGate),
}

type signedCounters struct{ requests, signatures prometheus.Counter }

func newSignedCounters(mode string) *signedCounters {
	return &signedCounters{signRequestsTotal.WithLabelValues(mode, "signed"), signaturesTotal.WithLabelValues(mode)}
}

func (m *metrics) resigned() { signaturesTotal.WithLabelValues("callback_resign").Inc() }

func (m *metrics) qrImage(outcome string) { qrImagesTotal.WithLabelValues(outcome).Inc() }

// forwarded observes a delivery's duration; p is as for callback.
func (m *metrics) forwarded(p *project, project string, d time.Duration) {
	if p == nil || p.id != project {
		forwardSeconds.WithLabelValues(project).Observe(d.Seconds())
		return
	}
	o := p.series.forward.Load()
	if o == nil {
		o = &observerRef{forwardSeconds.WithLabelValues(project)}
		p.series.forward.Store(o)
	}
	o.Observe(d.Seconds())
}

// projectSeries are a project's callback series, each looked up on first
// use: a label lookup hashes and checks the values on every call. The
// collectors outlive reloads, so what is kept here stays theirs.
type projectSeries struct {
	forward   atomic.Pointer[observerRef]
	callbacks [len(callbackResults)]atomic.Pointer[counterRef]
}

type counterRef struct{ prometheus.Counter }
type observerRef struct{ prometheus.Observer }

// callbackResults are the results of callbacks_total.
var callbackResults = [...]string{"forwarded", "duplicate", "in_flight", "invalid_signature", "not_a_callback", "malformed",
	"unknown_project", "too_large", "too_slow", "busy", "forbidden_source", "app_error", "store_error"}

func callbackResultIndex(result string) int {
	for i, r := range callbackResults {
		if r == result {
			return i
		}
	}
	return -1
}

func (m *metrics) storeError(op string) { storeErrorsTotal.WithLabelValues(op).Inc() }
