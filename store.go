package ecommpay

import (
	"cmp"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/journal"
	mrand "math/rand/v2"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
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

// DefaultMemoryMaxKeys bounds the memory store when no bound is configured.
// That is a busy shop's callbacks over ecommpay's 11-day retry window, and
// about 110 MB of heap when full (measured: ~109 bytes per key).
const DefaultMemoryMaxKeys = 1_000_000

const (
	memoryShards = 32
	// minSweepInserts keeps small shards from being scanned on every insert.
	minSweepInserts = 64
	// evictionLogEvery rate-limits the eviction warning.
	evictionLogEvery = time.Minute
)

var errBadDuration = errors.New("ecommpay: lease and ttl must be positive")

// keyHash is what the memory store keeps instead of the key string.
type keyHash [16]byte

func hashKey(key string) keyHash {
	// A buffer on the stack: the conversion alone would allocate for keys
	// longer than 32 bytes, as event keys are.
	var buf [128]byte
	sum := sha256.Sum256(append(buf[:0], key...))
	return keyHash(sum[:16])
}

// memEntry is one key's state. id is the owner's claim id while in flight
// and 0 once delivered; exp is in nanoseconds since the store's epoch.
type memEntry struct {
	exp int64
	id  uint64
}

// commitRec records one commit in the eviction queue. (h, exp) identifies
// the commit: a key can only be committed again after exp has passed.
type commitRec struct {
	h   keyHash
	exp int64
}

type memShard struct {
	mu      sync.Mutex
	m       map[keyHash]memEntry
	inserts int      // new entries since the last sweep
	_       [40]byte // pads the shard to a 64-byte cache line
}

// token formats a claim id.
func (sh *memShard) token(id uint64) string { return strconv.FormatUint(id, 16) }

// memoryStore is an exact, process-local Store: 32 mutex-guarded map
// shards, a global entry count and a FIFO of commits used to evict the
// oldest delivered keys when the bound is reached.
type memoryStore struct {
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

// newMemoryStore returns an empty memory store holding at most maxKeys
// entries (DefaultMemoryMaxKeys if maxKeys <= 0).
func newMemoryStore(maxKeys int, logger *zap.Logger) *memoryStore {
	if logger == nil {
		logger = zap.NewNop()
	}
	s := &memoryStore{now: time.Now, epoch: time.Now(), logger: logger}
	for i := range s.shards {
		s.shards[i].m = make(map[keyHash]memEntry)
	}
	// A random start keeps another store's tokens from matching by accident.
	s.lastID.Store(mrand.Uint64())
	s.setMaxKeys(maxKeys)
	return s
}

// clock returns nanoseconds since the epoch; with time.Now this uses the
// monotonic clock, so wall-clock jumps do not expire or revive keys.
func (s *memoryStore) clock() int64 { return int64(s.now().Sub(s.epoch)) }

func (s *memoryStore) shard(h keyHash) *memShard { return &s.shards[h[0]%memoryShards] }

func (s *memoryStore) setMaxKeys(n int) {
	if n <= 0 {
		n = DefaultMemoryMaxKeys
	}
	s.maxKeys.Store(int64(n))
	if s.count.Load() > int64(n) {
		s.evict()
	}
}

// Claim implements Store.
func (s *memoryStore) Claim(_ context.Context, key string, lease time.Duration) (ClaimState, string, error) {
	if lease <= 0 {
		return InFlight, "", errBadDuration
	}
	h := hashKey(key)
	sh := s.shard(h)
	now := s.clock()

	sh.mu.Lock()
	e, found := sh.m[h]
	if found && e.exp > now {
		sh.mu.Unlock()
		if e.id == 0 {
			return Delivered, "", nil
		}
		return InFlight, "", nil
	}
	id := s.lastID.Add(1)
	if id == 0 { // 0 marks delivered entries
		id = s.lastID.Add(1)
	}
	sh.m[h] = memEntry{exp: now + int64(lease), id: id}
	token := sh.token(id)
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
	return Claimed, token, nil
}

// Commit implements Store.
func (s *memoryStore) Commit(_ context.Context, key, token string, ttl time.Duration) error {
	if ttl <= 0 {
		return errBadDuration
	}
	id, err := strconv.ParseUint(token, 16, 64)
	if err != nil || id == 0 {
		return ErrNotOwner
	}
	h := hashKey(key)
	sh := s.shard(h)
	now := s.clock()

	sh.mu.Lock()
	e, found := sh.m[h]
	if !found || e.id != id || e.exp <= now {
		sh.mu.Unlock()
		return ErrNotOwner
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

// Release implements Store.
func (s *memoryStore) Release(_ context.Context, key, token string) error {
	id, err := strconv.ParseUint(token, 16, 64)
	if err != nil || id == 0 {
		return ErrNotOwner
	}
	h := hashKey(key)
	sh := s.shard(h)
	now := s.clock()

	sh.mu.Lock()
	defer sh.mu.Unlock()
	e, found := sh.m[h]
	if !found || e.id != id || e.exp <= now {
		return ErrNotOwner
	}
	delete(sh.m, h)
	s.count.Add(-1)
	return nil
}

// sweepLocked drops the shard's expired entries. Claim calls it after about
// len/2 inserts, so its cost is amortised to O(1) per insert. It is what
// frees claims that were never committed or released.
func (s *memoryStore) sweepLocked(sh *memShard, now int64) {
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
func (s *memoryStore) trimLocked(now int64) {
	for s.order.n > 0 && s.order.front().exp <= now {
		s.popLocked(now)
	}
}

// popLocked removes the oldest commit and its entry, if the entry is still
// that delivery, and reports whether a live delivered key was dropped.
func (s *memoryStore) popLocked(now int64) (evictedLive bool) {
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
func (s *memoryStore) evict() {
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

func (s *memoryStore) logEvictions(n, bound int64) {
	s.logger.Warn("de-duplication memory store is full: evicted the oldest delivered keys before their TTL; "+
		"a callback redelivered for one of them will be forwarded again (raise max_keys or use redis)",
		zap.Int64("evicted", n), zap.Int64("max_keys", bound))
}

// Destruct implements caddy.Destructor. It reports evictions not yet logged;
// the maps are freed with the store.
func (s *memoryStore) Destruct() error {
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

// storePool shares stores across config reloads: the new config acquires
// the store before the old one releases it, so state survives.
var storePool = caddy.NewUsagePool()

// backendOptions choose and bound a backend.
type backendOptions struct {
	Kind     string // "local" (default), "memory", "redis"
	Path     string // local: the database file ("" = default in caddy.AppDataDir())
	RedisURL string // redis
	MaxKeys  int    // memory: de-dup bound; local: recent deliveries kept in memory
	Journal  journal.Options
	// JournalSet says that Journal was configured, not left to defaults.
	// Handlers of one config that share a store must not set different
	// journal settings; one without settings takes those another set.
	JournalSet bool
	// Config identifies the config being loaded (nil: each acquire is a
	// config of its own); Owner names the handler in errors.
	Config any
	Owner  string
}

// journalChoices records, per store, the journal settings the config
// loaded last chose and which handler chose them.
var journalChoices = struct {
	sync.Mutex
	m map[string]journalChoice
}{m: map[string]journalChoice{}}

type journalChoice struct {
	config any
	opts   journal.Options
	set    bool
	owner  string
}

// chooseJournal returns the journal settings for store key in opts's
// config, or an error when two of its handlers set different ones.
func chooseJournal(key string, opts backendOptions) (journal.Options, error) {
	journalChoices.Lock()
	defer journalChoices.Unlock()
	c, ok := journalChoices.m[key]
	if ok && opts.Config != nil && c.config == opts.Config {
		switch {
		case !opts.JournalSet:
			return c.opts, nil
		case c.set && c.opts.WithDefaults() != opts.Journal.WithDefaults():
			return journal.Options{}, fmt.Errorf("handlers that share a store disagree on its journal: %s sets %s, %s sets %s; "+
				"give them the same journal block, or put it on one of them only",
				c.owner, describeJournal(c.opts), opts.Owner, describeJournal(opts.Journal))
		case c.set:
			return c.opts, nil
		}
	}
	journalChoices.m[key] = journalChoice{config: opts.Config, opts: opts.Journal, set: opts.JournalSet, owner: opts.Owner}
	return opts.Journal, nil
}

// describeJournal writes o as a journal block would.
func describeJournal(o journal.Options) string {
	o = o.WithDefaults()
	return fmt.Sprintf("journal { max_age %s max_size %d%s }", o.MaxAge, o.MaxSize,
		map[bool]string{true: " no_bodies"}[o.NoBodies])
}

// acquireBackend returns the process-wide backend for opts and a func that
// drops this reference; the last release destructs it, which for the local
// backend writes what is queued and closes the file. Handlers with the
// same kind (and file or URL) share one backend, across config reloads too;
// a later acquire's bounds are applied to it in place.
func acquireBackend(opts backendOptions, logger *zap.Logger) (backend, func() error, error) {
	if logger == nil {
		logger = zap.NewNop()
	}
	var key string
	var construct caddy.Constructor
	switch opts.Kind {
	case "", "local":
		path := opts.Path
		if path == "" {
			path = defaultLocalPath()
		}
		abs, err := filepath.Abs(path)
		if err != nil {
			return nil, nil, fmt.Errorf("ecommpay: local store path %s: %w", path, err)
		}
		key = "backend|local|" + abs
		construct = func() (caddy.Destructor, error) {
			b, err := openLocalBackend(abs, opts.MaxKeys, opts.Journal, logger)
			if err != nil {
				return nil, err // not a typed nil in the interface
			}
			// Once per process and file: where the data lives, for backups.
			logger.Info("local store opened", zap.String("path", abs))
			return b, nil
		}
	case "memory":
		key = "backend|memory"
		construct = func() (caddy.Destructor, error) {
			return newMemoryBackend(opts.MaxKeys, opts.Journal, logger), nil
		}
	case "redis":
		key = "backend|redis|" + opts.RedisURL
		construct = func() (caddy.Destructor, error) {
			b, err := newRedisBackendPrefix(opts.RedisURL, DefaultRedisPrefix, DefaultRedisJournalPrefix, opts.Journal, logger)
			if err != nil {
				return nil, err
			}
			return b, nil
		}
	default:
		return nil, nil, fmt.Errorf("ecommpay: unknown store %q (want local, memory or redis)", opts.Kind)
	}

	chosen, err := chooseJournal(key, opts)
	if err != nil {
		return nil, nil, err
	}
	opts.Journal = chosen
	v, loaded, err := storePool.LoadOrNew(key, construct)
	if err != nil {
		return nil, nil, err
	}
	var once sync.Once
	release := func() error {
		var err error
		once.Do(func() { _, err = storePool.Delete(key) })
		return err
	}
	if loaded {
		switch b := v.(type) {
		case *memoryBackend:
			if want := cmp.Or(int64(max(opts.MaxKeys, 0)), DefaultMemoryMaxKeys); b.maxKeys.Load() != want {
				logger.Info("changing the shared de-duplication memory store's bound in place",
					zap.Int64("old_max_keys", b.maxKeys.Load()), zap.Int64("max_keys", want))
				b.setMaxKeys(opts.MaxKeys)
			}
			b.memoryJournal.setOptions(opts.Journal)
		case *localBackend:
			b.mem.setMaxKeys(cmp.Or(opts.MaxKeys, localMemoryKeys))
			b.setOptions(opts.Journal)
		case *redisBackend:
			b.setOptions(opts.Journal)
		}
	}
	return v.(backend), release, nil
}

// destructible makes b poolable, with a no-op Destruct if it has none.
func destructible(b backend) caddy.Destructor {
	if d, ok := b.(caddy.Destructor); ok {
		return d
	}
	return struct {
		backend
		caddy.Destructor
	}{b, noDestruct{}}
}

type noDestruct struct{}

func (noDestruct) Destruct() error { return nil }

// Interface guards
var (
	_ Store            = (*memoryStore)(nil)
	_ caddy.Destructor = (*memoryStore)(nil)
)
