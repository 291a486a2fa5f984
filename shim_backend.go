package ecommpay

import (
	"context"
	"time"

	"go.uber.org/zap"
)

// Temporary until the backends land.
type backendOptions struct {
	Kind     string
	Path     string
	RedisURL string
	MaxKeys  int
	Journal  journalOptions
}

type shimBackend struct{ Store }

func (shimBackend) Record(context.Context, journalEvent) error { return nil }
func (shimBackend) Events(context.Context, eventFilter) ([]journalEvent, error) {
	return nil, nil
}
func (shimBackend) Payments(context.Context, paymentFilter) ([]paymentView, error) {
	return nil, nil
}
func (shimBackend) Timeline(context.Context, string, string) (timeline, error) {
	return timeline{}, errNotFound
}
func (shimBackend) OpenPayments(context.Context, time.Time, int) ([]paymentView, error) {
	return nil, nil
}
func (shimBackend) Body(context.Context, string) ([]byte, error) { return nil, errNotFound }

func acquireBackend(o backendOptions, logger *zap.Logger) (backend, func() error, error) {
	kind := o.Kind
	if kind == "local" {
		kind = "memory"
	}
	s, rel, err := acquireStore(kind, o.RedisURL, o.MaxKeys, logger)
	if err != nil {
		return nil, nil, err
	}
	return shimBackend{s}, rel, nil
}
