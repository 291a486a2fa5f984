package ecommpay

import (
	"bytes"
	"encoding/hex"
	"slices"
)

// localIndex is what the local journal keeps in memory: each payment's view
// and entry IDs, and under which entry each event key's body is stored.
// It is built from the file at open and kept by the writer as it writes
// and prunes. Its maps are keyed by hashes and its IDs are arrays, so the
// garbage collector has few pointers to follow however many payments it
// holds: about two small objects per payment.
type localIndex struct {
	slots    map[keyHash]int32 // payKey hash → index in pays
	pays     []localPayment
	free     []int32 // unused slots of pays
	bodies   map[keyHash]bodyRef
	strings  interner
	payments int
}

// localPayment is a payment's view and its entries' IDs, in ID order.
type localPayment struct {
	view paymentView
	ids  []entryID
}

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

func newLocalIndex() *localIndex {
	return &localIndex{slots: make(map[keyHash]int32), bodies: make(map[keyHash]bodyRef), strings: interner{}}
}

// bodyOf returns the ID of the entry holding eventKey's body.
func (x *localIndex) bodyOf(eventKey string) (string, bool) {
	ref, ok := x.bodies[hashKey(eventKey)]
	if !ok {
		return "", false
	}
	return ref.id.String(), true
}

// refBody counts one more entry referring to eventKey's body stored under
// bodyID (the entry's own ID for a new body).
func (x *localIndex) refBody(eventKey, bodyID string) {
	id, ok := parseEntryID(bodyID)
	if !ok {
		return
	}
	h := hashKey(eventKey)
	ref := x.bodies[h]
	if ref.refs == 0 {
		ref.id = id
	}
	ref.refs++
	x.bodies[h] = ref
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
			slot = int32(len(x.pays))
			x.pays = append(x.pays, localPayment{})
		}
		x.slots[h] = slot
		x.payments++
	}
	p := &x.pays[slot]
	p.view.apply(e)
	// Share the strings that repeat across payments.
	v, s := &p.view, x.strings
	v.ProjectID, v.Mode, v.Currency, v.Method, v.Status = s.str(v.ProjectID), s.str(v.Mode), s.str(v.Currency), s.str(v.Method), s.str(v.Status)
	if n := len(p.ids); n == 0 || compareIDs(p.ids[n-1], id) <= 0 {
		p.ids = append(p.ids, id)
	} else {
		i, _ := slices.BinarySearchFunc(p.ids, id, compareIDs)
		p.ids = slices.Insert(p.ids, i, id)
	}
}

// remove takes a pruned entry out of the index: its payment goes with its
// last entry, its body with the last entry referring to it. It reports
// the ID of a body to delete, if any.
func (x *localIndex) remove(e *journalEvent, bodyID string) (dropBody string) {
	if bodyID != "" {
		h := hashKey(e.EventKey)
		if ref, ok := x.bodies[h]; ok && ref.id.String() == bodyID {
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
	p := &x.pays[slot]
	if i, ok := slices.BinarySearchFunc(p.ids, id, compareIDs); ok {
		p.ids = slices.Delete(p.ids, i, i+1)
	}
	if len(p.ids) == 0 {
		*p = localPayment{}
		delete(x.slots, h)
		x.free = append(x.free, slot)
		x.payments--
	}
	return dropBody
}

// payment returns a payment's view and its entries' IDs, oldest first.
func (x *localIndex) payment(projectID, paymentID string) (paymentView, []string, bool) {
	slot, ok := x.slots[hashKey(payKey(projectID, paymentID))]
	if !ok {
		return paymentView{}, nil, false
	}
	p := &x.pays[slot]
	ids := make([]string, len(p.ids))
	for i, id := range p.ids {
		ids[i] = id.String()
	}
	return p.view, ids, true
}

// views returns copies of the views that keep keeps.
func (x *localIndex) views(keep func(*paymentView) bool) []paymentView {
	var out []paymentView
	for i := range x.pays {
		if p := &x.pays[i]; len(p.ids) > 0 && keep(&p.view) {
			out = append(out, p.view)
		}
	}
	return out
}
