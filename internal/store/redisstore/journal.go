package redisstore

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/journal"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/store"
	"github.com/redis/go-redis/v9"
)

// defaultJournalPrefix is prepended to every journal key in Redis.
const defaultJournalPrefix = "ecommpay:journal:"

// The Redis journal. Keys, after the prefix:
//
//	e:<id>              an entry, JSON; expires MaxAge after its time (+ grace)
//	ev                  IDs of all genuine entries: a sorted set, all scores 0,
//	                    so that it sorts by ID, which is time order
//	ev:p:<project>      the same for one project, one result (ev:r:),
//	ev:r:<result>       one kind (ev:k:) and one event key (ev:x:, which
//	ev:k:<kind>         expires with its newest entry)
//	ev:x:<event key>
//	ix                  the names of the ev:p:, ev:r: and ev:k: sets
//	uv                  unverified callbacks, "<id> <JSON>" each, sorted by ID,
//	                    capped at MaxUnverified
//	{<proj>:<pay>}:v    a payment's view (hash); the hash tag puts it in
//	{<proj>:<pay>}:ev   one slot with its entry IDs, so one script updates
//	                    both; they expire with the payment's newest entry.
//	                    %, {, } and : in the IDs are %-escaped
//	pay, pay:p:<proj>   payments ("<proj>:<pay>") scored by Updated in µs
//	open                payments signed and not final, scored by Signed in µs
//	projects            the projects seen, to age out their pay:p: sets
//	b:<event key>       a body (hash: d the bytes, last the newest entry that
//	                    refers to it); expires with that entry
//	bytes               the approximate size of entries, payments and bodies
//	prune               the lock of the node that prunes
//
// Only the payment script and the body scripts touch several fields or
// keys, and each touches keys of one slot, so Redis Cluster works. The
// other writes of a Record go in one pipeline and are not atomic together:
// readers skip index members whose entry is gone, and pruning clears them.
//
// Size is an approximate byte count of Redis memory: each genuine entry
// adds its JSON length plus redisEntryOverhead, each payment
// redisPaymentOverhead, each stored body its length plus its key plus
// redisBodyOverhead. Over MaxSize, the oldest genuine entries are
// pruned until it is below nine tenths of it. Unverified entries are
// bounded by MaxUnverified alone.

// Overheads beyond the JSON and body bytes, measured with used_memory on
// Redis 7.0: an entry's keys and index members, a payment's view, set and
// index members, a body's key.
const (
	redisEntryOverhead   = 1200
	redisPaymentOverhead = 500
	redisBodyOverhead    = 350
	// redisGrace keeps keys past MaxAge, so that the pruner (not Redis)
	// removes them and can account for their bytes. Reads apply MaxAge
	// exactly.
	redisGrace = time.Hour
	// redisPruneEvery is how often a node prunes by age and size.
	redisPruneEvery = time.Minute
	redisPruneBatch = 256
	redisScanPage   = 256
)

// Scripts. extend sets a key's expiry to at (ms) unless it already ends
// later; PEXPIREAT GT would need Redis 7.
const redisExtend = `
local function extend(k, at)
	local ttl = redis.call('PTTL', k)
	local t = redis.call('TIME')
	if ttl < 0 or t[1] * 1000 + math.floor(t[2] / 1000) + ttl < at then
		redis.call('PEXPIREAT', k, at)
	end
end
`

