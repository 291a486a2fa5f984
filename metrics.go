package ecommpay

import (
	"errors"
	"time"

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
		Help: "Failed store operations, by operation (claim, commit, release).",
	}, []string{"op"})
	forwardSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "caddy", Subsystem: "ecommpay", Name: "forward_duration_seconds",
		Help:    "Time spent delivering a callback to the app, by project.",
		Buckets: prometheus.ExponentialBuckets(0.001, 2.5, 12),
	}, []string{"project"})
)

// collectors are every metric the module registers.
var collectors = []prometheus.Collector{callbacksTotal, signaturesTotal, signRequestsTotal, qrImagesTotal,
	storeErrorsTotal, forwardSeconds, journalPrunedTotal, statusRequestsTotal, reconciledTotal,
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

func (m *metrics) callback(project, result string) {
	callbacksTotal.WithLabelValues(project, result).Inc()
}

func (m *metrics) signRequest(mode, result string) {
	signRequestsTotal.WithLabelValues(mode, result).Inc()
	if result == "signed" {
		signaturesTotal.WithLabelValues(mode).Inc()
	}
}

func (m *metrics) resigned() { signaturesTotal.WithLabelValues("callback_resign").Inc() }

func (m *metrics) qrImage(outcome string) { qrImagesTotal.WithLabelValues(outcome).Inc() }

func (m *metrics) forwarded(project string, d time.Duration) {
	forwardSeconds.WithLabelValues(project).Observe(d.Seconds())
}

func (m *metrics) storeError(op string) { storeErrorsTotal.WithLabelValues(op).Inc() }
