// Package store owns the callback de-duplication contract (Store and
// ClaimState) and what a backend of de-dup state and journal together
// offers the handler (Backend), with the hooks through which a backend
// reports to the caller's logs and metrics (Hooks). Each backend is a
// package below it: memstore (in the process), localstore (a SQLite file,
// over internal/sqlitestore) and redisstore (shared by a cluster);
// storetest is the behaviour suite that every backend passes.
package store

import (
	"context"
	"crypto/sha256"
	"errors"
	"strconv"
	"time"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/journal"
	"go.uber.org/zap"
)

// ClaimState is what Claim found.
type ClaimState int

const (
	// Claimed means the caller now owns the key (in flight) and must Commit
	// or Release it.
	Claimed ClaimState = iota
	// InFlight means another delivery holds an unexpired claim.
	InFlight
	// Delivered means the key was committed earlier and has not expired.
	Delivered
)

// String returns the state as used in logs and metrics.
func (s ClaimState) String() string {
	switch s {
	case Claimed:
		return "claimed"
	case InFlight:
		return "in_flight"
	case Delivered:
		return "delivered"
	}
	return "ClaimState(" + strconv.Itoa(int(s)) + ")"
}

// ErrNotOwner is returned by Commit and Release when the token does not hold
// the key's claim: it is wrong, was released, committed or expired, or the
// key has been claimed again by someone else.
var ErrNotOwner = errors.New("ecommpay: de-duplication key is not claimed by this token")

// ErrBadDuration is returned for a lease or ttl that is not positive.
var ErrBadDuration = errors.New("ecommpay: lease and ttl must be positive")

// Store is a de-duplication set with an in-flight state, so that a callback
// is marked delivered only after the app has acknowledged it.
//
// On error, Claim returns InFlight (never Claimed) and an empty token.
type Store interface {
	// Claim atomically takes key for lease unless it is in flight or
	// delivered. Only when it returns Claimed is the owner token non-empty.
	Claim(ctx context.Context, key string, lease time.Duration) (ClaimState, string, error)
	// Commit marks the claimed key delivered for ttl. Only the claim's
	// owner may commit, and only before its lease expires.
	Commit(ctx context.Context, key, token string, ttl time.Duration) error
	// Release frees the claimed key so that a retry gets through. Only the
	// claim's owner may release it.
	Release(ctx context.Context, key, token string) error
}

// Backend is one store of de-dup state and journal together.
type Backend interface {
	Store
	journal.Journal
	// Configure applies a later config's bounds in place: maxKeys bounds
	// the de-dup keys kept in memory (0: the backend's default; Redis
	// keeps none), o the journal.
	Configure(maxKeys int, o journal.Options)
	// Health reports whether the backend keeps what it is given; when it
	// does not, why says what is lost.
	Health() (ok bool, why string)
	// Close writes what is queued and frees the backend.
	Close() error
}

// Hooks connect a backend to the caller's logs and metrics. Nil fields are
// skipped.
type Hooks struct {
	Logger *zap.Logger
	// Pruned is told of journal entries pruned by a bound.
	Pruned journal.PruneHook
	// Failed is told of a failed operation on the store ("read", "write").
	Failed func(op string)
	// Healthy is told whether the store keeps what it is given, each time
	// that may have changed.
	Healthy func(ok bool)
}

// Log returns the hooks' logger, or one that discards.
func (h Hooks) Log() *zap.Logger {
	if h.Logger == nil {
		return zap.NewNop()
	}
	return h.Logger
}

// PruneLog returns a journal pruning report to the hooks.
func (h Hooks) PruneLog() *journal.PruneLog { return journal.NewPruneLog(h.Logger, h.Pruned) }

// Fail tells Failed of op.
func (h Hooks) Fail(op string) {
	if h.Failed != nil {
		h.Failed(op)
	}
}

// SetHealthy tells Healthy of ok.
func (h Hooks) SetHealthy(ok bool) {
	if h.Healthy != nil {
		h.Healthy(ok)
	}
}

// KeyHash is what the memory and local stores keep instead of a key.
type KeyHash [16]byte

// HashKey hashes a de-dup key.
func HashKey(key string) KeyHash {
	// A buffer on the stack: the conversion alone would allocate for keys
	// longer than 32 bytes, as event keys are.
	var buf [128]byte
	sum := sha256.Sum256(append(buf[:0], key...))
	return KeyHash(sum[:16])
}
