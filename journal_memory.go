package ecommpay

import (
	"bytes"
	"context"
	"slices"
	"sort"
	"sync"
	"time"

	"go.uber.org/zap"
)

// memoryBackend keeps de-dup state and journal in the process, for tests
// and throwaway setups: a restart forgets both.
type memoryBackend struct {
	*memoryStore
	*memoryJournal
}

func newMemoryBackend(maxKeys int, opts journalOptions, logger *zap.Logger) *memoryBackend {
	return &memoryBackend{newMemoryStore(maxKeys, logger), newMemoryJournal(opts, logger)}
}

// Destruct implements caddy.Destructor.
func (b *memoryBackend) Destruct() error {
	b.memoryJournal.prune.flush(time.Now())
	return b.memoryStore.Destruct()
}

// memEventSize estimates an entry's heap cost for the size bound: the
// struct, its pointer and the strings' bytes.
func memEventSize(e *journalEvent) int64 {
	n := 240
	for _, s := range [...]string{e.ID, e.Kind, e.ProjectID, e.PaymentID, e.OperationID, e.OperationType,
		e.OperationStatus, e.PaymentStatus, e.EventKey, e.Result, e.Path, e.Amount, e.Currency, e.Method} {
		n += len(s)
	}
	return int64(n)
}

// memBodyOverhead is a stored body's cost beyond its bytes and key.
const memBodyOverhead = 64

// memEvent is a stored entry; ref says that it holds a reference on the
// body of its event key.
type memEvent struct {
	e   journalEvent
	ref bool
}

type memBody struct {
	data []byte
	refs int
}

type memPayment struct {
	view   paymentView
	events []*memEvent // by ID
}

// memoryJournal is the journal of the memory backend. One mutex guards it:
// writes are a few map and slice operations, and lists are rare.
type memoryJournal struct {
	now   func() time.Time // replaced by tests
	prune pruneLog

	mu         sync.Mutex
	opts       journalOptions
	events     eventList // genuine entries
	unverified eventList // unverified callbacks, bounded by count
	payments   map[string]*memPayment
	bodies     map[string]*memBody
	size       int64 // estimated bytes held
}

func newMemoryJournal(opts journalOptions, logger *zap.Logger) *memoryJournal {
	if logger == nil {
		logger = zap.NewNop()
	}
	return &memoryJournal{
		now:      time.Now,
		prune:    pruneLog{logger: logger},
		opts:     opts.withDefaults(),
		payments: make(map[string]*memPayment),
		bodies:   make(map[string]*memBody),
	}
}

// setOptions changes the bounds in place (a config reload).
func (j *memoryJournal) setOptions(opts journalOptions) {
	j.mu.Lock()
	j.opts = opts.withDefaults()
	n := j.pruneLocked(j.now())
	j.mu.Unlock()
	j.report(n)
}

// payKey identifies a payment in maps.
func payKey(projectID, paymentID string) string { return projectID + "\x00" + paymentID }

// Record implements journal.
func (j *memoryJournal) Record(_ context.Context, e journalEvent) error {
	now := j.now()
	e.prepare(now)
	body := e.Body
	e.Body = nil
	me := &memEvent{e: e}

	j.mu.Lock()
	j.size += memEventSize(&me.e)
	if e.isUnverified() {
		j.unverified.insert(me)
	} else {
		j.events.insert(me)
		if e.joinsPayment() {
			k := payKey(e.ProjectID, e.PaymentID)
			p := j.payments[k]
			if p == nil {
				p = &memPayment{}
				j.payments[k] = p
			}
			p.view.apply(&me.e)
			p.events = insertByID(p.events, me)
		}
		if e.EventKey != "" {
			if b := j.bodies[e.EventKey]; b != nil {
				b.refs++
				me.ref = true
			} else if len(body) > 0 && !j.opts.NoBodies {
				// The caller may reuse its buffer.
				j.bodies[e.EventKey] = &memBody{data: bytes.Clone(body), refs: 1}
				j.size += int64(len(body)+len(e.EventKey)) + memBodyOverhead
				me.ref = true
			}
		}
	}
	n := j.pruneLocked(now)
	j.mu.Unlock()
	j.report(n)
	return nil
}

// pruneCounts are entries pruned by reason.
type pruneCounts struct{ age, size, unverified int }

func (j *memoryJournal) report(n pruneCounts) {
	now := j.now()
	j.prune.add(pruneAge, n.age, now)
	j.prune.add(pruneSize, n.size, now)
	j.prune.add(pruneUnverified, n.unverified, now)
}

// pruneLocked applies the bounds, oldest first. Over MaxSize it prunes to
// nine tenths of it, so that a full journal prunes in batches.
func (j *memoryJournal) pruneLocked(now time.Time) (n pruneCounts) {
	cut := idBound(now.Add(-j.opts.MaxAge))
	for _, l := range []*eventList{&j.events, &j.unverified} {
		for l.len() > 0 && l.front().e.ID < cut {
			j.drop(l)
			n.age++
		}
	}
	for j.unverified.len() > j.opts.MaxUnverified {
		j.drop(&j.unverified)
		n.unverified++
	}
	if j.size > j.opts.MaxSize {
		for j.size > j.opts.MaxSize*9/10 && j.events.len()+j.unverified.len() > 0 {
			l := &j.events
			if l.len() == 0 || (j.unverified.len() > 0 && j.unverified.front().e.ID < l.front().e.ID) {
				l = &j.unverified
			}
			j.drop(l)
			n.size++
		}
	}
	return n
}

