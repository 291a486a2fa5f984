package canon

import (
	"crypto/hmac"
	"crypto/sha512"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"hash"
	"math"
	"math/bits"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// The canonical string follows ecommpay's PHP SDK, our reference: flatten
// to "path:value" items (object keys with ':' doubled, array indexes in
// decimal, "frame_mode" dropped at any depth, empty containers dropped),
// sort the items by path in PHP's natural order (stable), join with ';'.
// The signature is base64(HMAC-SHA512(secret, canonical)).

// item is one "path:value" entry inside canon.buf.
type item struct{ start, pathEnd, end int32 }

// canon builds one canonical string; pooled so signing allocates nothing.
type canon struct {
	buf     []byte
	items   []item
	scratch []item // for merging, when there are many items
	path    []byte
	out     []byte
	// For walkOrdered: the members of the objects being walked, a stack
	// of one run per object, and their sort keys.
	kids []kid
	keys []byte
	sep  bool // an item was written: the next needs a ';'
}

var canonPool = sync.Pool{New: func() any {
	return &canon{buf: make([]byte, 0, 2048), items: make([]item, 0, 64), path: make([]byte, 0, 64), out: make([]byte, 0, 2048)}
}}

// Buffers above these sizes are left to the GC rather than pooled, so one
// large body does not pin its memory (a typical callback needs 2 KiB and
// 60 items).
const (
	maxPooledBytes = 64 << 10
	maxPooledItems = 4096
)

func getCanon() *canon {
	c := canonPool.Get().(*canon)
	c.buf, c.items, c.path, c.out = c.buf[:0], c.items[:0], c.path[:0], c.out[:0]
	c.kids, c.keys, c.sep = c.kids[:0], c.keys[:0], false
	return c
}

func (c *canon) release() {
	if cap(c.buf) <= maxPooledBytes && cap(c.out) <= maxPooledBytes && cap(c.path) <= maxPooledBytes &&
		cap(c.keys) <= maxPooledBytes && cap(c.items) <= maxPooledItems && cap(c.scratch) <= maxPooledItems &&
		cap(c.kids) <= maxPooledItems/2 { // a kid is twice an item
		canonPool.Put(c)
	}
}

// appendKey appends an object key to a path with ':' escaped as '::'.
func appendKey(dst []byte, key string) []byte {
	for {
		i := strings.IndexByte(key, ':')
		if i < 0 {
			return append(dst, key...)
		}
		dst = append(dst, key[:i+1]...)
		dst = append(dst, ':')
		key = key[i+1:]
	}
}

// add records one item; value is already rendered.
func (c *canon) add(path []byte, value string) {
	start := int32(len(c.buf))
	c.buf = append(c.buf, path...)
	pathEnd := int32(len(c.buf))
	c.buf = append(c.buf, ':')
	c.buf = append(c.buf, value...)
	c.items = append(c.items, item{start, pathEnd, int32(len(c.buf))})
}

// finish sorts the items and appends them, joined, to dst.
func (c *canon) finish(dst []byte) []byte {
	c.sort()
	if n := len(c.items); n > 0 {
		dst = slices.Grow(dst, len(c.buf)+n-1) // exactly: grow once
	}
	for i, it := range c.items {
		if i > 0 {
			dst = append(dst, ';')
		}
		dst = append(dst, c.buf[it.start:it.end]...)
	}
	return dst
}

// sort orders the items stably by path in PHP's natural order.
//
// Paths share long prefixes (every item under a key repeats it), so what
// costs is the bytes comparisons read, not their number. Both sorts below
// charge each comparison to the item it places and place an item at most
// ⌈log2 n⌉+2 times (16 at the default MaxLeaves); items already in order,
// as an array's are, take about one comparison each. A comparison reads the
// common prefix a word at a time, and past it no more of either path than
// of the placed one, save whitespace the natural order skips in the
// other (a run lies within one key: at most MaxKey). So the sort reads
// O((C+n)·log2 n) bytes for a canonical string of C bytes and n items.
// slices.SortStableFunc also makes O(n·log n) comparisons, but its
// rotations compare one pivot with many items, reading its path each time.
func (c *canon) sort() { sortItems(c.buf, c.items, &c.scratch) }

// sortItems sorts items by their paths in buf, as canon.sort describes;
// scratch is grown for the merge when there are many.
func sortItems(buf []byte, items []item, scratch *[]item) {
	n := len(items)
	if n <= 256 {
		// Fewest comparisons, which dominate; moving 12-byte items is
		// cheap at this size.
		insertion(buf, items)
		return
	}
	// Bottom-up merge sort over runs of 32 sorted as above.
	const run = 32
	for lo := 0; lo < n; lo += run {
		insertion(buf, items[lo:min(lo+run, n)])
	}
	if cap(*scratch) < n {
		*scratch = make([]item, n)
	}
	src, dst := items, (*scratch)[:n]
	for width := run; width < n; width *= 2 {
		for lo := 0; lo < n; lo += 2 * width {
			mid, hi := min(lo+width, n), min(lo+2*width, n)
			if mid == hi || natCompare(pathOf(buf, src[mid]), pathOf(buf, src[mid-1])) >= 0 {
				copy(dst[lo:hi], src[lo:hi]) // in order already, as array items are
				continue
			}
			merge(buf, dst[lo:hi], src[lo:mid], src[mid:hi])
		}
		src, dst = dst, src
	}
	copy(items, src) // a no-op when the last pass wrote items
}

func pathOf(buf []byte, it item) []byte { return buf[it.start:it.pathEnd] }

// insertion is a stable binary insertion sort.
func insertion(buf []byte, items []item) {
	for i := 1; i < len(items); i++ {
		x := items[i]
		px := pathOf(buf, x)
		if natCompare(px, pathOf(buf, items[i-1])) >= 0 {
			continue // in place already, as array items are
		}
		lo, hi := 0, i-1
		for lo < hi {
			m := int(uint(lo+hi) >> 1)
			if natCompare(px, pathOf(buf, items[m])) < 0 {
				hi = m
			} else {
				lo = m + 1
			}
		}
		copy(items[lo+1:i+1], items[lo:i])
		items[lo] = x
	}
}

// merge merges sorted a and b into dst, a's items first among equals.
func merge(buf []byte, dst, a, b []item) {
	i, j, k := 0, 0, 0
	for i < len(a) && j < len(b) {
		if natCompare(pathOf(buf, b[j]), pathOf(buf, a[i])) < 0 {
			dst[k] = b[j]
			j++
		} else {
			dst[k] = a[i]
			i++
		}
		k++
	}
	k += copy(dst[k:], a[i:])
	copy(dst[k:], b[j:])
}

// walk flattens node n under c.path. stripSignatures drops every member
// named "signature", as callback verification does.
func (c *canon) walk(d *Doc, n int32, stripSignatures bool) {
	nd := &d.nodes[n]
	switch nd.kind {
	case Object, Array:
		base := len(c.path)
		i := 0
		for ch := nd.child; ch != None; ch = d.nodes[ch].next {
			if nd.kind == Object {
				k := d.nodes[ch].key
				if unsigned(k, stripSignatures) {
					continue
				}
				if base > 0 {
					c.path = append(c.path, ':')
				}
				c.path = appendKey(c.path, k)
			} else {
				if base > 0 {
					c.path = append(c.path, ':')
				}
				c.path = appendIndex(c.path, i)
				i++
			}
			c.walk(d, ch, stripSignatures)
			c.path = c.path[:base]
		}
	case String:
		c.add(c.path, nd.text)
	case Number:
		// As add, rendering in place: a body of floats allocates nothing.
		start := int32(len(c.buf))
		c.buf = append(c.buf, c.path...)
		pathEnd := int32(len(c.buf))
		if c.buf = append(c.buf, ':'); nd.verbatim {
			c.buf = append(c.buf, nd.text...)
		} else {
			c.buf = appendNumber(c.buf, nd.text)
		}
		c.items = append(c.items, item{start, pathEnd, int32(len(c.buf))})
	case Bool:
		if nd.text == "true" {
			c.add(c.path, "1")
		} else {
			c.add(c.path, "0")
		}
	case Null:
		c.add(c.path, "")
	}
}

// Canonical appends the canonical string of the whole document to dst.
// With stripSignatures every "signature" member is left out (callbacks).
func (d *Doc) Canonical(dst []byte, stripSignatures bool) []byte {
	c := getCanon()
	if !d.wild {
		dst = slices.Grow(dst, d.canon)
		// Room for the widest object's members and their names, and a few
		// above it: a wide object costs one allocation, not a doubling series.
		c.kids = slices.Grow(c.kids, d.widest+64)
		c.keys = slices.Grow(c.keys, d.widestNames+1024)
		dst = c.walkOrdered(d, d.Root(), stripSignatures, dst)
		c.release()
		return dst
	}
	// Parse bounded the items' size and count: allocate them once.
	c.buf = slices.Grow(c.buf, d.canon)
	c.items = slices.Grow(c.items, d.leaves)
	c.walk(d, d.Root(), stripSignatures)
	dst = c.finish(dst)
	c.release()
	return dst
}

// tameKey reports whether a member name keeps walkOrdered exact: not
// empty (an empty path takes no ':'), no ':' (doubled in paths), no
// whitespace (skipped by the natural order) and no digit run with a
// leading zero (compared left-aligned).
func tameKey(k string) bool {
	if k == "" {
		return false
	}
	for i := 0; i < len(k); i++ {
		switch nameClass[k[i]] {
		case plainByte:
			continue
		case wildByte:
			return false
		}
		if k[i] == '0' && i+1 < len(k) && isDigit(k[i+1]) && (i == 0 || !isDigit(k[i-1])) {
			return false
		}
	}
	return true
}

// nameClass classes bytes for tameKey: a table lookup a byte.
var nameClass = func() (t [256]uint8) {
	for c := range 256 {
		switch {
		case c == ':' || isSpace(byte(c)):
			t[c] = wildByte
		case isDigit(byte(c)):
			t[c] = digitByte
		}
	}
	return t
}()

const (
	plainByte = iota
	wildByte
	digitByte
)

// walkOrdered writes the canonical string of node n under c.path to dst
// as walk and finish do, but sorts each object's members instead of all
// paths: far fewer and shorter comparisons, and no item buffer. Exact
// only when every member name is tame (Doc.wild is false). Then a path is
// a sequence of tokens, bytes and digit runs (canonical numbers, no
// spaces), and natCompare orders paths lexicographically by token: digit
// runs by value, between the bytes below '0' and those above '9'; a
// prefix first. Two paths first differ below their deepest common object,
// in the members they pass through, "P:a…" against "P:b…"; as ':' ends a
// digit run and no name holds one, they compare as "a:" against "b:",
// without the ':' for a scalar, whose path ends there. An array's items
// are in order already: their indexes differ in value.
func (c *canon) walkOrdered(d *Doc, n int32, stripSignatures bool, dst []byte) []byte {
	nd := &d.nodes[n]
	plen := len(c.path)
	switch nd.kind {
	case Object:
		first, keysAt := len(c.kids), len(c.keys)
		for ch := nd.child; ch != None; ch = d.nodes[ch].next {
			k := d.nodes[ch].key
			if unsigned(k, stripSignatures) {
				continue
			}
			start := len(c.keys)
			c.keys = append(c.keys, k...)
			container := d.nodes[ch].kind == Object || d.nodes[ch].kind == Array
			if container {
				c.keys = append(c.keys, ':')
			}
			c.kids = append(c.kids, kid{})
			c.kids[len(c.kids)-1].set(k, container, start, len(c.keys), ch)
		}
		sortKids(c.keys, c.kids[first:])
		for i := first; i < len(c.kids); i++ { // c.kids may move while walking below
			ch := c.kids[i].node
			if plen > 0 {
				c.path = append(c.path, ':')
			}
			c.path = append(c.path, d.nodes[ch].key...)
			dst = c.walkOrdered(d, ch, stripSignatures, dst)
			c.path = c.path[:plen]
		}
		c.kids, c.keys = c.kids[:first], c.keys[:keysAt]
		return dst
	case Array:
		i := 0
		for ch := nd.child; ch != None; ch = d.nodes[ch].next {
			if plen > 0 {
				c.path = append(c.path, ':')
			}
			c.path = appendIndex(c.path, i)
			i++
			dst = c.walkOrdered(d, ch, stripSignatures, dst)
			c.path = c.path[:plen]
		}
		return dst
	}
	if c.sep {
		dst = append(dst, ';')
	}
	c.sep = true
	dst = append(append(dst, c.path...), ':')
	switch nd.kind {
	case String:
		dst = append(dst, nd.text...)
	case Number:
		if nd.verbatim {
			dst = append(dst, nd.text...)
		} else {
			dst = appendNumber(dst, nd.text)
		}
	case Bool:
		if nd.text == "true" {
			dst = append(dst, '1')
		} else {
			dst = append(dst, '0')
		}
	}
	return dst
}

// kid is an object member waiting for walkOrdered, with its sort key
// (its name, and ':' after a container's) in canon.keys.
type kid struct {
	word       uint64 // the sort key's first 8 bytes, big-endian, zero-padded
	start, end int32
	node       int32
	plain      bool // no digit in those bytes
}

// set fills in place the kid of member node named k, its sort key at
// canon.keys[start:end]. In place, and the word read from k, not from
// canon.keys: reading back wider than just written, as a copy of a kid
// built aside or a word of bytes just stored would, stalls.
func (kd *kid) set(k string, container bool, start, end int, node int32) {
	var w uint64
	if n := len(k); n >= 8 {
		w = bits.ReverseBytes64(load64(k, 0))
	} else {
		for i := 0; i < n; i++ {
			w |= uint64(k[i]) << (56 - 8*i)
		}
		if container {
			w |= ':' << (56 - 8*n)
		}
	}
	// A digit is a byte below 10 once '0' is subtracted out; padding is not.
	y := w ^ (lsb * '0')
	kd.word, kd.start, kd.end, kd.node, kd.plain = w, int32(start), int32(end), node, (y-lsb*10)&^y&msb == 0
}

// compareKids is natCompare of the sort keys of a and b. Within tame names
// (see walkOrdered) it compares bytes as they are until a digit, so plain
// words that differ decide: a key that ends first is padded with zeros,
// below any byte that differs from them.
func compareKids(keys []byte, a, b *kid) int {
	if a.plain && b.plain && a.word != b.word {
		if a.word < b.word {
			return -1
		}
		return 1
	}
	return natCompare(keys[a.start:a.end], keys[b.start:b.end])
}

// sortKids orders an object's members by sort key. The keys are distinct,
// as names are, and natCompare orders distinct tame keys strictly, so any
// sort gives this one order: binary insertion for the few members objects
// have, pdqsort, O(n log n) at worst, for wide ones.
func sortKids(keys []byte, kids []kid) {
	if len(kids) > 24 {
		slices.SortFunc(kids, func(a, b kid) int { return compareKids(keys, &a, &b) })
		return
	}
	for i := 1; i < len(kids); i++ {
		if compareKids(keys, &kids[i], &kids[i-1]) > 0 {
			continue
		}
		x := kids[i]
		lo, hi := 0, i-1
		for lo < hi {
			m := int(uint(lo+hi) >> 1)
			if compareKids(keys, &x, &kids[m]) < 0 {
				hi = m
			} else {
				lo = m + 1
			}
		}
		copy(kids[lo+1:i+1], kids[lo:i])
		kids[lo] = x
	}
}

// RenderNumber renders a JSON number literal as PHP's string cast does after
// json_decode: integers that fit in int64 as themselves, all else as a float
// with 14 significant digits.
func RenderNumber(lit string) string {
	if isInt64(lit) {
		if lit == "-0" {
			return "0"
		}
		return lit
	}
	return string(appendNumber(nil, lit))
}

// appendNumber appends RenderNumber(lit) to dst.
func appendNumber(dst []byte, lit string) []byte {
	if isInt64(lit) {
		if lit == "-0" {
			return append(dst, '0')
		}
		return append(dst, lit...)
	}
	f, _ := strconv.ParseFloat(lit, 64) // ±Inf on overflow, as PHP
	return appendPHPFloat(dst, f)
}

func isInt64(lit string) bool {
	digits := strings.TrimPrefix(lit, "-")
	switch {
	case strings.IndexAny(lit, ".eE") >= 0:
		return false
	case len(digits) < 19: // fits whatever the digits: no ParseInt, no error to allocate
		return true
	case len(digits) > 19:
		return false
	}
	_, err := strconv.ParseInt(lit, 10, 64)
	return err == nil
}

// appendPHPFloat appends PHP's (string) cast of f at precision 14.
func appendPHPFloat(out []byte, f float64) []byte {
	switch {
	case math.IsInf(f, 1):
		return append(out, "INF"...)
	case math.IsInf(f, -1):
		return append(out, "-INF"...)
	case math.IsNaN(f):
		return append(out, "NAN"...)
	case f == 0:
		if math.Signbit(f) {
			return append(out, "-0"...)
		}
		return append(out, '0')
	}
	var b [32]byte
	e := strconv.AppendFloat(b[:0], math.Abs(f), 'e', 13, 64) // d.ddddddddddddde±XX
	mark := slices.Index(e, 'e')
	exp := 0
	for _, c := range e[mark+2:] {
		exp = exp*10 + int(c-'0')
	}
	if e[mark+1] == '-' {
		exp = -exp
	}
	var db [14]byte
	digits := append(append(db[:0], e[0]), e[2:mark]...)
	for len(digits) > 1 && digits[len(digits)-1] == '0' {
		digits = digits[:len(digits)-1]
	}
	decpt := exp + 1
	if f < 0 {
		out = append(out, '-')
	}
	if decpt < -3 || decpt > 14 {
		out = append(out, digits[0], '.')
		if len(digits) == 1 {
			out = append(out, '0')
		} else {
			out = append(out, digits[1:]...)
		}
		out = append(out, 'E')
		if decpt-1 < 0 {
			out = append(out, '-')
			out = strconv.AppendInt(out, int64(1-decpt), 10)
		} else {
			out = append(out, '+')
			out = strconv.AppendInt(out, int64(decpt-1), 10)
		}
		return out
	}
	switch {
	case decpt <= 0:
		out = append(out, '0', '.')
		for i := 0; i < -decpt; i++ {
			out = append(out, '0')
		}
		out = append(out, digits...)
	case decpt >= len(digits):
		out = append(out, digits...)
		for i := len(digits); i < decpt; i++ {
			out = append(out, '0')
		}
	default:
		out = append(out, digits[:decpt]...)
		out = append(out, '.')
		out = append(out, digits[decpt:]...)
	}
	return out
}

// natCompare is PHP 8's strnatcmp_ex (case-sensitive) on bytes: digit runs
// compare by value, whitespace is skipped where a step starts, and leading
// zeros at the very start are ignored.
func natCompare(a, b []byte) int {
	if len(a) == 0 || len(b) == 0 {
		return len(a) - len(b)
	}
	// Fast path: over an equal prefix both sides take the same steps, and
	// a step starts on both just after any byte that is neither digit nor
	// space (no digit run or skipped space goes past it). Paths share long
	// prefixes, so find the prefix a word at a time and resume after its
	// last such byte.
	i := commonPrefix(a, b)
	for i > 0 && (isDigit(a[i-1]) || isSpace(a[i-1])) {
		i--
	}
	if i > 0 {
		switch {
		case i == len(a) && i == len(b):
			return 0
		case i == len(a):
			return -1
		case i == len(b):
			return 1
		}
		return natSteps(a, i, b, i)
	}
	ai, bi := 0, 0
	// Leading zeros are skipped only before the first step.
	for ai+1 < len(a) && a[ai] == '0' && isDigit(a[ai+1]) {
		ai++
	}
	for bi+1 < len(b) && b[bi] == '0' && isDigit(b[bi+1]) {
		bi++
	}
	return natSteps(a, ai, b, bi)
}

// commonPrefix is the length of the longest common prefix of a and b.
func commonPrefix(a, b []byte) int {
	n := min(len(a), len(b))
	i := 0
	for i+8 <= n && binary.LittleEndian.Uint64(a[i:]) == binary.LittleEndian.Uint64(b[i:]) {
		i += 8
	}
	for i < n && a[i] == b[i] {
		i++
	}
	return i
}

// natSteps runs strnatcmp's main loop from ai and bi.
func natSteps(a []byte, ai int, b []byte, bi int) int {
	for {
		// Reads past the end see a NUL, as in C: neither space nor digit.
		for ai < len(a) && isSpace(a[ai]) {
			ai++
		}
		for bi < len(b) && isSpace(b[bi]) {
			bi++
		}
		var ca, cb byte
		if ai < len(a) {
			ca = a[ai]
		}
		if bi < len(b) {
			cb = b[bi]
		}
		if isDigit(ca) && isDigit(cb) {
			var r int
			if ca == '0' || cb == '0' {
				r = compareLeft(a, &ai, b, &bi)
			} else {
				r = compareRight(a, &ai, b, &bi)
			}
			if r != 0 {
				return r
			}
			switch {
			case ai >= len(a) && bi >= len(b):
				return 0
			case ai >= len(a):
				return -1
			case bi >= len(b):
				return 1
			}
			ca, cb = a[ai], b[bi]
		}
		if ca != cb {
			return int(ca) - int(cb)
		}
		ai++
		bi++
		switch {
		case ai >= len(a) && bi >= len(b):
			return 0
		case ai >= len(a):
			return -1
		case bi >= len(b):
			return 1
		}
	}
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }
func isSpace(c byte) bool { return c == ' ' || (c >= '\t' && c <= '\r') }

func digitAt(s []byte, i int) bool { return i < len(s) && isDigit(s[i]) }

// compareRight compares right-aligned digit runs: the longer run wins, else
// the first difference.
func compareRight(a []byte, ai *int, b []byte, bi *int) int {
	bias := 0
	for ; ; *ai, *bi = *ai+1, *bi+1 {
		da, db := digitAt(a, *ai), digitAt(b, *bi)
		switch {
		case !da && !db:
			return bias
		case !da:
			return -1
		case !db:
			return 1
		case bias == 0 && a[*ai] != b[*bi]:
			bias = int(a[*ai]) - int(b[*bi])
		}
	}
}

// compareLeft compares left-aligned digit runs (one starts with '0').
func compareLeft(a []byte, ai *int, b []byte, bi *int) int {
	for ; ; *ai, *bi = *ai+1, *bi+1 {
		da, db := digitAt(a, *ai), digitAt(b, *bi)
		switch {
		case !da && !db:
			return 0
		case !da:
			return -1
		case !db:
			return 1
		case a[*ai] != b[*bi]:
			return int(a[*ai]) - int(b[*bi])
		}
	}
}

// Key signs and verifies with one secret. It is safe for concurrent use.
type Key struct {
	secret []byte
	macs   sync.Pool // of *mac, keyed once: hmac.New allocates and hashes the key each time
}

// mac is a keyed HMAC state and room for its sum: a sum into a caller's
// array, through the hash.Hash interface, would move the array to the heap.
type mac struct {
	h   hash.Hash
	sum [sha512.Size]byte
}

// NewKey makes a Key for secret.
func NewKey(secret string) *Key {
	k := &Key{secret: []byte(secret)}
	k.macs.New = func() any { return &mac{h: hmac.New(sha512.New, k.secret)} }
	return k
}

// mac returns a state holding HMAC-SHA512(secret, msg) in its sum; put it
// back in k.macs when done.
func (k *Key) mac(msg []byte) *mac {
	m := k.macs.Get().(*mac)
	m.h.Reset()
	m.h.Write(msg)
	m.h.Sum(m.sum[:0])
	return m
}

// Sign returns the base64 signature of a canonical string.
func (k *Key) Sign(canonical []byte) string {
	m := k.mac(canonical)
	s := base64.StdEncoding.EncodeToString(m.sum[:])
	k.macs.Put(m)
	return s
}

// Verify reports, in constant time, whether signature is the base64
// signature of canonical.
func (k *Key) Verify(canonical []byte, signature string) bool {
	if len(signature) != base64.StdEncoding.EncodedLen(sha512.Size) {
		return false
	}
	var got [66]byte // 88 base64 characters decode to at most 66 bytes
	n, err := base64.StdEncoding.Decode(got[:], []byte(signature))
	if err != nil || n != sha512.Size {
		return false
	}
	m := k.mac(canonical)
	ok := hmac.Equal(got[:n], m.sum[:])
	k.macs.Put(m)
	return ok
}

// AppendPairs appends to dst the canonical string of flat parameters, as
// a Payment Page request carries them. Values are already rendered.
func AppendPairs(dst []byte, pairs [][2]string) []byte {
	c := getCanon()
	for _, p := range pairs {
		if unsigned(p[0], false) {
			continue
		}
		c.path = appendKey(c.path[:0], p[0])
		c.add(c.path, p[1])
	}
	dst = c.finish(dst)
	c.release()
	return dst
}

// unsigned reports whether a member named k is left out of the canonical
// string: "frame_mode" always, "signature" when a callback is verified.
func unsigned(k string, callback bool) bool {
	return k == "frame_mode" || (callback && k == "signature")
}

// WellFormedSignature reports whether sig could be a signature at all:
// base64 of exactly one HMAC-SHA512.
func WellFormedSignature(sig string) bool {
	if len(sig) != base64.StdEncoding.EncodedLen(sha512.Size) {
		return false
	}
	raw, err := base64.StdEncoding.DecodeString(sig)
	return err == nil && len(raw) == sha512.Size
}

// AppendSign appends k.Sign(canonical) to dst.
func (k *Key) AppendSign(dst, canonical []byte) []byte {
	m := k.mac(canonical)
	dst = base64.StdEncoding.AppendEncode(dst, m.sum[:])
	k.macs.Put(m)
	return dst
}

// Why a flat parameter cannot be signed, in the order CheckPair tests.
var (
	// errPairSemicolon: ';' joins the items, so a name or value holding
	// one could pass for two parameters.
	errPairSemicolon = errors.New("';' is not allowed in Payment Page parameters")
	// errPairColon: a name with ':' makes the signed string read as a
	// nested object, a callback's shape (see Doc.CallbackShaped).
	errPairColon = errors.New("':' is not allowed in Payment Page parameter names")
	// errPairSignature: the signature is never among what it signs.
	errPairSignature = errors.New("leave signature out: it is computed here")
)

// CheckPair reports why the parameter name=value cannot be signed, or nil.
func CheckPair(name, value string) error {
	switch {
	case strings.IndexByte(name, ';') >= 0 || strings.IndexByte(value, ';') >= 0:
		return errPairSemicolon
	case strings.IndexByte(name, ':') >= 0:
		return errPairColon
	case name == "signature":
		return errPairSignature
	}
	return nil
}
