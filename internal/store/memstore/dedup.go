package memstore

import (
	"context"
	mrand "math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/store"
	"go.uber.org/zap"
)

// defaultMaxKeys bounds the memory store when no bound is configured.
// That is a busy shop's callbacks over ecommpay's 11-day retry window, and
// about 110 MB of heap when full (measured: ~109 bytes per key).
const defaultMaxKeys = 1_000_000

const (
	memoryShards = 32
	// minSweepInserts keeps small shards from being scanned on every insert.
	minSweepInserts = 64
	// evictionLogEvery rate-limits the eviction warning.
	evictionLogEvery = time.Minute
)

// memEntry is one key's state. id is the owner's claim id while in flight
// and 0 once delivered; exp is in nanoseconds since the store's epoch.
type memEntry struct {
	exp int64
	id  uint64
}

// commitRec records one commit in the eviction queue. (h, exp) identifies
// the commit: a key can only be committed again after exp has passed.
type commitRec struct {
	h   store.KeyHash
	exp int64
}

type memShard struct {
	mu      sync.Mutex
	m       map[store.KeyHash]memEntry
	inserts int      // new entries since the last sweep
	_       [40]byte // pads the shard to a 64-byte cache line
}

// tokenOf formats a claim id; claimID reads it back.
func tokenOf(id uint64) string { return strconv.FormatUint(id, 16) }

func claimID(token string) (uint64, bool) {
	id, err := strconv.ParseUint(token, 16, 64)
	return id, err == nil && id != 0
}

// heldBy reports whether claim id still holds e: an unexpired claim, not
// a delivered key.
func (e memEntry) heldBy(id uint64, now int64) bool { return e.id == id && e.exp > now }

// Dedup is an exact, process-local store.Store: 32 mutex-guarded map
// shards, a global entry count and a FIFO of commits used to evict the
// oldest delivered keys when the bound is reached.
type Dedup struct {
	now    func() time.Time // replaced by tests
	epoch  time.Time
	logger *zap.Logger

	maxKeys atomic.Int64
	count   atomic.Int64  // entries in all shards, live or expired
	lastID  atomic.Uint64 // last claim id; 0 is never used
	shards  [memoryShards]memShard

	orderMu  sync.Mutex
	order    commitQueue
	evicted  int64 // evictions not yet logged
	lastWarn time.Time
}

// NewDedup returns an empty de-dup store holding at most maxKeys
// entries (defaultMaxKeys if maxKeys <= 0).
func NewDedup(maxKeys int, logger *zap.Logger) *Dedup {
	if logger == nil {
		logger = zap.NewNop()
	}
	s := &Dedup{now: time.Now, epoch: time.Now(), logger: logger}
	for i := range s.shards {
		s.shards[i].m = make(map[store.KeyHash]memEntry)
	}
	// A random start keeps another store's tokens from matching by accident.
	s.lastID.Store(mrand.Uint64())
	s.SetMaxKeys(maxKeys)
	return s
}

// clock returns nanoseconds since the epoch; with time.Now this uses the
// monotonic clock, so wall-clock jumps do not expire or revive keys.
func (s *Dedup) clock() int64 { return int64(s.now().Sub(s.epoch)) }

func (s *Dedup) shard(h store.KeyHash) *memShard { return &s.shards[h[0]%memoryShards] }

// MaxKeys is the bound in force.
func (s *Dedup) MaxKeys() int { return int(s.maxKeys.Load()) }

// SetMaxKeys changes the bound in place (defaultMaxKeys if n <= 0),
// evicting at once when the store is over it.
func (s *Dedup) SetMaxKeys(n int) {
	if n <= 0 {
		n = defaultMaxKeys
	}
	s.maxKeys.Store(int64(n))
	if s.count.Load() > int64(n) {
		s.evict()
	}
}

// Claim implements store.Store.
func (s *Dedup) Claim(_ context.Context, key string, lease time.Duration) (store.ClaimState, string, error) {
	if lease <= 0 {
		return store.InFlight, "", store.ErrBadDuration
	}
	h := store.HashKey(key)
	sh := s.shard(h)
	now := s.clock()

	sh.mu.Lock()
	e, found := sh.m[h]
	if found && e.exp > now {
		sh.mu.Unlock()
		if e.id == 0 {
			return store.Delivered, "", nil
		}
		return store.InFlight, "", nil
	}
	id := s.lastID.Add(1)
	if id == 0 { // 0 marks delivered entries
		id = s.lastID.Add(1)
	}
	sh.m[h] = memEntry{exp: now + int64(lease), id: id}
	token := tokenOf(id)
	if !found {
		s.count.Add(1)
		sh.inserts++
		if sh.inserts >= len(sh.m)/2+minSweepInserts {
			s.sweepLocked(sh, now)
		}
	}
	sh.mu.Unlock()

	if !found && s.count.Load() > s.maxKeys.Load() {
		s.evict()
	}
	return store.Claimed, token, nil
}