var (
	// redisPaymentApply is journal.PaymentView.Apply on the view hash, with the
	// entry's ID added to the payment's set. Times are 16 hex digits of
	// Unix nanoseconds, which compare as strings. It returns the view's
	// signed time ("" if never), final flag and number of entries.
	redisPaymentApply = redis.NewScript(redisExtend + `
local v, ev = KEYS[1], KEYS[2]
local id, t, kind, result = ARGV[1], ARGV[2], ARGV[3], ARGV[6]
local at = tonumber(ARGV[12])
redis.call('ZADD', ev, 0, id)
if redis.call('HSETNX', v, 'started', t) == 1 then
	redis.call('HSET', v, 'project', ARGV[4], 'payment', ARGV[5], 'updated', t)
else
	if t < redis.call('HGET', v, 'started') then redis.call('HSET', v, 'started', t) end
	if t > redis.call('HGET', v, 'updated') then redis.call('HSET', v, 'updated', t) end
end
redis.call('HINCRBY', v, 'events', 1)
if result == 'app_error' then redis.call('HINCRBY', v, 'app_errors', 1) end
local signing = kind == 'payment_page' or kind == 'gate'
if signing then
	local s = redis.call('HGET', v, 'signed')
	if not s or t < s then redis.call('HSET', v, 'signed', t) end
	redis.call('HSET', v, 'mode', kind)
end
for i, f in ipairs({'amount', 'currency', 'method'}) do
	local src = ARGV[6 + i]
	if src ~= '' and (signing or redis.call('HEXISTS', v, f) == 0) then redis.call('HSET', v, f, src) end
end
if kind == 'callback' then redis.call('HINCRBY', v, 'callbacks', 1) end
if (kind == 'callback' or kind == 'status') and ARGV[10] ~= '' then
	redis.call('HSET', v, 'status', ARGV[10], 'final', ARGV[11])
end
extend(v, at)
extend(ev, at)
return {redis.call('HGET', v, 'signed') or '', redis.call('HGET', v, 'final') or '0', redis.call('HGET', v, 'events')}`)

	// redisPaymentDrop removes a pruned entry from its payment, and the
	// payment with its last entry. It returns 1 when the payment went.
	redisPaymentDrop = redis.NewScript(`
redis.call('ZREM', KEYS[2], ARGV[1])
if redis.call('ZCARD', KEYS[2]) == 0 then
	redis.call('DEL', KEYS[1])
	return 1
end
return 0`)

	// redisBodyRef stores a body unless its event key has one (when
	// ARGV[4] is 1) and records entry ARGV[2] as referring to it. It
	// returns 1 when it stored the body.
	redisBodyRef = redis.NewScript(redisExtend + `
local stored = 0
if ARGV[4] == '1' and redis.call('HSETNX', KEYS[1], 'd', ARGV[1]) == 1 then stored = 1 end
if redis.call('HEXISTS', KEYS[1], 'd') == 1 then
	local last = redis.call('HGET', KEYS[1], 'last')
	if not last or last < ARGV[2] then redis.call('HSET', KEYS[1], 'last', ARGV[2]) end
	extend(KEYS[1], tonumber(ARGV[3]))
end
return stored`)

	// redisBodyDrop deletes a body when the pruned entry ARGV[1] is the
	// newest that refers to it, and returns its length.
	redisBodyDrop = redis.NewScript(`
local last = redis.call('HGET', KEYS[1], 'last')
if last and last <= ARGV[1] then
	local n = redis.call('HSTRLEN', KEYS[1], 'd')
	redis.call('DEL', KEYS[1])
	return n
end
return 0`)

	// redisUnlock deletes the prune lock if it is still ours.
	redisUnlock = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0`)

	// redisKeyEscaper keeps braces out of hash tags and colons out of the
	// project/payment pair.
	redisKeyEscaper = strings.NewReplacer("%", "%25", "{", "%7B", "}", "%7D", ":", "%3A")
)

// Backend is the Redis de-dup store and journal, shared by a cluster of
// Caddy instances.
type Backend struct {
	*Dedup
	jp    string // journal key prefix
	opts  atomic.Pointer[journal.Options]
	prune *journal.PruneLog

	pruneNow chan struct{}
	stop     chan struct{}
	done     sync.WaitGroup
}

// New returns the Redis backend for redisURL (see parseRedisURL) whose
// de-dup keys start with storePrefix and journal keys with journalPrefix
// (defaultDedupPrefix and defaultJournalPrefix if empty). Like NewDedup,
// it does not connect; it starts the pruning goroutine that Close stops.
func New(redisURL, storePrefix, journalPrefix string, jo journal.Options, hooks store.Hooks) (*Backend, error) {
	s, err := NewDedup(redisURL, storePrefix)
	if err != nil {
		return nil, err
	}
	if journalPrefix == "" {
		journalPrefix = defaultJournalPrefix
	}
	b := &Backend{
		Dedup:    s,
		jp:       journalPrefix,
		pruneNow: make(chan struct{}, 1),
		stop:     make(chan struct{}),
	}
	b.prune = hooks.PruneLog()
	b.setOptions(jo)
	b.done.Add(1)
	go b.pruneLoop()
	return b, nil
}

// Configure implements store.Backend: Redis keeps no de-dup keys in
// memory; the next prune applies the journal's bounds.
func (b *Backend) Configure(_ int, jo journal.Options) { b.setOptions(jo) }

// Options returns the journal's bounds in force.
func (b *Backend) Options() journal.Options { return *b.opts.Load() }

// Health implements store.Backend: a Redis that is down fails each call
// instead.
func (b *Backend) Health() (bool, string) { return true, "" }

func (b *Backend) setOptions(jo journal.Options) {
	jo = jo.WithDefaults()
	b.opts.Store(&jo)
	select {
	case b.pruneNow <- struct{}{}:
	default:
	}
}

// Close implements store.Backend.
func (b *Backend) Close() error {
	close(b.stop)
	b.done.Wait()
	b.prune.Flush(time.Now())
	return b.Dedup.Close()
}

func (b *Backend) key(parts ...string) string { return b.jp + strings.Join(parts, "") }

// payMember names a payment in the payment sets.
func payMember(projectID, paymentID string) string {
	return redisKeyEscaper.Replace(projectID) + ":" + redisKeyEscaper.Replace(paymentID)
}

// payKeys are a payment's view and entry set, in one slot.
func (b *Backend) payKeys(member string) (view, events string) {
	return b.key("{", member, "}:v"), b.key("{", member, "}:ev")
}

func hexTime(s string) time.Time {
	raw, err := hex.DecodeString(s)
	if err != nil || len(raw) != 8 {
		return time.Time{}
	}
	return time.Unix(0, int64(binary.BigEndian.Uint64(raw))).UTC()
}

func micros(t time.Time) float64 { return float64(t.UnixMicro()) }

func (b *Backend) ctx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, b.timeout)
}

// Record implements journal.Journal. It writes at once; an entry already older
// than MaxAge is pruned as it comes.
func (b *Backend) Record(ctx context.Context, e journal.Event) error {
	o := b.opts.Load()
	now := time.Now()
	e.Prepare(now)
	if e.Time.Before(now.Add(-o.MaxAge)) {
		b.prune.Add(journal.PruneAge, 1, now)
		return nil
	}
	ctx, cancel := b.ctx(ctx)
	defer cancel()
	if e.FoldsIntoFirst() {
		if counted, err := b.countDuplicate(ctx, &e); counted || err != nil {
			return err
		}
	}
	body := e.Body
	e.Body = nil
	js, err := json.Marshal(&e)
	if err != nil {
		return err
	}

	if e.IsUnverified() {
		pipe := b.client.Pipeline()
		pipe.ZAdd(ctx, b.key("uv"), redis.Z{Member: e.ID + " " + string(js)})
		trimmed := pipe.ZRemRangeByRank(ctx, b.key("uv"), 0, int64(-o.MaxUnverified-1))
		if _, err := pipe.Exec(ctx); err != nil {
			return fmt.Errorf("ecommpay: redis journal: %w", err)
		}
		b.prune.Add(journal.PruneUnverified, int(trimmed.Val()), now)
		return nil
	}

	expire := e.Time.Add(o.MaxAge + redisGrace)
	var calls []*scriptCall
	pipe := b.client.Pipeline()
	var apply *scriptCall
	member := payMember(e.ProjectID, e.PaymentID)
	if e.JoinsPayment() {
		v, ev := b.payKeys(member)
		apply = evalSha(ctx, pipe, redisPaymentApply, []string{v, ev}, e.ID, journal.IDBound(e.Time), e.Kind,
			e.ProjectID, e.PaymentID, e.Result, e.Amount, e.Currency, e.Method, e.PaymentStatus,
			boolDigit(journal.IsFinalStatus(e.PaymentStatus)), expire.UnixMilli())
		calls = append(calls, apply)
		score := micros(e.Time)
		pipe.ZAddGT(ctx, b.key("pay"), redis.Z{Score: score, Member: member})
		pipe.ZAddGT(ctx, b.key("pay:p:", e.ProjectID), redis.Z{Score: score, Member: member})
		pipe.SAdd(ctx, b.key("projects"), e.ProjectID)
	}
	pipe.SetArgs(ctx, b.key("e:", e.ID), js, redis.SetArgs{ExpireAt: expire})
	pipe.ZAdd(ctx, b.key("ev"), redis.Z{Member: e.ID})
	for _, ix := range b.indexes(&e) {
		pipe.ZAdd(ctx, ix, redis.Z{Member: e.ID})
		pipe.SAdd(ctx, b.key("ix"), ix)
	}
	var bodyRef *scriptCall
	if e.EventKey != "" {
		ek := b.key("ev:x:", e.EventKey)
		pipe.ZAdd(ctx, ek, redis.Z{Member: e.ID})
		calls = append(calls, evalSha(ctx, pipe, redisExtendOnly, []string{ek}, expire.UnixMilli()))
		if !o.NoBodies {
			bodyRef = evalSha(ctx, pipe, redisBodyRef, []string{b.key("b:", e.EventKey)},
				string(body), e.ID, expire.UnixMilli(), boolDigit(len(body) > 0))
			calls = append(calls, bodyRef)
		}
	}
	size := pipe.IncrBy(ctx, b.key("bytes"), int64(len(js)+redisEntryOverhead))
	if err := execScripts(ctx, b.client, pipe, calls); err != nil {
		return fmt.Errorf("ecommpay: redis journal: %w", err)
	}

	// What the scripts found decides the rest.
	pipe = b.client.Pipeline()
	var grown int64
	if res := scriptStrings(apply); len(res) == 3 {
		if res[1] == "1" {
			pipe.ZRem(ctx, b.key("open"), member)
		} else if res[0] != "" {
			pipe.ZAddLT(ctx, b.key("open"), redis.Z{Score: micros(hexTime(res[0])), Member: member})
		}
		if res[2] == "1" {
			grown += redisPaymentOverhead
		}
	}
	if bodyRef != nil && bodyRef.cmd.Val() == int64(1) {
		grown += int64(len(body) + len(e.EventKey) + redisBodyOverhead)
	}
	if grown > 0 {
		size = pipe.IncrBy(ctx, b.key("bytes"), grown)
	}
	if pipe.Len() > 0 {
		if _, err := pipe.Exec(ctx); err != nil {
			return fmt.Errorf("ecommpay: redis journal: %w", err)
		}
	}
	if size.Val() > o.MaxSize {
		select {
		case b.pruneNow <- struct{}{}:
		default:
		}
	}
	return nil
}

// countDuplicate counts e on the first entry of its event key, if the
// journal still has it and it is a callback. Two duplicates counted at the
// same moment on two nodes may count once.
func (b *Backend) countDuplicate(ctx context.Context, e *journal.Event) (bool, error) {
	// All scores are 0: the first by rank is the least ID, the oldest.
	ids, err := b.client.ZRange(ctx, b.key("ev:x:", e.EventKey), 0, 0).Result()
	if err != nil || len(ids) == 0 {
		return false, err
	}
	key := b.key("e:", ids[0])
	raw, err := b.client.Get(ctx, key).Bytes()
	if errors.Is(err, redis.Nil) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	var first journal.Event
	if err := json.Unmarshal(raw, &first); err != nil {
		return false, err
	}
	if first.Kind != journal.KindCallback {
		return false, nil
	}
	first.CountDuplicate(e)
	js, err := json.Marshal(&first)
	if err != nil {
		return false, err
	}
	if err := b.client.SetArgs(ctx, key, js, redis.SetArgs{KeepTTL: true, Mode: "XX"}).Err(); err != nil &&
		!errors.Is(err, redis.Nil) {
		return false, err
	}
	b.client.IncrBy(ctx, b.key("bytes"), int64(len(js)-len(raw)))
	return true, nil
}

// redisExtendOnly extends one key's expiry (see redisExtend).
var redisExtendOnly = redis.NewScript(redisExtend + `extend(KEYS[1], tonumber(ARGV[1])) return 0`)

// indexes are the ev:p:, ev:r: and ev:k: sets that list e.
func (b *Backend) indexes(e *journal.Event) []string {
	var out []string
	for _, ix := range [...]struct{ name, v string }{{"ev:p:", e.ProjectID}, {"ev:r:", e.Result}, {"ev:k:", e.Kind}} {
		if ix.v != "" {
			out = append(out, b.key(ix.name, ix.v))
		}
	}
	return out
}

func boolDigit(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

// scriptCall is a script sent by EVALSHA in a pipeline, to be sent again
// in full if Redis does not know it (after a restart or failover).
type scriptCall struct {
	script *redis.Script
	keys   []string
	args   []any
	cmd    *redis.Cmd
}

func evalSha(ctx context.Context, pipe redis.Pipeliner, s *redis.Script, keys []string, args ...any) *scriptCall {
	return &scriptCall{script: s, keys: keys, args: args, cmd: s.EvalSha(ctx, pipe, keys, args...)}
}

// execScripts runs pipe and then, one by one, the scripts that failed with
// NOSCRIPT: they did not run, so running them again is safe.
func execScripts(ctx context.Context, c redis.UniversalClient, pipe redis.Pipeliner, calls []*scriptCall) error {
	cmds, err := pipe.Exec(ctx)
	if err == nil {
		return nil
	}
	for _, cmd := range cmds {
		if e := cmd.Err(); e != nil && !isNoScript(e) && !errors.Is(e, redis.Nil) {
			return e
		}
	}
	for _, sc := range calls {
		if isNoScript(sc.cmd.Err()) {
			sc.cmd = sc.script.Run(ctx, c, sc.keys, sc.args...)
			if err := sc.cmd.Err(); err != nil {
				return err
			}
		}
	}
	return nil
}

// scriptStrings is the reply of a script that may not have been called.
func scriptStrings(sc *scriptCall) []string {
	if sc == nil {
		return nil
	}
	res, _ := sc.cmd.StringSlice()
	return res
}

func isNoScript(err error) bool {
	return err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT")
}

func toAny(s []string) []any {
	out := make([]any, len(s))
	for i, v := range s {
		out[i] = v
	}
	return out
}

// Interface guards
var _ store.Backend = (*Backend)(nil)
