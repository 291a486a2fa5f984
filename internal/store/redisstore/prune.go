package redisstore

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"strconv"
	"time"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/journal"
	"github.com/redis/go-redis/v9"
)

// pruneLoop prunes every redisPruneEvery, and at once when a Record finds
// the journal over MaxSize.
func (b *Backend) pruneLoop() {
	defer b.done.Done()
	t := time.NewTicker(redisPruneEvery)
	defer t.Stop()
	for {
		select {
		case <-b.stop:
			return
		case <-t.C:
		case <-b.pruneNow:
		}
		ctx, cancel := context.WithTimeout(context.Background(), redisPruneEvery)
		_ = b.pruneOnce(ctx) // a Redis that is down is retried next time
		cancel()
	}
}

// pruneOnce prunes by age and size, unless another node is at it.
func (b *Backend) pruneOnce(ctx context.Context) error {
	lock, token := b.key("prune"), rand.Text()
	if ok, err := b.client.SetNX(ctx, lock, token, redisPruneEvery).Result(); err != nil || !ok {
		return err
	}
	defer redisUnlock.Run(context.WithoutCancel(ctx), b.client, []string{lock}, token)
	return b.pruneAll(ctx)
}

// pruneAll prunes by age and size. Nodes that run it at once waste work
// but keep the count right (see drop).
func (b *Backend) pruneAll(ctx context.Context) error {
	o := b.opts.Load()
	now := time.Now()
	cut := b.cutID()
	for {
		ids, err := b.client.ZRangeByLex(ctx, b.key("ev"), &redis.ZRangeBy{Min: "-", Max: "(" + cut, Count: redisPruneBatch}).Result()
		if err != nil {
			return err
		}
		if len(ids) == 0 {
			break
		}
		if err := b.drop(ctx, ids, journal.PruneAge); err != nil {
			return err
		}
	}
	// What the entries' own pruning may have missed.
	n, err := b.client.ZRemRangeByLex(ctx, b.key("uv"), "-", "("+cut).Result()
	if err != nil {
		return err
	}
	b.prune.Add(journal.PruneAge, int(n), now)
	ixs, err := b.client.SMembers(ctx, b.key("ix")).Result()
	if err != nil {
		return err
	}
	projects, err := b.client.SMembers(ctx, b.key("projects")).Result()
	if err != nil {
		return err
	}
	pipe := b.client.Pipeline()
	for _, ix := range ixs {
		pipe.ZRemRangeByLex(ctx, ix, "-", "("+cut)
	}
	old := strconv.FormatInt(now.Add(-o.MaxAge).UnixMicro(), 10)
	pipe.ZRemRangeByScore(ctx, b.key("pay"), "-inf", "("+old)
	for _, p := range projects {
		pipe.ZRemRangeByScore(ctx, b.key("pay:p:", p), "-inf", "("+old)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return err
	}

	// Size: the oldest entries go until the journal is below nine tenths
	// of MaxSize.
	size, err := b.client.Get(ctx, b.key("bytes")).Int64()
	if err != nil && !errors.Is(err, redis.Nil) {
		return err
	}
	if size <= o.MaxSize {
		return nil
	}
	for target := o.MaxSize * 9 / 10; size > target; {
		// As many as the average entry says, in batches.
		n, err := b.client.ZCard(ctx, b.key("ev")).Result()
		if err != nil {
			return err
		}
		if n == 0 {
			// Nothing left to prune: the count drifted (keys that Redis
			// expired or evicted before the pruner saw them).
			return b.client.Set(ctx, b.key("bytes"), 0, 0).Err()
		}
		k := min(max((size-target)*n/size+1, 1), redisPruneBatch)
		ids, err := b.client.ZRange(ctx, b.key("ev"), 0, k-1).Result()
		if err != nil || len(ids) == 0 {
			return err
		}
		if err := b.drop(ctx, ids, journal.PruneSize); err != nil {
			return err
		}
		if size, err = b.client.Get(ctx, b.key("bytes")).Int64(); err != nil {
			return err
		}
	}
	return nil
}

// drop prunes the entries ids and what only they held. Of several nodes
// dropping one entry, the one whose DEL removed it does the rest, so the
// byte count is lowered once.
func (b *Backend) drop(ctx context.Context, ids []string, reason string) error {
	evs, err := b.entries(ctx, ids)
	if err != nil {
		return err
	}
	pipe := b.client.Pipeline()
	pipe.ZRem(ctx, b.key("ev"), toAny(ids)...)
	dels := make([]*redis.IntCmd, len(evs))
	for i := range evs {
		dels[i] = pipe.Del(ctx, b.key("e:", evs[i].ID))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return err
	}

	pipe = b.client.Pipeline()
	var freed int64
	var calls, pays, bodies []*scriptCall
	var payMembers, payProjects, bodyKeys []string
	n := 0
	for i := range evs {
		e := &evs[i]
		if dels[i].Val() != 1 {
			continue
		}
		n++
		js, _ := json.Marshal(e)
		freed += int64(len(js) + redisEntryOverhead)
		for _, ix := range b.indexes(e) {
			pipe.ZRem(ctx, ix, e.ID)
		}
		if e.EventKey != "" {
			pipe.ZRem(ctx, b.key("ev:x:", e.EventKey), e.ID)
			c := evalSha(ctx, pipe, redisBodyDrop, []string{b.key("b:", e.EventKey)}, e.ID)
			bodies, bodyKeys = append(bodies, c), append(bodyKeys, e.EventKey)
			calls = append(calls, c)
		}
		if e.JoinsPayment() {
			m := payMember(e.ProjectID, e.PaymentID)
			v, ev := b.payKeys(m)
			c := evalSha(ctx, pipe, redisPaymentDrop, []string{v, ev}, e.ID)
			pays, payMembers, payProjects = append(pays, c), append(payMembers, m), append(payProjects, e.ProjectID)
			calls = append(calls, c)
		}
	}
	if n == 0 {
		return nil
	}
	if err := execScripts(ctx, b.client, pipe, calls); err != nil {
		return err
	}
	pipe = b.client.Pipeline()
	for i, c := range bodies {
		if l, _ := c.cmd.Int64(); l > 0 {
			freed += l + int64(len(bodyKeys[i])+redisBodyOverhead)
		}
	}
	for i, c := range pays {
		if gone, _ := c.cmd.Int(); gone == 1 {
			freed += redisPaymentOverhead
			pipe.ZRem(ctx, b.key("pay"), payMembers[i])
			pipe.ZRem(ctx, b.key("pay:p:", payProjects[i]), payMembers[i])
			pipe.ZRem(ctx, b.key("open"), payMembers[i])
		}
	}
	pipe.DecrBy(ctx, b.key("bytes"), freed)
	if _, err := pipe.Exec(ctx); err != nil {
		return err
	}
	b.prune.Add(reason, n, time.Now())
	return nil
}
