package ecommpay

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"slices"
	"time"
	"unsafe"
)

// localIndex is what the local journal keeps in memory: each payment's view
// and entry IDs, and under which entry each event key's body is stored.
// It is built from the file at open and kept by the writer as it writes
// and prunes. Its maps are keyed by hashes, its IDs are arrays and the
// views' strings live in a byte arena, so the garbage collector, which
// visits every pointer on every cycle, finds almost none however many
// payments it holds: only one for each payment of more than two entries.
type localIndex struct {
	slots map[keyHash]int32 // payKey hash → slot
	// pays holds the slots in blocks, so that growing never copies them.
	pays      [][]localPayment
	free      []int32 // unused slots below slotsUsed
	slotsUsed int32
	bodies    map[keyHash]bodyRef
	arena     strArena
}

// localPayment is a payment's view, packed, and its entries' IDs in ID
// order: up to two inline, more in a slice.
type localPayment struct {
	inline                    [2]entryID
	more                      []entryID
	n                         int32 // entries
	strs                      strRef
	started, updated, signed  int64 // Unix nanoseconds; 0 for a zero time
	callbacks, appErrors, evs int32
	final                     bool
}

func (p *localPayment) ids() []entryID {
	if p.more != nil {
		return p.more
	}
	return p.inline[:p.n]
}

func (p *localPayment) setIDs(ids []entryID) {
	p.n = int32(len(ids))
	if len(ids) <= len(p.inline) {
		copy(p.inline[:], ids)
		p.more = nil
		return
	}
	p.more = ids
}

func (v *paymentView) packedStrings() [7]*string {
	return [7]*string{&v.ProjectID, &v.PaymentID, &v.Mode, &v.Amount, &v.Currency, &v.Method, &v.Status}
}

func packTime(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func unpackTime(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns).UTC()
}

// pack stores v in p, its strings in the arena.
func (x *localIndex) pack(p *localPayment, v *paymentView) {
	var buf [256]byte
	b := buf[:0]
	for _, s := range v.packedStrings() {
		b = binary.AppendUvarint(b, uint64(len(*s)))
		b = append(b, *s...)
	}
	x.arena.release(p.strs)
	p.strs = strRef{}
	// Before the put: compaction moves only the payments with entries,
	// and p may be new.
	if x.arena.wasteful() {
		x.compact()
	}
	p.strs = x.arena.put(b)
	p.started, p.updated, p.signed = packTime(v.Started), packTime(v.Updated), packTime(v.Signed)
	p.callbacks, p.appErrors, p.evs = int32(v.Callbacks), int32(v.AppErrors), int32(v.Events)
	p.final = v.Final
}

// view unpacks p's view; its strings share the arena's bytes, which are
// never written again.
func (x *localIndex) view(p *localPayment) paymentView {
	var v paymentView
	s := x.arena.get(p.strs)
	for _, f := range v.packedStrings() {
		n, k := uvarintIn(s)
		if k <= 0 || n > uint64(len(s)-k) {
			break // never written so
		}
		*f, s = s[k:k+int(n)], s[k+int(n):]
	}
	v.Started, v.Updated, v.Signed = unpackTime(p.started), unpackTime(p.updated), unpackTime(p.signed)
	v.Callbacks, v.AppErrors, v.Events = int(p.callbacks), int(p.appErrors), int(p.evs)
	v.Final = p.final
	return v
}

// compact copies the live strings to a new arena; the old chunks go once
// no view returned earlier refers to them.
func (x *localIndex) compact() {
	old := x.arena
	x.arena = strArena{}
	x.each(func(p *localPayment) {
		p.strs = x.arena.put([]byte(old.get(p.strs)))
	})
}

// strArena holds strings in append-only chunks: bytes once written never
// change, so strings that share them stay valid.
type strArena struct {
	chunks      [][]byte
	live, total int
}

// strRef is a string in a strArena.
type strRef struct{ chunk, off, n uint32 }

const arenaChunk = 1 << 20

func (a *strArena) put(b []byte) strRef {
	last := len(a.chunks) - 1
	if last < 0 || cap(a.chunks[last])-len(a.chunks[last]) < len(b) {
		a.chunks = append(a.chunks, make([]byte, 0, max(arenaChunk, len(b))))
		last++
	}
	c := a.chunks[last]
	r := strRef{chunk: uint32(last), off: uint32(len(c)), n: uint32(len(b))}
	a.chunks[last] = append(c, b...)
	a.live += len(b)
	a.total += len(b)
	return r
}

func (a *strArena) get(r strRef) string {
	if r.n == 0 {
		return ""
	}
	c := a.chunks[r.chunk]
	return unsafe.String(&c[r.off], int(r.n))
}

// release notes that r's bytes are no longer used.
func (a *strArena) release(r strRef) { a.live -= int(r.n) }

// wasteful reports whether most of the arena is unused.
func (a *strArena) wasteful() bool { return a.total-a.live > max(a.live, 4*arenaChunk) }

// bodyRef says under which entry an event key's body is stored and how
// many entries refer to it: it goes with the last of them.
type bodyRef struct {
	id   entryID
	refs int32
}

// entryID is an entry ID (newEventID: 24 hex digits) as bytes.
type entryID [12]byte

func parseEntryID(s string) (id entryID, ok bool) {
	if len(s) != 2*len(id) {
		return id, false
	}
	_, err := hex.Decode(id[:], []byte(s))
	return id, err == nil
}

func (id entryID) String() string { return hex.EncodeToString(id[:]) }

