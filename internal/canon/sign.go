package canon

import (
	"strconv"
	"strings"
)

// What ecommpay's signature covers in a parsed document, and where it
// goes: the one place the handlers and the signature package learn it.

// SignatureHolder is the object whose "signature" member a callback's
// signature is: the top level when it has a string "signature", else
// "general" (None when there is none).
func (d *Doc) SignatureHolder() int32 {
	root := d.Root()
	if s := d.Get(root, "signature"); s != None && d.Kind(s) == String {
		return root
	}
	return d.Get(root, "general")
}

// EmbeddedSignature is the callback's signature: top-level "signature",
// else "general.signature"; "" when neither is a string.
func (d *Doc) EmbeddedSignature() string {
	if s := d.Get(d.SignatureHolder(), "signature"); s != None && d.Kind(s) == String {
		return d.Text(s)
	}
	return ""
}

// CanonicalBound is an upper bound of the length of d's canonical string,
// known from the parse.
func (d *Doc) CanonicalBound() int { return d.canon }

// SetProjectID sets member "project_id" of obj to id: a JSON number when
// id is an int64, as ecommpay sends it, else a string.
func (d *Doc) SetProjectID(obj int32, id string) {
	kind := String
	if isInt64Text(id) {
		kind = Number
	}
	d.Set(obj, "project_id", kind, id)
}

// isInt64Text reports whether strconv.ParseInt(s, 10, 64) succeeds,
// without its error allocation for the common plain case.
func isInt64Text(s string) bool {
	if len(s) > 0 && len(s) < 19 {
		plain := true
		for i := 0; i < len(s) && plain; i++ {
			plain = isDigit(s[i])
		}
		if plain {
			return true
		}
	}
	_, err := strconv.ParseInt(s, 10, 64)
	return err == nil
}

// SignGate signs d as a Gate request: any top-level and general
// signature removed, the rest (frame_mode aside) signed with k, the
// signature set as general.signature. general is d's "general" object.
func (k *Key) SignGate(d *Doc, general int32) {
	d.Delete(d.Root(), "signature")
	d.Delete(general, "signature")
	d.Set(general, "signature", String, k.signDoc(d, false))
}

// SignCallback signs d as a callback, every "signature" member left out,
// and sets the signature as member "signature" of holder.
func (k *Key) SignCallback(d *Doc, holder int32) {
	d.Set(holder, "signature", String, k.signDoc(d, true))
}

// signDoc is k's signature of d's canonical string.
func (k *Key) signDoc(d *Doc, callback bool) string {
	c := getCanon()
	c.out = d.Canonical(c.out[:0], callback)
	sig := k.Sign(c.out)
	c.release()
	return sig
}

// DropUnsigned removes the members a callback's signature does not cover
// that could carry data: "frame_mode" members and "signature" members
// other than the one EmbeddedSignature reads. Empty objects and arrays are
// not signed either but carry nothing, and ecommpay sends some
// (redirect_data.body), so they stay. It reports whether it removed
// anything.
func (d *Doc) DropUnsigned() bool { return d.prune(d.Root(), d.SignatureHolder()) }

// prune drops frame_mode and stray signature members below n.
func (d *Doc) prune(n, keepSig int32) bool {
	changed := false
	nd := &d.nodes[n]
	if nd.kind != Object && nd.kind != Array {
		return false
	}
	prev := None
	for c := nd.child; c != None; c = d.nodes[c].next {
		if nd.kind == Object {
			k := d.nodes[c].key
			if unsigned(k, true) && (k != "signature" || n != keepSig || d.nodes[c].kind != String) {
				changed = true
				d.unlink(n, prev, c)
				continue
			}
		}
		if d.prune(c, keepSig) {
			changed = true
		}
		prev = c
	}
	return changed
}

// signedItems counts the items the scalars below container n put into a
// callback's canonical string, stopping at limit.
func (d *Doc) signedItems(n int32, limit int) int {
	count := 0
	for ch := d.First(n); ch != None && count < limit; ch = d.Next(ch) {
		if d.Kind(n) == Object && unsigned(d.Key(ch), true) {
			continue
		}
		switch d.Kind(ch) {
		case Object, Array:
			count += d.signedItems(ch, limit-count)
		default:
			count++
		}
	}
	return count
}

// NotACallback says why a body whose signature verifies but that is not
// CallbackShaped is refused, to the sender and in "caddy ecommpay verify".
const NotACallback = "not a callback: a callback carries an object besides general with at least two signed values (payment, operation, request, ...)"

// CallbackShaped reports whether d has the shape of an ecommpay callback:
// a top-level member other than "general", named without ':', whose value
// is an object that puts at least two items into the canonical string.
// Every callback format has one (payment, operation, request, recurring,
// redirectData, ...). The canonical string of a Payment Page request can
// never read as one: its parameter names are unique and hold no ':'
// (payment_page refuses both), so each name begins exactly one item, while
// two items of one object begin with the same name. (An empty object, or
// a value with ':' read as a path, adds no second item.)
func (d *Doc) CallbackShaped() bool {
	for n := d.First(d.Root()); n != None; n = d.Next(n) {
		k := d.Key(n)
		if d.Kind(n) == Object && k != "general" && k != "" && !strings.Contains(k, ":") && d.signedItems(n, 2) >= 2 {
			return true
		}
	}
	return false
}
