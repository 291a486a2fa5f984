package memstore

import (
	"bytes"
	"context"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/caddy-ecommpay/caddy-ecommpay/internal/journal"
	"github.com/caddy-ecommpay/caddy-ecommpay/internal/store"
)

// memBodyOverhead is a stored body's cost beyond its bytes and key.
const memBodyOverhead = 64

// The strings of a stored entry, in the order they are kept.
const (
	memID = iota
	memKind
	memProjectID
	memPaymentID
	memOperationID
	memOperationType
	memOperationStatus
	memPaymentStatus
	memEventKey
	memResult
	memPath
	memAmount
	memCurrency
	memMethod
	memReason
	memStrings
)

// memEvent is a stored entry. Its strings, and the body when the entry is
// the first of its event key, are one string:
// one pointer for the collector to follow, and strings read from it need
// no copy. ref says that it holds a reference on its event key's body.
type memEvent struct {
	data              string
	ends              [memStrings]uint32 // where each string ends in data
	idHead            [16]byte           // the ID's start, to order entries without reading data
	sec               int64              // Time, in UTC
	nsec              int32
	verified, ref     bool
	status, appStatus int
	appLatencyMS      int64
	ecommpayStatus    int
	duplicates        int
	lastSeen          time.Time
}

// memSlab hands out entries from chunks of memSlabLen, one allocation per
// chunk. Entries are dropped about in the order they came, so a chunk is
// soon wholly free; drop clears an entry so that it holds nothing
// meanwhile.
type memSlab []memEvent

const memSlabLen = 64

func (s *memSlab) next() *memEvent {
	if len(*s) == 0 {
		*s = make([]memEvent, memSlabLen)
	}
	me := &(*s)[0]
	*s = (*s)[1:]
	return me
}

func newMemEvent(slab *memSlab, e *journal.Event, body []byte) *memEvent {
	strs := [memStrings]string{e.ID, e.Kind, e.ProjectID, e.PaymentID, e.OperationID, e.OperationType,
		e.OperationStatus, e.PaymentStatus, e.EventKey, e.Result, e.Path, e.Amount, e.Currency, e.Method, e.Reason}
	n := len(body)
	for _, s := range strs {
		n += len(s)
	}
	var data strings.Builder // one string the fields are slices of
	data.Grow(n)
	me := slab.next() // zero: fields are set one by one, the pointer once
	for i, s := range strs {
		data.WriteString(s)
		me.ends[i] = uint32(data.Len())
	}
	data.Write(body)
	copy(me.idHead[:], e.ID)
	me.data = data.String()
	me.sec, me.nsec = e.Time.Unix(), int32(e.Time.Nanosecond())
	me.verified, me.status, me.appStatus, me.appLatencyMS = e.Verified, e.Status, e.AppStatus, e.AppLatencyMS
	me.ecommpayStatus = e.EcommpayStatus
	return me
}

func (me *memEvent) str(i int) string {
	start := uint32(0)
	if i > 0 {
		start = me.ends[i-1]
	}
	return me.data[start:me.ends[i]]
}

func (me *memEvent) id() string { return me.str(memID) }

// compareID orders a and b by ID. The heads (zero-padded) order as the
// IDs do wherever they differ, and IDs differ in their time, which the
// head holds: data, elsewhere in memory, is read only for a tie.
func compareID(a, b *memEvent) int {
	if c := bytes.Compare(a.idHead[:], b.idHead[:]); c != 0 {
		return c
	}
	return strings.Compare(a.id(), b.id())
}

// body is the body this entry holds, if it holds one.
func (me *memEvent) body() string { return me.data[me.ends[memStrings-1]:] }

// event is the entry as a journal.Event, without its body. Its strings
// share the entry's memory.
func (me *memEvent) event() journal.Event {
	return journal.Event{
		ID: me.str(memID), Time: time.Unix(me.sec, int64(me.nsec)).UTC(), Kind: me.str(memKind),
		ProjectID: me.str(memProjectID), PaymentID: me.str(memPaymentID),
		OperationID: me.str(memOperationID), OperationType: me.str(memOperationType),
		OperationStatus: me.str(memOperationStatus), PaymentStatus: me.str(memPaymentStatus),
		EventKey: me.str(memEventKey), Result: me.str(memResult),
		Status: me.status, AppStatus: me.appStatus, AppLatencyMS: me.appLatencyMS, Verified: me.verified,
		Path: me.str(memPath), Amount: me.str(memAmount), Currency: me.str(memCurrency), Method: me.str(memMethod),
		EcommpayStatus: me.ecommpayStatus, Reason: me.str(memReason),
		Duplicates: me.duplicates, LastSeen: me.lastSeen,
	}
}

