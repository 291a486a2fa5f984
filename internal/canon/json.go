package canon

import (
	"errors"
	"fmt"
	"math/bits"
	"slices"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"
)

// Errors a body can fail parsing with: ErrMalformed for what is not
// strict JSON, the others for what exceeds the limits (callers answer 400
// and 413).
var (
	ErrMalformed     = errors.New("malformed JSON")
	errTooDeep       = errors.New("JSON nested too deeply")
	errTooManyLeaves = errors.New("JSON has too many values")
	errStringTooLong = errors.New("JSON string too long")
	errKeyTooLong    = errors.New("JSON member name too long")
	// errTooExpensive: the canonical string would be out of proportion to
	// the body, as when a long key sits above many values (each value's
	// item repeats its whole path). Refused before any of it is built.
	errTooExpensive = errors.New("JSON flattens to too large a canonical string")
)

// Limits bound what Parse accepts from untrusted input. Zero fields take
// the defaults below.
type Limits struct {
	MaxDepth  int // deepest nesting of objects and arrays
	MaxLeaves int // scalars plus empty containers
	MaxString int // bytes in one string or number, as sent
	MaxKey    int // bytes in one member name, as sent
}

// Default limits: far above any real ecommpay message, far below what hurts.
const (
	defaultMaxDepth  = 32
	defaultMaxLeaves = 10000
	defaultMaxString = 256 << 10
	defaultMaxKey    = 1 << 10 // ecommpay's names are under 64 bytes
)

// The canonical string of an accepted body is at most canonPerByte bytes
// per body byte plus canonSlack; Parse refuses more (errTooExpensive). A
// typical callback's is 1.2 times its size, and no signature vector's
// over 1.9; the slack lets small bodies nest freely. Everything done
// before the signature is checked is then linear in the body.
const (
	canonPerByte = 8
	canonSlack   = 16 << 10
)

// maxRenderedNumber bounds len(RenderNumber(lit)): an int64 is at most 20
// bytes, a float at most 21 ("-1.2345678901234E-308").
const maxRenderedNumber = 21

// renderedBound bounds len(RenderNumber(lit)) without rendering it. An
// integer literal never grows: it is itself, or a float of at most as many
// bytes once it no longer fits an int64 (19 digits and more).
func renderedBound(lit string) int {
	if strings.IndexAny(lit, ".eE") < 0 {
		return len(lit)
	}
	return maxRenderedNumber
}

func (l Limits) withDefaults() Limits {
	if l.MaxDepth <= 0 {
		l.MaxDepth = defaultMaxDepth
	}
	if l.MaxLeaves <= 0 {
		l.MaxLeaves = defaultMaxLeaves
	}
	if l.MaxString <= 0 {
		l.MaxString = defaultMaxString
	}
	if l.MaxKey <= 0 {
		l.MaxKey = defaultMaxKey
	}
	return l
}

// Kind is the type of a JSON value.
type Kind uint8

// The JSON kinds.
const (
	Null Kind = iota
	Bool
	Number
	String
	Object
	Array
)

// None is the node index of a missing value (Get of an absent member).
const None int32 = -1

// node is one value of a Doc. Nodes sit in one arena slice and link to
// children and siblings by index, so a parse allocates almost nothing.
type node struct {
	key   string // member name, decoded, when the parent is an object
	text  string // string: decoded; number: the literal as sent; bool: "true"/"false"
	child int32
	last  int32
	next  int32
	kind  Kind // last: 48 bytes a node, not 56
	// verbatim: a Number that renders as its literal (an integer of at
	// most 18 digits, not "-0"), so Canonical need not look at it again.
	verbatim bool
}

// Doc is a parsed JSON document that keeps member order and number
// literals exactly as sent, and can be edited and written back.
type Doc struct {
	nodes  []node
	src    string
	pos    int
	lim    Limits
	leaves int
	canon  int  // upper bound of the canonical string's length so far
	budget int  // the most canon may reach
	wild   bool // some member name is not tameKey: Canonical sorts all paths
	// Sizes of the widest object, for walkOrdered: its members, and the
	// bytes of their names plus one each.
	widest, widestNames int
}

// maxPooledNodes caps the arenas kept for reuse (a typical callback needs
// under 100 nodes): a hostile body must not pin its arena in the pool.
const maxPooledNodes = 4096

var docPool = sync.Pool{New: func() any { return &Doc{nodes: make([]node, 0, 128)} }}