// Commit implements store.Store.
func (s *Dedup) Commit(_ context.Context, key, token string, ttl time.Duration) error {
	if ttl <= 0 {
		return store.ErrBadDuration
	}
	id, ok := claimID(token)
	if !ok {
		return store.ErrNotOwner
	}
	h := store.HashKey(key)
	sh := s.shard(h)
	now := s.clock()

	sh.mu.Lock()
	e, found := sh.m[h]
	if !found || !e.heldBy(id, now) {
		sh.mu.Unlock()
		return store.ErrNotOwner
	}
	exp := now + int64(ttl)
	sh.m[h] = memEntry{exp: exp}
	sh.mu.Unlock()

	s.orderMu.Lock()
	s.order.push(commitRec{h: h, exp: exp})
	s.trimLocked(now)
	s.orderMu.Unlock()
	return nil
}

// Release implements store.Store.
func (s *Dedup) Release(_ context.Context, key, token string) error {
	id, ok := claimID(token)
	if !ok {
		return store.ErrNotOwner
	}
	h := store.HashKey(key)
	sh := s.shard(h)
	now := s.clock()

	sh.mu.Lock()
	defer sh.mu.Unlock()
	e, found := sh.m[h]
	if !found || !e.heldBy(id, now) {
		return store.ErrNotOwner
	}
	delete(sh.m, h)
	s.count.Add(-1)
	return nil
}

// sweepLocked drops the shard's expired entries. Claim calls it after about
// len/2 inserts, so its cost is amortised to O(1) per insert. It is what
// frees claims that were never committed or released.
func (s *Dedup) sweepLocked(sh *memShard, now int64) {
	for h, e := range sh.m {
		if e.exp <= now {
			delete(sh.m, h)
			s.count.Add(-1)
		}
	}
	sh.inserts = 0
}

// trimLocked drops expired commits from the head of the queue, and their
// entries if still present, so that the queue does not outgrow the store.
// Each commit is popped once, so this is O(1) amortised per commit.
func (s *Dedup) trimLocked(now int64) {
	for s.order.n > 0 && s.order.front().exp <= now {
		s.popLocked(now)
	}
}

// popLocked removes the oldest commit and its entry, if the entry is still
// that delivery, and reports whether a live delivered key was dropped.
func (s *Dedup) popLocked(now int64) (evictedLive bool) {
	r := s.order.pop()

	sh := s.shard(r.h)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if e, ok := sh.m[r.h]; ok && e.id == 0 && e.exp == r.exp {
		delete(sh.m, r.h)
		s.count.Add(-1)
		return e.exp > now
	}
	return false
}

// evict drops the oldest delivered keys until the store is within its
// bound. In-flight keys are never evicted, so a store full of claims grows
// past the bound rather than refusing a Claim.
func (s *Dedup) evict() {
	var logN, bound int64
	s.orderMu.Lock()
	nowTime := s.now()
	now := int64(nowTime.Sub(s.epoch))
	for s.count.Load() > s.maxKeys.Load() && s.order.n > 0 {
		if s.popLocked(now) {
			s.evicted++
		}
	}
	if s.evicted > 0 && (s.lastWarn.IsZero() || nowTime.Sub(s.lastWarn) >= evictionLogEvery) {
		logN, bound = s.evicted, s.maxKeys.Load()
		s.evicted = 0
		s.lastWarn = nowTime
	}
	s.orderMu.Unlock()
	if logN > 0 {
		s.logEvictions(logN, bound)
	}
}

func (s *Dedup) logEvictions(n, bound int64) {
	s.logger.Warn("de-duplication memory store is full: evicted the oldest delivered keys before their TTL; "+
		"a callback redelivered for one of them will be forwarded again (raise max_keys or use redis)",
		zap.Int64("evicted", n), zap.Int64("max_keys", bound))
}

// Close reports evictions not yet logged; the maps are freed with the
// store.
func (s *Dedup) Close() error {
	s.orderMu.Lock()
	n := s.evicted
	s.evicted = 0
	s.orderMu.Unlock()
	if n > 0 {
		s.logEvictions(n, s.maxKeys.Load())
	}
	return nil
}

// commitQueue is a FIFO ring of commits. It doubles when full and halves
// when three quarters empty, so a steady stream never copies it.
type commitQueue struct {
	buf     []commitRec
	head, n int
}

func (q *commitQueue) push(r commitRec) {
	if q.n == len(q.buf) {
		q.resize(max(64, 2*len(q.buf)))
	}
	q.buf[(q.head+q.n)%len(q.buf)] = r
	q.n++
}

// front returns the oldest commit; the queue must not be empty.
func (q *commitQueue) front() commitRec { return q.buf[q.head] }

// pop removes and returns the oldest commit; the queue must not be empty.
func (q *commitQueue) pop() commitRec {
	r := q.buf[q.head]
	q.head = (q.head + 1) % len(q.buf)
	q.n--
	if len(q.buf) > 1024 && q.n < len(q.buf)/4 {
		q.resize(len(q.buf) / 2)
	}
	return r
}

func (q *commitQueue) resize(size int) {
	buf := make([]commitRec, size)
	k := copy(buf, q.buf[q.head:min(q.head+q.n, len(q.buf))])
	copy(buf[k:], q.buf[:q.n-k])
	q.buf, q.head = buf, 0
}

// SetClock replaces the clock of leases and TTLs (tests).
func (s *Dedup) SetClock(now func() time.Time) { s.now = now }

// Interface guards
var _ store.Store = (*Dedup)(nil)
