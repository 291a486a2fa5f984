package redisstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/journal"
	"github.com/redis/go-redis/v9"
)

// Events implements journal.Journal.
func (b *Backend) Events(ctx context.Context, f journal.EventFilter) ([]journal.Event, error) {
	ctx, cancel := b.ctx(ctx)
	defer cancel()
	limit := journal.LimitOr(f.Limit)
	hi := "+"
	if s := f.StartID(); s != "" {
		hi = "(" + s
	}
	lo := max(f.StopID(), b.cutID())
	var ix string
	switch {
	case f.ProjectID != "" && f.PaymentID != "":
		_, ix = b.payKeys(payMember(f.ProjectID, f.PaymentID))
	case f.EventKey != "":
		ix = b.key("ev:x:", f.EventKey)
	case f.ProjectID != "":
		ix = b.key("ev:p:", f.ProjectID)
	case f.Result != "":
		ix = b.key("ev:r:", f.Result)
	case f.Kind != "":
		ix = b.key("ev:k:", f.Kind)
	default:
		ix = b.key("ev")
	}
	genuine, err := b.scan(ctx, ix, hi, "["+lo, limit, &f, b.entries)
	if err != nil {
		return nil, err
	}
	strangers, err := b.scan(ctx, b.key("uv"), hi, "["+lo, limit, &f, inlineEntries)
	if err != nil {
		return nil, err
	}
	return journal.MergeNewest(genuine, strangers, limit), nil
}

// cutID is the least ID within MaxAge.
func (b *Backend) cutID() string { return journal.IDBound(time.Now().Add(-b.opts.Load().MaxAge)) }

// scan pages through a sorted set of IDs (or "<id> <JSON>"), newest
// first, and returns up to limit entries that match f.
func (b *Backend) scan(ctx context.Context, key, hi, lo string, limit int, f *journal.EventFilter,
	load func(context.Context, []string) ([]journal.Event, error)) ([]journal.Event, error) {
	var out []journal.Event
	for len(out) < limit {
		members, err := b.client.ZRevRangeByLex(ctx, key, &redis.ZRangeBy{Max: hi, Min: lo, Count: redisScanPage}).Result()
		if err != nil {
			return nil, fmt.Errorf("ecommpay: redis journal: %w", err)
		}
		evs, err := load(ctx, members)
		if err != nil {
			return nil, err
		}
		for i := range evs {
			if len(out) < limit && f.Match(&evs[i]) {
				out = append(out, evs[i])
			}
		}
		if len(members) < redisScanPage {
			break
		}
		hi = "(" + members[len(members)-1]
	}
	return out, nil
}

// entries loads entries by ID in order, skipping those gone.
func (b *Backend) entries(ctx context.Context, ids []string) ([]journal.Event, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	pipe := b.client.Pipeline()
	cmds := make([]*redis.StringCmd, len(ids))
	for i, id := range ids {
		cmds[i] = pipe.Get(ctx, b.key("e:", id))
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("ecommpay: redis journal: %w", err)
	}
	out := make([]journal.Event, 0, len(ids))
	for _, c := range cmds {
		var e journal.Event
		if raw, err := c.Bytes(); err == nil && json.Unmarshal(raw, &e) == nil {
			out = append(out, e)
		}
	}
	return out, nil
}

// inlineEntries decodes members of uv.
func inlineEntries(_ context.Context, members []string) ([]journal.Event, error) {
	out := make([]journal.Event, 0, len(members))
	for _, m := range members {
		var e journal.Event
		if _, js, ok := strings.Cut(m, " "); ok && json.Unmarshal([]byte(js), &e) == nil {
			out = append(out, e)
		}
	}
	return out, nil
}

// Timeline implements journal.Journal.
func (b *Backend) Timeline(ctx context.Context, projectID, paymentID string) (journal.Timeline, error) {
	ctx, cancel := b.ctx(ctx)
	defer cancel()
	vk, ek := b.payKeys(payMember(projectID, paymentID))
	pipe := b.client.Pipeline()
	vc := pipe.HGetAll(ctx, vk)
	ic := pipe.ZRangeByLex(ctx, ek, &redis.ZRangeBy{Min: "[" + b.cutID(), Max: "+"})
	if _, err := pipe.Exec(ctx); err != nil {
		return journal.Timeline{}, fmt.Errorf("ecommpay: redis journal: %w", err)
	}
	v, ok := b.parseView(vc.Val())
	if !ok || len(ic.Val()) == 0 {
		return journal.Timeline{}, journal.ErrNotFound
	}
	evs, err := b.entries(ctx, ic.Val())
	if err != nil {
		return journal.Timeline{}, err
	}
	return journal.Timeline{Payment: v, Events: evs}, nil
}

// parseView reads a view hash; a missing or aged-out view is not ok.
func (b *Backend) parseView(h map[string]string) (journal.PaymentView, bool) {
	o := b.opts.Load()
	if h["started"] == "" {
		return journal.PaymentView{}, false
	}
	n := func(k string) int { i, _ := strconv.Atoi(h[k]); return i }
	v := journal.PaymentView{
		ProjectID: h["project"], PaymentID: h["payment"],
		Started: hexTime(h["started"]), Updated: hexTime(h["updated"]),
		Mode: h["mode"], Amount: h["amount"], Currency: h["currency"], Method: h["method"],
		Status: h["status"], Final: h["final"] == "1",
		Callbacks: n("callbacks"), AppErrors: n("app_errors"), Events: n("events"),
	}
	if h["signed"] != "" {
		v.Signed = hexTime(h["signed"])
	}
	return v, !v.Updated.Before(time.Now().Add(-o.MaxAge))
}