// size estimates the entry's heap cost for the size bound, as a
// journal.Event behind a pointer would take: the struct and the strings'
// bytes. A held body is counted with the body.
func (me *memEvent) size() int64 { return 240 + int64(me.ends[memStrings-1]) }

type memBody struct {
	data string // shares the memory of the entry that stored it
	refs int
}

// payID identifies a payment in maps.
type payID struct{ projectID, paymentID string }

type memPayment struct {
	view   journal.PaymentView
	events []*memEvent // by ID
	first  [4]*memEvent
}

// own points the view's strings that apply just changed at memory of the
// payment's own, so that the view keeps no entry's data alive once the
// entry is dropped. Known statuses and kinds are shared, not copied.
func (p *memPayment) own(id payID, prev *journal.PaymentView) {
	v := &p.view
	v.ProjectID, v.PaymentID = id.projectID, id.paymentID
	v.Mode = internKind(v.Mode)
	if s, ok := journal.KnownStatus(v.Status); ok {
		v.Status = s
	}
	fields := [...]struct {
		dst  *string
		prev string
	}{{&v.Status, prev.Status}, {&v.Amount, prev.Amount}, {&v.Currency, prev.Currency}, {&v.Method, prev.Method}}
	// A value apply left as it was keeps the copy the view already owns.
	for _, f := range fields {
		if *f.dst == f.prev {
			*f.dst = f.prev
		}
	}
	isKnown := func(s string) bool { _, ok := journal.KnownStatus(s); return ok }
	fresh := func(s, prev string) bool { return s != "" && s != prev && !isKnown(s) }
	var buf strings.Builder // one copy for the fresh values, sliced
	for _, f := range fields {
		if fresh(*f.dst, f.prev) {
			buf.WriteString(*f.dst)
		}
	}
	if buf.Len() == 0 {
		return
	}
	owned, off := buf.String(), 0
	for _, f := range fields {
		if fresh(*f.dst, f.prev) {
			n := len(*f.dst)
			*f.dst = owned[off : off+n]
			off += n
		}
	}
}

func internKind(k string) string {
	switch k {
	case journal.KindPaymentPage:
		return journal.KindPaymentPage
	case journal.KindGate:
		return journal.KindGate
	}
	return k
}

// Journal is a journal kept in the process: the memory backend's, and the
// local backend's when it has no file. One mutex guards it:
// writes are a few map and slice operations, and lists are rare.
type Journal struct {
	now   func() time.Time // replaced by tests
	prune *journal.PruneLog

	mu         sync.Mutex
	opts       journal.Options
	events     eventList // genuine entries
	unverified eventList // unverified callbacks, bounded by count
	payments   map[payID]*memPayment
	bodies     map[string]memBody // by event key
	// firsts are the first verified callback entries of event keys, which
	// count their duplicates.
	firsts map[string]*memEvent
	size   int64 // estimated bytes held
	// Apart, so that the strangers' short-lived entries do not keep the
	// chunks of genuine ones.
	slab, unverifiedSlab memSlab
}

// NewJournal returns an empty journal bounded by opts.
func NewJournal(opts journal.Options, h store.Hooks) *Journal {
	return &Journal{
		now:      time.Now,
		prune:    h.PruneLog(),
		opts:     opts.WithDefaults(),
		payments: make(map[payID]*memPayment),
		bodies:   make(map[string]memBody),
		firsts:   make(map[string]*memEvent),
	}
}

// Options returns the bounds in force.
func (j *Journal) Options() journal.Options {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.opts
}

// SetOptions changes the bounds in place (a config reload).
func (j *Journal) SetOptions(opts journal.Options) {
	j.mu.Lock()
	j.opts = opts.WithDefaults()
	n := j.pruneLocked(j.now())
	j.mu.Unlock()
	j.report(n)
}