// Parse parses strict JSON (RFC 8259, UTF-8, no duplicate keys) within lim.
// Release the Doc when done with it.
func Parse(data []byte, lim Limits) (*Doc, error) { return ParseString(string(data), lim) }

func ParseString(src string, lim Limits) (*Doc, error) {
	d := docPool.Get().(*Doc)
	d.nodes = d.nodes[:0]
	d.src = src
	d.pos = 0
	d.lim = lim.withDefaults()
	d.leaves = 0
	d.canon = 0
	d.wild = false
	d.widest, d.widestNames = 0, 0
	d.budget = canonPerByte*len(src) + canonSlack
	d.skipSpace()
	if _, err := d.value(0, 0); err != nil {
		d.Release()
		return nil, err
	}
	d.skipSpace()
	if d.pos != len(d.src) {
		d.Release()
		return nil, d.errf("data after the top-level value")
	}
	return d, nil
}

// Release returns the Doc to a pool; it must not be used afterwards.
func (d *Doc) Release() {
	if cap(d.nodes) > maxPooledNodes {
		return // let the GC take unusually large arenas
	}
	clear(d.nodes) // nodes point into the body: do not keep it alive
	d.nodes = d.nodes[:0]
	d.src = ""
	docPool.Put(d)
}

// errf reports malformed input at d.pos. Handlers send the message back,
// so it must never quote the input: say what was wrong and where.
func (d *Doc) errf(what string) error {
	return fmt.Errorf("%w at byte %d: %s", ErrMalformed, d.pos, what)
}

func (d *Doc) skipSpace() {
	for d.pos < len(d.src) && d.src[d.pos] <= ' ' { // one test for compact JSON
		switch d.src[d.pos] {
		case ' ', '\t', '\n', '\r':
			d.pos++
		default:
			return
		}
	}
}

func (d *Doc) newNode(k Kind) int32 {
	if len(d.nodes) == cap(d.nodes) && d.pos < len(d.src) {
		d.grow()
	}
	// Filled in place: a node built aside and copied in is read back
	// wider than it was written, which stalls.
	n := len(d.nodes)
	d.nodes = append(d.nodes, node{})
	nd := &d.nodes[n]
	nd.child, nd.last, nd.next, nd.kind = None, None, None, k
	return int32(n)
}

// grow makes room, once, for every node the rest of the body can hold, so
// a large body costs one arena rather than append's many. Each node after
// this one needs a ',', '[' or '{' before it, and two bytes of the body.
func (d *Doc) grow() {
	rest := d.src[d.pos:]
	n := min(strings.Count(rest, ",")+strings.Count(rest, "[")+strings.Count(rest, "{"), len(rest)/2) + 1
	d.nodes = slices.Grow(d.nodes, n)
}

func (d *Doc) leaf() error {
	d.leaves++
	if d.leaves > d.lim.MaxLeaves {
		return fmt.Errorf("%w: more than %d", errTooManyLeaves, d.lim.MaxLeaves)
	}
	return nil
}

// scalar counts a scalar at a path of plen bytes whose canonical value is
// at most vlen bytes: its item "path:value;" is what the canonical string
// spends on it.
func (d *Doc) scalar(plen, vlen int) error {
	if err := d.leaf(); err != nil {
		return err
	}
	d.canon += plen + vlen + 2
	if d.canon > d.budget {
		return fmt.Errorf("%w: over %d bytes for a body of %d", errTooExpensive, d.budget, len(d.src))
	}
	return nil
}

// childPath is the canonical path length of a child reached by a segment
// of seg bytes from a parent path of plen bytes, as canon.walk builds it
// (no ':' after an empty path).
func childPath(plen, seg int) int {
	if plen > 0 {
		plen++
	}
	return plen + seg
}

func (d *Doc) link(parent, child int32) {
	p := &d.nodes[parent]
	if p.last == None {
		p.child = child
	} else {
		d.nodes[p.last].next = child
	}
	p.last = child
}