// views loads payment views by member, in order, skipping those gone; it
// also returns the members whose views are gone.
func (b *Backend) views(ctx context.Context, members []string) ([]journal.PaymentView, []string, error) {
	pipe := b.client.Pipeline()
	cmds := make([]*redis.MapStringStringCmd, len(members))
	for i, m := range members {
		vk, _ := b.payKeys(m)
		cmds[i] = pipe.HGetAll(ctx, vk)
	}
	if len(members) > 0 {
		if _, err := pipe.Exec(ctx); err != nil {
			return nil, nil, fmt.Errorf("ecommpay: redis journal: %w", err)
		}
	}
	var out []journal.PaymentView
	var gone []string
	for i, c := range cmds {
		if v, ok := b.parseView(c.Val()); ok {
			out = append(out, v)
		} else {
			gone = append(gone, members[i])
		}
	}
	return out, gone, nil
}

// Payments implements journal.Journal.
func (b *Backend) Payments(ctx context.Context, f journal.PaymentFilter) ([]journal.PaymentView, error) {
	o := b.opts.Load()
	ctx, cancel := b.ctx(ctx)
	defer cancel()
	limit := journal.LimitOr(f.Limit)
	if f.ProjectID != "" && f.PaymentID != "" {
		vs, _, err := b.views(ctx, []string{payMember(f.ProjectID, f.PaymentID)})
		if err != nil || len(vs) == 0 || !f.Match(&vs[0]) {
			return nil, err
		}
		return vs, nil
	}
	key := b.key("pay")
	if f.ProjectID != "" {
		key = b.key("pay:p:", f.ProjectID)
	}
	// Scores are microseconds: widen the bounds and let match decide.
	lo := time.Now().Add(-o.MaxAge).UnixMicro() - 1
	if !f.Since.IsZero() {
		lo = max(lo, f.Since.UnixMicro()-1)
	}
	hi := "+inf"
	if !f.Until.IsZero() {
		hi = strconv.FormatInt(f.Until.UnixMicro()+1, 10)
	}
	var out []journal.PaymentView
	for off := int64(0); len(out) < limit; off += redisScanPage {
		members, err := b.client.ZRevRangeByScore(ctx, key, &redis.ZRangeBy{
			Max: hi, Min: strconv.FormatInt(lo, 10), Offset: off, Count: redisScanPage}).Result()
		if err != nil {
			return nil, fmt.Errorf("ecommpay: redis journal: %w", err)
		}
		vs, _, err := b.views(ctx, members)
		if err != nil {
			return nil, err
		}
		for i := range vs {
			if f.Match(&vs[i]) {
				out = append(out, vs[i])
			}
		}
		if len(members) < redisScanPage {
			break
		}
	}
	slices.SortFunc(out, journal.NewestUpdatedFirst)
	return out[:min(len(out), limit)], nil
}

// OpenPayments implements journal.Journal.
func (b *Backend) OpenPayments(ctx context.Context, startedBefore time.Time, limit int) ([]journal.PaymentView, error) {
	ctx, cancel := b.ctx(ctx)
	defer cancel()
	limit = journal.LimitOr(limit)
	hi := strconv.FormatInt(startedBefore.UnixMicro()+1, 10)
	var out []journal.PaymentView
	var gone []string
	for off := int64(0); len(out) < limit; off += redisScanPage {
		members, err := b.client.ZRangeByScore(ctx, b.key("open"), &redis.ZRangeBy{
			Min: "-inf", Max: hi, Offset: off, Count: redisScanPage}).Result()
		if err != nil {
			return nil, fmt.Errorf("ecommpay: redis journal: %w", err)
		}
		vs, g, err := b.views(ctx, members)
		if err != nil {
			return nil, err
		}
		gone = append(gone, g...)
		for i := range vs {
			if vs[i].IsOpenSince(startedBefore) {
				out = append(out, vs[i])
			}
		}
		if len(members) < redisScanPage {
			break
		}
	}
	if len(gone) > 0 {
		// Aged out; their keys expire by themselves.
		b.client.ZRem(ctx, b.key("open"), toAny(gone)...)
	}
	slices.SortFunc(out, journal.OldestSignedFirst)
	return out[:min(len(out), limit)], nil
}

// Body implements journal.Journal.
func (b *Backend) Body(ctx context.Context, eventKey string) ([]byte, error) {
	ctx, cancel := b.ctx(ctx)
	defer cancel()
	vals, err := b.client.HMGet(ctx, b.key("b:", eventKey), "d", "last").Result()
	if err != nil {
		return nil, fmt.Errorf("ecommpay: redis journal: %w", err)
	}
	d, _ := vals[0].(string)
	last, _ := vals[1].(string)
	if vals[0] == nil || last < b.cutID() {
		return nil, journal.ErrNotFound
	}
	return []byte(d), nil
}