// Record implements journal.Journal.
func (j *Journal) Record(_ context.Context, e journal.Event) error {
	now := j.now()
	e.Prepare(now)

	j.mu.Lock()
	if e.FoldsIntoFirst() {
		if first := j.firsts[e.EventKey]; first != nil {
			fe := first.event()
			fe.CountDuplicate(&e)
			first.duplicates, first.lastSeen = fe.Duplicates, fe.LastSeen
			j.mu.Unlock()
			return nil
		}
	}
	var me *memEvent
	if e.IsUnverified() {
		me = newMemEvent(&j.unverifiedSlab, &e, nil)
		j.unverified.insert(me)
	} else {
		held, found := j.bodies[e.EventKey]
		switch {
		case e.EventKey == "":
			me = newMemEvent(&j.slab, &e, nil)
		case found:
			me = newMemEvent(&j.slab, &e, nil)
			held.refs++
			j.bodies[e.EventKey] = held
			me.ref = true
		case len(e.Body) > 0 && !j.opts.NoBodies:
			me = newMemEvent(&j.slab, &e, e.Body) // a copy: the caller may reuse its buffer
			j.bodies[me.str(memEventKey)] = memBody{data: me.body(), refs: 1}
			j.size += int64(len(e.Body)+len(e.EventKey)) + memBodyOverhead
			me.ref = true
		default:
			me = newMemEvent(&j.slab, &e, nil)
		}
		j.events.insert(me)
		if e.Kind == journal.KindCallback && e.EventKey != "" && j.firsts[e.EventKey] == nil {
			j.firsts[me.str(memEventKey)] = me
		}
		if e.JoinsPayment() {
			j.joinPayment(me)
		}
	}
	j.size += me.size()
	n := j.pruneLocked(now)
	j.mu.Unlock()
	j.report(n)
	return nil
}

// joinPayment adds a verified entry to its payment's view and entries.
func (j *Journal) joinPayment(me *memEvent) {
	e := me.event()
	id := payID{e.ProjectID, e.PaymentID}
	p := j.payments[id]
	if p == nil {
		p = &memPayment{}
		p.events = p.first[:0]
		// The key's own copy, which the view shares.
		k := e.ProjectID + e.PaymentID
		id = payID{k[:len(e.ProjectID)], k[len(e.ProjectID):]}
		j.payments[id] = p
	} else {
		id = payID{p.view.ProjectID, p.view.PaymentID}
	}
	prev := p.view
	p.view.Apply(&e)
	p.own(id, &prev)
	p.events = insertByID(p.events, me)
}

// pruneCounts are entries pruned by reason.
type pruneCounts struct{ age, size, unverified int }

func (j *Journal) report(n pruneCounts) {
	now := j.now()
	j.prune.Add(journal.PruneAge, n.age, now)
	j.prune.Add(journal.PruneSize, n.size, now)
	j.prune.Add(journal.PruneUnverified, n.unverified, now)
}

// pruneLocked applies the bounds, oldest first. Over MaxSize it prunes to
// journal.SizePruneFloor.
func (j *Journal) pruneLocked(now time.Time) (n pruneCounts) {
	cut := journal.IDBound(now.Add(-j.opts.MaxAge))
	for _, l := range []*eventList{&j.events, &j.unverified} {
		for l.len() > 0 && l.front().id() < cut {
			j.drop(l)
			n.age++
		}
	}
	for j.unverified.len() > j.opts.MaxUnverified {
		j.drop(&j.unverified)
		n.unverified++
	}
	if j.size > j.opts.MaxSize {
		floor := journal.SizePruneFloor(j.opts.MaxSize)
		for j.size > floor && j.events.len()+j.unverified.len() > 0 {
			// Strangers' entries go first: they cannot push genuine ones out.
			l := &j.unverified
			if l.len() == 0 {
				l = &j.events
			}
			j.drop(l)
			n.size++
		}
	}
	return n
}

// drop removes l's oldest entry and what only it held.
func (j *Journal) drop(l *eventList) {
	me := l.popFront()
	e := me.event()
	j.size -= me.size()
	if e.JoinsPayment() {
		k := payID{e.ProjectID, e.PaymentID}
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
		if b, ok := j.bodies[e.EventKey]; ok {
			if b.refs--; b.refs <= 0 {
				delete(j.bodies, e.EventKey)
				j.size -= int64(len(b.data)+len(e.EventKey)) + memBodyOverhead
			} else {
				j.bodies[e.EventKey] = b
			}
		}
	}
	if e.EventKey != "" && j.firsts[e.EventKey] == me {
		delete(j.firsts, e.EventKey)
	}
	*me = memEvent{} // its chunk may live on
}