// value parses one value at d.pos; depth counts enclosing containers and
// plen is the length of the value's canonical path.
func (d *Doc) value(depth, plen int) (int32, error) {
	if d.pos >= len(d.src) {
		return None, d.errf("unexpected end of input")
	}
	switch c := d.src[d.pos]; {
	case c == '{' || c == '[':
		if depth >= d.lim.MaxDepth {
			return None, fmt.Errorf("%w: more than %d levels", errTooDeep, d.lim.MaxDepth)
		}
		if c == '{' {
			return d.object(depth+1, plen)
		}
		return d.array(depth+1, plen)
	case c == '"':
		s, err := d.str(d.lim.MaxString, errStringTooLong)
		if err != nil {
			return None, err
		}
		n := d.newNode(String)
		d.nodes[n].text = s
		return n, d.scalar(plen, len(s))
	case c == '-' || (c >= '0' && c <= '9'):
		lit, integer, err := d.number()
		if err != nil {
			return None, err
		}
		n := d.newNode(Number)
		nd := &d.nodes[n]
		nd.text = lit
		bound := maxRenderedNumber // as renderedBound, which would scan lit again
		if integer {
			bound = len(lit)
			nd.verbatim = len(strings.TrimPrefix(lit, "-")) < 19 && lit != "-0"
		}
		return n, d.scalar(plen, bound)
	default:
		for _, w := range [...]struct {
			lit  string
			kind Kind
		}{{"true", Bool}, {"false", Bool}, {"null", Null}} {
			if len(d.src)-d.pos >= len(w.lit) && d.src[d.pos:d.pos+len(w.lit)] == w.lit {
				d.pos += len(w.lit)
				n := d.newNode(w.kind)
				if w.kind == Bool {
					d.nodes[n].text = w.lit
				}
				return n, d.scalar(plen, 1)
			}
		}
		return None, d.errf("unexpected character")
	}
}

func (d *Doc) object(depth, plen int) (int32, error) {
	obj := d.newNode(Object)
	d.pos++ // {
	d.skipSpace()
	if d.pos < len(d.src) && d.src[d.pos] == '}' {
		d.pos++
		return obj, d.leaf()
	}
	count, width, nameLen := 0, 0, 0
	var seen map[string]struct{} // only for wide objects; a linear scan is cheaper below
	var nameBits uint64          // a bit per name so far, by nameBit: most need no scan
	for {
		if d.pos >= len(d.src) || d.src[d.pos] != '"' {
			return None, d.errf("expected a member name")
		}
		at := d.pos
		key, tame, err := d.name()
		if err != nil {
			return None, err
		}
		if seen != nil {
			if _, dup := seen[key]; dup {
				d.pos = at
				return None, d.errf("duplicate key")
			}
			seen[key] = struct{}{}
		} else {
			if bit := nameBit(key); nameBits&bit == 0 {
				nameBits |= bit
			} else {
				for c := d.nodes[obj].child; c != None; c = d.nodes[c].next {
					if d.nodes[c].key == key {
						d.pos = at
						return None, d.errf("duplicate key")
					}
				}
			}
			if count++; count == 32 {
				seen = make(map[string]struct{}, 64)
				for c := d.nodes[obj].child; c != None; c = d.nodes[c].next {
					seen[d.nodes[c].key] = struct{}{}
				}
				seen[key] = struct{}{}
			}
		}
		d.skipSpace()
		if d.pos >= len(d.src) || d.src[d.pos] != ':' {
			return None, d.errf("expected ':'")
		}
		d.pos++
		d.skipSpace()
		seg := len(key) // ':' is doubled in paths, and no tame name has one
		if !tame {
			d.wild = true
			seg += strings.Count(key, ":")
		}
		v, err := d.value(depth, childPath(plen, seg))
		if err != nil {
			return None, err
		}
		d.nodes[v].key = key
		d.link(obj, v)
		width, nameLen = width+1, nameLen+len(key)+1
		if done, err := d.afterElement('}'); done || err != nil {
			d.widest, d.widestNames = max(d.widest, width), max(d.widestNames, nameLen)
			return obj, err
		}
	}
}

// nameBit is one of 64 bits chosen by a name's length and end bytes: two
// names with different bits differ.
func nameBit(key string) uint64 {
	h := uint(len(key))
	if len(key) > 0 {
		h += uint(key[0])*7 + uint(key[len(key)-1])*3
	}
	return 1 << (h & 63)
}

// afterElement consumes the ',' or the closing byte after a member or an
// item, and reports whether the container ended.
func (d *Doc) afterElement(closing byte) (bool, error) {
	d.skipSpace()
	if d.pos >= len(d.src) {
		return false, d.errf("unexpected end of input")
	}
	switch d.src[d.pos] {
	case ',':
		d.pos++
		d.skipSpace()
		return false, nil
	case closing:
		d.pos++
		return true, nil
	}
	return false, d.errf("expected ',' or '" + string(closing) + "'")
}