// drop removes l's oldest entry and what only it held.
func (j *memoryJournal) drop(l *eventList) {
	me := l.popFront()
	e := &me.e
	j.size -= memEventSize(e)
	if e.joinsPayment() {
		k := payKey(e.ProjectID, e.PaymentID)
		if p := j.payments[k]; p != nil {
			// The oldest entry overall is its payment's oldest too.
			if i := slices.Index(p.events, me); i >= 0 {
				p.events = slices.Delete(p.events, i, i+1)
			}
			if len(p.events) == 0 {
				delete(j.payments, k)
			}
		}
	}
	if me.ref {
		if b := j.bodies[e.EventKey]; b != nil {
			if b.refs--; b.refs <= 0 {
				delete(j.bodies, e.EventKey)
				j.size -= int64(len(b.data)+len(e.EventKey)) + memBodyOverhead
			}
		}
	}
}

// expire prunes by age before a read, so that an idle journal does not
// list what it should have forgotten.
func (j *memoryJournal) expire() {
	j.mu.Lock()
	n := j.pruneLocked(j.now())
	j.mu.Unlock()
	j.report(n)
}

// Events implements journal.
func (j *memoryJournal) Events(_ context.Context, f eventFilter) ([]journalEvent, error) {
	j.expire()
	limit := limitOr(f.Limit)
	j.mu.Lock()
	defer j.mu.Unlock()
	var genuine []journalEvent
	if f.ProjectID != "" && f.PaymentID != "" {
		if p := j.payments[payKey(f.ProjectID, f.PaymentID)]; p != nil {
			genuine = scanNewest(p.events, &f, limit)
		}
	} else {
		genuine = scanNewest(j.events.items(), &f, limit)
	}
	return mergeNewest(genuine, scanNewest(j.unverified.items(), &f, limit), limit), nil
}

// scanNewest returns up to limit entries of l (sorted by ID) matching f,
// newest first.
func scanNewest(l []*memEvent, f *eventFilter, limit int) []journalEvent {
	i := len(l)
	if start := f.startID(); start != "" {
		i = sort.Search(len(l), func(i int) bool { return l[i].e.ID >= start })
	}
	stop := f.stopID()
	var out []journalEvent
	for i--; i >= 0 && len(out) < limit; i-- {
		e := &l[i].e
		if e.ID < stop {
			break
		}
		if f.match(e) {
			out = append(out, *e)
		}
	}
	return out
}

// Payments implements journal.
func (j *memoryJournal) Payments(_ context.Context, f paymentFilter) ([]paymentView, error) {
	j.expire()
	j.mu.Lock()
	var out []paymentView
	for _, p := range j.payments {
		if f.match(&p.view) {
			out = append(out, p.view)
		}
	}
	j.mu.Unlock()
	slices.SortFunc(out, newestUpdatedFirst)
	return out[:min(len(out), limitOr(f.Limit))], nil
}

// Timeline implements journal.
func (j *memoryJournal) Timeline(_ context.Context, projectID, paymentID string) (timeline, error) {
	j.expire()
	j.mu.Lock()
	defer j.mu.Unlock()
	p := j.payments[payKey(projectID, paymentID)]
	if p == nil {
		return timeline{}, errNotFound
	}
	tl := timeline{Payment: p.view, Events: make([]journalEvent, len(p.events))}
	for i, me := range p.events {
		tl.Events[i] = me.e
	}
	return tl, nil
}

// OpenPayments implements journal.
func (j *memoryJournal) OpenPayments(_ context.Context, startedBefore time.Time, limit int) ([]paymentView, error) {
	j.expire()
	j.mu.Lock()
	var out []paymentView
	for _, p := range j.payments {
		if p.view.isOpenSince(startedBefore) {
			out = append(out, p.view)
		}
	}
	j.mu.Unlock()
	slices.SortFunc(out, oldestSignedFirst)
	return out[:min(len(out), limitOr(limit))], nil
}

// Body implements journal.
func (j *memoryJournal) Body(_ context.Context, eventKey string) ([]byte, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	b := j.bodies[eventKey]
	if b == nil {
		return nil, errNotFound
	}
	return bytes.Clone(b.data), nil
}

// eventList is a slice of entries sorted by ID, with a moving head so that
// dropping the oldest is O(1) amortised. IDs come in time order, so
// inserts are appends but for the odd late entry.
type eventList struct {
	s    []*memEvent
	head int
}

func (l *eventList) len() int           { return len(l.s) - l.head }
func (l *eventList) items() []*memEvent { return l.s[l.head:] }
func (l *eventList) front() *memEvent   { return l.s[l.head] }

func (l *eventList) insert(me *memEvent) {
	if n := len(l.s); n == l.head || l.s[n-1].e.ID <= me.e.ID {
		l.s = append(l.s, me)
		return
	}
	i := sort.Search(l.len(), func(i int) bool { return l.s[l.head+i].e.ID > me.e.ID })
	l.s = slices.Insert(l.s, l.head+i, me)
}

func (l *eventList) popFront() *memEvent {
	me := l.s[l.head]
	l.s[l.head] = nil
	l.head++
	if l.head > 1024 && l.head > len(l.s)/2 {
		l.s = slices.Clone(l.s[l.head:])
		l.head = 0
	}
	return me
}

// insertByID inserts me into s, sorted by ID, after any equal ID.
func insertByID(s []*memEvent, me *memEvent) []*memEvent {
	if len(s) == 0 || s[len(s)-1].e.ID <= me.e.ID {
		return append(s, me)
	}
	i := sort.Search(len(s), func(i int) bool { return s[i].e.ID > me.e.ID })
	return slices.Insert(s, i, me)
}

// Interface guards
var _ backend = (*memoryBackend)(nil)