// expire prunes by age before a read, so that an idle journal does not
// list what it should have forgotten.
func (j *Journal) expire() {
	j.mu.Lock()
	n := j.pruneLocked(j.now())
	j.mu.Unlock()
	j.report(n)
}

// Events implements journal.Journal.
func (j *Journal) Events(_ context.Context, f journal.EventFilter) ([]journal.Event, error) {
	j.expire()
	limit := journal.LimitOr(f.Limit)
	j.mu.Lock()
	defer j.mu.Unlock()
	var genuine []journal.Event
	if f.ProjectID != "" && f.PaymentID != "" {
		if p := j.payments[payID{f.ProjectID, f.PaymentID}]; p != nil {
			genuine = scanNewest(p.events, &f, limit)
		}
	} else {
		genuine = scanNewest(j.events.items(), &f, limit)
	}
	return journal.MergeNewest(genuine, scanNewest(j.unverified.items(), &f, limit), limit), nil
}

// scanNewest returns up to limit entries of l (sorted by ID) matching f,
// newest first.
func scanNewest(l []*memEvent, f *journal.EventFilter, limit int) []journal.Event {
	i := len(l)
	if start := f.StartID(); start != "" {
		i = sort.Search(len(l), func(i int) bool { return l[i].id() >= start })
	}
	stop := f.StopID()
	var out []journal.Event
	for i--; i >= 0 && len(out) < limit; i-- {
		if l[i].id() < stop {
			break
		}
		if e := l[i].event(); f.Match(&e) {
			out = append(out, e)
		}
	}
	return out
}

// Payments implements journal.Journal.
func (j *Journal) Payments(_ context.Context, f journal.PaymentFilter) ([]journal.PaymentView, error) {
	j.expire()
	j.mu.Lock()
	var out []journal.PaymentView
	for _, p := range j.payments {
		if f.Match(&p.view) {
			out = append(out, p.view)
		}
	}
	j.mu.Unlock()
	slices.SortFunc(out, journal.NewestUpdatedFirst)
	return out[:min(len(out), journal.LimitOr(f.Limit))], nil
}

// Timeline implements journal.Journal.
func (j *Journal) Timeline(_ context.Context, projectID, paymentID string) (journal.Timeline, error) {
	j.expire()
	j.mu.Lock()
	defer j.mu.Unlock()
	p := j.payments[payID{projectID, paymentID}]
	if p == nil {
		return journal.Timeline{}, journal.ErrNotFound
	}
	tl := journal.Timeline{Payment: p.view, Events: make([]journal.Event, len(p.events))}
	for i, me := range p.events {
		tl.Events[i] = me.event()
	}
	return tl, nil
}

// OpenPayments implements journal.Journal.
func (j *Journal) OpenPayments(_ context.Context, startedBefore time.Time, limit int) ([]journal.PaymentView, error) {
	j.expire()
	j.mu.Lock()
	var out []journal.PaymentView
	for _, p := range j.payments {
		if p.view.IsOpenSince(startedBefore) {
			out = append(out, p.view)
		}
	}
	j.mu.Unlock()
	slices.SortFunc(out, journal.OldestSignedFirst)
	return out[:min(len(out), journal.LimitOr(limit))], nil
}

// Body implements journal.Journal.
func (j *Journal) Body(_ context.Context, eventKey string) ([]byte, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	b, ok := j.bodies[eventKey]
	if !ok {
		return nil, journal.ErrNotFound
	}
	return []byte(b.data), nil
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
	if n := len(l.s); n == l.head || compareID(l.s[n-1], me) <= 0 {
		l.s = append(l.s, me)
		return
	}
	i := sort.Search(l.len(), func(i int) bool { return compareID(l.s[l.head+i], me) > 0 })
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
	if len(s) == 0 || compareID(s[len(s)-1], me) <= 0 {
		return append(s, me)
	}
	i := sort.Search(len(s), func(i int) bool { return compareID(s[i], me) > 0 })
	return slices.Insert(s, i, me)
}

// Interface guards
var _ journal.Journal = (*Journal)(nil)