func (d *Doc) array(depth, plen int) (int32, error) {
	arr := d.newNode(Array)
	d.pos++ // [
	d.skipSpace()
	if d.pos < len(d.src) && d.src[d.pos] == ']' {
		d.pos++
		return arr, d.leaf()
	}
	for i, digits, next := 0, 1, 10; ; i++ {
		if i == next { // the index's decimal digits, without formatting it
			digits, next = digits+1, next*10
		}
		v, err := d.value(depth, childPath(plen, digits))
		if err != nil {
			return None, err
		}
		d.link(arr, v)
		if done, err := d.afterElement(']'); done || err != nil {
			return arr, err
		}
	}
}

// number parses a number literal at d.pos and reports whether it is an
// integer (no fraction, no exponent).
func (d *Doc) number() (lit string, integer bool, err error) {
	start := d.pos
	s := d.src
	i := d.pos
	if s[i] == '-' {
		i++
	}
	digits := func() int {
		j := i
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
		}
		return i - j
	}
	if i < len(s) && s[i] == '0' {
		i++
	} else if digits() == 0 {
		d.pos = i
		return "", false, d.errf("bad number")
	}
	integer = true
	if i < len(s) && s[i] == '.' {
		i++
		integer = false
		if digits() == 0 {
			d.pos = i
			return "", false, d.errf("bad number")
		}
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		integer = false
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			i++
		}
		if digits() == 0 {
			d.pos = i
			return "", false, d.errf("bad number")
		}
	}
	d.pos = i
	if i-start > d.lim.MaxString {
		return "", false, fmt.Errorf("%w: a number of %d bytes", errStringTooLong, i-start)
	}
	return s[start:i], integer, nil
}

// name parses a member name at d.pos as str does, and reports tameKey of
// it. A plain name, ASCII without escapes, takes one pass that marks what
// could make it wild (':', ' ', '0') as it looks for the quote; tameKey
// decides only names with a mark, and str takes any other name.
func (d *Doc) name() (key string, tame bool, err error) {
	s := d.src
	start := d.pos + 1
	var marks uint64
	for i := start; i+8 <= len(s); i += 8 {
		x := load64(s, i)
		m := stops(x)
		if m == 0 {
			if x&msb != 0 {
				break
			}
			marks |= wildMarks(x)
			continue
		}
		n := bits.TrailingZeros64(m) / 8
		before := uint64(1)<<(8*n) - 1 // the name's bytes in x
		end := i + n
		if s[end] != '"' || x&before&msb != 0 || end == start || end-start > d.lim.MaxKey {
			break
		}
		d.pos = end + 1
		key = s[start:end]
		if marks|wildMarks(x)&before == 0 {
			return key, true, nil
		}
		return key, tameKey(key), nil
	}
	if key, err = d.str(d.lim.MaxKey, errKeyTooLong); err != nil {
		return "", false, err
	}
	return key, tameKey(key), nil
}

// wildMarks marks the bytes of x that are ':', ' ' or '0', as stops does.
func wildMarks(x uint64) uint64 {
	c, sp, z := x^(lsb*':'), x^(lsb*' '), x^(lsb*'0')
	return ((c-lsb)&^c | (sp-lsb)&^sp | (z-lsb)&^z) & msb
}

// str parses a string at d.pos (on the opening quote) and returns it
// decoded; more than max bytes as sent fail with tooLong. Strings without
// escapes are slices of the source: no copy.
func (d *Doc) str(max int, tooLong error) (string, error) {
	s := d.src
	start := d.pos + 1
	i := start
	var high uint64
	for i+8 <= len(s) { // 8 bytes at a time, to the first stop
		x := load64(s, i)
		if m := stops(x); m != 0 {
			n := bits.TrailingZeros64(m) / 8
			high |= x & (1<<(8*n) - 1)
			i += n
			break
		}
		high |= x
		i += 8
	}
	ascii := high&msb == 0
	for ; i < len(s); i++ {
		c := s[i]
		if c == '"' {
			break
		}
		if c == '\\' {
			return d.strSlow(start, max, tooLong)
		}
		if c < 0x20 {
			d.pos = i
			return "", d.errf("control character in string")
		}
		if c >= 0x80 {
			ascii = false
		}
	}
	if i >= len(s) {
		d.pos = i
		return "", d.errf("unterminated string")
	}
	if i-start > max {
		return "", fmt.Errorf("%w: more than %d bytes", tooLong, max)
	}
	out := s[start:i]
	if !ascii && !utf8.ValidString(out) {
		d.pos = start
		return "", d.errf("invalid UTF-8 in string")
	}
	d.pos = i + 1
	return out, nil
}

