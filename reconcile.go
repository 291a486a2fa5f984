package ecommpay

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/canon"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/journal"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/reconcile"
	"github.com/caddyserver/caddy/v2"
)

// Reconciliation (internal/reconcile) asks ecommpay for the status of
// payments whose final callback is overdue, and hands a status the app has
// not had to the app through the callback route, as if it were a
// callback. Here: its config, its provisioning and its wiring into a
// callback handler.

// ReconcileConfig turns on reconciliation in callback mode.
type ReconcileConfig struct {
	// After is how long after the signing request a final status is
	// overdue. Default: by the payment's method, MBWay 4m, Alipay 30m,
	// WeChat 2h, others 30m. Never below 10s (100ms when status_url is
	// on this machine: see StatusURL).
	After caddy.Duration `json:"after,omitempty"`
	// Every is the wait between two status requests for one payment; it
	// doubles after each request, up to 1h. Default: 1m. Never below 10s
	// (100ms when status_url is on this machine).
	Every caddy.Duration `json:"every,omitempty"`
	// GiveUp is how long after the signing request reconciliation stops
	// asking; the payment is then marked unresolved, or abandoned if
	// ecommpay never knew it. Default: 24h.
	GiveUp caddy.Duration `json:"give_up,omitempty"`
	// StatusURL is ecommpay's status endpoint. Its answers are signed for
	// the app, so it must be ecommpay. Default:
	// https://api.ecommpay.com/v2/payment/status. http is allowed only on
	// a loopback address (the sandbox, a local stand-in); there the 10s
	// floor of after and every, ecommpay's rule for its own endpoint,
	// becomes 100ms.
	StatusURL string `json:"status_url,omitempty"`
}

// provisionReconcile checks the reconcile settings; startReconcile runs
// reconciliation once the journal is open.
func (h *Handler) provisionReconcile() error {
	c := h.Reconcile
	if c == nil {
		return nil
	}
	if h.Journal.Off {
		return errors.New("reconcile needs the journal: it tells which payments started and what the app was sent")
	}
	raw := c.StatusURL
	if raw == "" {
		raw = reconcile.DefaultStatusURL
	}
	u, err := parseBaseURL(raw)
	if err != nil {
		return fmt.Errorf("reconcile status_url: %w", err)
	}
	s, err := reconcile.Settings{After: time.Duration(c.After), Every: time.Duration(c.Every),
		GiveUp: time.Duration(c.GiveUp), StatusURL: u}.Check()
	if err != nil {
		return err
	}
	h.reconcileSettings = &s
	return nil
}

// reconcileConfig is what the handler gives its reconciler: its journal
// and store, its projects' signing keys, its callback route to deliver
// through, its limits, logger and metrics.
func (h *Handler) reconcileConfig(s reconcile.Settings) reconcile.Config {
	return reconcile.Config{
		Settings: s,
		Journal:  h.journal,
		Store:    h.store,
		Key: func(projectID string) *canon.Key {
			if p := h.lookupProject(projectID); p != nil {
				return p.keys[0]
			}
			return nil
		},
		Deliver: func(ctx context.Context, body []byte) (journal.Event, error) {
			d := &dispatched{kind: journal.KindStatus, body: body}
			err := h.dispatch(ctx, d)
			return d.ev, err
		},
		Limits:  h.limits,
		MaxBody: h.MaxBody,
		Logger:  h.logger.Named("reconcile"),
		Metrics: reconcileMetrics{},
	}
}

// startReconcile starts reconciliation, if it is on.
func (h *Handler) startReconcile() error {
	if h.reconcileSettings == nil {
		return nil
	}
	rc, err := reconcile.New(h.reconcileConfig(*h.reconcileSettings))
	if err != nil {
		return err
	}
	h.reconciler = rc
	rc.Start()
	return nil
}
