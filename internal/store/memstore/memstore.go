// Package memstore keeps de-dup state and journal in the process, for
// tests and throwaway setups: a restart forgets both. Its Dedup is also the
// local backend's set of claims and recent deliveries, and its Journal
// the local backend's journal when no file can be used.
package memstore

import (
	"time"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/journal"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/store"
	"go.uber.org/zap"
)

// Backend is the memory backend: a Dedup and a Journal.
type Backend struct {
	*Dedup
	*Journal
}

// New returns an empty memory backend: maxKeys bounds the de-dup keys
// (defaultMaxKeys if <= 0), opts the journal.
func New(maxKeys int, opts journal.Options, h store.Hooks) *Backend {
	return &Backend{NewDedup(maxKeys, h.Log()), NewJournal(opts, h)}
}

// Configure implements store.Backend.
func (b *Backend) Configure(maxKeys int, opts journal.Options) {
	want := maxKeys
	if want <= 0 {
		want = defaultMaxKeys
	}
	if want != b.MaxKeys() {
		b.logger.Info("changing the shared de-duplication memory store's bound in place",
			zap.Int("old_max_keys", b.MaxKeys()), zap.Int("max_keys", want))
		b.SetMaxKeys(want)
	}
	b.SetOptions(opts)
}

// Health implements store.Backend: memory keeps what it is given.
func (b *Backend) Health() (bool, string) { return true, "" }

// Close implements store.Backend.
func (b *Backend) Close() error {
	b.prune.Flush(time.Now())
	return b.Dedup.Close()
}

// Interface guards
var _ store.Backend = (*Backend)(nil)