const (
	lsb = 0x0101010101010101
	msb = 0x8080808080808080
)

// stops marks the bytes of x that end str's fast scan, '"', '\\' and
// controls, by their high bits: the classic has-zero-byte and
// has-less-than tests. A false mark only follows a true one, as a borrow
// carries up, so the lowest mark is the first stop.
func stops(x uint64) uint64 {
	q, b := x^(lsb*'"'), x^(lsb*'\\')
	return ((x-lsb*0x20)&^x | (q-lsb)&^q | (b-lsb)&^b) & msb
}

// load64 is s[i:i+8] as a little-endian word. The compiler combines the
// eight byte loads into one.
func load64(s string, i int) uint64 {
	s = s[i : i+8]
	return uint64(s[0]) | uint64(s[1])<<8 | uint64(s[2])<<16 | uint64(s[3])<<24 |
		uint64(s[4])<<32 | uint64(s[5])<<40 | uint64(s[6])<<48 | uint64(s[7])<<56
}

func (d *Doc) strSlow(start, max int, tooLong error) (string, error) {
	s := d.src
	buf := make([]byte, 0, 64)
	i := start
	for {
		if i >= len(s) {
			d.pos = i
			return "", d.errf("unterminated string")
		}
		if i-start > max {
			return "", fmt.Errorf("%w: more than %d bytes", tooLong, max)
		}
		c := s[i]
		switch {
		case c == '"':
			if !utf8.Valid(buf) {
				d.pos = start
				return "", d.errf("invalid UTF-8 in string")
			}
			d.pos = i + 1
			return string(buf), nil
		case c < 0x20:
			d.pos = i
			return "", d.errf("control character in string")
		case c != '\\':
			buf = append(buf, c)
			i++
			continue
		}
		if i+1 >= len(s) {
			d.pos = i
			return "", d.errf("unterminated string")
		}
		esc := s[i+1]
		i += 2
		switch esc {
		case '"', '\\', '/':
			buf = append(buf, esc)
		case 'b':
			buf = append(buf, '\b')
		case 'f':
			buf = append(buf, '\f')
		case 'n':
			buf = append(buf, '\n')
		case 'r':
			buf = append(buf, '\r')
		case 't':
			buf = append(buf, '\t')
		case 'u':
			r, ok := hex4(s, i)
			if !ok {
				d.pos = i
				return "", d.errf("bad \\u escape")
			}
			i += 4
			if r >= 0xD800 && r < 0xDC00 { // high surrogate: a low one must follow
				lo, ok := rune(0), false
				if i+6 <= len(s) && s[i] == '\\' && s[i+1] == 'u' {
					lo, ok = hex4(s, i+2)
				}
				if !ok || lo < 0xDC00 || lo > 0xDFFF {
					d.pos = i
					return "", d.errf("unpaired UTF-16 surrogate")
				}
				i += 6
				r = 0x10000 + (r-0xD800)<<10 + (lo - 0xDC00)
			} else if r >= 0xDC00 && r <= 0xDFFF {
				d.pos = i
				return "", d.errf("unpaired UTF-16 surrogate")
			}
			buf = utf8.AppendRune(buf, r)
		default:
			d.pos = i - 1
			return "", d.errf("bad escape")
		}
	}
}

func hex4(s string, i int) (rune, bool) {
	if i+4 > len(s) {
		return 0, false
	}
	var r rune
	for _, c := range []byte(s[i : i+4]) {
		switch {
		case c >= '0' && c <= '9':
			r = r<<4 | rune(c-'0')
		case c >= 'a' && c <= 'f':
			r = r<<4 | rune(c-'a'+10)
		case c >= 'A' && c <= 'F':
			r = r<<4 | rune(c-'A'+10)
		default:
			return 0, false
		}
	}
	return r, true
}

// Root is the top-level value.
func (d *Doc) Root() int32 { return 0 }

// Kind of node n.
func (d *Doc) Kind(n int32) Kind { return d.nodes[n].kind }

// Text of a scalar: a string's decoded text, a number's literal, "true" or
// "false", or "" for null.
func (d *Doc) Text(n int32) string { return d.nodes[n].text }

// Key is the member name of n inside its object.
func (d *Doc) Key(n int32) string { return d.nodes[n].key }

// First child of a container, or -1.
func (d *Doc) First(n int32) int32 { return d.nodes[n].child }