func compareIDs(a, b entryID) int { return bytes.Compare(a[:], b[:]) }

// sameEntryID reports whether s (as newEventID writes IDs) is id, without
// writing id out.
func sameEntryID(id entryID, s string) bool {
	parsed, ok := parseEntryID(s)
	return ok && parsed == id
}

func newLocalIndex() *localIndex {
	return &localIndex{slots: make(map[keyHash]int32), bodies: make(map[keyHash]bodyRef)}
}

// bodyOf returns the ID of the entry holding eventKey's body.
func (x *localIndex) bodyOf(eventKey string) (string, bool) {
	ref, ok := x.bodies[hashKey(eventKey)]
	if !ok {
		return "", false
	}
	return ref.id.String(), true
}

// refBody counts one more entry referring to eventKey's body and returns
// the ID of the entry that holds it. When none does yet, the body is the
// one stored under bodyID (the entry's own ID, for a new body); with no
// bodyID, nothing is counted and it returns "".
func (x *localIndex) refBody(eventKey, bodyID string) string {
	h := hashKey(eventKey)
	ref := x.bodies[h]
	if ref.refs == 0 {
		id, ok := parseEntryID(bodyID)
		if !ok {
			return ""
		}
		ref.id = id
	}
	ref.refs++
	x.bodies[h] = ref
	if ref.refs == 1 {
		return bodyID
	}
	return ref.id.String()
}

// add puts a verified entry in its payment's view.
func (x *localIndex) add(e *journalEvent) {
	id, ok := parseEntryID(e.ID)
	if !ok || !e.joinsPayment() {
		return
	}
	h := hashKey(payKey(e.ProjectID, e.PaymentID))
	slot, ok := x.slots[h]
	if !ok {
		if n := len(x.free); n > 0 {
			slot, x.free = x.free[n-1], x.free[:n-1]
		} else {
			slot = x.slotsUsed
			if int(slot)%payBlock == 0 {
				x.pays = append(x.pays, make([]localPayment, payBlock))
			}
			x.slotsUsed++
		}
		x.slots[h] = slot
	}
	p := x.at(slot)
	v := x.view(p)
	v.apply(e)
	x.pack(p, &v)
	ids := p.ids()
	i := len(ids)
	if i > 0 && compareIDs(ids[i-1], id) > 0 {
		i, _ = slices.BinarySearchFunc(ids, id, compareIDs)
	}
	switch {
	case p.more != nil:
		ids = slices.Insert(ids, i, id)
	case len(ids) < len(p.inline):
		ids = slices.Insert(p.inline[:len(ids):len(p.inline)], i, id)
	default: // inline is full: move to a slice of its own
		ids = slices.Insert(slices.Clip(ids), i, id)
	}
	p.setIDs(ids)
}

// remove takes a pruned entry out of the index: its payment goes with its
// last entry, its body with the last entry referring to it. It reports
// the ID of a body to delete, if any.
func (x *localIndex) remove(e *journalEvent, bodyID string) (dropBody string) {
	if bodyID != "" {
		h := hashKey(e.EventKey)
		if ref, ok := x.bodies[h]; ok && sameEntryID(ref.id, bodyID) {
			if ref.refs--; ref.refs <= 0 {
				delete(x.bodies, h)
				dropBody = bodyID
			} else {
				x.bodies[h] = ref
			}
		}
	}
	id, ok := parseEntryID(e.ID)
	if !ok || !e.joinsPayment() {
		return dropBody
	}
	h := hashKey(payKey(e.ProjectID, e.PaymentID))
	slot, ok := x.slots[h]
	if !ok {
		return dropBody
	}
	p := x.at(slot)
	if ids := p.ids(); len(ids) > 0 {
		if i, ok := slices.BinarySearchFunc(ids, id, compareIDs); ok {
			p.setIDs(slices.Delete(ids, i, i+1))
		}
	}
	if p.n == 0 {
		x.arena.release(p.strs)
		*p = localPayment{}
		delete(x.slots, h)
		x.free = append(x.free, slot)
	}
	return dropBody
}

// payment returns a payment's view and its entries' IDs, oldest first.
func (x *localIndex) payment(projectID, paymentID string) (paymentView, []string, bool) {
	slot, ok := x.slots[hashKey(payKey(projectID, paymentID))]
	if !ok {
		return paymentView{}, nil, false
	}
	p := x.at(slot)
	ids := make([]string, p.n)
	for i, id := range p.ids() {
		ids[i] = id.String()
	}
	return x.view(p), ids, true
}

// views returns copies of the views that keep keeps.
func (x *localIndex) views(keep func(*paymentView) bool) []paymentView {
	var out []paymentView
	x.each(func(p *localPayment) {
		if v := x.view(p); keep(&v) {
			out = append(out, v)
		}
	})
	return out
}

// uvarintIn is binary.Uvarint of a string's start.
func uvarintIn(s string) (uint64, int) {
	var x uint64
	for i := 0; i < len(s) && i < binary.MaxVarintLen64; i++ {
		c := s[i]
		if c < 0x80 {
			return x | uint64(c)<<(7*i), i + 1
		}
		x |= uint64(c&0x7f) << (7 * i)
	}
	return 0, 0
}

const payBlock = 4096

func (x *localIndex) at(slot int32) *localPayment { return &x.pays[slot/payBlock][slot%payBlock] }

// each calls f with every payment that has entries.
func (x *localIndex) each(f func(*localPayment)) {
	for _, block := range x.pays {
		for i := range block {
			if p := &block[i]; p.n > 0 {
				f(p)
			}
		}
	}
}
