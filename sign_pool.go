package ecommpay

import (
	"crypto/sha512"
	"encoding/base64"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"unsafe"
)

// Working memory for the signing modes, so a signed request allocates
// little beyond what outlives it.

// sigLen is the length of a base64 HMAC-SHA512 signature.
const sigLen = (sha512.Size + 2) / 3 * 4

// signScratch is one signing request's buffers.
type signScratch struct {
	pairs [][2]string
	// arena holds unescaped query keys and values; pairs point into it,
	// so nothing from it may outlive the request (see own).
	arena  []byte
	canon  []byte
	url    []byte
	out    []byte
	sig    [sigLen]byte
	fields pageFields
}

var signPool = sync.Pool{New: func() any {
	return &signScratch{
		pairs: make([][2]string, 0, 32), arena: make([]byte, 0, 1024),
		canon: make([]byte, 0, 1024), url: make([]byte, 0, 1024), out: make([]byte, 0, 1024),
	}
}}

// maxPooledScratch bounds what goes back to the pool, so one huge request
// does not pin its memory.
const maxPooledScratch = 64 << 10

func getScratch() *signScratch { return signPool.Get().(*signScratch) }

func (s *signScratch) release() {
	if cap(s.arena) > maxPooledScratch || cap(s.canon) > maxPooledScratch || cap(s.url) > maxPooledScratch ||
		cap(s.out) > maxPooledScratch || cap(s.pairs) > 1024 {
		return
	}
	clear(s.pairs[:cap(s.pairs)]) // do not keep request strings alive
	s.fields = pageFields{}
	s.pairs, s.arena, s.canon, s.url, s.out = s.pairs[:0], s.arena[:0], s.canon[:0], s.url[:0], s.out[:0]
	signPool.Put(s)
}

// own returns v, copied when it lies in the arena: for what outlives the
// request (the journal keeps the event).
func (s *signScratch) own(v string) string {
	if v == "" || cap(s.arena) == 0 {
		return v
	}
	p := uintptr(unsafe.Pointer(unsafe.StringData(v)))
	base := uintptr(unsafe.Pointer(unsafe.SliceData(s.arena)))
	if p >= base && p < base+uintptr(cap(s.arena)) {
		return strings.Clone(v)
	}
	return v
}

// appendUnescaped appends url.QueryUnescape(v) to dst. ok is false where
// QueryUnescape fails: a '%' not followed by two hex digits.
func appendUnescaped(dst []byte, v string) (_ []byte, ok bool) {
	start := 0
	for i := 0; i < len(v); i++ {
		switch v[i] {
		case '%':
			if i+2 >= len(v) || !isHex(v[i+1]) || !isHex(v[i+2]) {
				return dst, false
			}
			dst = append(append(dst, v[start:i]...), unhex(v[i+1])<<4|unhex(v[i+2]))
			i += 2
			start = i + 1
		case '+':
			dst = append(append(dst, v[start:i]...), ' ')
			start = i + 1
		}
	}
	return append(dst, v[start:]...), true
}

func isHex(c byte) bool { return isDigit(c) || c|0x20 >= 'a' && c|0x20 <= 'f' }

func unhex(c byte) byte {
	if isDigit(c) {
		return c - '0'
	}
	return (c | 0x20) - 'a' + 10
}

// unescapeInto is url.QueryUnescape into the arena, which the caller sized so
// it never grows (an unescaped string is no longer than its source).
func (s *signScratch) unescapeInto(v string) (string, bool) {
	i := 0
	for i < len(v) && v[i] != '%' && v[i] != '+' {
		i++
	}
	if i == len(v) {
		return v, true // as it is: no copy
	}
	start := len(s.arena)
	var ok bool
	s.arena, ok = appendUnescaped(append(s.arena, v[:i]...), v[i:])
	if !ok {
		s.arena = s.arena[:start]
		return "", false
	}
	b := s.arena[start:]
	return unsafe.String(unsafe.SliceData(b), len(b)), true
}

// queryUnreserved marks the bytes url.QueryEscape leaves as they are.
var queryUnreserved = func() (t [256]bool) {
	for c := 0; c < 256; c++ {
		b := byte(c)
		t[c] = b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || isDigit(b) || b == '-' || b == '_' || b == '.' || b == '~'
	}
	return t
}()

// appendQueryEscape appends url.QueryEscape(s) to dst.
func appendQueryEscape(dst []byte, s string) []byte {
	const upperhex = "0123456789ABCDEF"
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if queryUnreserved[c] {
			continue
		}
		dst = append(dst, s[start:i]...)
		if c == ' ' {
			dst = append(dst, '+')
		} else {
			dst = append(dst, '%', upperhex[c>>4], upperhex[c&15])
		}
		start = i + 1
	}
	return append(dst, s[start:]...)
}

// appendCanonicalPairs appends CanonicalPairs(pairs) to dst.
func appendCanonicalPairs(dst []byte, pairs [][2]string) []byte {
	c := getCanon()
	for _, p := range pairs {
		if p[0] == "frame_mode" {
			continue
		}
		c.path = appendKey(c.path[:0], p[0])
		c.add(c.path, p[1])
	}
	dst = c.finish(dst)
	c.release()
	return dst
}

// signInto writes k.Sign(canonical) to s.sig and returns it as a slice
// of it.
func (s *signScratch) signInto(k *Key, canonical []byte) []byte {
	m := k.mac(canonical)
	base64.StdEncoding.Encode(s.sig[:], m.sum[:])
	k.macs.Put(m)
	return s.sig[:]
}

// pageBase is a Payment Page base URL as u.String() writes it before
// "?" once a query is set, and as a JSON string without its closing quote.
type pageBase struct{ raw, json string }

// newPageBase is u without its query, as a string and JSON-quoted.
func newPageBase(u *url.URL) *pageBase {
	c := *u
	c.RawQuery, c.ForceQuery = "", false
	raw := c.String()
	q := appendQuoted(nil, raw)
	return &pageBase{raw: raw, json: string(q[:len(q)-1])}
}

// jsonHeaders are writeJSON's header values in one allocation.
type jsonHeaders struct {
	vals [3]string
	n    [20]byte
}

// writeJSONAnswer is writeJSON with one allocation for the headers
// instead of four. The writer copies body before returning, so it may be
// pooled.
func writeJSONAnswer(w http.ResponseWriter, status int, body []byte) {
	hv := new(jsonHeaders)
	n := strconv.AppendInt(hv.n[:0], int64(len(body)), 10)
	hv.vals = [3]string{"application/json", unsafe.String(unsafe.SliceData(n), len(n)), "no-store"}
	h := w.Header()
	// Canonical names, as Set would make them; each slice capped so an
	// Add reallocates rather than overwrites the next value.
	h["Content-Type"] = hv.vals[0:1:1]
	h["Content-Length"] = hv.vals[1:2:2]
	h["Cache-Control"] = hv.vals[2:3:3]
	w.WriteHeader(status)
	_, _ = w.Write(body)
}
