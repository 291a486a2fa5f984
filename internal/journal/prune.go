package journal

import (
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"
)

// Prune reasons, the values of the journal_pruned_total metric's label.
const (
	PruneAge        = "age"
	PruneSize       = "size"
	PruneUnverified = "unverified"
)

// pruneLogEvery rate-limits the pruning log line: a journal at its bound
// prunes on every write.
const pruneLogEvery = time.Minute

// PruneHook is told at once of n entries pruned for reason (one of the
// Prune constants); the caller counts them into its metric.
type PruneHook func(reason string, n int)

// PruneLog reports pruned entries to its hook at once and in a log line
// at most once per pruneLogEvery.
type PruneLog struct {
	logger *zap.Logger
	hook   PruneHook

	mu      sync.Mutex
	pending [3]int64 // age, size, unverified
	last    time.Time
}

var pruneReasons = [3]string{PruneAge, PruneSize, PruneUnverified}

// NewPruneLog returns a PruneLog that logs to logger and tells hook; either
// may be nil.
func NewPruneLog(logger *zap.Logger, hook PruneHook) *PruneLog {
	return &PruneLog{logger: logger, hook: hook}
}

// Add reports n entries pruned for reason at now.
func (p *PruneLog) Add(reason string, n int, now time.Time) {
	if n <= 0 {
		return
	}
	if p.hook != nil {
		p.hook(reason, n)
	}
	p.mu.Lock()
	p.pending[slices.Index(pruneReasons[:], reason)] += int64(n)
	due := p.last.IsZero() || now.Sub(p.last) >= pruneLogEvery
	p.mu.Unlock()
	if due {
		p.Flush(now)
	}
}

// Flush logs what was pruned since the last line: at Info when only age
// did it, as expected, at Warn when a bound forced it. Backends call it
// when they close.
func (p *PruneLog) Flush(now time.Time) {
	p.mu.Lock()
	n := p.pending
	p.pending = [3]int64{}
	p.last = now
	p.mu.Unlock()
	if n == [3]int64{} || p.logger == nil {
		return
	}
	fields := []zap.Field{zap.Int64(PruneAge, n[0]), zap.Int64(PruneSize, n[1]), zap.Int64(PruneUnverified, n[2])}
	if n[1] > 0 || n[2] > 0 {
		p.logger.Warn("journal at its bound: pruned its oldest entries", fields...)
		return
	}
	p.logger.Info("journal pruned entries past their age", fields...)
}