// Next sibling, or -1.
func (d *Doc) Next(n int32) int32 { return d.nodes[n].next }

// Get finds member key of object obj, or -1.
func (d *Doc) Get(obj int32, key string) int32 {
	if obj == None || d.nodes[obj].kind != Object {
		return None
	}
	for c := d.nodes[obj].child; c != None; c = d.nodes[c].next {
		if d.nodes[c].key == key {
			return c
		}
	}
	return None
}

// TextAt follows object keys from n and returns the scalar's text, or ""
// when a key is missing or the value is an object or an array.
func (d *Doc) TextAt(n int32, path ...string) string {
	for _, k := range path {
		n = d.Get(n, k)
	}
	if n == None || d.nodes[n].kind == Object || d.nodes[n].kind == Array {
		return ""
	}
	return d.nodes[n].text
}

// Set makes member key of object obj the scalar (kind, text), replacing
// any value there in place (order kept) or appending it. It returns the node.
func (d *Doc) Set(obj int32, key string, kind Kind, text string) int32 {
	n := d.Get(obj, key)
	if n == None {
		n = d.newNode(kind)
		d.nodes[n].key = key
		d.link(obj, n)
		d.wild = d.wild || !tameKey(key)
	}
	d.nodes[n].kind, d.nodes[n].text, d.nodes[n].verbatim = kind, text, false
	d.nodes[n].child, d.nodes[n].last = None, None
	return n
}

// Object returns member key of obj when it is an object, creating an empty
// one when the member is absent. It returns -1 when the member exists with
// another type.
func (d *Doc) Object(obj int32, key string) int32 {
	n := d.Get(obj, key)
	if n == None {
		n = d.newNode(Object)
		d.nodes[n].key = key
		d.link(obj, n)
		d.wild = d.wild || !tameKey(key)
	}
	if d.nodes[n].kind != Object {
		return None
	}
	return n
}

// Delete removes member key of obj and reports whether it was there.
func (d *Doc) Delete(obj int32, key string) bool {
	if obj == None || d.nodes[obj].kind != Object {
		return false
	}
	prev := None
	for c := d.nodes[obj].child; c != None; prev, c = c, d.nodes[c].next {
		if d.nodes[c].key == key {
			d.unlink(obj, prev, c)
			return true
		}
	}
	return false
}

// unlink removes child c, which follows prev (or None when it comes
// first), from container n.
func (d *Doc) unlink(n, prev, c int32) {
	if prev == None {
		d.nodes[n].child = d.nodes[c].next
	} else {
		d.nodes[prev].next = d.nodes[c].next
	}
	if d.nodes[n].last == c {
		d.nodes[n].last = prev
	}
}

// AppendJSON writes the document as compact JSON. Number literals are
// written exactly as they were sent.
func (d *Doc) AppendJSON(dst []byte) []byte { return d.appendValue(dst, 0) }

func (d *Doc) appendValue(dst []byte, n int32) []byte {
	nd := &d.nodes[n]
	switch nd.kind {
	case Null:
		return append(dst, "null"...)
	case Bool, Number:
		return append(dst, nd.text...)
	case String:
		return AppendQuoted(dst, nd.text)
	case Object:
		dst = append(dst, '{')
		for c := nd.child; c != None; c = d.nodes[c].next {
			if c != nd.child {
				dst = append(dst, ',')
			}
			dst = AppendQuoted(dst, d.nodes[c].key)
			dst = append(dst, ':')
			dst = d.appendValue(dst, c)
		}
		return append(dst, '}')
	default:
		dst = append(dst, '[')
		for c := nd.child; c != None; c = d.nodes[c].next {
			if c != nd.child {
				dst = append(dst, ',')
			}
			dst = d.appendValue(dst, c)
		}
		return append(dst, ']')
	}
}

const hexDigits = "0123456789abcdef"

// AppendQuoted writes s as a JSON string, escaping only what JSON requires.
func AppendQuoted(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' {
			continue
		}
		dst = append(dst, s[start:i]...)
		switch c {
		case '"', '\\':
			dst = append(dst, '\\', c)
		case '\n':
			dst = append(dst, '\\', 'n')
		case '\r':
			dst = append(dst, '\\', 'r')
		case '\t':
			dst = append(dst, '\\', 't')
		default:
			dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
		}
		start = i + 1
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// itoa32 is strconv.Itoa for array indexes without an allocation.
func appendIndex(dst []byte, i int) []byte { return strconv.AppendInt(dst, int64(i), 10) }
